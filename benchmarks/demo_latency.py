"""Seconds from a click on Generate to the grid of 16 digits shown in the demo page, in headless
Chromium, for each checkpoint served at once by its own `python demo.py`, the clicks interleaved.

    pip install -r requirements-dev.txt && apt-get install chromium
    python -m benchmarks.demo_latency                                      # the shipped model
    python -m benchmarks.demo_latency --checkpoints models/weights/ddpm_mnist.pt checkpoints/shortcut
    python -m benchmarks.demo_latency --checkpoints checkpoints/shortcut --steps 1     # one step

Timed in the page (performance.now() from the click to the new picture loaded); the server's own
time for the digits, which demo.py prints, is reported beside it: the rest is the page's share.
"""
import re
from contextlib import ExitStack
from dataclasses import dataclass
from statistics import median

from benchmarks.browser import CLICK_TO_PICTURE, chromium, demo_server, open_page
from playground import NUM
from utils.errors import exit_on_user_error
from utils.flags import check_fields, from_args, option, parse_flags


@dataclass
class Flags:
    checkpoints: tuple = option(("models/weights/ddpm_mnist.pt",), "checkpoints to serve, each with its own "
                                "default sampling", item=str)
    steps: int = option(0, "the steps slider set to this before the clicks (0: each checkpoint's default)",
                        bounds="[0, 50]")
    precision: str = option("auto", "each server's --precision (fp32 stands in for a CPU without bf16)")
    repeats: int = option(10, "timed clicks per checkpoint, after one untimed", bounds="[1, inf)")

    def __post_init__(self):
        check_fields(self)


def main(argv=None):
    flags = from_args(Flags, parse_flags(__doc__.splitlines()[0], [Flags], argv)[0])
    with ExitStack() as stack:
        servers = [stack.enter_context(demo_server("--checkpoint_path", path, "--precision", flags.precision))
                   for path in flags.checkpoints]
        browser = stack.enter_context(chromium())
        pages = [open_page(browser, url) for url, _ in servers]
        clicks = [[] for _ in flags.checkpoints]
        for page in pages if flags.steps else ():
            page.locator("#steps input[type=number]").fill(str(flags.steps))
            page.locator("#steps input[type=number]").press("Enter")
        for seed in range(flags.repeats + 1):  # a new seed each click: new digits, a new picture
            for times, page in zip(clicks, pages):
                page.locator("#seed input").fill(str(seed))
                ms = page.evaluate(CLICK_TO_PICTURE, ["generate", "grid"])
                if seed:
                    times.append(ms / 1000)
        logs = [log.read_text() for _, log in servers]
    print(f"{'checkpoint':44} {'click to grid (s)':>18} {'min':>6} {'max':>6} {'server (s)':>11}  sampling")
    for path, times, log in zip(flags.checkpoints, clicks, logs):
        server = re.findall(rf"generated {NUM} digits in ([\d.]+) s by (.*)", log)[1:]
        print(f"{path:44} {median(times):18.3f} {min(times):6.3f} {max(times):6.3f} "
              f"{median(float(s) for s, _ in server):11.3f}  {server[-1][1]}")
    return clicks


if __name__ == "__main__":
    exit_on_user_error(main)

"""Time to quality: train with the defaults and measure the samples at wall-clock marks.

    python -m benchmarks.time_to_quality --marks 5 10 20
    python -m benchmarks.time_to_quality --marks 5 10 20 --model peer     # diffusers' UNet2DModel, same recipe
    python -m benchmarks.time_to_quality --marks 5 10 --recipes "" "--batch_size 64"   # two recipes, one table

Runs train.py (or benchmarks/train_peer.py) on its defaults in a fresh folder, keeping a step
checkpoint every --save_every steps, and stops it with SIGTERM (which saves) at the last mark.
With --recipes, one run per recipe (its flags added to the defaults; "" is the defaults), one
after another, evaluated the same way and printed in one table.
Each checkpoint's training time comes from the log's wall_s column; for each mark the last
checkpoint saved before it is evaluated with evaluate.py (--num_samples samples, inference.py's
default sampler unless --sampler is given), next to the real-data floor at the same sample count.
A mark after the end of the default run gets the finished model (see its train_minutes).
"""
import argparse
import csv
import json
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import evaluate
from benchmarks.common import Peer
from diffusion.config import SamplingConfig
from models.unet import UNet
from utils.errors import UserError, exit_on_user_error
from utils.flags import check_fields, from_args, option, parse_flags

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Flags:
    marks: tuple = option((5.0, 10.0, 20.0), "minutes of training at which to measure", bounds="(0, inf)")
    save_every: int = option(50, "a checkpoint every this many steps", bounds="[1, inf)")
    num_samples: int = option(1000, "samples per evaluation", bounds="[1, inf)")
    model: str = option("ours", "the project's U-Net, or diffusers' UNet2DModel trained with the same recipe",
                        choices=("ours", "peer"))
    work_dir: str = option("", "keep checkpoints and logs here (default: a temp folder)")
    recipes: tuple = option(("",), "train.py flags of each recipe to compare, each quoted (\"\" = the defaults; "
                            "a recipe of one flag needs a space inside its quotes: \"--compile \")", item=str)

    def __post_init__(self):
        check_fields(self)
        if not self.recipes:
            raise UserError("--recipes needs at least one recipe (\"\" = the defaults)")
        for recipe in self.recipes:  # before minutes of work, not after
            try:
                shlex.split(recipe)
            except ValueError as err:
                raise UserError(f"--recipes {recipe!r}: {err}") from None


def read_log(path):
    if not path.exists():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def data_flags(train_args):
    """train.py's --data_dir and --dataset among `train_args`: the floor is measured on the same data."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--data_dir")
    parser.add_argument("--dataset")
    known = vars(parser.parse_known_args(train_args)[0])
    return [arg for name, value in known.items() if value is not None for arg in (f"--{name}", value)]


def train_until(cmd, work, deadline):
    """Run the training command `cmd` in `work`, stopped by SIGTERM (which saves) once its log
    passes `deadline` seconds; its stderr (the progress bar, any error) goes to work/train_stderr.log."""
    log = work / "out" / "train_log.csv"
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "train_stderr.log", "w") as errors:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=errors)
        while proc.poll() is None:
            rows = read_log(log)
            if rows and float(rows[-1]["wall_s"]) >= deadline:
                proc.send_signal(signal.SIGTERM)
                proc.wait()
            time.sleep(2)
    if proc.returncode not in (0, 143):
        sys.exit(f"training failed (exit {proc.returncode}); see {work / 'train_stderr.log'}")
    return read_log(log)


def main():
    argv = sys.argv[1:]
    own, train_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    flags, _ = parse_flags(__doc__.splitlines()[0] + " Extra train.py flags go after --.", [Flags, SamplingConfig], own)
    args, sampling = from_args(Flags, flags), from_args(SamplingConfig, flags)  # sampling: the default unless given
    root = Path(args.work_dir or tempfile.mkdtemp(prefix="ttq_"))
    script = ["train.py"] if args.model == "ours" else ["-m", "benchmarks.train_peer"]
    floor = evaluate.main(["--real", "--num_samples", str(args.num_samples), *data_flags(train_args),
                           "--out", str(root / "real.json")])
    sample_flags = ["--sampler", sampling.sampler, "--steps", str(sampling.steps), "--eta", str(sampling.eta),
                    "--guidance", str(sampling.guidance), "--guidance_interval", *map(str, sampling.guidance_interval),
                    "--seed", str(sampling.seed)]
    table = []
    for i, recipe in enumerate(args.recipes):
        work = root if len(args.recipes) == 1 else root / f"recipe{i}"
        ckpt = work / "ck"
        cmd = [sys.executable, *script, "--checkpoint_path", str(ckpt), "--output_dir", str(work / "out"),
               "--save_every", str(args.save_every), "--log_every", str(args.save_every), "--keep_last", "100000",
               *train_args, *shlex.split(recipe)]
        rows = train_until(cmd, work, max(args.marks) * 60)
        rows = [r for r in rows if Path(f"{ckpt}_step{int(r['step']):07d}").exists()]  # saved steps
        for mark in args.marks:  # the last checkpoint saved before each mark
            done = [r for r in rows if float(r["wall_s"]) <= mark * 60]
            if not done:
                continue
            step = int(done[-1]["step"])
            result = evaluate.main(["--checkpoint_path", f"{ckpt}_step{step:07d}", "--num_samples",
                                    str(args.num_samples), *sample_flags, "--out", str(work / f"eval_{mark:g}min.json")],
                                   make_model=UNet if args.model == "ours" else Peer)
            table.append({"recipe": recipe or "(defaults)", "minutes": mark, "step": step,
                          "train_seconds": float(done[-1]["wall_s"]), **result})
        # after each recipe, so that a later recipe's failure keeps the results so far
        (root / "time_to_quality.json").write_text(json.dumps({"floor": floor, "marks": table}, indent=2))
    print(f"\n{'recipe':<28s} {'minutes':>8s} {'trained':>8s} {'step':>6s} {'FID':>8s} {'FID/floor':>10s} "
          f"{'confident':>10s}   ({args.model}, {args.num_samples} samples, {sampling.describe()}; "
          f"floor FID {floor['fid']:.4f})")
    for r in table:
        print(f"{r['recipe']:<28s} {r['minutes']:>8g} {r['train_seconds'] / 60:>8.1f} {r['step']:>6d} "
              f"{r['fid']:>8.4f} {r['fid'] / floor['fid']:>10.1f} {r['confident']:>10.3f}")
    print(f"wrote {root / 'time_to_quality.json'}")


if __name__ == "__main__":
    exit_on_user_error(main)

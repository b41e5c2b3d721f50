"""The demo page in a real browser: demo.py served on a free local port, driven by Playwright on
headless Chromium (Debian's package: apt-get install chromium); and the server's checks that need
Gradio (a busy port, a public page). Marked `browser`, out of the default run; .ci/run runs it
(python -m pytest -m browser). DEMO_SCREENSHOTS=docs writes the screenshots of docs/ (else they go
to a temporary folder)."""
import importlib.util
import io
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.browser import ROOT, chromium, chromium_path, demo_server, open_page

pytestmark = pytest.mark.browser
REQUIRED = os.environ.get("DEMO_BROWSER_REQUIRED") == "1"  # CI: a missing piece fails instead of skipping


def need(condition, what):
    if not condition:
        (pytest.fail if REQUIRED else pytest.skip)(f"the browser tests need {what}")


@pytest.fixture(scope="module")
def server():
    """`python demo.py` on the shipped model, as a user starts it; its address."""
    need(chromium_path(), "Chromium (apt-get install chromium)")
    for module in ("gradio", "playwright"):
        need(importlib.util.find_spec(module), f"{module} (pip install -r requirements-dev.txt)")
    with demo_server("--checkpoint_path", "models/weights/ddpm_mnist.pt") as (url, _):
        yield url


@pytest.fixture(scope="module")
def browser(server):
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(browser, server):
    page = open_page(browser, server)
    yield page
    page.context.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    """Where the screenshots go: docs/ when DEMO_SCREENSHOTS=docs, else a temporary folder."""
    return ROOT / "docs" if os.environ.get("DEMO_SCREENSHOTS") == "docs" else tmp_path_factory.mktemp("shots")


def image_of(page, element_id, old=None, timeout=30_000):
    """The picture shown in #element_id (H, W, 3) uint8, once its address differs from `old`; (it, address)."""
    img = page.locator(f"#{element_id} img")
    page.wait_for_function("""([id, old]) => { const i = document.querySelector('#' + id + ' img');
                                               return i && i.src && i.src !== old && i.complete; }""",
                           arg=[element_id, old], timeout=timeout)
    src = img.get_attribute("src")
    return np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB")), src


def digits_in(picture, count, columns):
    """The 28 x 28 digits of a grid the page shows (utils.canvas.picture: make_grid's padding 2, then ZOOM x)."""
    from utils.canvas import ZOOM
    small = picture[::ZOOM, ::ZOOM, 0].astype(np.float32)
    if count == 1:  # make_grid pads no lone image
        return torch.tensor(small)[None, None] / 127.5 - 1
    tiles = [small[2 + r * 30: 30 + r * 30, 2 + c * 30: 30 + c * 30] for r in range(count // columns)
             for c in range(columns)]
    return torch.tensor(np.stack(tiles))[:, None] / 127.5 - 1


def recognised(picture, count, columns):
    """The shipped classifier's digits for a grid the page shows."""
    from models.classifier import load_classifier
    with torch.no_grad():
        return load_classifier()(digits_in(picture, count, columns)).argmax(1)


def choose(page, element_id, value):
    page.locator(f"#{element_id} input").click()
    page.get_by_role("option", name=value, exact=True).click()


def stroke(page, element_id, points):
    """Brush a line through `points` (fractions of the canvas) on the canvas in #element_id."""
    page.locator(f"#{element_id} button[aria-label='Brush']").first.click()
    box = page.locator(f"#{element_id} canvas").first.bounding_box()
    side = min(box["width"], box["height"]) * 0.8  # the drawing area: a square in the middle
    left, top = box["x"] + (box["width"] - side) / 2, box["y"] + (box["height"] - side) / 2
    page.mouse.move(left + points[0][0] * side, top + points[0][1] * side)
    page.mouse.down()
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        for f in (0.5, 1.0):
            page.mouse.move(left + (x0 + f * (x1 - x0)) * side, top + (y0 + f * (y1 - y0)) * side)
    page.mouse.up()


def test_generate_scrub_and_recognised_digits(page, shots):
    choose(page, "digit", "3")
    page.click("#generate")
    grid, src = image_of(page, "grid")
    frame, frame_src = image_of(page, "frame")
    assert (recognised(grid, 16, 4) == 3).float().mean() >= 0.9
    page.locator("#scrub input[type=number]").fill("0")
    page.locator("#scrub input[type=number]").press("Enter")
    noise, _ = image_of(page, "frame", old=frame_src)
    assert np.abs(noise.astype(int) - frame.astype(int)).mean() > 20  # pure noise against the finished digits
    page.screenshot(path=str(shots / "demo_generate.png"), full_page=True)

    page.locator("#seed input").fill("1")
    page.click("#generate")
    other, _ = image_of(page, "grid", old=src)
    assert not np.array_equal(other, grid)  # a new seed, new digits


def test_the_one_step_model_beside_the_shipped_one(page):
    page.get_by_label("DMD, 1 step").check()
    page.get_by_text("dmd_mnist.pt").first.wait_for(timeout=30_000)  # the page's summary names the model
    assert page.locator("#steps input[type=number]").input_value() == "1"
    choose(page, "digit", "7")
    page.click("#generate")
    grid, _ = image_of(page, "grid")
    assert (recognised(grid, 16, 4) == 7).float().mean() >= 0.9


def test_draw_follows_the_pen(page, shots):
    page.get_by_role("tab", name="Draw").click()
    choose(page, "draw-digit", "1")
    stroke(page, "sketch", [(0.5, 0.15), (0.48, 0.85)])
    before, before_src = image_of(page, "before")
    after, after_src = image_of(page, "after")
    assert before.mean() > 5 and recognised(after, 4, 4).eq(1).float().mean() >= 0.75
    stroke(page, "sketch", [(0.3, 0.2), (0.7, 0.2)])  # more ink: the edit follows without a click
    more, _ = image_of(page, "before", old=before_src)
    assert more.mean() > before.mean()
    page.screenshot(path=str(shots / "demo_draw.png"), full_page=True)


def test_erase_and_complete(page, shots):
    page.get_by_role("tab", name="Erase and complete").click()
    page.wait_for_timeout(2000)  # the test digit arrives with the page
    stroke(page, "eraser", [(0.02, 0.6), (0.98, 0.6), (0.02, 0.75), (0.98, 0.75), (0.02, 0.9), (0.98, 0.9)])
    page.click("#complete")
    masked, _ = image_of(page, "masked")
    completed, _ = image_of(page, "completed")
    kept = digits_in(masked, 1, 1)[0, 0]
    finished = digits_in(completed, 4, 4)[:, 0]
    assert (finished[:, :12] == kept[:12]).all()  # the known top kept exactly
    assert (finished[:, 18:] != kept[18:]).any()  # the erased bottom drawn in
    page.screenshot(path=str(shots / "demo_erase.png"), full_page=True)


def upload(page, path):
    with page.expect_file_chooser() as chooser:
        page.click("#upload")
    chooser.value.set_files(str(path))


def error_shown(page, text):
    page.get_by_text(text).first.wait_for(timeout=15_000)


def test_bad_inputs_get_a_message_and_the_server_keeps_serving(page, tmp_path):
    page.get_by_role("tab", name="Draw").click()
    page.click("#redraw")
    error_shown(page, "the canvas is empty")

    page.get_by_role("tab", name="Erase and complete").click()
    fake = tmp_path / "digit.png"
    fake.write_text("not an image")
    upload(page, fake)
    error_shown(page, "cannot read")
    huge = tmp_path / "huge.png"
    huge.write_bytes(os.urandom(9 << 20))
    upload(page, huge)
    error_shown(page, "exceed the maximum allowed size")
    bomb = tmp_path / "bomb.png"  # 100 million pixels in a few kilobytes
    Image.new("1", (10_000, 10_000)).save(bomb)
    upload(page, bomb)
    error_shown(page, "too large to decode")

    page.fill("#checkpoint textarea, #checkpoint input", str(fake))
    page.click("#load")
    error_shown(page, "not a checkpoint file; the page keeps")

    page.get_by_role("tab", name="Generate").click()
    page.click("#generate")
    image_of(page, "grid")  # still serving, still the shipped model


def test_sessions_get_their_own_results(browser, server):
    pages = []
    for digit in ("4", "8"):
        page = open_page(browser, server)
        choose(page, "digit", digit)
        pages.append(page)
    for page in pages:
        page.click("#generate")
    for page, digit in zip(pages, (4, 8)):
        grid, _ = image_of(page, "grid")
        assert (recognised(grid, 16, 4) == digit).float().mean() >= 0.9
        page.context.close()


def test_listens_on_this_machine_only(server):
    """The server's listening sockets (Linux's /proc/net/tcp*) are all on the loopback address."""
    port = int(server.rstrip("/").rsplit(":", 1)[1])
    tables = [Path("/proc/net/tcp"), Path("/proc/net/tcp6")]
    if not tables[0].exists():
        pytest.skip("needs Linux's /proc/net/tcp")
    listening = [line.split()[1].rsplit(":", 1)[0] for table in tables if table.exists()
                 for line in table.read_text().splitlines()[1:]
                 if line.split()[3] == "0A" and int(line.split()[1].rsplit(":", 1)[1], 16) == port]
    assert listening and set(listening) <= {"0100007F", "00000000000000000000000001000000"}, listening


def test_a_busy_port_is_a_one_line_error():
    need(importlib.util.find_spec("gradio"), "gradio (pip install -r requirements-dev.txt)")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        run = subprocess.run([sys.executable, "demo.py", "--port", str(taken.getsockname()[1]), "--checkpoint_path",
                              "models/weights/ddpm_mnist.pt"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines() == [run.stderr.strip()] and "cannot serve" in run.stderr


def test_a_public_page_cannot_load_a_file_by_its_path():
    need(importlib.util.find_spec("gradio"), "gradio (pip install -r requirements-dev.txt)")
    from demo import DemoConfig, build
    from playground import open_model
    model = open_model("models/weights/ddpm_mnist.pt", DemoConfig(precision="fp32"))
    local, public = (build(DemoConfig(), model, can_load) for can_load in (True, False))
    names = lambda page: {f.fn.__name__ for f in page.fns.values() if f.fn}  # noqa: E731
    assert "switch" in names(local) and "switch" not in names(public)
    assert "models/weights/" not in public.config["components"].__repr__()
    assert "pick" in names(public)  # the shipped models, chosen by name


def test_a_public_page_names_no_file_when_a_shipped_model_fails(monkeypatch, tmp_path):
    need(importlib.util.find_spec("gradio"), "gradio (pip install -r requirements-dev.txt)")
    import gradio as gr

    import playground
    from demo import DemoConfig, build
    model = playground.open_model("models/weights/ddpm_mnist.pt", DemoConfig(precision="fp32"))
    broken = tmp_path / "broken.pt"
    broken.write_text("not a checkpoint")
    monkeypatch.setitem(playground.SHIPPED, "DMD, 1 step", broken)
    pick = next(f.fn for f in build(DemoConfig(), model, False).fns.values() if f.fn and f.fn.__name__ == "pick")
    for name, said in (("DMD, 1 step", "cannot load DMD, 1 step"), ("../../etc/passwd", "no shipped model")):
        with pytest.raises(gr.Error) as err:
            pick(str(model.path), name)
        assert said in str(err.value) and str(tmp_path) not in str(err.value) and "models/weights" not in str(err.value)

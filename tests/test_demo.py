"""The demo's parts without a browser: playground.py, utils/canvas.py and demo.py's flags
(tests/test_demo_page.py drives the page itself)."""
import contextvars
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from demo import DemoConfig
from playground import (EDITS, SHIPPED, MainThread, complete, denoising, digit_labels, open_model, sampling_for,
                        shipped_name)
from utils.canvas import CANVAS, canvas, drawing_to_digit, erased, read_upload
from utils.errors import UserError

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model():
    return open_model("models/weights/ddpm_mnist.pt", DemoConfig(precision="fp32"))


def sketch_of(ink):
    """A Sketchpad's value: black strokes where `ink` (CANVAS x CANVAS bool) on a transparent page."""
    rgba = np.zeros((CANVAS, CANVAS, 4), np.uint8)
    rgba[ink, 3] = 255
    return {"background": None, "layers": [], "composite": rgba}


def test_a_blank_drawing_is_no_digit():
    assert drawing_to_digit(None) is None
    assert drawing_to_digit(sketch_of(np.zeros((CANVAS, CANVAS), bool))) is None
    white = np.full((CANVAS, CANVAS, 4), 255, np.uint8)  # an opaque white page, no ink
    assert drawing_to_digit({"composite": white}) is None


def test_a_drawing_is_scaled_and_centred_as_mnist_draws_digits():
    ink = np.zeros((CANVAS, CANVAS), bool)
    ink[10:90, 200:240] = True  # a small bar in the top right corner
    digit = drawing_to_digit(sketch_of(ink))
    assert digit.shape == (1, 28, 28) and digit.dtype == torch.uint8
    rows, cols = np.nonzero(digit[0].numpy() > 127)
    assert rows.max() - rows.min() + 1 in (19, 20, 21)  # the longer side fits 20 pixels
    mass = digit[0].float()
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    assert abs(float((ys * mass).sum() / mass.sum()) - 13.5) < 1.0
    assert abs(float((xs * mass).sum() / mass.sum()) - 13.5) < 1.0


def test_erasing_keeps_the_image_and_masks_what_was_brushed():
    image = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8)
    background = np.stack([canvas(image)] * 3 + [np.full((CANVAS, CANVAS), 255, np.uint8)], -1)
    composite = background.copy()
    composite[:CANVAS // 2, :, :3] = (255, 51, 51)  # the red brush over the top half
    got, mask = erased({"background": background, "layers": [], "composite": composite})
    assert torch.equal(got, image)
    assert mask.shape == (1, 1, 28, 28)
    assert mask[0, 0, :14].sum() == 0 and mask[0, 0, 14:].min() == 1
    assert erased({"background": background, "layers": [], "composite": background})[1] is None  # nothing brushed
    assert erased(None) == (None, None)
    assert erased({"background": background, "layers": [], "composite": None})[1] is None
    with pytest.raises(UserError, match="280 x 280"):
        erased({"background": background[:100], "layers": [], "composite": composite[:100]})
    with pytest.raises(UserError, match="280 x 280"):
        drawing_to_digit({"composite": np.zeros((4000, 4000, 4), np.uint8)})


def test_an_upload_is_read_as_a_white_digit_on_black(tmp_path):
    page = np.full((56, 56), 255, np.uint8)
    page[10:46, 24:32] = 0  # a dark stroke on a light page
    Image.fromarray(page).save(tmp_path / "light.png")
    digit = read_upload(tmp_path / "light.png")
    assert digit.shape == (1, 28, 28) and digit.float().mean() < 127 and digit[0, 14, 14] > 200
    (tmp_path / "digit.png").write_text("not an image")
    with pytest.raises(UserError):
        read_upload(tmp_path / "digit.png")
    with open(tmp_path / "huge.png", "wb") as f:
        f.truncate(9 << 20)
    with pytest.raises(UserError, match="larger than 8 MB"):
        read_upload(tmp_path / "huge.png")


def test_labels_any_means_every_digit_for_generating_and_none_for_edits(model):
    assert digit_labels(model, "3", 4).tolist() == [3] * 4
    assert digit_labels(model, "any", 10).tolist() == list(range(10))
    assert digit_labels(model, "any", 4, every=False) is None


def test_denoising_gives_the_grid_and_frames_ending_in_the_digits(model):
    sampling = sampling_for(model, "ddim", 3, 0.0, 0)
    grid, frames = denoising(model, sampling, "7")
    assert grid.shape == (4 * 122, 4 * 122, 3)  # 4 x 4 digits of 28 + 2 padding, ZOOM 4
    assert len(frames) == 4 and frames[-1][1] == "finished digits"
    assert all(f.shape == (122, 2 * 122, 3) for f, _ in frames)  # x_t beside x0, zoomed when shown
    assert not np.array_equal(frames[0][0], frames[-1][0])
    with pytest.raises(UserError, match="steps"):
        denoising(model, sampling_for(model, "ddim", 5000, 0.0, 0), "7")


def test_each_shipped_model_is_named_and_draws_in_its_own_steps():
    steps = {}
    for name, path in SHIPPED.items():
        m = open_model(path, DemoConfig(precision="fp32"))
        assert shipped_name(m) == name
        _, frames = denoising(m, m.sampling, "7")
        steps[name] = len(frames) - 1  # a frame per step, then the finished digits
    assert steps == {"DDPM, dpm++ 8 steps": 8, "DMD, 1 step": 1}


def test_completion_keeps_the_known_part(model):
    image = torch.zeros(1, 28, 28, dtype=torch.uint8)
    image[0, 4:24, 12:16] = 255
    mask = torch.ones(1, 1, 28, 28)
    mask[..., 14:, :] = 0
    masked, completed = complete(model, image, mask, "1", 0)
    tiles = completed[::4, ::4, 0].astype(int)
    for i in range(EDITS):  # make_grid: 2 pixels of padding around 28 x 28 tiles
        tile = tiles[2:30, 2 + 30 * i:30 + 30 * i]
        assert np.abs(tile[:14] - image[0, :14].numpy()).max() <= 1
    assert masked.shape == (4 * 28, 4 * 28, 3)


def test_main_thread_runs_each_job_in_its_callers_context():
    worker, seen, where = MainThread(), contextvars.ContextVar("seen"), {}

    def caller():
        try:
            seen.set("caller's")
            where["thread"], where["value"] = worker(lambda: (threading.current_thread(), seen.get()))
            with pytest.raises(ZeroDivisionError):
                worker(lambda: 1 / 0)
            where["raised"] = True
        finally:
            worker.jobs.put(None)  # serve() returns whatever happened here

    thread = threading.Thread(target=caller)
    thread.start()
    worker.serve()
    thread.join()
    assert where == {"thread": threading.main_thread(), "value": "caller's", "raised": True}
    assert worker(threading.current_thread) is threading.main_thread()  # on the main thread: at once


@pytest.mark.parametrize("flags, text", [(["--checkpoint_path", "no/such.pt"], "no/such.pt"),
                                         (["--port", "70000"], "port")])
def test_bad_flags_exit_2_with_one_line(flags, text):
    run = subprocess.run([sys.executable, "demo.py", *flags], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0] and "Traceback" not in run.stderr


def test_help_says_what_listening_beyond_this_machine_exposes():
    run = subprocess.run([sys.executable, "demo.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "--share" in run.stdout and "127.0.0.1" in run.stdout

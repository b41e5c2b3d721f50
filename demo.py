"""A page to play with a checkpoint, served on this machine: generate digits and scrub through their
denoising, draw a digit and let the model redraw it (SDEdit), erase part of a test digit and let
the model complete it (inpainting).

    pip install -r requirements-demo.txt
    python demo.py                                   # the shipped model on http://127.0.0.1:7860
    python demo.py --checkpoint_path checkpoints/ddpm_checkpoint --port 8000

The page listens on 127.0.0.1 only: other machines cannot reach it. --host 0.0.0.0 (your network)
or --share (a public link through Gradio's relay) lets anyone who reaches it run the model on this
machine; the page's checkpoint box, which reads any file the server can read, is then switched off.
"""
import contextvars
import queue
import socket
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, replace
from functools import lru_cache, wraps
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffusion.inpainting import inpaint
from diffusion.pipeline import every_digit
from diffusion.samplers import SAMPLERS, make_timesteps
from diffusion.sdedit import sdedit
from models.load import checkpoint_or_shipped, load_to_sample
from utils.config import checkpoint_option, device_option, precision_option
from utils.datasets import checkpoint_data, read_image, to_model_range
from utils.device import set_cpu_threads
from utils.errors import UserError, exit_on_user_error
from utils.flags import check_fields, from_args, option, parse_flags
from utils.plotting import grid_image, spread

NUM = 16            # digits per generated grid, 4 x 4
EDITS = 4           # edits of a drawing, completions of an erased digit: one row
ZOOM = 4            # screen pixels per image pixel in the grids (torchvision's make_grid, padding 2)
CANVAS = 280        # the drawing and erasing canvases: 10 screen pixels per image pixel
FRAMES = 50         # at most this many steps of the denoising kept for the slider
MAX_UPLOAD_MB = 8
LOCAL = ("127.0.0.1", "localhost", "::1")


@dataclass
class DemoConfig:
    checkpoint_path: str = checkpoint_option("checkpoint the page starts with")
    host: str = option("127.0.0.1", "the address to listen on: 127.0.0.1 is this machine only; 0.0.0.0 lets "
                       "anyone on your network use the page (and switches off its checkpoint box)")
    port: int = option(7860, "the port to listen on (0: a free one)", bounds="[0, 65535]")
    share: bool = option(False, "also make a public link through Gradio's relay (needs the internet; anyone with "
                         "the link can use the page, whose checkpoint box is then switched off)")
    device: str = device_option()
    precision: str = precision_option()

    def __post_init__(self):
        check_fields(self)


def summary(model, full_path=True):
    """What the page says about a checkpoint loaded to sample (a models.load.Loaded)."""
    process, train = model.diffusion.config, model.ckpt.get("train_config", {})
    budget = f"{train['minutes']:g} minutes, " if train.get("minutes") else ""
    labels = "class-conditional" if model.classes and model.net.config.num_classes else "unconditional"
    name = model.path if full_path else model.path.name
    return (f"**{name}**: {process.process} ({labels}, predicts {process.prediction}), trained "
            f"{budget}{model.ckpt['step']:,} steps of batch {train.get('batch_size', '?')} on "
            f"{train.get('dataset', 'mnist')}; samples by {model.sampling.describe(labels != 'unconditional')}")


def digit_labels(model, digit, num, every=True):
    """A batch of labels for `digit` (a class name; 'any': every class in turn if `every`, else
    none, the model's own choice), None for unconditional models."""
    if not model.net.config.num_classes or (digit in ("any", None, "") and not every):
        return None
    if digit in ("any", None, ""):
        return every_digit(num, model.net.config.num_classes, model.device)
    return torch.full((num,), model.classes.index(digit), device=model.device)


@lru_cache(maxsize=4)
def load(path, stamp, device, precision):
    """The checkpoint at `path` loaded to sample (stamp: its modification time: a rewritten file is read again)."""
    return load_to_sample(checkpoint_or_shipped(path), device, precision)


def open_model(path, cfg):
    """load() with a one-line UserError for a file that is no checkpoint of this project."""
    try:
        stamp = Path(path).stat().st_mtime if Path(path).exists() else 0
        return load(str(path), stamp, cfg.device, cfg.precision)
    except UserError:
        raise
    except Exception as err:  # a checkpoint of another network, a truncated file, ...
        first = (str(err).splitlines() or [""])[0][:200]
        raise UserError(f"cannot load {path}: {type(err).__name__}: {first}") from None


def picture(images, nrow, zoom=ZOOM):
    """(B, C, 28, 28) in [-1, 1] -> a uint8 (H, W, 3) grid, `zoom` screen pixels per pixel."""
    return zoomed((grid_image(images.float(), nrow) * 255).round().byte().permute(1, 2, 0).numpy(), zoom)


def zoomed(grid, zoom=ZOOM):
    return grid.repeat(zoom, 0).repeat(zoom, 1)


def sampling_for(model, sampler, steps, guidance, seed):
    """The model's sampling with the page's choices (its own grid only with its own sampler)."""
    grid = model.sampling.grid if sampler == model.sampling.sampler else ""
    return replace(model.sampling, sampler=sampler, steps=int(steps), guidance=float(guidance), seed=int(seed),
                   grid=grid)


def ticker(progress, total, desc, after=0.5):
    """A function to call once per step that shows `progress` ((step, total), desc) from `after` seconds
    on: a bar for work long enough to watch (each update has the browser redraw on the model's CPUs)."""
    start, count = time.perf_counter(), [0]

    def tick(*_):
        count[0] += 1
        if progress is not None and time.perf_counter() - start > after:
            progress((count[0], total), desc=desc)
    return tick


def denoising(model, sampling, digit, progress=None):
    """(the final grid; the frames of the slider, x_t beside the predicted x0, unzoomed; their captions)."""
    try:
        times = make_timesteps(sampling.sampler, model.diffusion, sampling.steps, sampling.grid)
    except ValueError as err:
        raise UserError(f"steps: {err}") from None
    shown, frames, tick = spread(times, FRAMES) | {-1}, [], ticker(progress, len(times) + 1, "denoising")

    def keep(first, step):
        tick()
        if step.t in shown:
            x0 = step.pred_x0.clamp(-1, 1)
            frames.append((np.concatenate([picture(step.x.clamp(-1, 1), 4, 1), picture(x0, 4, 1)], axis=1),
                           "finished digits" if step.t < 0 else f"t = {step.t:.3g}: x_t (left), predicted x0 (right)"))

    final = model.generate(NUM, digit_labels(model, digit, NUM), sampling, batch_size=NUM, callback=keep)
    return picture(final, 4), frames


def drawing_to_digit(sketch):
    """A drawn digit as MNIST draws them, (1, 28, 28) uint8, white on black: the ink's bounding box
    scaled to fit 20 x 20 pixels, its centre of mass at the centre, 13.5 (LeCun et al. 1998); None if blank."""
    if sketch is None or sketch.get("composite") is None:
        return None
    rgba = np.asarray(sketch["composite"], dtype=np.float32)
    if rgba.shape[:2] != (CANVAS, CANVAS):
        raise UserError(f"the drawing should be {CANVAS} x {CANVAS} pixels, got {rgba.shape[1]} x {rgba.shape[0]}")
    if rgba.ndim == 2:
        rgba = np.stack([rgba] * 3 + [np.full_like(rgba, 255)], axis=-1)
    alpha = rgba[..., 3] / 255 if rgba.shape[-1] == 4 else 1.0
    ink = alpha * (1 - rgba[..., :3].mean(-1) / 255)  # dark strokes on a light or transparent page
    rows, cols = np.nonzero(ink > 0.1)
    if len(rows) == 0:
        return None
    crop = Image.fromarray((ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1] * 255).astype(np.uint8))
    scale = 20 / max(crop.size)
    crop = np.asarray(crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))),
                                  Image.Resampling.LANCZOS), dtype=np.float32)
    ys, xs = np.indices(crop.shape)
    top = int(np.clip(round(13.5 - (ys * crop).sum() / crop.sum()), 0, 28 - crop.shape[0]))
    left = int(np.clip(round(13.5 - (xs * crop).sum() / crop.sum()), 0, 28 - crop.shape[1]))
    digit = np.zeros((28, 28), np.float32)
    digit[top:top + crop.shape[0], left:left + crop.shape[1]] = crop
    return torch.from_numpy(digit.clip(0, 255).round().astype(np.uint8))[None]


def edit_setup(model, image, digit, seed):
    """For EDITS edits of a (1, 28, 28) uint8 image toward `digit` (as inference.py edits one):
    (the image, repeated in [-1, 1]; the model's sampling with `seed`; denoise; the noise; its generator)."""
    image = to_model_range(image[None]).to(model.device).repeat(EDITS, 1, 1, 1)
    sampling = replace(model.sampling, seed=int(seed))
    noise, generator = model.noise(image.shape, sampling)
    denoise = model.denoiser(digit_labels(model, digit, EDITS, every=False), sampling)
    return image, sampling, denoise, noise, generator


def redraw(model, digit_image, digit, strength, seed):
    """EDITS SDEdits of a (1, 28, 28) uint8 image toward `digit`: (before, after) pictures."""
    image, sampling, denoise, noise, generator = edit_setup(model, digit_image, digit, seed)
    try:
        with torch.inference_mode():
            edits = sdedit(denoise, model.diffusion, image, noise, sampling, float(strength), generator)
    except ValueError as err:
        raise UserError(f"strength {strength:g}: {err}; raise the strength") from None
    return picture(image[:1], 1), picture(edits, EDITS)


def erased(editor):
    """(the image, (1, 28, 28) uint8; the mask, (1, 1, 28, 28), 1 = keep) from the erasing canvas:
    the image is its background, the mask what was brushed over it (None where nothing was)."""
    if editor is None or editor.get("background") is None:
        return None, None
    background = np.asarray(editor["background"])
    composite = background if editor.get("composite") is None else editor["composite"]
    if background.shape[:2] != (CANVAS, CANVAS) or np.shape(composite)[:2] != (CANVAS, CANVAS):
        raise UserError(f"the canvas should be {CANVAS} x {CANVAS} pixels, got {background.shape[1]} x "
                        f"{background.shape[0]}")
    composite = np.asarray(composite, dtype=np.float32)[..., :3]
    background, size = background[..., :3].astype(np.float32), CANVAS // 28
    brushed = (np.abs(composite - background).max(-1) > 8).astype(np.float32)
    pooled = lambda a: a[:28 * size, :28 * size].reshape(28, size, 28, size).mean((1, 3))  # noqa: E731
    image = torch.from_numpy(pooled(background.mean(-1)).round().astype(np.uint8))[None]
    mask = torch.from_numpy((pooled(brushed) < 0.25).astype(np.float32))[None, None]
    return image, (mask if mask.min() == 0 else None)


def complete(model, image, mask, digit, seed, progress=None):
    """EDITS completions of `image` outside `mask`: (the masked input, the completions) pictures."""
    known, sampling, denoise, noise, generator = edit_setup(model, image, digit, seed)
    mask = mask.to(known.device)
    tick = ticker(progress, sampling.steps + 1, "completing")
    with torch.inference_mode():
        final = inpaint(denoise, model.diffusion, known, mask, noise, sampling, generator, callback=tick)
    return picture(known[:1] * mask, 1), picture(final, EDITS)  # the unknown region grey: 0 in [-1, 1]


@lru_cache(maxsize=2)
def held_out_digits(model):
    """The test images of the data set `model` was trained on."""
    return checkpoint_data(model.ckpt, False)[1].images


def canvas(image):
    """A (1, 28, 28) uint8 image as the erasing canvas's background, CANVAS pixels a side."""
    return np.asarray(image[0]).repeat(CANVAS // 28, 0).repeat(CANVAS // 28, 1)


def read_upload(path):
    """An uploaded image as (1, 28, 28) uint8, white digit on black (a light page is inverted)."""
    if Path(path).stat().st_size > MAX_UPLOAD_MB << 20:
        raise UserError(f"{Path(path).name} is larger than {MAX_UPLOAD_MB} MB")
    image = read_image(path, 28, 1)
    return 255 - image if image.float().mean() > 127 else image


class MainThread:
    """Runs the page's work, one job at a time, on the main thread (serve()), called from the web
    server's threads: the shipped model's grid appeared 0.42-0.45 s after a click so, against 0.51-0.57 s
    run on those threads (2-core Xeon, docs/RESULTS.md#the-demo-page-how-fast-a-click-draws)."""

    def __init__(self):
        self.jobs = queue.Queue()

    def __call__(self, fn, *args, **kwargs):
        """fn(*args, **kwargs) run on the main thread, in the caller's context (its progress bar)."""
        if threading.current_thread() is threading.main_thread():
            return fn(*args, **kwargs)
        done = Future()
        self.jobs.put((done, contextvars.copy_context(), fn, args, kwargs))
        return done.result()

    def serve(self):
        """Run the jobs as they come, until a None."""
        while (job := self.jobs.get()) is not None:
            done, context, fn, args, kwargs = job
            try:
                done.set_result(context.run(fn, *args, **kwargs))
            except Exception as err:
                done.set_exception(err)
            except BaseException as err:  # Ctrl+C: the caller gets it too, and serving stops
                done.set_exception(err)
                raise


def build(cfg, model, can_load=True, run=lambda fn, *args, **kwargs: fn(*args, **kwargs)):
    """The page (a gradio Blocks) for `model`, its work done by `run` (e.g. a MainThread); each browser
    session keeps its own checkpoint and results."""
    try:
        import gradio as gr
    except ImportError:
        raise UserError("the demo needs Gradio: pip install -r requirements-demo.txt") from None

    def in_page(fn):
        """fn, by `run`, with a UserError shown as a message in the page (the server keeps serving)."""
        @wraps(fn)  # gradio reads fn's signature: its inputs, its progress bar
        def call(*args, **kwargs):
            try:
                return run(fn, *args, **kwargs)
            except UserError as err:
                raise gr.Error(str(err), print_exception=False) from None
        return call

    def choices(m):
        conditional = bool(m.net.config.num_classes)
        return (gr.update(choices=["any", *m.classes], value="any", visible=conditional),) * 3 + (
            gr.update(value=m.sampling.sampler), gr.update(value=m.sampling.steps),
            gr.update(value=m.sampling.guidance, visible=conditional))

    @in_page
    def switch(current, path):
        try:
            m = open_model(path.strip(), cfg)
        except UserError as err:
            raise UserError(f"{err}; the page keeps {current}") from None
        return (str(m.path), summary(m), *choices(m))

    @in_page
    def on_generate(path, digit, sampler, steps, guidance, seed, progress=gr.Progress()):
        m = open_model(path, cfg)
        start, sampling = time.perf_counter(), sampling_for(m, sampler, steps, guidance, seed)
        grid, frames = denoising(m, sampling, digit, progress)
        seconds = time.perf_counter() - start
        print(f"generated {NUM} digits in {seconds:.3f} s by {sampling.describe(False)}", flush=True)
        last = len(frames) - 1
        return grid, frames, gr.update(maximum=last, value=last), zoomed(frames[-1][0]), frames[-1][1]

    def on_scrub(frames, index):
        if not frames:
            return None, ""
        image, caption = frames[min(int(index), len(frames) - 1)]
        return zoomed(image), caption

    @in_page
    def on_draw(path, sketch, digit, strength, seed):
        digit_image = drawing_to_digit(sketch)
        if digit_image is None:
            raise UserError("the canvas is empty: draw a digit first")
        return redraw(open_model(path, cfg), digit_image, digit, strength, seed)

    def on_stroke(path, sketch, digit, strength, seed):  # the pen moved: redraw, quietly
        return on_draw(path, sketch, digit, strength, seed) if drawing_to_digit(sketch) is not None else (None, None)

    @in_page
    def new_digit(path, draws):
        digits = held_out_digits(open_model(path, cfg))
        index = int(torch.randint(len(digits), (1,), generator=torch.Generator().manual_seed(draws)))
        return {"background": canvas(digits[index]), "layers": [], "composite": None}, draws + 1

    @in_page
    def on_upload(file):
        return {"background": canvas(read_upload(file)), "layers": [], "composite": None}

    @in_page
    def on_complete(path, editor, digit, seed, progress=gr.Progress()):
        image, mask = erased(editor)
        if image is None:
            raise UserError("no digit to complete: pick a test digit or upload an image")
        if mask is None:
            raise UserError("brush over the part of the digit to erase first")
        return complete(open_model(path, cfg), image, mask, digit, seed, progress)

    conditional = bool(model.net.config.num_classes)
    digits = dict(choices=["any", *model.classes], value="any", label="digit", visible=conditional)
    with gr.Blocks(title="Diffusion playground", delete_cache=(3600, 3600)) as page:  # files older than an hour
        path, frames, draws = gr.State(str(model.path)), gr.State([]), gr.State(0)  # draws: test digits shown
        about = gr.Markdown(summary(model, full_path=can_load), elem_id="about")
        with gr.Row(visible=can_load):
            box = gr.Textbox(str(model.path) if can_load else "", label="checkpoint", scale=5, elem_id="checkpoint")
            load_button = gr.Button("Load", scale=1, elem_id="load")
        with gr.Tab("Generate", elem_id="tab-generate"):
            with gr.Row():
                with gr.Column(scale=1):
                    digit = gr.Dropdown(**digits, elem_id="digit")
                    sampler = gr.Dropdown(list(SAMPLERS), value=model.sampling.sampler, label="sampler")
                    steps = gr.Slider(1, 50, value=model.sampling.steps, step=1, label="steps", elem_id="steps")
                    guidance = gr.Slider(0, 3, value=model.sampling.guidance, step=0.05, label="guidance",
                                         visible=conditional)
                    seed = gr.Number(0, precision=0, minimum=0, label="seed", elem_id="seed")
                    go = gr.Button("Generate", variant="primary", elem_id="generate")
                with gr.Column(scale=2):
                    grid = gr.Image(label="digits", format="png", interactive=False, elem_id="grid")
                    scrub = gr.Slider(0, 1, value=0, step=1, label="denoising step: from the noise to the digits",
                                      elem_id="scrub")
                    frame = gr.Image(label="x_t and the predicted x0", format="png", interactive=False,
                                     elem_id="frame")
                    caption = gr.Markdown()
        with gr.Tab("Draw", elem_id="tab-draw"):
            gr.Markdown("Draw a digit; the model redraws it (SDEdit: noised to the strength, then denoised).")
            with gr.Row():
                sketch = gr.Sketchpad(type="numpy", image_mode="RGBA", format="png", layers=False, transforms=(),
                                      canvas_size=(CANVAS, CANVAS), fixed_canvas=True, elem_id="sketch",
                                      brush=gr.Brush(default_size=22, colors=["#000000"], color_mode="fixed"))
                with gr.Column():
                    draw_digit = gr.Dropdown(**digits, elem_id="draw-digit")
                    strength = gr.Slider(0.05, 1, value=0.6, step=0.05, label="strength: 0 keeps the drawing, "
                                         "1 draws anew", elem_id="strength")
                    draw_seed = gr.Number(0, precision=0, minimum=0, label="seed")
                    redraw_button = gr.Button("Redraw", variant="primary", elem_id="redraw")
            with gr.Row():
                before = gr.Image(label="your digit, as the model sees it", format="png", interactive=False,
                                  elem_id="before")
                after = gr.Image(label="redrawn", format="png", interactive=False, elem_id="after")
        with gr.Tab("Erase and complete", elem_id="tab-erase"):
            gr.Markdown("Brush over part of the digit; the model fills it in (inpainting).")
            with gr.Row():
                editor = gr.ImageEditor(type="numpy", image_mode="RGBA", format="png", sources=(), layers=False,
                                        transforms=(), canvas_size=(CANVAS, CANVAS), fixed_canvas=True,
                                        elem_id="eraser", brush=gr.Brush(default_size=40, colors=["#ff3333"],
                                                                          color_mode="fixed"))
                with gr.Column():
                    another = gr.Button("Another test digit", elem_id="another")
                    upload = gr.UploadButton("Upload an image", file_types=["image"], elem_id="upload")
                    erase_digit = gr.Dropdown(**digits, elem_id="erase-digit")
                    erase_seed = gr.Number(0, precision=0, minimum=0, label="seed")
                    complete_button = gr.Button("Complete", variant="primary", elem_id="complete")
            with gr.Row():
                masked = gr.Image(label="what the model keeps", format="png", interactive=False, elem_id="masked")
                completed = gr.Image(label="completed", format="png", interactive=False, elem_id="completed")

        if can_load:  # else not even the page's API reads a file by its path
            load_button.click(switch, [path, box],
                              [path, about, digit, draw_digit, erase_digit, sampler, steps, guidance])
        go.click(on_generate, [path, digit, sampler, steps, guidance, seed], [grid, frames, scrub, frame, caption],
                 show_progress="minimal", show_progress_on=[grid])
        scrub.input(on_scrub, [frames, scrub], [frame, caption], show_progress="hidden")
        drawing = [path, sketch, draw_digit, strength, draw_seed]
        redraw_button.click(on_draw, drawing, [before, after], show_progress="minimal")
        sketch.change(on_stroke, drawing, [before, after], trigger_mode="always_last",
                      show_progress="hidden")
        another.click(new_digit, [path, draws], [editor, draws])
        upload.upload(on_upload, [upload], [editor])
        complete_button.click(on_complete, [path, editor, erase_digit, erase_seed], [masked, completed],
                              show_progress="minimal", show_progress_on=[completed])
        page.load(new_digit, [path, draws], [editor, draws])
    return page


def free_port(host):
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def main(argv=None):
    args, _ = parse_flags("Serve a page to play with a checkpoint: generate, draw, erase and complete.",
                          [DemoConfig], argv)
    cfg = from_args(DemoConfig, args)
    set_cpu_threads()
    Image.MAX_IMAGE_PIXELS = 1 << 24  # PIL's guard for the canvases too, which Gradio decodes: 4096 x 4096
    model = open_model(cfg.checkpoint_path, cfg)
    public = cfg.share or cfg.host not in LOCAL
    worker = MainThread()
    page = build(cfg, model, not public, worker)
    try:
        page.queue(default_concurrency_limit=1).launch(
            server_name=cfg.host, server_port=cfg.port or free_port(cfg.host), share=cfg.share, quiet=True,
            max_file_size=f"{MAX_UPLOAD_MB}mb", show_error=not public, prevent_thread_lock=True)
    except OSError as err:
        raise UserError(f"cannot serve on {cfg.host}:{cfg.port}: {str(err).split('. ')[0]}") from None
    print(f"serving {model.path} on {page.local_url}" + (f" and {page.share_url}" if cfg.share else "")
          + "; Ctrl+C stops", flush=True)
    try:
        worker.serve()
    except KeyboardInterrupt:
        page.close()


if __name__ == "__main__":
    exit_on_user_error(main)

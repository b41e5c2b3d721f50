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
import socket
import time
from dataclasses import dataclass
from functools import partial, wraps

import torch
from PIL import Image

from diffusion.samplers import SAMPLERS
from playground import (NUM, SHIPPED, MainThread, complete, denoising, held_out_digits, open_model, redraw,
                        sampling_for, shipped_name, summary)
from utils.canvas import CANVAS, MAX_UPLOAD_MB, canvas, drawing_to_digit, erased, read_upload, zoomed
from utils.config import checkpoint_option, device_option, precision_option
from utils.device import set_cpu_threads
from utils.errors import UserError, exit_on_user_error
from utils.flags import check_fields, from_args, option, parse_flags

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

    def load_into_page(current, path, name=None):
        try:
            m = open_model(path, cfg)
        except UserError as err:  # a page for others names no file of this machine
            raise UserError(f"{err}; the page keeps {current}" if can_load else f"cannot load {name}") from None
        return (str(m.path), summary(m, full_path=can_load), str(m.path) if can_load else "", shipped_name(m),
                *choices(m))

    @in_page
    def switch(current, path):  # the checkpoint box: any file the server reads (this machine's page only)
        return load_into_page(current, path.strip())

    @in_page
    def pick(current, name):  # a shipped model, by its name on the page: no path comes from the page
        if name not in SHIPPED:
            raise UserError(f"no shipped model {name!r}; choose {' or '.join(SHIPPED)}")
        return load_into_page(current, str(SHIPPED[name]), name)

    @in_page
    def on_generate(path, digit, sampler, steps, guidance, seed, progress=gr.Progress()):
        m = open_model(path, cfg)
        start, sampling = time.perf_counter(), sampling_for(m, sampler, steps, guidance, seed)
        grid, frames = denoising(m, sampling, digit, progress)
        print(f"generated {NUM} digits in {time.perf_counter() - start:.3f} s by {sampling.describe(False)}", flush=True)
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
    shown = partial(gr.Image, format="png", interactive=False)  # an image the page shows, not an input
    pad = {"type": "numpy", "image_mode": "RGBA", "format": "png", "layers": False, "transforms": (),
           "canvas_size": (CANVAS, CANVAS), "fixed_canvas": True}  # the drawing's canvas and the eraser's
    with gr.Blocks(title="Diffusion playground", delete_cache=(3600, 3600)) as page:  # files older than an hour
        path, frames, draws = gr.State(str(model.path)), gr.State([]), gr.State(0)  # draws: test digits shown
        about = gr.Markdown(summary(model, full_path=can_load), elem_id="about")
        shipped_choice = gr.Radio(list(SHIPPED), value=shipped_name(model), label="shipped model", elem_id="shipped")
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
                    grid = shown(label="digits", elem_id="grid")
                    scrub = gr.Slider(0, 1, value=0, step=1, label="denoising step: from the noise to the digits",
                                      elem_id="scrub")
                    frame = shown(label="x_t and the predicted x0", elem_id="frame")
                    caption = gr.Markdown()
        with gr.Tab("Draw", elem_id="tab-draw"):
            gr.Markdown("Draw a digit; the model redraws it (SDEdit: noised to the strength, then denoised).")
            with gr.Row():
                sketch = gr.Sketchpad(**pad, elem_id="sketch",
                                      brush=gr.Brush(default_size=22, colors=["#000000"], color_mode="fixed"))
                with gr.Column():
                    draw_digit = gr.Dropdown(**digits, elem_id="draw-digit")
                    strength = gr.Slider(0.05, 1, value=0.6, step=0.05, label="strength: 0 keeps the drawing, "
                                         "1 draws anew", elem_id="strength")
                    draw_seed = gr.Number(0, precision=0, minimum=0, label="seed")
                    redraw_button = gr.Button("Redraw", variant="primary", elem_id="redraw")
            with gr.Row():
                before = shown(label="your digit, as the model sees it", elem_id="before")
                after = shown(label="redrawn", elem_id="after")
        with gr.Tab("Erase and complete", elem_id="tab-erase"):
            gr.Markdown("Brush over part of the digit; the model fills it in (inpainting).")
            with gr.Row():
                editor = gr.ImageEditor(**pad, sources=(), elem_id="eraser",
                                        brush=gr.Brush(default_size=40, colors=["#ff3333"], color_mode="fixed"))
                with gr.Column():
                    another = gr.Button("Another test digit", elem_id="another")
                    upload = gr.UploadButton("Upload an image", file_types=["image"], elem_id="upload")
                    erase_digit = gr.Dropdown(**digits, elem_id="erase-digit")
                    erase_seed = gr.Number(0, precision=0, minimum=0, label="seed")
                    complete_button = gr.Button("Complete", variant="primary", elem_id="complete")
            with gr.Row():
                masked = shown(label="what the model keeps", elem_id="masked")
                completed = shown(label="completed", elem_id="completed")

        loaded = [path, about, box, shipped_choice, digit, draw_digit, erase_digit, sampler, steps, guidance]
        if can_load:  # else not even the page's API reads a file by its path
            load_button.click(switch, [path, box], loaded)
        shipped_choice.input(pick, [path, shipped_choice], loaded)
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

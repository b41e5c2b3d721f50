"""The demo's work with a checkpoint: load it, generate and edit digits, one job at a time on the main thread."""
import contextvars
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from diffusion.inpainting import inpaint
from diffusion.pipeline import every_digit, sampling_times
from diffusion.sdedit import sdedit
from models.load import ONE_STEP_MODEL, SHIPPED_MODEL, checkpoint_or_shipped, load_to_sample
from utils.canvas import picture
from utils.datasets import checkpoint_data, to_model_range
from utils.errors import UserError
from utils.plotting import spread

NUM = 16            # digits per generated grid, 4 x 4
EDITS = 4           # edits of a drawing, completions of an erased digit: one row
FRAMES = 50         # at most this many steps of the denoising kept for the slider
SHIPPED = {name: path for name, path in (("DDPM, dpm++ 8 steps", SHIPPED_MODEL), ("DMD, 1 step", ONE_STEP_MODEL))
           if path.is_file()}  # the page's choice of shipped models, by name


def shipped_name(model):
    """The page's name for a loaded model that is a shipped one, else None."""
    return next((name for name, path in SHIPPED.items() if model.path.resolve() == path.resolve()), None)


def summary(model, full_path=True):
    """What the page says about a checkpoint loaded to sample (a models.load.Loaded)."""
    process, train = model.diffusion.config, model.ckpt.get("train_config", {})
    budget = f"{train['minutes']:g} minutes, " if train.get("minutes") and train.get("plan") else ""  # a --minutes run
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


def sampling_for(model, sampler, steps, guidance, seed):
    """The model's sampling with the page's choices (its own grid only with its own sampler)."""
    return replace(model.sampling, sampler=sampler, steps=int(steps), guidance=float(guidance), seed=int(seed),
                   grid=model.sampling.grid if sampler == model.sampling.sampler else "")


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
    times = sampling_times(sampling, model.diffusion, "steps")
    shown, frames, tick = spread(times, FRAMES) | {-1}, [], ticker(progress, len(times) + 1, "denoising")

    def keep(first, step):
        tick()
        if step.t in shown:
            x0 = step.pred_x0.clamp(-1, 1)
            frames.append((np.concatenate([picture(step.x.clamp(-1, 1), 4, 1), picture(x0, 4, 1)], axis=1),
                           "finished digits" if step.t < 0 else f"t = {step.t:.3g}: x_t (left), predicted x0 (right)"))

    final = model.generate(NUM, digit_labels(model, digit, NUM), sampling, batch_size=NUM, callback=keep)
    return picture(final, 4), frames


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

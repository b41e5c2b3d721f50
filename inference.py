"""Generate MNIST digits from a checkpoint (any process) and show the denoising, from noise to digits.

    python inference.py --checkpoint_path checkpoints/ddpm_checkpoint
    python inference.py --sampler ddpm --gif outputs/denoising.gif
    python inference.py --digit all --guidance 1      # one row per digit, more classifier-free guidance
    python inference.py --inpaint right --digit 3     # complete test digits' left halves as threes
    python inference.py --image my7.png --strength 0.6 --digit 3   # SDEdit: a 7 redrawn toward a 3
    python inference.py --interpolate 8 --between 3 8 # a 3 turning into an 8 (diffusion/interpolation.py)

Writes <output_dir>/samples.png (the final digits) and <output_dir>/denoising_steps.png
(rows = samples, columns = times from noise down to the data), plus inpainting.png or editing.png,
and shows the figure when a display is available (never with --no_show).
"""
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import torch

from diffusion.config import SamplingConfig
from diffusion.inpainting import MASKS, inpaint, named_mask
from diffusion.interpolation import slerp, soft_labels
from diffusion.pipeline import every_digit, generate, make_denoiser, sampling_times
from diffusion.processes import Process
from diffusion.samplers import sample
from diffusion.sdedit import sdedit
from models.load import checkpoint_or_shipped, class_names, load_guide, load_model
from utils.config import InferenceConfig
from utils.data import to_model_range
from utils.datasets import checkpoint_data, read_image
from utils.device import autocast, resolve_precision, select_device, set_cpu_threads
from utils.errors import UserError, ensure_writable, exit_on_user_error
from utils.flags import from_args, parse_flags
from utils.plotting import can_show, save_gif, save_grid, spread, step_figure

CONFIGS = (InferenceConfig, SamplingConfig)


@dataclass
class Job:
    """What every kind of run shares: the options, the network, its process and the autocast context."""
    cfg: InferenceConfig
    sampling: SamplingConfig
    model: torch.nn.Module
    diffusion: Process
    amp: Callable
    guide: torch.nn.Module = None     # autoguidance's weaker network (--guide_model), or None

    def denoiser(self, labels):
        """denoise(x_t, t) with the sampling's guidance, toward `labels` (None: unconditional)."""
        s = self.sampling
        return make_denoiser(self.model, self.diffusion, labels, s.guidance, s.guidance_interval, self.amp, self.guide)

    def noise(self, shape):
        """(the starting noise, the generator that drew it and draws the rest), from --seed."""
        generator = torch.Generator(device=self.diffusion.device).manual_seed(self.sampling.seed)
        return torch.randn(shape, generator=generator, device=self.diffusion.device), generator


def labels_for(cfg, model_cfg, device, classes):
    """(the requested classes as a label batch or None, images per row of the grids).

    Unconditional checkpoints: None. Class-conditional ones: --digit (a class index or name), or by
    default every class in turn (0, 1, ..., 9, 0, ...), one class per column of the grid."""
    n = model_cfg.num_classes
    if n == 0:
        if cfg.digit:
            raise UserError("--digit needs a class-conditional checkpoint (trained with --num_classes 10, the "
                            "default); this one is unconditional")
        return None, 8
    if not cfg.digit:
        return every_digit(cfg.num_samples, n, device), n
    if cfg.digit == "all":  # one row per class
        per_row = max(1, cfg.num_samples // n)
        return torch.arange(n, device=device).repeat_interleave(per_row), per_row
    if cfg.digit in classes:
        return torch.full((cfg.num_samples,), classes.index(cfg.digit), device=device), 8
    if not cfg.digit.isdigit() or int(cfg.digit) >= n:
        raise UserError(f"--digit {cfg.digit!r}: give 'all', a class index 0-{n - 1} or one of {', '.join(classes)}")
    return torch.full((cfg.num_samples,), int(cfg.digit), device=device), 8


def main(argv=None):
    args, typed = parse_flags("Sample images from a trained diffusion model.", CONFIGS, argv)
    cfg, sampling = from_args(InferenceConfig, args), from_args(SamplingConfig, args)
    device = select_device(cfg.device)
    set_cpu_threads()
    amp_dtype = resolve_precision(cfg.precision, device)
    ckpt, path = checkpoint_or_shipped(cfg.checkpoint_path)
    model, diffusion = load_model(ckpt, path, cfg.use_ema, device)
    sampling = sampling.for_model(diffusion.config, typed)  # a few-step model's own steps
    classes = class_names(ckpt)
    labels, nrow = labels_for(cfg, model.config, device, classes)
    job = Job(cfg, sampling, model, diffusion, partial(autocast, device, amp_dtype),
              load_guide(sampling.guide_model, ckpt, path, model))
    num = len(labels) if labels is not None else cfg.num_samples
    timesteps = sampling_times(sampling, diffusion)  # bad --steps refused before anything is written
    ensure_writable(cfg.output_dir, Path(cfg.gif).parent if cfg.gif else cfg.output_dir)
    if cfg.interpolate:
        return interpolation(job, labels)

    # the steps to keep: columns of the figure, and frames of the GIF
    shown = spread(timesteps, cfg.figure_steps) | {-1}
    frames = set(timesteps[::cfg.gif_every or max(1, len(timesteps) // 50)]) | {-1} if cfg.gif else set()

    action = "completing" if cfg.inpaint else "editing" if cfg.image else "sampling"
    print(f"{action} {num} images with {sampling.describe(labels is not None)}, on {device}", file=sys.stderr)
    start = time.perf_counter()
    kept = []  # the steps of the figure and the GIF

    def keep(step):
        if step.t in shown | frames:
            kept.append(step)

    requested = labels if cfg.digit else None  # editing and inpainting go toward a class only if asked
    if cfg.inpaint:
        final = inpainting(job, ckpt, requested, num, keep)
    elif cfg.image:
        final = editing(job, requested, num, keep)
    else:
        final = generate(model, diffusion, num, sampling, labels=labels, batch_size=num, autocast=job.amp,
                         batch_flag="--num_samples", callback=lambda first, step: keep(step), guide=job.guide)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start

    save_grid(final, Path(cfg.output_dir) / "samples.png", nrow=nrow)
    figure = [s._replace(x=s.x[:cfg.figure_samples].cpu(), pred_x0=s.pred_x0[:cfg.figure_samples].cpu())
              for s in kept if s.t in shown]
    names = [classes[i] for i in labels[:cfg.figure_samples].tolist()] if labels is not None else None
    step_figure(figure, Path(cfg.output_dir) / "denoising_steps.png", show=can_show() and not cfg.no_show,
                with_x0=cfg.show_x0, row_names=names)
    if cfg.gif:
        save_gif([s.x.cpu() for s in kept if s.t in frames], cfg.gif, nrow=nrow)
    extra = ["inpainting.png"] if cfg.inpaint else ["editing.png"] if cfg.image else []
    written = [str(Path(cfg.output_dir) / name) for name in ["samples.png", "denoising_steps.png", *extra]]
    print(f"{num} images in {seconds:.1f} s; wrote {', '.join(written + ([cfg.gif] if cfg.gif else []))}",
          file=sys.stderr)
    return final


def editing(job, labels, num, keep):
    """SDEdit of --image, `num` times with different noise (toward --digit if given); writes
    editing.png: the image, then its edits."""
    cfg, net = job.cfg, job.model.config
    image = to_model_range(read_image(cfg.image, net.image_size, net.in_channels)[None]).to(job.diffusion.device)
    image = image.repeat(num, 1, 1, 1)
    noise, generator = job.noise(image.shape)
    try:
        final = sdedit(job.denoiser(labels), job.diffusion, image, noise, job.sampling, cfg.strength, generator, keep)
    except ValueError as err:
        raise UserError(f"--strength {cfg.strength:g}: {err}; raise --strength or --steps") from None
    save_grid(torch.cat([image[:1], final]), Path(cfg.output_dir) / "editing.png", nrow=num + 1)
    return final


def inpainting(job, ckpt, labels, num, keep):
    """Complete `num` images (test images, or --image) outside the --inpaint mask; writes
    inpainting.png: the originals, the masked inputs (the unknown region grey), the completions."""
    cfg, size, channels = job.cfg, job.model.config.image_size, job.model.config.in_channels
    if cfg.image:
        images = read_image(cfg.image, size, channels)[None].repeat(num, 1, 1, 1)
    else:
        test = checkpoint_data(ckpt, False, cfg.data_dir)[1].images
        images = test[torch.randperm(len(test), generator=torch.Generator().manual_seed(job.sampling.seed))[:num]]
    known = to_model_range(images).to(job.diffusion.device)
    if cfg.inpaint in MASKS:
        mask = named_mask(cfg.inpaint, size)
    elif Path(cfg.inpaint).is_file():
        mask = (read_image(cfg.inpaint, size, 1)[None] > 127).float()
    else:
        raise UserError(f"--inpaint {cfg.inpaint!r}: give one of {', '.join(MASKS)}, or a PNG mask file")
    mask = mask.to(known.device)
    noise, generator = job.noise(known.shape)
    final = inpaint(job.denoiser(labels), job.diffusion, known, mask, noise, job.sampling, generator, cfg.resample,
                    keep)
    save_grid(torch.cat([known, known * mask, final]), Path(cfg.output_dir) / "inpainting.png", nrow=len(known))
    return final


def interpolation(job, labels, rows=4):
    """--interpolate N: `rows` rows of N frames, decoded at eta 0 with the same noise and labels
    per frame: between two noises (spherically), or with --between A B between two classes at one
    noise. Writes interpolation.png and interpolation.gif."""
    cfg, net, device = job.cfg, job.model.config, job.diffusion.device
    n = cfg.interpolate
    weights = torch.linspace(0, 1, n, dtype=torch.float64)
    shape = (rows, net.in_channels, net.image_size, net.image_size)
    start, generator = job.noise(shape)
    end = torch.randn(shape, generator=generator, device=device)
    if cfg.between:
        if not net.num_classes or max(cfg.between) >= net.num_classes:
            raise UserError(f"--between {' '.join(map(str, cfg.between))}: the checkpoint has {net.num_classes} classes")
        noise = start.repeat_interleave(n, dim=0)
        labels = soft_labels(*cfg.between, weights.float(), net.num_classes).to(device).repeat(rows, 1)
    else:
        noise = torch.cat([slerp(start[r].double(), end[r].double(), weights).float() for r in range(rows)])
        if labels is None or len(labels) < rows:  # one class per row: --digit's, or every class in turn
            labels = every_digit(rows, net.num_classes, device)
        labels = labels[:rows].repeat_interleave(n) if labels is not None else None
    final = sample(job.sampling.sampler, job.denoiser(labels), job.diffusion, noise, job.sampling.steps, 0.0,
                   grid=job.sampling.grid)
    out = Path(cfg.output_dir)
    save_grid(final, out / "interpolation.png", nrow=n)
    save_gif([final[i::n].cpu() for i in range(n)], out / "interpolation.gif", nrow=rows)
    print(f"wrote {out / 'interpolation.png'} and {out / 'interpolation.gif'} ({rows} rows of {n} frames, eta 0)",
          file=sys.stderr)
    return final


if __name__ == "__main__":
    exit_on_user_error(main)

"""Generate MNIST digits from a checkpoint and show the denoising, from pure noise to digits.

    python inference.py --checkpoint_path checkpoints/ddpm_checkpoint
    python inference.py --sampler dpm++ --steps 20 --gif outputs/denoising.gif
    python inference.py --digit all --guidance 1      # one row per digit, more classifier-free guidance

Writes <output_dir>/samples.png (the final digits) and <output_dir>/denoising_steps.png
(rows = samples, columns = timesteps from t = T-1 down to t = 0), and shows the figure when a
display is available (never with --no_show).
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from diffusion.gaussian import GaussianDiffusion
from diffusion.samplers import (SAMPLERS, describe_guidance, every_digit, guided_timesteps, make_denoiser,
                                make_timesteps, settings)
from models.unet import UNet
from utils.checkpoint import load_checkpoint, load_weights
from utils.config import DiffusionConfig, ModelConfig, SampleConfig, add_arguments, from_args
from utils.device import autocast, resolve_precision, select_device, set_cpu_threads
from utils.errors import UserError, exit_on_user_error
from utils.plotting import can_show, save_gif, save_grid, step_figure


def build_parser():
    parser = argparse.ArgumentParser(description="Sample MNIST digits from a trained DDPM.", allow_abbrev=False)
    add_arguments(parser, SampleConfig)
    return parser


def load_model(ckpt, path, use_ema, device, make_model=UNet):
    """The U-Net (or what `make_model` builds) and the diffusion process of a loaded checkpoint."""
    model_cfg = ModelConfig(**ckpt["model_config"])
    model = make_model(model_cfg)
    load_weights(model, ckpt["ema" if use_ema else "model"], path)
    return model.to(device).eval(), GaussianDiffusion(DiffusionConfig(**ckpt["diffusion_config"]), device)


def labels_for(cfg, model_cfg, device):
    """(the requested digits as a label batch or None, images per row of the grids).

    Unconditional checkpoints: None. Class-conditional ones: --digit, or by default every digit
    in turn (0, 1, ..., 9, 0, ...), ten per row, so each column of the grid is one digit."""
    if model_cfg.num_classes == 0:
        if cfg.digit:
            raise UserError("--digit needs a class-conditional checkpoint (one trained without --no-class_cond); "
                            "this one is unconditional")
        return None, 8
    if not cfg.digit:
        return every_digit(cfg.num_samples, model_cfg.num_classes, device), model_cfg.num_classes
    if cfg.digit == "all":  # one row per digit
        per_row = max(1, cfg.num_samples // 10)
        return torch.arange(10, device=device).repeat_interleave(per_row), per_row
    return torch.full((cfg.num_samples,), int(cfg.digit), device=device), 8


def shown_timesteps(timesteps, count):
    """`count` timesteps spread evenly from the first (T-1) to the last (0) of the sampler's."""
    picks = np.unique(np.linspace(0, len(timesteps) - 1, min(count, len(timesteps))).round().astype(int))
    return {timesteps[i] for i in picks}


def main(argv=None):
    cfg = from_args(SampleConfig, build_parser().parse_args(argv))
    device = select_device(cfg.device)
    set_cpu_threads()
    amp_dtype = resolve_precision(cfg.precision, device)
    ckpt, path = load_checkpoint(cfg.checkpoint_path)
    model, diffusion = load_model(ckpt, path, cfg.use_ema, device)
    model_cfg = model.config
    labels, nrow = labels_for(cfg, model_cfg, device)
    num = len(labels) if labels is not None else cfg.num_samples
    out_dir = Path(cfg.output_dir)
    for folder in (out_dir, Path(cfg.gif).parent if cfg.gif else out_dir):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot create {folder}: {err.strerror}") from None

    # ---- noise and schedule --------------------------------------------------------------------
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    shape = (num, model_cfg.in_channels, model_cfg.image_size, model_cfg.image_size)
    noise = torch.randn(shape, generator=generator, device=device)
    steps, eta = settings(cfg.sampler, cfg.steps, cfg.eta)
    try:
        timesteps = make_timesteps(cfg.sampler, diffusion, steps)
    except ValueError as err:
        raise UserError(f"--steps: {err}") from None
    shown = shown_timesteps(timesteps, cfg.figure_steps)
    gif_every = cfg.gif_every or max(1, len(timesteps) // 50)
    denoise = make_denoiser(model, labels, cfg.guidance, model_cfg.num_classes, lambda: autocast(device, amp_dtype),
                            guided_timesteps(cfg.guidance_interval, diffusion))

    # ---- sample: predict, then step ------------------------------------------------------------
    guided = ", " + describe_guidance(cfg.guidance, cfg.guidance_interval) if labels is not None and cfg.guidance else ""
    print(f"sampling {num} digits with {cfg.sampler}, {len(timesteps)} steps{guided}, on {device}", file=sys.stderr)
    kept, frames = [], []
    start = time.perf_counter()
    with torch.inference_mode():
        trajectory = SAMPLERS[cfg.sampler](denoise, diffusion, noise, timesteps, generator, eta)
        for i, step in enumerate(tqdm(trajectory, total=len(timesteps) + 1, desc=cfg.sampler)):
            if step.t in shown or step.t < 0:
                kept.append(step._replace(x=step.x[:cfg.figure_samples].cpu(),
                                          pred_x0=step.pred_x0[:cfg.figure_samples].cpu()))
            if cfg.gif and (i % gif_every == 0 or step.t < 0):
                frames.append(step.x.cpu())
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    final = step.x

    # ---- save and show -------------------------------------------------------------------------
    save_grid(final, out_dir / "samples.png", nrow=nrow)
    show = can_show() and not cfg.no_show
    step_figure(kept, out_dir / "denoising_steps.png", show=show, with_x0=cfg.show_x0)
    if cfg.gif:
        save_gif(frames, cfg.gif, nrow=nrow)
    print(f"{num} digits in {seconds:.1f} s; wrote {out_dir / 'samples.png'} and {out_dir / 'denoising_steps.png'}"
          + (f" and {cfg.gif}" if cfg.gif else ""), file=sys.stderr)


if __name__ == "__main__":
    exit_on_user_error(main)

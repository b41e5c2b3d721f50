"""Generate MNIST digits from a checkpoint and show the denoising, from pure noise to digits.

    python inference.py --checkpoint_path checkpoints/ddpm_checkpoint
    python inference.py --sampler ddpm --gif outputs/denoising.gif
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

from diffusion.samplers import every_digit, generate, make_timesteps
from models.load import load_model
from utils.checkpoint import load_checkpoint
from utils.config import InferenceConfig, SamplingConfig, add_arguments, from_args
from utils.device import autocast, resolve_precision, select_device, set_cpu_threads
from utils.errors import UserError, exit_on_user_error
from utils.plotting import can_show, save_gif, save_grid, step_figure


def build_parser():
    parser = argparse.ArgumentParser(description="Sample MNIST digits from a trained DDPM.", allow_abbrev=False)
    add_arguments(parser, InferenceConfig)
    add_arguments(parser, SamplingConfig)
    return parser


def labels_for(cfg, model_cfg, device):
    """(the requested digits as a label batch or None, images per row of the grids).

    Unconditional checkpoints: None. Class-conditional ones: --digit, or by default every digit
    in turn (0, 1, ..., 9, 0, ...), ten per row, so each column of the grid is one digit."""
    if model_cfg.num_classes == 0:
        if cfg.digit:
            raise UserError("--digit needs a class-conditional checkpoint (trained with --num_classes 10, the "
                            "default); this one is unconditional")
        return None, 8
    if not cfg.digit:
        return every_digit(cfg.num_samples, model_cfg.num_classes, device), model_cfg.num_classes
    if cfg.digit == "all":  # one row per digit
        per_row = max(1, cfg.num_samples // 10)
        return torch.arange(10, device=device).repeat_interleave(per_row), per_row
    return torch.full((cfg.num_samples,), int(cfg.digit), device=device), 8


def spread(timesteps, count):
    """`count` timesteps spread evenly from the first (T-1) to the last (0) of the sampler's."""
    picks = np.unique(np.linspace(0, len(timesteps) - 1, min(count, len(timesteps))).round().astype(int))
    return {timesteps[i] for i in picks}


def make_folders(*folders):
    for folder in folders:
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot create {folder}: {err.strerror}") from None


def main(argv=None):
    args = build_parser().parse_args(argv)
    cfg, sampling = from_args(InferenceConfig, args), from_args(SamplingConfig, args)
    device = select_device(cfg.device)
    set_cpu_threads()
    amp_dtype = resolve_precision(cfg.precision, device)
    model, diffusion = load_model(*load_checkpoint(cfg.checkpoint_path), cfg.use_ema, device)
    labels, nrow = labels_for(cfg, model.config, device)
    num = len(labels) if labels is not None else cfg.num_samples
    make_folders(cfg.output_dir, Path(cfg.gif).parent if cfg.gif else cfg.output_dir)

    # the steps to keep: columns of the figure, and frames of the GIF
    try:
        timesteps = make_timesteps(sampling.sampler, diffusion, sampling.steps)
    except ValueError as err:
        raise UserError(f"--steps: {err}") from None
    shown = spread(timesteps, cfg.figure_steps) | {-1}
    frames = set(timesteps[::cfg.gif_every or max(1, len(timesteps) // 50)]) | {-1} if cfg.gif else set()

    print(f"sampling {num} digits with {sampling.describe(labels is not None)}, on {device}", file=sys.stderr)
    start = time.perf_counter()
    final, kept = generate(model, diffusion, num, sampling, labels, batch_size=num,
                           autocast=lambda: autocast(device, amp_dtype), keep=shown | frames)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start

    save_grid(final, Path(cfg.output_dir) / "samples.png", nrow=nrow)
    figure = [s._replace(x=s.x[:cfg.figure_samples].cpu(), pred_x0=s.pred_x0[:cfg.figure_samples].cpu())
              for s in kept if s.t in shown]
    step_figure(figure, Path(cfg.output_dir) / "denoising_steps.png", show=can_show() and not cfg.no_show,
                with_x0=cfg.show_x0)
    if cfg.gif:
        save_gif([s.x.cpu() for s in kept if s.t in frames], cfg.gif, nrow=nrow)
    print(f"{num} digits in {seconds:.1f} s; wrote {Path(cfg.output_dir) / 'samples.png'} and "
          f"{Path(cfg.output_dir) / 'denoising_steps.png'}" + (f" and {cfg.gif}" if cfg.gif else ""), file=sys.stderr)


if __name__ == "__main__":
    exit_on_user_error(main)

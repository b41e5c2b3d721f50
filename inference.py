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
from pathlib import Path

import torch

from diffusion.config import SamplingConfig
from diffusion.inpainting import MASKS, inpaint, named_mask
from diffusion.interpolation import slerp, soft_labels
from diffusion.pipeline import every_digit, sampling_times
from diffusion.samplers import sample
from diffusion.sdedit import sdedit
from models.load import checkpoint_or_shipped, load_to_sample
from utils.config import InferenceConfig
from utils.datasets import checkpoint_data, read_image, to_model_range
from utils.device import set_cpu_threads
from utils.errors import UserError, ensure_writable, exit_on_user_error
from utils.flags import from_args, parse_flags
from utils.plotting import can_show, save_gif, save_grid, spread, step_figure

CONFIGS = (InferenceConfig, SamplingConfig)


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
    cfg = from_args(InferenceConfig, args)
    set_cpu_threads()
    loaded = load_to_sample(checkpoint_or_shipped(cfg.checkpoint_path), cfg.device, cfg.precision, cfg.use_ema,
                            from_args(SamplingConfig, args), typed)
    sampling, device, classes = loaded.sampling, loaded.device, loaded.classes
    labels, nrow = labels_for(cfg, loaded.net.config, device, classes)
    num = len(labels) if labels is not None else cfg.num_samples
    timesteps = sampling_times(sampling, loaded.diffusion)  # bad --steps refused before anything is written
    ensure_writable(cfg.output_dir, Path(cfg.gif).parent if cfg.gif else cfg.output_dir)
    if cfg.interpolate:
        return interpolation(cfg, loaded, labels)

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
        final = inpainting(cfg, loaded, requested, num, keep)
    elif cfg.image:
        final = editing(cfg, loaded, requested, num, keep)
    else:
        final = loaded.generate(num, labels, batch_size=num, callback=lambda first, step: keep(step),
                                batch_flag="--num_samples")
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


def editing(cfg, loaded, labels, num, keep):
    """SDEdit of --image by `loaded` (a models.load.Loaded), `num` times with different noise (toward
    --digit if given); writes editing.png: the image, then its edits."""
    net = loaded.net.config
    image = to_model_range(read_image(cfg.image, net.image_size, net.in_channels)[None]).to(loaded.device)
    image = image.repeat(num, 1, 1, 1)
    noise, generator = loaded.noise(image.shape)
    try:
        final = sdedit(loaded.denoiser(labels), loaded.diffusion, image, noise, loaded.sampling, cfg.strength,
                       generator, keep)
    except ValueError as err:
        raise UserError(f"--strength {cfg.strength:g}: {err}; raise --strength or --steps") from None
    save_grid(torch.cat([image[:1], final]), Path(cfg.output_dir) / "editing.png", nrow=num + 1)
    return final


def inpainting(cfg, loaded, labels, num, keep):
    """Complete `num` images (test images, or --image) outside the --inpaint mask; writes
    inpainting.png: the originals, the masked inputs (the unknown region grey), the completions."""
    size, channels = loaded.net.config.image_size, loaded.net.config.in_channels
    if cfg.image:
        images = read_image(cfg.image, size, channels)[None].repeat(num, 1, 1, 1)
    else:
        test = checkpoint_data(loaded.ckpt, False, cfg.data_dir)[1].images
        images = test[torch.randperm(len(test), generator=torch.Generator().manual_seed(loaded.sampling.seed))[:num]]
    known = to_model_range(images).to(loaded.device)
    if cfg.inpaint in MASKS:
        mask = named_mask(cfg.inpaint, size)
    elif Path(cfg.inpaint).is_file():
        mask = (read_image(cfg.inpaint, size, 1)[None] > 127).float()
    else:
        raise UserError(f"--inpaint {cfg.inpaint!r}: give one of {', '.join(MASKS)}, or a PNG mask file")
    mask = mask.to(known.device)
    noise, generator = loaded.noise(known.shape)
    final = inpaint(loaded.denoiser(labels), loaded.diffusion, known, mask, noise, loaded.sampling, generator,
                    cfg.resample, keep)
    save_grid(torch.cat([known, known * mask, final]), Path(cfg.output_dir) / "inpainting.png", nrow=len(known))
    return final


def interpolation(cfg, loaded, labels, rows=4):
    """--interpolate N: `rows` rows of N frames, decoded at eta 0 with the same noise and labels
    per frame: between two noises (spherically), or with --between A B between two classes at one
    noise. Writes interpolation.png and interpolation.gif."""
    net, device, n = loaded.net.config, loaded.device, cfg.interpolate
    weights = torch.linspace(0, 1, n, dtype=torch.float64)
    shape = (rows, net.in_channels, net.image_size, net.image_size)
    start, generator = loaded.noise(shape)
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
    final = sample(loaded.sampling.sampler, loaded.denoiser(labels), loaded.diffusion, noise, loaded.sampling.steps,
                   0.0, grid=loaded.sampling.grid)
    out = Path(cfg.output_dir)
    save_grid(final, out / "interpolation.png", nrow=n)
    save_gif([final[i::n].cpu() for i in range(n)], out / "interpolation.gif", nrow=rows)
    print(f"wrote {out / 'interpolation.png'} and {out / 'interpolation.gif'} ({rows} rows of {n} frames, eta 0)",
          file=sys.stderr)
    return final


if __name__ == "__main__":
    exit_on_user_error(main)

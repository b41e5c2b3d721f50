"""Where a VDM's bound spends its bits: the diffusion integrand by time and by kind of pixel.

    python -m benchmarks.bound_profile --checkpoint_path checkpoints/vdm
    python -m benchmarks.bound_profile --checkpoint_path checkpoints/vdm --num_images 200 --times 20

For test images in the order of `likelihood.py --seed S`, one time at the middle of each of --times
equal slices of [0, 1] and one noise draw per image and time, it prints the integrand of the
diffusion term, 1/2 gamma' ||eps - eps_hat(z_t, t)||^2 (Kingma et al. 2021, eq. 17), in bits per
dimension of the image, split over the pixels that are background (value -1), saturated (1) and in
between, with its x0 estimate as the network gives it and clamped to [-1, 1] (--clip_x0; a network
trained with the clamp overshoots the background freely, so only its clamped reading is its model).
The mean over the slices estimates the diffusion term (likelihood.py gives the bound with its error).
The network runs as in likelihood.py: fp32, the null label.
"""
import dataclasses
import math
from dataclasses import dataclass

import torch

from benchmarks.common import vdm_and_test_images
from diffusion.processes import make_process
from utils.config import check_fields, checkpoint_option, data_dir_option, device_option, from_args, option, parse_flags
from utils.errors import exit_on_user_error

KINDS = ("background", "saturated", "in between")


@dataclass
class Flags:
    checkpoint_path: str = checkpoint_option("a VDM checkpoint")
    num_images: int = option(100, "test images", bounds="[1, 10000]")
    times: int = option(10, "slices of [0, 1], one time at the middle of each", bounds="[1, inf)")
    seed: int = option(0, "image order (as likelihood.py's) and noise", bounds="[0, inf)")
    data_dir: str = data_dir_option()
    device: str = device_option()

    def __post_init__(self):
        check_fields(self)


def profile(model, process, images, times, generator):
    """(times, rows): rows[i][clip] = the integrand in bits/dim at times[i], summed over each kind."""
    kinds = torch.where(images <= -1, 0, torch.where(images >= 1, 1, 2))
    per_dim = 0.5 * (process.gamma_max - process.gamma_min) / (images[0].numel() * len(images) * math.log(2))
    clamped = make_process(dataclasses.replace(process.config, clip_x0=True), process.device)
    unclamped = make_process(dataclasses.replace(process.config, clip_x0=False), process.device)
    grid, rows = [(i + 0.5) / times for i in range(times)], []
    for t in grid:
        time = torch.full((len(images),), t, device=process.device)
        noise = torch.randn(images.shape, generator=generator).to(process.device)
        z = process.q_sample(images, time, noise)
        with torch.no_grad():
            out = model(z, process.model_time(time, len(z), z.device), None).float()
        rows.append({})
        for clip, p in ((False, unclamped), (True, clamped)):
            error = (p.predict_x0_eps(z, time, out)[1] - noise).pow(2).double().cpu()
            rows[-1][clip] = [per_dim * error[kinds == k].sum().item() for k in range(3)]
    return grid, rows


def main(argv=None):
    args, _ = parse_flags(__doc__.splitlines()[0], [Flags], argv)
    cfg = from_args(Flags, args)
    model, process, images, generator, path = vdm_and_test_images(cfg, "the profile")
    between = ((images > -1) & (images < 1)).float().mean().item()
    print(f"{path}: {len(images)} test images, clip_x0 {process.clip_x0}; {100 * between:.1f}% of pixels in between")
    print(f"{'t':>5s} | {'unclamped':>10s} {'clamped':>8s} | " + " | ".join(f"{k:>19s}" for k in KINDS))
    grid, rows = profile(model, process, images, cfg.times, generator)
    for t, row in zip(grid, rows):
        kinds = " | ".join(f"{row[False][k]:9.3f} {row[True][k]:9.3f}" for k in range(3))
        print(f"{t:5.3f} | {sum(row[False]):10.3f} {sum(row[True]):8.3f} | {kinds}")
    means = [sum(sum(row[clip]) for row in rows) / len(rows) for clip in (False, True)]
    print(f"mean over t, bits/dim: {means[0]:.3f} unclamped, {means[1]:.3f} clamped "
          "(each kind: unclamped, clamped; a --clip_x0 checkpoint's own reading is the clamped one)")
    return grid, rows


if __name__ == "__main__":
    exit_on_user_error(main)

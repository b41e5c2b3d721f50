"""Checkpoints compared by their bound on the same test images, times and noise: the paired difference.

    python -m benchmarks.paired_bound --checkpoints checkpoints/vdm_a checkpoints/vdm_b --num_images 200

Two runs of a recipe scored apart differ by the spread of the test images (about 0.017 bits/dim of
standard error at 200 images) far more than by a change to the recipe. Scored on the same images
with the same draws of t and noise (likelihood.py's order and generator for --seed), the per-image
differences of the bound cancel what the images share, and their mean has a standard error of its
own, often ten times smaller. The first checkpoint is the reference. With --split train the same
comparison runs on training images: the bound there against the test set's is how far a run has
overfitted.
"""
import math
from dataclasses import dataclass

import torch

from benchmarks.common import bound_checkpoint
from likelihood import mean_and_error, network
from utils.config import data_dir_option, device_option
from utils.errors import UserError, exit_on_user_error
from utils.flags import check_fields, from_args, option, parse_flags


@dataclass
class Flags:
    checkpoints: tuple = option((), "checkpoints with a variational bound (vdm, ddpm), the reference first", item=str)
    num_images: int = option(200, "images scored", bounds="[2, 10000]")
    split: str = option("test", "score test images, or training images (to see overfitting)",
                        choices=("test", "train"))
    t_samples: int = option(20, "times per image of VDM's Monte Carlo integral (DDPM's bound: every t)",
                            bounds="[1, inf)")
    batch_size: int = option(500, "network evaluations per batch", bounds="[1, inf)")
    seed: int = option(0, "image order (as likelihood.py's), times and noise", bounds="[0, inf)")
    data_dir: str = data_dir_option()
    device: str = device_option()

    def __post_init__(self):
        check_fields(self)
        if len(self.checkpoints) < 2:
            raise UserError("--checkpoints needs two or more checkpoints, the reference first")


def per_image_bits(cfg, checkpoint_path):
    """(the process's bound per image in bits/dim, the images of cfg.split, the path read) for cfg.seed."""
    model, process, images, generator, path = bound_checkpoint(cfg, "the paired comparison", checkpoint_path, cfg.split)
    terms, _ = process.bound(*network(model, process), images, generator, cfg.t_samples, cfg.batch_size)
    return sum(terms.values()) / (images[0].numel() * math.log(2)), images, path


def main(argv=None):
    args, _ = parse_flags(__doc__.splitlines()[0], [Flags], argv)
    cfg = from_args(Flags, args)
    scored = [per_image_bits(cfg, path) for path in cfg.checkpoints]
    reference, images = scored[0][:2]
    for _, other, path in scored[1:]:
        if other.shape != images.shape or not torch.equal(other, images):
            raise UserError(f"{path} reads other {cfg.split} images than {scored[0][2]}: no pairs to compare")
    print(f"Bound on {cfg.num_images} {cfg.split} images (seed {cfg.seed}), {cfg.t_samples} t per image, bits/dim")
    rows = []
    for values, _, path in scored:
        mean, error = mean_and_error(values)
        change, change_error = mean_and_error(values - reference)
        rows.append({"checkpoint": str(path), "bits_per_dim": mean, "standard_error": error,
                     "paired_difference": change, "paired_error": change_error})
        print(f"{str(path):40s} {mean:.4f} ± {error:.4f}   against the first {change:+.4f} ± {change_error:.4f}")
    return rows


if __name__ == "__main__":
    exit_on_user_error(main)

"""What step s trains on: this process's slice of the global batch, with its noise, timesteps and
label dropout. Every random stream of a run comes from --seed, here and nowhere else: the data
order depends only on (seed, epoch) and the noise only on (seed, s), so a resumed run draws
exactly what an uninterrupted one would, even in the middle of an epoch, and torchrun's processes
together draw what one process would.
"""
import sys

import torch

from utils.datasets import to_model_range
from utils.errors import UserError

GRID_SEED = 1234        # the fixed noise of the per-epoch sample grids, the same at every epoch
QUICK_FID_SEED = 4321   # the samples of --eval_every, the same at every evaluation


def fit_batch(batch_size, num_images, world_size, name):
    """The global batch size for a data set of num_images: --batch_size, or for a smaller data set
    all of its images (rounded down to a multiple of the processes), said in one line."""
    if num_images >= batch_size:
        if batch_size % world_size:
            raise UserError(f"--batch_size {batch_size} must be divisible by the {world_size} processes")
        return batch_size
    fitted = num_images - num_images % world_size
    if fitted == 0:
        raise UserError(f"{name} has {num_images} images, fewer than the {world_size} processes; add images or "
                        "run fewer processes")
    print(f"--batch_size {batch_size} is more than the {num_images} images of {name}: training on {fitted} "
          "per step", file=sys.stderr)
    return fitted


class Batches:
    def __init__(self, data, cfg, rank, world_size, process, null_label):
        """data: a utils.datasets.Data on the training device; cfg: the TrainConfig (batch_size,
        seed, p_uncond); process: what draws the times (diffusion/processes.py); null_label: the
        label that stands for "none" (None: an unconditional model)."""
        self.images, self.labels, self.pair_noise, self.cfg = data.images, data.labels, data.noise, cfg
        self.process, self.null_label = process, null_label
        local = cfg.batch_size // world_size
        self.part = slice(rank * local, (rank + 1) * local)
        self.steps_per_epoch = len(self.images) // cfg.batch_size
        self.noise_gen = torch.Generator(device=self.images.device)
        self.epoch, self.order = None, None

    def get(self, step):
        """(x0, y, noise, t) of optimizer step `step`: x0 (B, C, H, W) in [-1, 1], y (B,) labels with
        the null label where dropped (None for an unconditional model), t (B,) the process's times."""
        cfg, device = self.cfg, self.images.device
        epoch, index = divmod(step, self.steps_per_epoch)
        if epoch != self.epoch:  # the shuffle's seed: distinct for every (seed, epoch) pair
            generator = torch.Generator().manual_seed(cfg.seed * 2 ** 32 + epoch)
            self.epoch, self.order = epoch, torch.randperm(len(self.images), generator=generator).to(device)
        batch = self.order[index * cfg.batch_size:][:cfg.batch_size][self.part]
        x0 = to_model_range(self.images[batch])
        y = self.labels[batch] if self.labels is not None else None

        # noise, timesteps and label dropout for the whole global batch, from a seed distinct for every
        # (seed, step) pair; keep this process's part
        self.noise_gen.manual_seed(cfg.seed * 2 ** 32 + 2 ** 31 + step)
        noise = torch.randn((cfg.batch_size, *x0.shape[1:]), generator=self.noise_gen, device=device)[self.part]
        t = self.process.draw_t(cfg.batch_size, self.noise_gen, device)[self.part]
        drop = torch.rand(cfg.batch_size, generator=self.noise_gen, device=device)[self.part] < cfg.p_uncond
        y = torch.where(drop, self.null_label, y) if self.null_label is not None else None
        if self.pair_noise is not None:  # a teacher's pairs: each digit's own noise (training/distill.py)
            noise = self.pair_noise[batch]
        return x0, y, noise, t

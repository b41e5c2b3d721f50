"""Shortcut models (Frans et al. 2025, "One Step Diffusion via Shortcut Models"): flow matching whose
network is also told the size d of the step it should take, and learns jumps from itself.

On flow matching's straight path x_t = (1 - t) x_0 + t eps (diffusion/continuous.py's Flow), the
network s(x_t, t, d) is the average velocity over a step of size d, so that

    x_{t-d} = x_t - d s(x_t, t, d)                                      (one jump; d = t: to the data)

At d = 0 it is the velocity v = eps - x_0, trained by flow matching. A jump of size 2d is trained to
equal two jumps of size d taken by the network itself (self-consistency, eq. 5):

    s(x_t, t, 2d) <- (s(x_t, t, d) + s(x_{t-d}, t - d, d)) / 2,   x_{t-d} = x_t - d s(x_t, t, d)

with the right side computed without gradients. Jumps of 1, 1/2, ..., 1/64 are learned this way
from the smallest, 1/128, which asks the flow itself (d = 0); one row in SHARE of each batch
learns a jump, the others the flow. The jumps' times are multiples of their size, t in {2d, 4d,
..., 1}. Classifier-free guidance (config.bootstrap_guidance) enters the smallest jumps' targets
only, so larger jumps inherit it once and it does not compound.

Sampling: ddim with eta = 0 on the jump grid (diffusion/grids.py) tells the network each step's
size (diffusion/pipeline.py), so 1 step is x_0 = eps - s(eps, 1, 1); any other sampler asks for
d = 0 and treats the model as a plain flow model.
"""
import torch

from diffusion.continuous import Flow
from diffusion.gaussian import bcast
from diffusion.guidance import guided
from diffusion.weightings import weighted_loss

LEVELS = 7  # jumps of 2d = 1, 1/2, ..., 1/64, each from two of d; d = 1/128 asks the flow (d = 0)
SHARE = 4   # every SHARE-th row of a batch learns a jump (Frans et al. 2025: a quarter of the batch)


class Shortcut(Flow):
    """Flow matching plus jumps; its network has config.step_condition (models/unet.py)."""
    name = "shortcut"
    about = "flow matching that also learns jumps of 1/2, 1/4, ... of the way, for 1-4 step sampling; Frans et al. 2025"
    defaults = {**Flow.defaults, "few_steps": 2}
    allowed = {"prediction": ("velocity",), "clip_x0": (False,)}  # its jumps are average velocities
    own_flags = ("bootstrap_guidance",)
    takes_step = True

    def draw_t(self, batch, generator, device):
        """(B, 2) rows of (t, step size): rows 0, SHARE, 2 SHARE, ... a jump of 2^-k, k uniform in
        0 .. LEVELS - 1, at t a uniform multiple of it; the others a time of config.t_sampling, size 0."""
        t = super().draw_t(batch, generator, device)
        rows = torch.arange(0, batch, SHARE, device=device)
        size = 2.0 ** -torch.randint(0, LEVELS, (len(rows),), generator=generator, device=device).float()
        multiple = (torch.rand(len(rows), generator=generator, device=device) / size).floor() + 1
        step = torch.zeros(batch, device=device).index_put((rows,), size)
        return torch.stack([t.index_put((rows,), size * multiple), step], dim=1)

    def training_loss(self, net, x0, y, noise, times, amp):
        """The MSE of s(x_t, t, d) to the velocity (d = 0) or to two half jumps (d > 0)."""
        t, step = times.unbind(1)
        x_t = self.q_sample(x0, t, noise)
        target = self.target(x0, noise, t)
        rows = slice(0, None, SHARE)  # static shapes: no host sync, a CUDA graph can capture it
        with torch.no_grad():
            jumps = self.two_half_jumps(net, x_t[rows], t[rows], None if y is None else y[rows], step[rows], amp)
            target[rows] = torch.where(bcast(step[rows] > 0, jumps.shape), jumps, target[rows])
        with amp():
            out = net(x_t, self.model_time(t, len(t), t.device), y, self.model_time(step, len(t), t.device))
        per_sample = (out.float() - target).pow(2).mean(dim=(1, 2, 3))
        return weighted_loss(self, per_sample, t)

    def two_half_jumps(self, net, x, t, y, size, amp):
        """(s(x, t, d) + s(x', t - d, d)) / 2 for d = size / 2, the network's own two half jumps;
        the smallest ask the flow (d = 0), guided by config.bootstrap_guidance."""
        half = size / 2
        smallest = half <= 2.0 ** -LEVELS
        d = torch.where(smallest, torch.zeros_like(half), half)
        first = self.jump(net, x, t, y, d, smallest, amp)
        second = self.jump(net, x - bcast(half, x.shape) * first, t - half, y, d, smallest, amp)
        return (first + second) / 2

    def jump(self, net, x, t, y, d, where, amp):
        """s(x, t, d), guided by w = config.bootstrap_guidance on the rows `where` (diffusion/guidance.py)."""
        w, n = self.config.bootstrap_guidance, len(x)
        t_in, d_in = self.model_time(t, n, x.device), self.model_time(d, n, x.device)
        with amp():
            if not w or y is None:
                return net(x, t_in, y, d_in).float()
            return guided(net, x, t_in, y, bcast(where * w, x.shape), d_in)

"""From a trained network to images: labels, classifier-free guidance, batches, seeds and progress
around the solvers of diffusion/samplers.py, which stay pure maths over a denoiser.

    generate(model, diffusion, num, sampling)   -> (num, C, H, W) in [-1, 1]; steps through a callback
    sampling_times(sampling, diffusion)         -> the times the sampler visits; bad --steps: a UserError
"""
from contextlib import nullcontext
from functools import partial

import torch
from tqdm import tqdm

from diffusion.config import SamplingConfig
from diffusion.guidance import guided, net_output
from diffusion.samplers import make_timesteps, sample
from utils.errors import UserError
from utils.memory import check_batch


def make_denoiser(model, diffusion, labels=None, guidance=0.0, interval=(0.0, 1.0), autocast=None):
    """denoise(x_t, t) for the samplers, with classifier-free guidance (Ho & Salimans 2022).

    With labels and guidance w > 0 the conditional and unconditional (null-label) outputs come from
    one batched forward pass (diffusion/guidance.py) and are combined as
        out = cond + w * (cond - uncond)        (w = 0: plain conditional sampling)
    `interval` = (lo, hi) limits guidance to the steps whose time is that fraction of the way from
    the data to the noise (t / T for DDPM); the others are plain steps at half the cost
    (Kynkaanniemi et al. 2024). The network sees the process's model_time(t), and on a process that
    takes_step (shortcut models) the size of the step to s, the time the sampler lands on next
    (s = -1, the data: time 0); without s, a step of size 0, the instantaneous field.
    """
    autocast = autocast or nullcontext

    def denoise(x, t, s=None):
        t_batch = diffusion.model_time(t, len(x), x.device)
        step = diffusion.model_time(t - max(s, 0), len(x), x.device) if diffusion.takes_step and s is not None else None
        with autocast():
            if guidance == 0 or labels is None or not interval[0] <= diffusion.fraction(t) <= interval[1]:
                return net_output(model, x, t_batch, labels, step).float()
            return guided(model, x, t_batch, labels, guidance, step)

    denoise.takes_step = diffusion.takes_step
    return denoise


def sampling_times(sampling, diffusion, flag="--steps"):
    """The descending times `sampling` visits on `diffusion`; steps the process cannot take (more
    than a DDPM's T, say) are a one-line UserError naming `flag`."""
    try:
        return make_timesteps(sampling.sampler, diffusion, sampling.steps, sampling.grid)
    except ValueError as err:
        raise UserError(f"{flag}: {err}") from None


def every_digit(num, num_classes, device=None):
    """Labels 0, 1, ..., num_classes - 1, 0, 1, ... for `num` samples: every class in turn, so a
    class-conditional model's samples have balanced classes (None for unconditional models)."""
    return torch.arange(num, device=device) % num_classes if num_classes else None


@torch.inference_mode()
def generate(model, diffusion, num, sampling=None, *, labels=None, batch_size=1000, autocast=None, callback=None,
             batch_flag="--batch_size"):
    """`num` finished samples (N, C, H, W) in [-1, 1], made in batches; same seed, same samples.

    `model` is the U-Net (its config gives the image shape and the null label), `sampling` a
    SamplingConfig (sampler, steps, eta, guidance, interval, seed; default: the default sampling),
    `labels` the requested classes of a class-conditional model (default: every class in turn),
    `autocast` a context factory for the network. callback(first, step), if given, sees every
    samplers.Step of the batch of samples first, first + 1, ... (for figures of the denoising).
    A batch too large for the device's memory is refused first, naming `batch_flag`.
    """
    sampling = sampling or SamplingConfig()
    device = diffusion.device
    cfg = model.config
    labels = every_digit(num, cfg.num_classes, device) if labels is None else labels.to(device)
    sampling_times(sampling, diffusion)  # refuse bad --steps before any work
    guided = labels is not None and sampling.guidance  # guided steps: twice the batch
    check_batch(model, min(batch_size, num), device, flag=batch_flag, copies=2 if guided else 1)
    generator = torch.Generator(device=device).manual_seed(sampling.seed)
    batches = []
    for start in tqdm(range(0, num, batch_size), desc=f"sampling ({sampling.sampler})", leave=False):
        n = min(batch_size, num - start)
        y = labels[start:start + n] if labels is not None else None
        noise = torch.randn((n, cfg.in_channels, cfg.image_size, cfg.image_size), generator=generator, device=device)
        denoise = make_denoiser(model, diffusion, y, sampling.guidance, sampling.guidance_interval, autocast)
        on_step = partial(callback, start) if callback else None
        batches.append(sample(sampling.sampler, denoise, diffusion, noise, sampling.steps, sampling.eta, generator,
                              callback=on_step, grid=sampling.grid))
    return torch.cat(batches)

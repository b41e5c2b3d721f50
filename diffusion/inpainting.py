"""Inpainting: complete the unknown part of images whose known part (mask = 1) is kept.

Replacement (Lugmayr et al. 2022, RePaint): before every network evaluation at timestep t, the
known region of x_t is replaced by a fresh draw of q(x_t | x_0 = known) = alpha_t known + sigma_t z,
so the network always sees the true image there at the right noise level. Every sampler here
updates x pixel by pixel, so replacing what the network sees is the same as replacing x itself
for the unknown region; the finished samples get the known pixels back exactly.

Resampling (RePaint, jump length 1), on the DDPM sampler: after a step from x_t to x_s, go back up
with q(x_t | x_s) (DDPM: N(sqrt(1 - beta_t) x_{t-1}, beta_t I)) and step down again, `resample`
times in all, so that the unknown region can agree with the known one.
"""
import torch

from diffusion.samplers import Step, ancestral_step, following, make_timesteps, predict, run, sample


def redraw_known(diffusion, x, t, known, mask, generator=None):
    """x_t with its known region replaced by a fresh draw of q(x_t | x_0 = known)."""
    alpha, sigma = diffusion.alpha_sigma(t)
    noise = torch.randn(x.shape, generator=generator, device=x.device)
    return mask * (alpha * known + sigma * noise) + (1 - mask) * x


def replacing(denoise, diffusion, known, mask, generator=None):
    """denoise(x, t[, s]) that sees the known region of x_t redrawn from q(x_t | known)."""
    def denoise_known(x, t, *s):
        return denoise(redraw_known(diffusion, x, t, known, mask, generator), t, *s)
    denoise_known.takes_step = getattr(denoise, "takes_step", False)
    return denoise_known


@torch.no_grad()
def repaint(denoise, diffusion, known, mask, x, generator=None, resample=1):
    """RePaint on the ancestral DDPM sampler: Steps like the samplers', the last one finished."""
    timesteps = make_timesteps("ddpm", diffusion, 0)
    for i, t in enumerate(timesteps):
        s = following(timesteps, i)
        for jump in range(resample):
            x = redraw_known(diffusion, x, t, known, mask, generator)
            x0, _ = predict(denoise, diffusion, x, t)
            if jump == 0:
                yield Step(t, x, x0)
            x_prev = ancestral_step(diffusion, x, t, s, x0, generator)
            if jump + 1 < resample and s >= 0:  # back up one step: q(x_t | x_s)
                a, variance = diffusion.transition(s, t)
                x = a * x_prev + variance.sqrt() * torch.randn(x.shape, generator=generator, device=x.device)
        x = x_prev
    yield Step(-1, mask * known + (1 - mask) * x, x)


def inpaint(denoise, diffusion, known, mask, noise, sampling, generator=None, resample=1, callback=None):
    """The completed images, with the known pixels exactly: RePaint with `resample` on the ddpm
    sampler, replacement on the others; callback(Step) sees every step on the way."""
    if sampling.sampler == "ddpm":
        return run(repaint(denoise, diffusion, known, mask, noise, generator, resample), callback)
    final = sample(sampling.sampler, replacing(denoise, diffusion, known, mask, generator), diffusion, noise,
                   sampling.steps, sampling.eta, generator, callback=callback, grid=sampling.grid)
    return mask * known + (1 - mask) * final


MASKS = ("left", "right", "top", "bottom", "center")


def named_mask(name, size):
    """A (1, 1, size, size) mask, 1 = known, 0 = the named region to fill in: a half of the image,
    or its centre (the middle half of each side)."""
    mask = torch.ones(1, 1, size, size)
    half, quarter = size // 2, size // 4
    rows, cols = {"left": (slice(None), slice(0, half)), "right": (slice(None), slice(half, None)),
                  "top": (slice(0, half), slice(None)), "bottom": (slice(half, None), slice(None)),
                  "center": (slice(quarter, size - quarter), slice(quarter, size - quarter))}[name]
    mask[0, 0, rows, cols] = 0
    return mask

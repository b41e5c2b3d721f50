"""SDEdit (Meng et al. 2022): edit a real image by noising it part of the way and denoising it.

The image x is drawn to x_{t0} ~ q(x_{t0} | x) at the time t0 that lies `strength` of the way from
the data (0) to the noise (1), then any sampler runs from t0 down over the part of its schedule
below t0: strength near 0 keeps the image, near 1 draws a new one; with a label, toward that class.
"""
import torch

from diffusion.samplers import SAMPLERS, make_timesteps, run


@torch.no_grad()
def sdedit(denoise, diffusion, image, noise, sampling, strength, generator=None, callback=None):
    """The edited images (B, C, H, W) for images in [-1, 1]; callback(Step) sees every step."""
    times = make_timesteps(sampling.sampler, diffusion, sampling.steps, sampling.grid)
    times = [t for t in times if diffusion.fraction(t) <= strength]
    if not times:
        raise ValueError(f"no step of {sampling.sampler} at {sampling.steps} steps lies below strength {strength}")
    x = diffusion.q_sample(image, times[0], noise)
    return run(SAMPLERS[sampling.sampler](denoise, diffusion, x, times, generator, sampling.eta), callback)

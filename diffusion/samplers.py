"""Samplers: DDPM ancestral (Ho et al. 2020), DDIM (Song et al. 2021), DPM-Solver++(2M) (Lu et al. 2022)
as an ODE or an SDE solver. `eta` sets the noise of ddim and dpm++ (0: deterministic).

One interface. A sampler is a generator function

    sampler(denoise, diffusion, x, timesteps, generator=None, eta=0.0) -> iterator of Step

where denoise(x_t, t) returns the network's raw output for the batch x_t at the integer timestep
t (a Python int, the same for the whole batch), and `timesteps` is a descending sequence of
training timesteps, e.g. [999, ..., 0]. Coefficients come from the diffusion process
(`alpha_sigma(t)`, `log_snr`, `q_posterior`), never from indexing its arrays here.
At each timestep the sampler yields Step(t, x_t, pred_x0) and then moves on ("predict, then
step"); after the last one it yields Step(-1, x_0, x_0) with the finished samples. Nothing needs
priming and nothing is kept between calls. `sample` runs one to the end; batching, labels, seeds,
guidance and progress bars live in diffusion/pipeline.py.
"""
from typing import NamedTuple

import numpy as np
import torch


class Step(NamedTuple):
    t: int                 # timestep of x (-1 for the finished samples)
    x: torch.Tensor        # x_t, (B, C, H, W)
    pred_x0: torch.Tensor  # the model's estimate of x_0 from x_t


def make_timesteps(sampler, diffusion, steps):
    """Descending timesteps for a sampler: all T for ddpm; for ddim `steps` evenly spaced in
    [T-1, 0] (Song et al. 2021); for dpm++ evenly spaced in log-SNR, lambda_t = log(alpha_t / sigma_t)
    (Lu et al. 2022, the "logSNR" spacing), rounded to the nearest training timestep. Rounding can
    merge two neighbours near t = 0 when steps is large; those are kept once."""
    num_timesteps = diffusion.num_timesteps
    if sampler == "ddpm":
        return list(range(num_timesteps - 1, -1, -1))
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be in [1, {num_timesteps}], got {steps}")
    if sampler == "dpm++" and steps > 1:
        lam = diffusion.log_snr
        targets = torch.linspace(lam[-1].item(), lam[0].item(), steps, dtype=torch.float64)
        nearest = (lam[None, :] - targets[:, None]).abs().argmin(dim=1)
        return sorted({int(t) for t in nearest}, reverse=True)
    return [int(t) for t in np.unique(np.linspace(0, num_timesteps - 1, steps).round())[::-1]]


def predict(denoise, diffusion, x, t, clip=True):
    """(x0, eps) estimates from the denoiser's output at timestep t, x0 clipped to [-1, 1] with clip."""
    x0, eps = diffusion.predict_x0_eps(x, t, denoise(x, t).float())
    if clip:  # data lives in [-1, 1]; recompute eps so the two stay consistent
        x0 = x0.clamp(-1, 1)
        alpha, sigma = diffusion.alpha_sigma(t)
        eps = (x - alpha * x0) / sigma
    return x0, eps


def ancestral_step(diffusion, x, t, x0, generator=None):
    """x_{t-1} ~ q(x_{t-1} | x_t, x0_hat) (Ho et al. 2020, Algorithm 2, line 4); no noise at t = 0."""
    mean, variance = diffusion.q_posterior(x0, x, t)
    noise = torch.randn(x.shape, generator=generator, device=x.device) if t > 0 else 0.0
    return mean + variance.sqrt() * noise


@torch.no_grad()
def ddpm(denoise, diffusion, x, timesteps, generator=None, eta=0.0, clip=True):
    """Ancestral sampling (Ho et al. 2020, Algorithm 2), via the posterior q(x_{t-1} | x_t, x0_hat)."""
    for t in timesteps:
        x0, _ = predict(denoise, diffusion, x, t, clip)
        yield Step(t, x, x0)
        x = ancestral_step(diffusion, x, t, x0, generator)
    yield Step(-1, x, x)


@torch.no_grad()
def ddim(denoise, diffusion, x, timesteps, generator=None, eta=0.0, clip=True):
    """DDIM (Song et al. 2021) on a subsequence of timesteps; eta = 0 deterministic, 1 DDPM-like.

        ab, ab_prev = alpha_bar at t and at the next (smaller) timestep; ab_prev = 1 after t = 0
        sigma  = eta * sqrt((1 - ab_prev) / (1 - ab)) * sqrt(1 - ab / ab_prev)         (eq. 16)
        x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps + sigma z           (eq. 12)
    """
    for i, t in enumerate(timesteps):
        x0, eps = predict(denoise, diffusion, x, t, clip)
        yield Step(t, x, x0)
        s = timesteps[i + 1] if i + 1 < len(timesteps) else -1  # -1: the clean data, ab_prev = 1
        ab, ab_prev = diffusion.alpha_sigma(t)[0] ** 2, diffusion.alpha_sigma(s)[0] ** 2
        sigma = eta * ((1 - ab_prev) / (1 - ab)).sqrt() * (1 - ab / ab_prev).sqrt()
        x = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma ** 2).clamp(min=0).sqrt() * eps
        if eta > 0 and s >= 0:
            x = x + sigma * torch.randn(x.shape, generator=generator, device=x.device)
    yield Step(-1, x, x)


@torch.no_grad()
def dpm_solver_pp(denoise, diffusion, x, timesteps, generator=None, eta=0.0, clip=True):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), a second-order multistep solver in x0;
    eta = 0 solves the probability-flow ODE, eta = 1 the reverse SDE (the paper's SDE-DPM-Solver++(2M)).

        alpha_t = sqrt(ab_t), sigma_t = sqrt(1 - ab_t), lambda_t = log(alpha_t / sigma_t)
        h_i = lambda_{t_i} - lambda_{t_{i-1}},   r_i = h_{i-1} / h_i
        D_i = (1 + 1 / (2 r_i)) x0_{i-1} - (1 / (2 r_i)) x0_{i-2}          (first step: D_1 = x0_0)
        x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) e^{-eta h_i} x_{t_{i-1}}
                  + alpha_{t_i} (1 - e^{-(1 + eta) h_i}) D_i + sigma_{t_i} sqrt(1 - e^{-2 eta h_i}) z
    At eta = 0 this is the ODE update (sigma ratio) x - alpha (e^{-h} - 1) D; at eta = 1 with D = x0
    it is exactly the DDPM posterior step q(x_{t_i} | x_{t_{i-1}}, x0), so the SDE solver is ancestral
    sampling with a second-order correction. The step after t = 0 lands on clean data (sigma = 0,
    lambda = inf), where the update reduces to x = D; it is taken at first order (x = x0 at t = 0).
    """
    lam = diffusion.log_snr.tolist()
    prev_x0, prev_h = None, None
    for i, t in enumerate(timesteps):
        x0, _ = predict(denoise, diffusion, x, t, clip)
        yield Step(t, x, x0)
        if i + 1 == len(timesteps):
            x = x0
            break
        s = timesteps[i + 1]
        h = torch.tensor(lam[s] - lam[t])
        if prev_x0 is None:
            d = x0
        else:
            r = prev_h / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * prev_x0
        (alpha_s, sigma_s), (_, sigma_t) = diffusion.alpha_sigma(s), diffusion.alpha_sigma(t)
        x = sigma_s / sigma_t * torch.exp(-eta * h) * x - alpha_s * torch.expm1(-(1 + eta) * h) * d
        if eta > 0:
            noise = torch.randn(x.shape, generator=generator, device=x.device)
            x = x + sigma_s * (-torch.expm1(-2 * eta * h)).sqrt() * noise
        prev_x0, prev_h = x0, h
    yield Step(-1, x, x)


SAMPLERS = {"ddpm": ddpm, "ddim": ddim, "dpm++": dpm_solver_pp}


def sample(sampler, denoise, diffusion, noise, steps, eta=0.0, generator=None, clip=True, callback=None):
    """Run a sampler from `noise` to the end and return the finished samples; callback(Step), if
    given, sees every step on the way (for figures of the denoising)."""
    timesteps = make_timesteps(sampler, diffusion, steps)
    for step in SAMPLERS[sampler](denoise, diffusion, noise, timesteps, generator, eta, clip):
        if callback is not None:
            callback(step)
    return step.x

"""Samplers: DDPM ancestral (Ho et al. 2020), DDIM (Song et al. 2021), DPM-Solver++(2M) (Lu et al. 2022)
as an ODE or an SDE solver, and Heun's method on the probability-flow ODE (Karras et al. 2022) in lambda.
`eta` sets the noise of ddim and dpm++ (0: deterministic).

One interface. A sampler is a generator function

    sampler(denoise, diffusion, x, timesteps, generator=None, eta=0.0) -> iterator of Step

where denoise(x_t, t[, s]) returns the network's raw output for the batch x_t at time t (one Python
number for the whole batch: DDPM's integer timestep, or a float in [0, 1] for a continuous-time
process; a denoiser with the attribute takes_step = True also gets s, the time ddim's step lands
on: a network that takes the step's size), and `timesteps` is the process's descending sampling
grid (`make_timesteps`).
Everything else comes from the process: alpha_sigma(t), lam(t) = log(alpha_t / sigma_t),
posterior(x0, x_t, t, s), predict_x0_eps; t = -1 stands for the clean data. So every sampler
runs on every process (diffusion/ddpm.py, diffusion/continuous.py).
At each time the sampler yields Step(t, x_t, pred_x0) and then moves on ("predict, then step");
after the last one it yields Step(-1, x_0, x_0) with the finished samples. Nothing needs priming
and nothing is kept between calls. `sample` runs one to the end; batching, labels, seeds,
guidance and progress bars live in diffusion/pipeline.py.
"""
import math
from typing import NamedTuple

import torch

from diffusion.grids import time_grid, uniform_t


class Step(NamedTuple):
    t: float               # time of x (-1 for the finished samples)
    x: torch.Tensor        # x_t, (B, C, H, W)
    pred_x0: torch.Tensor  # the model's estimate of x_0 from x_t


DEFAULT_GRID = {"ddim": "t", "heun": "t", "dpm++": "lambda"}  # each sampler's time grid unless one is given
ANCESTRAL_STEPS = 1000  # ddpm's steps on a continuous process: as many as DDPM's T


def make_timesteps(sampler, diffusion, steps, grid=""):
    """The descending sampling times: for ddpm every training timestep of a discrete process
    (ANCESTRAL_STEPS evenly spaced times of a continuous one); for the others `steps` times on
    `grid` (diffusion/grids.py; default: DEFAULT_GRID's)."""
    if sampler == "ddpm":
        return uniform_t(diffusion, diffusion.num_timesteps if diffusion.discrete else ANCESTRAL_STEPS)
    return time_grid(grid or DEFAULT_GRID[sampler], diffusion, steps)


def following(timesteps, i):
    """The time after timesteps[i]: the next one, or -1 (the clean data) after the last."""
    return timesteps[i + 1] if i + 1 < len(timesteps) else -1


def predict(denoise, diffusion, x, t, clip=True, s=None):
    """(x0, eps) estimates from the denoiser's output at timestep t, x0 clipped to [-1, 1] with clip;
    s: the time the step lands on, told to a network that takes a step's size (None: the field at t)."""
    out = denoise(x, t, s) if s is not None and getattr(denoise, "takes_step", False) else denoise(x, t)
    x0, eps = diffusion.predict_x0_eps(x, t, out.float())
    if clip:  # data lives in [-1, 1]; recompute eps so the two stay consistent
        x0 = x0.clamp(-1, 1)
        alpha, sigma = diffusion.alpha_sigma(t)
        eps = (x - alpha * x0) / sigma
    return x0, eps


def ancestral_step(diffusion, x, t, s, x0, generator=None):
    """x_s ~ q(x_s | x_t, x0_hat) (Ho et al. 2020, Algorithm 2, line 4); no noise is drawn where the
    posterior has none (onto the clean data: DDPM's t = 0, or s = -1)."""
    mean, variance = diffusion.posterior(x0, x, t, s)
    noise = torch.randn(x.shape, generator=generator, device=x.device) if variance.max() > 0 else 0.0
    return mean + variance.sqrt() * noise


@torch.no_grad()
def ddpm(denoise, diffusion, x, timesteps, generator=None, eta=0.0, clip=True):
    """Ancestral sampling (Ho et al. 2020, Algorithm 2), via the posterior q(x_s | x_t, x0_hat)."""
    for i, t in enumerate(timesteps):
        x0, _ = predict(denoise, diffusion, x, t, clip)
        yield Step(t, x, x0)
        x = ancestral_step(diffusion, x, t, following(timesteps, i), x0, generator)
    yield Step(-1, x, x)


@torch.no_grad()
def ddim(denoise, diffusion, x, timesteps, generator=None, eta=0.0, clip=True):
    """DDIM (Song et al. 2021) on a subsequence of times; eta = 0 deterministic, 1 DDPM-like. For
    any alpha and sigma (eqs. 12 and 16, with alpha_bar = alpha^2 and 1 - alpha_bar = sigma^2 of
    a variance-preserving process written out):

        s      = the next (smaller) time; alpha_s = 1, sigma_s = 0 after the last
        c      = eta * sigma_s * sqrt(1 - (alpha_t sigma_s / (alpha_s sigma_t))^2)             (eq. 16)
        x_s    = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c z                                 (eq. 12)

    On the straight path of flow matching (alpha = 1 - t, sigma = t) at eta = 0 this is Euler's
    step x_s = x_t - (t - s) v; a shortcut model is told s and returns its jump to s.
    """
    for i, t in enumerate(timesteps):
        s = following(timesteps, i)
        x0, eps = predict(denoise, diffusion, x, t, clip, s)
        yield Step(t, x, x0)
        (alpha_t, sigma_t), (alpha_s, sigma_s) = diffusion.alpha_sigma(t), diffusion.alpha_sigma(s)
        c = eta * sigma_s * (1 - (alpha_t * sigma_s / (alpha_s * sigma_t)) ** 2).clamp(min=0).sqrt()
        x = alpha_s * x0 + (sigma_s ** 2 - c ** 2).clamp(min=0).sqrt() * eps
        if eta > 0 and s >= 0:
            x = x + c * torch.randn(x.shape, generator=generator, device=x.device)
    yield Step(-1, x, x)


@torch.no_grad()
def dpm_solver_pp(denoise, diffusion, x, timesteps, generator=None, eta=0.0, clip=True):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), a second-order multistep solver in x0;
    eta = 0 solves the probability-flow ODE, eta = 1 the reverse SDE (the paper's SDE-DPM-Solver++(2M)).

        alpha_t, sigma_t from the process (DDPM: sqrt(ab_t), sqrt(1 - ab_t)), lambda_t = log(alpha_t / sigma_t)
        h_i = lambda_{t_i} - lambda_{t_{i-1}},   r_i = h_{i-1} / h_i
        D_i = (1 + 1 / (2 r_i)) x0_{i-1} - (1 / (2 r_i)) x0_{i-2}          (first step: D_1 = x0_0)
        x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) e^{-eta h_i} x_{t_{i-1}}
                  + alpha_{t_i} (1 - e^{-(1 + eta) h_i}) D_i + sigma_{t_i} sqrt(1 - e^{-2 eta h_i}) z
    At eta = 0 this is the ODE update (sigma ratio) x - alpha (e^{-h} - 1) D; at eta = 1 with D = x0
    it is exactly the DDPM posterior step q(x_{t_i} | x_{t_{i-1}}, x0), so the SDE solver is ancestral
    sampling with a second-order correction. The step after t = 0 lands on clean data (sigma = 0,
    lambda = inf), where the update reduces to x = D; it is taken at first order (x = x0 at t = 0).
    """
    prev_x0, prev_h = None, None
    for i, t in enumerate(timesteps):
        x0, _ = predict(denoise, diffusion, x, t, clip)
        yield Step(t, x, x0)
        if i + 1 == len(timesteps):
            x = x0
            break
        s = timesteps[i + 1]
        h = torch.tensor(diffusion.lam(s) - diffusion.lam(t))
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


@torch.no_grad()
def heun(denoise, diffusion, x, timesteps, generator=None, eta=0.0, clip=True):
    """Heun's method, Euler's step then the trapezoidal rule (Karras et al. 2022, Algorithm 1), on the
    probability-flow ODE in its exact form in lambda = log(alpha / sigma) (Lu et al. 2022, eq. 9):

        x_s = (sigma_s / sigma_t) x_t + sigma_s integral_{lambda_t}^{lambda_s} e^lambda x0_hat(lambda) dlambda
        Euler (x0_hat held at x0_t; ddim's step):   x_e = alpha_s x0_t + sigma_s eps_t
        trapezoid (x0_hat linear in lambda from x0_t to x0_s = x0_hat(x_e, s)):
            x_s = x_e + alpha_s phi(h) (x0_s - x0_t),   phi(h) = 1 - (1 - e^{-h}) / h,   h = lambda_s - lambda_t

    In lambda the step stays second order where sigma spans orders of magnitude (near the data, and
    flow's first step from sigma / alpha = 1e4); docs/NOTEBOOK.md compares the other forms. The last
    step, onto the clean data, is x = x0_hat. Deterministic (eta unused); two network evaluations per
    step but the last."""
    for i, t in enumerate(timesteps):
        x0, eps = predict(denoise, diffusion, x, t, clip)
        yield Step(t, x, x0)
        s = following(timesteps, i)
        if s < 0:
            x = x0
            continue
        alpha_s, sigma_s = diffusion.alpha_sigma(s)
        euler = alpha_s * x0 + sigma_s * eps
        x0_s, _ = predict(denoise, diffusion, euler, s, clip)
        h = diffusion.lam(s) - diffusion.lam(t)
        x = euler + alpha_s * (1 + math.expm1(-h) / h) * (x0_s - x0)
    yield Step(-1, x, x)


SAMPLERS = {"ddpm": ddpm, "ddim": ddim, "dpm++": dpm_solver_pp, "heun": heun}


def run(steps, callback=None):
    """The finished samples at the end of a sampler's Steps; callback(Step), if given, sees every
    step on the way (for figures of the denoising)."""
    for step in steps:
        if callback is not None:
            callback(step)
    return step.x


def sample(sampler, denoise, diffusion, noise, steps, eta=0.0, generator=None, clip=True, callback=None, grid=""):
    """Run a sampler from `noise` to the end and return the finished samples (callback: as in `run`)."""
    timesteps = make_timesteps(sampler, diffusion, steps, grid)
    return run(SAMPLERS[sampler](denoise, diffusion, noise, timesteps, generator, eta, clip), callback)

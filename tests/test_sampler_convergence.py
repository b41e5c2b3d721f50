"""Every sampler converges to the exact probability-flow ODE where its answer is known.

Data whose exact denoiser is known in closed form, on every process and time grid, written in the
scaled variables y = x_t / alpha_t and s = sigma_t / alpha_t, in which the ODE is dy/ds = eps_hat:
- a Gaussian N(MU, C^2) per pixel: the ODE maps y_T to MU + sqrt(C^2 + s^2) / sqrt(C^2 + s_T^2) (y_T - MU);
- a mixture of two sharp Gaussians at -1 and 1 (most pixels dark, as MNIST's), sampled with x0 clipped
  to [-1, 1] as the tools do, against the same ODE solved by scipy to 1e-9.
The deterministic samplers (eta = 0) must approach the exact end point as their evaluations grow,
and the second-order ones (heun, dpm++) be at least as good as ddim at equal evaluations.
"""
import math

import pytest
import torch
from scipy.integrate import solve_ivp

from diffusion.config import DiffusionConfig
from diffusion.processes import make_process
from diffusion.samplers import make_timesteps, sample

MU, C = 0.2, 0.3
PEAKS, WEIGHTS, WIDTH = torch.tensor([-1.0, 1.0], dtype=torch.float64), torch.tensor([0.8, 0.2], dtype=torch.float64), 0.02
PROCESSES = ("ddpm", "vdm", "flow")


def process(name):
    return make_process(DiffusionConfig(process=name, **({"clip_x0": False} if name == "vdm" else {})))


def gaussian_x0(x, alpha, sigma):
    return MU + alpha * C ** 2 / (alpha ** 2 * C ** 2 + sigma ** 2) * (x - alpha * MU)


def mixture_x0(x, alpha, sigma):
    """E[x0 | x_t] for the mixture: each peak's Gaussian posterior mean, weighted by its responsibility."""
    x = x.unsqueeze(-1)
    var = alpha ** 2 * WIDTH ** 2 + sigma ** 2
    weights = torch.softmax(torch.log(WEIGHTS) - (x - alpha * PEAKS) ** 2 / (2 * var), -1)
    return (weights * (PEAKS + alpha * WIDTH ** 2 / var * (x - alpha * PEAKS))).sum(-1)


def oracle(p, x0_of):
    """The exact denoiser in the process's own output (eps, or the velocity of flow)."""
    def denoise(x, t):
        alpha, sigma = (v.item() for v in p.marginal64(t))
        x0 = x0_of(x.double(), alpha, sigma).float()
        return p.target(x0, (x - alpha * x0) / sigma, t)
    return denoise


def scaled(p, t):
    alpha, sigma = (v.item() for v in p.marginal64(t))
    return alpha, sigma / alpha


def exact_gaussian(p, x_T):
    """The samplers' end point on the exact ODE: y at t_min, then x0_hat there."""
    (alpha_T, s_T), (alpha_0, s_0) = scaled(p, p.t_max), scaled(p, p.t_min)
    y = MU + math.sqrt(C ** 2 + s_0 ** 2) / math.sqrt(C ** 2 + s_T ** 2) * (x_T.double() / alpha_T - MU)
    return gaussian_x0(y * alpha_0, alpha_0, alpha_0 * s_0)


def exact_mixture(p, x_T):
    (alpha_T, s_T), (alpha_0, s_0) = scaled(p, p.t_max), scaled(p, p.t_min)

    def slope(s, y):  # dy/ds = (y - x0_hat) / s, at alpha = 1 / sqrt(1 + s^2) (any alpha gives the same y)
        alpha = 1 / math.sqrt(1 + s ** 2)
        return (y - mixture_x0(torch.from_numpy(y) * alpha, alpha, s * alpha).numpy()) / s

    y = solve_ivp(slope, (s_T, s_0), (x_T.double() / alpha_T).flatten().numpy(), rtol=1e-9, atol=1e-10).y[:, -1]
    return mixture_x0(torch.from_numpy(y).view_as(x_T) * alpha_0, alpha_0, alpha_0 * s_0)


def error(sampler, p, x0_of, x_T, evaluations, grid, clip, exact):
    steps = (evaluations + 1) // 2 if sampler == "heun" else evaluations  # heun: two evaluations a step
    out = sample(sampler, oracle(p, x0_of), p, x_T.clone(), steps, eta=0.0, clip=clip, grid=grid)
    return (out.double() - exact).abs().mean().item()


@pytest.mark.parametrize("name", PROCESSES)
def test_every_sampler_converges_to_the_gaussian_ode_and_second_order_keeps_up(name):
    p, x_T = process(name), torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    exact = exact_gaussian(p, x_T)
    grids = ("lambda", "karras") + (("t",) if name == "vdm" else ())
    for grid in grids:
        errors = {s: [error(s, p, gaussian_x0, x_T, n, grid, False, exact) for n in (16, 128)]
                  for s in ("ddim", "dpm++", "heun")}
        for sampler, (few, many) in errors.items():
            assert many < max(few / 4, 3e-4), (grid, sampler, few, many)  # ddim: 1/8 for 8 times the steps
        for sampler in ("dpm++", "heun"):
            assert errors[sampler][1] <= errors["ddim"][1], (grid, errors)


@pytest.mark.parametrize("name", ["ddpm", "flow"])
def test_on_the_t_grid_heun_converges_as_ddim_does(name):
    """The grid that is even in t: the step onto the data spans a large change of lambda for DDPM and
    the first one for flow (t_max: sigma / alpha = 1e4), so everyone converges slowly; heun too."""
    p, x_T = process(name), torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    exact = exact_gaussian(p, x_T)
    errors = {s: [error(s, p, gaussian_x0, x_T, n, "t", False, exact) for n in (16, 128)] for s in ("ddim", "heun")}
    for sampler, (few, many) in errors.items():
        assert many < few / 2, (sampler, few, many)
    assert errors["heun"][1] <= 1.25 * errors["ddim"][1], errors


@pytest.mark.parametrize("name", PROCESSES)
def test_heun_draws_sharp_data_as_well_as_ddim_on_every_grid(name):
    """Sharp, MNIST-like data with x0 clipped: Heun in t drew noise here (on DDPM's t grid, 30 times
    ddim's error at 32 evaluations)."""
    p, x_T = process(name), torch.randn(32, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    exact = exact_mixture(p, x_T)
    for grid in ("t", "lambda", "karras"):
        ddim, heun = (error(s, p, mixture_x0, x_T, 32, grid, True, exact) for s in ("ddim", "heun"))
        assert heun <= 1.25 * ddim, (grid, ddim, heun)


def test_heun_spends_two_evaluations_a_step_but_the_last():
    p = process("vdm")
    calls = []
    out = sample("heun", lambda x, t: calls.append(t) or torch.zeros_like(x), p, torch.randn(1, 1, 2, 2), 4)
    assert len(calls) == 2 * 4 - 1 and torch.isfinite(out).all()
    assert make_timesteps("heun", p, 4)[0] == p.t_max

"""The likelihood of images under a trained model, in nats; likelihood.py turns it into bits/dim.

Two estimates of -log p(x) for 8-bit images x (pixel k in 0..255 is k / 127.5 - 1 in the model's range):

1. The variational bound of Ho et al. 2020 (eq. 5), term by term as in Nichol & Dhariwal 2021:
       -log p(x_0) <= L_prior + sum_{t >= 1} L_t + L_0
       L_prior = KL(q(x_T | x_0) || N(0, I))
       L_t     = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)),  x_t ~ q(x_t | x_0)  (one draw per t)
               = |c1_t (x_0 - x0_hat)|^2 / (2 beta_tilde_t)   (both Gaussians have variance beta_tilde_t,
                 the reverse step of the DDPM sampler; c1_t is the posterior's coefficient of x_0)
       L_0     = -log p(x_0 | x_1): the Gaussian N(x0_hat, beta_1) integrated over each pixel's bin of
                 width 2/255, the outer bins reaching to -inf and +inf (Ho et al. eq. 13).
   In this code's indexing t runs over 0..T-1 and the paper's x_t is this code's x_{t-1}: the decoder
   term sits at t = 0 and the KL terms at t = 1..T-1.

2. The probability-flow ODE (Song et al. 2021): x moves from the data at t = 0 to noise at t = T-1 along
       dx/dt = f(x, t) = g(t) / 2 * (x - eps(x, t) / sigma_t),   g = d log(alpha_bar) / dt,
   the ODE whose marginals are those of x_t = alpha_t x_0 + sigma_t eps (alpha_bar is interpolated
   log-linearly between the integer steps the network was trained on). Then
       log p_0(x(0)) = log N(x(T-1); 0, I) + integral_0^{T-1} div f(x(t), t) dt
   with div f = g / 2 * (D - div eps / sigma_t) and div eps estimated by Hutchinson's trace estimator,
   v^T (d eps / d x) v with one Rademacher probe v per image, fixed along the path (Grathwohl et al.
   2019). p_0 is the model's density at its smallest noise level (sigma = sqrt(beta_1) = 0.01), as
   Song et al. start at t = 1e-5; uniformly dequantised data (x + u) / 128 - 1, u ~ U[0, 1), gives
   the bound -log P(x) <= -log p_0 + D log 128.
"""
import math

import numpy as np
import torch
from scipy.integrate import solve_ivp
from tqdm import tqdm

BIN = 1.0 / 255.0  # half the width of a pixel's bin in [-1, 1]


def discretised_gaussian_log_likelihood(x, mean, log_scale):
    """log P(x) of pixels x on the 256-value grid k / 127.5 - 1 under N(mean, exp(log_scale)^2)
    integrated over x's bin [x - 1/255, x + 1/255]; the bins of -1 and 1 extend to -inf and +inf.
    In float64; the same shape as x."""
    x, mean, log_scale = (v.double() for v in torch.broadcast_tensors(x, mean, log_scale))
    inv_scale = torch.exp(-log_scale)
    upper, lower = inv_scale * (x - mean + BIN), inv_scale * (x - mean - BIN)
    log_cdf_upper = torch.special.log_ndtr(upper)            # log P(X < x + 1/255), for the bin of -1
    log_sf_lower = torch.special.log_ndtr(-lower)           # log P(X > x - 1/255), for the bin of 1
    middle = torch.special.ndtr(upper) - torch.special.ndtr(lower)
    middle_far = torch.special.ndtr(-lower) - torch.special.ndtr(-upper)  # the same, accurate above the mean
    log_middle = torch.log(torch.where(lower > 0, middle_far, middle).clamp(min=1e-300))
    return torch.where(x < -1 + BIN, log_cdf_upper, torch.where(x > 1 - BIN, log_sf_lower, log_middle))


def gaussian_kl(mean1, var1, mean2, var2):
    """KL(N(mean1, var1) || N(mean2, var2)) per element, in nats."""
    return 0.5 * (torch.log(var2 / var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1.0)


@torch.no_grad()
def bound_terms(predict_x0, diffusion, x0, generator=None, batch_size=500):
    """The terms of the variational bound for each image, in nats: (B, T + 1) with column 0 the
    decoder term L_0, column t the KL term L_t (t = 1..T-1) and column T the prior term.
    predict_x0(x_t, t) -> the model's x0 estimate, t a (N,) tensor of timesteps."""
    num, T = len(x0), diffusion.num_timesteps
    x0 = x0.double()
    terms = torch.zeros(num, T + 1, dtype=torch.float64)
    a_bar, c1, var = (v.double().cpu() for v in (diffusion.alphas_cumprod, diffusion.posterior_mean_coef1,
                                                 diffusion.posterior_variance))
    decoder_log_scale = 0.5 * torch.log(diffusion.betas.double().cpu()[0])  # N(x0_hat, beta_1) at t = 0
    terms[:, T] = gaussian_kl(a_bar[-1].sqrt() * x0, 1 - a_bar[-1], torch.zeros(()), torch.ones(())).flatten(1).sum(1)
    device = diffusion.betas.device
    pairs = num * T  # every (image, t), evaluated in batches: pair p is image p % num at t = p // num
    for start in tqdm(range(0, pairs, batch_size), desc="bound: (image, t) pairs", leave=False):
        pair = torch.arange(start, min(start + batch_size, pairs))
        t, image = pair // num, pair % num
        clean = x0[image]
        noise = torch.randn(clean.shape, generator=generator, dtype=torch.float64)
        x_t = a_bar[t].sqrt().view(-1, 1, 1, 1) * clean + (1 - a_bar[t]).sqrt().view(-1, 1, 1, 1) * noise
        x0_hat = predict_x0(x_t.float().to(device), t.to(device)).double().cpu()
        per_pixel = (c1[t].view(-1, 1, 1, 1) * (clean - x0_hat)) ** 2 / (2 * var[t].view(-1, 1, 1, 1).clamp(min=1e-30))
        last = t == 0  # the decoder term replaces the KL there
        per_pixel[last] = -discretised_gaussian_log_likelihood(clean[last], x0_hat[last], decoder_log_scale)
        terms[image, t] = per_pixel.flatten(1).sum(1)
    return terms


def ode_log_likelihood(predict_eps, diffusion, x, generator=None, rtol=1e-5, atol=1e-5):
    """(log p_0(x) in nats per image, function evaluations) by the probability-flow ODE with
    Hutchinson's estimator; predict_eps(x_t, t) -> eps for a float (B,) tensor t.
    Integrated with scipy's adaptive Runge-Kutta (RK45, Dormand-Prince) at rtol / atol."""
    num, dim = len(x), x[0].numel()
    T = diffusion.num_timesteps
    log_a_bar = torch.log(diffusion.alphas_cumprod.double().cpu()).numpy()
    device = diffusion.betas.device
    probe = (torch.randint(0, 2, x.shape, generator=generator) * 2 - 1).to(device, torch.float32)

    def drift(t, state):
        """f(x, t) and div f for the flat state [x (num * dim), log-density change (num)]."""
        i = min(int(t), T - 2)
        slope = log_a_bar[i + 1] - log_a_bar[i]  # g(t): log(alpha_bar) is linear between integer steps
        sigma = math.sqrt(1 - math.exp(log_a_bar[i] + slope * (t - i)))
        x_t = torch.tensor(state[:num * dim], dtype=torch.float32, device=device).view(x.shape)
        with torch.enable_grad():
            x_t.requires_grad_(True)
            eps = predict_eps(x_t, torch.full((num,), float(t), device=device))
            vjp, = torch.autograd.grad((eps * probe).sum(), x_t)
        div_eps = (vjp * probe).flatten(1).sum(1)
        dx = slope / 2 * (x_t - eps / sigma)
        div = slope / 2 * (dim - div_eps / sigma)
        return np.concatenate([dx.detach().double().cpu().flatten().numpy(), div.detach().double().cpu().numpy()])

    start = np.concatenate([x.double().cpu().flatten().numpy(), np.zeros(num)])
    with tqdm(total=T - 1, desc="ODE: t", leave=False, bar_format="{l_bar}{bar}| {n:.0f}/{total} [{elapsed}]") as bar:
        def tracked(t, state):
            bar.update(max(0.0, t - bar.n))
            return drift(t, state)
        solution = solve_ivp(tracked, (0.0, float(T - 1)), start, method="RK45", rtol=rtol, atol=atol)
    end = solution.y[:, -1]
    x_end = torch.from_numpy(end[:num * dim]).view(num, dim)
    log_prior = -0.5 * (x_end ** 2).sum(1) - 0.5 * dim * math.log(2 * math.pi)
    return log_prior + torch.from_numpy(end[num * dim:]), solution.nfev

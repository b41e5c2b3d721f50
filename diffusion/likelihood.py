"""The likelihood of images under a trained model, in nats; likelihood.py turns it into bits/dim.

Three estimates of -log p(x) for 8-bit images x (pixel k in 0..255 is k / 127.5 - 1 in the model's range):

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

2. The probability-flow ODE (Song et al. 2021) of any process x_t = alpha_t x_0 + sigma_t eps: x moves
   from the data at the process's first ODE time t0 to noise at its last, t1, along
       dx/dt = f(x, t) = a(t) x + b(t) eps(x, t),   a = alpha' / alpha,  b = sigma' - a sigma
   (process.ode_drift; for DDPM, a = g / 2 and b = -g / (2 sigma_t) with g = d log(alpha_bar) / dt and
   alpha_bar log-linear between the integer steps the network was trained on). Then
       log p_t0(x(t0)) = log N(x(t1); 0, I) + integral_t0^t1 div f(x(t), t) dt
   with div f = a D + b div eps and div eps estimated by Hutchinson's trace estimator, v^T (d eps /
   d x) v with one Rademacher probe v per image, fixed along the path (Grathwohl et al. 2019).
   p_t0 is the model's density at its smallest noise level (DDPM: sigma = sqrt(beta_1) = 0.01), as
   Song et al. start at t = 1e-5; likelihood.py dequantises (uniformly, or for VDM through q(z_0 | x)
   and its decoder) to bound -log P(x).

3. VDM's continuous-time bound (Kingma et al. 2021, eqs. 11 and 17): prior KL + reconstruction by
   its categorical decoder + 1/2 E_t[gamma'(t) ||eps - eps_hat||^2], Monte Carlo over t.
"""
import math

import numpy as np
import torch
from scipy.integrate import solve_ivp
from tqdm import tqdm

BIN = 1.0 / 255.0  # half the width of a pixel's bin in [-1, 1]
DECODER_CHUNK = 2 ** 15  # pixels per chunk of VDM's decoder: (chunk, 256) logits of 64 MB in float64


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


def prior_kl(x, alpha, sigma):
    """KL(q(z | x) || N(0, I)) per image in nats, q(z | x) = N(alpha x, sigma^2 I): the prior term at
    the last time (Ho et al. 2020's L_T; Kingma et al. 2021, eq. 11)."""
    return (0.5 * (sigma ** 2 + alpha ** 2 * x ** 2 - torch.log(sigma ** 2) - 1)).flatten(1).sum(1)


@torch.no_grad()
def bound_terms(predict_x0, diffusion, x0, generator=None, batch_size=500):
    """The terms of the variational bound for each image, in nats: (B, T + 1) with column 0 the
    decoder term L_0, column t the KL term L_t (t = 1..T-1) and column T the prior term.
    predict_x0(x_t, t) -> the model's x0 estimate, t a (N,) tensor of timesteps."""
    num, T = len(x0), diffusion.num_timesteps
    x0 = x0.double()
    terms = torch.zeros(num, T + 1, dtype=torch.float64)
    steps = torch.arange(T)
    c1, _, var = diffusion.posterior64(steps, steps - 1)  # q(x_{t-1} | x_t, x_0), in float64
    alpha, sigma = diffusion.alpha_sigma64(steps)
    decoder_log_scale = 0.5 * torch.log(sigma[0] ** 2)  # N(x0_hat, sigma_0^2 = beta_1) at t = 0
    terms[:, T] = prior_kl(x0, alpha[-1], sigma[-1])
    pairs = num * T  # every (image, t), evaluated in batches: pair p is image p % num at t = p // num
    for start in tqdm(range(0, pairs, batch_size), desc="bound: (image, t) pairs", leave=False):
        pair = torch.arange(start, min(start + batch_size, pairs))
        t, image = pair // num, pair % num
        clean = x0[image]
        noise = torch.randn(clean.shape, generator=generator, dtype=torch.float64)
        x_t = alpha[t].view(-1, 1, 1, 1) * clean + sigma[t].view(-1, 1, 1, 1) * noise
        x0_hat = predict_x0(x_t.float().to(diffusion.device), t.to(diffusion.device)).double().cpu()
        per_pixel = (c1[t].view(-1, 1, 1, 1) * (clean - x0_hat)) ** 2 / (2 * var[t].view(-1, 1, 1, 1).clamp(min=1e-30))
        last = t == 0  # the decoder term replaces the KL there
        per_pixel[last] = -discretised_gaussian_log_likelihood(clean[last], x0_hat[last], decoder_log_scale)
        terms[image, t] = per_pixel.flatten(1).sum(1)
    return terms


def ode_log_likelihood(predict_eps, process, x, generator=None, rtol=1e-5, atol=1e-5):
    """(log p(x) at the process's first ODE time, in nats per image; function evaluations) by the
    probability-flow ODE (2. above), integrated with scipy's adaptive Runge-Kutta (RK45, Dormand-Prince)
    at rtol / atol; predict_eps(x_t, t) -> eps for a float (B,) tensor t."""
    num, dim = len(x), x[0].numel()
    t0, t1 = process.ode_span()
    device = process.device
    probe = (torch.randint(0, 2, x.shape, generator=generator) * 2 - 1).to(device, torch.float32)

    def drift(t, state):
        """f(x, t) and div f for the flat state [x (num * dim), log-density change (num)]."""
        a, b = process.ode_drift(t)
        x_t = torch.tensor(state[:num * dim], dtype=torch.float32, device=device).view(x.shape)
        with torch.enable_grad():
            x_t.requires_grad_(True)
            eps = predict_eps(x_t, torch.full((num,), float(t), device=device))
            vjp, = torch.autograd.grad((eps * probe).sum(), x_t)
        div_eps = (vjp * probe).flatten(1).sum(1)
        dx = a * x_t + b * eps
        div = a * dim + b * div_eps
        return np.concatenate([dx.detach().double().cpu().flatten().numpy(), div.detach().double().cpu().numpy()])

    start = np.concatenate([x.double().cpu().flatten().numpy(), np.zeros(num)])
    with tqdm(total=100, desc="ODE: % of t", leave=False, bar_format="{l_bar}{bar}| {n:.0f}/{total} [{elapsed}]") as bar:
        def tracked(t, state):
            bar.update(max(0.0, 100 * (t - t0) / (t1 - t0) - bar.n))
            return drift(t, state)
        solution = solve_ivp(tracked, (t0, t1), start, method="RK45", rtol=rtol, atol=atol)
    end = solution.y[:, -1]
    x_end = torch.from_numpy(end[:num * dim]).view(num, dim)
    log_prior = -0.5 * (x_end ** 2).sum(1) - 0.5 * dim * math.log(2 * math.pi)
    return log_prior + torch.from_numpy(end[num * dim:]), solution.nfev


# ---- the continuous-time bound of a variational diffusion model (Kingma et al. 2021) --------------

def vdm_decoder_log_likelihood(x, z0, alpha0, sigma0, chunk=DECODER_CHUNK):
    """log p(x | z_0) per image for VDM's decoder (Kingma et al. 2021, appendix B): each pixel a
    categorical over the 256 values v_k = k / 127.5 - 1 with logits -(z_0 / alpha_0 - v_k)^2 /
    (2 (sigma_0 / alpha_0)^2). x on that grid (else read as its nearest value), z_0 the same shape.
    Pixels are independent, so the (pixels, 256) logits are built `chunk` pixels at a time, not for
    all images at once (1.6 MB an MNIST image in float64)."""
    values = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    scale = sigma0 / alpha0
    num, x, z0 = len(x), x.flatten(), z0.flatten()                                    # (N D,)
    log_p = torch.empty(len(x), dtype=torch.float64)
    for start in range(0, len(x), chunk):
        part = slice(start, start + chunk)
        index = torch.round((x[part].double() + 1) * 127.5).long().clamp(0, 255)     # the nearest value
        logits = -0.5 * ((z0[part].double() / alpha0)[:, None] - values) ** 2 / scale ** 2  # (chunk, 256)
        log_p[part] = torch.log_softmax(logits, dim=-1).gather(1, index[:, None]).squeeze(1)
    return log_p.view(num, -1).sum(1)


@torch.no_grad()
def vdm_bound_terms(predict_eps, process, x0, generator=None, t_samples=100, batch_size=500):
    """The terms of VDM's bound for each image, in nats: (B, 3) = (prior, reconstruction, diffusion).

        prior           KL(q(z_1 | x) || N(0, I))                            (eq. 11, first term)
        reconstruction  -log p(x | z_0), z_0 ~ q(z_0 | x), one draw          (eq. 11, second term)
        diffusion       1/2 E_{t ~ U(0, 1)} [gamma'(t) ||eps - eps_hat(z_t, t)||^2]   (eq. 17),
                        `t_samples` low-discrepancy times per image (Monte Carlo; its noise is part
                        of the spread over images)
    predict_eps(z_t, t) -> eps for a float (N,) tensor of times in [0, 1]; x0 on the 8-bit grid.
    Every term is computed `batch_size` images (or (image, t) pairs) at a time, so the memory does
    not grow with the number of images."""
    (alpha1, sigma1), (alpha0, sigma0) = process.marginal64(1.0), process.marginal64(0.0)
    prior, reconstruction = [], []
    for start in range(0, len(x0), batch_size):
        x = x0[start:start + batch_size].double()
        prior.append(prior_kl(x, alpha1, sigma1))
        z0 = alpha0 * x + sigma0 * torch.randn(x.shape, generator=generator, dtype=torch.float64)  # q(z_0 | x)
        reconstruction.append(-vdm_decoder_log_likelihood(x, z0, alpha0, sigma0))
    diffusion = vdm_diffusion_term(predict_eps, process, x0, generator, t_samples, batch_size)
    return torch.stack([torch.cat(prior), torch.cat(reconstruction), diffusion], dim=1)


@torch.no_grad()
def vdm_diffusion_term(predict_eps, process, x0, generator=None, t_samples=100, batch_size=500, lo=0.0, hi=1.0):
    """1/2 integral_lo^hi gamma'(t) ||eps - eps_hat(z_t, t)||^2 dt per image in nats (eq. 17 over
    [lo, hi]): `t_samples` low-discrepancy times per image in [lo, hi], one noise draw each."""
    num, device = len(x0), process.device
    dgamma = process.gamma_max - process.gamma_min
    diffusion = torch.zeros(num, dtype=torch.float64)
    u = torch.rand(num, generator=generator, dtype=torch.float64)
    pairs = num * t_samples  # pair p: image p % num at its (p // num)-th time
    for start in tqdm(range(0, pairs, batch_size), desc="bound: (image, t) pairs", leave=False):
        pair = torch.arange(start, min(start + batch_size, pairs))
        image, k = pair % num, pair // num
        t = lo + (hi - lo) * torch.remainder(u[image] + k / t_samples, 1.0)
        alpha, sigma = process.alpha_sigma64(t)
        noise = torch.randn((len(pair), *x0.shape[1:]), generator=generator, dtype=torch.float64)
        z_t = alpha.view(-1, 1, 1, 1) * x0[image] + sigma.view(-1, 1, 1, 1) * noise
        eps = predict_eps(z_t.float().to(device), t.float().to(device)).double().cpu()
        diffusion.index_add_(0, image, 0.5 * dgamma * (hi - lo) * (noise - eps).pow(2).flatten(1).sum(1) / t_samples)
    return diffusion

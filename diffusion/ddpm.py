"""The Gaussian diffusion process of Ho et al. 2020 (DDPM): a process on the discrete time grid of
T integer steps, described like every process here by alpha and sigma (diffusion/gaussian.py):

    alpha_bar_t = prod_{i <= t} (1 - beta_i),  alpha_t = sqrt(alpha_bar_t),  sigma_t = sqrt(1 - alpha_bar_t)

Conventions: t is an integer in [0, T); t = 0 is the last denoising step, x_{-1} is the clean
image x_0 of the paper. Tensors are (B, C, H, W); t is (B,), or one Python int for the whole
batch. Every coefficient is computed once in float64; the ones the training step and the
samplers read on every call are also stored in float32 on the device, as tables indexed by t.
The process never sees the network.
"""
import math

import numpy as np
import torch

from diffusion.gaussian import GaussianProcess
from diffusion.likelihood import bound_terms
from diffusion.schedules import make_betas


class DDPM(GaussianProcess):
    name, about = "ddpm", "discrete, Ho et al. 2020"
    defaults = {"prediction": "eps", "weighting": "min_snr", "t_sampling": "uniform", "clip_x0": False,
                "few_steps": 0}
    allowed = {"prediction": ("eps", "x0", "v"), "clip_x0": (False,)}  # the velocity is d/dt: none on a grid
    discrete = True  # its times are the integer timesteps the network was trained on

    def __init__(self, config, device="cpu"):
        super().__init__(config, device)
        self.num_timesteps = config.num_timesteps
        self.t_min, self.t_max = 0, config.num_timesteps - 1  # the sampling range: clean end, noise end
        betas = make_betas(config)
        alphas_cumprod = np.cumprod(1.0 - betas)
        # alpha_bar in float64 on the CPU, index t + 1: alpha_bar_{-1} = 1 is the clean data
        self.alpha_bar64 = torch.tensor(np.append(1.0, alphas_cumprod), dtype=torch.float64)

        def buffer(array):
            return torch.tensor(array, dtype=torch.float32, device=device)

        self.betas = buffer(betas)
        self.alphas_cumprod = buffer(alphas_cumprod)
        self.log_alphas_cumprod = np.log(alphas_cumprod.astype(np.float32).astype(np.float64))  # as the ODE reads it
        # q(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I), alpha_t = sqrt(alpha_bar_t)                 (eq. 4)
        self.sqrt_alphas_cumprod = buffer(np.sqrt(alphas_cumprod))
        self.sqrt_one_minus_alphas_cumprod = buffer(np.sqrt(1.0 - alphas_cumprod))
        # x_0 = x_t / alpha_t - (sigma_t / alpha_t) eps                                            (from eq. 4)
        self.sqrt_recip_alphas_cumprod = buffer(np.sqrt(1.0 / alphas_cumprod))
        self.sqrt_recipm1_alphas_cumprod = buffer(np.sqrt(1.0 / alphas_cumprod - 1.0))
        # signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t), for the loss weightings
        self.snr_table = buffer(alphas_cumprod / (1.0 - alphas_cumprod))
        # lambda_t = log(alpha_t / sigma_t) = 0.5 log(SNR_t), the time variable of DPM-Solver (Lu et
        # al. 2022), decreasing in t; kept in float64 on the CPU, where the samplers do their step sizes
        self.log_snr = torch.tensor(0.5 * np.log(alphas_cumprod / (1.0 - alphas_cumprod)), dtype=torch.float64)

    # ---- alpha and sigma: the float64 definition, and its float32 tables --------------------------

    def alpha_sigma64(self, t):
        """(alpha_t, sigma_t) in float64 for integer timesteps t in [-1, T) (-1: the clean data, (1, 0))."""
        alpha_bar = self.alpha_bar64[torch.as_tensor(t).long().cpu() + 1]
        return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()

    def alpha_sigma(self, t):
        """(alpha_t, sigma_t) from the float32 tables (t = -1: (1, 0))."""
        if not torch.is_tensor(t) and t < 0:
            return torch.ones_like(self.sqrt_alphas_cumprod[0]), torch.zeros_like(self.sqrt_alphas_cumprod[0])
        return self.sqrt_alphas_cumprod[t], self.sqrt_one_minus_alphas_cumprod[t]

    def x0_coefficients(self, t):
        return self.sqrt_recip_alphas_cumprod[t], self.sqrt_recipm1_alphas_cumprod[t]

    def snr(self, t):
        return self.snr_table[t]

    # ---- times -------------------------------------------------------------------------------------

    def lam(self, t):
        return self.log_snr[t].item()

    def time_of_lam(self, lam):
        """The training timestep whose lambda is nearest to `lam` (time grids: diffusion/grids.py)."""
        return int((self.log_snr - lam).abs().argmin())

    def fraction(self, t):
        return t / self.num_timesteps

    def model_time(self, t, batch, device):
        """The (B,) timesteps the network sees: the integer t itself."""
        return t if torch.is_tensor(t) else torch.full((batch,), t, device=device, dtype=torch.long)

    def time_at(self, u):
        return (u * self.num_timesteps).long().clamp(max=self.num_timesteps - 1)

    # ---- the probability-flow ODE ------------------------------------------------------------------

    def ode_span(self):
        return 0.0, float(self.num_timesteps - 1)

    def ode_drift(self, t):
        """(a, b) of the probability-flow ODE dx/dt = a x + b eps_hat at a float t, where log(alpha_bar)
        is linear between the integer steps the network was trained on (g its slope there):
        a = g / 2, b = -g / (2 sigma_t) (Song et al. 2021, the variance-preserving SDE)."""
        log_a_bar = self.log_alphas_cumprod
        i = min(int(t), self.num_timesteps - 2)
        slope = log_a_bar[i + 1] - log_a_bar[i]
        sigma = math.sqrt(1 - math.exp(log_a_bar[i] + slope * (t - i)))
        return slope / 2, -slope / (2 * sigma)

    def derivatives(self, t):
        """(alpha'(t), sigma'(t)) at an integer t from ode_drift: a x_t + b eps with x_t = alpha x_0 +
        sigma eps gives alpha' = a alpha and sigma' = a sigma + b."""
        a, b = self.ode_drift(float(t))
        alpha, sigma = self.alpha_sigma64(t)
        return a * alpha, a * sigma + b

    # ---- the variational bound (likelihood.py) -------------------------------------------------

    def bound(self, predict_x0, predict_eps, x0, generator, t_samples, batch_size):
        """(terms, name): DDPM's variational bound per image in nats (Ho et al. 2020, eq. 5; every
        t, so t_samples is unused), by term: the prior L_T, the decoder L_0 and the sums of L_t over
        ranges of t (diffusion/likelihood.py's bound_terms)."""
        terms, T = bound_terms(predict_x0, self, x0, generator, batch_size), self.num_timesteps
        spans = [(lo, min(hi, T)) for lo, hi in ((1, 10), (10, 100), (100, T)) if lo < T]
        named = {"prior L_T": terms[:, T], "decoder L_0": terms[:, 0]}
        named.update({f"t {lo}-{hi - 1}": terms[:, lo:hi].sum(1) for lo, hi in spans})
        return named, "variational bound (Ho et al. 2020)"

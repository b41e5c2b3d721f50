"""The Gaussian diffusion process of Ho et al. 2020 (DDPM): coefficients, q(x_t | x_0), the
posterior q(x_{t-1} | x_t, x_0), the prediction targets and the training loss.

Conventions: t is an integer in [0, T); t = 0 is the last denoising step, x_{-1} is the clean
image x_0 of the paper. Tensors are (B, C, H, W); t is (B,), or one Python int for the whole
batch. Every coefficient is computed once in float64 and stored in float32 on the device. The
process never sees the network. It is the discrete instance of the interface that every process
offers the samplers and the training loop (alpha, sigma, lambda, times, posterior; see
diffusion/continuous.py for the continuous-time ones).
"""
import math

import numpy as np
import torch

from diffusion.likelihood import bound_terms
from diffusion.schedules import make_betas
from diffusion.times import draw_times
from diffusion.weightings import weighted_loss


def extract(a, t, shape):
    """a[t] for a 1-D coefficient tensor, reshaped to broadcast over a batch of this shape."""
    return a[t].reshape(-1, *([1] * (len(shape) - 1)))


class GaussianDiffusion:
    discrete = True  # its times are the integer timesteps the network was trained on

    def __init__(self, config, device="cpu"):
        self.config, self.device = config, torch.device(device)
        self.num_timesteps = config.num_timesteps
        self.t_min, self.t_max = 0, config.num_timesteps - 1  # the sampling range: clean end, noise end
        self.prediction = config.prediction
        betas = make_betas(config)
        alphas = 1.0 - betas
        alphas_cumprod = np.cumprod(alphas)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])

        def buffer(array):
            return torch.tensor(array, dtype=torch.float32, device=device)

        self.betas = buffer(betas)
        self.alphas_cumprod = buffer(alphas_cumprod)
        self.log_alphas_cumprod = np.log(alphas_cumprod.astype(np.float32).astype(np.float64))  # as the ODE reads it

        # q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)                (eq. 4)
        self.sqrt_alphas_cumprod = buffer(np.sqrt(alphas_cumprod))
        self.sqrt_one_minus_alphas_cumprod = buffer(np.sqrt(1.0 - alphas_cumprod))
        # x_0 = sqrt(1 / alpha_bar_t) x_t - sqrt(1 / alpha_bar_t - 1) eps             (from eq. 4)
        self.sqrt_recip_alphas_cumprod = buffer(np.sqrt(1.0 / alphas_cumprod))
        self.sqrt_recipm1_alphas_cumprod = buffer(np.sqrt(1.0 / alphas_cumprod - 1.0))
        # signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t), for the loss weightings
        self.snr_table = buffer(alphas_cumprod / (1.0 - alphas_cumprod))

        # lambda_t = log(alpha_t / sigma_t) = 0.5 log(SNR_t), the time variable of DPM-Solver (Lu et
        # al. 2022), decreasing in t; kept in float64 on the CPU, where the samplers do their step sizes
        self.log_snr = torch.tensor(0.5 * np.log(alphas_cumprod / (1.0 - alphas_cumprod)), dtype=torch.float64)

        # posterior q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, beta_tilde_t I)   (eqs. 6, 7)
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        self.posterior_variance = buffer(posterior_variance)
        self.posterior_mean_coef1 = buffer(betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod))
        self.posterior_mean_coef2 = buffer((1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod))

    # ---- q(x_t | x_0) ---------------------------------------------------------------------

    def q_sample(self, x0, t, noise):
        """Draw x_t ~ q(x_t | x_0) with the given noise."""
        return (extract(self.sqrt_alphas_cumprod, t, x0.shape) * x0
                + extract(self.sqrt_one_minus_alphas_cumprod, t, x0.shape) * noise)

    def alpha_sigma(self, t):
        """(alpha_t, sigma_t) = (sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)) at one integer timestep, so
        that x_t = alpha_t x_0 + sigma_t eps; t = -1 stands for the clean data after the last step: (1, 0)."""
        if t < 0:
            return torch.ones_like(self.sqrt_alphas_cumprod[0]), torch.zeros_like(self.sqrt_alphas_cumprod[0])
        return self.sqrt_alphas_cumprod[t], self.sqrt_one_minus_alphas_cumprod[t]

    def lam(self, t):
        """lambda_t = log(alpha_t / sigma_t), DPM-Solver's time variable, as a float."""
        return self.log_snr[t].item()

    def fraction(self, t):
        """t / T: where t sits between the clean data (0) and noise (1), the guidance interval's scale."""
        return t / self.num_timesteps

    def model_time(self, t, batch, device):
        """The (B,) timesteps the network sees: the integer t itself."""
        return t if torch.is_tensor(t) else torch.full((batch,), t, device=device, dtype=torch.long)

    def draw_t(self, batch, generator, device):
        """Training timesteps from config.t_sampling (diffusion/times.py; default: uniform over [0, T))."""
        return draw_times(self, batch, generator, device)

    def time_at(self, u):
        """The timestep a fraction u in [0, 1) of the way from 0 to T."""
        return (u * self.num_timesteps).long().clamp(max=self.num_timesteps - 1)

    def ode_span(self):
        """The probability-flow ODE runs over t in [0, T - 1]."""
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

    def velocity_of(self, x0, eps, t):
        """dx_t/dt = alpha'(t) x0 + sigma'(t) eps at a time t, from ode_drift: a x_t + b eps with
        x_t = alpha x0 + sigma eps gives alpha' = a alpha and sigma' = a sigma + b."""
        a, b = self.ode_drift(float(t))
        alpha, sigma = self.alpha_sigma(t)
        return a * alpha * x0 + (a * sigma + b) * eps

    def time_of_lam(self, lam):
        """The training timestep whose lambda is nearest to `lam` (time grids: diffusion/grids.py)."""
        return int((self.log_snr - lam).abs().argmin())

    # ---- posterior q(x_{t-1} | x_t, x_0) ------------------------------------------------------

    def q_posterior(self, x0, x_t, t):
        """Mean and variance of q(x_{t-1} | x_t, x_0). The variance is 0 at t = 0."""
        mean = (extract(self.posterior_mean_coef1, t, x_t.shape) * x0
                + extract(self.posterior_mean_coef2, t, x_t.shape) * x_t)
        return mean, extract(self.posterior_variance, t, x_t.shape)

    def posterior(self, x0, x_t, t, s):
        """q(x_s | x_t, x_0) for the next timestep s = t - 1 (the ancestral sampler's step)."""
        return self.q_posterior(x0, x_t, t)

    def transition(self, s, t):
        """(a, variance) of q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I), for s = t - 1."""
        beta = self.betas[t]
        return (1 - beta).sqrt(), beta

    # ---- prediction targets -----------------------------------------------------------------

    def target(self, x0, noise, t):
        """What the network should output: eps, x0, or v = sqrt(ab) eps - sqrt(1-ab) x0 (Salimans & Ho 2022)."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        return (extract(self.sqrt_alphas_cumprod, t, x0.shape) * noise
                - extract(self.sqrt_one_minus_alphas_cumprod, t, x0.shape) * x0)

    def predict_x0_eps(self, x_t, t, model_output):
        """Turn the network's output (of any target type) into (x0, eps) estimates."""
        shape = x_t.shape
        sqrt_ab = extract(self.sqrt_alphas_cumprod, t, shape)
        sqrt_1m_ab = extract(self.sqrt_one_minus_alphas_cumprod, t, shape)
        if self.prediction == "eps":
            eps = model_output
            x0 = (extract(self.sqrt_recip_alphas_cumprod, t, shape) * x_t
                  - extract(self.sqrt_recipm1_alphas_cumprod, t, shape) * eps)
        elif self.prediction == "x0":
            x0 = model_output
            eps = (x_t - sqrt_ab * x0) / sqrt_1m_ab
        else:  # v: x0 = sqrt(ab) x_t - sqrt(1-ab) v,  eps = sqrt(1-ab) x_t + sqrt(ab) v
            x0 = sqrt_ab * x_t - sqrt_1m_ab * model_output
            eps = sqrt_1m_ab * x_t + sqrt_ab * model_output
        return x0, eps

    # ---- the variational bound (likelihood.py) -------------------------------------------------

    decoded_ode = False  # the probability-flow ODE's density is read with uniform dequantisation

    def bound(self, predict_x0, predict_eps, x0, generator, t_samples, batch_size):
        """(terms, name): DDPM's variational bound per image in nats (Ho et al. 2020, eq. 5; every
        t, so t_samples is unused), by term: the prior L_T, the decoder L_0 and the sums of L_t over
        ranges of t (diffusion/likelihood.py's bound_terms)."""
        terms, T = bound_terms(predict_x0, self, x0, generator, batch_size), self.num_timesteps
        spans = [(lo, min(hi, T)) for lo, hi in ((1, 10), (10, 100), (100, T)) if lo < T]
        named = {"prior L_T": terms[:, T], "decoder L_0": terms[:, 0]}
        named.update({f"t {lo}-{hi - 1}": terms[:, lo:hi].sum(1) for lo, hi in spans})
        return named, "variational bound (Ho et al. 2020)"

    # ---- training loss ------------------------------------------------------------------------

    def snr(self, t):
        """SNR_t = alpha_bar_t / (1 - alpha_bar_t) for (B,) timesteps."""
        return self.snr_table[t]

    def target_scale(self, t):
        """d target / d eps at fixed x_t: 1 for eps, sigma / alpha for x0, 1 / alpha for v."""
        if self.prediction == "eps":
            return 1.0
        sqrt_ab, sqrt_1m_ab = self.sqrt_alphas_cumprod[t], self.sqrt_one_minus_alphas_cumprod[t]
        return sqrt_1m_ab / sqrt_ab if self.prediction == "x0" else 1 / sqrt_ab

    def loss(self, model_output, x0, noise, t):
        """The mean squared error to the target (Ho et al. 2020, eq. 14 for eps), in float32, each
        sample weighted by config.weighting (diffusion/weightings.py; DDPM's default: min-SNR-gamma,
        Hang et al. 2023)."""
        per_sample = (model_output.float() - self.target(x0, noise, t)).pow(2).mean(dim=(1, 2, 3))
        return weighted_loss(self, per_sample, t)

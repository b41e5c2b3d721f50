"""The Gaussian diffusion process of Ho et al. 2020 (DDPM): coefficients, q(x_t | x_0), the
posterior q(x_{t-1} | x_t, x_0), the prediction targets and the training loss.

Conventions: t is an integer in [0, T); t = 0 is the last denoising step, x_{-1} is the clean
image x_0 of the paper. Tensors are (B, C, H, W); t is (B,), or one Python int for the whole
batch. Every coefficient is computed once in float64 and stored in float32 on the device. The process never sees the network.
"""
import numpy as np
import torch

from diffusion.schedules import make_betas


def extract(a, t, shape):
    """a[t] for a 1-D coefficient tensor, reshaped to broadcast over a batch of this shape."""
    return a[t].reshape(-1, *([1] * (len(shape) - 1)))


class GaussianDiffusion:
    def __init__(self, config, device="cpu"):
        self.config = config
        self.num_timesteps = config.num_timesteps
        self.prediction = config.prediction
        betas = make_betas(config)
        alphas = 1.0 - betas
        alphas_cumprod = np.cumprod(alphas)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])

        def buffer(array):
            return torch.tensor(array, dtype=torch.float32, device=device)

        self.betas = buffer(betas)
        self.alphas_cumprod = buffer(alphas_cumprod)

        # q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)                (eq. 4)
        self.sqrt_alphas_cumprod = buffer(np.sqrt(alphas_cumprod))
        self.sqrt_one_minus_alphas_cumprod = buffer(np.sqrt(1.0 - alphas_cumprod))
        # x_0 = sqrt(1 / alpha_bar_t) x_t - sqrt(1 / alpha_bar_t - 1) eps             (from eq. 4)
        self.sqrt_recip_alphas_cumprod = buffer(np.sqrt(1.0 / alphas_cumprod))
        self.sqrt_recipm1_alphas_cumprod = buffer(np.sqrt(1.0 / alphas_cumprod - 1.0))
        # signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t), for min-SNR weighting
        self.snr = buffer(alphas_cumprod / (1.0 - alphas_cumprod))

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

    # ---- posterior q(x_{t-1} | x_t, x_0) ------------------------------------------------------

    def q_posterior(self, x0, x_t, t):
        """Mean and variance of q(x_{t-1} | x_t, x_0). The variance is 0 at t = 0."""
        mean = (extract(self.posterior_mean_coef1, t, x_t.shape) * x0
                + extract(self.posterior_mean_coef2, t, x_t.shape) * x_t)
        return mean, extract(self.posterior_variance, t, x_t.shape)

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

    # ---- training loss ------------------------------------------------------------------------

    def loss(self, model_output, x0, noise, t):
        """Mean squared error to the target (Ho et al. 2020, eq. 14 for eps), in float32.

        With min_snr_gamma > 0, each sample is weighted by min(SNR_t, gamma) / SNR_t expressed for
        the target in use (Hang et al. 2023): eps -> min(snr, g)/snr, x0 -> min(snr, g), v -> min(snr, g)/(snr+1).
        """
        target = self.target(x0, noise, t)
        per_sample = (model_output.float() - target).pow(2).mean(dim=(1, 2, 3))
        gamma = self.config.min_snr_gamma
        if gamma > 0:
            snr = self.snr[t]
            clipped = snr.clamp(max=gamma)
            weight = {"eps": clipped / snr, "x0": clipped, "v": clipped / (snr + 1)}[self.prediction]
            per_sample = per_sample * weight
        return per_sample.mean()

"""Noise schedules: beta_t for t in [0, T), in float64."""
import math

import numpy as np


def linear_betas(num_timesteps, beta_start=1e-4, beta_end=0.02):
    """Ho et al. 2020, section 4: betas rise linearly from 1e-4 to 0.02 over T = 1000 steps."""
    return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def cosine_betas(num_timesteps, s=0.008, max_beta=0.999):
    """Nichol & Dhariwal 2021, eq. 17: alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2),
    beta_t = 1 - alpha_bar(t+1) / alpha_bar(t), clipped at 0.999 to avoid a singularity at t = T."""
    alpha_bar = [math.cos((t / num_timesteps + s) / (1 + s) * math.pi / 2) ** 2 for t in range(num_timesteps + 1)]
    betas = [min(1 - alpha_bar[t + 1] / alpha_bar[t], max_beta) for t in range(num_timesteps)]
    return np.array(betas, dtype=np.float64)


def make_betas(config):
    """betas for a DiffusionConfig."""
    if config.schedule == "linear":
        return linear_betas(config.num_timesteps, config.beta_start, config.beta_end)
    if config.schedule == "cosine":
        return cosine_betas(config.num_timesteps)
    raise ValueError(f"unknown schedule {config.schedule!r}")

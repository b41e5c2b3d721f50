"""Loss weightings: w(t), the weight of a time's denoising error ||eps - eps_hat(x_t, t)||^2 per
dimension, a function of the log-SNR, log SNR(t) = log(alpha_t^2 / sigma_t^2) (Kingma & Gao 2023
compare them on one footing). A process's loss measures the error in the space of what its network
predicts and divides the weight by (d target / d eps)^2 at fixed x_t (the process's target_scale),
so that one weighting means one objective whatever the network predicts. VDM measures every
error on eps (its eps_hat, clamped to the data range), so there `target` is the plain MSE on eps.

    target    the plain mean squared error of what the network predicts (no weight): L_simple for
              eps (Ho et al. 2020), flow matching's velocity loss for the velocity (Lipman et al. 2023)
    simple    1: L_simple whatever the network predicts
    min_snr   min(SNR, gamma) / SNR (Hang et al. 2023; gamma: --min_snr_gamma, 0 = target)
    elbo      -1/2 d log SNR / dt: the continuous-time ELBO in nats per dimension (Kingma et al.
              2021, eq. 17; continuous time only)
    velocity  (sigma' - alpha' sigma / alpha)^2: flow matching's velocity loss (continuous time only)
    edm       (e^-logSNR + s_d^2) / s_d^2 with s_d = 0.5: Karras et al. 2022's lambda(sigma) =
              (sigma^2 + s_d^2) / (sigma s_d)^2 on the x0 error, sigma = sigma_t / alpha_t

A new weighting is one function of (process, t) returning a (B,) tensor on the device (or None for
no weight) and one line in WEIGHTINGS, which --weighting's choices are; `CONTINUOUS_ONLY` names
those that need d/dt (a discrete process refuses them).
"""
import torch

SIGMA_DATA = 0.5  # EDM's data standard deviation; MNIST in [-1, 1] has about 0.6


def target(process, t):
    return None


def simple(process, t):
    return torch.ones_like(process.snr(t))


def min_snr(process, t):
    gamma = process.config.min_snr_gamma
    if gamma <= 0:
        return None
    snr = process.snr(t)
    return snr.clamp(max=gamma) / snr


def elbo(process, t):
    t64 = torch.as_tensor(t, dtype=torch.float64)
    (alpha, sigma), (d_alpha, d_sigma) = process.alpha_sigma64(t64), process.derivatives(t64)
    return (d_sigma / sigma - d_alpha / alpha).float().to(process.device)  # -1/2 d log SNR / dt


def velocity(process, t):
    t64 = torch.as_tensor(t, dtype=torch.float64)
    (alpha, sigma), (d_alpha, d_sigma) = process.alpha_sigma64(t64), process.derivatives(t64)
    return ((d_sigma - d_alpha * sigma / alpha) ** 2).float().to(process.device)


def edm(process, t):
    return (1 / process.snr(t) + SIGMA_DATA ** 2) / SIGMA_DATA ** 2


WEIGHTINGS = {"target": target, "simple": simple, "min_snr": min_snr, "elbo": elbo, "velocity": velocity, "edm": edm}
CONTINUOUS_ONLY = ("elbo", "velocity")


def weighted_loss(process, per_sample, t, scale=None):
    """The batch's loss: `per_sample` (B,) mean squared errors in the network's output space times
    w(t) / scale^2, scale = d output / d eps (process.target_scale(t) unless given; 1 for eps)."""
    weight = WEIGHTINGS[process.config.weighting](process, t)
    if weight is not None:
        scale = process.target_scale(t) if scale is None else scale
        per_sample = per_sample * (weight if isinstance(scale, float) and scale == 1.0 else weight / scale ** 2)
    return per_sample.mean()

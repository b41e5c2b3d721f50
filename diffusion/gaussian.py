"""What every process here shares: x_t = alpha_t x_0 + sigma_t eps, a Gaussian q(x_t | x_0) described
by two functions of time. From alpha and sigma alone follow the prediction targets, the (x0, eps)
estimates from any of them, the posterior q(x_s | x_t, x_0), the transition q(x_t | x_s) and the
training loss; they are written here once, for DDPM's discrete grid (diffusion/ddpm.py) and for
continuous time (diffusion/continuous.py) alike.

A process defines:
    alpha_sigma64(t)  (alpha_t, sigma_t) in float64 for a float64 tensor t: the process's definition
    derivatives(t)    (alpha'(t), sigma'(t)) in float64, for the velocity and the probability-flow ODE
    alpha_sigma(t)    the same in float32 on the device (here: alpha_sigma64 cast; DDPM: a table)
and the times (lam, time_of_lam, fraction, model_time, time_at, ode_span, ode_drift) of the contract
in diffusion/processes.py. Tensors are (B, C, H, W); t is one Python number for the whole batch or
a (B,) tensor; t = -1 stands for the clean data after the last sampling step.
"""
import torch

from diffusion.times import TIMES
from diffusion.weightings import weighted_loss


def bcast(v, shape):
    """A scalar or (B,) tensor reshaped to broadcast over a batch of this shape."""
    v = torch.as_tensor(v)
    return v.reshape(-1, *([1] * (len(shape) - 1))) if v.dim() else v


def as64(t):
    return torch.as_tensor(t, dtype=torch.float64)


class GaussianProcess:
    """A process's facts, on its class (DiffusionConfig reads them from the registry, --help too):"""
    name = ""       # its --process, the key in diffusion/processes.py's PROCESSES
    about = ""      # what --help says of it
    defaults = {}   # its own value of each DiffusionConfig field left unset (None)
    allowed = {"clip_x0": (False,)}  # the values it takes of a field, where it does not take every value
    own_flags = ()  # DiffusionConfig flags for it alone: refused when typed for another process
    num_timesteps = None  # T, the integer timesteps of a discrete process
    bound = None  # no variational bound unless a process defines one (likelihood.py: the ODE only)
    decoded_ode = False  # the ODE's density is read with uniform dequantisation
    takes_step = False  # whether the network is also told the size of the step to take (shortcut models)

    def __init__(self, config, device="cpu"):
        self.config, self.device = config, torch.device(device)
        self.prediction = config.prediction

    def marginal64(self, t):
        """(alpha_t, sigma_t) in float64 for one time, or (1, 0) at t = -1 (the clean data)."""
        if isinstance(t, (int, float)) and t == -1:
            return torch.ones((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
        return self.alpha_sigma64(as64(t))

    def alpha_sigma(self, t):
        """(alpha_t, sigma_t) as float32 tensors on the device (t = -1: the clean data, (1, 0))."""
        return tuple(v.float().to(self.device) for v in self.marginal64(t))

    def x0_coefficients(self, t):
        """(1 / alpha_t, sigma_t / alpha_t) in float32: x_0 = x_t / alpha_t - (sigma_t / alpha_t) eps."""
        alpha, sigma = self.alpha_sigma64(as64(t))
        return (1 / alpha).float().to(self.device), (sigma / alpha).float().to(self.device)

    def draw_t(self, batch, generator, device):
        """(B,) training times from config.t_sampling (diffusion/times.py)."""
        return TIMES[self.config.t_sampling](self, batch, generator, device)

    # ---- q(x_t | x_0), the posterior q(x_s | x_t, x_0) and the transition q(x_t | x_s) -------------

    def q_sample(self, x0, t, noise):
        """Draw x_t ~ q(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I) with the given noise."""
        alpha, sigma = self.alpha_sigma(t)
        return bcast(alpha, x0.shape) * x0 + bcast(sigma, x0.shape) * noise

    def transition64(self, s, t):
        """(alpha_{t|s}, sigma_{t|s}^2) of q(x_t | x_s) = N(alpha_{t|s} x_s, sigma_{t|s}^2 I), s < t, in
        float64 (Kingma et al. 2021, eq. 22): alpha_{t|s} = alpha_t / alpha_s,
        sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2 (DDPM, s = t - 1: sqrt(1 - beta_t), beta_t)."""
        (alpha_t, sigma_t), (alpha_s, sigma_s) = self.marginal64(t), self.marginal64(s)
        a = alpha_t / alpha_s
        return a, sigma_t ** 2 - a ** 2 * sigma_s ** 2

    def transition(self, s, t):
        """(a, variance) of q(x_t | x_s) = N(a x_s, variance I) for s < t, float32 on the device."""
        return tuple(v.float().to(self.device) for v in self.transition64(s, t))

    def posterior64(self, t, s):
        """(c_x0, c_xt, variance) of q(x_s | x_t, x_0) = N(c_x0 x_0 + c_xt x_t, variance I) for s < t, in
        float64 (Kingma et al. 2021, eq. 31; DDPM's eqs. 6-7 for s = t - 1); s = -1, the clean data:
        (1, 0, 0)."""
        a, var_ts = self.transition64(s, t)
        (_, sigma_t), (alpha_s, sigma_s) = self.marginal64(t), self.marginal64(s)
        return alpha_s * var_ts / sigma_t ** 2, a * sigma_s ** 2 / sigma_t ** 2, var_ts * sigma_s ** 2 / sigma_t ** 2

    def posterior(self, x0, x_t, t, s):
        """Mean and variance of q(x_s | x_t, x_0) for the next time s < t (s = -1: variance 0)."""
        c_x0, c_xt, variance = (bcast(v.float().to(self.device), x_t.shape) for v in self.posterior64(t, s))
        return c_x0 * x0 + c_xt * x_t, variance

    # ---- prediction targets and estimates ----------------------------------------------------------

    def velocity_of(self, x0, eps, t):
        """dx_t/dt = alpha'(t) x_0 + sigma'(t) eps: the velocity target, and the samplers' ODE."""
        d_alpha, d_sigma = (v.float().to(self.device) for v in self.derivatives(as64(t)))
        return bcast(d_alpha, x0.shape) * x0 + bcast(d_sigma, x0.shape) * eps

    def target(self, x0, noise, t):
        """What the network should output: eps, x0, v = alpha eps - sigma x0 (Salimans & Ho 2022) or
        the velocity dx_t/dt."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        if self.prediction == "velocity":
            return self.velocity_of(x0, noise, t)
        alpha, sigma = self.alpha_sigma(t)
        return bcast(alpha, x0.shape) * noise - bcast(sigma, x0.shape) * x0

    def predict_x0_eps(self, x_t, t, out):
        """(x0, eps) estimates from the network's output `out`, whatever it predicts."""
        alpha, sigma = (bcast(v, x_t.shape) for v in self.alpha_sigma(t))
        if self.prediction == "eps":  # x_0 = x_t / alpha - (sigma / alpha) eps
            recip_alpha, sigma_over_alpha = (bcast(v, x_t.shape) for v in self.x0_coefficients(t))
            return recip_alpha * x_t - sigma_over_alpha * out, out
        if self.prediction == "x0":
            return out, (x_t - alpha * out) / sigma
        if self.prediction == "v":  # v = alpha eps - sigma x0 solved with x_t = alpha x0 + sigma eps
            norm = alpha ** 2 + sigma ** 2
            return (alpha * x_t - sigma * out) / norm, (sigma * x_t + alpha * out) / norm
        d_alpha, d_sigma = (bcast(v.float().to(self.device), x_t.shape) for v in self.derivatives(as64(t)))
        # x_t = alpha x0 + sigma eps and out = alpha' x0 + sigma' eps, solved for x0 and eps
        det = alpha * d_sigma - sigma * d_alpha
        return (d_sigma * x_t - sigma * out) / det, (alpha * out - d_alpha * x_t) / det

    # ---- the training loss and its weighting (diffusion/weightings.py) -----------------------------

    def snr(self, t):
        """SNR(t) = alpha_t^2 / sigma_t^2 as float32 on the device."""
        alpha, sigma = self.alpha_sigma64(as64(t))
        return ((alpha / sigma) ** 2).float().to(self.device)

    def target_scale(self, t):
        """d target / d eps at fixed x_t = alpha x0 + sigma eps: 1 for eps, sigma / alpha for x0,
        (alpha^2 + sigma^2) / alpha for v, sigma' - alpha' sigma / alpha for the velocity."""
        if self.prediction == "eps":
            return 1.0
        if self.prediction == "velocity":
            t64 = as64(t)
            (alpha, sigma), (d_alpha, d_sigma) = self.alpha_sigma64(t64), self.derivatives(t64)
            return (d_sigma - d_alpha * sigma / alpha).float().to(self.device)
        alpha, sigma = self.alpha_sigma(t)
        return sigma / alpha if self.prediction == "x0" else (alpha ** 2 + sigma ** 2) / alpha

    def training_loss(self, net, x0, y, noise, t, amp):
        """The loss of one training batch for the network `net` (what training/step.py asks): x_t
        from q(x_t | x_0), the network's output under the autocast context `amp`, then `loss`."""
        x_t = self.q_sample(x0, t, noise)
        with amp():
            prediction = net(x_t, self.model_time(t, len(t), t.device), y)
        return self.loss(prediction, x0, noise, t)

    def loss(self, out, x0, noise, t):
        """The mean squared error to the target per pixel (Ho et al. 2020, eq. 14 for eps), in float32,
        each sample weighted by config.weighting (diffusion/weightings.py)."""
        per_sample = (out.float() - self.target(x0, noise, t)).pow(2).mean(dim=(1, 2, 3))
        return weighted_loss(self, per_sample, t)

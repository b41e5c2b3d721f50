"""Continuous-time Gaussian processes: x_t = alpha(t) x_0 + sigma(t) eps for t in [0, 1], described by
the log-SNR lambda(t) = log(alpha(t)^2 / sigma(t)^2), decreasing in t (Kingma et al. 2021, sec. 3).

    VDM    variance preserving, gamma(t) = -lambda(t) linear from gamma_min to gamma_max
           (Kingma et al. 2021: -13.3 to 5), alpha^2 = sigmoid(-gamma), sigma^2 = sigmoid(gamma);
           the loss is the continuous-time ELBO's diffusion term, eq. 17:
               L_inf = 1/2 E_{t ~ U(0, 1)} [gamma'(t) ||eps - eps_hat(x_t, t)||^2]
    Flow   flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023): alpha = 1 - t,
           sigma = t, the network predicts the velocity dx_t/dt = eps - x_0; loss ||v - v_hat||^2.

Conventions as in diffusion/gaussian.py, with t a float (or a (B,) float tensor).
"""
import math

import torch

from diffusion.gaussian import GaussianProcess, as64, bcast
from diffusion.likelihood import vdm_bound_terms
from diffusion.weightings import weighted_loss

TIME_SCALE = 1000.0  # the network is told t * TIME_SCALE: its sinusoidal embedding spans DDPM's timesteps' range


class ContinuousProcess(GaussianProcess):
    """The times of a continuous-time process (what a subclass writes: diffusion/processes.py)."""
    t_min, t_max = 0.0, 1.0  # the sampling range: from t_max (noise) to t_min (nearly clean)
    discrete = False  # any t in [t_min, t_max] (time grids: diffusion/grids.py)

    def lam(self, t):
        """lambda_t = log(alpha_t / sigma_t) = log-SNR / 2, DPM-Solver's time variable, as a float."""
        alpha, sigma = self.alpha_sigma64(as64(float(t)))
        return math.log(alpha.item()) - math.log(sigma.item())

    def fraction(self, t):
        return (t - self.t_min) / (self.t_max - self.t_min)

    def model_time(self, t, batch, device):
        t = torch.as_tensor(t, dtype=torch.float32, device=device)
        return (t.expand(batch) if t.dim() == 0 else t) * TIME_SCALE

    def time_at(self, u):
        return self.t_min + (self.t_max - self.t_min) * u

    def ode_span(self):
        return self.t_min, self.t_max

    def ode_drift(self, t):
        """(a, b) of the probability-flow ODE dx/dt = alpha' x0_hat + sigma' eps_hat written in x_t:
        a = alpha' / alpha, b = sigma' - alpha' sigma / alpha."""
        t = as64(float(t))
        (alpha, sigma), (d_alpha, d_sigma) = self.alpha_sigma64(t), self.derivatives(t)
        a = d_alpha / alpha
        return a.item(), (d_sigma - a * sigma).item()


class VDM(ContinuousProcess):
    """Variational diffusion model with a fixed linear gamma (Kingma et al. 2021).

    With config.clip_x0 the denoiser knows the data range: its x0 estimate is clamped to [-1, 1]
    and eps follows from it, eps_hat = (x_t - alpha clamp(x0_hat)) / sigma. As x_0 lies in [-1, 1],
    the clamp never moves x0_hat away from it, and ||eps - eps_hat|| = alpha / sigma ||x_0 - x0_hat||
    never grows: the loss and the bound are of this clamped denoiser, the one the samplers use.
    """

    name, about = "vdm", "continuous time, the ELBO loss; Kingma et al. 2021"
    defaults = {"prediction": "eps", "weighting": "elbo", "t_sampling": "stratified", "clip_x0": True, "few_steps": 0}
    allowed = {}
    decoded_ode = True  # sigma_0 is far narrower than a pixel's bin: the ODE is read through q(z_0 | x) and the decoder

    def __init__(self, config, device="cpu"):
        super().__init__(config, device)
        self.gamma_min, self.gamma_max = config.gamma_min, config.gamma_max
        self.clip_x0 = config.clip_x0

    def gamma(self, t):
        return self.gamma_min + (self.gamma_max - self.gamma_min) * t

    def alpha_sigma64(self, t):
        g = self.gamma(t)
        return torch.sigmoid(-g).sqrt(), torch.sigmoid(g).sqrt()

    def derivatives(self, t):
        """(alpha'(t), sigma'(t)): d sqrt(sigmoid(-g)) / dt = -1/2 alpha sigma^2 g', and the mirror."""
        alpha, sigma = self.alpha_sigma64(t)
        dg = self.gamma_max - self.gamma_min
        return -0.5 * alpha * sigma ** 2 * dg, 0.5 * sigma * alpha ** 2 * dg

    def time_of_lam(self, lam):
        return (-2 * lam - self.gamma_min) / (self.gamma_max - self.gamma_min)

    def predict_x0_eps(self, x_t, t, out, straight_through=False):
        """(x0, eps) estimates; with clip_x0, x0 clamped to [-1, 1] and eps moved by alpha / sigma
        times what the clamp took off (no cancellation at small sigma). straight_through: the clamp
        passes gradients as the identity (the loss: no dead gradient where x0_hat overshoots)."""
        x0, eps = super().predict_x0_eps(x_t, t, out)
        if not self.clip_x0:
            return x0, eps
        overshoot = x0 - x0.clamp(-1, 1)
        if straight_through:
            overshoot = overshoot.detach()
        alpha, sigma = (bcast(v, x_t.shape) for v in self.alpha_sigma(t))
        return x0 - overshoot, eps + alpha / sigma * overshoot

    def bound(self, predict_x0, predict_eps, x0, generator, t_samples, batch_size):
        """(terms, name): VDM's bound per image in nats, by term (prior, reconstruction, diffusion;
        Kingma et al. 2021, eq. 11), with t_samples times per image (diffusion/likelihood.py)."""
        terms = vdm_bound_terms(predict_eps, self, x0, generator, t_samples, batch_size)
        return dict(zip(("prior", "reconstruction", "diffusion"), terms.unbind(1))), f"VDM bound, {t_samples} t per image"

    def loss(self, out, x0, noise, t):
        """||eps - eps_hat||^2 / D weighted by config.weighting, averaged over the batch; by default
        the ELBO's, 1/2 gamma', so the diffusion term of the continuous ELBO in nats per dimension
        (eq. 17). Other targets are measured through their eps_hat."""
        eps = out.float()
        if self.prediction != "eps" or self.clip_x0:
            eps = self.predict_x0_eps(self.q_sample(x0, t, noise), t, eps, straight_through=True)[1]
        per_sample = (eps - noise).pow(2).mean(dim=(1, 2, 3))
        return weighted_loss(self, per_sample, t, scale=1.0)  # measured on eps


class Flow(ContinuousProcess):
    """Flow matching on the straight path x_t = (1 - t) x_0 + t eps (rectified flow). Its loss is the
    MSE to the target (default weighting none): with the velocity v = eps - x_0, the conditional flow
    matching loss (Lipman et al. 2023, eq. 23)."""
    name, about = "flow", "flow matching / rectified flow; Lipman et al. 2023, Liu et al. 2023"
    defaults = {"prediction": "velocity", "weighting": "target", "t_sampling": "stratified", "clip_x0": False,
                "few_steps": 0}
    t_min, t_max = 1e-4, 1.0 - 1e-4  # sigma(0) = 0 and alpha(1) = 0 would make lambda infinite

    def alpha_sigma64(self, t):
        return 1 - t, t.clamp(min=1e-12)

    def derivatives(self, t):
        return -torch.ones_like(t), torch.ones_like(t)

    def time_of_lam(self, lam):
        return 1 / (1 + math.exp(lam))  # lambda = log((1 - t) / t)

"""The processes a model can be trained on, by --process: the contract every process keeps, the
registry and its one factory. ddpm is in diffusion/ddpm.py, vdm and flow in diffusion/continuous.py,
shortcut in diffusion/shortcut.py; each class's `about` says what it is (--help shows it).

A new process is one class that keeps the contract `Process`: it subclasses GaussianProcess
(diffusion/gaussian.py: targets, estimates, posterior, transition and loss from alpha and sigma) or,
in continuous time, ContinuousProcess, and writes alpha_sigma64, derivatives, time_of_lam (and loss,
if not the MSE to its target) and its facts: name, about (its --help line), defaults (its prediction,
weighting, training times, ...) and what it refuses (allowed, own_flags). Then one line in PROCESSES:
--process offers it, and the samplers, the time grids, the training step and the tools work on it.
"""
from typing import Protocol, runtime_checkable

import torch

from diffusion.continuous import VDM, Flow
from diffusion.ddpm import DDPM
from diffusion.shortcut import Shortcut


@runtime_checkable
class Process(Protocol):
    """What the samplers (diffusion/samplers.py), the time grids (diffusion/grids.py), the training
    step (training/), the likelihood and the tools may ask of a process. Times t are one Python
    number for a whole batch or a (B,) tensor; t = -1 stands for the clean data."""

    name: str                 # its --process, the key in PROCESSES
    about: str                # what --help says of it
    defaults: dict            # its own value of each DiffusionConfig field left unset (prediction, weighting, ...)
    allowed: dict             # {field: the values it takes} where it does not take every value
    own_flags: tuple          # DiffusionConfig flags for it alone (refused when typed for another process)
    config: object            # the DiffusionConfig it was made from (saved in every checkpoint)
    device: torch.device      # where its coefficients live
    prediction: str           # what the network predicts: eps, x0, v or velocity
    discrete: bool            # True: its times are the integer timesteps the network was trained on
    num_timesteps: int        # T of a discrete process (None in continuous time)
    t_min: float              # the clean end of the sampling range
    t_max: float              # the noise end
    takes_step: bool          # True: the network also takes the size of the step (ModelConfig.step_condition)
    decoded_ode: bool         # True: likelihood.py reads the ODE's density through q(z_0 | x) and a decoder
    bound: object             # None, or bound(predict_x0, predict_eps, x0, generator, t_samples, batch_size)
                              # -> ({term: (N,) nats}, name): the process's variational bound

    def q_sample(self, x0, t, noise):
        """x_t = alpha_t x0 + sigma_t noise, a draw of q(x_t | x_0)."""

    def alpha_sigma(self, t):
        """(alpha_t, sigma_t) as float32 tensors on the device; (1, 0) at t = -1."""

    def alpha_sigma64(self, t):
        """(alpha_t, sigma_t) in float64 for a float64 tensor t: the process's definition."""

    def derivatives(self, t):
        """(alpha'(t), sigma'(t)) in float64 for a float64 tensor t."""

    def posterior64(self, t, s):
        """(c_x0, c_xt, variance) of q(x_s | x_t, x_0) = N(c_x0 x_0 + c_xt x_t, variance I), in float64."""

    def lam(self, t):
        """lambda_t = log(alpha_t / sigma_t) as a float, decreasing in t."""

    def time_of_lam(self, lam):
        """The time whose lambda is `lam` (a discrete process: the nearest timestep)."""

    def fraction(self, t):
        """Where t sits between the clean data (0) and the noise (1): the guidance interval's scale."""

    def model_time(self, t, batch, device):
        """The (B,) time input of the network."""

    def draw_t(self, batch, generator, device):
        """(B,) training times, from config.t_sampling (shortcut: (B, 2) rows of a time and a step's size)."""

    def time_at(self, u):
        """The times a (B,) tensor of fractions u in [0, 1) of the way from t_min to t_max stand for."""

    def ode_span(self):
        """(start, end) of the probability-flow ODE in the process's time."""

    def ode_drift(self, t):
        """(a, b) of the probability-flow ODE dx/dt = a x_t + b eps_hat at a float t."""

    def velocity_of(self, x0, eps, t):
        """dx_t/dt = alpha'(t) x0 + sigma'(t) eps."""

    def posterior(self, x0, x_t, t, s):
        """(mean, variance) of q(x_s | x_t, x_0) for the next time s < t (s = -1: the data)."""

    def transition(self, s, t):
        """(a, variance) of q(x_t | x_s) = N(a x_s, variance I) for s < t."""

    def predict_x0_eps(self, x_t, t, out):
        """(x0, eps) estimates from the network's output `out`, whatever it predicts."""

    def training_loss(self, net, x0, y, noise, t, amp):
        """The loss of a training batch (x0, y, noise, t) for the network `net` called under `amp`:
        x_t, the network's output, then `loss` (shortcut models: also their jumps' targets)."""

    def loss(self, out, x0, noise, t):
        """The training loss of a batch: a scalar tensor, weighted by config.weighting."""

    def snr(self, t):
        """SNR = alpha_t^2 / sigma_t^2 for (B,) times, float32 on the device (the weightings)."""

    def target_scale(self, t):
        """d target / d eps at fixed x_t for what the network predicts: 1.0 for eps (the weightings)."""


PROCESSES = {"ddpm": DDPM, "vdm": VDM, "flow": Flow, "shortcut": Shortcut}


def make_process(config, device="cpu"):
    """The process a DiffusionConfig describes, with its coefficients on `device`."""
    return PROCESSES[config.process](config, device)

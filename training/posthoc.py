"""Post-hoc EMA (Karras et al. 2024, "Analyzing and improving the training dynamics of diffusion
models", section 3 and appendix C): choose the EMA's length after training.

A run with --posthoc_ema N keeps two power-function EMAs of the weights theta beside the usual one,
    ema_g(t) = (g + 1) / t^(g + 1)  integral_0^t tau^g theta(tau) dtau,
updated after optimizer step t (1-based) as ema <- ema + (1 - beta) (theta - ema) with
    beta_g(t) = (1 - 1/t)^(g + 1),
and saves each of them N times in the run. Its length is sigma_rel, the width of the averaging
profile p(tau) = (g + 1) tau^g / t^(g + 1) on [0, t] relative to t:
    sigma_rel = sqrt(g + 1) / ((g + 2) sqrt(g + 3))   (so sigma_rel < 1 / sqrt(12) = 0.289).
Afterwards any profile (g_r, t_r) is a combination sum_i x_i ema_i of the snapshots, with the x that
makes sum_i x_i p_i closest to p_r in L2: A x = b, A_ij = <p_i, p_j>, b_i = <p_i, p_r>, where
    <p_i, p_j> = (g_i + 1) (g_j + 1) m^(g_i + g_j + 1) / ((g_i + g_j + 1) t_i^(g_i + 1) t_j^(g_j + 1)),
m = min(t_i, t_j). `python posthoc_ema.py` writes a checkpoint with the EMA of a chosen sigma_rel.
"""
import copy
import math

import numpy as np
import torch

from training.ema import update_ema
from utils.errors import UserError

SIGMA_RELS = (0.05, 0.10)     # the two profiles kept (EDM2's)


def gamma_of(sigma_rel):
    """The power g of the profile of this sigma_rel: the real root of
    g^3 + 7 g^2 + (16 - 1/sigma_rel^2) g + 12 - 1/sigma_rel^2 = 0 (sigma_rel_of solved for g)."""
    inverse = sigma_rel ** -2
    return float(np.roots([1, 7, 16 - inverse, 12 - inverse]).real.max())


def sigma_rel_of(gamma):
    return math.sqrt(gamma + 1) / ((gamma + 2) * math.sqrt(gamma + 3))


class PostHocEMA:
    """The two power EMAs of a run and their snapshots, [(step, sigma_rel, state dict), ...]."""

    def __init__(self, model, count):
        self.count, self.gammas = count, [gamma_of(sigma_rel) for sigma_rel in SIGMA_RELS]
        self.averages = [copy.deepcopy(model).eval().requires_grad_(False) for _ in SIGMA_RELS]
        self.snapshots = []

    def update(self, model, step, finite, total):
        """After optimizer step `step` (1-based) of `total`: average, and snapshot at every total // N-th
        step and the last. A non-finite step (finite: a 0-d tensor) changes no average."""
        for average, gamma in zip(self.averages, self.gammas):
            rate = 1 - (1 - 1 / step) ** (gamma + 1)
            update_ema(average, model, rate * finite)
        if step % max(1, total // self.count) == 0 or step == total:
            self.snapshot(step)

    def snapshot(self, step):
        self.snapshots = [s for s in self.snapshots if s[0] != step]  # a resumed run retakes a step's snapshot
        self.snapshots += [(step, sigma_rel, {name: tensor.detach().cpu().clone() for name, tensor in
                                              average.state_dict().items()})
                           for average, sigma_rel in zip(self.averages, SIGMA_RELS)]

    def state_dict(self):
        return {"count": self.count, "sigma_rels": list(SIGMA_RELS),
                "averages": [average.state_dict() for average in self.averages], "snapshots": self.snapshots}

    def load_state_dict(self, state):
        for average, weights in zip(self.averages, state["averages"]):
            average.load_state_dict(weights)
        self.snapshots = list(state["snapshots"])


def coefficients(snapshots, sigma_rel, step):
    """x of the snapshots [(step_i, sigma_rel_i), ...] whose combination best matches the profile of
    `sigma_rel` at `step` (the module's A x = b; in logs, as t^g overflows for long profiles)."""
    t = np.array([s for s, _ in snapshots] + [step], dtype=np.float64)
    g = np.array([gamma_of(r) for _, r in snapshots] + [gamma_of(sigma_rel)])
    gi, gj, ti, tj = g[:, None], g[None, :], t[:, None], t[None, :]
    inner = np.exp((gi + gj + 1) * np.log(np.minimum(ti, tj)) - (gi + 1) * np.log(ti) - (gj + 1) * np.log(tj)
                   + np.log((gi + 1) * (gj + 1) / (gi + gj + 1)))
    return np.linalg.lstsq(inner[:-1, :-1], inner[:-1, -1], rcond=None)[0]


def reconstruct(state, sigma_rel, step=None):
    """The EMA weights of `sigma_rel` at `step` (default: the last snapshot) from a run's post-hoc state."""
    step = step or max(s for s, _, _ in state["snapshots"])
    snapshots = [s for s in state["snapshots"] if s[0] <= step]
    for s, r, w in snapshots:
        if not all(torch.isfinite(tensor).all() for tensor in w.values() if tensor.is_floating_point()):
            raise UserError(f"the post-hoc EMA snapshot of step {s} (sigma_rel {r:g}) is not finite (NaN or Inf); "
                            "an EMA made at an earlier --step does not use it")
    x = coefficients([(s, r) for s, r, _ in snapshots], sigma_rel, step)
    weights = {}
    for name, first in snapshots[0][2].items():
        if first.is_floating_point():
            weights[name] = sum(float(c) * w[name].double() for c, (_, _, w) in zip(x, snapshots)).to(first.dtype)
        else:
            weights[name] = snapshots[-1][2][name].clone()
    return weights

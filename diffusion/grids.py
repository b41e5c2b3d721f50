"""Sampling time grids: functions of a process and a number of steps that return the descending
times a sampler visits, from the noise end (process.t_max) to the clean end (process.t_min).

    t        evenly spaced in t (DDIM, Heun; Song et al. 2021)
    lambda   evenly spaced in lambda = log(alpha / sigma) (DPM-Solver++; Lu et al. 2022)
    karras   sigma = exp(-lambda) on the rho = 7 schedule of Karras et al. 2022 (eq. 5),
             sigma_i = (s_max^(1/rho) + i / (N - 1) (s_min^(1/rho) - s_max^(1/rho)))^rho
    jump     t_max (1 - i / N) for i < N: even in t, the last step a jump of t_max / N to the data
             (few-step models: a shortcut model's 2 steps are 1 -> 1/2 -> 0)

A grid asks a process only for t_max, t_min, lam(t), time_of_lam(lambda) and whether its times
are the integer timesteps it was trained on (`discrete`, DDPM): a discrete process takes each
time to its nearest timestep and keeps each once. One step is a jump from t_max to the data.
A new grid is one function and one line in GRIDS, which --grid's choices are.
"""
import math

import numpy as np
import torch


def uniform_t(process, steps):
    if process.discrete:
        return [int(t) for t in np.unique(np.linspace(process.t_min, process.t_max, steps).round())[::-1]]
    return torch.linspace(process.t_max, process.t_min, steps, dtype=torch.float64).tolist()


def from_lambdas(process, lams):
    """The times of a descending grid of lambdas whose ends are the process's ends."""
    inner = [min(max(process.time_of_lam(v), process.t_min), process.t_max) for v in lams[1:-1]]
    times = [process.t_max, *inner, process.t_min]  # the ends exactly, not through a round trip
    return sorted(set(times), reverse=True) if process.discrete else times


def uniform_lambda(process, steps):
    lams = torch.linspace(process.lam(process.t_max), process.lam(process.t_min), steps, dtype=torch.float64)
    return from_lambdas(process, lams.tolist())


def karras(process, steps, rho=7.0):
    s_max, s_min = (math.exp(-process.lam(t)) ** (1 / rho) for t in (process.t_max, process.t_min))
    return from_lambdas(process, [-rho * math.log(s_max + i / (steps - 1) * (s_min - s_max)) for i in range(steps)])


def jump(process, steps):
    times = [process.t_max * (1 - i / steps) for i in range(steps)]
    return sorted({int(round(t)) for t in times}, reverse=True) if process.discrete else times


GRIDS = {"t": uniform_t, "lambda": uniform_lambda, "karras": karras, "jump": jump}


def time_grid(grid, process, steps):
    """The descending times of `grid` (a name in GRIDS) in `steps` steps: [t_max] for one step."""
    most = process.num_timesteps if process.discrete else float("inf")
    if not 1 <= steps <= most:
        raise ValueError(f"steps must be in [1, {most}], got {steps}" if process.discrete else
                         f"steps must be at least 1, got {steps}")
    return [process.t_max] if steps == 1 else GRIDS[grid](process, steps)

"""The length of a run, fixed once before its first step: --total_steps, else --epochs, else as many
steps as the rest of the --minutes budget allows at the speed of a few timed steps."""
import sys
import time

import torch

from training.step import nan_batch
from utils import distributed

BUDGET_SHARE = 0.95  # of a --minutes budget given to training steps; the rest: sample grids, saves, noise


def planned_steps(cfg, steps_per_epoch, seconds_per_step, seconds_spent, step):
    """total_steps of a run; seconds_per_step() is called only for a budget."""
    if cfg.total_steps:
        return cfg.total_steps
    if cfg.epochs:
        return cfg.epochs * steps_per_epoch
    speed = seconds_per_step()
    planned = step + max(1, int(BUDGET_SHARE * (cfg.minutes * 60 - seconds_spent) / speed))
    planned = distributed.from_rank0(planned)
    if distributed.is_main():
        print(f"budget {cfg.minutes:g} min: {speed:.3f} s/step measured -> {planned:,} steps in all "
              f"(to repeat this run: --total_steps {planned})", file=sys.stderr)
    return planned


def time_steps(step_fn, batches, state, device, warmup=2, min_steps=5, min_seconds=2.0):
    """Seconds per training step, timed on the run's own next batches after `warmup` untimed steps.
    The batches get NaN noise, so the guard skips every update (weights, EMA and AdamW untouched);
    the grad scaler and the RNG are put back as they were, so the run itself starts untouched."""
    saved = state.scaler.state_dict(), torch.get_rng_state(), \
        torch.cuda.get_rng_state_all() if device.type == "cuda" else None
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    lr = state.optimizer.param_groups[0]["lr"]
    for i in range(warmup):
        step_fn(nan_batch(batches.get(state.step + i)), lr, 0.0)
    sync()
    timed, begin = 0, time.perf_counter()
    while timed < min_steps or time.perf_counter() - begin < min_seconds:
        step_fn(nan_batch(batches.get(state.step + warmup + timed)), lr, 0.0)
        timed += 1
        sync()
    seconds = (time.perf_counter() - begin) / timed
    if state.scaler.is_enabled():
        state.scaler.load_state_dict(saved[0])
    torch.set_rng_state(saved[1])
    if saved[2] is not None:
        torch.cuda.set_rng_state_all(saved[2])
    return seconds

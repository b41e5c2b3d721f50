"""The length of a run: --total_steps, else --epochs, else as many steps as a --minutes budget allows.

A budget is planned before step 0 from the speed of a few timed steps, then re-planned during the
run from the pace of its recent steps (a CPU's first steps are often slower or faster than its
later ones, or share the CPU for a while), so that the run ends on time. A re-plan changes the
total and keeps the LR continuous: the cosine's progress q moves on from where it is toward 1 at
the new total. The plan, its first total and each re-plan's (step, total), is saved in the
checkpoint: a resumed run follows it, and `--plan` repeats the run exactly.
"""
import sys
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from training.step import nan_batch
from utils import distributed

BUDGET_SHARE = 0.95  # of a --minutes budget the first plan gives to training steps (before any pace is known)
END_SECONDS = 10.0   # of a --minutes budget kept after the last step: the last save and sample grid
CHECKS = 50          # re-plan checks in a budget run: every total / CHECKS steps
WINDOW = 10          # checks over which the recent pace is measured
MIN_CHANGE = 5.0     # seconds: a re-plan moves the end by at least this much (else the total is kept)


@dataclass
class Plan:
    """lengths = (T_0, s_1, T_1, ..., s_n, T_n): the first total, then each re-plan's step and new total.
    deadline: when (time.perf_counter()) a --minutes run's last step should end; None: a fixed length."""
    lengths: tuple
    deadline: float = None
    every: int = 0
    marks: deque = field(default_factory=lambda: deque(maxlen=WINDOW + 1))  # (step, time) at the last checks

    @property
    def total(self):
        return self.lengths[-1]

    def decay_position(self, step, warmup):
        """(x, span): x / span is the fraction q of the LR's cosine decay done at `step` (>= warmup).
        One total T: (step - warmup, T - warmup). With re-plans q is piecewise linear in the step:
        from each re-plan's (step s, progress q_s) it runs on to 1 at the new total T,
        q = q_s + (step - s) (1 - q_s) / (T - s)."""
        if len(self.lengths) == 1:
            return step - warmup, max(1, self.total - warmup)
        q, start, total = 0.0, warmup, self.lengths[0]
        for s, new_total in zip(self.lengths[1::2], self.lengths[2::2]):
            if s > step:
                break
            if s > start:
                q += (s - start) * (1 - q) / max(1, total - start)
                start = s
            total = new_total
        return q + (step - start) * (1 - q) / max(1, total - start), 1.0

    def update(self, step, now=None):
        """At every `every`-th step of a --minutes run: re-plan the total from the pace since WINDOW
        checks ago, so that the last step ends by the deadline. Returns whether the total changed."""
        if self.deadline is None or step % self.every or step >= self.total:
            return False
        now = time.perf_counter() if now is None else now
        self.marks.append((step, now))
        (first_step, first_time), total = self.marks[0], self.total
        if step > first_step:
            pace = (now - first_time) / (step - first_step)
            wanted = step + max(1, int((self.deadline - now) / pace))
            total = wanted if abs(wanted - total) * pace >= MIN_CHANGE else total
        total = distributed.from_rank0(total)  # every process keeps rank 0's plan
        if total == self.total:
            return False
        self.lengths, self.every = (*self.lengths, step, total), max(1, total // CHECKS)
        return True


def planned_steps(cfg, steps_per_epoch, seconds_per_step, seconds_spent, step, start):
    """The run's Plan; seconds_per_step() is called only for a budget. A fresh --minutes run re-plans
    on the way (start: its time.perf_counter() at launch); --plan repeats a run's plan exactly."""
    if cfg.plan:
        return Plan(tuple(cfg.plan))
    if cfg.total_steps:
        return Plan((cfg.total_steps,))
    if cfg.epochs:
        return Plan((cfg.epochs * steps_per_epoch,))
    speed = seconds_per_step()
    planned = step + max(1, int(BUDGET_SHARE * (cfg.minutes * 60 - seconds_spent) / speed))
    planned = distributed.from_rank0(planned)
    if distributed.is_main():
        print(f"budget {cfg.minutes:g} min: {speed:.3f} s/step measured -> {planned:,} steps in all, re-planned on "
              "the way (the checkpoint and the end of the run say how to repeat it)", file=sys.stderr)
    return Plan((planned,), deadline=start + cfg.minutes * 60 - END_SECONDS, every=max(1, planned // CHECKS))


def repeat_flags(plan):
    """The flags that repeat a run of this plan exactly."""
    if len(plan.lengths) == 1:
        return f"--total_steps {plan.total}"
    return "--plan " + " ".join(map(str, plan.lengths))


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
    while distributed.from_rank0(timed < min_steps or time.perf_counter() - begin < min_seconds):  # ranks in step
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

"""The learning rate of a run, a function of the step alone (the EMA's rate is in training/ema.py).

A linear warmup from 1% of --lr to --lr over --warmup_steps, then a cosine decay to 1% of --lr
at total_steps (Loshchilov & Hutter 2017, SGDR without restarts):
    lr(s) = lr_min + (lr_init - lr_min) s / W                                   s < W
    lr(s) = lr_min + 1/2 (lr - lr_min) (1 + cos(pi (s - W) / (S - W)))          W <= s < S
"""
import math

LR_FLOOR = 0.01  # the LR starts and ends at this fraction of --lr


def learning_rate(step, cfg, plan):
    """The LR of optimizer step `step` (0-based) of a run of this length (training/budget.py's Plan:
    S = its total; re-planned, the cosine's progress (s - W) / (S - W) runs on from where it is)."""
    peak, floor, warmup = cfg.lr, LR_FLOOR * cfg.lr, cfg.warmup_steps
    if step < warmup:
        return floor + step * ((peak - floor) / warmup)
    done, decay = plan.decay_position(step, warmup)
    if done >= decay:
        return floor
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * done / decay))


def schedule_state(cfg, plan):
    """The schedule as saved in a checkpoint (for a reader: the LR follows from the step and these)."""
    return {"warmup_t": cfg.warmup_steps, "t_initial": max(1, plan.total - cfg.warmup_steps),
            "lr": cfg.lr, "lr_min": LR_FLOOR * cfg.lr, "ema_decay": cfg.ema_decay, "plan": list(plan.lengths)}

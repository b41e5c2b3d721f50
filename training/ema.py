"""The exponential moving average of the weights, which sampling uses: after each optimizer step
    ema <- ema + rate (model - ema),   rate = 1 - decay,
with a decay that warms up as 1 - (1 + s)^(-2/3) until it reaches --ema_decay (the warmup of timm's
ModelEmaV3). training/posthoc.py's power EMAs make the same update at their own rates.
"""
import torch


def ema_rate(step, decay):
    """1 - decay of the EMA update made by optimizer step `step` (0-based): 1 at step 0 (the EMA
    starts as a copy), then 1 - min(1 - (1 + step)^(-2/3), decay)."""
    if step <= 0:
        return 1.0
    return 1 - max(min(1 - (1 + step / 1.0) ** -(2 / 3), decay), 0.0)


@torch.no_grad()
def update_ema(ema_model, model, rate):
    """ema <- ema + rate * (model - ema), for every parameter at once; `rate` may be a device tensor."""
    ema_params, params = list(ema_model.parameters()), list(model.parameters())
    difference = torch._foreach_sub(params, ema_params)
    torch._foreach_mul_(difference, rate)
    torch._foreach_add_(ema_params, difference)

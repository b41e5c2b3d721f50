"""One training step, with no host synchronisation, and the same step captured as a CUDA graph.

The step never reads a number back to the host: the loss, gradient norm and finiteness stay on
the device until the caller asks for them (train.py does every --log_every steps). The guard
against non-finite steps is still exact: a step whose loss or gradient is not finite sets the
`found_inf` flag of the fused AdamW, which then skips its whole update (weights, moments and step
count; the protocol torch.amp.GradScaler uses), and its EMA rate is multiplied by 0.

A batch is (x0, y, noise, t) from training/batches.py; the process (diffusion/) makes x_t and the
loss, the network (models/) the prediction.
"""
import torch

from diffusion.processes import Process
from training.ema import update_ema
from training.state import RunState
from utils.device import autocast


def make_optimizer(model, cfg, device, capturable=False):
    """Fused AdamW: one kernel for all parameters, and the only AdamW that honours `found_inf`."""
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True,
                             capturable=capturable and device.type == "cuda")


def one_step(state: RunState, diffusion: Process, batch, amp, grad_clip, ema_rate):
    """Forward, backward, AdamW and EMA on one batch, for the RunState `state` (training/state.py).
    `ema_rate` is a 0-d device tensor holding 1 - decay of this step. Returns (loss, gradient
    norm, finite) as device tensors."""
    loss = diffusion.training_loss(state.net, *batch, amp)
    optimizer, scaler = state.optimizer, state.scaler
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), grad_clip or float("inf"))
    finite = torch.isfinite(loss) & torch.isfinite(grad_norm)
    if scaler.is_enabled():
        scaler.step(optimizer)  # fp16: the scaler sets found_inf itself and skips on inf gradients
    else:
        step_unless(optimizer, finite)
    scaler.update()
    update_ema(state.ema, state.model, ema_rate * finite)
    return loss.detach(), grad_norm, finite


def step_unless(optimizer, finite):
    """optimizer.step(), skipped whole (weights, moments, count) where the 0-d tensor `finite` is False:
    the fused AdamW's found_inf, read on the device (no host sync)."""
    optimizer.found_inf = (~finite).float()
    optimizer.step()
    del optimizer.found_inf


def make_step(state: RunState, diffusion: Process, amp_dtype, grad_clip, example_batch, graphed):
    """step(batch, lr, ema_rate) -> (loss, gradient norm, finite), for float lr and ema_rate = 1 -
    decay: the eager `one_step`, or with `graphed` the same step replayed as a CUDA graph (which
    needs the autocast cache off and an optimizer made with capturable=True)."""
    device = example_batch[0].device

    def amp():
        return autocast(device, amp_dtype, cache=not graphed)

    def step_on(batch, ema_rate):
        return one_step(state, diffusion, batch, amp, grad_clip, ema_rate)

    if graphed:
        return GraphedStep(step_on, state.optimizer, example_batch)
    rate = torch.zeros((), device=device)

    def eager_step(batch, lr, ema_rate):
        set_lr(state.optimizer, lr)
        return step_on(batch, rate.fill_(ema_rate))

    return eager_step


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr


def nan_batch(batch):
    """The batch with NaN noise: a step on it computes everything and, by the guard, changes nothing.
    Used to warm up a CUDA graph and to time steps without touching the run's state."""
    x0, y, noise, t = batch
    return x0, y, torch.full_like(noise, float("nan")), t


class GraphedStep:
    """The whole step (forward, backward, clipping, AdamW, EMA) captured once as a CUDA graph and
    replayed every step ("whole-network capture" in PyTorch's CUDA graph notes). Each call copies
    the batch, the LR and the EMA rate into the graph's static tensors and launches one graph instead
    of several hundred kernels; the optimizer must be capturable and the step free of host syncs,
    which `one_step` is. Not for fp16 (the grad scaler syncs) or DistributedDataParallel."""

    def __init__(self, step_fn, optimizer, example_batch, warmup=3):
        device = example_batch[0].device
        self.optimizer = optimizer
        self.lr = torch.tensor(float(optimizer.param_groups[0]["lr"]), device=device)
        self.ema_rate = torch.zeros((), device=device)
        self.batch = [None if part is None else part.clone() for part in nan_batch(example_batch)]
        set_lr(optimizer, self.lr)  # the graph reads the LR from this tensor
        side = torch.cuda.Stream()  # warm-up (lazy optimizer state, cuBLAS) on a side stream, as capture needs
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                step_fn(self.batch, self.ema_rate)  # NaN noise: every update is skipped
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = step_fn(self.batch, self.ema_rate)
        set_lr(optimizer, float(self.lr))  # a plain number again, for checkpoints

    def __call__(self, batch, lr, ema_rate):
        for static, part in zip(self.batch, batch):
            if static is not None:
                static.copy_(part)
        self.lr.fill_(lr)
        set_lr(self.optimizer, lr)  # what a checkpoint records; the graph reads self.lr
        self.ema_rate.fill_(ema_rate)
        self.graph.replay()
        return self.outputs


class BadSteps:
    """The guard's count of non-finite steps in a row, kept on the device: run, and the longest
    run since the last read. Not counted under fp16, whose grad scaler skips steps as a matter of
    course."""

    def __init__(self, run, device, counted=True):
        self.run = torch.tensor(run, device=device)
        self.longest, self.counted = self.run.clone(), counted

    def count(self, finite):
        if self.counted:
            self.run = (self.run + 1) * ~finite
            self.longest = torch.maximum(self.longest, self.run)

    def read(self, limit):
        """(non-finite steps in a row now, whether a run reached `limit` since the last read): a host sync."""
        run, too_many = int(self.run), int(self.longest) >= limit
        self.longest.copy_(self.run)
        return run, too_many

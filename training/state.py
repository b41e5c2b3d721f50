"""The state of a training run, one object, and the checkpoint dict it becomes.

Checkpoint layout (utils/checkpoint.py FORMAT_VERSION), written by RunState.checkpoint():
    format_version, model_config, diffusion_config, train_config    plain dicts
    model, ema            state dicts of the plain U-Net (no module./_orig_mod. prefixes)
    optimizer, grad_scaler, lr_scheduler, step, epoch, bad_steps, rng, classes
    posthoc               the two power EMAs and their snapshots (only with --posthoc_ema; training/posthoc.py)
    objective             a student's critic, its AdamW and noise (only with --distill dmd; training/dmd.py)
The LR and EMA rates are functions of the step (training/schedule.py, ema.py), so resuming needs no
scheduler state; lr_scheduler records the schedule for a reader.
"""
import dataclasses

import torch
from torch import nn

from models.unet import UNet
from training.posthoc import PostHocEMA
from training.schedule import schedule_state
from utils.checkpoint import FORMAT_VERSION, load_weights
from utils.errors import UserError

TRAINING_STATE = ("train_config", "optimizer", "grad_scaler", "bad_steps", "rng")


@dataclasses.dataclass
class RunState:
    model: UNet                       # the plain network f(x_t, t, y), which the optimizer updates
    ema: UNet                         # its exponential moving average, used for sampling
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler      # enabled for fp16 only
    net: nn.Module = None             # what the step calls: the model, compiled and/or in DDP (default: model)
    step: int = 0                     # optimizer steps taken
    bad_steps: int = 0                # non-finite steps in a row at the last read-back
    posthoc: PostHocEMA = None        # --posthoc_ema's EMAs and snapshots
    objective: object = None          # a student's objective with a state of its own (training/dmd.py), or None

    def __post_init__(self):
        if self.net is None:  # not `or`: a compiled module has no truth value
            self.net = self.model

    def checkpoint(self, configs, plan, steps_per_epoch, classes=()):
        """Everything the run needs to continue exactly. configs: (model, diffusion, train) configs;
        plan: the run's length (training/budget.py); classes names the labels, for figures."""
        model_cfg, diffusion_cfg, train_cfg = configs
        device = next(self.model.parameters()).device
        return {
            "format_version": FORMAT_VERSION,
            "model_config": dataclasses.asdict(model_cfg),
            "diffusion_config": dataclasses.asdict(diffusion_cfg),
            "train_config": {**dataclasses.asdict(train_cfg), "total_steps": plan.total,
                             "plan": plan.lengths if len(plan.lengths) > 1 else ()},
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": schedule_state(train_cfg, plan),
            "grad_scaler": self.scaler.state_dict(),  # empty unless the run used fp16
            "step": self.step,
            "epoch": self.step // steps_per_epoch,
            "bad_steps": self.bad_steps,
            "classes": list(classes),
            **({"posthoc": self.posthoc.state_dict()} if self.posthoc is not None else {}),
            **({"objective": self.objective.state_dict()} if self.objective is not None else {}),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
        }

    def restore(self, ckpt, path):
        """Load a checkpoint's training state into this fresh run."""
        if ckpt.get("not_resumable"):
            raise UserError(f"{path} cannot be resumed: {ckpt['not_resumable']}")
        missing = [key for key in TRAINING_STATE if key not in ckpt]
        if missing:
            raise UserError(f"{path} cannot be resumed: it lacks the training state {', '.join(missing)}")
        load_weights(self.model, ckpt["model"], path)
        load_weights(self.ema, ckpt["ema"], path)
        kernel = {key: self.optimizer.param_groups[0][key] for key in ("fused", "foreach", "capturable")}
        self.optimizer.load_state_dict(ckpt["optimizer"])
        for group in self.optimizer.param_groups:  # this run's AdamW kernel (CPU or GPU), not the saved one
            group.update(kernel)
        if ckpt["grad_scaler"]:
            self.scaler.load_state_dict(ckpt["grad_scaler"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        device = next(self.model.parameters()).device
        if device.type == "cuda" and ckpt["rng"]["cuda"] is not None:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
        self.step, self.bad_steps = ckpt["step"], ckpt["bad_steps"]
        if self.posthoc is not None and "posthoc" not in ckpt:
            raise UserError(f"--posthoc_ema starts with a run: {path} was trained without it (resume with "
                            "--posthoc_ema 0, or start a new run)")
        if self.posthoc is not None:
            self.posthoc.load_state_dict(ckpt["posthoc"])
        if self.objective is not None and "objective" not in ckpt:
            raise UserError(f"{path} cannot be resumed: it lacks the critic of its --distill dmd run")
        if self.objective is not None:
            self.objective.load_state_dict(ckpt["objective"])

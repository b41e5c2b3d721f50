"""A trained network and its process, from a loaded checkpoint; a checkpoint loaded to sample; the shipped models."""
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import torch

from diffusion.config import DiffusionConfig, SamplingConfig
from diffusion.pipeline import generate, make_denoiser
from diffusion.processes import Process, make_process
from models.unet import UNet
from utils.checkpoint import load_checkpoint, load_weights, migrate
from utils.config import DEFAULT_CHECKPOINT, OUTPUT_DIR, ModelConfig
from utils.device import autocast, resolve_precision, select_device
from utils.errors import UserError

# The shipped models (EMA weights only, make_shipped; never written over, refuse_shipped): the default run's,
# the scripts' fallback with no checkpoint at the default path, and its one-step DMD student (RESULTS.md).
SHIPPED_DIR = Path(__file__).resolve().parent / "weights"
SHIPPED_MODEL = SHIPPED_DIR / "ddpm_mnist.pt"
ONE_STEP_MODEL = SHIPPED_DIR / "dmd_mnist.pt"


def load_model(ckpt, path, use_ema=True, device="cpu", make_model=UNet):
    """(the U-Net, or what `make_model` builds, in eval mode on `device`; its process)
    for a checkpoint dict from utils.checkpoint.load_checkpoint and the file it came from."""
    device = torch.device(device)
    model = make_model(ModelConfig(**ckpt["model_config"]))
    load_weights(model, ckpt["ema" if use_ema else "model"], path)
    return model.to(device).eval(), make_process(diffusion_config(ckpt, path), device)


@dataclass(eq=False)  # hashed by identity: playground.py caches by it
class Loaded:
    """A checkpoint loaded to sample: its network and process, how it samples unless told, with what."""
    ckpt: dict
    path: Path                  # the file it came from
    net: torch.nn.Module        # in eval mode on `device`
    diffusion: Process
    device: torch.device
    amp: Callable               # amp(): the autocast context of --precision
    sampling: SamplingConfig    # its default sampling: a few-step model's own for the flags not typed
    classes: tuple              # the names of its labels (class_names)

    def generate(self, num, labels=None, sampling=None, batch_size=1000, callback=None, batch_flag="--batch_size"):
        return generate(self.net, self.diffusion, num, sampling or self.sampling, labels=labels, batch_size=batch_size,
                        autocast=self.amp, callback=callback, batch_flag=batch_flag)

    def denoiser(self, labels, sampling=None):
        """denoise(x_t, t) with the sampling's guidance, toward `labels` (None: unconditional)."""
        s = sampling or self.sampling
        return make_denoiser(self.net, self.diffusion, labels, s.guidance, s.guidance_interval, self.amp)

    def noise(self, shape, sampling=None):
        """(the starting noise, the generator that drew it and draws the rest), from the sampling's seed."""
        generator = torch.Generator(device=self.device).manual_seed((sampling or self.sampling).seed)
        return torch.randn(shape, generator=generator, device=self.device), generator


def load_to_sample(checkpoint, device="auto", precision="auto", use_ema=True, sampling=None, typed=(), make_model=UNet):
    """`checkpoint`, the (dict, file) of load_checkpoint or checkpoint_or_shipped, loaded to sample on --device in
    --precision by its EMA or raw weights; `sampling` (None: the default) takes a few-step model's own defaults
    for the flags not `typed`."""
    ckpt, path = checkpoint
    device = select_device(device)
    net, diffusion = load_model(ckpt, path, use_ema, device, make_model)
    sampling = (sampling or SamplingConfig()).for_model(diffusion.config, typed)
    amp = partial(autocast, device, resolve_precision(precision, device))
    return Loaded(ckpt, path, net, diffusion, device, amp, sampling, class_names(ckpt))


def diffusion_config(ckpt, path):
    """The DiffusionConfig a checkpoint saved, or one line naming the file (a process this version
    does not know, a value out of range)."""
    try:
        return DiffusionConfig(**ckpt["diffusion_config"])
    except (TypeError, UserError) as err:
        raise UserError(f"{path} has an invalid diffusion_config: {err}") from None


def checkpoint_or_shipped(path):
    """load_checkpoint(path); with nothing at the default path, the shipped model, said in one line."""
    try:
        return load_checkpoint(path)
    except UserError:
        if str(path) != DEFAULT_CHECKPOINT or Path(path).exists() or not SHIPPED_MODEL.is_file():
            raise
    print(f"no checkpoint at {path}: using the shipped MNIST model {SHIPPED_MODEL.parent.parent.name}/weights/"
          f"{SHIPPED_MODEL.name} (python train.py trains your own)", file=sys.stderr)
    return load_checkpoint(SHIPPED_MODEL)


def is_shipped(path):
    """Whether `path` (or the file a link leads to) is the shipped models' folder or inside it."""
    return Path(path).resolve().is_relative_to(SHIPPED_DIR.resolve())


def refuse_shipped(typed, path, instead="train into another --checkpoint_path"):
    """The shipped models (a file, their folder, or a link to either) are never written over: a
    one-line UserError saying what to do `instead`."""
    if is_shipped(path):
        raise UserError(f"{typed} is in the shipped models' folder {SHIPPED_DIR.parent.name}/{SHIPPED_DIR.name}/; "
                        f"{instead}")


def results_path(path, suffix):
    """Where a script writes results about a checkpoint: next to it, or in outputs/ for a shipped model."""
    path = Path(path)
    return Path(OUTPUT_DIR) / (path.name + suffix) if is_shipped(path) else Path(f"{path}{suffix}")


def class_names(ckpt):
    """The names of a checkpoint's labels: saved by train.py, else MNIST's digits."""
    return tuple(ckpt.get("classes") or (str(d) for d in range(ckpt["model_config"].get("num_classes", 10))))


# The fields of format version 1's configs: what a DDPM checkpoint saved before processes, weightings,
# time distributions, Fourier features and step conditioning held.
FORMAT_1 = {"model_config": ("image_size", "in_channels", "base_channels", "channel_mults", "num_res_blocks",
                             "attention_resolutions", "num_heads", "dropout", "norm_groups", "num_classes"),
            "diffusion_config": ("num_timesteps", "schedule", "beta_start", "beta_end", "prediction", "min_snr_gamma")}


def in_format_1(ckpt):
    """A checkpoint without training state (a shipped model) in format version 1, which every
    version of this code reads, or None where that format cannot say the same model: an MNIST DDPM
    whose configs migrate() restores, from the version-1 fields, to the same as its own."""
    train_cfg = ckpt.get("train_config", {})
    if train_cfg.get("dataset", "mnist") != "mnist" or "optimizer" in ckpt:  # (another process: configs differ)
        return None
    configs = {key: {name: ckpt[key][name] for name in names if name in ckpt[key]} for key, names in FORMAT_1.items()}
    old = {**configs, "format_version": 1, "train_config": {**train_cfg, "seed_scheme": 2}}
    back = migrate({key: dict(value) if isinstance(value, dict) else value for key, value in old.items()}, "")
    try:
        if any(cls(**back[key]) != cls(**ckpt[key]) for key, cls in (("model_config", ModelConfig),
                                                                   ("diffusion_config", DiffusionConfig))):
            return None
    except (TypeError, UserError):  # a field format 1 cannot hold
        return None
    return {**ckpt, **old}


def make_shipped(ckpt, out=SHIPPED_MODEL):
    """Write a training checkpoint's EMA weights as a shipped model: loadable with
    torch.load(weights_only=True), "model" and "ema" the same tensors (stored once), no optimizer;
    in format version 1 where that format says the same model (in_format_1)."""
    shipped = {key: ckpt[key] for key in ("format_version", "model_config", "diffusion_config", "step", "epoch")}
    shipped["train_config"] = ckpt["train_config"]
    shipped["classes"] = list(class_names(ckpt))
    ema = {name: tensor.clone() for name, tensor in ckpt["ema"].items()}
    shipped = in_format_1(shipped) or shipped
    torch.save({**shipped, "model": ema, "ema": ema}, out)
    return out

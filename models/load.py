"""A trained network and its diffusion process, from a loaded checkpoint; the shipped model."""
import sys
from pathlib import Path

import torch

from diffusion.processes import make_process
from models.unet import UNet
from utils.checkpoint import in_format_1, load_checkpoint, load_weights
from utils.config import DEFAULT_CHECKPOINT, OUTPUT_DIR, DiffusionConfig, ModelConfig
from utils.errors import UserError

# The default MNIST model, trained by `python train.py` on its defaults: EMA weights only, in a
# checkpoint without training state (see make_shipped). inference.py and evaluate.py use it when
# there is no checkpoint at the default path; train.py never resumes from it or writes over it.
SHIPPED_MODEL = Path(__file__).resolve().parent / "weights" / "ddpm_mnist.pt"


def load_model(ckpt, path, use_ema=True, device="cpu", make_model=UNet):
    """(the U-Net, or what `make_model` builds, in eval mode on `device`; its process)
    for a checkpoint dict from utils.checkpoint.load_checkpoint and the file it came from."""
    device = torch.device(device)
    model = make_model(ModelConfig(**ckpt["model_config"]))
    load_weights(model, ckpt["ema" if use_ema else "model"], path)
    return model.to(device).eval(), make_process(DiffusionConfig(**ckpt["diffusion_config"]), device)


def load_guide(spec, ckpt, path, model):
    """The guide network of autoguidance (Karras et al. 2024), in eval mode beside `model`, or None:
    spec "" (classifier-free guidance), "auto" (the EMA snapshot `ckpt` from `path` keeps under
    "guide", saved by train.py --guide_at) or the path of another checkpoint of the same data and
    process, whose EMA weights guide (its network may be smaller)."""
    if not spec:
        return None
    device = next(model.parameters()).device
    if spec == "auto":
        if "guide" not in ckpt:
            raise UserError(f"--guide_model auto: {path} has no guide snapshot (train with --guide_at F, or give "
                            "--guide_model PATH)")
        guide = UNet(model.config)
        load_weights(guide, ckpt["guide"], path)
        return guide.to(device).eval()
    other = load_checkpoint(spec)[0]
    guide, process = load_model(other, spec, True, device)
    mine = DiffusionConfig(**ckpt["diffusion_config"])
    for what, theirs, ours in (("process", defining(process.config), defining(mine)),
                               ("images", shape(guide.config), shape(model.config)),
                               ("classes", guide.config.num_classes, model.config.num_classes)):
        if theirs != ours:
            raise UserError(f"--guide_model {spec}: its {what} ({theirs}) differ from {path}'s ({ours})")
    return guide


def defining(config):
    """What of a DiffusionConfig defines the process and the network's output (not how it trained)."""
    return {name: getattr(config, name) for name in ("process", "num_timesteps", "schedule", "beta_start", "beta_end",
                                                      "gamma_min", "gamma_max", "prediction")}


def shape(config):
    """(channels, size) of a network's images."""
    return config.in_channels, config.image_size


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


def results_path(path, suffix):
    """Where a script writes results about a checkpoint: next to it, or in outputs/ for the shipped model."""
    path = Path(path)
    return Path(OUTPUT_DIR) / (path.name + suffix) if path.resolve() == SHIPPED_MODEL.resolve() else Path(f"{path}{suffix}")


def class_names(ckpt):
    """The names of a checkpoint's labels: saved by train.py, else MNIST's digits."""
    return tuple(ckpt.get("classes") or (str(d) for d in range(ckpt["model_config"].get("num_classes", 10))))


def make_shipped(ckpt, out=SHIPPED_MODEL):
    """Write a training checkpoint's EMA weights as a shipped model: loadable with
    torch.load(weights_only=True), "model" and "ema" the same tensors (stored once), no optimizer;
    in format version 1 where that format says the same model (utils/checkpoint.py)."""
    shipped = {key: ckpt[key] for key in ("format_version", "model_config", "diffusion_config", "step", "epoch")}
    shipped["train_config"] = ckpt["train_config"]
    shipped["classes"] = list(class_names(ckpt))
    ema = {name: tensor.clone() for name, tensor in ckpt["ema"].items()}
    if "guide" in ckpt:
        shipped["guide"] = ckpt["guide"]
    shipped = in_format_1(shipped) or shipped
    torch.save({**shipped, "model": ema, "ema": ema}, out)
    return out

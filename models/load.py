"""A trained network and its diffusion process, from a loaded checkpoint; the shipped model."""
import sys
from pathlib import Path

import torch

from diffusion.processes import make_process
from models.unet import UNet
from utils.checkpoint import load_checkpoint, load_weights
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
    torch.load(weights_only=True), "model" and "ema" the same tensors (stored once), no optimizer."""
    shipped = {key: ckpt[key] for key in ("format_version", "model_config", "diffusion_config", "step", "epoch")}
    shipped["train_config"] = ckpt["train_config"]
    shipped["classes"] = list(class_names(ckpt))
    ema = {name: tensor.clone() for name, tensor in ckpt["ema"].items()}
    torch.save({**shipped, "model": ema, "ema": ema}, out)
    return out

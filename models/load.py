"""A trained network and its diffusion process, from a loaded checkpoint."""
import torch

from diffusion.gaussian import GaussianDiffusion
from models.unet import UNet
from utils.checkpoint import load_weights
from utils.config import DiffusionConfig, ModelConfig


def load_model(ckpt, path, use_ema=True, device="cpu", make_model=UNet):
    """(the U-Net, or what `make_model` builds, in eval mode on `device`; its GaussianDiffusion)
    for a checkpoint dict from utils.checkpoint.load_checkpoint and the file it came from."""
    device = torch.device(device)
    model = make_model(ModelConfig(**ckpt["model_config"]))
    load_weights(model, ckpt["ema" if use_ema else "model"], path)
    return model.to(device).eval(), GaussianDiffusion(DiffusionConfig(**ckpt["diffusion_config"]), device)

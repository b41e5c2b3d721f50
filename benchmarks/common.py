"""Shared pieces of the benchmarks (run from the project root as python -m benchmarks.NAME): the
peer model, a timing helper and the loading of a VDM checkpoint with its test images."""
import time

import torch

from models.load import checkpoint_or_shipped, load_to_sample
from utils.datasets import checkpoint_data, to_model_range
from utils.device import set_cpu_threads
from utils.errors import UserError

# diffusers' UNet2DModel as commonly configured for 28x28 MNIST: 4.0M parameters.
PEER_CONFIG = dict(sample_size=28, in_channels=1, out_channels=1, layers_per_block=2,
                   block_out_channels=(32, 64, 128),
                   down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                   up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"))


class Peer(torch.nn.Module):
    """diffusers' UNet2DModel behind the project's f(x_t, t, y) interface. `config` (the project's
    ModelConfig) gives the image shape and the number of classes; pass Peer as make_model to train.main,
    evaluate.main or models.load.load_model to train or sample it with the project's recipe."""

    def __init__(self, config=None):
        super().__init__()
        from diffusers import UNet2DModel
        from utils.config import ModelConfig
        self.config = config or ModelConfig()
        if (self.config.image_size, self.config.in_channels) != (28, 1):
            raise ValueError("the peer model is the 28x28 MNIST configuration")
        # class-conditional like ours: a label embedding added to the time embedding, plus the null label
        classes = self.config.num_classes + 1 if self.config.num_classes else None
        self.net = UNet2DModel(**PEER_CONFIG, num_class_embeds=classes)

    def forward(self, x, t, y=None):
        if self.config.num_classes and y is None:
            y = torch.full_like(t, self.config.null_label)  # unconditional
        return self.net(x, t, class_labels=y).sample


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    """Seconds one call of fn takes, measured after a device sync on both ends."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def matmul_peak(device, precision="fp32", sizes=None, repeats=3):
    """GFLOP/s of the fastest large square matrix product in this precision: the most this machine
    does per second, against which a network's achieved GFLOP/s is compared."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    best = 0.0
    for n in sizes or ((1024, 2048) if device.type == "cpu" else (4096, 8192)):
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        a @ b
        seconds = min(timed(lambda: a @ b, device) for _ in range(repeats))
        best = max(best, 2 * n ** 3 / seconds / 1e9)
    return best


def bound_checkpoint(cfg, what, checkpoint_path=None, split="test"):
    """(model, process, images, generator, path) for a benchmark of a checkpoint's variational bound
    (its EMA weights on cfg.device): cfg gives device, data_dir, seed, num_images and checkpoint_path
    (unless given here); the test images (split="train": the training images) in the order of
    `likelihood.py --seed S`, in the model's range on the device; what: the benchmark, for the
    one-line refusal of a process without a bound."""
    set_cpu_threads()
    loaded = load_to_sample(checkpoint_or_shipped(checkpoint_path or cfg.checkpoint_path), cfg.device)
    ckpt, path, model, process = loaded.ckpt, loaded.path, loaded.net, loaded.diffusion
    if process.bound is None:
        raise UserError(f"{path} is a {process.config.process} model, which has no variational bound; {what} is "
                        "of a bound (vdm's or ddpm's)")
    _, data = checkpoint_data(ckpt, split == "train", cfg.data_dir)
    generator = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(data.images), generator=generator)
    return model, process, to_model_range(data.images[order[:cfg.num_images]]).to(process.device), generator, path

"""Training throughput (images/s) of one full step: forward, backward, AdamW, EMA.

Times the default U-Net next to a wider one (base 32, channel_mults 1 2 2: about 2.6x the FLOPs)
and, optionally, diffusers' UNet2DModel (benchmarks/common.py), same batch, same machine, in fp32
and in the device's best autocast precision, interleaved in one run so that machine noise hits
every variant alike. Prints medians, the FLOPs of a step (counted by PyTorch's FlopCounterMode),
the achieved GFLOP/s, and that as a share of the machine's measured matmul peak (large square
fp32 or bf16 matrix products: the most this machine does for these convolutions).

    pip install -r benchmarks/requirements.txt
    python -m benchmarks.train_throughput --repeats 5
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python -m benchmarks.train_throughput   # an AVX2-only CPU
"""
import copy
from dataclasses import dataclass
from statistics import median

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import Peer, matmul_peak, timed
from diffusion.config import DiffusionConfig
from diffusion.ddpm import DDPM
from models.unet import UNet, count_parameters
from training.state import RunState
from training.step import make_optimizer, make_step
from utils.config import ModelConfig, TrainConfig, device_option
from utils.device import resolve_precision, select_device, set_cpu_threads
from utils.errors import exit_on_user_error
from utils.flags import check_fields, from_args, option, parse_flags

WIDE = dict(base_channels=32, channel_mults=(1, 2, 2))


@dataclass
class Flags:
    device: str = device_option()
    batch_size: int = option(128, "images per step", bounds="[1, inf)")
    steps: int = option(3, "training steps per timed repeat", bounds="[1, inf)")
    repeats: int = option(5, "timed repeats of every variant, interleaved", bounds="[1, inf)")
    peer: bool = option(False, "also time diffusers' UNet2DModel")
    compile: bool = option(False, "also time torch.compile of the default model")
    models: tuple = option(("default", "wide"), "networks to time: default and/or wide")
    no_fp32: bool = option(False, "time only the device's best autocast precision")

    def __post_init__(self):
        check_fields(self)


def benchmark_step(model, diffusion, batch, device, dtype, graph=False):
    """train.py's step (training/step.py) on random images: eager, or replayed as a CUDA graph."""
    plain = getattr(model, "_orig_mod", model)  # the EMA copies the uncompiled module
    state = RunState(plain, copy.deepcopy(plain).requires_grad_(False),
                     make_optimizer(plain, TrainConfig(), device, capturable=graph),
                     torch.amp.GradScaler(device.type, enabled=False), net=model)
    x0 = torch.rand(batch, 1, 28, 28, device=device) * 2 - 1
    y = torch.randint(0, 10, (batch,), device=device)

    def draw():
        return x0, y, torch.randn_like(x0), torch.randint(0, diffusion.num_timesteps, (batch,), device=device)

    step = make_step(state, diffusion, dtype, 1.0, draw(), graph)
    return lambda: step(draw(), 2e-3, 1e-3)


def step_flops(model, device, batch):
    """FLOPs of one forward and backward pass at this batch size."""
    x = torch.zeros(batch, 1, 28, 28, device=device)
    t = torch.zeros(batch, dtype=torch.long, device=device)
    with FlopCounterMode(display=False) as counter:
        model(x, t, torch.zeros_like(t)).sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def main():
    args = from_args(Flags, parse_flags(__doc__.splitlines()[0], [Flags])[0])
    device = select_device(args.device)
    set_cpu_threads()
    best = resolve_precision("auto", device)
    diffusion = DDPM(DiffusionConfig(), device)

    shapes = {"default": {}, "wide": WIDE}
    models = {name: UNet(ModelConfig(**shapes[name])).to(device) for name in args.models}
    if args.compile:
        models["default, compiled"] = torch.compile(UNet(ModelConfig(num_classes=10)).to(device))
    if args.peer:
        models["diffusers UNet2DModel"] = Peer(ModelConfig(num_classes=10)).to(device)
    flops = {name: step_flops(getattr(m, "_orig_mod", m), device, args.batch_size) for name, m in models.items()}
    variants = {}
    for name, model in models.items():
        for dtype in dict.fromkeys([best] if args.no_fp32 else [None, best]):
            precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
            variants[(name, precision, "eager")] = benchmark_step(model, diffusion, args.batch_size, device, dtype)
            if device.type == "cuda" and dtype != torch.float16:  # the step as one CUDA graph (train.py's default)
                # on a copy: a graph and an eager step never share parameters or their .grad tensors
                # (shared, an eager step at batch 4096 on an H200 hit a device-side assert)
                graphed = model if hasattr(model, "_orig_mod") else copy.deepcopy(model)
                variants[(name, precision, "graph")] = benchmark_step(graphed, diffusion, args.batch_size, device, dtype, True)
    for step in variants.values():  # warm-up
        step()
        step()

    speeds = {key: [] for key in variants}
    for _ in range(args.repeats):
        for key, step in variants.items():
            seconds = timed(lambda: [step() for _ in range(args.steps)], device)
            speeds[key].append(args.steps * args.batch_size / seconds)
    peaks = {precision: matmul_peak(device, precision) for _, precision, _ in variants}

    print(f"device {device}, CPU capability {torch.backends.cpu.get_cpu_capability()}, batch {args.batch_size}, "
          f"{args.repeats} repeats of {args.steps} steps, {torch.get_num_threads()} threads; matmul peak "
          + ", ".join(f"{p} {g:.0f} GFLOP/s" for p, g in peaks.items()))
    print(f"{'model':18s} {'prec':>5s} {'step':>6s} {'params':>10s} {'GFLOP/img':>10s} {'img/s':>7s} {'s/epoch':>8s} "
          f"{'GFLOP/s':>8s} {'of peak':>8s} {'vs first':>10s}")
    for (name, precision, mode), values in speeds.items():
        img_s = median(values)
        per_image = flops[name] / args.batch_size / 1e9
        reference = median(speeds[(args.models[0], precision, "eager")])
        print(f"{name:18s} {precision:>5s} {mode:>6s} {count_parameters(models[name]):>10,} {per_image:>10.3f} {img_s:>7.0f} "
              f"{60000 / img_s:>8.0f} {img_s * per_image:>8.0f} {img_s * per_image / peaks[precision]:>8.0%} "
              f"{img_s / reference:>9.2f}x")


if __name__ == "__main__":
    exit_on_user_error(main)

"""Training throughput (images/s) of one full step: forward, backward, AdamW, EMA.

Compares the project's default U-Net with diffusers' UNet2DModel (benchmarks/common.py), same
batch, same machine, in fp32 and in each device's best autocast precision, interleaved in one run
so that machine noise hits every variant alike. Prints medians and the ratio to the peer in fp32.

    pip install -r benchmarks/requirements.txt
    python benchmarks/train_throughput.py --repeats 5
"""
import argparse

import torch
from timm.utils import ModelEmaV3

from common import Peer, median, timed
from diffusion.gaussian import GaussianDiffusion
from models.unet import UNet, count_parameters
from utils.config import DiffusionConfig, ModelConfig
from utils.device import autocast, resolve_precision, select_device, set_cpu_threads


def make_step(model, diffusion, batch, device, dtype):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    plain = getattr(model, "_orig_mod", model)  # the EMA copies the uncompiled module
    ema = ModelEmaV3(plain, decay=0.999)
    x0 = torch.rand(batch, 1, 28, 28, device=device) * 2 - 1

    def step():
        noise = torch.randn_like(x0)
        t = torch.randint(0, diffusion.num_timesteps, (batch,), device=device)
        with autocast(device, dtype):
            prediction = model(diffusion.q_sample(x0, t, noise), t)
        loss = diffusion.loss(prediction, x0, noise, t)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        ema.update(plain)

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="training steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no_peer", action="store_true", help="skip diffusers' UNet2DModel")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of our model")
    args = parser.parse_args()
    device = select_device(args.device)
    set_cpu_threads()
    best = resolve_precision("auto", device)
    diffusion = GaussianDiffusion(DiffusionConfig(), device)

    models = {"ours": UNet(ModelConfig()).to(device)}
    if args.compile:
        models["ours, compiled"] = torch.compile(UNet(ModelConfig()).to(device))
    if not args.no_peer:
        models["diffusers UNet2DModel"] = Peer().to(device)
    variants = {}
    for name, model in models.items():
        for dtype in dict.fromkeys([None, best]):
            label = f"{name} [{'fp32' if dtype is None else str(dtype).split('.')[-1]}]"
            variants[label] = (make_step(model, diffusion, args.batch_size, device, dtype), count_parameters(model))
    for step, _ in variants.values():  # warm-up
        step()

    speeds = {label: [] for label in variants}
    for _ in range(args.repeats):
        for label, (step, _) in variants.items():
            seconds = timed(lambda: [step() for _ in range(args.steps)], device)
            speeds[label].append(args.steps * args.batch_size / seconds)

    print(f"device {device}, batch {args.batch_size}, {args.repeats} repeats of {args.steps} steps, "
          f"{torch.get_num_threads()} threads")
    peer_fp32 = next((median(v) for k, v in speeds.items() if k.startswith("diffusers") and "fp32" in k), None)
    print(f"{'model':34s} {'params':>10s} {'img/s':>9s} {'s/epoch':>8s} {'vs peer fp32':>12s}")
    for label, values in speeds.items():
        img_s = median(values)
        ratio = f"{img_s / peer_fp32:.1f}x" if peer_fp32 else "-"
        print(f"{label:34s} {variants[label][1]:>10,} {img_s:>9.0f} {60000 / img_s:>8.0f} {ratio:>12s}")


if __name__ == "__main__":
    main()

"""Sampling speed: network evaluations per second and seconds for 1,000 digits, per sampler.

    python benchmarks/sample_throughput.py                        # random weights (speed only)
    python benchmarks/sample_throughput.py --checkpoint_path checkpoints/ddpm_checkpoint --samplers dpm++ dpm++:20 ddim:50

Each sampler runs with the default sampling's other settings (SamplingConfig: eta, guidance and
its interval). Class-conditional models (the default) are guided on the steps inside the
interval, which doubles the batch there; the NFE column counts the network evaluations per digit
actually made. --channels_last times the channels-last memory layout instead of the plain one.
"""
import argparse

import torch

from common import median, timed
from diffusion.gaussian import GaussianDiffusion
from diffusion.samplers import generate
from models.load import load_model
from models.unet import UNet
from utils.checkpoint import load_checkpoint
from utils.config import DiffusionConfig, ModelConfig, SamplingConfig
from utils.device import autocast, resolve_precision, sampling_batch_size, select_device, set_cpu_threads


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint_path", default="")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=0, help="0 = 100 on the CPU, 1000 on a GPU")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--guidance", type=float, default=SamplingConfig.guidance,
                        help="class-conditional models; 0 = none")
    parser.add_argument("--samplers", nargs="+", default=[SamplingConfig.sampler],
                        help="sampler names, each at the default steps, or name:steps (e.g. dpm++:20)")
    parser.add_argument("--channels_last", action="store_true", help="the channels-last memory layout")
    args = parser.parse_args()
    device = select_device(args.device)
    set_cpu_threads()
    dtype = resolve_precision("auto", device)
    args.batch_size = args.batch_size or sampling_batch_size(device)
    if args.checkpoint_path:
        ckpt, path = load_checkpoint(args.checkpoint_path)
        model, diffusion = load_model(ckpt, path, True, device)
    else:
        model = UNet(ModelConfig()).to(device).eval()  # the default network
        diffusion = GaussianDiffusion(DiffusionConfig(), device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)

    images = [0]  # images through the network, counted by a forward hook
    model.register_forward_hook(lambda module, inputs, output: images.__setitem__(0, images[0] + len(output)))

    def run(sampling):
        generate(model, diffusion, args.num_samples, sampling, batch_size=args.batch_size,
                 autocast=lambda: autocast(device, dtype))

    guided = f"guidance {args.guidance:g}" if model.config.num_classes else "unconditional"
    print(f"device {device}, CPU capability {torch.backends.cpu.get_cpu_capability()}, precision {dtype or 'fp32'}, "
          f"{'channels-last' if args.channels_last else 'contiguous'}, {args.num_samples} digits, batch {args.batch_size}, "
          f"{guided}, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'sampler':8s} {'steps':>6s} {'NFE':>5s} {'eta':>4s} {'seconds':>9s} {'NFE/s':>10s}")
    for spec in args.samplers:
        sampler, _, steps = spec.partition(":")
        sampling = SamplingConfig(sampler=sampler, steps=int(steps or SamplingConfig.steps), guidance=args.guidance)
        repeats = 1 if sampler == "ddpm" else args.repeats
        images[0] = 0
        seconds = median([timed(lambda: run(sampling), device) for _ in range(repeats)])
        nfe = images[0] / (repeats * args.num_samples)  # network evaluations per digit
        steps = diffusion.num_timesteps if sampler == "ddpm" else sampling.steps
        print(f"{sampler:8s} {steps:>6d} {nfe:>5g} {sampling.eta:>4g} {seconds:>9.1f} "
              f"{nfe * args.num_samples / seconds:>10.0f}", flush=True)


if __name__ == "__main__":
    main()

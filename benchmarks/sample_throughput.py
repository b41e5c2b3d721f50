"""Sampling speed: network evaluations per second and seconds for 1,000 digits, per sampler.

    python -m benchmarks.sample_throughput                        # random weights (speed only)
    python -m benchmarks.sample_throughput --checkpoint_path checkpoints/ddpm_checkpoint --samplers dpm++ dpm++:20 ddim:50

Each sampler runs with the default sampling's other settings (SamplingConfig: eta, guidance and
its interval). Class-conditional models (the default) are guided on the steps inside the
interval, which doubles the batch there; the NFE column counts the network evaluations per digit
actually made. --channels_last times the channels-last memory layout instead of the plain one.
"""
from dataclasses import dataclass
from statistics import median

import torch

from benchmarks.common import timed
from diffusion.ddpm import DDPM
from diffusion.pipeline import generate
from diffusion.samplers import make_timesteps
from models.load import load_model
from models.unet import UNet
from utils.checkpoint import load_checkpoint
from utils.config import DiffusionConfig, ModelConfig, SamplingConfig, device_option, check_fields, from_args, option, parse_flags
from utils.device import autocast, resolve_precision, sampling_batch_size, select_device, set_cpu_threads


@dataclass
class Flags:
    checkpoint_path: str = option("", "checkpoint to time (default: random weights of the default network)")
    device: str = device_option()
    num_samples: int = option(1000, "digits per timed run", bounds="[1, inf)")
    batch_size: int = option(0, "0 = 100 on the CPU, 1000 on a GPU", bounds="[0, inf)")
    repeats: int = option(3, "timed runs per sampler (ddpm: 1)", bounds="[1, inf)")
    guidance: float = option(SamplingConfig.guidance, "class-conditional models; 0 = none", bounds="[0, inf)")
    samplers: tuple = option((SamplingConfig.sampler,), "sampler names, each at the default steps, or name:steps "
                             "(e.g. dpm++:20)")
    channels_last: bool = option(False, "the channels-last memory layout")

    def __post_init__(self):
        check_fields(self)


def main():
    args = from_args(Flags, parse_flags(__doc__.splitlines()[0], [Flags])[0])
    device = select_device(args.device)
    set_cpu_threads()
    dtype = resolve_precision("auto", device)
    batch_size = args.batch_size or sampling_batch_size(device)
    if args.checkpoint_path:
        ckpt, path = load_checkpoint(args.checkpoint_path)
        model, diffusion = load_model(ckpt, path, True, device)
    else:
        model = UNet(ModelConfig()).to(device).eval()  # the default network
        diffusion = DDPM(DiffusionConfig(), device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)

    images = [0]  # images through the network, counted by a forward hook
    model.register_forward_hook(lambda module, inputs, output: images.__setitem__(0, images[0] + len(output)))

    def run(sampling):
        generate(model, diffusion, args.num_samples, sampling, batch_size=batch_size,
                 autocast=lambda: autocast(device, dtype))

    guided = f"guidance {args.guidance:g}" if model.config.num_classes else "unconditional"
    print(f"device {device}, CPU capability {torch.backends.cpu.get_cpu_capability()}, precision {dtype or 'fp32'}, "
          f"{'channels-last' if args.channels_last else 'contiguous'}, {args.num_samples} digits, batch {batch_size}, "
          f"{guided}, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'sampler':8s} {'steps':>6s} {'NFE':>5s} {'eta':>4s} {'seconds':>9s} {'NFE/s':>10s}")
    for spec in args.samplers:
        sampler, _, steps = spec.partition(":")
        sampling = SamplingConfig(sampler=sampler, steps=int(steps or SamplingConfig.steps), guidance=args.guidance)
        repeats = 1 if sampler == "ddpm" else args.repeats
        images[0] = 0
        seconds = median([timed(lambda: run(sampling), device) for _ in range(repeats)])
        nfe = images[0] / (repeats * args.num_samples)  # network evaluations per digit
        steps = len(make_timesteps(sampler, diffusion, sampling.steps))
        print(f"{sampler:8s} {steps:>6d} {nfe:>5g} {sampling.eta:>4g} {seconds:>9.1f} "
              f"{nfe * args.num_samples / seconds:>10.0f}", flush=True)


if __name__ == "__main__":
    main()

"""Sampling speed: network evaluations per second and digits per second, per sampler and per
few-step model, timed interleaved in one run.

    python -m benchmarks.sample_throughput                        # random weights (speed only)
    python -m benchmarks.sample_throughput --checkpoint_path checkpoints/ddpm_checkpoint --samplers dpm++ dpm++:20 ddim:50
    python -m benchmarks.sample_throughput --checkpoint_path models/weights/ddpm_mnist.pt \
        --few_step checkpoints/shortcut checkpoints/reflow --few_steps 1 2 4

Each sampler runs with the default sampling's other settings (SamplingConfig: eta, guidance and
its interval). Class-conditional models (the default) are guided on the steps inside the
interval, which doubles the batch there; the NFE column counts the network evaluations per digit
actually made. Each --few_step checkpoint (a shortcut model, a reflow student, or a flow model for
Euler's steps) runs ddim on the jump grid, no noise, no guidance, in each of --few_steps. --channels_last times the
channels-last memory layout instead of the plain one.
"""
from dataclasses import dataclass
from pathlib import Path
from statistics import median

import torch

from benchmarks.common import timed
from diffusion.config import DiffusionConfig, SamplingConfig
from diffusion.ddpm import DDPM
from diffusion.pipeline import generate
from diffusion.samplers import make_timesteps
from models.load import load_model
from models.unet import UNet
from utils.checkpoint import load_checkpoint
from utils.config import ModelConfig, device_option
from utils.device import autocast, resolve_precision, sampling_batch_size, select_device, set_cpu_threads
from utils.errors import exit_on_user_error
from utils.flags import check_fields, from_args, option, parse_flags


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
    few_step: tuple = option((), "few-step checkpoints to time beside the samplers", item=str)
    few_steps: tuple = option((1, 2), "their steps", bounds="[1, inf)")
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

    runs = [(sampler, model, diffusion, SamplingConfig(sampler=sampler, steps=int(steps or SamplingConfig.steps),
                                                       guidance=args.guidance))
            for sampler, _, steps in (spec.partition(":") for spec in args.samplers)]
    for path in args.few_step:
        ckpt, source = load_checkpoint(path)
        few, process = load_model(ckpt, source, True, device)
        for steps in args.few_steps:
            sampling = SamplingConfig(sampler="ddim", grid="jump", steps=steps, eta=0.0, guidance=0.0)
            runs.append((f"{process.config.process} {Path(path).parent.name}/{Path(path).name}", few, process, sampling))

    images = [0]  # images through the networks, counted by forward hooks
    for net in {id(run[1]): run[1] for run in runs}.values():
        net.register_forward_hook(lambda module, inputs, output: images.__setitem__(0, images[0] + len(output)))

    def run(net, process, sampling):
        generate(net, process, args.num_samples, sampling, batch_size=batch_size, autocast=lambda: autocast(device, dtype))

    guided = f"guidance {args.guidance:g}" if model.config.num_classes else "unconditional"
    print(f"device {device}, CPU capability {torch.backends.cpu.get_cpu_capability()}, precision {dtype or 'fp32'}, "
          f"{'channels-last' if args.channels_last else 'contiguous'}, {args.num_samples} digits, batch {batch_size}, "
          f"{guided}, {torch.get_num_threads()} threads, median of {args.repeats}, interleaved")
    seconds, nfe = {i: [] for i in range(len(runs))}, {}
    for repeat in range(args.repeats):
        for i, (name, net, process, sampling) in enumerate(runs):
            if sampling.sampler == "ddpm" and repeat:
                continue  # 1,000 steps: once
            images[0] = 0
            seconds[i].append(timed(lambda: run(net, process, sampling), device))
            nfe[i] = images[0] / args.num_samples  # network evaluations per digit
    print(f"{'method':24s} {'steps':>6s} {'NFE':>5s} {'eta':>4s} {'seconds':>9s} {'NFE/s':>10s} {'digits/s':>9s}")
    for i, (name, net, process, sampling) in enumerate(runs):
        steps, time_ = len(make_timesteps(sampling.sampler, process, sampling.steps, sampling.grid)), median(seconds[i])
        print(f"{name:24s} {steps:>6d} {nfe[i]:>5g} {sampling.eta:>4g} {time_:>9.2f} "
              f"{nfe[i] * args.num_samples / time_:>10.0f} {args.num_samples / time_:>9.0f}", flush=True)


if __name__ == "__main__":
    exit_on_user_error(main)

"""What other endpoints of gamma would buy a trained VDM: its bound with gamma_min raised or gamma_max lowered.

    python -m benchmarks.vdm_endpoints --checkpoint_path checkpoints/vdm

VDM's bound (Kingma et al. 2021, eqs. 11 and 17) is prior(gamma_max) + reconstruction(gamma_min) +
1/2 integral gamma'(t) E||eps - eps_hat(z_t, t)||^2 dt over [0, 1]. Keeping the trained network and
its schedule between new endpoints gamma(a) and gamma(b), 0 <= a < b <= 1, is a model of its own,
and its bound is that of the checkpoint with the integral over [0, a] replaced by the decoder at
gamma(a), and that over [b, 1] by the prior at gamma(b):
    change(a) = reconstruction(gamma(a)) - reconstruction(gamma_min) - integral_0^a
    change(b) = prior(gamma(b)) - prior(gamma_max) - integral_b^1
A negative change is what learned endpoints would gain, the network fixed. The other direction
(gamma_min lower, gamma_max higher) can gain no more than the reconstruction and prior terms
themselves, which likelihood.py prints. Each integral is a Monte Carlo average over --times
stratified times per image and slice, on the test images in the order of `likelihood.py --seed S`.
The network runs as in likelihood.py: fp32, the null label.
"""
import math
from dataclasses import dataclass

import torch

from benchmarks.common import vdm_and_test_images
from diffusion.likelihood import vdm_diffusion_term, vdm_prior_kl, vdm_reconstruction
from likelihood import network
from utils.config import check_fields, checkpoint_option, data_dir_option, device_option, from_args, option, parse_flags
from utils.errors import exit_on_user_error

LOW = (0.01, 0.02, 0.03, 0.05, 0.075, 0.1)  # candidate a: gamma_min moved up to gamma(a)
HIGH = (0.99, 0.98, 0.95, 0.9)              # candidate b: gamma_max moved down to gamma(b)


@dataclass
class Flags:
    checkpoint_path: str = checkpoint_option("a VDM checkpoint")
    num_images: int = option(100, "test images", bounds="[1, 10000]")
    times: int = option(8, "times per image in each slice between two candidate endpoints", bounds="[1, inf)")
    seed: int = option(0, "image order (as likelihood.py's) and noise", bounds="[0, inf)")
    data_dir: str = data_dir_option()
    device: str = device_option()

    def __post_init__(self):
        check_fields(self)


def reconstruction(process, images, t, generator):
    """-log p(x | z) per image in nats, VDM's decoder at gamma(t), one draw of z ~ q(z_t | x)."""
    return vdm_reconstruction(images, *process.alpha_sigma64(torch.tensor(t, dtype=torch.float64)), generator)


def prior(process, images, t):
    """KL(q(z_t | x) || N(0, I)) per image in nats."""
    return vdm_prior_kl(images, *process.alpha_sigma64(torch.tensor(t, dtype=torch.float64)))


def changes(predict_eps, process, images, times, generator):
    """{candidate time: per-image change of the bound in nats} for both ends."""
    out, below, previous = {}, torch.zeros(len(images), dtype=torch.float64), 0.0
    base = reconstruction(process, images, 0.0, generator)
    for a in LOW:
        below += vdm_diffusion_term(predict_eps, process, images, generator, times, lo=previous, hi=a)
        out[a] = reconstruction(process, images, a, generator) - base - below
        previous = a
    above, previous, base = torch.zeros(len(images), dtype=torch.float64), 1.0, prior(process, images, 1.0)
    for b in HIGH:
        above += vdm_diffusion_term(predict_eps, process, images, generator, times, lo=b, hi=previous)
        out[b] = prior(process, images, b) - base - above
        previous = b
    return out


def main(argv=None):
    args, _ = parse_flags(__doc__.splitlines()[0], [Flags], argv)
    cfg = from_args(Flags, args)
    model, process, images, generator, path = vdm_and_test_images(cfg, "the endpoint study")
    images = images.double().cpu()
    per_dim = images[0].numel() * math.log(2)
    print(f"{path}: {len(images)} test images; gamma from {process.gamma_min} to {process.gamma_max}")
    print(f"{'end':>13s} {'t':>6s} {'gamma':>7s} | change of the bound, bits/dim")
    result = {}
    for t, change in changes(network(model, process)[1], process, images, cfg.times, generator).items():
        bits = change / per_dim
        error = bits.std().item() / math.sqrt(len(bits)) if len(bits) > 1 else float("nan")
        end = "gamma_min" if t < 0.5 else "gamma_max"
        print(f"{end:>13s} {t:6.3f} {process.gamma(t):7.2f} | {bits.mean().item():+.4f} ± {error:.4f}")
        result[t] = (bits.mean().item(), error)
    return result


if __name__ == "__main__":
    exit_on_user_error(main)

"""The density of training times that makes a VDM's updates least noisy, measured on its checkpoint.

    python -m benchmarks.t_density --checkpoint_path checkpoints/vdm

VDM's loss is an expectation over t ~ U(0, 1); drawn instead from a density p and divided by p(t)
(train.py --t_density), it keeps its mean, and a one-sample gradient g has the second moment
    E_p[||g(t)||^2 / p(t)^2] = integral_0^1 m(t) / p(t) dt,    m(t) = E[||g(t)||^2 | t]
(image and noise drawn), least for p proportional to sqrt(m), where it is (integral sqrt(m) dt)^2:
importance sampling. The norm that matters is the optimizer's: AdamW moves each weight by its
gradient over sqrt(v), v the running mean of its squared gradient (Kingma & Ba 2015), so the noise
of an update is that of g / (sqrt(v) + eps), and m is taken in that norm, v from the checkpoint's
optimizer state. (In the plain norm the gradients of t near 0.1 dominate, and the density that
follows them makes AdamW's updates noisier: docs/RESULTS.md, "Importance sampling of VDM's times".)
The tool estimates m in --bins equal bins of t from --samples one-image gradients each: training
images at random with their own labels (no label dropout), t uniform within the bin, the raw
weights in fp32 and eval mode (no dropout), the loss as trained before any division by p. It prints
both norms' m per bin, the weights of p proportional to sqrt(m) in AdamW's norm as --t_density
takes them, and the second moment of the proposed density (and of the checkpoint's own, if it has
one) as a share of uniform t's in both norms. The weights are fitted to the same gradients they
are scored on: rerun with another --seed.
"""
import dataclasses
from dataclasses import dataclass

import torch
from tqdm import tqdm

from benchmarks.common import vdm_checkpoint
from diffusion.continuous import TimeDensity
from diffusion.processes import make_process
from utils.config import check_fields, checkpoint_option, data_dir_option, device_option, from_args, option, parse_flags
from utils.data import to_model_range
from utils.datasets import checkpoint_data
from utils.errors import UserError, exit_on_user_error


@dataclass
class Flags:
    checkpoint_path: str = checkpoint_option("a VDM checkpoint")
    bins: int = option(20, "equal bins of t, one weight each", bounds="[1, 1000]")
    samples: int = option(64, "one-image gradients per bin", bounds="[2, inf)")
    seed: int = option(0, "images, times and noise", bounds="[0, inf)")
    data_dir: str = data_dir_option()
    device: str = device_option()

    def __post_init__(self):
        check_fields(self)


def update_scale(ckpt, params):
    """sqrt(v_hat) + eps of each parameter, from the checkpoint's AdamW state (bias-corrected)."""
    state, group = ckpt["optimizer"]["state"], ckpt["optimizer"]["param_groups"][0]
    beta2, eps = group["betas"][1], group["eps"]
    scales = []
    for index, param in enumerate(params):
        v, step = state[index]["exp_avg_sq"].double(), float(state[index]["step"])
        scales.append((v / (1 - beta2 ** step)).sqrt().to(param.device) + eps)
    return scales


def gradient_moments(model, ckpt, process, images, labels, bins, samples, generator):
    """((B,) plain, (B,) AdamW's): in each bin of t, the mean squared norm of one-image gradients of
    process.loss, as they are and divided by the per-weight scale of ckpt's optimizer."""
    params = [p for p in model.parameters() if p.requires_grad]
    scales = update_scale(ckpt, params)
    plain, adam = torch.zeros(bins, dtype=torch.float64), torch.zeros(bins, dtype=torch.float64)
    with tqdm(total=bins * samples, desc="gradients") as bar:
        for k in range(bins):
            for _ in range(samples):
                i = torch.randint(len(images), (1,), generator=generator)
                x0 = to_model_range(images[i]).to(process.device)
                y = labels[i].to(process.device) if labels is not None else None
                noise = torch.randn(x0.shape, generator=generator).to(process.device)
                t = ((k + torch.rand(1, generator=generator, dtype=torch.float64)) / bins).float().to(process.device)
                out = model(process.q_sample(x0, t, noise), process.model_time(t, 1, t.device), y)
                grads = [g.double() for g in torch.autograd.grad(process.loss(out, x0, noise, t), params)]
                plain[k] += sum(g.pow(2).sum() for g in grads).item() / samples
                adam[k] += sum((g / s).pow(2).sum() for g, s in zip(grads, scales)).item() / samples
                bar.update()
    return plain, adam


def second_moment(moments, density, points=1000):
    """integral m / p dt for m constant in each of its bins and p any density on [0, 1] (a function
    of a tensor of times), by the midpoint rule with `points` times per bin."""
    bins = len(moments)
    t = (torch.arange(bins * points, dtype=torch.float64) + 0.5) / (bins * points)
    return (moments.repeat_interleave(points) / density(t).double()).mean().item()


def main(argv=None):
    args, _ = parse_flags(__doc__.splitlines()[0], [Flags], argv)
    cfg = from_args(Flags, args)
    ckpt, model, process, path = vdm_checkpoint(cfg, "--t_density is VDM's", use_ema=False)
    if not ckpt.get("optimizer"):
        raise UserError(f"{path} holds no optimizer state; the tool needs a training checkpoint of train.py")
    uniform = make_process(dataclasses.replace(process.config, t_density=()), process.device)
    _, data = checkpoint_data(ckpt, True, cfg.data_dir)
    labels = data.labels if ckpt["model_config"].get("num_classes") else None
    generator = torch.Generator().manual_seed(cfg.seed)
    plain, adam = gradient_moments(model.float(), ckpt, uniform, data.images, labels, cfg.bins, cfg.samples, generator)

    weights = [float(f"{w:.3g}") for w in (adam.sqrt() / adam.sqrt().mean()).clamp(min=1e-3).tolist()]
    print(f"{path}: {cfg.bins} bins of t, {cfg.samples} one-image gradients each (seed {cfg.seed})")
    print(f"{'t':>6s} {'gamma':>7s} {'E||g||^2':>10s} {'AdamW':>10s} {'weight':>7s}")
    for k, (m, a, w) in enumerate(zip(plain.tolist(), adam.tolist(), weights)):
        t = (k + 0.5) / cfg.bins
        print(f"{t:6.3f} {process.gamma(t):7.2f} {m:10.4g} {a:10.4g} {w:7.3g}")
    densities = {"the proposed density": TimeDensity(weights, "cpu")}
    if process.config.t_density:
        densities = {"the checkpoint's --t_density": TimeDensity(process.config.t_density, "cpu"), **densities}
    shares = {}
    for name, density in densities.items():
        shares[name] = {norm: second_moment(m, density) / m.mean().item() for norm, m in (("adam", adam), ("plain", plain))}
        print(f"{name}: second moment of a one-image update {shares[name]['adam']:.3f} of uniform t's in AdamW's "
              f"norm, {shares[name]['plain']:.3f} in the plain one")
    print("--t_density " + " ".join(f"{w:g}" for w in weights))
    return weights, shares


if __name__ == "__main__":
    exit_on_user_error(main)

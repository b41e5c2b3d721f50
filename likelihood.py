"""Bits per dimension of the test set under a trained model: the variational bound (DDPM's discrete
one, VDM's continuous one; flow matching has none, so --method bound refuses it and both skips it)
and the probability-flow ODE (every process), the maths in diffusion/likelihood.py.

    python likelihood.py                                  # both methods, the default checkpoint or the shipped model
    python likelihood.py --method bound --num_images 1000
    python likelihood.py --method ode --ode_images 64 --rtol 1e-4 --atol 1e-4
    python likelihood.py --checkpoint_path checkpoints/vdm --num_images 1000 --t_samples 100

The network runs in fp32 with the null label, so the likelihood is the unconditional one, log p(x).
Bits per dimension = nats / (D ln 2) with D = C x H x W; each figure comes with its standard error
over images.
"""
import json
import math
import sys
import time
from pathlib import Path

import torch

from diffusion.likelihood import ode_log_likelihood, vdm_decoder_log_likelihood
from models.load import checkpoint_or_shipped, load_to_sample, results_path
from utils.config import LikelihoodConfig
from utils.datasets import checkpoint_data, to_model_range
from utils.device import set_cpu_threads
from utils.errors import UserError, exit_on_user_error
from utils.flags import from_args, parse_flags
from utils.memory import check_batch

# dequantised 8-bit MNIST, bits/dim (FFJORD paper, Grathwohl et al. 2019, Table 2; Residual Flows, Chen et al. 2019)
FLOWS = {"Real NVP": 1.06, "Glow": 1.05, "FFJORD": 0.99, "Residual Flows": 0.97}


def mean_and_error(values):
    """(mean, standard error of the mean) of a 1-D tensor."""
    return values.mean().item(), (values.std(unbiased=True) / math.sqrt(len(values))).item() if len(values) > 1 else 0.0


CONFIGS = (LikelihoodConfig,)


def network(model, diffusion):
    """(predict_x0, predict_eps) of the model in fp32 with the null label: unconditional. Times are
    float tensors: DDPM's may be fractional (x0 and v models then convert with the coefficients of
    floor(t)); a continuous process's lie in [0, 1]."""

    def output(x, t):
        return model(x, diffusion.model_time(t, len(x), x.device), None).float()  # no labels: the null label

    def predict_x0(x, t):
        with torch.no_grad():
            return diffusion.predict_x0_eps(x, t, output(x, t))[0]

    def predict_eps(x, t):  # through the process: VDM's clip_x0 moves eps too
        coefficients_t = t.floor().long().clamp(max=diffusion.num_timesteps - 1) if diffusion.discrete else t
        return diffusion.predict_x0_eps(x, coefficients_t, output(x, t))[1]

    return predict_x0, predict_eps


def images_scored(flag, count, total):
    """How many of the `total` test images --flag `count` scores; says so in one line when it asks for more."""
    if count > total:
        print(f"--{flag} {count:,} is more than the {total:,} test images: scoring {total:,}", file=sys.stderr)
    return min(count, total)


def variational_bound(cfg, diffusion, images, generator, predictors):
    """(bits/dim per image, the mean of each of the bound's terms, its name): the process's bound."""
    terms, name = diffusion.bound(*predictors, images, generator, cfg.t_samples, cfg.batch_size)
    bits = {term: values / (images[0].numel() * math.log(2)) for term, values in terms.items()}
    return sum(bits.values()), {term: values.mean().item() for term, values in bits.items()}, name


def ode_bits(cfg, diffusion, codes, generator, predict_eps):
    """(bits/dim per image, evaluations, the dequantisation) by the probability-flow ODE. Uniform
    dequantisation, (x + u) / 128 - 1 with u ~ U[0, 1): -log P(x) <= -log p(x + u) + D log 128.
    VDM, trained down to sigma_0 of about 1e-3, much narrower than a pixel's bin, is read through its
    own q(z_0 | x) and decoder instead: -log P(x) <= -log p(z_0) - log p(x | z_0) + log q(z_0 | x)."""
    dim = codes[0].numel()
    if not diffusion.decoded_ode:
        x = ((codes + torch.rand(codes.shape, generator=generator, dtype=torch.float64)) / 128 - 1).float()
        log_p, evaluations = ode_log_likelihood(predict_eps, diffusion, x.to(diffusion.device), generator,
                                                cfg.rtol, cfg.atol)
        return (-log_p / dim + math.log(128)) / math.log(2), evaluations, "uniform"
    x = codes / 127.5 - 1
    alpha0, sigma0 = diffusion.alpha_sigma64(torch.tensor(0.0, dtype=torch.float64))
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    z0 = alpha0 * x + sigma0 * noise
    log_p, evaluations = ode_log_likelihood(predict_eps, diffusion, z0.float().to(diffusion.device), generator,
                                            cfg.rtol, cfg.atol)
    log_q = (-0.5 * noise ** 2 - torch.log(sigma0) - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)
    nats = -log_p - vdm_decoder_log_likelihood(x, z0, alpha0, sigma0) + log_q
    return nats / (dim * math.log(2)), evaluations, "q(z_0 | x) and the decoder"


def main(argv=None):
    args, _ = parse_flags(__doc__.splitlines()[0], CONFIGS, argv)
    cfg = from_args(LikelihoodConfig, args)
    set_cpu_threads()
    loaded = load_to_sample(checkpoint_or_shipped(cfg.checkpoint_path), cfg.device, "fp32")
    ckpt, path, model, diffusion, device = loaded.ckpt, loaded.path, loaded.net, loaded.diffusion, loaded.device
    process = diffusion.config.process
    bound_wanted = cfg.method in ("both", "bound")
    if bound_wanted and diffusion.bound is None:
        if cfg.method == "bound":
            raise UserError(f"{process} has no variational bound: --method ode gives its likelihood")
        print(f"{process} has no variational bound: scoring the ODE only", file=sys.stderr)
        bound_wanted = False
    dataset, test = checkpoint_data(ckpt, False, cfg.data_dir)
    generator = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(test.images), generator=generator)
    dim = test.images[0].numel()
    predictors = network(model, diffusion)
    results = {"checkpoint": str(path), "dataset": dataset, "process": process, "dims": dim, "device": str(device)}

    if bound_wanted:
        check_batch(model, cfg.batch_size, device)
        images = to_model_range(test.images[order[:images_scored("num_images", cfg.num_images, len(order))]])
        start = time.perf_counter()
        bpd, breakdown, name = variational_bound(cfg, diffusion, images, generator, predictors)
        mean, error = mean_and_error(bpd)
        results["bound"] = {"name": name, "bits_per_dim": mean, "standard_error": error, "images": len(images),
                            "seconds_per_image": (time.perf_counter() - start) / len(images), "breakdown": breakdown}
    if cfg.method in ("both", "ode"):
        codes = test.images[order[:images_scored("ode_images", cfg.ode_images, len(order))]].double()
        start = time.perf_counter()
        bpd, evaluations, dequantisation = ode_bits(cfg, diffusion, codes, generator, predictors[1])
        mean, error = mean_and_error(bpd)
        results["ode"] = {"bits_per_dim": mean, "standard_error": error, "images": len(codes), "rtol": cfg.rtol,
                          "atol": cfg.atol, "function_evaluations": evaluations, "probes": 1,
                          "dequantisation": dequantisation, "seconds_per_image": (time.perf_counter() - start) / len(codes)}

    print(f"\n{'method':34s} {'images':>7s} {'bits/dim':>9s} {'s.e.':>7s} {'s/image':>8s}   ({dataset}, {process}, {device})")
    if "bound" in results:
        r = results["bound"]
        print(f"{r['name']:34s} {r['images']:>7d} {r['bits_per_dim']:>9.3f} {r['standard_error']:>7.3f} "
              f"{r['seconds_per_image']:>8.2f}")
        print("  the bound's terms, bits/dim: " + ", ".join(f"{k} {v:.3f}" for k, v in r["breakdown"].items()))
    if "ode" in results:
        r = results["ode"]
        print(f"{'probability-flow ODE (Song 2021)':34s} {r['images']:>7d} {r['bits_per_dim']:>9.3f} "
              f"{r['standard_error']:>7.3f} {r['seconds_per_image']:>8.2f}   "
              f"(RK45 rtol {cfg.rtol:g} atol {cfg.atol:g}, {r['function_evaluations']} evaluations, 1 probe, "
              f"dequantised by {r['dequantisation']})")
    if dataset == "mnist":
        print("  flows on dequantised MNIST, bits/dim: " + ", ".join(f"{k} {v}" for k, v in FLOWS.items()))
    out = Path(cfg.out or results_path(path, ".likelihood.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}", file=sys.stderr)
    return results


if __name__ == "__main__":
    exit_on_user_error(main)

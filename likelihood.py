"""Bits per dimension of the test set under a trained model: the variational bound and the
probability-flow ODE (the maths: diffusion/likelihood.py).

    python likelihood.py                                  # both methods, the default checkpoint or the shipped model
    python likelihood.py --method bound --num_images 1000
    python likelihood.py --method ode --ode_images 64 --rtol 1e-4 --atol 1e-4

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

from diffusion.likelihood import bound_terms, ode_log_likelihood
from models.load import checkpoint_or_shipped, load_model, results_path
from utils.config import LikelihoodConfig, from_args, parse_flags
from utils.data import to_model_range
from utils.datasets import checkpoint_data
from utils.device import select_device, set_cpu_threads
from utils.errors import exit_on_user_error

# dequantised 8-bit MNIST, bits/dim (FFJORD paper, Grathwohl et al. 2019, Table 2; Residual Flows, Chen et al. 2019)
FLOWS = {"Real NVP": 1.06, "Glow": 1.05, "FFJORD": 0.99, "Residual Flows": 0.97}
BUCKETS = [("prior L_T", None), ("decoder L_0", (0, 1)), ("t 1-9", (1, 10)), ("t 10-99", (10, 100)),
           ("t 100-999", (100, None))]


def mean_and_error(values):
    """(mean, standard error of the mean) of a 1-D tensor."""
    return values.mean().item(), (values.std(unbiased=True) / math.sqrt(len(values))).item() if len(values) > 1 else 0.0


CONFIGS = (LikelihoodConfig,)


def network(model, diffusion):
    """(predict_x0, predict_eps) of the model in fp32 with the null label: unconditional."""
    def output(x, t):
        return model(x, t, None).float()  # no labels: the U-Net's null label

    def predict_x0(x, t):
        with torch.no_grad():
            return diffusion.predict_x0_eps(x, t, output(x, t))[0]

    def predict_eps(x, t):  # t may be fractional (x0 and v models: converted with the coefficients of floor(t))
        if diffusion.prediction == "eps":
            return output(x, t)
        low = t.floor().long().clamp(max=diffusion.num_timesteps - 1)
        return diffusion.predict_x0_eps(x, low, output(x, t))[1]

    return predict_x0, predict_eps


def main(argv=None):
    args, _ = parse_flags(__doc__.splitlines()[0], CONFIGS, argv)
    cfg = from_args(LikelihoodConfig, args)
    device = select_device(cfg.device)
    set_cpu_threads()
    ckpt, path = checkpoint_or_shipped(cfg.checkpoint_path)
    model, diffusion = load_model(ckpt, path, True, device)
    dataset, test = checkpoint_data(ckpt, False, cfg.data_dir)
    generator = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(test.images), generator=generator)
    dim = test.images[0].numel()
    predict_x0, predict_eps = network(model, diffusion)
    results = {"checkpoint": str(path), "dataset": dataset, "dims": dim, "device": str(device)}

    if cfg.method in ("both", "bound"):
        images = to_model_range(test.images[order[:cfg.num_images]])
        start = time.perf_counter()
        terms = bound_terms(predict_x0, diffusion, images, generator, cfg.batch_size) / (dim * math.log(2))
        seconds = time.perf_counter() - start
        bpd, error = mean_and_error(terms.sum(1))
        T = diffusion.num_timesteps
        breakdown = {name: (terms[:, T] if span is None else terms[:, span[0]:span[1] or T].sum(1)).mean().item()
                     for name, span in BUCKETS}
        results["bound"] = {"bits_per_dim": bpd, "standard_error": error, "images": len(images),
                            "seconds_per_image": seconds / len(images), "breakdown": breakdown}
    if cfg.method in ("both", "ode"):
        codes = test.images[order[:cfg.ode_images]].double()
        x = ((codes + torch.rand(codes.shape, generator=generator, dtype=torch.float64)) / 128 - 1).float()
        start = time.perf_counter()
        log_p, evaluations = ode_log_likelihood(predict_eps, diffusion, x.to(device), generator, cfg.rtol, cfg.atol)
        seconds = time.perf_counter() - start
        bpd, error = mean_and_error((-log_p / dim + math.log(128)) / math.log(2))
        results["ode"] = {"bits_per_dim": bpd, "standard_error": error, "images": len(x), "rtol": cfg.rtol,
                          "atol": cfg.atol, "function_evaluations": evaluations, "probes": 1,
                          "seconds_per_image": seconds / len(x)}

    print(f"\n{'method':34s} {'images':>7s} {'bits/dim':>9s} {'s.e.':>7s} {'s/image':>8s}   ({dataset}, {device})")
    if "bound" in results:
        r = results["bound"]
        print(f"{'variational bound (Ho et al. 2020)':34s} {r['images']:>7d} {r['bits_per_dim']:>9.3f} "
              f"{r['standard_error']:>7.3f} {r['seconds_per_image']:>8.2f}")
        print("  the bound's terms, bits/dim: " + ", ".join(f"{k} {v:.3f}" for k, v in r["breakdown"].items()))
    if "ode" in results:
        r = results["ode"]
        print(f"{'probability-flow ODE (Song 2021)':34s} {r['images']:>7d} {r['bits_per_dim']:>9.3f} "
              f"{r['standard_error']:>7.3f} {r['seconds_per_image']:>8.2f}   "
              f"(RK45 rtol {cfg.rtol:g} atol {cfg.atol:g}, {r['function_evaluations']} evaluations, 1 probe)")
    if dataset == "mnist":
        print("  flows on dequantised MNIST, bits/dim: " + ", ".join(f"{k} {v}" for k, v in FLOWS.items()))
    out = Path(cfg.out or results_path(path, ".likelihood.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}", file=sys.stderr)
    return results


if __name__ == "__main__":
    exit_on_user_error(main)

"""Measure sample quality: FID, KID, precision/recall, class statistics and memorisation.

    python evaluate.py --checkpoint_path checkpoints/ddpm_checkpoint --num_samples 10000     # default sampling
    python evaluate.py --sampler ddpm --num_samples 5000                                     # the 1000-step reference
    python evaluate.py --real            # the floor: 10k real training images against the test set

Features come from a classifier of the same data set: MNIST's ships in models/weights/; for another
data set `python train_classifier.py --dataset X` makes one, and without it only the metrics that
need no features are reported (see models/classifier.py). Prints a small table and writes it as
JSON next to the checkpoint.
"""
import json
import sys
import time
from pathlib import Path

import torch

from diffusion.config import SamplingConfig
from diffusion.pipeline import every_digit
from models.classifier import load_classifier
from models.load import checkpoint_or_shipped, load_to_sample, results_path
from models.unet import UNet
from utils.config import OUTPUT_DIR, EvalConfig
from utils.datasets import checkpoint_data, to_model_range
from utils.device import sampling_batch_size, select_device, set_cpu_threads
from utils.errors import exit_on_user_error
from utils.flags import from_args, parse_flags
from utils.metrics import evaluate_samples

CONFIGS = (EvalConfig, SamplingConfig)
COLUMNS = ["fid", "kid", "precision", "recall", "confident", "digit_accuracy", "class_kl", "memorisation"]


def tag(sampling):
    """A file-name tag for the sampling settings, e.g. dpm++8_eta1_g0.1_0.25-0.7."""
    lo, hi = sampling.guidance_interval
    return (f"{sampling.sampler}{sampling.steps}{sampling.grid}_eta{sampling.eta:g}_g{sampling.guidance:g}"
            + (f"_{lo:g}-{hi:g}" if sampling.guidance else "") + (f"_seed{sampling.seed}" if sampling.seed else ""))


def main(argv=None, make_model=UNet):
    """Evaluate; `make_model(model_config)` builds the network (the benchmarks swap in a peer model)."""
    args, typed = parse_flags("Measure the sample quality of a checkpoint.", CONFIGS, argv)
    cfg, sampling = from_args(EvalConfig, args), from_args(SamplingConfig, args)
    device = select_device(cfg.device)
    set_cpu_threads()
    ckpt, path = (None, None) if cfg.real else checkpoint_or_shipped(cfg.checkpoint_path)
    dataset, train_data = checkpoint_data(ckpt, True, cfg.data_dir, cfg.dataset)
    train_images, test_images = train_data.images, checkpoint_data(ckpt, False, cfg.data_dir, cfg.dataset)[1].images
    classifier = load_classifier(device, dataset, cfg.classifier)
    if classifier is None:
        print(f"no classifier of {dataset}: FID, KID, precision/recall and the class statistics need one "
              f"(python train_classifier.py --dataset {dataset}, or --classifier PATH); reporting memorisation only",
              file=sys.stderr)
    start = time.perf_counter()
    requested = None
    if cfg.real:
        generator = torch.Generator().manual_seed(sampling.seed)
        picks = torch.randperm(len(train_images), generator=generator)[:cfg.num_samples]
        samples, name = to_model_range(train_images[picks]), f"real train ({cfg.num_samples})"
        out = Path(cfg.out or f"{OUTPUT_DIR}/eval_real{'' if dataset == 'mnist' else '_' + dataset}_n{cfg.num_samples}.json")
    else:
        loaded = load_to_sample((ckpt, path), device, cfg.precision, True, sampling, typed, make_model)
        sampling = loaded.sampling  # a few-step model's own steps
        requested = every_digit(cfg.num_samples, loaded.net.config.num_classes, device)  # None if unconditional
        samples = loaded.generate(cfg.num_samples, requested, batch_size=cfg.batch_size or sampling_batch_size(device))
        name = sampling.describe(requested is not None)
        out = Path(cfg.out or results_path(path, f".eval_{tag(sampling)}_n{cfg.num_samples}.json"))
    sample_seconds = time.perf_counter() - start
    results = evaluate_samples(samples.cpu(), classifier, test_images, train_images, device, requested)
    results.update(name=name, dataset=dataset, sample_seconds=round(sample_seconds, 2),
                   total_seconds=round(time.perf_counter() - start, 1), device=str(device))
    print(f"{'':24s}" + "".join(f"{c:>15s}" for c in COLUMNS))  # a small table: the header, then the row
    print(f"{name:24s}" + "".join(f"{results[c]:>15.4f}" if c in results else f"{'-':>15s}" for c in COLUMNS))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"sampling {results['sample_seconds']} s, total {results['total_seconds']} s on {device}; wrote {out}",
          file=sys.stderr)
    return results


if __name__ == "__main__":
    exit_on_user_error(main)

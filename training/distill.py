"""Reflow distillation (Liu et al. 2023, "Flow straight and fast", sec. 3.3; Luhman & Luhman 2021): a
trained model of any process, the teacher, turns noise z into a digit x = T(z, y) by its default
sampler run as an ODE (eta = 0), with its guidance; a flow-matching student learns the straight
path between each such pair,

    x_t = (1 - t) x + t z,     velocity dx_t/dt = z - x          (diffusion/continuous.py's Flow)

The coupling is deterministic, so the best velocity at t = 1 is z - T(z, y) itself: one Euler
step from z lands on the teacher's guided digit, and the student needs no guidance of its own.

    python train.py --teacher models/weights/ddpm_mnist.pt --checkpoint_path checkpoints/reflow

The pairs are made before step 0 (inside a --minutes budget, in at most PAIR_SHARE of it), kept
beside the checkpoint as <checkpoint>.pairs.pt so a resumed run learns the same ones, and replace
the data set; the student starts from the teacher's EMA weights, has the teacher's network and
samples in DiffusionConfig.few_steps steps unless told otherwise.
"""
import dataclasses
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from diffusion.pipeline import every_digit, make_denoiser
from diffusion.samplers import sample
from models.load import class_names, load_model
from utils import distributed
from utils.checkpoint import load_checkpoint, load_weights
from utils.config import DiffusionConfig, ModelConfig, SamplingConfig
from utils.data import file_digest
from utils.datasets import Data
from utils.errors import UserError

TEACHER_SAMPLING = SamplingConfig(eta=0.0)  # the default sampler as an ODE: one digit per noise
STUDENT_STEPS = 2                            # the student's default steps (inference.py --steps to change)
PAIR_SHARE = 0.4                             # of a --minutes budget, at most, for the pairs
PAIR_SEED = 2 ** 30                          # the pairs' noise: from --seed + PAIR_SEED


def student_configs(cfg, typed):
    """(TrainConfig, ModelConfig, DiffusionConfig) of a fresh student of cfg.teacher: the teacher's
    network and data set, flow matching, no label dropout (every pair has its label)."""
    if typed & {"process", "prediction", "weighting"} or typed & {f.name for f in dataclasses.fields(ModelConfig)}:
        raise UserError("--teacher: the student is a flow model with the teacher's network; drop --process, "
                        "--prediction, --weighting and the network's flags")
    ckpt, source = load_checkpoint(cfg.teacher)
    cfg = dataclasses.replace(cfg, dataset=ckpt["train_config"].get("dataset", "mnist"), p_uncond=0.0,
                              teacher=str(source), teacher_sha256=file_digest(source, "sha256"))
    return cfg, ModelConfig(**ckpt["model_config"]), DiffusionConfig(process="flow", few_steps=STUDENT_STEPS)


def start_from_teacher(cfg, *models):
    """The student's first weights (and its EMA's): the teacher's EMA."""
    ckpt, source = load_checkpoint(cfg.teacher)
    for model in models:
        load_weights(model, ckpt["ema"], source)


def pairs_path(cfg):
    return Path(f"{cfg.checkpoint_path}.pairs.pt")


def teacher_pairs(cfg, device, amp, start):
    """The Data of the teacher's pairs (digits as uint8 images, labels, noise) on `device`: read from
    pairs_path(cfg) if it holds this teacher's, else made (and saved) for --pairs digits or until
    PAIR_SHARE of the --minutes budget since `start` has passed."""
    path = pairs_path(cfg)
    if path.is_file():
        saved = torch.load(path, map_location=device)
        if saved["teacher_sha256"] == cfg.teacher_sha256:
            print(f"{len(saved['labels']):,} pairs of the teacher from {path}", file=sys.stderr)
            return Data(saved["images"], saved["labels"], tuple(saved["classes"]), saved["noise"])
        raise UserError(f"{path} holds the pairs of another teacher; remove it or train into another --checkpoint_path")
    ckpt, source = load_checkpoint(cfg.teacher)
    teacher, process = load_model(ckpt, source, True, device)
    deadline = start + PAIR_SHARE * cfg.minutes * 60 if not (cfg.total_steps or cfg.epochs or cfg.plan) else None
    generator = torch.Generator(device=device).manual_seed(cfg.seed + PAIR_SEED)
    shape, s = (teacher.config.in_channels, teacher.config.image_size, teacher.config.image_size), TEACHER_SAMPLING
    labels = every_digit(cfg.pairs, teacher.config.num_classes, device)
    images, noises, batch = [], [], 250
    for first in tqdm(range(0, cfg.pairs, batch), desc=f"teacher pairs ({s.describe()})", leave=False):
        if distributed.from_rank0(int(deadline is not None and time.perf_counter() > deadline)):  # all stop together
            print(f"pairs: {first:,} of {cfg.pairs:,} made in {PAIR_SHARE:.0%} of the budget", file=sys.stderr)
            break
        y = None if labels is None else labels[first:first + batch]
        noise = torch.randn((min(batch, cfg.pairs - first), *shape), generator=generator, device=device)
        denoise = make_denoiser(teacher, process, y, s.guidance, s.guidance_interval, amp)
        with torch.inference_mode():
            x = sample(s.sampler, denoise, process, noise, s.steps, s.eta, generator, grid=s.grid)
        images.append(((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))
        noises.append(noise)
    images, noise = torch.cat(images), torch.cat(noises)
    labels = None if labels is None else labels[:len(images)]
    classes = class_names(ckpt) if labels is not None else ()
    if distributed.is_main():  # every process made the same pairs from the same seed
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"images": images.cpu(), "labels": None if labels is None else labels.cpu(), "noise": noise.cpu(),
                    "classes": list(classes), "teacher": cfg.teacher, "teacher_sha256": cfg.teacher_sha256,
                    "sampling": s.describe()}, path)
    return Data(images, labels, classes, noise)

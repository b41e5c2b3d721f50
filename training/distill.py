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
samples in DiffusionConfig.few_steps steps unless told otherwise. A resumed student keeps its teacher:
another --teacher file (by SHA-256), or the run's own checkpoint, is refused.
"""
import dataclasses
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from diffusion.config import DiffusionConfig, SamplingConfig
from diffusion.continuous import Flow
from diffusion.pipeline import every_digit, make_denoiser
from diffusion.samplers import sample
from models.load import class_names, load_model
from utils import distributed
from utils.checkpoint import atomic_save, load_checkpoint, load_weights, main_path, write_failure
from utils.config import ModelConfig
from utils.datasets import Data
from utils.errors import UserError
from utils.memory import USABLE, free_bytes
from utils.mnist import file_digest

TEACHER_SAMPLING = SamplingConfig(eta=0.0)  # the default sampler as an ODE: one digit per noise
STUDENT_STEPS = 2                            # the student's default steps (inference.py --steps to change)
PAIR_SHARE = 0.4                             # of a --minutes budget, at most, for the pairs
PAIR_SEED = 2 ** 30                          # the pairs' noise: from --seed + PAIR_SEED
PAIR_BATCH = 250                             # pairs made per batch
STUDENT_FLAGS = ("t_sampling", "weighting", "min_snr_gamma")  # the DiffusionConfig flags a flow student takes


@dataclasses.dataclass
class Student:
    """A --teacher run as train.py sees it, through Student.of (its one call into this file): a fresh
    student's configs, then the run's data (pairs) and a fresh student's first weights (start)."""
    configs: tuple = None  # a fresh student's (TrainConfig, ModelConfig, DiffusionConfig); None: resumed

    @classmethod
    def of(cls, cfg, args, typed, ckpt=None, source=None):
        """The Student of a run with a teacher, else None: a fresh one (ckpt None) with its teacher's
        configs; one resuming the checkpoint `ckpt` from `source` keeps its teacher (check_teacher)."""
        if ckpt is None:
            return cls(student_configs(cfg, args, typed)) if cfg.teacher else None
        saved = ckpt.get("train_config", {})
        if "teacher" in typed:
            check_teacher(cfg.teacher, source, saved)
        return cls() if saved.get("teacher") else None

    def pairs(self, cfg, device, amp, start, stop):
        """The run's data, the teacher's pairs (teacher_pairs); None if a signal came first."""
        return teacher_pairs(cfg, device, amp, start, stop)

    def start(self, model):
        """A fresh student's first weights (and so its EMA's): its teacher's EMA."""
        ckpt, source = load_checkpoint(self.configs[0].teacher)
        load_weights(model, ckpt["ema"], source)


def student_configs(cfg, args, typed):
    """(TrainConfig, ModelConfig, DiffusionConfig) of a fresh student of cfg.teacher: the teacher's
    network, data set and --data_dir (unless typed), flow matching with the STUDENT_FLAGS typed in
    `args`, no label dropout (every pair has its label)."""
    fields = {f.name for f in (*dataclasses.fields(ModelConfig), *dataclasses.fields(DiffusionConfig))}
    refused = sorted(typed & fields - set(STUDENT_FLAGS))
    if refused:
        raise UserError("--teacher: the student is a flow model with the teacher's network; drop --"
                        f"{', --'.join(refused)} (it takes --{', --'.join(STUDENT_FLAGS)})")
    ckpt, source = load_checkpoint(cfg.teacher)
    saved = ckpt.get("train_config", {})
    cfg = dataclasses.replace(cfg, dataset=saved.get("dataset", "mnist"), p_uncond=0.0, teacher=str(source),
                              data_dir=cfg.data_dir if "data_dir" in typed else saved.get("data_dir", cfg.data_dir),
                              teacher_sha256=file_digest(source, "sha256"))
    flags = {name: getattr(args, name) for name in STUDENT_FLAGS if name in typed}
    diffusion_cfg = DiffusionConfig(process=Flow.name, few_steps=STUDENT_STEPS, **flags)
    return cfg, ModelConfig(**ckpt["model_config"]), diffusion_cfg


def check_teacher(teacher, source, saved):
    """Refuse a --teacher typed to resume the run in `source` (its train_config `saved`) that is that
    run's own checkpoint (its folder, a link or a step file included), or another file than the
    teacher it learns from (by SHA-256; a run with no teacher has none)."""
    teacher_file = load_checkpoint(teacher)[1] if teacher else None
    if teacher_file and main_path(Path(teacher_file).resolve()) == main_path(Path(source).resolve()):
        raise UserError(f"--teacher {teacher} is the checkpoint this run trains into ({main_path(source)}); give "
                        "the student another --checkpoint_path")
    if (file_digest(teacher_file, "sha256") if teacher_file else "") == saved.get("teacher_sha256", ""):
        return
    if not saved.get("teacher"):
        raise UserError(f"{source} was trained without a --teacher; train a student into another --checkpoint_path")
    raise UserError(f"{source} is the student of {saved['teacher']}; --teacher {teacher or repr('')} is another file "
                    "(resume without --teacher, or train a new student into another --checkpoint_path)")


def pairs_path(cfg):
    return Path(f"{cfg.checkpoint_path}.pairs.pt")


def teacher_pairs(cfg, device, amp, start, stop):
    """The Data of the teacher's pairs (digits as uint8 images, labels, noise) on `device`: read from
    pairs_path(cfg) if it holds this teacher's, else made (and saved) for --pairs digits or until
    PAIR_SHARE of the --minutes budget since `start` has passed. None when a signal came first (stop:
    train.py's {"signal": ...}, read between batches); nothing is saved then."""
    path = pairs_path(cfg)
    if path.is_file():
        return saved_pairs(path, cfg, device)
    ckpt, source = load_checkpoint(cfg.teacher)
    if file_digest(source, "sha256") != cfg.teacher_sha256:
        raise UserError(f"{source} has changed since this student began (its SHA-256 differs); put its teacher back "
                        "to make the pairs again, or train a new student into another --checkpoint_path")
    check_pairs_fit(cfg.pairs, ckpt["model_config"], device)
    teacher, process = load_model(ckpt, source, True, device)
    deadline = start + PAIR_SHARE * cfg.minutes * 60 if not (cfg.total_steps or cfg.epochs or cfg.plan) else None
    generator = torch.Generator(device=device).manual_seed(cfg.seed + PAIR_SEED)
    shape, s = (teacher.config.in_channels, teacher.config.image_size, teacher.config.image_size), TEACHER_SAMPLING
    labels = every_digit(cfg.pairs, teacher.config.num_classes, device)
    images, noises, batch, began = [], [], PAIR_BATCH, time.perf_counter()
    for first in tqdm(range(0, cfg.pairs, batch), desc=f"teacher pairs ({s.describe()})", leave=False):
        if distributed.any_rank(stop["signal"] is not None):
            return None
        if first and distributed.from_rank0(int(deadline is not None and time.perf_counter() > deadline)):  # together
            tqdm.write(f"pairs: {first:,} of {cfg.pairs:,} made in {PAIR_SHARE:.0%} of the budget", file=sys.stderr)
            break
        if first == batch and distributed.is_main():
            say_pair_time(time.perf_counter() - began, cfg.pairs, deadline is not None)
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
        try:
            atomic_save({"images": images.cpu(), "labels": None if labels is None else labels.cpu(),
                         "noise": noise.cpu(), "classes": list(classes), "teacher": cfg.teacher,
                         "teacher_sha256": cfg.teacher_sha256, "sampling": s.describe()}, path)
        except (OSError, RuntimeError) as err:  # torch.save reports a failed write as a RuntimeError
            raise UserError(f"could not save the pairs to {path}: {write_failure(err)}") from None
    return Data(images, labels, classes, noise)


def saved_pairs(path, cfg, device):
    """The Data of the pairs file `path`, if it holds cfg.teacher's; else a one-line UserError."""
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
        data = Data(saved["images"], saved["labels"], tuple(saved["classes"]), saved["noise"])
        teacher_sha256 = saved["teacher_sha256"]
        sound = data.images.dtype == torch.uint8 and data.images.dim() == 4 and data.noise.shape == data.images.shape \
            and (data.labels is None or data.labels.shape == data.images.shape[:1])
    except Exception as err:  # noqa: BLE001 (a truncated archive, a damaged record, a missing entry: one answer)
        raise UserError(f"{path} is damaged ({type(err).__name__}); remove it and the pairs are made again") from None
    if not sound:
        raise UserError(f"{path} is damaged (its digits, noise and labels disagree); remove it and the pairs are "
                        "made again")
    if teacher_sha256 != cfg.teacher_sha256:
        raise UserError(f"{path} holds the pairs of another teacher; remove it or train into another --checkpoint_path")
    print(f"{len(data.images):,} pairs of the teacher from {path}", file=sys.stderr)
    return data


def check_pairs_fit(pairs, model_config, device):
    """Refuse, in one line, --pairs whose digits (uint8) and noise (float32) exceed the memory free on `device`."""
    per_pair = 5 * model_config["in_channels"] * model_config["image_size"] ** 2
    free = free_bytes(torch.device(device))
    if free is not None and pairs * per_pair > USABLE * free:
        raise UserError(f"--pairs {pairs} needs about {pairs * per_pair / 2 ** 30:.1f} GiB for the digits and their "
                        f"noise, more than the {free / 2 ** 30:.1f} GiB free on {torch.device(device).type}; try "
                        f"--pairs {int(USABLE * free // per_pair)} or less")


def say_pair_time(seconds, pairs, budgeted):
    """One line on stderr: how long the pairs will take at the pace of the first batch."""
    total = seconds * -(-pairs // PAIR_BATCH)
    took = f"{total / 3600:,.1f} h" if total >= 3600 else f"{total / 60:.1f} min"
    tqdm.write(f"pairs: {seconds:.1f} s for the first {PAIR_BATCH}, about {took} for {pairs:,}"
               + (f" (or {PAIR_SHARE:.0%} of the budget, if less)" if budgeted else ""), file=sys.stderr)

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

--distill dmd learns the teacher's distribution instead of its ODE's map (training/dmd.py): no
pairs, one step.
"""
import copy
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
from training.dmd import DistributionMatching
from utils import distributed
from utils.checkpoint import atomic_save, load_checkpoint, load_weights, main_path, write_failure
from utils.config import ModelConfig
from utils.datasets import Data
from utils.errors import UserError
from utils.memory import USABLE, free_bytes
from utils.mnist import file_digest

TEACHER_SAMPLING = SamplingConfig(eta=0.0)  # the default sampler as an ODE: one digit per noise
PAIR_SHARE = 0.4                             # of a --minutes budget, at most, for the pairs
PAIR_SEED = 2 ** 30                          # the pairs' noise: from --seed + PAIR_SEED
PAIR_BATCH = 250                             # pairs made per batch
STUDENT_FLAGS = ("t_sampling", "weighting", "min_snr_gamma")  # the DiffusionConfig flags a flow student takes


@dataclasses.dataclass(frozen=True)
class Method:
    """How a student learns from its teacher (--distill)."""
    few_steps: int            # the steps its student samples in unless told (inference.py --steps to change)
    pairs: bool               # it learns the teacher's pairs (else the data set gives it labels only)
    objective: type = None    # what it trains by, with the teacher and a critic (None: its process's loss)
    defaults: dict = dataclasses.field(default_factory=dict)  # its own TrainConfig values, for flags not typed


METHODS = {"reflow": Method(2, pairs=True),
           "dmd": Method(1, pairs=False, objective=DistributionMatching,  # tuned in docs/NOTEBOOK.md
                         defaults={"lr": 3e-4, "warmup_steps": 20, "batch_size": 64})}


@dataclasses.dataclass
class Student:
    """A --teacher run as train.py sees it, through Student.of (its one call into this file): a fresh
    student's configs, then the run's pairs, a fresh student's first weights (start) and what it
    trains by (objective). The teacher's checkpoint is read once, and hashed once."""
    method: Method
    configs: tuple = None     # a fresh student's (TrainConfig, ModelConfig, DiffusionConfig); None: resumed
    teacher: tuple = None     # the teacher's (checkpoint, file), once read
    first: tuple = None       # the (checkpoint, file) whose EMA a fresh student starts from

    @classmethod
    def of(cls, cfg, args, typed, ckpt=None, source=None):
        """The Student of a run with a teacher, else None: a fresh one (ckpt None) with its teacher's
        configs; one resuming the checkpoint `ckpt` from `source` keeps its teacher (check_teacher)
        and its --distill."""
        if ckpt is None:
            if not cfg.teacher and "distill" in typed:
                raise UserError("--distill is how a student learns from its --teacher; give a --teacher")
            if not cfg.teacher:
                return None
            if cfg.distill not in METHODS:
                raise UserError(f"--distill {cfg.distill}: choose {' or '.join(METHODS)}")
            student = cls(METHODS[cfg.distill], teacher=load_checkpoint(cfg.teacher))
            if not student.method.pairs and "pairs" in typed:
                raise UserError(f"--pairs: a --distill {cfg.distill} student makes no pairs; drop --pairs")
            student.configs = student_configs(cfg, args, typed, *student.teacher, student.method)
            student.first = student.start_checkpoint(cfg, typed) if "start_from" in typed else student.teacher
            return student
        if "start_from" in typed:
            raise UserError("--start_from sets a fresh student's first weights; resume without it")
        saved = ckpt.get("train_config", {})
        if "teacher" in typed:
            check_teacher(cfg.teacher, source, saved)
        if "distill" in typed and cfg.distill != saved.get("distill", "reflow"):
            raise UserError(f"{source} learns by --distill {saved.get('distill', 'reflow')}; resume without "
                            "--distill, or train a new student into another --checkpoint_path")
        return cls(METHODS[saved.get("distill", "reflow")]) if saved.get("teacher") else None

    def pairs(self, cfg, device, amp, start, stop):
        """The run's data, the teacher's pairs (teacher_pairs); None if a signal came first."""
        return teacher_pairs(cfg, device, amp, start, stop, self.teacher_of(cfg))

    def start(self, model):
        """A fresh student's first weights (and so its EMA's): its teacher's EMA, or --start_from's."""
        load_weights(model, self.first[0]["ema"], self.first[1])

    def start_checkpoint(self, cfg, typed):
        """The (checkpoint, file) of --start_from: a flow model with the teacher's network, for --distill dmd."""
        if self.method.pairs:
            raise UserError(f"--start_from is for --distill dmd; a --distill {cfg.distill} student starts as its "
                            "teacher")
        ckpt, source = load_checkpoint(cfg.start_from)
        if ckpt.get("diffusion_config", {}).get("process") != Flow.name or \
                ModelConfig(**ckpt.get("model_config", {})) != ModelConfig(**self.teacher[0]["model_config"]):
            raise UserError(f"--start_from {cfg.start_from}: not a flow model with the teacher's network (a "
                            "reflow student of the same teacher is one)")
        return ckpt, source

    def objective(self, cfg, process, device, ranks=(0, 1)):
        """What the student trains by: None (its process's loss), or its method's objective, given
        the teacher and, as the critic's first weights, a copy of it (training/dmd.py)."""
        if self.method.objective is None:
            return None
        teacher, teacher_process = load_model(*self.teacher_of(cfg), True, device)
        return self.method.objective(process, teacher, teacher_process, copy.deepcopy(teacher), cfg, ranks)

    def teacher_of(self, cfg):
        """The teacher's (checkpoint, file), read once (read_teacher)."""
        if self.teacher is None:
            self.teacher = read_teacher(cfg)
        return self.teacher


def read_teacher(cfg):
    """cfg.teacher's (checkpoint, file), refused if it changed since the student began (by SHA-256)."""
    ckpt, source = load_checkpoint(cfg.teacher)
    if file_digest(source, "sha256") != cfg.teacher_sha256:
        raise UserError(f"{source} has changed since this student began (its SHA-256 differs); put its teacher back, "
                        "or train a new student into another --checkpoint_path")
    return ckpt, source


def student_configs(cfg, args, typed, ckpt, source, method):
    """(TrainConfig, ModelConfig, DiffusionConfig) of a fresh student of the teacher `ckpt` read from
    `source`: the teacher's network, data set and --data_dir (unless typed), flow matching with the
    STUDENT_FLAGS typed in `args` sampling in the method's few steps, no label dropout (every pair
    has its label)."""
    fields = {f.name for f in (*dataclasses.fields(ModelConfig), *dataclasses.fields(DiffusionConfig))}
    refused = sorted(typed & fields - set(STUDENT_FLAGS))
    if refused:
        raise UserError("--teacher: the student is a flow model with the teacher's network; drop --"
                        f"{', --'.join(refused)} (it takes --{', --'.join(STUDENT_FLAGS)})")
    saved = ckpt.get("train_config", {})
    cfg = dataclasses.replace(cfg, **{k: v for k, v in method.defaults.items() if k not in typed})
    cfg = dataclasses.replace(cfg, dataset=saved.get("dataset", "mnist"), p_uncond=0.0, teacher=str(source),
                              data_dir=cfg.data_dir if "data_dir" in typed else saved.get("data_dir", cfg.data_dir),
                              teacher_sha256=file_digest(source, "sha256"))
    flags = {name: getattr(args, name) for name in STUDENT_FLAGS if name in typed}
    diffusion_cfg = DiffusionConfig(process=Flow.name, few_steps=method.few_steps, **flags)
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


def teacher_pairs(cfg, device, amp, start, stop, teacher=None):
    """The Data of the teacher's pairs (digits as uint8 images, labels, noise) on `device`: read from
    <checkpoint>.pairs.pt if it holds this teacher's, else made (and saved) for --pairs digits or until
    PAIR_SHARE of the --minutes budget since `start` has passed. None when a signal came first (stop:
    train.py's {"signal": ...}, read between batches); nothing is saved then. teacher: its
    (checkpoint, file), else read by read_teacher."""
    path = Path(f"{cfg.checkpoint_path}.pairs.pt")
    if path.is_file():
        return saved_pairs(path, cfg, device)
    ckpt, source = teacher or read_teacher(cfg)
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

"""Checkpoints: one self-describing dict, written atomically, loaded without running code.

Layout (FORMAT_VERSION 1), written by training_state() and read back by restore_training():
    format_version, model_config, diffusion_config, train_config   plain dicts
    model, ema            state dicts of the unwrapped, uncompiled U-Net (no module./_orig_mod.)
    optimizer, lr_scheduler, grad_scaler, step, epoch, rng, bad_steps    the training state
Every script loads through load_checkpoint(); it uses torch.load(weights_only=True) with no
fallback, then checks the tensors (dense, float32, finite) and the configs before any
load_state_dict(strict=True).
"""
import dataclasses
import os
import pickle
import re
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from utils.config import DiffusionConfig, ModelConfig
from utils.errors import UserError

FORMAT_VERSION = 1
TRAINING_STATE = ("train_config", "optimizer", "lr_scheduler", "grad_scaler", "bad_steps", "rng")
STEP_SUFFIX = re.compile(r"^(?P<base>.+)_step(?P<step>\d+)$")


# ---- contents ------------------------------------------------------------------------------

def training_state(configs, model, ema_model, optimizer, scheduler, scaler, step, epoch, bad_steps, device,
                   classes=()):
    """Everything a run needs to continue exactly: `configs` holds the model, diffusion and train
    config dataclasses; `model` and `ema_model` are the plain modules (not compiled, not DDP);
    `classes` names the labels, for figures."""
    model_cfg, diffusion_cfg, train_cfg = configs
    return {
        "format_version": FORMAT_VERSION,
        "model_config": dataclasses.asdict(model_cfg),
        "diffusion_config": dataclasses.asdict(diffusion_cfg),
        "train_config": dataclasses.asdict(train_cfg),
        "model": model.state_dict(),
        "ema": ema_model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict(),
        "grad_scaler": scaler.state_dict(),  # empty unless the run used fp16
        "step": step,
        "epoch": epoch,
        "bad_steps": bad_steps,
        "classes": list(classes),
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
    }


def restore_training(ckpt, path, model, ema_model, optimizer, scaler, device):
    """Load a checkpoint's training state into a fresh run; returns (step, bad_steps). The LR
    schedule is rebuilt from the step (see train.py)."""
    missing = [key for key in TRAINING_STATE if key not in ckpt]
    if missing:
        raise UserError(f"{path} cannot be resumed: it lacks the training state {', '.join(missing)}")
    load_weights(model, ckpt["model"], path)
    load_weights(ema_model, ckpt["ema"], path)
    kernel = {key: optimizer.param_groups[0][key] for key in ("fused", "foreach", "capturable")}
    optimizer.load_state_dict(ckpt["optimizer"])
    for group in optimizer.param_groups:  # this run's AdamW kernel, not the one saved (CPU or GPU, older runs)
        group.update(kernel)
    if ckpt["grad_scaler"]:
        scaler.load_state_dict(ckpt["grad_scaler"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    if device.type == "cuda" and ckpt["rng"]["cuda"] is not None:
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
    return ckpt["step"], ckpt["bad_steps"]


# ---- writing -------------------------------------------------------------------------------

def fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_save(obj, path):
    """torch.save to a temporary file in the same folder, fsync, os.replace, fsync the folder.

    A failure at any point leaves the previous file at `path` untouched and no temporary file.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_link(source, path):
    """Make `path` name the same file as `source`, atomically (hard link, else a copy)."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.link.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:  # file systems without hard links: write a second copy instead
        atomic_save(torch.load(source, map_location="cpu", weights_only=True), path)
        return
    os.replace(tmp, path)
    fsync_dir(path.parent)


def step_files(path):
    """Step-numbered checkpoints next to `path`, oldest first."""
    path = Path(path)
    found = []
    for candidate in path.parent.glob(f"{path.name}_step*"):
        match = STEP_SUFFIX.match(candidate.name)
        if match and match["base"] == path.name:
            found.append((int(match["step"]), candidate))
    return [p for _, p in sorted(found)]


def save_checkpoint(state, path, keep_last=0):
    """Write `state` to `path`; with keep_last > 0 also keep that many step-numbered copies.

    The step file is written first and the main path then points at it, so old files are only
    deleted once the new one is safely in place. Refuses to write non-finite tensors.
    """
    bad = [name for name, tensor in _tensors(state) if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise ValueError(f"refusing to save non-finite tensors: {', '.join(bad[:5])}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if keep_last == 0:
        atomic_save(state, path)
        return
    step_path = path.parent / f"{path.name}_step{state['step']:07d}"
    atomic_save(state, step_path)
    atomic_link(step_path, path)
    for old in step_files(path)[:-keep_last]:
        old.unlink(missing_ok=True)


def _tensors(obj, prefix=""):
    """(name, tensor) for every tensor nested in dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _tensors(value, f"{prefix}[{i}]")


# ---- reading -------------------------------------------------------------------------------

def candidates(folder):
    """Checkpoint files in a folder, newest first (by step number, then modification time)."""
    files = [p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith(".")]

    def key(p):
        match = STEP_SUFFIX.match(p.name)
        return (int(match["step"]) if match else -1, p.stat().st_mtime)

    return sorted(files, key=key, reverse=True)


def main_path(path):
    """The main checkpoint path that a step-numbered file belongs to."""
    path = Path(path)
    match = STEP_SUFFIX.match(path.name)
    return path.parent / match["base"] if match else path


def load_checkpoint(path, default_folder="checkpoints"):
    """Load and validate a checkpoint; return (checkpoint dict, the file it came from).

    `path` may be a file, a folder, or 'latest' (= the default folder): for a folder the newest
    valid checkpoint is used, skipping corrupt files with a warning.
    """
    path = Path(default_folder if str(path) == "latest" else path)
    if not path.exists():
        raise UserError(f"no checkpoint at {path}")
    if not path.is_dir():
        return _load_file(path), path
    for candidate in candidates(path):
        try:
            return _load_file(candidate), candidate
        except UserError as err:
            print(f"warning: skipping {candidate}: {err}", file=sys.stderr)
    raise UserError(f"{path} is a folder with no valid checkpoint in it")


def _load_file(path):
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a checkpoint file")
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; its directory is at the end
        raise UserError(f"{path} is truncated or not a checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only refused something: never fall back
        raise UserError(f"{path} was refused: it holds objects a checkpoint never has ({str(err).splitlines()[0][:120]})") from None
    except Exception as err:  # damaged archive members, bad records
        raise UserError(f"{path} is corrupt and cannot be loaded ({type(err).__name__})") from None
    validate(ckpt, path)
    return ckpt


REQUIRED = ("format_version", "model_config", "diffusion_config", "model", "ema", "step")


def validate(ckpt, path):
    if not isinstance(ckpt, dict) or any(key not in ckpt for key in REQUIRED):
        raise UserError(f"{path} is not a checkpoint of this project")
    if ckpt["format_version"] != FORMAT_VERSION:
        raise UserError(f"{path} has format version {ckpt['format_version']}; this code reads {FORMAT_VERSION}")
    for key, cls in (("model_config", ModelConfig), ("diffusion_config", DiffusionConfig)):
        try:
            cls(**ckpt[key])
        except (TypeError, UserError) as err:
            raise UserError(f"{path} has an invalid {key}: {err}") from None
    for name, tensor in _tensors({"model": ckpt["model"], "ema": ckpt["ema"], "optimizer": ckpt.get("optimizer")}):
        if tensor.layout != torch.strided:
            raise UserError(f"{path}: tensor {name} is not dense")
        if tensor.dtype != torch.float32:
            raise UserError(f"{path}: tensor {name} has dtype {tensor.dtype}, expected float32")
        if not torch.isfinite(tensor).all():
            raise UserError(f"{path}: tensor {name} has NaN or Inf values")


def config_mismatch(saved, requested, fields):
    """'name: saved X, requested Y' for each field in `fields` that differs."""
    return [f"{name}: checkpoint has {saved[name]!r}, requested {requested[name]!r}"
            for name in fields if saved[name] != requested[name]]


def load_weights(model, state_dict, path):
    """load_state_dict(strict=True), with shape problems reported as one line."""
    expected = model.state_dict()
    wrong = [k for k in expected if k not in state_dict or state_dict[k].shape != expected[k].shape]
    extra = [k for k in state_dict if k not in expected]
    if wrong or extra:
        raise UserError(f"{path}: weights do not fit the model in its config "
                        f"(mismatched: {', '.join((wrong + extra)[:5])})")
    model.load_state_dict(state_dict, strict=True)

"""Checkpoint files: one self-describing dict (its layout: training/state.py), written atomically
by one run at a time, loaded without running code: every script loads through load_checkpoint(),
which uses torch.load(weights_only=True) with no fallback, brings files of earlier versions up to
date in one place (migrate), then checks the tensors (dense, float32, finite) and the network's
config before any load_state_dict(strict=True); the process's config is checked where it is built
(models/load.py's diffusion_config).
"""
import errno
import os
import pickle
import re
import socket
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from utils.config import CHECKPOINT_DIR, ModelConfig
from utils.errors import UserError

FORMAT_VERSION = 2
STEP_SUFFIX = re.compile(r"^(?P<base>.+)_step(?P<step>\d+)$")


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


def atomic_save(obj, path):
    """torch.save to a temporary file in the same folder, fsync, os.replace, fsync the folder: a
    failure at any point leaves the previous file at `path` untouched and no temporary file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        mask = os.umask(0)  # reading the umask means setting it: put it back at once
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600; give the usual permissions
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


def step_number(path):
    match = STEP_SUFFIX.match(Path(path).name)
    return int(match["step"]) if match else -1


def save_checkpoint(state, path, keep_last=0):
    """Write `state` (never a non-finite tensor) to `path`; with keep_last > 0 also keep that many
    step-numbered copies, the step file written first and the main path then pointed at it, so old files
    are only deleted once the new one is safely in place. A failed write (a full disk, a size limit)
    leaves the previous files as they were and is reported as one line naming the last good checkpoint."""
    bad = [name for name, tensor in _tensors(state) if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise ValueError(f"refusing to save non-finite tensors: {', '.join(bad[:5])}")
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if keep_last == 0:
            atomic_save(state, path)
        else:
            step_path = path.parent / f"{path.name}_step{state['step']:07d}"
            atomic_save(state, step_path)
            atomic_link(step_path, path)
            step_files = [p for p in path.parent.glob(f"{path.name}_step*") if main_path(p) == path]
            for old in sorted(step_files, key=step_number)[:-keep_last]:
                old.unlink(missing_ok=True)
    except (OSError, RuntimeError) as err:  # torch.save reports a failed write as a RuntimeError
        last = f"the last good checkpoint is {path}" if path.is_file() else "no checkpoint was saved before"
        raise UserError(f"could not save the checkpoint to {path}: {write_failure(err)}; {last}") from None


def write_failure(err):
    """Why a write failed, in words: the disk is full (or a size limit was hit), or the OS's message."""
    cause = err
    while cause is not None and not isinstance(cause, OSError):  # torch.save's RuntimeError wraps the OSError
        cause = cause.__cause__ or cause.__context__
    if cause is not None and cause.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"the disk is full or a file-size limit was hit ({cause.strerror})"
    return str(cause or err).splitlines()[0]


def lock_checkpoint(path):
    """Hold <folder>/.<name>.lock while this process trains into `path`, so that a second run on the same
    checkpoint stops with one line; return the open lock file (closing it releases the lock), or None
    where flock does not exist. The lock is flock's: it ends with the process however that ends (even
    kill -9), so a stale lock file never blocks a resume. In one process the latest call wins: a run
    that ended by an exception (whose traceback may keep its lock file open) never blocks the next."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        return None
    path = Path(path).resolve()
    if path in _HELD:
        _HELD.pop(path).close()
    lock_file = path.parent / f".{path.name}.lock"
    while True:
        created = not lock_file.exists()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = open(lock_file, "a+")
        except OSError as err:
            raise UserError(f"cannot write to {path.parent}: {err.strerror or err}") from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            raise UserError(f"{path} is being trained by {holder}; wait for it to end, stop it, or give another "
                            "--checkpoint_path") from None
        if lock_file.exists() and os.fstat(lock.fileno()).st_ino == os.stat(lock_file).st_ino:
            break
        lock.close()  # the file was removed by a refused run after we opened it: take the new one
    lock.truncate(0)
    lock.write(f"process {os.getpid()} on {socket.gethostname()}")
    lock.flush()
    lock.made_here = created
    _HELD[path] = lock
    return lock


def release_locks():
    """Close every checkpoint lock this process holds, removing the lock file of a run that made it and
    ends with no checkpoint at its path (a refusal or a failure before the first save)."""
    for path, lock in list(_HELD.items()):
        if lock.made_here and not path.exists():
            Path(lock.name).unlink(missing_ok=True)  # while still held: a run waiting on it then retries
        lock.close()
        del _HELD[path]


_HELD = {}  # checkpoint path -> the lock file this process holds for it


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

def main_path(path):
    """The main checkpoint path that a step-numbered file belongs to."""
    path = Path(path)
    match = STEP_SUFFIX.match(path.name)
    return path.parent / match["base"] if match else path


def load_checkpoint(path):
    """(the checkpoint dict, the file it came from). `path` may be a file, a folder, or 'latest' (= checkpoints/):
    for a folder the newest valid file (by step number, then modification time); corrupt ones are skipped, warned."""
    path = Path(CHECKPOINT_DIR if str(path) == "latest" else path)
    if not path.exists():
        raise UserError(f"no checkpoint at {path}")
    if not path.is_dir():
        return _load_file(path), path
    files = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
    for candidate in sorted(files, key=lambda p: (step_number(p), p.stat().st_mtime), reverse=True):
        try:
            return _load_file(candidate), candidate
        except UserError as err:
            print(f"warning: skipping {candidate}: {err}", file=sys.stderr)
    raise UserError(f"{path} is a folder with no valid checkpoint in it")


def _load_file(path):
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; its directory is at the end
        raise UserError(f"{path} is truncated or not a checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only refused something: never fall back
        raise UserError(f"{path} was refused: it holds objects a checkpoint never has "
                        f"({str(err).splitlines()[0][:120]})") from None
    except Exception as err:  # damaged archive members, bad records
        raise UserError(f"{path} is corrupt and cannot be loaded ({type(err).__name__})") from None
    if not isinstance(ckpt, dict) or any(key not in ckpt for key in REQUIRED):
        raise UserError(f"{path} is not a checkpoint of this project")
    ckpt = migrate(ckpt, path)
    validate(ckpt, path)
    return ckpt


REQUIRED = ("format_version", "model_config", "diffusion_config", "model", "ema", "step")


def migrate(ckpt, path):
    """Bring a checkpoint of an earlier format up to this one, in memory. Version 1: MNIST unless saved, the
    process DDPM, and a run whose train_config lacks seed_scheme 2 (other data-order and noise seeds) samples
    and evaluates but cannot resume exactly (not_resumable says why). Any version: a run with VDM's t_density
    (dropped after commit 829065b) or logit_normal times (after commit b69b20f) likewise; a file from before
    clip_x0 (a flag up to commit b4b2019) gets the unclamped denoiser it trained as; one from before --weighting
    and --t_sampling, its process's own."""
    version = ckpt["format_version"]
    if version not in (1, FORMAT_VERSION):
        raise UserError(f"{path} has format version {version}; this code reads 1 and {FORMAT_VERSION}")
    ckpt["diffusion_config"].setdefault("clip_x0", False)
    if ckpt["diffusion_config"].pop("t_density", ()):
        ckpt["not_resumable"] = ("it trained with --t_density, which this version no longer has (a resumed run would "
                                 "draw other times); it still samples and evaluates")
    if ckpt["diffusion_config"].get("t_sampling") == "logit_normal":
        del ckpt["diffusion_config"]["t_sampling"]  # its process's own, which only training reads
        ckpt["not_resumable"] = ("it trained with --t_sampling logit_normal, which this version no longer has; it "
                                 "still samples and evaluates")
    if version == 1:
        train_cfg = {"dataset": "mnist", **ckpt.get("train_config", {})}
        if train_cfg.pop("seed_scheme", 1) != 2:
            ckpt["not_resumable"] = ("it was written before the data order and noise seeds took their present "
                                     "form, so a resumed run would not continue it exactly; it still samples and "
                                     "evaluates")
        train_cfg.pop("class_cond", None)
        ckpt.update(format_version=FORMAT_VERSION, train_config=train_cfg,
                    diffusion_config={"process": "ddpm", **ckpt["diffusion_config"]})
    return ckpt


def validate(ckpt, path):
    """Check the network's config and every tensor ('latest' skips a file that fails them)."""
    try:
        ModelConfig(**ckpt["model_config"])
    except (TypeError, UserError) as err:
        raise UserError(f"{path} has an invalid model_config: {err}") from None
    for name, tensor in _tensors({"model": ckpt["model"], "ema": ckpt["ema"], "optimizer": ckpt.get("optimizer")}):
        if tensor.layout != torch.strided:
            raise UserError(f"{path}: tensor {name} is not dense")
        if tensor.dtype != torch.float32:
            raise UserError(f"{path}: tensor {name} has dtype {tensor.dtype}, expected float32")
        if not torch.isfinite(tensor).all():
            raise UserError(f"{path}: tensor {name} has NaN or Inf values")


def config_mismatch(saved, requested, fields):
    """'name: checkpoint has X, requested Y' for each field in `fields` that differs."""
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

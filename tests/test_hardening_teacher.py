"""Hardening of reflow distillation (train.py --teacher, training/distill.py) and of the shortcut
process's flags: each bad input gives one line and exit code 2 and leaves every file as it was; the
teacher's pairs are written atomically, stop on a signal, and say how long they will take. The
teacher's sampler is replaced by one that returns its noise, so that pairs take no time."""
import errno
import hashlib
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import train
from conftest import TINY_MODEL
from diffusion.config import DiffusionConfig
from models.load import SHIPPED_MODEL
from test_train import exit_code
from training import distill
from utils.checkpoint import load_checkpoint
from utils.datasets import checkpoint_data
from utils.errors import UserError


@pytest.fixture
def quick_teacher(monkeypatch):
    """The teacher's sampler returns its noise; the list holds each batch's size."""
    calls = []

    def noise_as_digits(sampler, denoise, process, noise, *args, **kwargs):
        calls.append(len(noise))
        return noise.clamp(-1, 1)

    monkeypatch.setattr(distill, "sample", noise_as_digits)
    return calls


@pytest.fixture
def own_signal_handlers():
    """train.main installs SIGTERM and SIGINT handlers; put pytest's back afterwards."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def student_args(tmp_path, *extra, teacher=SHIPPED_MODEL, name="student"):
    return ["--teacher", str(teacher), "--pairs", "20", "--total_steps", "4", "--batch_size", "16", "--warmup_steps",
            "0", "--save_every", "2", "--log_every", "1", "--num_grid_samples", "0",
            "--checkpoint_path", str(tmp_path / name), "--output_dir", str(tmp_path / "out"), *extra]


def files(folder):
    """{path: SHA-256} of every file under `folder`."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in Path(folder).rglob("*") if p.is_file()}


def one_line(code, err):
    """Exit code 2 and one line 'error: ...', the last (a progress bar may have run before it)."""
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("error: ") and "Traceback" not in err, (code, err)
    assert sum("error" in line for line in lines) == 1, err


@pytest.mark.parametrize("teacher, checkpoint", [("run/ck", "run/ck"), ("run/ck", "run"), ("run", "run/ck"),
                                                 ("link", "run/ck"), ("run/ck", "link")])
def test_a_teacher_that_is_the_checkpoint_trained_into_is_refused_before_anything_is_written(
        teacher, checkpoint, tmp_path, capsys, quick_teacher):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "ck").write_bytes(SHIPPED_MODEL.read_bytes())
    (tmp_path / "link").symlink_to(tmp_path / "run" / "ck")
    before = files(tmp_path)
    code, err = exit_code(train.main, student_args(tmp_path, teacher=tmp_path / teacher, name=checkpoint), capsys)
    one_line(code, err)
    assert "is the checkpoint this run trains into" in err and files(tmp_path) == before
    assert not quick_teacher


def test_a_resumed_student_refuses_another_teacher_and_takes_its_own_again(tmp_path, capsys, quick_teacher):
    train.main(student_args(tmp_path, "--max_steps", "2"))
    capsys.readouterr()
    other = torch.load(SHIPPED_MODEL, weights_only=True)
    torch.save({**other, "step": other["step"] + 1}, tmp_path / "other.pt")  # a valid checkpoint, another file
    (tmp_path / "copy.pt").write_bytes(SHIPPED_MODEL.read_bytes())  # the same teacher, elsewhere
    before = files(tmp_path)
    for teacher, message in ((tmp_path / "other.pt", "is another file"), ("", "is another file"),
                             (tmp_path / "student", "is the checkpoint this run trains into"),
                             (tmp_path / "student_step0000002", "is the checkpoint this run trains into")):
        code, err = exit_code(train.main, student_args(tmp_path, "--max_steps", "3", teacher=teacher), capsys)
        one_line(code, err)
        assert message in err and files(tmp_path) == before, err
    train.main(student_args(tmp_path, "--max_steps", "3", teacher=tmp_path / "copy.pt"))
    ckpt = load_checkpoint(tmp_path / "student")[0]
    assert ckpt["step"] == 3 and ckpt["train_config"]["teacher_sha256"] == hashlib.sha256(
        SHIPPED_MODEL.read_bytes()).hexdigest()


def test_a_plain_run_resumed_with_a_teacher_is_refused(tmp_path, capsys, quick_teacher):
    train.main(student_args(tmp_path, "--max_steps", "2"))
    capsys.readouterr()
    ckpt = torch.load(tmp_path / "student", weights_only=True)
    ckpt["train_config"].update(teacher="", teacher_sha256="")  # as a run without --teacher saves it
    torch.save(ckpt, tmp_path / "plain")
    before = files(tmp_path)
    code, err = exit_code(train.main, student_args(tmp_path, name="plain"), capsys)
    one_line(code, err)
    assert "trained without a --teacher" in err and files(tmp_path) == before


def test_a_full_disk_while_saving_the_pairs_leaves_no_pairs_file(tmp_path, capsys, monkeypatch, quick_teacher):
    def full_disk(obj, f, *args, **kwargs):  # some bytes written, then the disk is full
        if isinstance(f, (str, os.PathLike)):
            with open(f, "wb") as out:
                out.write(b"PK" + bytes(1000))
        else:
            f.write(b"PK" + bytes(1000))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    code, err = exit_code(train.main, student_args(tmp_path), capsys)
    one_line(code, err)
    assert "could not save the pairs" in err and "the disk is full" in err
    assert not [p for p in tmp_path.iterdir() if p.is_file()], list(tmp_path.iterdir())  # no pairs, no temp file


def pairs_file(path, n=20):
    torch.save({"images": torch.zeros(n, 1, 28, 28, dtype=torch.uint8), "labels": torch.arange(n) % 10,
                "noise": torch.zeros(n, 1, 28, 28), "classes": [str(d) for d in range(10)], "teacher": "t",
                "teacher_sha256": hashlib.sha256(SHIPPED_MODEL.read_bytes()).hexdigest(), "sampling": ""}, path)


@pytest.mark.parametrize("damage", ["truncated", "other dict", "text", "bad shapes"])
def test_a_damaged_pairs_file_is_one_line_and_left_as_it_is(damage, tmp_path, capsys, quick_teacher):
    path = tmp_path / "student.pairs.pt"
    if damage == "truncated":
        pairs_file(path)
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    elif damage == "other dict":
        torch.save({"images": torch.zeros(3)}, path)
    elif damage == "text":
        path.write_text("not pairs\n")
    else:
        pairs_file(path)
        pairs = torch.load(path)
        torch.save({**pairs, "noise": pairs["noise"][:5]}, path)
    before = files(tmp_path)
    code, err = exit_code(train.main, student_args(tmp_path), capsys)
    one_line(code, err)
    assert "is damaged" in err and "remove it and the pairs are made again" in err and files(tmp_path) == before


def test_a_student_keeps_its_typed_flags_and_the_teacher_s_data_folder(tmp_path, capsys, quick_teacher):
    digits = tmp_path / "digits"
    for label in ("0", "1"):
        (digits / label).mkdir(parents=True)
        Image.new("L", (28, 28), 255 * int(label)).save(digits / label / "a.png")
    teacher = torch.load(SHIPPED_MODEL, weights_only=True)
    torch.save({**teacher, "train_config": {**teacher["train_config"], "dataset": "folder", "data_dir": str(digits)}},
               tmp_path / "teacher.pt")
    train.main(student_args(tmp_path, "--t_sampling", "uniform", "--weighting", "velocity", "--max_steps", "2",
                            teacher=tmp_path / "teacher.pt"))
    ckpt = load_checkpoint(tmp_path / "student")[0]
    assert ckpt["diffusion_config"]["t_sampling"] == "uniform"  # flow's own: stratified
    assert ckpt["diffusion_config"]["weighting"] == "velocity"
    assert ckpt["train_config"]["dataset"] == "folder" and ckpt["train_config"]["data_dir"] == str(digits)
    assert checkpoint_data(ckpt, False)[1].images.shape == (2, 1, 28, 28)  # what evaluate.py reads, untyped
    capsys.readouterr()
    before = files(tmp_path)
    code, err = exit_code(train.main, student_args(tmp_path, "--num_timesteps", "50", name="other"), capsys)
    one_line(code, err)
    assert "drop --num_timesteps" in err and files(tmp_path) == before


def test_a_shortcut_model_predicts_velocity():
    with pytest.raises(UserError, match="prediction eps is not for a shortcut model, which takes velocity"):
        DiffusionConfig(process="shortcut", prediction="eps")
    assert DiffusionConfig(process="shortcut", prediction="velocity").prediction == "velocity"


@pytest.mark.parametrize("flags, message", [
    (["--process", "shortcut", "--prediction", "eps"], "prediction eps is not for a shortcut model"),
    (["--process", "flow", "--bootstrap_guidance", "2"], "--bootstrap_guidance is for --process shortcut"),
    (["--bootstrap_guidance", "1"], "--bootstrap_guidance is for --process shortcut"),
    (["--teacher", str(SHIPPED_MODEL), "--bootstrap_guidance", "2"], "drop --bootstrap_guidance"),
])
def test_flags_for_another_process_are_refused(flags, message, tmp_path, capsys, mnist_dir, quick_teacher):
    args = [*TINY_MODEL, "--data_dir", mnist_dir, "--total_steps", "2", "--batch_size", "16", "--num_grid_samples",
            "0", "--checkpoint_path", str(tmp_path / "ck"), "--output_dir", str(tmp_path / "out"), "--pairs", "20"]
    if "--teacher" in flags:
        args = args[len(TINY_MODEL):]  # a student takes its teacher's network
    code, err = exit_code(train.main, [*args, *flags], capsys)
    one_line(code, err)
    assert message in err and not files(tmp_path)


def test_a_resumed_flow_run_refuses_bootstrap_guidance(tmp_path, capsys, quick_teacher):
    train.main(student_args(tmp_path, "--max_steps", "2"))
    capsys.readouterr()
    before = files(tmp_path)
    code, err = exit_code(train.main, [*student_args(tmp_path)[2:], "--bootstrap_guidance", "1"], capsys)
    one_line(code, err)
    assert "--bootstrap_guidance is for --process shortcut" in err and files(tmp_path) == before


def test_pairs_that_cannot_fit_in_memory_are_refused_before_any_work(tmp_path, capsys, monkeypatch):
    def no_pairs(*args, **kwargs):
        raise AssertionError("the pairs began")

    monkeypatch.setattr(distill, "sample", no_pairs)
    monkeypatch.setattr(distill, "free_bytes", lambda device: 2 ** 20, raising=False)  # 1 MiB free
    code, err = exit_code(train.main, student_args(tmp_path, "--pairs", "1000000"), capsys)
    one_line(code, err)
    assert "--pairs 1000000 needs about 3.7 GiB" in err and "try --pairs 240 or less" in err
    assert not files(tmp_path)


def test_the_pairs_say_after_their_first_batch_how_long_they_will_take(tmp_path, capsys, quick_teacher):
    train.main(student_args(tmp_path, "--pairs", "600", "--max_steps", "1"))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pairs: ")]
    assert quick_teacher == [250, 250, 100] and len(lines) == 1 and "for the first 250, about" in lines[0], lines
    assert "for 600" in lines[0]


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_while_the_pairs_are_made_exits_at_once_and_saves_nothing(signum, code, tmp_path, capsys,
                                                                          monkeypatch, own_signal_handlers):
    batches = []

    def signalled_after_the_first_batch(sampler, denoise, process, noise, *args, **kwargs):
        batches.append(len(noise))
        os.kill(os.getpid(), signum)  # as a scheduler's preemption or Ctrl-C would, handled by train.py
        return noise.clamp(-1, 1)

    monkeypatch.setattr(distill, "sample", signalled_after_the_first_batch)
    with pytest.raises(SystemExit) as info:
        train.main(student_args(tmp_path, "--pairs", "600"))
    err = capsys.readouterr().err
    assert info.value.code == code and batches == [250], (batches, err)
    assert err.strip().splitlines()[-1] == f"received {signal.Signals(signum).name}: stopped making the teacher's " \
                                            "pairs; nothing saved"
    assert not files(tmp_path)  # no pairs, no temporary file, no checkpoint, no lock
    monkeypatch.setattr(distill, "sample", lambda sampler, denoise, process, noise, *a, **k: noise.clamp(-1, 1))
    train.main(student_args(tmp_path, "--pairs", "600", "--max_steps", "1"))  # the next run makes them again
    assert len(torch.load(tmp_path / "student.pairs.pt")["images"]) == 600


def test_a_budget_spent_before_the_first_pair_still_makes_one_batch(tmp_path, quick_teacher):
    """The pairs' share of a --minutes budget runs from the start of the run; a budget already spent
    when the first batch begins (loading and hashing the teacher took longer) still makes one batch."""
    from contextlib import nullcontext

    from utils.config import TrainConfig
    from utils.mnist import file_digest
    cfg = TrainConfig(teacher=str(SHIPPED_MODEL), teacher_sha256=file_digest(SHIPPED_MODEL, "sha256"), pairs=600,
                      minutes=1.0, checkpoint_path=str(tmp_path / "student"))
    data = distill.teacher_pairs(cfg, torch.device("cpu"), nullcontext, time.perf_counter() - 3600, {"signal": None})
    assert quick_teacher == [distill.PAIR_BATCH] and len(data.labels) == distill.PAIR_BATCH

"""Hardening of the tools around training (issue #56): steps a model cannot take, a budget too large
to count, an unwritable checkpoint folder, the demo without Gradio, and the benchmarks' flags each
give one line and exit code 2, before any work and without writing a file."""
import errno
import os
import runpy
import sys

import pytest

import demo
import evaluate
import inference
import train
from benchmarks import time_to_quality
from conftest import TINY_MODEL
from models.load import SHIPPED_MODEL
from test_train import exit_code
from utils import checkpoint
from utils.checkpoint import lock_checkpoint, release_locks
from utils.errors import UserError


def error_lines(err):
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("script, extra", [
    (evaluate, ["--num_samples", "4"]),
    (inference, ["--num_samples", "4", "--no_show"]),
    (inference, ["--interpolate", "3", "--no_show"]),
])
def test_more_steps_than_the_model_has_are_one_line(script, extra, tmp_path, mnist_dir, capsys):
    out = tmp_path / "out"
    argv = ["--checkpoint_path", str(SHIPPED_MODEL), "--sampler", "ddim", "--steps", "1001", *extra,
            *(["--data_dir", mnist_dir, "--out", str(out / "e.json")] if script is evaluate else
              ["--output_dir", str(out)])]
    code, err = exit_code(script.main, argv, capsys)
    assert code == 2 and error_lines(err) == ["error: --steps: steps must be in [1, 1000], got 1001"], err
    assert not out.exists()


def test_a_budget_too_large_to_count_is_refused_before_training(tmp_path, mnist_dir, capsys):
    code, err = exit_code(train.main, [*TINY_MODEL, "--minutes", "1e308", "--data_dir", mnist_dir,
                                       "--checkpoint_path", str(tmp_path / "ck"),
                                       "--output_dir", str(tmp_path / "out")], capsys)
    assert code == 2 and error_lines(err) == ["error: --minutes must be in [0, 1e6], got 1e+308"], err
    assert not list(tmp_path.iterdir())


def deny(path, *args, **kwargs):
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))


def test_an_unwritable_checkpoint_folder_is_one_line(tmp_path, mnist_dir, monkeypatch, capsys):
    monkeypatch.setattr(checkpoint, "open", deny, raising=False)  # root writes through chmod: refuse the lock file
    folder = (tmp_path / "run").resolve()
    code, err = exit_code(train.main, [*TINY_MODEL, "--data_dir", mnist_dir, "--checkpoint_path", str(folder / "ck"),
                                       "--output_dir", str(tmp_path / "out")], capsys)
    assert code == 2 and error_lines(err) == [f"error: cannot write to {folder}: Permission denied"], err
    assert not list(folder.iterdir()) and not (tmp_path / "out").exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_checkpoint_folder_is_refused_by_its_lock(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(UserError, match="cannot write to .*ro: Permission denied"):
            lock_checkpoint(folder / "ck")
    finally:
        folder.chmod(0o700)
        release_locks()


def test_the_demo_without_gradio_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError
    code, err = exit_code(demo.main, ["--checkpoint_path", str(SHIPPED_MODEL)], capsys)
    assert code == 2 and error_lines(err) == [
        "error: the demo needs Gradio: pip install -r requirements-demo.txt"], err


class Calls:
    """evaluate.main and train_until in time_to_quality's place: record the calls, do no work."""

    def __init__(self, monkeypatch):
        self.evaluations, self.trainings = [], []
        monkeypatch.setattr(evaluate, "main", self.evaluate)
        monkeypatch.setattr(time_to_quality, "train_until", self.train_until)

    def evaluate(self, argv, make_model=None):
        self.evaluations.append(argv)
        return {"fid": 1.0}

    def train_until(self, cmd, work, deadline):
        self.trainings.append(cmd)
        return []


def test_time_to_quality_refuses_an_unparsable_recipe_before_any_work(tmp_path, monkeypatch, capsys):
    calls = Calls(monkeypatch)
    monkeypatch.setattr(sys, "argv", ["time_to_quality", "--work_dir", str(tmp_path / "w"),
                                      "--recipes", "", "\"--lr 1e-3"])
    code, err = exit_code(lambda argv: time_to_quality.main(), [], capsys)
    assert code == 2 and error_lines(err) == ["error: --recipes '\"--lr 1e-3': No closing quotation"], err
    assert calls.evaluations == calls.trainings == [] and not (tmp_path / "w").exists()


@pytest.mark.parametrize("train_args", [["--data_dir", "/elsewhere", "--dataset", "kmnist"],
                                        ["--lr", "1e-3", "--data_dir=/elsewhere", "--dataset=kmnist"]])
def test_time_to_quality_measures_the_floor_on_the_data_given_to_train(train_args, tmp_path, monkeypatch):
    calls = Calls(monkeypatch)
    monkeypatch.setattr(sys, "argv", ["time_to_quality", "--work_dir", str(tmp_path), "--num_samples", "7",
                                      "--", *train_args])
    time_to_quality.main()
    floor = calls.evaluations[0]
    assert floor[:3] == ["--real", "--num_samples", "7"]
    assert floor[3:7] == ["--data_dir", "/elsewhere", "--dataset", "kmnist"], floor
    assert calls.trainings[0][-len(train_args):] == train_args


@pytest.mark.parametrize("module, argv, message", [
    ("sample_throughput", ["--checkpoint_path", "missing"], "missing"),
    ("sample_throughput", ["--samplers", "ddim:1001", "--num_samples", "1"], "--steps: steps must be in [1, 1000]"),
    ("train_throughput", ["--steps", "0"], "--steps must be at least 1"),
    ("gpu_step_check", ["--steps", "0"], "--steps must be at least 1"),
])
def test_the_benchmarks_refuse_bad_flags_in_one_line(module, argv, message, monkeypatch, capsys):
    """As `python -m benchmarks.MODULE ARGS` runs it (its __main__ block), in this process."""
    monkeypatch.setattr(sys, "argv", [module, *argv])
    with pytest.raises(SystemExit) as exit:
        runpy.run_module(f"benchmarks.{module}", run_name="__main__")
    stderr = capsys.readouterr().err
    assert exit.value.code == 2 and message in stderr, stderr
    assert len(error_lines(stderr)) == 1 and stderr.strip().splitlines()[-1].startswith("error:")

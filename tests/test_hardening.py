"""A new user's mistakes and a machine's faults: every option of every script checked the same way,
data sets smaller than a batch, full disks, two runs on one checkpoint, files that are not what an
option expects. Each gives one line and exit code 2, or works, never a traceback."""
import dataclasses
import math
import resource
import signal
import subprocess
import sys

import pytest
import torch
from test_datasets import SMALL, make_folder

import evaluate
import inference
import likelihood
import train
import train_classifier
from conftest import ROOT, TINY_MODEL
from models.classifier import WEIGHTS, classifier_path
from test_train import exit_code
from training.batches import fit_batch
from utils.checkpoint import load_checkpoint
from utils.config import ClassifierConfig
from utils.errors import UserError
from utils.flags import from_args, in_bounds, parse_flags

SCRIPTS = {"train.py": train, "inference.py": inference, "evaluate.py": evaluate, "likelihood.py": likelihood,
           "train_classifier.py": train_classifier}
NUMERIC = [(name, cls, f) for name, script in SCRIPTS.items() for cls in script.CONFIGS
           for f in dataclasses.fields(cls) if f.type in (int, float, tuple)]


@pytest.mark.parametrize("value", ["0", "-1", "nan", "abc"])
@pytest.mark.parametrize("script, cls, field", NUMERIC, ids=[f"{s}--{f.name}" for s, _, f in NUMERIC])
def test_every_numeric_option_is_checked(script, cls, field, value, capsys):
    """0, -1, NaN and a word: refused in one line with exit code 2, or inside the range the
    option declares (its documented meaning, e.g. 0 = off)."""
    try:
        args, _ = parse_flags(script, SCRIPTS[script].CONFIGS, [f"--{field.name}", value])
        from_args(cls, args)
    except SystemExit as err:  # argparse: a wrong type
        assert err.code == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
        return
    except UserError as err:
        assert f"--{field.name}" in str(err) or "give a positive" in str(err), err
        return
    number = float(value)
    assert math.isfinite(number) and field.metadata["bounds"] and in_bounds(number, field.metadata["bounds"]), \
        f"{script} --{field.name} {value} was accepted"


def test_likelihood_options_are_refused_in_one_line(capsys):
    for argv, message in ((["--rtol", "0"], "--rtol must be in (0, 1)"),
                          (["--batch_size", "0"], "--batch_size must be at least 1"),
                          (["--num_images", "0"], "--num_images must be at least 1")):
        code, err = exit_code(likelihood.main, argv, capsys)
        assert code == 2 and message in err and "Traceback" not in err


@pytest.mark.parametrize("main, argv, message", [
    (inference.main, ["--guide_model", "auto"], "unrecognized arguments: --guide_model auto"),
    (evaluate.main, ["--guide_model", "auto"], "unrecognized arguments: --guide_model auto"),
    (train.main, ["--guide_at", "0.5"], "unrecognized arguments: --guide_at 0.5"),
    (train.main, ["--t_sampling", "logit_normal"], "argument --t_sampling: invalid choice: 'logit_normal'"),
])
def test_the_flags_of_experiments_that_left_the_code_are_refused_in_one_line(main, argv, message, capsys):
    """Autoguidance and logit-normal training times did not pay (docs/RESULTS.md) and left the code."""
    code, err = exit_code(main, argv, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_time_to_quality_needs_a_recipe():
    from benchmarks.time_to_quality import Flags
    with pytest.raises(UserError, match="--recipes needs at least one recipe"):
        Flags(recipes=())
    assert Flags(recipes=("", "--batch_size 64")).recipes == ("", "--batch_size 64")


def test_time_to_quality_keeps_the_results_so_far_when_a_later_recipe_fails(tmp_path, monkeypatch):
    """Each recipe's marks are written as soon as it is evaluated; a recipe given as a quoted
    "--flag value" is read as a recipe, not as a flag."""
    import json

    from benchmarks import time_to_quality as ttq
    monkeypatch.setattr(ttq.evaluate, "main", lambda argv, **kwargs: {"fid": 0.5, "confident": 0.9})

    def train_until(cmd, work, deadline):
        if cmd[-2:] == ["--batch_size", "64"]:
            sys.exit("training failed")
        work.mkdir(parents=True)
        (work / "ck_step0000050").touch()
        return [{"step": "50", "wall_s": "30"}]

    monkeypatch.setattr(ttq, "train_until", train_until)
    monkeypatch.setattr(sys, "argv", ["ttq", "--marks", "1", "--work_dir", str(tmp_path), "--recipes", "",
                                      "--batch_size 64"])
    with pytest.raises(SystemExit, match="training failed"):
        ttq.main()
    marks = json.loads((tmp_path / "time_to_quality.json").read_text())["marks"]
    assert [(m["recipe"], m["step"]) for m in marks] == [("(defaults)", 50)]


# ---- small data sets -------------------------------------------------------------------------------

def test_a_folder_smaller_than_one_batch_trains_on_all_of_it(tmp_path, capsys):
    images = make_folder(tmp_path / "imgs", sizes=((16, 16),), per_class=3)  # 6 images, batch 128
    args = ["--dataset", "folder", "--data_dir", str(images), *SMALL, "--batch_size", "128", "--max_steps", "2",
            "--epochs", "5", "--checkpoint_path", str(tmp_path / "ck"), "--output_dir", str(tmp_path / "out")]
    train.main(args)
    assert "--batch_size 128 is more than the 6 images" in capsys.readouterr().err
    ckpt = load_checkpoint(tmp_path / "ck")[0]
    assert ckpt["step"] == 2 and ckpt["train_config"]["batch_size"] == 6
    assert ckpt["train_config"]["total_steps"] == 5  # one step per epoch
    train.main([*args[:-6], "--max_steps", "3", "--checkpoint_path", str(tmp_path / "ck"),
                "--output_dir", str(tmp_path / "out")])  # and resumes
    assert load_checkpoint(tmp_path / "ck")[0]["step"] == 3


def test_the_fitted_batch_divides_among_the_processes():
    assert fit_batch(128, 60000, 4, "mnist") == 128
    assert fit_batch(128, 7, 2, "mine") == 6 and fit_batch(128, 7, 1, "mine") == 7
    with pytest.raises(UserError, match="fewer than the 2 processes"):
        fit_batch(128, 1, 2, "mine")


# ---- files that are not what the option expects ------------------------------------------------

def test_a_diffusion_checkpoint_given_as_classifier_is_named(tmp_path, mnist_dir, capsys):
    code, err = exit_code(evaluate.main, ["--classifier", "models/weights/ddpm_mnist.pt", "--num_samples", "4",
                                          "--data_dir", mnist_dir], capsys)
    assert code == 2 and "is a diffusion checkpoint, not a classifier" in err and "Traceback" not in err
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    code, err = exit_code(evaluate.main, ["--classifier", str(tmp_path / "junk.pt"), "--num_samples", "4",
                                          "--data_dir", mnist_dir], capsys)
    assert code == 2 and "is not a classifier file" in err


def test_train_classifier_never_writes_over_the_shipped_weights(tmp_path, monkeypatch):
    assert classifier_path("mnist").resolve() != WEIGHTS.resolve()
    assert ClassifierConfig().device == "auto" and "image_size" in {f.name for f in dataclasses.fields(ClassifierConfig)}
    images = make_folder(tmp_path / "imgs", sizes=((20, 16), (16, 16)), per_class=5)
    monkeypatch.chdir(tmp_path)
    train_classifier.main(["--dataset", "folder", "--data_dir", str(images), "--epochs", "1", "--image_size", "12"])
    saved = torch.load(tmp_path / "checkpoints" / "classifier_folder.pt", weights_only=True)
    assert saved["dataset"] == "folder" and saved["num_classes"] == 2


# ---- full disks and two writers --------------------------------------------------------------------

def tiny_run(tmp_path, mnist_dir, *extra):
    return [*TINY_MODEL, "--data_dir", mnist_dir, "--batch_size", "16", "--num_grid_samples", "0", "--epochs", "1",
            "--checkpoint_path", str(tmp_path / "ck"), "--output_dir", str(tmp_path / "out"), *extra]


def test_a_full_disk_while_saving_is_one_line_and_loses_nothing(tmp_path, mnist_dir, capsys):
    """A file-size limit (ulimit -f) makes torch.save fail as a full disk does, with a RuntimeError."""
    train.main(tiny_run(tmp_path, mnist_dir, "--max_steps", "2"))
    before = (tmp_path / "ck").read_bytes()
    limit = len(before) // 2
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))  # Python ignores SIGXFSZ: writes fail with EFBIG
    try:
        code, err = exit_code(train.main, tiny_run(tmp_path, mnist_dir, "--max_steps", "4"), capsys)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert code == 2 and "Traceback" not in err
    message, = [line for line in err.splitlines() if line.startswith("error:")]
    assert "the disk is full" in message and f"the last good checkpoint is {tmp_path / 'ck'}" in message
    assert (tmp_path / "ck").read_bytes() == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_one_run_per_checkpoint_and_a_killed_run_leaves_no_lock(tmp_path, mnist_dir, capsys):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from utils.checkpoint import lock_checkpoint; "
                               "lock = lock_checkpoint(sys.argv[1]); print('held', flush=True); time.sleep(120)",
                               str(tmp_path / "ck")], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, err = exit_code(train.main, tiny_run(tmp_path, mnist_dir, "--max_steps", "1"), capsys)
        assert code == 2 and f"is being trained by process {holder.pid}" in err
        assert not (tmp_path / "ck").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    train.main(tiny_run(tmp_path, mnist_dir, "--max_steps", "1"))  # the lock died with its process
    train.main(tiny_run(tmp_path, mnist_dir, "--max_steps", "2"))  # and this process may resume its own run
    assert load_checkpoint(tmp_path / "ck")[0]["step"] == 2


# ---- TensorBoard -----------------------------------------------------------------------------------

def test_tensorboard_events_hold_the_log_and_the_grids(tmp_path, mnist_dir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    train.main(tiny_run(tmp_path, mnist_dir, "--max_steps", "2", "--log_every", "1", "--num_grid_samples", "4",
                        "--tensorboard"))
    events = EventAccumulator(str(tmp_path / "out" / "tensorboard"))
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "train/lr", "train/grad_norm", "train/images_per_s", "train/bad_steps"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2] and "samples" in tags["images"]
    assert (tmp_path / "out" / "train_log.csv").exists()


def test_tensorboard_without_the_package_says_how_to_install_it(tmp_path, mnist_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # an import of it fails
    code, err = exit_code(train.main, tiny_run(tmp_path, mnist_dir, "--max_steps", "1", "--tensorboard"), capsys)
    assert code == 2 and "pip install tensorboard" in err

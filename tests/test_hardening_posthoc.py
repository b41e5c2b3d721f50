"""Hardening of post-hoc EMA (posthoc_ema.py): each bad input gives one line and exit code 2, and
leaves every file byte for byte as it was."""
import hashlib
import os
import shutil

import pytest
import torch

import posthoc_ema
import train
from models.load import SHIPPED_MODEL
from test_train import exit_code, train_args
from utils.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def run(tmp_path_factory, mnist_dir):
    """A 4-step run with post-hoc snapshots (steps 2 and 4)."""
    folder = tmp_path_factory.mktemp("run")
    train.main(train_args(folder, mnist_dir, "ck", "--total_steps", "4", "--posthoc_ema", "2", "--num_grid_samples",
                          "0"))
    return folder / "ck"


def files(folder):
    """sha256 of every file under `folder` (through links) and of the shipped model, by name."""
    paths = [p for p in sorted(folder.rglob("*")) if p.is_file()] + [SHIPPED_MODEL]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def edited(run, path, change):
    """A copy of the run's checkpoint at `path`, changed by change(ckpt) (saved as is: NaN allowed)."""
    ckpt = load_checkpoint(run)[0]
    change(ckpt)
    torch.save(ckpt, path)


def refused(main, argv, message, folder, capsys):
    """main(argv) exits with code 2 and one line holding `message`, and no file changes."""
    before = files(folder)
    code, err = exit_code(main, argv, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert files(folder) == before


# ---- posthoc_ema.py ---------------------------------------------------------------------------

@pytest.mark.parametrize("checkpoint, out, sigma_rel, message", [
    ("ck", "ck", ["0.05"], "would write over"),
    ("ck", "symlink", ["0.05"], "would write over"),
    ("ck", "ck_step0000004", ["0.05"], "would write over"),                  # a hard link to ck, as keep_last makes
    ("run", "run/ck", ["0.05"], "would write over"),                         # the folder's newest is ck_step0000004
    ("ck", str(SHIPPED_MODEL), ["0.05"], "in the shipped models' folder"),
    ("ck", "shipped_link", ["0.05"], "in the shipped models' folder"),
    ("ck", "e{sigma_rel}", ["0.05", "0.050"], "--sigma_rel 0.05 and 0.05 would both write"),
    ("ck", "e{sigma_rel:.3}", ["0.05", "0.06"], "--sigma_rel 0.05 and 0.06 would both write"),
    ("ck", "", ["0.05", "0.05"], "would both write"),
    ("ck", "e", ["0.05", "0.1"], "or an --out whose {sigma_rel} tells them apart"),
])
def test_posthoc_never_writes_over_its_source_the_shipped_model_or_itself(run, tmp_path, capsys, checkpoint, out,
                                                                          sigma_rel, message):
    shutil.copy(run, tmp_path / "ck")
    os.link(tmp_path / "ck", tmp_path / "ck_step0000004")
    (tmp_path / "run").mkdir()
    shutil.copy(run, tmp_path / "run" / "ck")
    os.link(tmp_path / "run" / "ck", tmp_path / "run" / "ck_step0000004")
    (tmp_path / "symlink").symlink_to(tmp_path / "ck")
    (tmp_path / "shipped_link").symlink_to(SHIPPED_MODEL)
    argv = ["--checkpoint_path", str(tmp_path / checkpoint), "--sigma_rel", *sigma_rel]
    refused(posthoc_ema.main, argv + (["--out", str(tmp_path / out)] if out else []), message, tmp_path, capsys)


def nan_in_last_snapshot(ckpt):
    weights = ckpt["posthoc"]["snapshots"][-1][2]  # step 4's, of sigma_rel 0.1
    next(iter(weights.values())).fill_(float("nan"))


@pytest.mark.parametrize("checkpoint, argv, message", [
    ("empty", [], "has no post-hoc EMA snapshot yet"),
    ("ck", ["--sigma_rel"], "--sigma_rel needs at least one length"),
    ("ck", ["--out", "x_{foo}"], "only field is {sigma_rel} (KeyError: 'foo')"),
    ("missing", ["--out", "x_{foo}"], "only field is {sigma_rel}"),  # checked before loading anything
    ("nan", [], "the post-hoc EMA snapshot of step 4 (sigma_rel 0.1) is not finite"),
])
def test_posthoc_bad_requests_are_one_line(run, tmp_path, capsys, checkpoint, argv, message):
    shutil.copy(run, tmp_path / "ck")
    edited(run, tmp_path / "empty", lambda ckpt: ckpt["posthoc"].update(snapshots=[]))
    edited(run, tmp_path / "nan", nan_in_last_snapshot)
    argv = [str(tmp_path / arg) if arg.startswith("x_") else arg for arg in argv]
    refused(posthoc_ema.main, ["--checkpoint_path", str(tmp_path / checkpoint), *argv], message, tmp_path, capsys)


def test_an_ema_before_a_non_finite_snapshot_is_made_without_it(run, tmp_path):
    edited(run, tmp_path / "nan", nan_in_last_snapshot)
    written = posthoc_ema.main(["--checkpoint_path", str(tmp_path / "nan"), "--step", "2"])
    assert load_checkpoint(written[0])[0]["posthoc_source"]["step"] == 2


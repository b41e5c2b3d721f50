"""benchmarks/paired_bound.py: checkpoints scored by their bound on the same images, times and noise."""
import math

import pytest
import torch

import likelihood
import train
from benchmarks import paired_bound
from benchmarks.common import bound_checkpoint
from conftest import TINY_MODEL
from diffusion.likelihood import vdm_bound_terms
from test_train import exit_code
from utils.datasets import load_dataset, to_model_range


@pytest.fixture(scope="module")
def tiny_vdm(tmp_path_factory, mnist_dir):
    """A two-step VDM checkpoint."""
    folder = tmp_path_factory.mktemp("tiny_vdm")
    train.main([*TINY_MODEL, "--process", "vdm", "--data_dir", mnist_dir, "--batch_size", "4",
                "--max_steps", "2", "--total_steps", "2", "--num_grid_samples", "0", "--checkpoint_path",
                str(folder / "ck"), "--output_dir", str(folder / "out")])
    return str(folder / "ck")


def test_the_paired_comparison_scores_likelihood_py_s_bound_on_the_same_draws(tiny_vdm, mnist_dir, tmp_path):
    """A checkpoint against itself differs by exactly 0 only if both are scored on the same images,
    times and noise; each bound is the one likelihood.py prints for the same seed."""
    common = ["--num_images", "3", "--t_samples", "2", "--seed", "4", "--data_dir", mnist_dir]
    rows = paired_bound.main(["--checkpoints", tiny_vdm, tiny_vdm, *common])
    assert rows[1]["paired_difference"] == rows[1]["paired_error"] == 0
    alone = likelihood.main(["--checkpoint_path", tiny_vdm, "--method", "bound", *common, "--out",
                             str(tmp_path / "lk.json")])
    assert rows[0]["bits_per_dim"] == pytest.approx(alone["bound"]["bits_per_dim"], rel=1e-12)


def test_the_paired_comparison_with_split_train_scores_the_training_images(tiny_vdm, mnist_dir):
    """--split train: the same bound, on the training images likelihood.py's order picks for the seed."""
    common = ["--checkpoints", tiny_vdm, tiny_vdm, "--num_images", "3", "--t_samples", "2", "--seed", "4",
              "--data_dir", mnist_dir]
    test_rows, train_rows = paired_bound.main(common), paired_bound.main([*common, "--split", "train"])
    generator = torch.Generator().manual_seed(4)
    images = load_dataset("mnist", mnist_dir, train=True).images
    images = to_model_range(images[torch.randperm(len(images), generator=generator)[:3]])
    cfg = paired_bound.Flags(checkpoints=(tiny_vdm, tiny_vdm), data_dir=mnist_dir, device="cpu")
    model, process = bound_checkpoint(cfg, "", tiny_vdm)[:2]
    terms = vdm_bound_terms(likelihood.network(model, process)[1], process, images, generator, 2, 500)
    expected = (terms.sum(1) / (images[0].numel() * math.log(2))).mean().item()
    assert train_rows[0]["bits_per_dim"] == pytest.approx(expected, rel=1e-12)
    assert train_rows[0]["bits_per_dim"] != pytest.approx(test_rows[0]["bits_per_dim"], rel=1e-3)


def test_the_paired_comparison_needs_two_checkpoints(tiny_vdm, capsys):
    code, err = exit_code(paired_bound.main, ["--checkpoints", tiny_vdm], capsys)
    assert code == 2 and err.strip().splitlines() == [
        "error: --checkpoints needs two or more checkpoints, the reference first"]


def tiny(process, folder, mnist_dir, *flags):
    train.main([*TINY_MODEL, "--process", process, *flags, "--data_dir", mnist_dir, "--batch_size", "4", "--max_steps",
                "1", "--total_steps", "1", "--num_grid_samples", "0", "--checkpoint_path", str(folder / process),
                "--output_dir", str(folder / "out")])
    return str(folder / process)


def test_the_paired_comparison_asks_the_process_for_its_bound(mnist_dir, tmp_path, capsys):
    """DDPM's bound (every t) is scored as likelihood.py scores it; a process without a bound (flow) is
    refused in one line."""
    ddpm = tiny("ddpm", tmp_path, mnist_dir, "--num_timesteps", "8")
    common = ["--num_images", "2", "--seed", "1", "--data_dir", mnist_dir]
    rows = paired_bound.main(["--checkpoints", ddpm, ddpm, *common])
    alone = likelihood.main(["--checkpoint_path", ddpm, "--method", "bound", *common, "--out", str(tmp_path / "lk")])
    assert rows[0]["bits_per_dim"] == pytest.approx(alone["bound"]["bits_per_dim"], rel=1e-12)
    flow = tiny("flow", tmp_path, mnist_dir)
    code, err = exit_code(paired_bound.main, ["--checkpoints", flow, flow, *common], capsys)
    assert code == 2 and err.strip().splitlines()[-1] == (
        f"error: {flow} is a flow model, which has no variational bound; the paired comparison is of a bound (vdm's "
        "or ddpm's)")

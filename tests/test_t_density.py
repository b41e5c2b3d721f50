"""VDM's --t_density: training times drawn from a piecewise-constant density, each loss divided by it."""
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import likelihood
import train
from benchmarks import paired_bound, t_density
from benchmarks.common import vdm_checkpoint
from conftest import TINY_MODEL
from diffusion.continuous import VDM, TimeDensity
from diffusion.likelihood import vdm_bound_terms
from test_train import exit_code
from utils.checkpoint import load_checkpoint
from utils.config import DiffusionConfig, from_args, parse_flags
from utils.data import to_model_range
from utils.datasets import load_dataset

WEIGHTS = (0.5, 3.0, 1.0, 0.25, 2.0)


def test_the_density_integrates_to_one_and_its_inverse_cdf_inverts_the_cdf():
    density = TimeDensity(WEIGHTS, "cpu")
    t = (torch.arange(100_000, dtype=torch.float64) + 0.5) / 100_000
    assert abs(density(t).mean().item() - 1) < 1e-9
    cdf = torch.cumsum(density(t), 0) / len(t)  # F(t) by the midpoint rule
    torch.testing.assert_close(density.inverse_cdf(cdf.clamp(max=1 - 1e-12)), t, rtol=0, atol=2e-5)


def test_the_density_of_a_drawn_time_is_its_bin_s_and_the_edges_map_to_the_bin_edges():
    density = TimeDensity(WEIGHTS, "cpu")
    u = torch.rand(1000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    bin_of_u = torch.searchsorted(density.edges[1:-1], u, right=True)
    torch.testing.assert_close(density(density.inverse_cdf(u)), len(WEIGHTS) * density.mass[bin_of_u])
    torch.testing.assert_close(density.inverse_cdf(density.edges), torch.linspace(0, 1, len(WEIGHTS) + 1,
                                                                                  dtype=torch.float64))
    assert density(torch.tensor([1.0], dtype=torch.float64)).item() == pytest.approx(len(WEIGHTS) * WEIGHTS[-1] / sum(WEIGHTS))


def test_drawn_times_fill_each_bin_in_proportion_to_its_weight():
    process = VDM(DiffusionConfig(process="vdm", t_density=WEIGHTS))
    t = process.draw_t(1000, torch.Generator().manual_seed(0), "cpu")
    share = torch.bincount((t * len(WEIGHTS)).long(), minlength=len(WEIGHTS)) / len(t)
    torch.testing.assert_close(share, torch.tensor(WEIGHTS) / sum(WEIGHTS), rtol=0, atol=2e-3)  # stratified: 1/B
    assert t.min() >= 0 and t.max() < 1


def test_equal_weights_are_uniform_time_bit_for_bit_in_the_times_and_the_loss():
    plain, flat = (VDM(DiffusionConfig(process="vdm", t_density=w)) for w in ((), (1.0, 1.0, 1.0, 1.0)))
    t_plain, t_flat = (p.draw_t(64, torch.Generator().manual_seed(5), "cpu") for p in (plain, flat))
    assert torch.equal(t_plain, t_flat)
    x0, noise, out = torch.randn(3, 64, 1, 2, 2, generator=torch.Generator().manual_seed(6))
    assert torch.equal(plain.loss(out, x0, noise, t_plain), flat.loss(out, x0, noise, t_flat))


def batch_losses(process, c2, batches, batch):
    """VDM's loss of the exact denoiser of N(0, c2 I) data, one per batch of `batch` images."""
    generator = torch.Generator().manual_seed(7)
    losses = []
    for _ in range(batches):
        x0 = torch.randn(batch, 1, 8, 8, generator=generator) * math.sqrt(c2)
        noise = torch.randn(x0.shape, generator=generator)
        t = process.draw_t(batch, generator, "cpu")
        alpha, sigma = (v.reshape(-1, 1, 1, 1) for v in process.alpha_sigma(t))
        x_t = alpha * x0 + sigma * noise
        losses.append(process.loss(sigma / (alpha ** 2 * c2 + sigma ** 2) * x_t, x0, noise, t))
    return torch.stack(losses).double()


def test_the_weighted_loss_keeps_the_elbo_and_a_density_that_follows_it_lowers_its_variance():
    """The exact eps of N(0, c2 I) data leaves 1/2 int c2 e^-g / (c2 e^-g + 1) dg per dimension over
    [gamma_min, gamma_max]; the integrand is about 1 below g = log c2 and falls off above, so weights
    that fall with t follow it. One image per batch, so that no stratification across a batch hides
    what the times contribute to the variance; 64 dimensions, so that the noise of ||eps - eps_hat||^2
    does not either."""
    c2 = 0.3
    expected = 0.5 * (math.log(1 + c2 * math.exp(13.3)) - math.log(1 + c2 * math.exp(-5.0)))
    spread = {}
    for weights in ((), (2.0, 2.0, 2.0, 1.5, 0.3), (0.2, 0.2, 0.2, 1.0, 3.0)):
        losses = batch_losses(VDM(DiffusionConfig(process="vdm", t_density=weights)), c2, 600, 1)
        error = losses.std().item() / math.sqrt(len(losses))
        assert abs(losses.mean().item() - expected) < 4 * error, weights
        spread[weights] = losses.std().item()
    assert spread[(2.0, 2.0, 2.0, 1.5, 0.3)] < 0.7 * spread[()] and spread[(0.2, 0.2, 0.2, 1.0, 3.0)] > 2 * spread[()]


def test_the_flag_parses_as_numbers_and_is_saved_in_the_diffusion_config():
    args, _ = parse_flags("train", [DiffusionConfig], ["--process", "vdm", "--t_density", "1", "2.5", "0.25"])
    assert from_args(DiffusionConfig, args).t_density == (1.0, 2.5, 0.25)


@pytest.mark.parametrize("argv, message", [
    (["--process", "ddpm", "--t_density", "1", "2"], "error: --t_density is for --process vdm (importance sampling "
                                                     "of its ELBO's times)"),
    (["--process", "vdm", "--t_density", "1", "0"], "error: --t_density must be positive, got 0"),
])
def test_a_bad_density_is_refused_in_one_line(argv, message, tmp_path, capsys):
    code, err = exit_code(train.main, [*argv, "--checkpoint_path", str(tmp_path / "ck"), "--max_steps", "1"], capsys)
    assert code == 2 and err.strip().splitlines() == [message]


@pytest.fixture(scope="module")
def tiny_vdm(tmp_path_factory, mnist_dir):
    """A two-step VDM checkpoint trained with a density of t."""
    folder = tmp_path_factory.mktemp("tiny_vdm")
    train.main([*TINY_MODEL, "--process", "vdm", "--t_density", "1", "3", "--data_dir", mnist_dir, "--batch_size", "4",
                "--max_steps", "2", "--total_steps", "2", "--num_grid_samples", "0", "--checkpoint_path",
                str(folder / "ck"), "--output_dir", str(folder / "out")])
    return str(folder / "ck")


def test_the_benchmark_proposes_a_density_the_flag_takes(tiny_vdm, mnist_dir, capsys):
    capsys.readouterr()
    weights, shares = t_density.main(["--checkpoint_path", tiny_vdm, "--bins", "3", "--samples", "2", "--data_dir",
                                      mnist_dir])
    out = capsys.readouterr().out
    assert "the checkpoint's --t_density" in out and "the proposed density" in out
    assert shares["the proposed density"]["adam"] <= 1.0 + 1e-3  # p = sqrt(m) / Z is the least, uniform t among them
    flag = out.strip().splitlines()[-1].split()
    args, _ = parse_flags("train", [DiffusionConfig], ["--process", "vdm", *flag])
    assert flag[0] == "--t_density" and from_args(DiffusionConfig, args).t_density == tuple(weights)


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
    _, model, process, _ = vdm_checkpoint(SimpleNamespace(device="cpu"), "", True, tiny_vdm)
    generator = torch.Generator().manual_seed(4)
    images = load_dataset("mnist", mnist_dir, train=True).images
    images = to_model_range(images[torch.randperm(len(images), generator=generator)[:3]])
    terms = vdm_bound_terms(likelihood.network(model, process)[1], process, images, generator, 2, 500)
    expected = (terms.sum(1) / (images[0].numel() * math.log(2))).mean().item()
    assert train_rows[0]["bits_per_dim"] == pytest.approx(expected, rel=1e-12)
    assert train_rows[0]["bits_per_dim"] != pytest.approx(test_rows[0]["bits_per_dim"], rel=1e-3)


def test_the_paired_comparison_needs_two_checkpoints(tiny_vdm, capsys):
    code, err = exit_code(paired_bound.main, ["--checkpoints", tiny_vdm], capsys)
    assert code == 2 and err.strip().splitlines() == [
        "error: --checkpoints needs two or more VDM checkpoints, the reference first"]


def test_a_resumed_run_may_change_the_density_and_saves_the_new_one(tiny_vdm, mnist_dir, tmp_path):
    resumed = tmp_path / "resumed"
    resumed.write_bytes(Path(tiny_vdm).read_bytes())
    train.main(["--checkpoint_path", str(resumed), "--max_steps", "3", "--total_steps", "3", "--t_density", "2", "1",
                "1", "--data_dir", mnist_dir, "--output_dir", str(tmp_path / "out")])
    ckpt = load_checkpoint(resumed)[0]
    assert ckpt["step"] == 3 and ckpt["diffusion_config"]["t_density"] == (2.0, 1.0, 1.0)

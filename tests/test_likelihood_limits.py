"""likelihood.py at its limits: VDM's bound in memory that does not grow with the number of images
(the same numbers batched or not), more images asked for than the test set has, and a bound asked
of a process that has none."""
import subprocess
import sys

import pytest
import torch

import likelihood
import train
from conftest import ROOT, TINY_MODEL
from diffusion.config import DiffusionConfig
from diffusion.continuous import VDM
from diffusion.likelihood import vdm_bound_terms, vdm_decoder_log_likelihood
from test_train import exit_code
from utils.datasets import checkpoint_data


def mnist_like(num, seed=0):
    """`num` images of MNIST's shape (1, 28, 28) on the 8-bit grid, in [-1, 1]."""
    return torch.randint(0, 256, (num, 1, 28, 28), generator=torch.Generator().manual_seed(seed)) / 127.5 - 1


def test_the_decoder_in_chunks_equals_the_decoder_at_once():
    x = mnist_like(5).double()
    alpha0, sigma0 = torch.tensor(0.99995, dtype=torch.float64), torch.tensor(0.01, dtype=torch.float64)
    z0 = alpha0 * x + sigma0 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    at_once = vdm_decoder_log_likelihood(x, z0, alpha0, sigma0, chunk=x.numel())
    for chunk in (1, 100, 784, 1000):
        torch.testing.assert_close(vdm_decoder_log_likelihood(x, z0, alpha0, sigma0, chunk=chunk), at_once,
                                   rtol=1e-12, atol=0)


def test_vdm_s_bound_in_small_batches_equals_the_bound_in_one():
    process = VDM(DiffusionConfig(process="vdm"))
    x0 = mnist_like(7)

    def predict_eps(z, t):  # any denoiser that depends on z and t
        return 0.5 * z * t.view(-1, 1, 1, 1)

    one = vdm_bound_terms(predict_eps, process, x0, torch.Generator().manual_seed(2), 3, batch_size=1000)
    for batch_size in (1, 3):
        batched = vdm_bound_terms(predict_eps, process, x0, torch.Generator().manual_seed(2), 3, batch_size)
        torch.testing.assert_close(batched, one, rtol=1e-12, atol=0)


PEAK_MEMORY = """
import sys, torch
from diffusion.continuous import VDM
from diffusion.likelihood import vdm_bound_terms
from diffusion.config import DiffusionConfig

def status_mb(key):  # VmRSS: resident now; VmHWM: its peak since the last reset
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key)) / 1024

x0 = torch.randint(0, 256, (int(sys.argv[1]), 1, 28, 28)) / 127.5 - 1
process = VDM(DiffusionConfig(process="vdm"))
open("/proc/self/clear_refs", "w").write("5")  # resets VmHWM to VmRSS (Linux 4.0 and later)
before = status_mb("VmRSS")
vdm_bound_terms(lambda z, t: torch.zeros_like(z), process, x0, torch.Generator().manual_seed(0), 1, 500)
print(status_mb("VmHWM") - before)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="reads the peak memory from /proc")
def test_the_memory_of_vdm_s_bound_does_not_grow_with_the_number_of_images():
    """Three times the images, the same peak: the decoder's logits for all images at once,
    (N, 784, 256) in float64, would take 1.6 GB more for 900 images than for 300."""
    def peak_growth_mb(num):
        done = subprocess.run([sys.executable, "-c", PEAK_MEMORY, str(num)], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return float(done.stdout.split()[-1])

    few, many = peak_growth_mb(300), peak_growth_mb(900)
    assert many - few < 100, (few, many)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, mnist_dir):
    """A one-step checkpoint of each continuous process: {"vdm": path, "flow": path}."""
    folder = tmp_path_factory.mktemp("tiny")
    for process in ("vdm", "flow"):
        train.main([*TINY_MODEL, "--process", process, "--data_dir", mnist_dir, "--batch_size", "4", "--max_steps",
                    "1", "--total_steps", "1", "--num_grid_samples", "0", "--checkpoint_path",
                    str(folder / process), "--output_dir", str(folder / f"out_{process}")])
    return {process: str(folder / process) for process in ("vdm", "flow")}


def test_more_images_than_the_test_set_are_scored_as_all_of_it_and_said_in_one_line(tiny, mnist_dir, tmp_path,
                                                                                  monkeypatch, capsys):
    def three_test_images(*args):
        name, test = checkpoint_data(*args)
        test.images = test.images[:3]
        return name, test

    monkeypatch.setattr(likelihood, "checkpoint_data", three_test_images)
    capsys.readouterr()
    results = likelihood.main(["--checkpoint_path", tiny["vdm"], "--method", "bound", "--num_images", "5",
                               "--t_samples", "1", "--data_dir", mnist_dir, "--out", str(tmp_path / "l.json")])
    assert results["bound"]["images"] == 3
    err = capsys.readouterr().err
    assert "--num_images 5 is more than the 3 test images: scoring 3" in err.splitlines()


def test_a_bound_of_flow_is_refused_in_one_line_before_the_data_is_read(tiny, mnist_dir, tmp_path, monkeypatch,
                                                                       capsys):
    def no_data(*args):
        raise AssertionError("the data was read")

    monkeypatch.setattr(likelihood, "checkpoint_data", no_data)
    capsys.readouterr()
    code, err = exit_code(likelihood.main, ["--checkpoint_path", tiny["flow"], "--method", "bound", "--data_dir",
                                            mnist_dir, "--out", str(tmp_path / "l.json")], capsys)
    assert code == 2 and err.strip().splitlines() == ["error: flow has no variational bound: --method ode gives its "
                                                      "likelihood"]
    assert not (tmp_path / "l.json").exists()


def test_both_methods_on_flow_skip_the_bound_and_say_so_in_one_line(tiny, mnist_dir, tmp_path, capsys):
    capsys.readouterr()
    results = likelihood.main(["--checkpoint_path", tiny["flow"], "--ode_images", "1", "--rtol", "1e-2", "--atol",
                               "1e-2", "--data_dir", mnist_dir, "--out", str(tmp_path / "l.json")])
    assert "bound" not in results and results["ode"]["bits_per_dim"] > 0
    assert "flow has no variational bound: scoring the ODE only" in capsys.readouterr().err.splitlines()

"""The shipped model samples as it did: its default samples (8 digits, seed 0, fp32, one thread)
against those kept in tests/data (which say the commit that drew them). Bit for bit on the CPU that
drew them; within 1e-4 elsewhere, where other kernels round otherwise (an AVX2 capability differs
by 3e-5)."""
from pathlib import Path

import torch

from conftest import ROOT
from diffusion.pipeline import generate
from models.load import SHIPPED_MODEL, load_model
from utils.checkpoint import load_checkpoint


def cpu_fingerprint():
    try:
        first = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:  # not Linux: no fingerprint, the comparison within 1e-4
        first = ""
    pairs = (line.split(":", 1) for line in first.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in pairs}
    return (f"{torch.backends.cpu.get_cpu_capability()} {fields.get('vendor_id', '')} family "
            f"{fields.get('cpu family', '')} model {fields.get('model', '')}")


def test_the_shipped_model_draws_the_samples_it_drew_before():
    reference = torch.load(ROOT / "tests" / "data" / "shipped_default_samples.pt", weights_only=True)
    model, diffusion = load_model(*load_checkpoint(SHIPPED_MODEL))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        samples = generate(model, diffusion, 8)
    finally:
        torch.set_num_threads(threads)
    if reference["cpu"] == cpu_fingerprint():
        assert torch.equal(samples, reference["samples"])
    torch.testing.assert_close(samples, reference["samples"], rtol=0, atol=1e-4)

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent  # on the import path by pytest.ini's pythonpath

# A U-Net small enough for CPU tests that take seconds (the defaults are for real training).
TINY_MODEL = ["--base_channels", "8", "--channel_mults", "1", "2", "--attention_resolutions", "14",
              "--norm_groups", "4", "--num_heads", "2", "--num_timesteps", "50"]


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: minutes-long tests, excluded by default (run with -m slow)")
    config.addinivalue_line("markers", "browser: the demo page in headless Chromium, excluded by default (run with -m browser)")


def untracked():
    """Files in the checkout that git would add (neither tracked nor ignored), or None without git."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return None if out.returncode else {line[3:] for line in out.stdout.splitlines() if line.startswith("??")}


@pytest.fixture(scope="session", autouse=True)
def the_checkout_stays_clean():
    """No test, and no refusal a test provokes, leaves a file in the checkout."""
    before = untracked()
    yield
    after = untracked()
    if before is not None and after is not None:
        assert after <= before, f"the tests left files in the checkout: {sorted(after - before)}"


@pytest.fixture(scope="session")
def mnist_dir():
    """The real MNIST, fetched once per test session into the project's default data folder."""
    from utils.mnist import ensure_mnist
    ensure_mnist(ROOT / "data")
    return str(ROOT / "data")


class CreatesAFile:
    """Pickles to a call of open(path, "w"): loading it with a plain unpickler creates the file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def run_script(*args, timeout=120, env=None):
    """Run a project script in a fresh process; return the CompletedProcess."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})

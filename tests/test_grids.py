"""Time grids are functions of a process (diffusion/grids.py): each runs from the noise end to the
clean end on every process, a new one is one function and one registry line, and no process
knows a sampler's name."""
import math
import re

import pytest
import torch

import diffusion.grids as grids
from conftest import ROOT
from diffusion.config import DiffusionConfig, SamplingConfig
from diffusion.pipeline import generate
from diffusion.processes import PROCESSES, make_process
from diffusion.samplers import SAMPLERS, make_timesteps
from models.unet import UNet
from test_unet import SMALL, perturbed
from utils.config import ModelConfig


@pytest.mark.parametrize("process", sorted(PROCESSES))
@pytest.mark.parametrize("grid", sorted(grids.GRIDS))
def test_every_grid_runs_from_the_noise_end_to_the_clean_end_on_every_process(process, grid):
    diffusion = make_process(DiffusionConfig(process=process))
    for steps in (1, 2, 5, 8, 30):
        times = grids.time_grid(grid, diffusion, steps)
        # the jump grid's last step leaps to the data from t_max / steps (few-step models)
        last = round(diffusion.t_max / steps) if diffusion.discrete else diffusion.t_max / steps
        end = last if grid == "jump" else diffusion.t_min
        assert times[0] == diffusion.t_max and (steps == 1 or times[-1] == pytest.approx(end)), (steps, times)
        assert all(a > b for a, b in zip(times, times[1:]))
        assert len(times) == steps or diffusion.discrete  # a discrete process may merge neighbours


def test_the_karras_grid_is_the_rho_schedule_in_sigma():
    """sigma = exp(-lambda) of the times: (sigma^(1/rho)) evenly spaced from sigma_max to sigma_min."""
    vdm = make_process(DiffusionConfig(process="vdm"))
    root = [math.exp(-vdm.lam(t)) ** (1 / 7) for t in grids.karras(vdm, 6)]
    steps = [b - a for a, b in zip(root, root[1:])]
    assert max(steps) - min(steps) < 1e-9 * abs(root[0])


def test_a_new_grid_is_one_function_and_one_registry_line(monkeypatch):
    """A grid quadratic in t, registered by name, samples with every sampler on every process."""
    def quadratic(process, steps):
        u = torch.linspace(1, 0, steps, dtype=torch.float64) ** 2
        times = (process.t_min + (process.t_max - process.t_min) * u).tolist()
        return sorted({round(t) for t in times}, reverse=True) if process.discrete else times

    monkeypatch.setitem(grids.GRIDS, "quadratic", quadratic)
    torch.manual_seed(0)
    model = perturbed(UNet(ModelConfig(**SMALL)), 0.01).eval()
    for process in sorted(PROCESSES):
        diffusion = make_process(DiffusionConfig(process=process))
        assert make_timesteps("ddim", diffusion, 4, "quadratic")[:2] == quadratic(diffusion, 4)[:2]
        for sampler in sorted(set(SAMPLERS) - {"ddpm"}):
            sampling = SamplingConfig(sampler=sampler, steps=3)
            sampling.grid = "quadratic"  # past the flag's choices, as a registered grid would be
            assert torch.isfinite(generate(model, diffusion, 2, sampling)).all()


def test_no_process_branches_on_a_sampler_s_name():
    for name in ("gaussian.py", "ddpm.py", "continuous.py"):
        text = re.sub(r"\n    name.*", "", (ROOT / "diffusion" / name).read_text())  # its own name ("ddpm")
        for sampler in SAMPLERS:
            assert f'"{sampler}"' not in text and f"'{sampler}'" not in text, (name, sampler)

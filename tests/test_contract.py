"""The process contract (diffusion/processes.py): every registered process keeps it, and a new
process, here EDM's sigma schedule (Karras et al. 2022) in variance-preserving form, is one class
and one registry line: it trains and samples with every sampler on every time grid, and from the
command line train.py and inference.py take it, with its defaults, as they take the others."""
import copy
import math

import pytest
import torch

import diffusion.processes as processes
import diffusion.samplers as samplers
from conftest import TINY_MODEL, run_script
from diffusion.config import DiffusionConfig, SamplingConfig
from diffusion.continuous import ContinuousProcess
from diffusion.grids import GRIDS
from diffusion.pipeline import generate
from diffusion.processes import PROCESSES, Process, make_process
from diffusion.samplers import SAMPLERS
from models.unet import UNet
from test_train import exit_code
from test_unet import SMALL
from training.state import RunState
from training.step import make_optimizer, make_step
from utils.checkpoint import load_checkpoint
from utils.config import ModelConfig, TrainConfig


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_every_registered_process_keeps_the_contract(name):
    process = make_process(DiffusionConfig(process=name))
    assert isinstance(process, Process)
    methods = [m for m in vars(Process) if not m.startswith("_") and callable(getattr(Process, m))]
    assert len(methods) == 21 and all(callable(getattr(process, m)) for m in methods)
    assert process.bound is None or callable(process.bound)  # flow matching has no variational bound


def test_the_likelihood_tool_never_branches_on_a_process_s_name():
    from conftest import ROOT
    text = (ROOT / "likelihood.py").read_text()
    assert not any(f'"{name}"' in text for name in PROCESSES), "likelihood.py names a process"


class EDMSchedule(ContinuousProcess):
    """sigma_edm(t) = exp(log s_min + t (log s_max - log s_min)), s in [0.002, 80], written as
    x_t = alpha x_0 + sigma eps with alpha = 1 / sqrt(1 + s^2), sigma = s / sqrt(1 + s^2)."""
    name, about = "edm", "the sigma schedule of Karras et al. 2022, variance preserving"
    defaults = {"prediction": "x0", "weighting": "edm", "t_sampling": "uniform", "clip_x0": False, "few_steps": 0}
    log_min, log_max = math.log(0.002), math.log(80.0)

    def edm_sigma(self, t):
        return torch.exp(self.log_min + t * (self.log_max - self.log_min))

    def alpha_sigma64(self, t):
        s = self.edm_sigma(t)
        return 1 / (1 + s ** 2).sqrt(), s / (1 + s ** 2).sqrt()

    def derivatives(self, t):
        s = self.edm_sigma(t)
        ds = s * (self.log_max - self.log_min)
        return -s * ds / (1 + s ** 2) ** 1.5, ds / (1 + s ** 2) ** 1.5

    def time_of_lam(self, lam):  # lambda = log(alpha / sigma) = -log s
        return (-lam - self.log_min) / (self.log_max - self.log_min)



def test_a_new_process_is_one_class_and_one_registry_line(monkeypatch):
    monkeypatch.setitem(processes.PROCESSES, "edm", EDMSchedule)  # the registry line
    edm = make_process(DiffusionConfig(process="edm"))
    assert isinstance(edm, Process) and edm.prediction == "x0" and edm.config.weighting == "edm"

    torch.manual_seed(0)
    model = UNet(ModelConfig(**SMALL))
    state = RunState(model, copy.deepcopy(model).requires_grad_(False), make_optimizer(model, TrainConfig(), "cpu"),
                     torch.amp.GradScaler("cpu", enabled=False))
    generator = torch.Generator().manual_seed(1)

    def batch():
        x0 = torch.rand(4, 1, 28, 28, generator=generator) * 2 - 1
        return x0, torch.randint(0, 10, (4,), generator=generator), torch.randn(x0.shape, generator=generator), \
            edm.draw_t(4, generator, "cpu")

    step = make_step(state, edm, None, 1.0, batch(), graphed=False)
    before = [p.clone() for p in model.parameters()]
    for _ in range(2):
        loss, _, finite = step(batch(), 1e-3, 1.0)
        assert bool(finite) and loss.item() > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))

    model.eval()
    monkeypatch.setattr(samplers, "ANCESTRAL_STEPS", 20)  # ddpm's 1000 steps on a continuous process, shortened
    for sampler in sorted(SAMPLERS):
        for grid in sorted(GRIDS) if sampler != "ddpm" else [""]:
            sampling = SamplingConfig(sampler=sampler, steps=3, grid=grid)
            assert torch.isfinite(generate(model, edm, 2, sampling)).all(), (sampler, grid)


# python SCRIPT ARGS... with the EDM process's one registry line run first, as a user's own file would
WITH_EDM = ("import runpy, sys; sys.path.insert(0, 'tests'); import diffusion.processes as p; "
            "from test_contract import EDMSchedule; p.PROCESSES[EDMSchedule.name] = EDMSchedule; "
            "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def test_a_new_process_trains_and_samples_from_the_command_line(tmp_path, mnist_dir, monkeypatch, capsys):
    import train
    monkeypatch.setitem(processes.PROCESSES, EDMSchedule.name, EDMSchedule)
    with pytest.raises(SystemExit):
        train.main(["--help"])
    words = " ".join(capsys.readouterr().out.split())
    assert "edm (the sigma schedule of Karras et al. 2022" in words and "--process {ddpm,vdm,flow,shortcut,edm}" in words
    ck = tmp_path / "edm"
    trained = run_script("-c", WITH_EDM, "train.py", "--process", "edm", "--total_steps", "2", *TINY_MODEL,
                         "--data_dir", mnist_dir, "--batch_size", "16", "--num_grid_samples", "0",
                         "--checkpoint_path", ck, "--output_dir", tmp_path / "out", timeout=300)
    assert trained.returncode == 0, trained.stderr[-2000:]
    saved = load_checkpoint(ck)[0]["diffusion_config"]
    assert (saved["process"], saved["prediction"], saved["weighting"], saved["t_sampling"]) == \
        ("edm", "x0", "edm", "uniform")  # the class's defaults
    sampled = run_script("-c", WITH_EDM, "inference.py", "--checkpoint_path", ck, "--num_samples", "4", "--steps",
                         "3", "--no_show", "--output_dir", tmp_path / "inf", timeout=300)
    assert sampled.returncode == 0, sampled.stderr[-2000:]
    assert (tmp_path / "inf" / "samples.png").stat().st_size > 0
    monkeypatch.delitem(processes.PROCESSES, EDMSchedule.name)
    code, err = exit_code(train.main, ["--process", "edm", "--checkpoint_path", str(tmp_path / "x")], capsys)
    assert code == 2 and "invalid choice: 'edm'" in err


@pytest.mark.parametrize("num_timesteps", [5, 50, 1000])
def test_ddpm_s_bound_by_term_adds_up_to_every_term(num_timesteps):
    """The named terms (prior, decoder, sums of L_t over ranges of t) cover each of the T + 1 terms once."""
    from diffusion.likelihood import bound_terms
    ddpm = make_process(DiffusionConfig(num_timesteps=num_timesteps))
    x0 = torch.round((torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1) * 127.5) / 127.5

    def predict_x0(x, t):
        return 0.5 * x

    terms, _ = ddpm.bound(predict_x0, None, x0, torch.Generator().manual_seed(1), 1, 500)
    every = bound_terms(predict_x0, ddpm, x0, torch.Generator().manual_seed(1), 500).sum(1)
    torch.testing.assert_close(sum(terms.values()), every, rtol=1e-12, atol=0)
    assert all(name == "prior L_T" or name == "decoder L_0" or int(name.split("-")[1]) < num_timesteps for name in terms)

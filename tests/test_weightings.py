"""Loss weightings are functions of the process and time (diffusion/weightings.py): one weighting is
one objective whatever the network predicts, each process's default is its loss of before, and a new
weighting is one function and one registry line."""
import math

import pytest
import torch

import diffusion.weightings as weightings
from diffusion.config import DiffusionConfig
from diffusion.processes import make_process
from utils.errors import UserError

PREDICTIONS = {"ddpm": ("eps", "x0", "v"), "vdm": ("eps", "x0", "v", "velocity"), "flow": ("eps", "x0", "v", "velocity")}


def batch(process, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0, noise = torch.rand(6, 1, 4, 4, generator=g) * 2 - 1, torch.randn(6, 1, 4, 4, generator=g)
    t = torch.randint(1, 999, (6,), generator=g) if process == "ddpm" else torch.rand(6, generator=g) * 0.9 + 0.05
    return x0, noise, t, torch.randn(6, 1, 4, 4, generator=g)  # the last: an eps_hat


@pytest.mark.parametrize("process", sorted(PREDICTIONS))
@pytest.mark.parametrize("weighting", ["simple", "min_snr", "elbo", "velocity", "edm"])
def test_a_weighting_is_one_objective_whatever_the_network_predicts(process, weighting):
    """For every target, the loss of the output that means eps_hat is mean(w(t) ||eps - eps_hat||^2)."""
    if process == "ddpm" and weighting in weightings.CONTINUOUS_ONLY:
        return
    x0, noise, t, eps_hat = batch(process)
    losses = []
    for prediction in PREDICTIONS[process]:
        d = make_process(DiffusionConfig(process=process, prediction=prediction, weighting=weighting,
                                         clip_x0=False))  # any eps_hat, unclamped (the clamp: tests/test_clip_x0.py)
        x_t = d.q_sample(x0, t, noise)
        alpha, sigma = (v.reshape(-1, 1, 1, 1) for v in d.alpha_sigma(t))
        x0_hat = (x_t - sigma * eps_hat) / alpha
        out = d.target(x0_hat, eps_hat, t)  # the output whose (x0, eps) estimates are (x0_hat, eps_hat)
        losses.append(d.loss(out, x0, noise, t))
        expected = (weightings.WEIGHTINGS[weighting](d, t) * (eps_hat - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        torch.testing.assert_close(losses[-1], expected, rtol=2e-4, atol=0)


def test_each_process_s_default_is_its_loss_of_before():
    """DDPM: min-SNR-5 on eps, bit for bit; VDM: 1/2 gamma' ||eps - eps_hat||^2; flow: the MSE of the velocity."""
    x0, noise, t, out = batch("ddpm")
    ddpm = make_process(DiffusionConfig())
    snr = ddpm.snr_table[t]
    before = ((out - noise).pow(2).mean(dim=(1, 2, 3)) * (snr.clamp(max=5.0) / snr)).mean()
    assert torch.equal(ddpm.loss(out, x0, noise, t), before)
    x0, noise, t, out = batch("vdm")
    vdm = make_process(DiffusionConfig(process="vdm", clip_x0=False))  # (the clamp: tests/test_clip_x0.py)
    before = (0.5 * (vdm.gamma_max - vdm.gamma_min) * (out - noise).pow(2).mean(dim=(1, 2, 3))).mean()
    torch.testing.assert_close(vdm.loss(out, x0, noise, t), before, rtol=1e-6, atol=0)
    flow = make_process(DiffusionConfig(process="flow"))
    torch.testing.assert_close(flow.loss(out, x0, noise, t), (out - (noise - x0)).pow(2).mean(), rtol=1e-6, atol=0)


def test_a_new_weighting_is_one_function_and_one_registry_line(monkeypatch):
    """A weight of sqrt(SNR), registered by name: the loss is that weight on the eps error."""
    monkeypatch.setitem(weightings.WEIGHTINGS, "sqrt_snr", lambda process, t: process.snr(t).sqrt())
    x0, noise, t, out = batch("vdm")
    vdm = make_process(DiffusionConfig(process="vdm", clip_x0=False, weighting="sqrt_snr"))  # any eps_hat, unclamped
    expected = (vdm.snr(t).sqrt() * (out - noise).pow(2).mean(dim=(1, 2, 3))).mean()
    torch.testing.assert_close(vdm.loss(out, x0, noise, t), expected, rtol=1e-6, atol=0)


def test_a_weighting_a_process_cannot_compute_is_refused_in_one_line():
    with pytest.raises(UserError, match="--weighting elbo needs a continuous-time process, not ddpm"):
        DiffusionConfig(weighting="elbo")
    with pytest.raises(UserError, match="--weighting 'huber' is not one this version knows"):
        DiffusionConfig(weighting="huber")
    assert math.isfinite(make_process(DiffusionConfig(process="flow", weighting="edm")).loss(
        *[batch("flow")[i] for i in (3, 0, 1, 2)]).item())


# ---- training times (diffusion/times.py) -----------------------------------------------------------

def test_the_default_times_are_those_of_before():
    """DDPM: torch.randint over [0, T); VDM and flow: stratified (u + i / B) mod 1 in [t_min, t_max]."""
    for process in ("ddpm", "vdm", "flow"):
        d = make_process(DiffusionConfig(process=process))
        drawn = d.draw_t(64, torch.Generator().manual_seed(3), "cpu")
        g = torch.Generator().manual_seed(3)
        if process == "ddpm":
            before = torch.randint(0, 1000, (64,), generator=g)
        else:
            u = torch.remainder(torch.rand((), generator=g) + torch.arange(64) / 64, 1.0)
            before = d.t_min + (d.t_max - d.t_min) * u
        assert torch.equal(drawn, before), process


@pytest.mark.parametrize("process", ["ddpm", "vdm", "flow"])
@pytest.mark.parametrize("sampling", ["uniform", "stratified"])
def test_every_distribution_draws_times_inside_the_process_range(process, sampling):
    d = make_process(DiffusionConfig(process=process, t_sampling=sampling))
    t = d.draw_t(4096, torch.Generator().manual_seed(0), "cpu")
    lo, hi = (0, 999) if process == "ddpm" else (d.t_min, d.t_max)
    assert t.min() >= lo and t.max() <= hi
    middle = ((t.double() - lo) / (hi - lo) - 0.5).abs().lt(0.25).double().mean().item()
    assert abs(middle - 0.5) < 0.04, middle


def test_a_new_time_distribution_is_one_function_and_one_registry_line(monkeypatch):
    import diffusion.times as times
    monkeypatch.setitem(times.TIMES, "late", lambda process, batch, generator, device:
                        process.time_at(torch.rand(batch, generator=generator, device=device).sqrt()))
    config = DiffusionConfig(process="flow")
    config.t_sampling = "late"  # past the flag's choices, as a registered distribution would be
    t = make_process(config).draw_t(4096, torch.Generator().manual_seed(0), "cpu")
    assert abs(t.mean().item() - 2 / 3) < 0.02  # E[sqrt(u)] = 2/3


def test_the_weightings_are_their_closed_forms():
    """VDM's elbo is 1/2 gamma' = (gamma_max - gamma_min) / 2; flow matching's velocity weight on the
    eps error is 1 / (1 - t)^2; edm's is (1 / SNR + 1/4) / (1/4); min_snr's min(SNR, 5) / SNR."""
    t = torch.tensor([0.1, 0.5, 0.9])
    vdm, flow = make_process(DiffusionConfig(process="vdm")), make_process(DiffusionConfig(process="flow"))
    torch.testing.assert_close(weightings.elbo(vdm, t), torch.full((3,), 0.5 * (5.0 + 13.3)), rtol=1e-6, atol=0)
    torch.testing.assert_close(weightings.velocity(flow, t), 1 / (1 - t) ** 2, rtol=1e-6, atol=0)
    snr = ((1 - t) / t) ** 2
    torch.testing.assert_close(weightings.edm(flow, t), (1 / snr + 0.25) / 0.25, rtol=1e-5, atol=0)
    torch.testing.assert_close(weightings.min_snr(flow, t), snr.clamp(max=5.0) / snr, rtol=1e-5, atol=0)


def test_the_command_line_knows_every_registered_name(monkeypatch):
    """The flags' choices are the registries themselves: a name registered is a choice at once."""
    import dataclasses

    import diffusion.grids as grids
    import diffusion.times as times
    from diffusion.config import SamplingConfig
    from utils.flags import now
    choices = {f.name: set(now(f.metadata["choices"])) for cls in (DiffusionConfig, SamplingConfig)
               for f in dataclasses.fields(cls) if f.metadata["choices"]}
    assert choices["weighting"] == set(weightings.WEIGHTINGS) and choices["t_sampling"] == set(times.TIMES)
    assert choices["grid"] == {""} | set(grids.GRIDS)
    monkeypatch.setitem(weightings.WEIGHTINGS, "sqrt_snr", lambda process, t: process.snr(t).sqrt())
    monkeypatch.setitem(grids.GRIDS, "twice", grids.GRIDS["t"])
    assert DiffusionConfig(process="vdm", weighting="sqrt_snr").weighting == "sqrt_snr"
    assert SamplingConfig(grid="twice").grid == "twice"

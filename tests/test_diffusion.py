"""Closed-form and statistical checks of the schedules and the forward process."""
import numpy as np
import pytest
import torch

from diffusion.config import DiffusionConfig
from diffusion.ddpm import DDPM
from diffusion.schedules import cosine_betas, linear_betas, make_betas


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_alphas_cumprod_decreases_from_one_to_near_zero(schedule):
    d = DDPM(DiffusionConfig(schedule=schedule))
    ab = d.alphas_cumprod.double()
    assert torch.all(ab[1:] < ab[:-1])
    assert 0.99 < ab[0] < 1.0
    assert ab[-1] < 1e-3


def test_linear_schedule_is_ho_et_al():
    betas = linear_betas(1000)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    assert np.allclose(np.diff(betas), (0.02 - 1e-4) / 999)


def test_cosine_schedule_matches_its_alpha_bar():
    betas = cosine_betas(1000)
    alpha_bar = np.cumprod(1 - betas)
    s = 0.008
    f = lambda t: np.cos((t / 1000 + s) / (1 + s) * np.pi / 2) ** 2
    expected = f(np.arange(1, 1001)) / f(0)
    assert np.allclose(alpha_bar[:990], expected[:990], rtol=1e-6)
    assert betas.max() <= 0.999


def ho_posterior(betas):
    """(coef1, coef2, variance) of q(x_{t-1} | x_t, x_0) in Ho et al. 2020's form (eqs. 6-7), from betas."""
    alphas_cumprod = np.cumprod(1 - betas)
    prev = np.append(1.0, alphas_cumprod[:-1])
    return (betas * np.sqrt(prev) / (1 - alphas_cumprod), (1 - prev) * np.sqrt(1 - betas) / (1 - alphas_cumprod),
            betas * (1 - prev) / (1 - alphas_cumprod))


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_the_posterior_from_alpha_and_sigma_is_ho_et_al_s(schedule):
    """DDPM's posterior is the shared one of diffusion/gaussian.py (Kingma et al. 2021, eq. 31) on
    its grid; in float64 it matches Ho et al.'s coefficients, and in float32 it is their tables'."""
    d = DDPM(DiffusionConfig(schedule=schedule))
    steps = torch.arange(1000)
    ours = d.posterior64(steps, steps - 1)
    for mine, theirs in zip(ours, ho_posterior(make_betas(d.config))):
        assert np.allclose(mine.numpy(), theirs, rtol=1e-9, atol=1e-15)
        assert torch.equal(mine.float(), torch.tensor(theirs, dtype=torch.float32))
    a, variance = d.transition64(steps - 1, steps)
    assert np.allclose(variance.numpy(), make_betas(d.config), rtol=1e-9)
    assert np.allclose(a.numpy(), np.sqrt(1 - make_betas(d.config)), rtol=1e-12)


def test_posterior_variance_closed_forms():
    d = DDPM(DiffusionConfig())
    steps = torch.arange(1000)
    variance = d.posterior64(steps, steps - 1)[2]
    assert variance[0].item() == 0.0
    assert variance[-1].item() == pytest.approx(0.02, rel=1e-3)
    assert torch.all(variance[1:] <= d.betas[1:].double())


def test_posterior_mean_recovers_x0_at_t0():
    d = DDPM(DiffusionConfig())
    x0, xt = torch.randn(4, 1, 5, 5), torch.randn(4, 1, 5, 5)
    mean, var = d.posterior(x0, xt, 0, -1)
    assert torch.equal(mean, x0) and torch.all(var == 0)


@pytest.mark.parametrize("t", [0, 250, 999])
def test_q_sample_mean_and_variance(t):
    d = DDPM(DiffusionConfig())
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000, 1, 1, 1), 0.7)
    noise = torch.randn(x0.shape, generator=g)
    xt = d.q_sample(x0, torch.full((len(x0),), t), noise)
    ab = d.alphas_cumprod[t].item()
    assert xt.mean().item() == pytest.approx(np.sqrt(ab) * 0.7, abs=0.01)
    assert xt.var().item() == pytest.approx(1 - ab, rel=0.02, abs=1e-4)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_every_target_gives_back_x0_and_eps(prediction):
    """Fed its exact target, each parameterisation recovers the true x0 and noise."""
    d = DDPM(DiffusionConfig(prediction=prediction))
    x0 = torch.rand(8, 1, 6, 6) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 1, 10, 100, 500, 900, 998, 999])
    xt = d.q_sample(x0, t, noise)
    x0_hat, eps_hat = d.predict_x0_eps(xt, t, d.target(x0, noise, t))
    assert torch.allclose(x0_hat, x0, atol=2e-3)
    assert torch.allclose(eps_hat[t > 0], noise[t > 0], atol=2e-3)


def test_min_snr_weighting_downweights_small_t_only():
    plain = DDPM(DiffusionConfig(min_snr_gamma=0))
    weighted = DDPM(DiffusionConfig(min_snr_gamma=5))
    x0, noise = torch.zeros(2, 1, 2, 2), torch.randn(2, 1, 2, 2)
    for t, same in ((999, True), (0, False)):
        tt = torch.full((2,), t)
        out = torch.zeros_like(x0)
        a, b = plain.loss(out, x0, noise, tt), weighted.loss(out, x0, noise, tt)
        assert (a.item() == pytest.approx(b.item())) == same


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("gamma", [0.0, 5.0])
def test_min_snr_weight_is_the_same_x0_weight_for_every_target(prediction, gamma):
    """Min-SNR-gamma (Hang et al. 2023) weights the x0 error by min(SNR_t, gamma). For a prediction
    that implies the same wrong x0_hat, every parameterisation must give that same weighted loss
    (gamma = 0: the plain MSE of the target itself, which differs between targets)."""
    d = DDPM(DiffusionConfig(prediction=prediction, min_snr_gamma=gamma))
    torch.manual_seed(0)
    t = torch.tensor([5, 100, 400, 900])
    x0, noise = torch.rand(4, 1, 3, 3) * 2 - 1, torch.randn(4, 1, 3, 3)
    x_t = d.q_sample(x0, t, noise)
    x0_hat = x0 + 0.1 * torch.randn_like(x0)
    ab = d.alphas_cumprod[t].view(-1, 1, 1, 1)
    eps_hat = (x_t - ab.sqrt() * x0_hat) / (1 - ab).sqrt()
    output = d.target(x0_hat, eps_hat, t)  # what a network of this target outputs for x0_hat
    snr = (ab / (1 - ab)).view(-1).double()
    x0_error = (x0_hat - x0).double().pow(2).mean(dim=(1, 2, 3))
    if gamma:
        expected = (snr.clamp(max=gamma) * x0_error).mean()
    else:
        expected = (output - d.target(x0, noise, t)).double().pow(2).mean()
    assert d.loss(output, x0, noise, t).item() == pytest.approx(expected.item(), rel=1e-3)

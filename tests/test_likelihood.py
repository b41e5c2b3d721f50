"""Bits per dimension: the discretised decoder, the variational bound and the probability-flow
ODE against closed forms, and likelihood.py on the shipped model."""
import math

import numpy as np
import pytest
import torch

import likelihood
from diffusion.config import DiffusionConfig
from diffusion.ddpm import DDPM
from diffusion.likelihood import bound_terms, discretised_gaussian_log_likelihood, ode_log_likelihood
from diffusion.schedules import linear_betas
from models.load import SHIPPED_MODEL

GRID = torch.arange(256, dtype=torch.float64) / 127.5 - 1  # the 256 pixel values in the model's range


@pytest.mark.parametrize("mean, scale", [(0.0, 0.01), (0.3, 0.5), (-0.99, 0.003), (1.7, 0.2), (-3.0, 2.0)])
def test_the_discretised_decoder_sums_to_one_over_the_256_bins(mean, scale):
    log_p = discretised_gaussian_log_likelihood(GRID, torch.tensor(mean), torch.tensor(math.log(scale)))
    assert abs(log_p.exp().sum().item() - 1) < 1e-9


def phi(z):
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def test_the_bound_of_the_exact_model_of_a_point_equals_its_closed_form():
    """Data: one fixed 8-bit image x*. The exact model predicts x0 = x*, so every KL term is 0 and
    the bound is the prior term plus the decoder's log-probability of x* at its bin's centre."""
    diffusion = DDPM(DiffusionConfig(num_timesteps=40))
    x_star = GRID[torch.tensor([0, 3, 128, 200, 255, 17])].view(1, 1, 2, 3)
    terms = bound_terms(lambda x, t: x_star.float().expand_as(x), diffusion, x_star, torch.Generator().manual_seed(0))
    betas = linear_betas(40)  # the bound is computed in float64 from the schedule's definition
    a_bar, sigma = float(np.prod(1 - betas)), math.sqrt(betas[0])
    prior = sum(0.5 * (1 - a_bar + a_bar * v * v - 1 - math.log(1 - a_bar)) for v in x_star.flatten().tolist())
    inner = math.log(phi(1 / 255 / sigma) - phi(-1 / 255 / sigma))
    decoder = -sum(math.log(phi(1 / 255 / sigma)) if abs(v) == 1 else inner for v in x_star.flatten().tolist())
    assert torch.all(terms[0, 1:40] < 1e-6)
    assert terms[0, 40].item() == pytest.approx(prior, rel=1e-9)
    assert terms[0, 0].item() == pytest.approx(decoder, rel=1e-9)


def test_the_bound_of_the_exact_model_of_a_gaussian_matches_its_expected_terms():
    """Data N(0, s^2 I): the exact model predicts x0 = E[x0 | x_t] = alpha s^2 / (alpha^2 s^2 + sigma^2) x_t.
    Each KL term's expectation and the prior term have closed forms; the bound's Monte Carlo mean
    over images must match them within 4 standard errors."""
    s2, T, n = 0.25, 20, 4000
    diffusion = DDPM(DiffusionConfig(num_timesteps=T))
    a_bar = diffusion.alphas_cumprod.double()
    gain = a_bar.sqrt() * s2 / (a_bar * s2 + 1 - a_bar)

    def exact_x0(x, t):
        return gain[t].float().view(-1, 1, 1, 1) * x

    x0 = torch.randn(n, 1, 1, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * math.sqrt(s2)
    terms = bound_terms(exact_x0, diffusion, x0, torch.Generator().manual_seed(2), batch_size=4000)
    betas = diffusion.betas.double()  # q(x_{t-1} | x_t, x_0)'s coefficient of x_0 and variance, Ho et al. eq. 7
    prev = torch.cat([torch.ones(1, dtype=torch.float64), a_bar[:-1]])
    c1, var = betas * prev.sqrt() / (1 - a_bar), betas * (1 - prev) / (1 - a_bar)
    for t in (1, 5, T - 1):
        k, alpha, sigma2 = gain[t], a_bar[t].sqrt(), 1 - a_bar[t]
        expected = 2 * c1[t] ** 2 * ((1 - k * alpha) ** 2 * s2 + k ** 2 * sigma2) / (2 * var[t])
        mean, error = terms[:, t].mean(), terms[:, t].std() / math.sqrt(n)
        assert abs(mean - expected) < 4 * error, (t, mean, expected, error)
    v = 1 - a_bar[-1]
    expected_prior = 2 * 0.5 * (v + a_bar[-1] * s2 - 1 - torch.log(v))
    assert abs(terms[:, T].mean() - expected_prior) < 4 * terms[:, T].std() / math.sqrt(n)


def test_the_ode_likelihood_of_a_gaussian_matches_the_closed_form():
    """Data N(0, s^2 I) and its exact eps: the flow is linear, so log p_0(x) is known exactly (with
    the N(0, I) prior at t = T-1 in place of the true marginal, as the estimator uses it)."""
    s2, dim = 0.3, 6
    diffusion = DDPM(DiffusionConfig())
    log_a_bar = torch.log(diffusion.alphas_cumprod.double())

    def a_bar_at(t):  # log-linear between integer steps, as the ODE interpolates
        i = t.floor().long().clamp(max=len(log_a_bar) - 2)
        return torch.exp(log_a_bar[i] + (log_a_bar[i + 1] - log_a_bar[i]) * (t.double() - i))

    def exact_eps(x, t):
        a = a_bar_at(t).view(-1, 1, 1, 1)
        return ((1 - a).sqrt() * x / (a * s2 + 1 - a)).float()

    x = torch.randn(3, 1, 2, 3, generator=torch.Generator().manual_seed(0)) * math.sqrt(s2)
    log_p, evaluations = ode_log_likelihood(exact_eps, diffusion, x, torch.Generator().manual_seed(1), 1e-7, 1e-7)

    def log_normal(z, var):
        return -0.5 * (z ** 2).sum((1, 2, 3)) / var - 0.5 * dim * math.log(2 * math.pi * var)

    a0, aT = diffusion.alphas_cumprod[0].double(), diffusion.alphas_cumprod[-1].double()
    v0, vT = a0 * s2 + 1 - a0, aT * s2 + 1 - aT
    x_end = x.double() * (vT / v0).sqrt()
    expected = log_normal(x.double(), v0) - log_normal(x_end, vT) + log_normal(x_end, 1.0)
    torch.testing.assert_close(log_p, expected, rtol=0, atol=1e-3)
    assert evaluations > 10


def test_likelihood_py_reports_both_methods_for_the_shipped_model(tmp_path, mnist_dir, capsys):
    results = likelihood.main(["--checkpoint_path", str(SHIPPED_MODEL), "--num_images", "2", "--ode_images", "1",
                               "--rtol", "1e-3", "--atol", "1e-3", "--data_dir", mnist_dir,
                               "--out", str(tmp_path / "l.json")])
    for method in ("bound", "ode"):
        assert 0.3 < results[method]["bits_per_dim"] < 8
    assert sum(results["bound"]["breakdown"].values()) == pytest.approx(results["bound"]["bits_per_dim"], rel=1e-6)
    assert "FFJORD 0.99" in capsys.readouterr().out

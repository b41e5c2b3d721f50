"""Samplers on a data distribution with a known optimal denoiser: a single point x*.

For data that is always x*, the best noise prediction is eps = (x_t - sqrt(ab_t) x*) / sqrt(1 - ab_t),
so every correct sampler must land on x* from any starting noise.
"""
import importlib.util

import pytest
import torch

from diffusion.gaussian import GaussianDiffusion
from diffusion.samplers import DEFAULT_STEPS, SAMPLERS, make_denoiser, make_timesteps, sample
from utils.config import DiffusionConfig


def oracle(diffusion, target_x0):
    """A perfect network for the one-point distribution, in the diffusion's own target."""
    def denoise(x, t):
        ab = diffusion.alphas_cumprod[t].view(-1, 1, 1, 1)
        eps = (x - ab.sqrt() * target_x0) / (1 - ab).sqrt()
        return diffusion.target(target_x0.expand_as(x), eps, t)
    return denoise


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++"])
def test_samplers_reach_the_only_data_point(sampler, prediction):
    d = GaussianDiffusion(DiffusionConfig(num_timesteps=200, prediction=prediction))
    x_star = torch.linspace(-0.9, 0.9, 16).view(1, 1, 4, 4)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(3, 1, 4, 4, generator=g)
    final, _ = sample(sampler, oracle(d, x_star), d, noise, steps=10, eta=0.5, generator=g)
    assert torch.allclose(final, x_star.expand_as(final), atol=1e-3)


def test_trajectory_runs_from_t_max_to_zero_then_final():
    d = GaussianDiffusion(DiffusionConfig(num_timesteps=100))
    x_star = torch.zeros(1, 1, 2, 2)
    timesteps = make_timesteps("ddim", 100, 5)
    assert timesteps == [99, 74, 50, 25, 0]
    steps = list(SAMPLERS["ddim"](oracle(d, x_star), d, torch.randn(2, 1, 2, 2), timesteps))
    assert [s.t for s in steps] == timesteps + [-1]
    assert torch.equal(steps[-1].x, steps[-1].pred_x0)


def test_make_timesteps():
    assert make_timesteps("ddpm", 1000, 20) == list(range(999, -1, -1))
    ts = make_timesteps("dpm++", 1000, 20)
    assert len(ts) == 20 and ts[0] == 999 and ts[-1] == 0 and ts == sorted(ts, reverse=True)
    with pytest.raises(ValueError):
        make_timesteps("ddim", 100, 101)


def test_ddim_eta0_is_deterministic_and_eta1_is_not():
    d = GaussianDiffusion(DiffusionConfig(num_timesteps=100))
    net = lambda x, t: 0.1 * x  # any fixed function will do
    noise = torch.randn(2, 1, 3, 3)
    run = lambda eta, seed: sample("ddim", net, d, noise, steps=10, eta=eta,
                                   generator=torch.Generator().manual_seed(seed))[0]
    assert torch.equal(run(0.0, 1), run(0.0, 2))
    assert not torch.equal(run(1.0, 1), run(1.0, 2))


def test_guidance_is_one_batched_pass_with_null_label():
    calls = []

    def model(x, t, y):
        calls.append(y.clone())
        return torch.where(y.view(-1, 1, 1, 1) == 10, torch.ones_like(x), 3 * torch.ones_like(x))

    labels = torch.tensor([1, 2])
    out = make_denoiser(model, labels, guidance=2.0, null_label=10)(torch.zeros(2, 1, 2, 2), torch.zeros(2))
    assert len(calls) == 1 and calls[0].tolist() == [1, 2, 10, 10]
    assert torch.allclose(out, torch.full_like(out, 3 + 2 * (3 - 1)))  # cond + w (cond - uncond)
    out0 = make_denoiser(model, labels, guidance=0.0, null_label=10)(torch.zeros(2, 1, 2, 2), torch.zeros(2))
    assert torch.allclose(out0, torch.full_like(out0, 3.0))


def test_default_steps_cover_every_sampler():
    assert set(DEFAULT_STEPS) == set(SAMPLERS)


diffusers_missing = importlib.util.find_spec("diffusers") is None


@pytest.mark.skipif(diffusers_missing, reason="diffusers is not installed (see requirements-dev.txt)")
@pytest.mark.parametrize("t", [999, 500, 3, 0])
def test_ddpm_step_matches_diffusers(t):
    from diffusers import DDPMScheduler
    d = GaussianDiffusion(DiffusionConfig())
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True,
                        variance_type="fixed_small")
    x, eps = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    expected = ref.step(eps, t, x, generator=torch.Generator().manual_seed(7)).prev_sample
    # one step of ours, drawing its noise from an identically seeded generator
    steps = SAMPLERS["ddpm"](lambda xx, tt: eps, d, x, [t], generator=torch.Generator().manual_seed(7))
    ours = list(steps)[-1].x
    assert torch.allclose(ours, expected, atol=1e-4)  # float32 rounding of differently ordered maths


@pytest.mark.skipif(diffusers_missing, reason="diffusers is not installed (see requirements-dev.txt)")
def test_ddim_step_matches_diffusers():
    from diffusers import DDIMScheduler
    d = GaussianDiffusion(DiffusionConfig())
    ref = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                        set_alpha_to_one=True, timestep_spacing="linspace")
    x = torch.randn(2, 1, 4, 4)
    eps = torch.randn(2, 1, 4, 4)
    for t, t_prev in ((999, 899), (500, 400)):
        ref.num_inference_steps = 10
        ours = list(SAMPLERS["ddim"](lambda xx, tt: eps, d, x, [t, t_prev], clip=False))
        expected = ref.step(eps, t, x, eta=0.0).prev_sample
        assert torch.allclose(ours[1].x, expected, atol=1e-5)

"""Samplers on a data distribution with a known optimal denoiser: a single point x*.

For data that is always x*, the best noise prediction is eps = (x_t - sqrt(ab_t) x*) / sqrt(1 - ab_t),
so every correct sampler must land on x* from any starting noise.
"""
import importlib.util

import pytest
import torch

from diffusion.config import DiffusionConfig, SamplingConfig
from diffusion.ddpm import DDPM
from diffusion.pipeline import make_denoiser
from diffusion.samplers import SAMPLERS, make_timesteps, sample
from utils.config import ModelConfig


def gaussian_oracle(diffusion, c):
    """The exact eps-prediction for data ~ N(0, c^2): E[x0 | x_t] = sqrt(ab) c^2 / (ab c^2 + 1 - ab) x_t."""
    def exact_eps(x, t):
        ab = diffusion.alphas_cumprod[t].view(-1, 1, 1, 1).float()
        x0 = ab.sqrt() * c ** 2 / (ab * c ** 2 + 1 - ab) * x
        return (x - ab.sqrt() * x0) / (1 - ab).sqrt()
    return exact_eps


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
    d = DDPM(DiffusionConfig(num_timesteps=200, prediction=prediction))
    x_star = torch.linspace(-0.9, 0.9, 16).view(1, 1, 4, 4)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(3, 1, 4, 4, generator=g)
    final = sample(sampler, oracle(d, x_star), d, noise, steps=10, eta=0.5, generator=g)
    assert torch.allclose(final, x_star.expand_as(final), atol=1e-3)


def test_trajectory_runs_from_t_max_to_zero_then_final():
    d = DDPM(DiffusionConfig(num_timesteps=100))
    x_star = torch.zeros(1, 1, 2, 2)
    timesteps = make_timesteps("ddim", d, 5)
    assert timesteps == [99, 74, 50, 25, 0]
    steps = list(SAMPLERS["ddim"](oracle(d, x_star), d, torch.randn(2, 1, 2, 2), timesteps))
    assert [s.t for s in steps] == timesteps + [-1]
    assert torch.equal(steps[-1].x, steps[-1].pred_x0)


def test_make_timesteps():
    d = DDPM(DiffusionConfig())
    assert make_timesteps("ddpm", d, 20) == list(range(999, -1, -1))
    assert make_timesteps("ddim", d, 4) == [999, 666, 333, 0]
    ts = make_timesteps("dpm++", d, 20)
    assert len(ts) == 20 and ts[0] == 999 and ts[-1] == 0 and ts == sorted(ts, reverse=True)
    # dpm++ steps are evenly spaced in log-SNR: equal gaps in lambda up to the rounding to integer t
    gaps = d.log_snr[ts].diff()
    assert torch.allclose(gaps, gaps.mean().expand_as(gaps), rtol=0.3)  # uniform in t: gaps from 0.1 to 3
    assert len(make_timesteps("dpm++", d, 1000)) < 1000  # neighbours merged near t = 0, never repeated
    with pytest.raises(ValueError):
        make_timesteps("ddim", DDPM(DiffusionConfig(num_timesteps=100)), 101)


def test_ddim_eta0_is_deterministic_and_eta1_is_not():
    d = DDPM(DiffusionConfig(num_timesteps=100))
    net = lambda x, t: 0.1 * x  # any fixed function will do
    noise = torch.randn(2, 1, 3, 3)
    run = lambda eta, seed: sample("ddim", net, d, noise, steps=10, eta=eta,
                                   generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(0.0, 1), run(0.0, 2))
    assert not torch.equal(run(1.0, 1), run(1.0, 2))


class FakeModel:
    """Stands in for the U-Net: records what it is given; outputs 1 for the null label, 3 otherwise."""

    def __init__(self, num_classes=10):
        self.config = ModelConfig(num_classes=num_classes)
        self.calls = []

    def __call__(self, x, t, y):
        self.calls.append((int(t[0]), y.clone()))
        return torch.where(y.view(-1, 1, 1, 1) == self.config.num_classes, torch.ones_like(x), 3 * torch.ones_like(x))


def test_guidance_is_one_batched_pass_with_null_label():
    model, labels = FakeModel(), torch.tensor([1, 2])
    out = make_denoiser(model, DDPM(DiffusionConfig()), labels, guidance=2.0)(torch.zeros(2, 1, 2, 2), 500)
    assert len(model.calls) == 1 and model.calls[0][1].tolist() == [1, 2, 10, 10]
    assert torch.allclose(out, torch.full_like(out, 3 + 2 * (3 - 1)))  # cond + w (cond - uncond)
    out0 = make_denoiser(model, DDPM(DiffusionConfig()), labels, guidance=0.0)(torch.zeros(2, 1, 2, 2), 500)
    assert torch.allclose(out0, torch.full_like(out0, 3.0))


def test_guidance_interval_guides_only_the_steps_inside_it():
    model, d = FakeModel(), DDPM(DiffusionConfig())
    denoise = make_denoiser(model, d, torch.tensor([3, 4]), guidance=0.5, interval=(0.25, 0.7))
    sample("dpm++", denoise, d, torch.randn(2, 1, 2, 2), steps=20)
    batches = [(t, len(y)) for t, y in model.calls]
    guided = [t for t, n in batches if n == 4]  # cond and uncond batched together
    assert len(batches) == 20 and guided and all(250 <= t <= 700 for t in guided)
    assert all(n == 2 for t, n in batches if not 250 <= t <= 700)
    # the default interval guides 2 of the 8 default dpm++ steps: 10 network evaluations per digit
    default = SamplingConfig()
    ts = make_timesteps(default.sampler, d, default.steps)
    lo, hi = default.guidance_interval
    assert ts == [999, 851, 673, 440, 177, 44, 8, 0] and sum(lo <= t / 1000 <= hi for t in ts) == 2


def test_every_sampler_can_be_chosen():
    import dataclasses
    choices = next(f for f in dataclasses.fields(SamplingConfig) if f.name == "sampler").metadata["choices"]
    assert set(choices) == set(SAMPLERS)


diffusers_missing = importlib.util.find_spec("diffusers") is None


@pytest.mark.skipif(diffusers_missing, reason="diffusers is not installed (see requirements-dev.txt)")
@pytest.mark.parametrize("t", [999, 500, 3, 0])
def test_ddpm_step_matches_diffusers(t):
    from diffusers import DDPMScheduler
    d = DDPM(DiffusionConfig())
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True,
                        variance_type="fixed_small")
    x, eps = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    expected = ref.step(eps, t, x, generator=torch.Generator().manual_seed(7)).prev_sample
    # one step of ours, t to t - 1, drawing its noise from an identically seeded generator
    steps = SAMPLERS["ddpm"](lambda xx, tt: eps, d, x, [t, t - 1] if t else [t], generator=torch.Generator().manual_seed(7))
    ours = list(steps)[1].x
    assert torch.allclose(ours, expected, atol=1e-4)  # float32 rounding of differently ordered maths


@pytest.mark.skipif(diffusers_missing, reason="diffusers is not installed (see requirements-dev.txt)")
def test_ddim_step_matches_diffusers():
    from diffusers import DDIMScheduler
    d = DDPM(DiffusionConfig())
    ref = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                        set_alpha_to_one=True, timestep_spacing="linspace")
    x = torch.randn(2, 1, 4, 4)
    eps = torch.randn(2, 1, 4, 4)
    for t, t_prev in ((999, 899), (500, 400)):
        ref.num_inference_steps = 10
        ours = list(SAMPLERS["ddim"](lambda xx, tt: eps, d, x, [t, t_prev], clip=False))
        expected = ref.step(eps, t, x, eta=0.0).prev_sample
        assert torch.allclose(ours[1].x, expected, atol=1e-5)


@pytest.mark.skipif(diffusers_missing, reason="diffusers is not installed (see requirements-dev.txt)")
@pytest.mark.parametrize("eta, algorithm", [(0.0, "dpmsolver++"), (1.0, "sde-dpmsolver++")])
def test_dpm_solver_pp_matches_diffusers(eta, algorithm):
    """DPM-Solver++(2M), ODE and SDE, against diffusers' DPMSolverMultistepScheduler on the same
    timesteps, the same network outputs and the same noise, over a whole trajectory."""
    from diffusers import DPMSolverMultistepScheduler
    d = DDPM(DiffusionConfig())
    timesteps = make_timesteps("dpm++", d, 8)
    outputs = {t: torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(t)) for t in timesteps}
    x = torch.randn(2, 1, 4, 4)
    ref = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear", solver_order=2,
                                      algorithm_type=algorithm, lower_order_final=True)
    ref.set_timesteps(timesteps=timesteps)
    generator, expected = torch.Generator().manual_seed(5), x
    for t in ref.timesteps:
        expected = ref.step(outputs[int(t)], t, expected, generator=generator).prev_sample
    ours = sample("dpm++", lambda xx, tt: outputs[tt], d, x, steps=8, eta=eta,
                     generator=torch.Generator().manual_seed(5), clip=False)
    assert torch.allclose(ours, expected, rtol=1e-4, atol=1e-4)  # float32 rounding; values reach ~400


def test_dpm_sde_first_step_is_the_ddpm_posterior_step():
    # At eta = 1 and first order (the first step, D = x0), SDE-DPM-Solver++ is the posterior
    # q(x_s | x_t, x0) on the subsequence, which is DDIM with eta = 1; same noise, same result.
    d = DDPM(DiffusionConfig())
    x, out = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    for t, s in ((999, 899), (400, 150), (30, 0)):
        runs = [list(SAMPLERS[name](lambda xx, tt: out, d, x, [t, s], torch.Generator().manual_seed(3), eta=1.0,
                                    clip=False))[1].x for name in ("dpm++", "ddim")]
        assert torch.allclose(runs[0], runs[1], atol=1e-5)


@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 1.0), ("dpm++", 0.0), ("dpm++", 1.0)])
def test_samplers_recover_a_gaussian_data_distribution(sampler, eta):
    # Data ~ N(0, c^2) has an exact denoiser, so with enough steps every sampler must return samples
    # with standard deviation c. A wrong noise scale in a stochastic update (or a wrong ODE
    # coefficient) shows up directly in the spread.
    d, c = DDPM(DiffusionConfig()), 0.5
    noise = torch.randn(20000, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    final = sample(sampler, gaussian_oracle(d, c), d, noise, steps=250, eta=eta, generator=torch.Generator().manual_seed(1),
                      clip=False)
    assert abs(final.std().item() / c - 1) < 0.03
    assert abs(final.mean().item()) < 0.02


def test_dpm_solver_is_second_order_on_the_probability_flow_ode():
    # For data ~ N(0, c^2) the ODE keeps x_t / sqrt(ab_t c^2 + 1 - ab_t) constant, so the exact end
    # point is known. Doubling the steps must cut a second-order solver's error about 4x (2x for
    # first order, e.g. without the multistep correction D).
    d, c = DDPM(DiffusionConfig()), 0.5
    ab = d.alphas_cumprod.double()
    x = torch.linspace(-2, 2, 9).view(-1, 1, 1, 1)
    x_at_0 = x.double() * ((ab[0] * c ** 2 + 1 - ab[0]) / (ab[999] * c ** 2 + 1 - ab[999])).sqrt()
    exact = ab[0].sqrt() * c ** 2 / (ab[0] * c ** 2 + 1 - ab[0]) * x_at_0  # the final step returns x0_hat at t = 0
    errors = [(sample("dpm++", gaussian_oracle(d, c), d, x, steps=n, eta=0.0, clip=False) - exact).abs().max().item()
              for n in (20, 40)]
    assert errors[0] / errors[1] > 3 and errors[1] < 0.01

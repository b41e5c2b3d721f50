"""Every process through one interface: closed forms for Gaussian data, DDPM's formulas kept, and
short --process vdm / flow runs that train, resume exactly, sample, edit and give bits/dim."""
import math

import pytest
import torch

import inference
import likelihood
import train
from conftest import TINY_MODEL
from diffusion.config import DiffusionConfig
from diffusion.continuous import VDM, Flow
from diffusion.ddpm import DDPM
from diffusion.likelihood import ode_log_likelihood, vdm_bound_terms, vdm_diffusion_term
from diffusion.samplers import SAMPLERS, make_timesteps, sample
from test_train import assert_same_state
from utils.checkpoint import load_checkpoint
from utils.flags import from_args, parse_flags

PROCESSES = {"ddpm": lambda: DDPM(DiffusionConfig()),
             "vdm": lambda: VDM(DiffusionConfig(process="vdm")),
             "flow": lambda: Flow(DiffusionConfig(process="flow"))}


def exact_eps(process, c2):
    """E[eps | x_t] for data N(0, c2 I): sigma_t / (alpha_t^2 c2 + sigma_t^2) x_t, at a float time
    (DDPM: its integer timesteps)."""
    def eps(x, t):
        alpha, sigma = (v.double() for v in process.alpha_sigma(t))
        shape = (-1, 1, 1, 1) if alpha.dim() else ()
        alpha, sigma = alpha.reshape(shape), sigma.reshape(shape)
        return (sigma / (alpha ** 2 * c2 + sigma ** 2) * x.double()).float()
    return eps


@pytest.mark.parametrize("name", ["vdm", "flow"])
def test_the_ode_likelihood_of_a_gaussian_matches_the_closed_form(name):
    """The exact flow of N(0, c2 I) data is linear, x(t) = x sqrt(v_t / v_0) with v_t = alpha_t^2 c2
    + sigma_t^2, so log p_{t0}(x) is known (with the estimator's N(0, I) prior at the last time)."""
    process, c2, dim = PROCESSES[name](), 0.3, 6
    x = torch.randn(3, 1, 2, 3, generator=torch.Generator().manual_seed(0)) * math.sqrt(c2)
    log_p, _ = ode_log_likelihood(exact_eps(process, c2), process, x, torch.Generator().manual_seed(1), 1e-7, 1e-7)

    def variance(t):
        alpha, sigma = process.alpha_sigma64(torch.tensor(t, dtype=torch.float64))
        return alpha ** 2 * c2 + sigma ** 2

    def log_normal(z, var):
        return -0.5 * (z ** 2).sum((1, 2, 3)) / var - 0.5 * dim * math.log(2 * math.pi * var)

    (t0, t1), x = process.ode_span(), x.double()
    x_end = x * (variance(t1) / variance(t0)).sqrt()
    expected = log_normal(x, variance(t0)) - log_normal(x_end, variance(t1)) + log_normal(x_end, 1.0)
    torch.testing.assert_close(log_p, expected, rtol=0, atol=2e-3)


def test_the_vdm_diffusion_term_of_the_exact_denoiser_matches_its_closed_form():
    """For data N(0, c2 I) and the exact eps, E_x[L_diff] = 1/2 D int c2 e^-g / (c2 e^-g + 1) dg over
    [gamma_min, gamma_max] = D/2 [log(1 + c2 e^-gamma_min) - log(1 + c2 e^-gamma_max)]."""
    process, c2 = PROCESSES["vdm"](), 0.3
    x = torch.randn(400, 1, 2, 2, generator=torch.Generator().manual_seed(3)) * math.sqrt(c2)
    terms = vdm_bound_terms(exact_eps(process, c2), process, x, torch.Generator().manual_seed(4), t_samples=20,
                            batch_size=4000)
    expected = 4 / 2 * (math.log(1 + c2 * math.exp(13.3)) - math.log(1 + c2 * math.exp(-5.0)))
    diffusion = terms[:, 2]
    assert abs(diffusion.mean().item() - expected) < 4 * diffusion.std().item() / math.sqrt(len(x))
    one = torch.tensor(1.0, dtype=torch.float64)
    alpha1, sigma1 = process.alpha_sigma64(one)
    expected_prior = 4 * 0.5 * (sigma1 ** 2 + alpha1 ** 2 * c2 - torch.log(sigma1 ** 2) - 1)
    assert abs(terms[:, 0].mean() - expected_prior) < 4 * terms[:, 0].std() / math.sqrt(len(x))


def test_the_diffusion_term_over_a_slice_of_time_is_the_closed_form():
    """For data N(0, c2 I) and the exact eps, VDM's diffusion term over [lo, hi] is
    D/2 [log(1 + c2 e^-gamma(lo)) - log(1 + c2 e^-gamma(hi))]."""
    process, c2, dim = PROCESSES["vdm"](), 0.3, 4
    x = torch.randn(2000, 1, 2, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x *= math.sqrt(c2 / x.pow(2).mean())  # both sides are linear in x^2: the sample's mean square is c2
    generator, eps = torch.Generator().manual_seed(4), exact_eps(process, c2)

    def closed_form(lo, hi):
        log_snr_term = [math.log(1 + c2 * math.exp(-process.gamma(t))) for t in (lo, hi)]
        return dim / 2 * (log_snr_term[0] - log_snr_term[1])

    for lo, hi in ((0.0, 0.05), (0.3, 0.6), (0.9, 1.0)):
        values = vdm_diffusion_term(eps, process, x, generator, 4, lo=lo, hi=hi)
        assert abs(values.mean().item() - closed_form(lo, hi)) < 4 * values.std().item() / math.sqrt(len(x))


@pytest.mark.parametrize("sampler, steps", [("heun", 40), ("dpm++", 40), ("ddim", 100)])
def test_the_exact_flow_velocity_carries_noise_to_the_data_gaussian(sampler, steps):
    """Flow matching's exact velocity for data N(0, c2 I), E[eps - x0 | x_t] = (t - (1 - t) c2) /
    ((1 - t)^2 c2 + t^2) x_t, turns N(0, I) into N(0, c2 I) with every ODE sampler."""
    process, c2 = PROCESSES["flow"](), 0.3

    def velocity(x, t):
        return (t - (1 - t) * c2) / ((1 - t) ** 2 * c2 + t ** 2) * x

    noise = torch.randn(20000, 1, 1, 2, generator=torch.Generator().manual_seed(5))
    final = sample(sampler, velocity, process, noise, steps, eta=0.0, clip=False)
    assert abs(final.var().item() - c2) < 0.02 and abs(final.mean().item()) < 0.02


def test_ddim_keeps_the_variance_preserving_formula_of_song_et_al():
    """DDIM, now written for any alpha and sigma, equals eqs. 12 and 16 in alpha_bar on DDPM's
    process, to float precision."""
    d = PROCESSES["ddpm"]()
    net = lambda x, t: 0.1 * x + 0.01 * t / 1000  # noqa: E731  (any fixed function)
    noise = torch.randn(4, 1, 3, 3, generator=torch.Generator().manual_seed(6))
    timesteps = make_timesteps("ddim", d, 10)
    ours = list(SAMPLERS["ddim"](net, d, noise, timesteps, torch.Generator().manual_seed(7), eta=0.5))[-1].x
    x, generator = noise, torch.Generator().manual_seed(7)
    for i, t in enumerate(timesteps):
        x0, eps = d.predict_x0_eps(x, t, net(x, t))
        x0 = x0.clamp(-1, 1)
        eps = (x - d.alpha_sigma(t)[0] * x0) / d.alpha_sigma(t)[1]
        ab = d.alphas_cumprod[t]
        ab_prev = d.alphas_cumprod[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.tensor(1.0)
        sigma = 0.5 * ((1 - ab_prev) / (1 - ab)).sqrt() * (1 - ab / ab_prev).sqrt()
        x = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma ** 2).clamp(min=0).sqrt() * eps
        if i + 1 < len(timesteps):
            x = x + sigma * torch.randn(x.shape, generator=generator)
    torch.testing.assert_close(ours, x, rtol=0, atol=1e-5)


@pytest.mark.parametrize("process", ["vdm", "flow"])
def test_a_short_run_trains_resumes_exactly_samples_edits_and_gives_bits_per_dim(process, tmp_path, mnist_dir, capsys):
    def run(name, *extra):
        train.main([*TINY_MODEL, "--process", process, "--data_dir", mnist_dir, "--batch_size", "16",
                    "--epochs", "1", "--log_every", "1", "--num_grid_samples", "0", "--checkpoint_path",
                    str(tmp_path / name), "--output_dir", str(tmp_path / f"out_{name}"), *extra])

    run("straight", "--max_steps", "4")
    run("resumed", "--max_steps", "2")
    run("resumed", "--max_steps", "4")
    straight = load_checkpoint(tmp_path / "straight")[0]
    assert straight["diffusion_config"]["process"] == process
    assert straight["diffusion_config"]["clip_x0"] == (process == "vdm")
    assert_same_state(straight, load_checkpoint(tmp_path / "resumed")[0])
    common = ["--checkpoint_path", str(tmp_path / "straight"), "--num_samples", "2", "--steps", "3", "--no_show",
              "--data_dir", mnist_dir]
    samples = inference.main([*common, "--output_dir", str(tmp_path / "inf")])
    completed = inference.main([*common, "--inpaint", "left", "--output_dir", str(tmp_path / "inp")])
    assert samples.shape == completed.shape == (2, 1, 28, 28) and torch.isfinite(completed).all()
    results = likelihood.main(["--checkpoint_path", str(tmp_path / "straight"), "--num_images", "2", "--t_samples",
                               "4", "--ode_images", "1", "--rtol", "1e-2", "--atol", "1e-2", "--data_dir", mnist_dir,
                               "--out", str(tmp_path / "lk.json")])
    assert math.isfinite(results["ode"]["bits_per_dim"]) and results["ode"]["bits_per_dim"] > 0
    assert ("bound" in results) == (process == "vdm")


@pytest.mark.parametrize("process", ["vdm", "flow"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "velocity"])
def test_every_target_turns_back_into_x0_and_eps(process, prediction):
    """--prediction parses for every process, and predict_x0_eps inverts target() at any time."""
    args, _ = parse_flags("train", [DiffusionConfig], ["--process", process, "--prediction", prediction])
    d = PROCESSES[process]()
    d.prediction = from_args(DiffusionConfig, args).prediction
    x0, noise = torch.rand(3, 1, 2, 2) * 2 - 1, torch.randn(3, 1, 2, 2)  # data in [-1, 1], where VDM's clamp is
    t = torch.tensor([0.05, 0.5, 0.95])
    x0_hat, eps_hat = d.predict_x0_eps(d.q_sample(x0, t, noise), t, d.target(x0, noise, t))
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=1e-4)
    torch.testing.assert_close(eps_hat, noise, rtol=0, atol=1e-4)


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("prediction", ["x0", "v", "velocity"])
def test_vdm_loss_is_the_same_elbo_whatever_the_network_predicts(prediction, clip):
    """The network's target is a parameterisation, not a weighting: an output meaning the same
    denoiser as an eps output (the target of its x0 and eps estimates) has the same loss."""
    reference, other = (VDM(DiffusionConfig(process="vdm", clip_x0=clip, prediction=p)) for p in ("eps", prediction))
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(6, 1, 4, 4, generator=g) * 2 - 1, torch.randn(6, 1, 4, 4, generator=g)
    t = torch.tensor([0.01, 0.1, 0.3, 0.5, 0.8, 0.99])
    eps_out = noise + 0.3 * torch.randn(noise.shape, generator=g)  # a denoiser that misses, some x0 out of range
    x0_hat, eps_hat = reference.predict_x0_eps(reference.q_sample(x0, t, noise), t, eps_out)
    out = other.target(x0_hat.double(), eps_hat.double(), t.double()).float()
    loss = reference.loss(eps_out, x0, noise, t)
    assert loss > 0.1  # far from zero: the match below is not 0 = 0
    torch.testing.assert_close(other.loss(out, x0, noise, t), loss, rtol=1e-4, atol=0)


@pytest.mark.parametrize("gamma", [(-13.3, 5.0), (-10.0, 10.0), (-7.0, 3.0)])
def test_sampling_times_stay_inside_the_process_range(gamma):
    for d in (VDM(DiffusionConfig(process="vdm", gamma_min=gamma[0], gamma_max=gamma[1])), PROCESSES["flow"]()):
        for sampler in ("dpm++", "ddim", "heun"):
            times = make_timesteps(sampler, d, 8)
            assert times[0] == d.t_max and times[-1] == d.t_min and times == sorted(times, reverse=True)

"""VDM's clip_x0 (the rule for every new VDM): the denoiser's x0 clamped to the data range [-1, 1] in the loss and the likelihood.
It never raises the loss or the bound, leaves in-range estimates alone, trains without dead
gradients, and reaches every tool through the process."""
import pytest
import torch

import likelihood
import train
from diffusion.config import DiffusionConfig
from diffusion.continuous import VDM
from diffusion.likelihood import ode_log_likelihood, vdm_bound_terms
from diffusion.processes import make_process
from models.unet import UNet
from test_train import exit_code
from utils.checkpoint import load_checkpoint
from utils.config import ModelConfig
from utils.errors import UserError


def vdm(clip):
    return VDM(DiffusionConfig(process="vdm", clip_x0=clip))


def pixels_and_output(t=0.3, seed=0):
    """Clean pixels at both ends of the range and inside it, their noisy versions, and outputs whose
    x0 estimates miss each pixel by up to 3 in either direction."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.tensor([-1.0, -1.0, 1.0, 1.0, 0.3, 0.3, -0.5, 0.9]).repeat(64).view(8, 1, 8, 8)
    noise = torch.randn(x0.shape, generator=g)
    process, times = vdm(False), torch.full((8,), t)
    alpha, sigma = (v.view(-1, 1, 1, 1) for v in process.alpha_sigma(times))
    x_t = alpha * x0 + sigma * noise
    x0_guess = x0 + 3 * (2 * torch.rand(x0.shape, generator=g) - 1)
    return x0, noise, times, x_t, (x_t - alpha * x0_guess) / sigma  # an eps output with that x0 estimate


@pytest.mark.parametrize("t", [0.02, 0.3, 0.9])
def test_the_clamp_never_moves_the_estimate_away_from_the_data_and_leaves_the_range_alone(t):
    x0, noise, times, x_t, out = pixels_and_output(t)
    x0_raw, eps_raw = vdm(False).predict_x0_eps(x_t, times, out)
    x0_clip, eps_clip = vdm(True).predict_x0_eps(x_t, times, out)
    assert x0_clip.min() >= -1 and x0_clip.max() <= 1
    assert ((eps_clip - noise).abs() <= (eps_raw - noise).abs() + 1e-4).all()
    inside = x0_raw.abs() <= 1
    assert torch.equal(eps_clip[inside], eps_raw[inside]) and torch.equal(x0_clip[inside], x0_raw[inside])
    assert (~inside).sum() > 100 and ((eps_clip - noise).abs() < (eps_raw - noise).abs() - 1e-3)[~inside].any()
    alpha, sigma = (v.view(-1, 1, 1, 1) for v in vdm(True).alpha_sigma(times))
    torch.testing.assert_close(eps_clip, (x_t - alpha * x0_clip) / sigma, rtol=0, atol=1e-3 / t)


def test_the_loss_is_the_clamped_denoisers_and_its_gradient_has_no_dead_zone():
    x0, noise, times, _, out = pixels_and_output()
    losses, grads = {}, {}
    for clip in (False, True):
        leaf = out.clone().requires_grad_(True)
        losses[clip] = vdm(clip).loss(leaf, x0, noise, times)
        losses[clip].backward()
        grads[clip] = leaf.grad
    assert losses[True] < losses[False]
    x0_hat = vdm(False).predict_x0_eps(vdm(False).q_sample(x0, times, noise), times, out)[0]
    # past the end the pixel sits at, nothing to learn; past the other end (or for an inside pixel) the
    # gradient pushes as the unclamped one does, not zero as a plain clamp's would
    right_side = ((x0 == -1) & (x0_hat < -1)) | ((x0 == 1) & (x0_hat > 1))
    wrong_side = (x0_hat.abs() > 1) & ~right_side
    assert right_side.sum() > 50 and wrong_side.sum() > 50
    assert grads[True][right_side].abs().max() < 1e-5  # zero but for float rounding
    assert (grads[True][wrong_side].sign() == grads[False][wrong_side].sign()).all()
    assert grads[True][wrong_side].abs().min() > 1e-4


def tiny_unet():
    torch.manual_seed(0)
    config = ModelConfig(base_channels=8, channel_mults=(1, 2), attention_resolutions=(14,), norm_groups=4,
                         num_heads=2, fourier_features=(7, 8))
    model = UNet(config).eval()
    with torch.no_grad():
        model.out_conv.weight.normal_(0, 0.3)  # not the zero start: x0 estimates that overshoot
    return model


def test_likelihood_reads_the_clamped_denoiser_and_its_bound_is_never_worse():
    images = torch.randint(0, 256, (6, 1, 28, 28), generator=torch.Generator().manual_seed(1)).double() / 127.5 - 1
    images[:, :, :10] = -1  # background, as in MNIST
    model, bounds = tiny_unet(), {}
    for clip in (False, True):
        predict_eps = likelihood.network(model, vdm(clip))[1]
        bounds[clip] = vdm_bound_terms(predict_eps, vdm(clip), images, torch.Generator().manual_seed(2),
                                       t_samples=8).sum(1)
    assert (bounds[True] < bounds[False]).all()


def test_the_ode_of_the_clamped_denoiser_takes_the_clamps_divergence():
    """The ODE's Hutchinson estimate differentiates the clamped eps: where the clamp holds x0 at -1,
    eps = (x + alpha) / sigma, whose derivative in x is 1 / sigma, not the network's 2 / sigma."""
    process = vdm(True)

    def clamped(x, t):  # a network whose x0 estimate, -x / alpha - 5, lies far below the range
        alpha, sigma = (v.view(-1, 1, 1, 1) for v in process.alpha_sigma(t))
        return process.predict_x0_eps(x, t, (2 * x + 5 * alpha) / sigma)[1]

    def direct(x, t):
        alpha, sigma = (v.view(-1, 1, 1, 1) for v in process.alpha_sigma(t))
        return (x + alpha) / sigma

    x = -torch.ones(2, 1, 2, 2)
    log_p, _ = ode_log_likelihood(clamped, process, x, torch.Generator().manual_seed(3), 1e-6, 1e-6)
    expected, _ = ode_log_likelihood(direct, process, x, torch.Generator().manual_seed(3), 1e-6, 1e-6)
    torch.testing.assert_close(log_p, expected, rtol=0, atol=1e-3)


def test_every_new_vdm_clamps_and_no_flag_turns_it_off(tmp_path, capsys):
    """The clamp paid (a better bound and better samples, docs/RESULTS.md), so it is VDM's rule and no
    longer a flag; other processes never have it, nor can a checkpoint give it to them."""
    assert DiffusionConfig(process="vdm").clip_x0 and not DiffusionConfig().clip_x0
    assert not DiffusionConfig(process="flow").clip_x0
    for flag in ("--clip_x0", "--no-clip_x0"):
        code, err = exit_code(train.main, ["--process", "vdm", flag, "--checkpoint_path", str(tmp_path / "ck"),
                                           "--max_steps", "1"], capsys)
        assert code == 2 and err.strip().splitlines() == [f"error: unrecognized arguments: {flag} (see --help)"]
    with pytest.raises(UserError, match="clip_x0 True is not for a flow model, which takes False"):
        DiffusionConfig(process="flow", clip_x0=True)


@pytest.mark.parametrize("saved", ["missing", False, True])
def test_a_vdm_checkpoint_keeps_the_denoiser_it_trained_as(saved, tmp_path):
    """A VDM saved before the clamp became the rule (clip_x0 False, or no field at all) loads, samples
    and resumes as the unclamped denoiser it was trained as."""
    from models.load import SHIPPED_MODEL
    ckpt = torch.load(SHIPPED_MODEL, weights_only=True)
    config = {**ckpt["diffusion_config"], "process": "vdm", "clip_x0": saved}
    if saved == "missing":
        del config["clip_x0"]
    ckpt["diffusion_config"] = config
    torch.save(ckpt, tmp_path / "ck")
    loaded = load_checkpoint(tmp_path / "ck")[0]
    assert loaded["diffusion_config"]["clip_x0"] is (saved is True)
    assert make_process(DiffusionConfig(**loaded["diffusion_config"])).clip_x0 is (saved is True)

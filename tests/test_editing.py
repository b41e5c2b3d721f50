"""Inpainting and interpolation: the known pixels stay exactly, an exact denoiser of a known
distribution completes correctly, and interpolation's end frames are the plain samples."""
import pytest
import torch

import inference
from diffusion.config import DiffusionConfig, SamplingConfig
from diffusion.ddpm import DDPM
from diffusion.inpainting import inpaint, named_mask
from diffusion.interpolation import slerp, soft_labels
from diffusion.pipeline import every_digit, make_denoiser
from diffusion.samplers import sample
from models.load import SHIPPED_MODEL, load_model
from utils.checkpoint import load_checkpoint
from utils.datasets import load_dataset, to_model_range

A, B = torch.full((1, 1, 4, 4), 0.8), torch.full((1, 1, 4, 4), -0.8)  # two equally likely images


def two_point_denoiser(diffusion):
    """The exact eps of the distribution {A, B}: eps = (x_t - alpha E[x_0 | x_t]) / sigma, where
    E[x_0 | x_t] weighs A and B by their likelihood N(x_t; alpha x_i, sigma^2)."""
    def denoise(x, t):
        alpha, sigma = diffusion.alpha_sigma(t)
        logits = torch.stack([-((x - alpha * c) ** 2).flatten(1).sum(1) / (2 * sigma ** 2) for c in (A, B)], 1)
        w = logits.softmax(1).view(-1, 2, 1, 1, 1)
        return (x - alpha * (w[:, 0] * A + w[:, 1] * B)) / sigma
    return denoise


@pytest.mark.parametrize("sampler, steps, resample", [("ddpm", 0, 1), ("ddpm", 0, 3), ("dpm++", 20, 1)])
def test_an_exact_denoiser_completes_the_half_it_was_not_shown(sampler, steps, resample):
    diffusion = DDPM(DiffusionConfig(num_timesteps=100))
    generator = torch.Generator().manual_seed(0)
    known = torch.cat([A, B]).repeat(8, 1, 1, 1)  # 16 images: 8 of A, 8 of B
    mask = named_mask("right", 4)  # the right half is unknown
    noise = torch.randn(known.shape, generator=generator)
    final = inpaint(two_point_denoiser(diffusion), diffusion, known, mask, noise,
                       SamplingConfig(sampler=sampler, steps=max(steps, 1)), generator, resample)
    assert torch.equal(final * mask, known * mask)  # the known pixels, exactly
    torch.testing.assert_close(final, known, rtol=0, atol=0.05)  # and the right half of the right image


def test_inpainting_from_the_command_line_keeps_the_known_pixels(tmp_path, mnist_dir):
    final = inference.main(["--checkpoint_path", str(SHIPPED_MODEL), "--inpaint", "bottom", "--digit", "7",
                            "--num_samples", "3", "--steps", "3", "--no_show", "--data_dir", mnist_dir,
                            "--output_dir", str(tmp_path)])
    assert (tmp_path / "inpainting.png").stat().st_size > 0 and final.shape == (3, 1, 28, 28)
    test = load_dataset("mnist", mnist_dir, train=False).images
    known = to_model_range(test[torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:3]])
    assert torch.equal(final[:, :, :14], known[:, :, :14])  # the top half, as given
    assert not torch.equal(final[:, :, 14:], known[:, :, 14:])  # the bottom half, drawn anew


def test_slerp_keeps_its_end_points_and_the_norm_of_gaussian_noise():
    a, b = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    frames = slerp(a, b, torch.linspace(0, 1, 7, dtype=torch.float64))
    torch.testing.assert_close(frames[0], a, rtol=0, atol=1e-12)
    torch.testing.assert_close(frames[-1], b, rtol=0, atol=1e-12)
    assert (frames.flatten(1).norm(dim=1) / 28 - 1).abs().max() < 0.1  # a straight line dips to ~0.7
    assert torch.equal(soft_labels(3, 8, torch.tensor([0.0, 1.0]), 10).argmax(1), torch.tensor([3, 8]))


@pytest.mark.parametrize("between", [[], ["--between", "3", "8"]])
def test_interpolation_end_frames_are_the_plain_samples(tmp_path, between):
    frames = inference.main(["--checkpoint_path", str(SHIPPED_MODEL), "--interpolate", "4", *between,
                             "--no_show", "--output_dir", str(tmp_path), "--precision", "fp32"])
    assert (tmp_path / "interpolation.png").stat().st_size > 0 and (tmp_path / "interpolation.gif").exists()
    model, diffusion = load_model(*load_checkpoint(SHIPPED_MODEL))
    generator = torch.Generator().manual_seed(0)
    start, end = torch.randn(4, 1, 28, 28, generator=generator), torch.randn(4, 1, 28, 28, generator=generator)
    cfg = SamplingConfig()
    for noise, labels, frame in ((start, torch.tensor([3] * 4) if between else every_digit(4, 10), 0),
                                 (start if between else end, torch.tensor([8] * 4) if between else every_digit(4, 10), 3)):
        denoise = make_denoiser(model, diffusion, labels, cfg.guidance, cfg.guidance_interval)
        plain = sample(cfg.sampler, denoise, diffusion, noise, cfg.steps, 0.0)
        # the same computation in another batch: bit for bit where the CPU kernels do not depend on the
        # batch size (AVX-512 here); within 6e-6 under PyTorch capped at AVX2
        torch.testing.assert_close(frames[frame::4], plain, rtol=0, atol=1e-4)

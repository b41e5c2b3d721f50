"""Autoguidance (Karras et al. 2024): a weaker model's output in place of the unconditional one,
out = main + w (main - guide); the guide an early EMA snapshot that train.py keeps (--guide_at) or
another checkpoint (--guide_model PATH)."""
import shutil

import pytest
import torch

import evaluate
import inference
import train
from diffusion.config import DiffusionConfig
from diffusion.ddpm import DDPM
from diffusion.pipeline import make_denoiser
from models.load import load_guide, load_model
from test_train import exit_code, train_args
from utils.checkpoint import load_checkpoint
from utils.config import ModelConfig


class Constant(torch.nn.Module):
    """A network whose output is one number, whatever its input."""

    def __init__(self, value, num_classes=10):
        super().__init__()
        self.value, self.config, self.calls = value, ModelConfig(num_classes=num_classes), 0

    def forward(self, x, t, y):
        self.calls += 1
        return torch.full_like(x, self.value)


@pytest.mark.parametrize("labels", [torch.tensor([1, 2]), None])
def test_the_guide_replaces_the_unconditional_output_inside_the_interval(labels):
    main, guide, diffusion = Constant(3.0), Constant(1.0), DDPM(DiffusionConfig())
    denoise = make_denoiser(main, diffusion, labels, guidance=2.0, interval=(0.25, 0.7), guide=guide)
    inside, outside = denoise(torch.zeros(2, 1, 2, 2), 500), denoise(torch.zeros(2, 1, 2, 2), 900)
    assert torch.equal(inside, torch.full_like(inside, 3 + 2 * (3 - 1)))  # main + w (main - guide)
    assert torch.equal(outside, torch.full_like(outside, 3.0)) and guide.calls == 1 and main.calls == 2


@pytest.fixture(scope="module")
def guided_run(tmp_path_factory, mnist_dir):
    """A 4-step run that keeps its EMA at step 2 as the guide (saving every 2 steps, keeping them)."""
    folder = tmp_path_factory.mktemp("guided")
    args = train_args(folder, mnist_dir, "ck", "--total_steps", "4", "--guide_at", "0.5", "--keep_last", "5",
                      "--num_grid_samples", "0")
    train.main(args)
    return folder


def test_train_keeps_the_ema_at_guide_at_and_a_resume_keeps_it(guided_run, mnist_dir, tmp_path):
    final = load_checkpoint(guided_run / "ck")[0]
    at_two = load_checkpoint(guided_run / "ck_step0000002")[0]
    assert final["guide"].keys() == final["ema"].keys()
    assert all(torch.equal(final["guide"][k], at_two["ema"][k]) for k in final["ema"])
    assert not all(torch.equal(final["guide"][k], final["ema"][k]) for k in final["ema"])
    shutil.copy(guided_run / "ck", tmp_path / "ck")
    train.main(train_args(tmp_path, mnist_dir, "ck", "--total_steps", "6", "--num_grid_samples", "0"))
    resumed = load_checkpoint(tmp_path / "ck")[0]
    assert resumed["step"] == 6 and all(torch.equal(resumed["guide"][k], at_two["ema"][k]) for k in final["ema"])


def test_auto_loads_the_snapshot_and_a_path_loads_another_checkpoint(guided_run):
    ckpt, path = load_checkpoint(guided_run / "ck")
    model, _ = load_model(ckpt, path)
    assert load_guide("", ckpt, path, model) is None
    auto = load_guide("auto", ckpt, path, model)
    assert all(torch.equal(auto.state_dict()[k], ckpt["guide"][k]) for k in ckpt["guide"])
    other = load_guide(str(guided_run / "ck_step0000002"), ckpt, path, model)
    early = load_checkpoint(guided_run / "ck_step0000002")[0]
    assert all(torch.equal(other.state_dict()[k], early["ema"][k]) for k in early["ema"])


def test_the_tools_sample_with_a_guide(guided_run, mnist_dir, tmp_path):
    common = ["--checkpoint_path", str(guided_run / "ck"), "--steps", "3", "--guidance", "1.0", "--guidance_interval", "0", "1"]
    plain = inference.main([*common, "--num_samples", "4", "--no_show", "--output_dir", str(tmp_path / "a")])
    guided = inference.main([*common, "--num_samples", "4", "--no_show", "--output_dir", str(tmp_path / "b"),
                             "--guide_model", "auto"])
    assert plain.shape == guided.shape and not torch.equal(plain, guided)
    results = evaluate.main([*common, "--num_samples", "20", "--data_dir", mnist_dir, "--guide_model",
                             str(guided_run / "ck_step0000002"), "--out", str(tmp_path / "e.json")])
    assert "autoguidance" in results["name"]


def test_a_missing_or_mismatched_guide_is_refused_in_one_line(guided_run, mnist_dir, tmp_path, capsys):
    unguided = train_args(tmp_path, mnist_dir, "plain", "--total_steps", "1", "--num_grid_samples", "0")
    train.main(unguided)
    flow = train_args(tmp_path, mnist_dir, "flow", "--total_steps", "1", "--num_grid_samples", "0", "--process", "flow")
    train.main(flow)
    capsys.readouterr()
    cases = [(tmp_path / "plain", "auto", "has no guide snapshot (train with --guide_at F"),
             (guided_run / "ck", str(tmp_path / "flow"), "its process")]
    for checkpoint, guide, message in cases:
        code, err = exit_code(inference.main, ["--checkpoint_path", str(checkpoint), "--guide_model", guide,
                                               "--num_samples", "2", "--steps", "2", "--no_show", "--output_dir",
                                               str(tmp_path / "out")], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err

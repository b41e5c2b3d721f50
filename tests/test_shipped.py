"""The models in the box: models/weights/ddpm_mnist.pt, made by `python train.py` on its defaults, and
its one-step DMD student models/weights/dmd_mnist.pt (docs/RESULTS.md, "Few-step generation")."""
import pytest
import torch

import inference
import train
from diffusion.pipeline import every_digit, generate
from models.classifier import load_classifier
from models.load import ONE_STEP_MODEL, SHIPPED_MODEL, load_model, load_to_sample
from test_train import exit_code
from utils.checkpoint import load_checkpoint
from utils.metrics import classify


def test_the_shipped_model_loads_safely_and_draws_the_requested_digits():
    assert SHIPPED_MODEL.stat().st_size < 5 * 2 ** 20
    ckpt = torch.load(SHIPPED_MODEL, map_location="cpu", weights_only=True)  # tensors and plain data only
    assert "optimizer" not in ckpt and ckpt["train_config"]["dataset"] == "mnist"
    model, diffusion = load_model(*load_checkpoint(SHIPPED_MODEL))
    labels = every_digit(20, 10)
    samples = generate(model, diffusion, 20, labels=labels)
    _, probs = classify(load_classifier(), samples, "cpu")
    assert (probs.argmax(dim=1) == labels).double().mean() >= 0.8  # measured: see docs/RESULTS.md


def test_the_one_step_model_draws_the_requested_digits_in_one_evaluation():
    assert ONE_STEP_MODEL.stat().st_size < 5 * 2 ** 20
    ckpt = torch.load(ONE_STEP_MODEL, map_location="cpu", weights_only=True)
    assert "optimizer" not in ckpt and "objective" not in ckpt and ckpt["train_config"]["distill"] == "dmd"
    model = load_to_sample(load_checkpoint(ONE_STEP_MODEL), "cpu", "fp32")
    assert model.sampling.steps == 1 and model.sampling.guidance == 0
    evaluations = []
    model.net.register_forward_hook(lambda *_: evaluations.append(1))
    labels = every_digit(20, 10)
    _, probs = classify(load_classifier(), model.generate(20, labels), "cpu")
    assert len(evaluations) == 1 and (probs.argmax(dim=1) == labels).double().mean() >= 0.8


def test_inference_falls_back_to_the_shipped_model_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no checkpoints/ddpm_checkpoint here
    inference.main(["--num_samples", "2", "--steps", "2", "--no_show", "--output_dir", "out"])
    assert "using the shipped MNIST model" in capsys.readouterr().err
    assert (tmp_path / "out" / "samples.png").stat().st_size > 0


@pytest.mark.parametrize("path", [str(SHIPPED_MODEL), "models/weights/ddpm_mnist.pt", str(ONE_STEP_MODEL),
                                  "models/weights", "models/weights/new.pt"])
def test_train_never_resumes_from_or_writes_over_the_shipped_model(monkeypatch, capsys, path):
    monkeypatch.chdir(SHIPPED_MODEL.parent.parent.parent)
    before = SHIPPED_MODEL.stat().st_mtime_ns, ONE_STEP_MODEL.stat().st_mtime_ns
    code, err = exit_code(train.main, ["--checkpoint_path", path, "--max_steps", "1"], capsys)
    assert code == 2 and "in the shipped models' folder" in err and len(err.strip().splitlines()) == 1
    assert (SHIPPED_MODEL.stat().st_mtime_ns, ONE_STEP_MODEL.stat().st_mtime_ns) == before
    assert not (SHIPPED_MODEL.parent / "new.pt").exists()

"""models.load.Loaded: the checkpoint loaded to sample that inference.py, evaluate.py, likelihood.py
and demo.py share."""
from functools import partial

import torch

import evaluate
import inference
from diffusion.config import SamplingConfig
from diffusion.pipeline import every_digit, generate
from models.load import SHIPPED_MODEL, load_model, load_to_sample
from utils.checkpoint import load_checkpoint
from utils.device import autocast, resolve_precision


def test_inference_and_evaluate_sample_as_the_pipeline_by_hand(tmp_path, monkeypatch, mnist_dir):
    cpu = torch.device("cpu")
    model, diffusion = load_model(*load_checkpoint(SHIPPED_MODEL))
    by_hand = generate(model, diffusion, 4, SamplingConfig(steps=2), labels=every_digit(4, 10), batch_size=4,
                       autocast=partial(autocast, cpu, resolve_precision("auto", cpu)))
    loaded = load_to_sample(load_checkpoint(SHIPPED_MODEL), "cpu", sampling=SamplingConfig(steps=2), typed={"steps"})
    assert torch.equal(loaded.generate(4, batch_size=4), by_hand)

    argv = ["--checkpoint_path", str(SHIPPED_MODEL), "--device", "cpu", "--num_samples", "4", "--steps", "2"]
    assert torch.equal(inference.main([*argv, "--no_show", "--output_dir", str(tmp_path)]), by_hand)
    scored = []

    def evaluate_samples(samples, *_):
        scored.append(samples)
        return {}
    monkeypatch.setattr(evaluate, "evaluate_samples", evaluate_samples)
    evaluate.main([*argv, "--data_dir", mnist_dir, "--out", str(tmp_path / "eval.json")])
    assert torch.equal(scored[0], by_hand)

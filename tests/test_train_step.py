"""The training step without host syncs: the guard skips a non-finite update entirely (weights,
EMA, AdamW moments and step count), and the EMA follows its equation."""
import copy
from contextlib import nullcontext

import pytest
import torch

from diffusion.config import DiffusionConfig
from diffusion.ddpm import DDPM
from models.unet import UNet
from training.ema import update_ema
from training.state import RunState
from training.step import make_optimizer, nan_batch, one_step
from utils.config import ModelConfig, TrainConfig


def setup():
    torch.manual_seed(0)
    model = UNet(ModelConfig(base_channels=8, channel_mults=(1, 2), attention_resolutions=(14,), norm_groups=4,
                             num_heads=2))
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    diffusion = DDPM(DiffusionConfig(num_timesteps=50))
    state = RunState(model, ema, optimizer, scaler)
    batch = (torch.rand(4, 1, 28, 28) * 2 - 1, torch.tensor([0, 1, 2, 10]), torch.randn(4, 1, 28, 28),
             torch.tensor([0, 10, 25, 49]))

    def step(batch):
        return one_step(state, diffusion, batch, nullcontext, 1.0, torch.tensor(0.5))

    return model, ema, optimizer, step, batch


def snapshot(model, ema, optimizer):
    return ([p.clone() for p in model.parameters()], [p.clone() for p in ema.parameters()],
            [t.clone() for s in optimizer.state.values() for t in s.values()])


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_a_non_finite_step_changes_nothing_and_a_finite_one_does():
    model, ema, optimizer, step, batch = setup()
    step(batch)  # a real step first, so that AdamW has moments to protect
    before = snapshot(model, ema, optimizer)
    loss, grad_norm, finite = step(nan_batch(batch))
    assert not bool(finite) and torch.isnan(loss)
    after = snapshot(model, ema, optimizer)
    for part_before, part_after in zip(before, after):
        assert same(part_before, part_after)
    assert optimizer.state[next(model.parameters())]["step"].item() == 1
    loss, grad_norm, finite = step(batch)
    assert bool(finite) and torch.isfinite(loss)
    moved = snapshot(model, ema, optimizer)
    for part_before, part_after in zip(before, moved):
        assert not same(part_before, part_after)
    assert optimizer.state[next(model.parameters())]["step"].item() == 2


@pytest.mark.parametrize("rate", [0.0, 0.25, 1.0])
def test_ema_update_follows_its_equation(rate):
    torch.manual_seed(1)
    model, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    expected = [e + rate * (m - e) for e, m in zip(ema.parameters(), model.parameters())]
    update_ema(ema, model, torch.tensor(rate))
    for got, want in zip(ema.parameters(), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-7)


def test_the_run_state_keeps_a_compiled_network_it_is_given():
    """The step calls state.net; a compiled module (benchmarks.train_throughput --compile) has no
    truth value, so the state must take it as given, and default to the plain model only when none is."""
    model = UNet(ModelConfig(base_channels=8, channel_mults=(1,), attention_resolutions=(), norm_groups=4))
    optimizer = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    compiled = torch.compile(model)  # lazy: nothing compiles until it is called
    assert RunState(model, copy.deepcopy(model), optimizer, scaler, net=compiled).net is compiled
    assert RunState(model, copy.deepcopy(model), optimizer, scaler).net is model

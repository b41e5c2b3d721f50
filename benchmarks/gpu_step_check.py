"""Check the training step on a CUDA device: the CUDA graph against the eager step, the guard
inside the graph, and run-to-run determinism. Prints one JSON object.

    python -m benchmarks.gpu_step_check --steps 30 --batch_size 1024
"""
import copy
import json
from dataclasses import dataclass

import torch

from diffusion.config import DiffusionConfig
from diffusion.ddpm import DDPM
from models.unet import UNet
from training.state import RunState
from training.step import make_optimizer, make_step, nan_batch
from utils.config import ModelConfig, TrainConfig
from utils.errors import exit_on_user_error
from utils.flags import check_fields, from_args, option, parse_flags


@dataclass
class Flags:
    steps: int = option(30, "training steps of each run", bounds="[1, inf)")
    batch_size: int = option(1024, "images per step", bounds="[1, inf)")

    def __post_init__(self):
        check_fields(self)


def batches(n, size, device):
    generator = torch.Generator(device=device).manual_seed(0)
    return [(torch.rand(size, 1, 28, 28, device=device, generator=generator) * 2 - 1,
             torch.randint(0, 11, (size,), device=device, generator=generator),
             torch.randn(size, 1, 28, 28, device=device, generator=generator),
             torch.randint(0, 1000, (size,), device=device, generator=generator)) for _ in range(n)]


def train(data, graph, device, dtype=torch.bfloat16):
    """Run the steps from one fixed initialisation; returns (model, EMA, optimizer, step)."""
    torch.manual_seed(0)
    model = UNet(ModelConfig()).to(device)
    state = RunState(model, copy.deepcopy(model).requires_grad_(False),
                     make_optimizer(model, TrainConfig(), device, capturable=graph),
                     torch.amp.GradScaler("cuda", enabled=False))
    diffusion = DDPM(DiffusionConfig(), device)
    step = make_step(state, diffusion, dtype, 1.0, data[0], graph)
    for batch in data:
        step(batch, 2e-3, 0.01)
    torch.cuda.synchronize()
    return model, state.ema, state.optimizer, step


def flat(module):
    return torch.cat([p.detach().float().flatten() for p in module.parameters()])


def optimizer_state(optimizer):
    return torch.cat([t.float().flatten() for s in optimizer.state.values() for t in s.values()])


def main():
    args = from_args(Flags, parse_flags(__doc__.splitlines()[0], [Flags])[0])
    device = torch.device("cuda")
    data = batches(args.steps, args.batch_size, device)
    eager, eager_again, graph, graph_again = (train(data, g, device) for g in (False, False, True, True))
    result = {
        "steps": args.steps, "batch_size": args.batch_size, "gpu": torch.cuda.get_device_name(),
        "eager_vs_graph_max_abs_weight_diff": (flat(eager[0]) - flat(graph[0])).abs().max().item(),
        "eager_vs_graph_max_abs_ema_diff": (flat(eager[1]) - flat(graph[1])).abs().max().item(),
        "weight_scale": flat(eager[0]).abs().max().item(),
        "eager_bitwise_repeatable": torch.equal(flat(eager[0]), flat(eager_again[0])),
        "graph_bitwise_repeatable": torch.equal(flat(graph[0]), flat(graph_again[0])),
    }
    model, ema, optimizer, step = graph  # the guard inside the graph: NaN steps change nothing
    before = flat(model), flat(ema), optimizer_state(optimizer)
    for batch in data[:3]:
        loss, grad_norm, finite = step(nan_batch(batch), 2e-3, 0.01)
    torch.cuda.synchronize()
    after = flat(model), flat(ema), optimizer_state(optimizer)
    result["nan_steps_reported_finite"] = bool(finite)
    result["nan_steps_leave_state_untouched"] = all(torch.equal(a, b) for a, b in zip(before, after))
    step(data[0], 2e-3, 0.01)
    torch.cuda.synchronize()
    result["real_step_after_nan_changes_weights"] = not torch.equal(before[0], flat(model))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    exit_on_user_error(main)

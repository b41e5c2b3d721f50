"""Few-step generation: shortcut models (diffusion/shortcut.py) and reflow distillation
(training/distill.py), checked against the closed forms of Gaussian data, then from the command line."""
import math

import pytest
import torch

import evaluate
import inference
import train
from conftest import TINY_MODEL
from diffusion.config import DiffusionConfig, SamplingConfig
from diffusion.continuous import TIME_SCALE, Flow
from diffusion.grids import time_grid
from diffusion.processes import make_process
from diffusion.samplers import sample
from diffusion.shortcut import LEVELS, SHARE, Shortcut
from models.load import SHIPPED_MODEL, load_model
from models.unet import UNet
from test_train import assert_same_state
from utils.checkpoint import load_checkpoint
from utils.config import ModelConfig

MU, S = 0.4, 0.3  # data N(MU, S^2) in every dimension


def moments(t):
    """Mean and standard deviation of x_t = (1 - t) x + t z for x ~ N(MU, S^2), z ~ N(0, 1)."""
    return (1 - t) * MU, math.sqrt((1 - t) ** 2 * S ** 2 + t ** 2) if isinstance(t, float) else \
        ((1 - t) ** 2 * S ** 2 + t ** 2).sqrt()


def exact_jump(x, t, d):
    """The exact average velocity over [t - d, t] of flow matching's ODE for Gaussian data: the flow
    maps N(m_t, s_t^2) to N(m_s, s_s^2) by x -> m_s + s_s / s_t (x - m_t), so (x - that) / d; at d = 0,
    the velocity dx/dt = m_t' + s_t' / s_t (x - m_t)."""
    t, d = (torch.as_tensor(v, dtype=torch.float64).reshape(-1, *[1] * (x.dim() - 1)) for v in (t, d))
    m_t, s_t = (1 - t) * MU, ((1 - t) ** 2 * S ** 2 + t ** 2).sqrt()
    x = x.double()
    velocity = -MU + (t - (1 - t) * S ** 2) / s_t ** 2 * (x - m_t)
    s = t - d
    m_s, s_s = (1 - s) * MU, ((1 - s) ** 2 * S ** 2 + s ** 2).sqrt()
    jump = (x - m_s - s_s / s_t * (x - m_t)) / d.clamp(min=1e-30)
    return torch.where(d > 0, jump, velocity).float()


class ExactNet(torch.nn.Module):
    """A network that returns the exact jump (times a `scale` away from 1) for any label."""
    config = ModelConfig(num_classes=10, step_condition=True)

    def __init__(self, scale=1.0):
        super().__init__()
        self.scale = scale

    def forward(self, x, t, y=None, step=None):
        step = torch.zeros_like(t) if step is None else step
        return self.scale * exact_jump(x, t / TIME_SCALE, step / TIME_SCALE)


def shortcut(**fields):
    return Shortcut(DiffusionConfig(process="shortcut", **fields))


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_the_exact_jumps_carry_noise_to_the_data_in_one_two_and_four_steps(steps):
    process, net = shortcut(), ExactNet()
    noise = torch.randn(40000, 1, 1, 1, generator=torch.Generator().manual_seed(0))

    def denoise(x, t, s):
        return net(x, process.model_time(t, len(x), x.device), None, process.model_time(t - max(s, 0), len(x), x.device))

    denoise.takes_step = True
    x = sample("ddim", denoise, process, noise, steps, eta=0.0, clip=False, grid="jump")
    assert abs(x.mean().item() - MU) < 0.01 and abs(x.std().item() - S) < 0.01
    # a plain flow sampler asks for the velocity (no step): one Euler step is far off
    euler = sample("ddim", lambda x, t: net(x, process.model_time(t, len(x), x.device)), process, noise, 1, 0.0,
                   clip=False, grid="jump")
    assert abs(euler.std().item() - S) > 0.1


def test_two_half_jumps_of_the_exact_field_equal_one_full_jump():
    process, net = shortcut(bootstrap_guidance=0.0), ExactNet()
    x = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    for size in [2.0 ** -k for k in range(LEVELS)]:
        t = torch.full((64,), size) * torch.randint(1, int(1 / size) + 1, (64,)).float()
        size_ = torch.full((64,), size)
        two = process.two_half_jumps(net, x, t, None, size_, no_amp)
        one = exact_jump(x, t, size_)
        if size > 2.0 ** -(LEVELS - 1):
            assert torch.allclose(two, one, atol=1e-5), size
        else:  # the smallest jump's halves are two Euler steps of the velocity (d = 0)
            h, zero = size / 2, torch.zeros(64)
            first = exact_jump(x, t, zero)
            euler = (first + exact_jump(x - h * first, t - h, zero)) / 2
            assert torch.allclose(two, euler, atol=1e-5) and not torch.allclose(two, one, atol=1e-5)


def no_amp():
    return torch.autocast("cpu", enabled=False)


def test_the_jump_loss_is_zero_at_the_exact_field_and_positive_away_from_it():
    process = shortcut(bootstrap_guidance=0.0)
    generator = torch.Generator().manual_seed(2)
    x0 = MU + S * torch.randn(64, 1, 2, 2, generator=generator)
    noise = torch.randn(64, 1, 2, 2, generator=generator)
    times = process.draw_t(64, generator, "cpu")
    assert (times[::SHARE, 1] > 0).all() and (times[1::SHARE, 1] == 0).all()  # the rows that learn a jump

    def jump_loss(net):  # one row at a time: each is its batch's jump row
        return sum(process.training_loss(net, x0[i:i + 1], None, noise[i:i + 1], times[i:i + 1], no_amp).item()
                   for i in range(0, 64, SHARE))

    exact = jump_loss(ExactNet())  # not 0 where the smallest jumps' halves are Euler steps (size 2^-7)
    assert exact < 1e-5 and jump_loss(ExactNet(1.05)) > 100 * exact
    # the flow rows: the exact velocity minimises flow matching's loss
    full = [process.training_loss(ExactNet(scale), x0, None, noise, times, no_amp).item() for scale in (1.0, 0.9, 1.1)]
    assert full[0] < min(full[1:])


def test_jump_rows_are_multiples_of_their_size_and_guidance_enters_the_smallest_only():
    process = shortcut(bootstrap_guidance=2.0)
    times = process.draw_t(4000, torch.Generator().manual_seed(3), "cpu")
    t, size = times[::SHARE].unbind(1)
    assert set(size.tolist()) == {2.0 ** -k for k in range(LEVELS)}
    assert torch.allclose(t / size, (t / size).round()) and (t <= 1).all() and (t >= size).all()

    calls = []

    class Recorder(ExactNet):
        def forward(self, x, t, y=None, step=None):
            calls.append((len(x), step.max().item()))
            return super().forward(x, t, y, step)

    y = torch.zeros(2, dtype=torch.long)
    x = torch.randn(2, 1, 2, 2)
    process.two_half_jumps(Recorder(), x, torch.ones(2), y, torch.full((2,), 2.0 ** -(LEVELS - 1)), no_amp)
    assert calls == [(4, 0.0), (4, 0.0)]  # the smallest: the flow, guided (conditional and null in one batch)
    calls.clear()
    process.two_half_jumps(Recorder(), x, torch.ones(2), y, torch.ones(2), no_amp)
    assert [n for n, _ in calls] == [4, 4]  # guided calls, but their weight is 0 away from the smallest
    out = process.two_half_jumps(ExactNet(), x, torch.ones(2), y, torch.ones(2), no_amp)
    assert torch.allclose(out, exact_jump(x, torch.ones(2), torch.ones(2)), atol=1e-5)


def test_a_network_without_a_step_condition_is_unchanged_and_one_with_it_starts_as_a_flow_model():
    torch.manual_seed(0)
    plain = UNet(ModelConfig(base_channels=8, channel_mults=(1, 2), norm_groups=4, num_heads=2))
    torch.manual_seed(0)
    stepped = UNet(ModelConfig(base_channels=8, channel_mults=(1, 2), norm_groups=4, num_heads=2, step_condition=True))
    assert not hasattr(plain, "step_mlp")
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([10.0, 500.0, 990.0])
    stepped.load_state_dict({**stepped.state_dict(), **plain.state_dict()})
    out = stepped(x, t, None, torch.tensor([0.0, 250.0, 1000.0]))
    assert torch.equal(out, plain(x, t)) and torch.equal(stepped(x, t), plain(x, t))  # zero-initialised


def test_the_jump_grid_ends_its_last_step_on_the_data():
    flow = make_process(DiffusionConfig(process="flow"))
    assert time_grid("jump", flow, 1) == [flow.t_max]
    assert time_grid("jump", flow, 2) == pytest.approx([flow.t_max, flow.t_max / 2])
    assert time_grid("jump", make_process(DiffusionConfig()), 4) == [999, 749, 500, 250]


def test_few_step_defaults_give_way_to_typed_flags():
    config = DiffusionConfig(process="shortcut")
    assert config.few_steps == 2 and config.prediction == "velocity"
    sampling = SamplingConfig().for_model(config, {"steps"})
    assert (sampling.sampler, sampling.grid, sampling.steps, sampling.eta, sampling.guidance) == ("ddim", "jump", 8, 0, 0)
    assert SamplingConfig().for_model(DiffusionConfig(), set()) == SamplingConfig()


def run_args(tmp_path, mnist_dir, name, *extra):
    return [*TINY_MODEL[:-2], "--data_dir", mnist_dir, "--batch_size", "16", "--log_every", "1", "--save_every", "2",
            "--num_grid_samples", "0", "--checkpoint_path", str(tmp_path / name),
            "--output_dir", str(tmp_path / f"out_{name}"), *extra]


def test_a_shortcut_model_trains_resumes_exactly_and_samples(tmp_path, mnist_dir):
    args = ("--process", "shortcut", "--total_steps", "4")
    train.main(run_args(tmp_path, mnist_dir, "straight", *args))
    train.main(run_args(tmp_path, mnist_dir, "resumed", *args, "--max_steps", "2"))
    train.main(run_args(tmp_path, mnist_dir, "resumed", *args, "--max_steps", "4"))
    a, b = load_checkpoint(tmp_path / "straight")[0], load_checkpoint(tmp_path / "resumed")[0]
    assert_same_state(a, b)
    assert a["model_config"]["step_condition"] and "step_mlp.0.weight" in a["model"]
    out = tmp_path / "inf"
    for steps in ("1", "2"):
        inference.main(["--checkpoint_path", str(tmp_path / "straight"), "--num_samples", "4", "--steps", steps,
                        "--digit", "3", "--no_show", "--output_dir", str(out)])
        assert (out / "samples.png").stat().st_size > 0 and (out / "denoising_steps.png").stat().st_size > 0
    inference.main(["--checkpoint_path", str(tmp_path / "straight"), "--num_samples", "2", "--inpaint", "right",
                    "--no_show", "--output_dir", str(out), "--data_dir", mnist_dir])
    assert (out / "inpainting.png").stat().st_size > 0


def one_step(model, process, noise, labels):
    with torch.no_grad():
        return sample("ddim", lambda x, t: model(x, process.model_time(t, len(x), x.device), labels), process, noise, 1,
                      0.0, grid="jump")


def test_reflow_loss_is_zero_for_a_student_that_follows_the_teacher_s_straight_paths():
    """Pairs (z, T(z)) of an affine teacher T(z) = MU + S z: on x_t = (1 - t) T(z) + t z the velocity
    z - T(z) is a function of (x_t, t), and a student equal to it has zero flow-matching loss."""
    process = Flow(DiffusionConfig(process="flow"))
    z = torch.randn(256, 1, 2, 2, generator=torch.Generator().manual_seed(4))
    x = MU + S * z
    t = process.draw_t(256, torch.Generator().manual_seed(5), "cpu")

    def student(scale):
        def net(x_t, t_model, y):
            t_ = (t_model / TIME_SCALE).reshape(-1, 1, 1, 1)
            z_ = (x_t - (1 - t_) * MU) / ((1 - t_) * S + t_)
            return scale * ((1 - S) * z_ - MU)
        return net

    assert process.training_loss(student(1.0), x, None, z, t, no_amp).item() < 1e-10
    assert process.training_loss(student(0.9), x, None, z, t, no_amp).item() > 1e-3


def test_a_short_reflow_run_moves_the_student_s_one_step_digits_toward_the_teacher_s(tmp_path, mnist_dir):
    args = ["--teacher", str(SHIPPED_MODEL), "--pairs", "64", "--total_steps", "16", "--warmup_steps", "0",
            "--batch_size", "32", "--lr", "1e-3", "--save_every", "8", "--num_grid_samples", "0",
            "--checkpoint_path", str(tmp_path / "student"), "--output_dir", str(tmp_path / "out")]
    train.main(args + ["--max_steps", "8"])
    pairs = torch.load(tmp_path / "student.pairs.pt")
    assert pairs["images"].shape == (64, 1, 28, 28) and pairs["labels"].tolist() == [i % 10 for i in range(64)]
    teacher = pairs["images"].float() / 127.5 - 1

    def distance(path):
        ckpt, source = load_checkpoint(path)
        model, process = load_model(ckpt, source)
        return (one_step(model, process, pairs["noise"], pairs["labels"]) - teacher).pow(2).mean().item()

    train.main(args + ["--max_steps", "16"])  # resumes from step 8, the same pairs
    ckpt = load_checkpoint(tmp_path / "student")[0]
    assert ckpt["step"] == 16 and ckpt["diffusion_config"]["process"] == "flow"
    assert ckpt["train_config"]["teacher_sha256"] and ckpt["diffusion_config"]["few_steps"] == 2
    # step 0 is the teacher's weights read as a flow model; 16 steps of the pairs bring it closer
    start = torch.load(SHIPPED_MODEL, weights_only=False)
    torch.save({**ckpt, "ema": start["ema"], "model": start["ema"]}, tmp_path / "at_start")
    assert distance(tmp_path / "student") < 0.8 * distance(tmp_path / "at_start")
    results = evaluate.main(["--checkpoint_path", str(tmp_path / "student"), "--num_samples", "20", "--data_dir",
                             mnist_dir, "--out", str(tmp_path / "eval.json")])
    assert "ddim 2 steps" in results["name"]

"""Distribution matching distillation (training/dmd.py): its gradient, its critic and its generator's
two steps against the closed forms of Gaussian data and the sampler; then from the command line,
its bad input and (slow) a run that resumes exactly and samples."""
import pytest
import torch

import train
from diffusion.config import DiffusionConfig
from diffusion.continuous import TIME_SCALE, Flow
from diffusion.ddpm import DDPM
from diffusion.samplers import sample
from models.load import SHIPPED_MODEL
from test_train import assert_same_state, exit_code
from training import dmd
from utils.checkpoint import load_checkpoint
from utils.config import TrainConfig

S = 0.3  # data N(m, S^2) in every dimension


class ExactEps(torch.nn.Module):
    """The exact eps-prediction of a DDPM process for data N(mean, S^2):
    E[x0 | x_t] = m + alpha S^2 / (alpha^2 S^2 + sigma^2) (x_t - alpha m), eps = (x_t - alpha E[x0 | x_t]) / sigma."""

    def __init__(self, process, mean):
        super().__init__()
        self.process, self.mean = process, torch.nn.Parameter(torch.tensor(float(mean)))

    def forward(self, x_t, t, y=None):
        alpha, sigma = (v.reshape(-1, 1, 1, 1) for v in self.process.alpha_sigma(t))
        x0 = self.mean + alpha * S ** 2 / (alpha ** 2 * S ** 2 + sigma ** 2) * (x_t - alpha * self.mean)
        return (x_t - alpha * x0) / sigma


class ByLabel(ExactEps):
    """ExactEps for data N(means[y], S^2): a class-conditional teacher whose null label is 1."""
    config = type("Config", (), {"null_label": 1})

    def __init__(self, process, means):
        super().__init__(process, 0.0)
        self.means = torch.tensor(means)

    def forward(self, x_t, t, y=None):
        self.mean.data = self.means[y].reshape(-1, 1, 1, 1)
        return super().forward(x_t, t, y)


def no_amp():
    return torch.autocast("cpu", enabled=False)


def objective(real_mean, fake_mean, lr=1e-2):
    teacher_process = DDPM(DiffusionConfig(process="ddpm"))
    return dmd.DistributionMatching(Flow(DiffusionConfig(process="flow")), ExactEps(teacher_process, real_mean),
                                    teacher_process, ExactEps(teacher_process, fake_mean),
                                    TrainConfig(lr=lr, grad_clip=0.0))


def test_the_matching_gradient_is_the_closed_form_difference_of_the_two_posterior_means(monkeypatch):
    """For N(m_real, S^2) and N(m_fake, S^2), x0_fake - x0_real = sigma^2 / (alpha^2 S^2 + sigma^2) (m_fake - m_real)
    at every x_t; DMD divides it by mean |x - x0_real|, and it is zero when the critic is the teacher."""
    monkeypatch.setattr(dmd, "TIMES", (0.5, 0.5))  # one teacher time: t = 500
    x = 0.1 + S * torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    same = objective(0.1, 0.1)
    assert same.matching_gradient(x, None, no_amp).abs().max() == 0
    obj = objective(0.1, 0.5)
    state = obj.noise.get_state()
    grad = obj.matching_gradient(x, None, no_amp)
    obj.noise.set_state(state)  # the same t and noise again, for the denominator
    torch.rand(16, generator=obj.noise)
    x_t = obj.teacher_process.q_sample(x, torch.full((16,), 500), torch.randn(x.shape, generator=obj.noise))
    alpha, sigma = (v.item() for v in obj.teacher_process.alpha_sigma(500))
    x0_real = 0.1 + alpha * S ** 2 / (alpha ** 2 * S ** 2 + sigma ** 2) * (x_t - alpha * 0.1)
    expected = sigma ** 2 / (alpha ** 2 * S ** 2 + sigma ** 2) * (0.5 - 0.1)
    weight = (x - x0_real).abs().mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(grad * weight, torch.full_like(grad, expected), rtol=1e-4)


@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_the_real_score_is_guided_as_the_teacher_samples(monkeypatch, fraction):
    """With the critic equal to the teacher, what is left is the teacher's guidance:
    x0_fake - x0_real = -w (x0_cond - x0_uncond) at times inside its guidance interval, 0 outside."""
    monkeypatch.setattr(dmd, "TIMES", (fraction, fraction))
    lo, hi = dmd.REAL_SCORE.guidance_interval
    w = dmd.REAL_SCORE.guidance if lo <= fraction <= hi else 0.0
    tp = DDPM(DiffusionConfig(process="ddpm"))
    obj = dmd.DistributionMatching(Flow(DiffusionConfig(process="flow")), ByLabel(tp, (0.1, 0.5)), tp,
                                   ByLabel(tp, (0.1, 0.5)), TrainConfig(lr=1e-2, grad_clip=0.0))
    x, y = 0.1 + S * torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(0)), torch.zeros(16).long()
    state = obj.noise.get_state()
    grad = obj.matching_gradient(x, y, no_amp)
    obj.noise.set_state(state)  # the same t and noise again, for the denominator
    t = tp.time_at(torch.rand(16, generator=obj.noise) * 0 + fraction)
    x_t = tp.q_sample(x, t, torch.randn(x.shape, generator=obj.noise))
    alpha, sigma = (v.reshape(-1, 1, 1, 1) for v in tp.alpha_sigma(t))
    shrink = sigma ** 2 / (alpha ** 2 * S ** 2 + sigma ** 2)  # x0_cond - x0_uncond = shrink (0.1 - 0.5)
    x0_real = 0.1 + alpha * S ** 2 / (alpha ** 2 * S ** 2 + sigma ** 2) * (x_t - alpha * 0.1) + w * shrink * -0.4
    expected = -w * shrink * -0.4
    weight = (x - x0_real).abs().mean(dim=(1, 2, 3), keepdim=True)
    assert w > 0 if fraction == 0.5 else w == 0
    assert torch.allclose(grad * weight, expected.expand_as(grad), rtol=1e-4, atol=1e-7)


def test_a_run_begun_before_the_guided_real_score_resumes_unguided(monkeypatch):
    """Its real score is the teacher's plain conditional pass, as that code computed it: with the critic
    equal to the teacher, exactly zero, at a time inside the guidance interval."""
    monkeypatch.setattr(dmd, "TIMES", (0.5, 0.5))
    tp = DDPM(DiffusionConfig(process="ddpm"))
    made = lambda: dmd.DistributionMatching(Flow(DiffusionConfig(process="flow")), ByLabel(tp, (0.1, 0.5)), tp,  # noqa: E731
                                            ByLabel(tp, (0.1, 0.5)), TrainConfig(lr=1e-2, grad_clip=0.0))
    state = made().state_dict()
    assert state["guidance"] == (dmd.REAL_SCORE.guidance, *dmd.REAL_SCORE.guidance_interval)
    del state["guidance"]  # as saved by the code of commit b69b20f
    resumed = made()
    resumed.load_state_dict(state)
    monkeypatch.setattr(dmd, "guided", lambda *args: pytest.fail("an unguided run made the guided pass"))
    x = 0.1 + S * torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    assert resumed.guidance[0] == 0.0
    assert resumed.matching_gradient(x, torch.zeros(16).long(), no_amp).abs().max() == 0


def test_the_critic_learns_the_generator_s_distribution():
    """Critic steps on digits from N(0.6, S^2) carry its mean from the teacher's 0.0 toward 0.6."""
    obj = objective(0.0, 0.0, lr=2e-2)
    x = 0.6 + S * torch.randn(256, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    for _ in range(100):
        obj.critic_step(x, None, no_amp)
    assert abs(obj.critic.mean.item() - 0.6) < 0.1 and obj.teacher.mean.item() == 0.0


def test_a_non_finite_critic_step_changes_nothing():
    obj = objective(0.0, 0.2)
    obj.critic_step(torch.full((4, 1, 2, 2), float("nan")), None, no_amp)
    state = obj.optimizer.state_dict()["state"][0]
    assert obj.critic.mean.item() == pytest.approx(0.2) and state["step"] == 0 and state["exp_avg"] == 0


def test_the_generator_s_rows_are_the_one_and_two_step_samples_of_ddim_on_the_jump_grid():
    """Even rows: ddim's one step from the noise; odd rows: the second of ddim's two steps (eta 0)."""
    process = Flow(DiffusionConfig(process="flow"))
    obj = objective(0.0, 0.0)

    def net(x, t_model, y=None):  # any smooth field stands in for the generator's velocity
        return torch.tanh(x) + 0.3 * (t_model / TIME_SCALE).reshape(-1, 1, 1, 1)

    z = torch.randn(8, 1, 3, 3, generator=torch.Generator().manual_seed(2))
    x = obj.draw(net, z, None, no_amp)

    def denoise(x_t, t):
        return net(x_t, process.model_time(t, len(x_t), x_t.device))

    for steps, rows in ((1, slice(0, None, 2)), (2, slice(1, None, 2))):
        expected = sample("ddim", denoise, process, z[rows], steps, 0.0, clip=False, grid="jump")
        assert torch.allclose(x[rows], expected, atol=1e-6), steps


def test_a_dmd_student_takes_its_method_s_settings_for_the_flags_not_typed(tmp_path):
    cfg, _, diffusion_cfg, _, _, student = train.resolve_configs(
        ["--teacher", str(SHIPPED_MODEL), "--distill", "dmd", "--lr", "1e-4", "--checkpoint_path", str(tmp_path / "s")])
    assert (cfg.lr, cfg.batch_size, cfg.warmup_steps, cfg.p_uncond) == (1e-4, 64, 20, 0.0)
    assert (diffusion_cfg.process, diffusion_cfg.few_steps) == ("flow", 1) and not student.method.pairs
    cfg = train.resolve_configs(["--teacher", str(SHIPPED_MODEL), "--checkpoint_path", str(tmp_path / "s")])[0]
    assert (cfg.lr, cfg.batch_size) == (2e-3, 128)  # reflow keeps the defaults


def flow_copy_of_the_teacher(path):
    """A flow-model checkpoint with the teacher's network, its EMA moved a little (a stand-in reflow student)."""
    ckpt = torch.load(SHIPPED_MODEL, weights_only=False)
    ema = {name: tensor + 0.01 for name, tensor in ckpt["ema"].items()}
    torch.save({**ckpt, "ema": ema, "diffusion_config": {"process": "flow"}}, path)
    return ema


def test_start_from_gives_a_fresh_dmd_student_another_checkpoint_s_first_weights(tmp_path):
    from models.unet import UNet
    ema = flow_copy_of_the_teacher(tmp_path / "reflow.pt")
    _, model_cfg, _, _, _, student = train.resolve_configs(
        ["--teacher", str(SHIPPED_MODEL), "--distill", "dmd", "--start_from", str(tmp_path / "reflow.pt"),
         "--checkpoint_path", str(tmp_path / "s")])
    model = UNet(model_cfg)
    student.start(model)
    assert all(torch.equal(model.state_dict()[name], ema[name]) for name in ema)


def dmd_args(tmp_path, *extra, name="student"):
    return ["--teacher", str(SHIPPED_MODEL), "--distill", "dmd", "--total_steps", "4", "--batch_size", "8",
            "--warmup_steps", "0", "--save_every", "2", "--log_every", "1", "--num_grid_samples", "0",
            "--checkpoint_path", str(tmp_path / name), "--output_dir", str(tmp_path / "out"), *extra]


@pytest.mark.parametrize("args, message", [
    (["--teacher", str(SHIPPED_MODEL), "--distill", "gan"], "--distill gan: choose reflow or dmd"),
    (["--distill", "dmd"], "--distill is how a student learns from its --teacher"),
    (["--teacher", str(SHIPPED_MODEL), "--distill", "dmd", "--pairs", "10"], "a --distill dmd student makes no pairs"),
    (["--teacher", str(SHIPPED_MODEL), "--start_from", str(SHIPPED_MODEL)], "--start_from is for --distill dmd"),
    (["--teacher", str(SHIPPED_MODEL), "--distill", "dmd", "--start_from", str(SHIPPED_MODEL)],
     "not a flow model with the teacher's network"),
    (["--teacher", str(SHIPPED_MODEL), "--distill", "dmd", "--start_from", "no/such/student.pt"], "no/such/student.pt"),
])
def test_a_bad_distill_flag_is_one_line(args, message, tmp_path, capsys):
    code, err = exit_code(train.main, args + ["--checkpoint_path", str(tmp_path / "ck"), "--total_steps", "1"], capsys)
    assert code == 2 and message in err and "Traceback" not in err and not list(tmp_path.iterdir())


@pytest.mark.slow
def test_a_dmd_student_trains_resumes_exactly_and_samples(tmp_path, mnist_dir, capsys):
    import inference
    train.main(dmd_args(tmp_path, "--data_dir", mnist_dir, name="whole"))
    train.main(dmd_args(tmp_path, "--data_dir", mnist_dir, "--max_steps", "2"))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    code, err = exit_code(train.main, dmd_args(tmp_path, "--distill", "reflow"), capsys)  # it keeps its method
    assert code == 2 and "learns by --distill dmd" in err and {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    code, err = exit_code(train.main, dmd_args(tmp_path, "--start_from", str(SHIPPED_MODEL)), capsys)
    assert code == 2 and "--start_from sets a fresh student's first weights" in err
    train.main(dmd_args(tmp_path, "--data_dir", mnist_dir, "--max_steps", "4"))
    whole, resumed = load_checkpoint(tmp_path / "whole")[0], load_checkpoint(tmp_path / "student")[0]
    assert_same_state(whole, resumed)
    for name in resumed["objective"]["critic"]:
        assert torch.equal(whole["objective"]["critic"][name], resumed["objective"]["critic"][name]), name
    assert resumed["diffusion_config"]["few_steps"] == 1 and resumed["train_config"]["distill"] == "dmd"
    ckpt = load_checkpoint(tmp_path / "student")[0]
    del ckpt["objective"]
    torch.save(ckpt, tmp_path / "no_critic")
    code, err = exit_code(train.main, dmd_args(tmp_path, "--total_steps", "6", name="no_critic"), capsys)
    assert code == 2 and "lacks the critic" in err
    inference.main(["--checkpoint_path", str(tmp_path / "student"), "--num_samples", "10", "--output_dir",
                    str(tmp_path / "digits"), "--no_show"])
    assert (tmp_path / "digits" / "samples.png").stat().st_size > 0


@pytest.mark.slow
def test_a_dmd_student_under_torchrun_keeps_one_generator_and_one_critic(tmp_path, mnist_dir):
    from test_train import run_script
    ddp = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
                     *dmd_args(tmp_path, "--data_dir", mnist_dir, "--total_steps", "2", "--precision", "fp32"),
                     timeout=300, env={"OMP_NUM_THREADS": "1"})
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "weights identical on all 2 processes" in ddp.stderr
    critic = load_checkpoint(tmp_path / "student")[0]["objective"]["critic"]
    assert not any(name.startswith("module.") for name in critic)


def test_the_distill_help_names_each_method_and_dmd_s_own_settings():
    import dataclasses

    from training.distill import METHODS
    help_text = {f.name: f.metadata["help"] for f in dataclasses.fields(TrainConfig)}["distill"]
    assert all(name in help_text for name in METHODS)
    words = help_text.replace(")", " ").split()
    assert {k: float(words[words.index(f"--{k}") + 1]) for k in METHODS["dmd"].defaults} == METHODS["dmd"].defaults

"""End to end on the CPU with a tiny U-Net: train -> checkpoint -> resume -> inference, and the
guarantees around it (exact resume, preemption, clear errors)."""
import csv
import signal
import subprocess
import sys
import time

import pytest
import torch

import inference
import train
from conftest import ROOT, TINY_MODEL, run_script
from diffusion.ddpm import DDPM
from utils.checkpoint import load_checkpoint
from models.load import load_model
from utils.config import InferenceConfig, ModelConfig
from utils.errors import exit_on_user_error


def train_args(tmp_path, mnist_dir, name="ck", *extra):
    return [*TINY_MODEL, "--data_dir", mnist_dir, "--epochs", "1", "--batch_size", "16", "--log_every", "1", "--save_every", "2",
            "--num_grid_samples", "4", "--checkpoint_path", str(tmp_path / name),
            "--output_dir", str(tmp_path / f"out_{name}"), *extra]


def logged_losses(tmp_path, name):
    with open(tmp_path / f"out_{name}" / "train_log.csv") as f:
        return [(int(r["step"]), r["loss"]) for r in csv.DictReader(f)]


def assert_same_state(a, b):
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"
    for (ka, va), (kb, vb) in zip(a["optimizer"]["state"].items(), b["optimizer"]["state"].items()):
        for name in va:
            assert torch.equal(va[name], vb[name]), f"optimizer state {ka}.{name} differs"
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"]
    assert a["step"] == b["step"]


def test_train_resume_and_inference_smoke(tmp_path, mnist_dir):
    train.main(train_args(tmp_path, mnist_dir, "ck", "--max_steps", "3"))
    assert load_checkpoint(tmp_path / "ck")[0]["step"] == 3
    train.main(train_args(tmp_path, mnist_dir, "ck", "--max_steps", "5"))
    ckpt, _ = load_checkpoint(tmp_path / "ck")
    assert ckpt["step"] == 5
    assert ckpt["model_config"]["num_classes"] == 10  # class-conditional by default
    out = tmp_path / "out_ck"
    assert (out / "loss_curve.png").exists() and list(out.glob("samples_epoch*.png"))
    assert [step for step, _ in logged_losses(tmp_path, "ck")] == [1, 2, 3, 4, 5]
    inference.main(["--checkpoint_path", str(tmp_path / "ck"), "--num_samples", "4", "--steps", "5",
                    "--no_show", "--output_dir", str(tmp_path / "inf"), "--gif", str(tmp_path / "inf" / "d.gif")])
    for name in ("samples.png", "denoising_steps.png", "d.gif"):
        assert (tmp_path / "inf" / name).stat().st_size > 0


def test_resume_equals_never_stopping(tmp_path, mnist_dir):
    """6 steps straight == 3 steps, a new process, 3 more (mid-epoch), bit for bit on the CPU."""
    train.main(train_args(tmp_path, mnist_dir, "straight", "--max_steps", "6"))
    train.main(train_args(tmp_path, mnist_dir, "resumed", "--max_steps", "3"))
    result = run_script("train.py", *train_args(tmp_path, mnist_dir, "resumed", "--max_steps", "6"))
    assert result.returncode == 0, result.stderr[-2000:]
    a, _ = load_checkpoint(tmp_path / "straight")
    b, _ = load_checkpoint(tmp_path / "resumed")
    assert_same_state(a, b)
    assert logged_losses(tmp_path, "straight") == logged_losses(tmp_path, "resumed")


def test_sigterm_saves_and_the_run_resumes_exactly(tmp_path, mnist_dir):
    args = train_args(tmp_path, mnist_dir, "pre", "--max_steps", "1000", "--save_every", "1000")
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    log = tmp_path / "out_pre" / "train_log.csv"
    deadline = time.time() + 90
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 4):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    stopped_at = load_checkpoint(tmp_path / "pre")[0]["step"]
    assert 3 <= stopped_at < 1000
    target = str(stopped_at + 2)
    for name in ("pre", "straight"):  # the stopped run resumes in this process, a fresh one beside it
        train.main(train_args(tmp_path, mnist_dir, name, "--max_steps", target, "--save_every", "1000"))
    assert_same_state(load_checkpoint(tmp_path / "pre")[0], load_checkpoint(tmp_path / "straight")[0])


def test_num_classes_0_trains_the_unconditional_model(tmp_path, mnist_dir, capsys):
    train.main(train_args(tmp_path, mnist_dir, "ck", "--max_steps", "1", "--num_classes", "0", "--num_grid_samples", "0"))
    ckpt, _ = load_checkpoint(tmp_path / "ck")
    assert ckpt["model_config"]["num_classes"] == 0 and "label_emb.weight" not in ckpt["model"]
    inference.main(["--checkpoint_path", str(tmp_path / "ck"), "--num_samples", "2", "--steps", "2", "--no_show",
                    "--output_dir", str(tmp_path / "inf")])
    assert (tmp_path / "inf" / "samples.png").stat().st_size > 0
    code, err = exit_code(inference.main, ["--checkpoint_path", str(tmp_path / "ck"), "--digit", "3"], capsys)
    assert code == 2 and "--digit needs a class-conditional checkpoint" in err


def test_class_conditional_sampling_draws_every_digit_in_turn():
    conditional, unconditional = ModelConfig(), ModelConfig(num_classes=0)
    digits, cpu = tuple("0123456789"), torch.device("cpu")
    labels, per_row = inference.labels_for(InferenceConfig(num_samples=23), conditional, cpu, digits)
    assert per_row == 10 and labels.tolist() == [i % 10 for i in range(23)]
    labels, per_row = inference.labels_for(InferenceConfig(num_samples=20, digit="all"), conditional, cpu, digits)
    assert per_row == 2 and labels.tolist() == [d for d in range(10) for _ in range(2)]
    labels, _ = inference.labels_for(InferenceConfig(num_samples=3, digit="7"), conditional, cpu, digits)
    assert labels.tolist() == [7, 7, 7]
    assert inference.labels_for(InferenceConfig(), unconditional, cpu, ()) == (None, 8)


def test_same_seed_same_samples_other_seed_other_samples(tmp_path, mnist_dir):
    train.main(train_args(tmp_path, mnist_dir, "ck", "--max_steps", "2", "--num_grid_samples", "0"))
    outputs = {}
    for run, seed in (("a", 1), ("b", 1), ("c", 2)):
        inference.main(["--checkpoint_path", str(tmp_path / "ck"), "--num_samples", "4", "--steps", "4",
                        "--sampler", "ddim", "--eta", "1", "--seed", str(seed), "--no_show",
                        "--output_dir", str(tmp_path / run)])
        outputs[run] = (tmp_path / run / "samples.png").read_bytes()
    assert outputs["a"] == outputs["b"] and outputs["a"] != outputs["c"]


def exit_code(main, argv, capsys):
    with pytest.raises(SystemExit) as info:
        exit_on_user_error(lambda: main(argv))
    return info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--lr", "-1"], "--lr must be positive"),
    (["--batch_size", "0"], "--batch_size must be at least 1"),
    (["--base_channels", "12"], "norm_groups 8 must divide"),
    (["--attention_resolutions", "5"], "attention resolution 5"),
    (["--lr", "inf"], "--lr must be a finite number"),
    (["--grad_clip", "nan"], "--grad_clip must be a finite number"),
    (["--weight_decay", "nan"], "--weight_decay must be a finite number"),
    (["--min_snr_gamma", "nan"], "--min_snr_gamma must be a finite number"),
    (["--minutes", "0"], "give a positive --minutes, --epochs or --total_steps"),
    (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "nonsense"], "--device"),
])
def test_bad_train_options(argv, message, capsys, tmp_path):
    code, err = exit_code(train.main, [*argv, "--checkpoint_path", str(tmp_path / "none")], capsys)
    assert code == 2 and message in err


@pytest.mark.parametrize("argv, message", [
    (["--num_samples", "0"], "--num_samples must be at least 1"),
    (["--digit", "12"], "--digit"),
    (["--eta", "1.5"], "--eta must be in [0, 1]"),
    (["--guidance_interval", "0.8", "0.2"], "--guidance_interval needs two fractions of T"),
    (["--guidance_interval", "0.5"], "--guidance_interval needs two fractions of T"),
    (["--guidance", "nan"], "--guidance must be a finite number"),
    (["--guidance", "inf"], "--guidance must be a finite number"),
    (["--guidance", "-1"], "--guidance must be >= 0"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--checkpoint_path", "does/not/exist"], "no checkpoint at"),
])
def test_bad_inference_options(argv, message, capsys):
    code, err = exit_code(inference.main, argv, capsys)
    assert code == 2 and message in err


def test_resume_with_other_architecture_names_the_fields(tmp_path, mnist_dir, capsys):
    train.main(train_args(tmp_path, mnist_dir, "ck", "--max_steps", "1", "--num_grid_samples", "0"))
    code, err = exit_code(train.main, train_args(tmp_path, mnist_dir, "ck", "--base_channels", "16",
                                                 "--norm_groups", "8"), capsys)
    assert code == 2 and "base_channels: checkpoint has 8, requested 16" in err and "norm_groups" in err


def test_unwritable_output_and_no_traceback(tmp_path, mnist_dir):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = run_script("train.py", *train_args(tmp_path, mnist_dir, "ck", "--output_dir", str(blocker / "sub")))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "cannot write to" in result.stderr


def test_non_finite_losses_skip_updates_then_stop(tmp_path, mnist_dir, monkeypatch, capsys):
    """From step 3 on the loss is NaN: no update touches the weights, each is counted and logged,
    and after --max_bad_steps in a row training stops, having saved only finite tensors."""
    train.main(train_args(tmp_path, mnist_dir, "good", "--max_steps", "2", "--num_grid_samples", "0"))
    real_loss = DDPM.loss
    calls = {"n": 0}

    def loss_going_bad(self, *args):
        calls["n"] += 1
        loss = real_loss(self, *args)
        return loss * float("nan") if calls["n"] > 2 else loss

    monkeypatch.setattr(DDPM, "loss", loss_going_bad)
    code, err = exit_code(train.main, train_args(tmp_path, mnist_dir, "bad", "--max_steps", "50",
                                                 "--max_bad_steps", "3", "--num_grid_samples", "0"), capsys)
    assert code == 2 and "3 non-finite losses or gradients in a row" in err
    good, bad = load_checkpoint(tmp_path / "good")[0], load_checkpoint(tmp_path / "bad")[0]
    assert bad["step"] == 5
    for key in ("model", "ema"):
        for name in good[key]:
            assert torch.equal(good[key][name], bad[key][name])
    with open(tmp_path / "out_bad" / "train_log.csv") as f:
        assert [int(r["bad_steps"]) for r in csv.DictReader(f)] == [0, 0, 1, 2, 3]


def test_torchrun_two_processes_match_one(tmp_path, mnist_dir):
    """DDP with 2 CPU processes (gloo) gives the weights of 1 process with the same global batch."""
    common = ["--max_steps", "3", "--precision", "fp32", "--num_grid_samples", "0"]
    train.main(train_args(tmp_path, mnist_dir, "one", *common))
    ddp = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
                     *train_args(tmp_path, mnist_dir, "two", *common), timeout=180,
                     env={"OMP_NUM_THREADS": "1"})
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "weights identical on all 2 processes" in ddp.stderr
    one, two = load_checkpoint(tmp_path / "one")[0], load_checkpoint(tmp_path / "two")[0]
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in two["model"])
    for name in one["model"]:
        assert torch.allclose(one["model"][name], two["model"][name], atol=1e-5, rtol=1e-4), name
    inference.main(["--checkpoint_path", str(tmp_path / "two"), "--num_samples", "2", "--steps", "2",
                    "--no_show", "--output_dir", str(tmp_path / "inf")])


def test_eval_every_logs_fid_next_to_the_loss(tmp_path, mnist_dir):
    train.main(train_args(tmp_path, mnist_dir, "ev", "--max_steps", "2", "--eval_every", "2",
                                      "--eval_samples", "200", "--num_grid_samples", "0"))
    with open(tmp_path / "out_ev" / "eval_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [2]
    assert float(rows[0]["fid"]) > 0 and 0 <= float(rows[0]["confident"]) <= 1


def test_full_disk_during_save_exits_with_one_line_and_keeps_the_old_checkpoint(tmp_path, mnist_dir, monkeypatch,
                                                                                 capsys):
    train.main(train_args(tmp_path, mnist_dir, "ck", "--max_steps", "2", "--num_grid_samples", "0"))
    before = (tmp_path / "ck").read_bytes()

    def disk_full(obj, f):
        f.write(b"x" * 100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("utils.checkpoint.torch.save", disk_full)
    code, err = exit_code(train.main, train_args(tmp_path, mnist_dir, "ck", "--max_steps", "4",
                                                 "--num_grid_samples", "0"), capsys)
    assert code == 2 and "could not save the checkpoint" in err and "No space left" in err
    assert (tmp_path / "ck").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_budget_plans_the_steps_at_the_start_and_the_printed_flags_repeat_the_run(tmp_path, mnist_dir, capsys):
    """--minutes times a few steps, plans total_steps before step 0 (the timing leaves no trace),
    saves it, resumes with it, and a fresh run with the flags printed at the end is the same run."""
    budget = train_args(tmp_path, mnist_dir, "budget")
    i = budget.index("--epochs")
    del budget[i:i + 2]  # no --epochs: the budget sets the length
    train.main([*budget, "--minutes", "0.3", "--warmup_steps", "2", "--max_steps", "3", "--num_grid_samples", "0"])
    err = capsys.readouterr().err
    printed = int(err.split("(to repeat this run: --total_steps ")[1].split(")")[0])  # not re-planned in 3 steps
    first = load_checkpoint(tmp_path / "budget")[0]
    assert first["train_config"]["total_steps"] == printed > 6 and first["step"] == 3
    assert first["lr_scheduler"]["t_initial"] == printed - first["train_config"]["warmup_steps"]
    train.main([*budget, "--max_steps", "6", "--num_grid_samples", "0"])  # resumes: no new timing
    assert "s/step measured" not in capsys.readouterr().err
    train.main(train_args(tmp_path, mnist_dir, "fixed", "--total_steps", str(printed), "--warmup_steps", "2",
                          "--max_steps", "6", "--num_grid_samples", "0"))
    assert_same_state(load_checkpoint(tmp_path / "budget")[0], load_checkpoint(tmp_path / "fixed")[0])
    assert logged_losses(tmp_path, "budget") == logged_losses(tmp_path, "fixed")


def test_a_new_length_typed_on_resume_replaces_the_saved_one(tmp_path, mnist_dir):
    train.main(train_args(tmp_path, mnist_dir, "ck", "--total_steps", "40", "--max_steps", "1", "--num_grid_samples", "0"))
    train.main(train_args(tmp_path, mnist_dir, "ck", "--epochs", "2", "--max_steps", "2", "--num_grid_samples", "0"))
    ckpt = load_checkpoint(tmp_path / "ck")[0]
    steps_per_epoch = 60000 // 16
    assert ckpt["train_config"]["total_steps"] == 2 * steps_per_epoch and ckpt["step"] == 2


def test_checkpoint_of_format_1_loads_samples_and_resumes_only_where_exact(tmp_path, mnist_dir, capsys):
    """A version-1 checkpoint of the earlier default network (base 32, channel_mults 1 2 2), whose
    training config has no minutes or total_steps: it samples with its own architecture; it resumes
    on its own 6-epoch schedule where it drew its seeds as now (seed_scheme 2), and stops with one
    line where it did not."""
    old_net = ["--base_channels", "32", "--channel_mults", "1", "2", "2", "--attention_resolutions", "7"]
    args = [*old_net, "--data_dir", mnist_dir, "--batch_size", "16", "--num_grid_samples", "0", "--save_every", "1",
            "--checkpoint_path", str(tmp_path / "old"), "--output_dir", str(tmp_path / "out")]
    train.main([*args, "--epochs", "6", "--max_steps", "1"])
    ckpt = load_checkpoint(tmp_path / "old")[0]
    for field in ("minutes", "total_steps"):
        del ckpt["train_config"][field]
    ckpt["format_version"] = 1
    ckpt["train_config"]["class_cond"] = True  # a field that checkpoints of that time had
    torch.save({**ckpt, "train_config": {**ckpt["train_config"], "seed_scheme": 2}}, tmp_path / "old")
    torch.save(ckpt, tmp_path / "older")  # no seed_scheme: the first seed derivation
    model, _ = load_model(*load_checkpoint(tmp_path / "older"), True, torch.device("cpu"))
    assert (model.config.base_channels, model.config.channel_mults) == (32, (1, 2, 2))
    resume = ["--data_dir", mnist_dir, "--max_steps", "2", "--num_grid_samples", "0", "--output_dir", str(tmp_path / "out")]
    train.main(["--checkpoint_path", str(tmp_path / "old"), *resume])
    resumed = load_checkpoint(tmp_path / "old")[0]
    assert resumed["step"] == 2 and resumed["model_config"]["base_channels"] == 32
    assert resumed["train_config"]["total_steps"] == 6 * (60000 // 16)
    code, err = exit_code(train.main, ["--checkpoint_path", str(tmp_path / "older"), *resume], capsys)
    assert code == 2 and "cannot be resumed" in err and "seeds" in err


@pytest.mark.slow
def test_a_short_default_run_draws_the_requested_digits(tmp_path, mnist_dir):
    """The default network and recipe, 600 steps (about 7 minutes on 2 CPU cores): most of its
    digits are the ones asked for, by the shipped classifier. Run with: python -m pytest -m slow"""
    import evaluate
    train.main(["--data_dir", mnist_dir, "--total_steps", "600", "--num_grid_samples", "0",
                "--checkpoint_path", str(tmp_path / "ck"), "--output_dir", str(tmp_path / "out")])
    results = evaluate.main(["--checkpoint_path", str(tmp_path / "ck"), "--num_samples", "200",
                             "--data_dir", mnist_dir, "--out", str(tmp_path / "eval.json")])
    assert results["digit_accuracy"] > 0.8 and results["fid"] < 3

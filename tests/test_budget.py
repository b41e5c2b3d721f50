"""The length of a --minutes run (training/budget.py): planned before step 0, re-planned from the
pace on the way so that it ends on time, the LR continuous through a re-plan, the plan saved,
resumed and repeated exactly."""
import math

import pytest

import train
from test_train import assert_same_state, exit_code, logged_losses, train_args
from training.budget import CHECKS, END_SECONDS, Plan, repeat_flags
from training.schedule import LR_FLOOR, learning_rate
from utils.checkpoint import load_checkpoint
from utils.config import TrainConfig


def cosine_lr(step, cfg, total):
    """The LR of a run of one fixed length, as training/schedule.py has always computed it."""
    peak, floor, warmup = cfg.lr, LR_FLOOR * cfg.lr, cfg.warmup_steps
    if step < warmup:
        return floor + step * ((peak - floor) / warmup)
    decay_steps = max(1, total - warmup)
    if step - warmup >= decay_steps:
        return floor
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * (step - warmup) / decay_steps))


def test_a_fixed_length_keeps_its_cosine_bit_for_bit():
    cfg = TrainConfig(warmup_steps=20)
    for total in (1, 20, 21, 500):
        plan = Plan((total,))
        assert [learning_rate(s, cfg, plan) for s in range(total + 3)] == [cosine_lr(s, cfg, total) for s in range(total + 3)]


@pytest.mark.parametrize("lengths", [(1000, 400, 1200), (1000, 400, 800), (1000, 10, 900, 600, 1100), (300, 5, 350)])
def test_a_re_plan_keeps_the_lr_continuous_and_ends_it_at_the_new_total(lengths):
    """No jump at a re-plan larger than the steps around it make; the LR falls after the warmup and
    reaches the floor exactly at the last total."""
    cfg = TrainConfig(warmup_steps=20)
    plan = Plan(lengths)
    lrs = [learning_rate(s, cfg, plan) for s in range(plan.total + 2)]
    steps = [b - a for a, b in zip(lrs[cfg.warmup_steps:], lrs[cfg.warmup_steps + 1:])]
    assert all(step <= 1e-15 for step in steps)  # never rises after the warmup
    largest = max(-step for step in steps)
    for s in lengths[1::2]:
        if s > cfg.warmup_steps:
            assert lrs[s - 1] - lrs[s] <= largest and lrs[s] - lrs[s + 1] <= largest
    assert lrs[plan.total - 1] > cfg.lr * LR_FLOOR == lrs[plan.total] == lrs[plan.total + 1]


def simulate(seconds_per_step, minutes=17.0, first_pace=None):
    """A --minutes run on a fake clock: planned from the pace of its first steps, then stepping with
    seconds_per_step(step) and re-planning as train.py does. Returns (the end time, the plan)."""
    budget = minutes * 60
    planned = int(0.95 * budget / (first_pace or seconds_per_step(0)))
    plan, now, step = Plan((planned,), deadline=budget - END_SECONDS, every=max(1, planned // CHECKS)), 0.0, 0
    while step < plan.total:
        now += seconds_per_step(step)
        step += 1
        plan.update(step, now)
    return now + 5.0, plan  # + the last save and grid


@pytest.mark.parametrize("pace", [
    lambda s: 1.25 if s < 100 else 1.1,   # a 2-core AVX2 EPYC: slower first steps (planned 769, ended at 14.5 min)
    lambda s: 0.6 if s < 800 else 0.3,    # the first steps shared the CPU with another job
    lambda s: 0.289 if s < 10 else 0.33,  # timed at 0.289 s, then grids and saves: 0.33 s a step
    lambda s: 0.3 + 0.01 * math.sin(s / 50) + (3.0 if s % 468 == 0 else 0.0),  # noisy, a grid each epoch
    lambda s: 0.3 if s < 2000 else 0.6,   # another job starts late in the run
])
def test_a_budget_run_ends_within_30_s_of_its_minutes(pace):
    end, plan = simulate(pace)
    assert abs(end - 17 * 60) <= 30, (end, plan.lengths)
    assert len(plan.lengths) <= 2 * CHECKS + 1  # at most one re-plan a check


def test_a_run_whose_pace_holds_is_not_re_planned():
    _, plan = simulate(lambda s: 0.3, first_pace=0.3 * 0.95 * (17 * 60) / (17 * 60 - END_SECONDS))
    assert len(plan.lengths) <= 3  # at most one small correction


def test_a_re_planned_run_resumes_and_repeats_exactly(tmp_path, mnist_dir, capsys):
    """A run with a re-plan in its plan (--plan, as a --minutes run prints it), stopped and resumed,
    is the same run as one straight through; the checkpoint keeps the plan and says how to repeat it."""
    def run(name, *extra):
        args = train_args(tmp_path, mnist_dir, name, "--warmup_steps", "2", "--num_grid_samples", "0", *extra)
        i = args.index("--epochs")
        train.main(args[:i] + args[i + 2:])  # the plan sets the length

    run("straight", "--plan", "12", "3", "9", "5", "10", "--max_steps", "7")
    run("resumed", "--plan", "12", "3", "9", "5", "10", "--max_steps", "4")
    run("resumed", "--max_steps", "7")
    straight, resumed = (load_checkpoint(tmp_path / name)[0] for name in ("straight", "resumed"))
    assert_same_state(straight, resumed)
    assert logged_losses(tmp_path, "straight") == logged_losses(tmp_path, "resumed")
    assert tuple(resumed["train_config"]["plan"]) == (12, 3, 9, 5, 10) and resumed["train_config"]["total_steps"] == 10
    assert repeat_flags(Plan(tuple(resumed["train_config"]["plan"]))) == "--plan 12 3 9 5 10"
    assert "(to repeat this run: --plan 12 3 9 5 10)" in capsys.readouterr().err


@pytest.mark.parametrize("plan, message", [
    (["12", "3"], "--plan takes T0 S1 T1"),
    (["12", "13", "20"], "--plan takes T0 S1 T1"),
    (["12", "5", "4"], "--plan takes T0 S1 T1"),
    (["12", "5", "14", "3", "16"], "--plan takes T0 S1 T1"),
])
def test_a_bad_plan_is_refused_in_one_line(plan, message, tmp_path, mnist_dir, capsys):
    code, err = exit_code(train.main, train_args(tmp_path, mnist_dir, "ck", "--plan", *plan), capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1

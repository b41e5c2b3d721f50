"""Post-hoc EMA (Karras et al. 2024): two power EMAs and their snapshots make the EMA of any length
afterwards (training/posthoc.py, posthoc_ema.py)."""
import shutil

import numpy as np
import pytest
import torch

import evaluate
import posthoc_ema
import train
from test_train import assert_same_state, exit_code, train_args
from training.posthoc import SIGMA_RELS, PostHocEMA, coefficients, gamma_of, reconstruct, sigma_rel_of
from utils.checkpoint import load_checkpoint


@pytest.mark.parametrize("sigma_rel", [0.01, 0.05, 0.1, 0.2, 0.28])
def test_gamma_and_sigma_rel_are_inverse(sigma_rel):
    assert sigma_rel_of(gamma_of(sigma_rel)) == pytest.approx(sigma_rel, rel=1e-12)


def power_ema(values, sigma_rel):
    """The power EMA of a sequence, step by step: its value after every step."""
    gamma, average, out = gamma_of(sigma_rel), 0.0, []
    for t, value in enumerate(values, start=1):
        average += (1 - (1 - 1 / t) ** (gamma + 1)) * (value - average)
        out.append(average)
    return np.array(out)


def test_the_snapshots_of_two_lengths_make_a_third():
    """On a drifting random walk the combination of 8 snapshots of each kept profile matches the power
    EMA of another length, run step by step, to within 2% of the distance from the raw weights."""
    steps = 3000
    walk = np.cumsum(np.random.default_rng(0).normal(size=steps)) + np.linspace(0, 50, steps)
    kept = {sigma_rel: power_ema(walk, sigma_rel) for sigma_rel in SIGMA_RELS}
    taken = [s for s in range(1, steps + 1) if s % (steps // 8) == 0 or s == steps]
    snapshots = [(s, r) for s in taken for r in SIGMA_RELS]
    for sigma_rel in (0.03, 0.08, 0.15, 0.25):
        x = coefficients(snapshots, sigma_rel, steps)
        made = sum(c * kept[r][s - 1] for c, (s, r) in zip(x, snapshots))
        wanted = power_ema(walk, sigma_rel)[-1]
        assert abs(made - wanted) < 0.02 * abs(walk[-1] - wanted), sigma_rel
    x = coefficients(snapshots, 0.1, steps)  # a kept profile at a snapshot's step is that snapshot
    assert x[snapshots.index((steps, 0.1))] == pytest.approx(1, abs=1e-6) and np.abs(x).sum() == pytest.approx(1, abs=1e-5)


def test_the_averages_follow_the_power_rule_and_skip_a_bad_step():
    model = torch.nn.Linear(1, 1, bias=False)
    posthoc = PostHocEMA(model, count=2)
    values = [3.0, -1.0, 5.0, 2.0]
    for step, value in enumerate(values, start=1):
        model.weight.data.fill_(value)
        posthoc.update(model, step, torch.tensor(True), total=4)
    model.weight.data.fill_(100.0)
    posthoc.update(model, 5, torch.tensor(False), total=6)  # non-finite: no average moves, no snapshot
    for average, sigma_rel in zip(posthoc.averages, SIGMA_RELS):
        assert average.weight.item() == pytest.approx(power_ema(values, sigma_rel)[-1], rel=1e-6)
    assert [s for s, _, _ in posthoc.snapshots] == [2, 2, 4, 4]


@pytest.fixture(scope="module")
def posthoc_run(tmp_path_factory, mnist_dir):
    folder = tmp_path_factory.mktemp("posthoc")
    train.main(train_args(folder, mnist_dir, "ck", "--total_steps", "6", "--posthoc_ema", "3", "--num_grid_samples", "0"))
    return folder


def test_a_run_keeps_snapshots_and_resumes_exactly(posthoc_run, mnist_dir, tmp_path):
    whole = load_checkpoint(posthoc_run / "ck")[0]
    assert sorted({s for s, _, _ in whole["posthoc"]["snapshots"]}) == [2, 4, 6]
    args = train_args(tmp_path, mnist_dir, "ck", "--total_steps", "6", "--posthoc_ema", "3", "--num_grid_samples", "0")
    train.main([*args, "--max_steps", "3"])
    train.main([*args, "--max_steps", "6"])
    resumed = load_checkpoint(tmp_path / "ck")[0]
    assert_same_state(whole, resumed)
    for (s, r, a), (s2, r2, b) in zip(whole["posthoc"]["snapshots"], resumed["posthoc"]["snapshots"], strict=True):
        assert (s, r) == (s2, r2) and all(torch.equal(a[k], b[k]) for k in a)


def test_the_tool_writes_checkpoints_that_evaluate_reads(posthoc_run, mnist_dir, tmp_path):
    source = load_checkpoint(posthoc_run / "ck")[0]
    out = str(tmp_path / "ema{sigma_rel}")
    written = posthoc_ema.main(["--checkpoint_path", str(posthoc_run / "ck"), "--sigma_rel", "0.05", "0.2", "--out", out])
    assert written == [str(tmp_path / "ema0.05"), str(tmp_path / "ema0.2")]
    short, long = (load_checkpoint(path)[0] for path in written)
    assert "posthoc" not in short and short["posthoc_source"]["sigma_rel"] == 0.05
    assert short["ema"].keys() == source["ema"].keys()
    expected = reconstruct(source["posthoc"], 0.05)
    assert all(torch.equal(short["ema"][k], expected[k]) for k in expected)
    assert not all(torch.equal(short["ema"][k], long["ema"][k]) for k in expected)
    results = evaluate.main(["--checkpoint_path", written[0], "--num_samples", "10", "--steps", "2",
                             "--data_dir", mnist_dir, "--out", str(tmp_path / "e.json")])
    assert "fid" in results
    shutil.copy(written[0], tmp_path / "resumable")  # it resumes as a plain run
    train.main(train_args(tmp_path, mnist_dir, "resumable", "--total_steps", "7", "--num_grid_samples", "0"))
    assert load_checkpoint(tmp_path / "resumable")[0]["step"] == 7


def test_bad_requests_are_refused_in_one_line(posthoc_run, mnist_dir, tmp_path, capsys):
    train.main(train_args(tmp_path, mnist_dir, "plain", "--total_steps", "2", "--num_grid_samples", "0"))
    capsys.readouterr()
    cases = [(posthoc_ema.main, ["--checkpoint_path", str(tmp_path / "plain")], "keeps no post-hoc EMA snapshots"),
             (posthoc_ema.main, ["--checkpoint_path", str(posthoc_run / "ck"), "--sigma_rel", "0.3"], "--sigma_rel"),
             (posthoc_ema.main, ["--checkpoint_path", str(posthoc_run / "ck"), "--step", "5"], "snapshots at steps 2, 4, 6"),
             (train.main, [*train_args(tmp_path, mnist_dir, "plain", "--total_steps", "4", "--num_grid_samples", "0"),
                           "--posthoc_ema", "2"], "--posthoc_ema starts with a run")]
    for main, argv, message in cases:
        code, err = exit_code(main, argv, capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err

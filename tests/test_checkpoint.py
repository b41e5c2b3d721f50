"""Checkpoints: atomic writes, rotation, 'latest', and loading that never runs code."""
import dataclasses
import os

import pytest
import torch

import utils.checkpoint as checkpoint
from conftest import CreatesAFile
from diffusion.config import DiffusionConfig
from models.unet import UNet
from utils.checkpoint import FORMAT_VERSION, load_checkpoint, load_weights, save_checkpoint
from utils.config import ModelConfig
from utils.errors import UserError

TINY = ModelConfig(base_channels=8, channel_mults=(1, 2), attention_resolutions=(14,), norm_groups=4, num_heads=2)


def make_state(step=1, seed=0):
    torch.manual_seed(seed)
    model = UNet(TINY)
    return {"format_version": FORMAT_VERSION, "model_config": dataclasses.asdict(TINY),
            "diffusion_config": dataclasses.asdict(DiffusionConfig()), "train_config": {},
            "model": model.state_dict(), "ema": model.state_dict(), "step": step}


def test_round_trip(tmp_path):
    save_checkpoint(make_state(step=7), tmp_path / "ck")
    ckpt, path = load_checkpoint(tmp_path / "ck")
    assert ckpt["step"] == 7 and path == tmp_path / "ck"
    load_weights(UNet(TINY), ckpt["model"], path)


def test_failed_save_keeps_previous_checkpoint_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "ck"
    save_checkpoint(make_state(step=1), path)
    before = path.read_bytes()

    def disk_full(obj, f):
        f.write(b"x" * 1000)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(UserError, match=f"the disk is full .*; the last good checkpoint is {path}"):
        save_checkpoint(make_state(step=2), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["ck"]
    assert load_checkpoint(path)[0]["step"] == 1


def test_keep_last_rotates_step_files(tmp_path):
    path = tmp_path / "ck"
    for step in range(1, 6):
        save_checkpoint(make_state(step=step), path, keep_last=2)
    assert sorted(os.listdir(tmp_path)) == ["ck", "ck_step0000004", "ck_step0000005"]
    assert load_checkpoint(path)[0]["step"] == 5


def test_folder_resumes_from_newest_valid_and_skips_corrupt(tmp_path, capsys):
    path = tmp_path / "ck"
    for step in (1, 2, 3):
        save_checkpoint(make_state(step=step), path, keep_last=3)
    newest = tmp_path / "ck_step0000003"
    data = newest.read_bytes()
    newest.unlink()  # break the link with the main file, then write a truncated newest file
    newest.write_bytes(data[: len(data) // 2])
    ckpt, source = load_checkpoint(tmp_path)
    assert source.name == "ck_step0000002" and ckpt["step"] == 2
    assert "skipping" in capsys.readouterr().err
    assert checkpoint.main_path(source) == path


def test_loading_never_runs_code(tmp_path):
    target = tmp_path / "created_by_unpickling"
    torch.save({"format_version": 1, "payload": CreatesAFile(str(target))}, tmp_path / "evil")
    with pytest.raises(UserError, match="refused"):
        load_checkpoint(tmp_path / "evil")
    assert not target.exists()


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"hello, not a checkpoint", "not a checkpoint"),
])
def test_bad_files_give_clear_errors(tmp_path, content, message):
    (tmp_path / "f").write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_checkpoint(tmp_path / "f")


def test_truncated_and_foreign_and_missing(tmp_path):
    save_checkpoint(make_state(), tmp_path / "ck")
    data = (tmp_path / "ck").read_bytes()
    (tmp_path / "cut").write_bytes(data[:-5000])
    with pytest.raises(UserError, match="truncated"):
        load_checkpoint(tmp_path / "cut")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign")
    with pytest.raises(UserError, match="not a checkpoint of this project"):
        load_checkpoint(tmp_path / "foreign")
    with pytest.raises(UserError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(UserError, match="no valid checkpoint"):
        load_checkpoint(tmp_path / "empty_dir")


def test_non_finite_tensors_are_never_written_nor_loaded(tmp_path):
    state = make_state()
    state["ema"] = {k: v.clone() for k, v in state["ema"].items()}
    next(iter(state["ema"].values()))[...] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        save_checkpoint(state, tmp_path / "ck")
    assert not (tmp_path / "ck").exists()
    torch.save(state, tmp_path / "raw")  # written behind our back
    with pytest.raises(UserError, match="NaN"):
        load_checkpoint(tmp_path / "raw")


def test_wrong_dtype_and_bad_config_are_rejected(tmp_path):
    state = make_state()
    state["model"] = {k: v.double() for k, v in state["model"].items()}
    torch.save(state, tmp_path / "f64")
    with pytest.raises(UserError, match="float64"):
        load_checkpoint(tmp_path / "f64")
    state = make_state()
    state["model_config"]["base_channels"] = 6  # not divisible by norm_groups
    torch.save(state, tmp_path / "cfg")
    with pytest.raises(UserError, match="model_config"):
        load_checkpoint(tmp_path / "cfg")


def test_weights_from_another_architecture_name_the_keys(tmp_path):
    other = UNet(dataclasses.replace(TINY, base_channels=16))
    with pytest.raises(UserError, match="mismatched"):
        load_weights(UNet(TINY), other.state_dict(), tmp_path / "x")


@pytest.mark.parametrize("density", [(), (1.0, 3.0)])
def test_a_checkpoint_saved_with_t_density_loads_and_only_one_without_a_density_is_resumable(density, tmp_path):
    """--t_density (importance sampling of VDM's times) left the code after it did not pay; its
    checkpoints still load and sample, and one that used a density says why it cannot resume
    (training/state.py refuses a checkpoint with not_resumable). One saved before --weighting and
    --t_sampling gets the loss and the times it trained with."""
    from models.load import SHIPPED_MODEL
    ckpt = torch.load(SHIPPED_MODEL, weights_only=True)
    ckpt["diffusion_config"] = {**ckpt["diffusion_config"], "process": "vdm", "t_density": density}
    torch.save(ckpt, tmp_path / "ck")
    loaded = load_checkpoint(tmp_path / "ck")[0]
    assert "t_density" not in loaded["diffusion_config"]
    assert ("--t_density" in loaded.get("not_resumable", "")) == bool(density)
    config = DiffusionConfig(**loaded["diffusion_config"])  # the fields it lacks: its process's own
    assert (config.weighting, config.t_sampling) == ("elbo", "stratified")


def test_a_checkpoint_trained_on_logit_normal_times_loads_with_its_process_s_own_and_cannot_resume(tmp_path):
    """Logit-normal training times left the code after they did not pay (code at commit b69b20f); their
    checkpoints still load and sample, and say why they cannot resume."""
    from models.load import SHIPPED_MODEL
    ckpt = torch.load(SHIPPED_MODEL, weights_only=True)
    ckpt["diffusion_config"] = {**ckpt["diffusion_config"], "t_sampling": "logit_normal"}
    torch.save(ckpt, tmp_path / "ck")
    loaded = load_checkpoint(tmp_path / "ck")[0]
    assert "--t_sampling logit_normal" in loaded["not_resumable"]
    assert DiffusionConfig(**loaded["diffusion_config"]).t_sampling == "uniform"


def test_a_run_saved_with_an_autoguidance_snapshot_samples_and_resumes_as_before(tmp_path, mnist_dir):
    """Autoguidance left the code after it did not pay (code at commit b69b20f): a checkpoint holding
    its "guide" snapshot and --guide_at samples as the same checkpoint without them, and resumes."""
    import train
    from diffusion.pipeline import generate
    from models.load import load_model
    from test_train import train_args
    train.main(train_args(tmp_path, mnist_dir, "ck", "--total_steps", "2", "--num_grid_samples", "0"))
    ckpt = torch.load(tmp_path / "ck", weights_only=True)
    torch.save({**ckpt, "guide": ckpt["ema"], "train_config": {**ckpt["train_config"], "guide_at": 0.5}}, tmp_path / "old")
    samples = [generate(*load_model(*load_checkpoint(tmp_path / name)), 4) for name in ("ck", "old")]
    assert torch.equal(*samples)
    train.main(train_args(tmp_path, mnist_dir, "old", "--total_steps", "3", "--num_grid_samples", "0"))
    assert load_checkpoint(tmp_path / "old")[0]["step"] == 3


def test_the_shipped_model_is_written_in_format_1_where_that_format_says_the_same_model(tmp_path):
    """make_shipped keeps an MNIST DDPM in format version 1 (what every version of the code reads),
    and a load gives back the configs and weights it was made from; a model format 1 cannot
    describe (another process, a weighting, Fourier features, another data set) keeps the present
    format."""
    from models.load import SHIPPED_MODEL, make_shipped
    assert torch.load(SHIPPED_MODEL, weights_only=True)["format_version"] == 1
    ckpt = load_checkpoint(SHIPPED_MODEL)[0]
    for process in ("flow", "vdm", "shortcut"):
        assert make_process_config(process)["process"] == process
    cases = (("ddpm", {}, 1), ("ddpm_v", {"diffusion_config": {"prediction": "v"}}, 1),
             ("flow", {"diffusion_config": make_process_config("flow")}, 2),
             ("vdm", {"diffusion_config": make_process_config("vdm")}, 2),
             ("l_simple", {"diffusion_config": {"weighting": "simple"}}, 2),
             ("fourier", {"model_config": {"fourier_features": (7, 8)}}, 2),
             ("cifar", {"train_config": {"dataset": "cifar10"}}, 2))
    for name, change, version in cases:
        made = {**ckpt, **{key: {**ckpt[key], **fields} for key, fields in change.items()}}
        make_shipped(made, tmp_path / name)
        assert torch.load(tmp_path / name, weights_only=True)["format_version"] == version, name
        back = load_checkpoint(tmp_path / name)[0]
        assert ModelConfig(**back["model_config"]) == ModelConfig(**made["model_config"]), name
        assert DiffusionConfig(**back["diffusion_config"]) == DiffusionConfig(**made["diffusion_config"]), name
        assert back["train_config"]["dataset"] == made["train_config"]["dataset"]
        assert (back["step"], back["classes"]) == (made["step"], list(made["classes"]))
        assert all(torch.equal(back["ema"][k], made["ema"][k]) for k in made["ema"])


def make_process_config(process):
    """A process's full diffusion config with its own defaults (a flow model predicts velocity)."""
    return dataclasses.asdict(DiffusionConfig(process=process))

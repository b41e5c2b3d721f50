"""Hardening of the newer surfaces (processes, VDM's endpoints, SDEdit's image reader, the shipped
model's folder, the few-step grids): each bad input gives one line and exit code 2, and leaves no
file behind."""
import zlib

import pytest
import torch
from PIL import Image

import inference
import train
from conftest import TINY_MODEL, untracked
from diffusion.config import DiffusionConfig
from diffusion.processes import PROCESSES, make_process
from diffusion.samplers import SAMPLERS, make_timesteps
from models.load import SHIPPED_MODEL
from test_train import exit_code
from utils.checkpoint import lock_checkpoint, release_locks, save_checkpoint
from utils.datasets import load_folder, read_image
from utils.errors import UserError


@pytest.mark.parametrize("path", ["models/weights", "models/weights/", "models/weights/ddpm_mnist.pt", "link"])
def test_the_shipped_model_is_refused_by_its_resolved_path_and_nothing_is_written(path, tmp_path, capsys):
    before = untracked()
    if path == "link":
        path = str(tmp_path / "link.pt")
        (tmp_path / "link.pt").symlink_to(SHIPPED_MODEL)
    code, err = exit_code(train.main, ["--checkpoint_path", path, "--max_steps", "2"], capsys)
    assert code == 2 and "in the shipped models' folder" in err and len(err.strip().splitlines()) == 1, err
    assert not list(SHIPPED_MODEL.parent.glob(".*lock"))
    if before is not None:
        assert untracked() == before


def test_a_run_refused_after_taking_its_lock_leaves_no_lock_file(tmp_path, capsys):
    code, err = exit_code(train.main, [*TINY_MODEL, "--data_dir", str(tmp_path / "nothing"), "--dataset", "folder",
                                       "--checkpoint_path", str(tmp_path / "run" / "ck"),
                                       "--output_dir", str(tmp_path / "out")], capsys)
    assert code == 2 and "not a folder of images" in err
    assert not [p.name for p in (tmp_path / "run").iterdir()]


def test_a_lock_is_removed_only_where_its_run_wrote_nothing(tmp_path):
    lock_checkpoint(tmp_path / "a")
    save_checkpoint({"step": 1}, tmp_path / "b")
    lock_checkpoint(tmp_path / "b")
    release_locks()
    assert not (tmp_path / ".a.lock").exists() and (tmp_path / ".b.lock").exists()
    lock_checkpoint(tmp_path / "b")  # released: it can be taken again
    release_locks()


@pytest.mark.parametrize("field, value, message", [
    ("process", "edm", "--process 'edm' is not one this version knows (ddpm, vdm, flow, shortcut)"),
    ("schedule", "sigmoid", "--schedule 'sigmoid' is not one this version knows (linear, cosine)"),
    ("prediction", "score", "--prediction 'score' is not one this version knows"),
    ("gamma_max", 1000.0, "--gamma_max must be in [-50, 50], got 1000"),
])
def test_a_checkpoint_with_a_value_this_version_does_not_know_is_one_line(field, value, message, tmp_path, capsys):
    ckpt = torch.load(SHIPPED_MODEL, weights_only=True)
    ckpt["diffusion_config"] = {**ckpt["diffusion_config"], "process": "vdm", field: value}
    torch.save(ckpt, tmp_path / "ck")
    code, err = exit_code(inference.main, ["--checkpoint_path", str(tmp_path / "ck"), "--num_samples", "1",
                                           "--no_show", "--output_dir", str(tmp_path)], capsys)
    assert code == 2 and message in err and "diffusion_config" in err and "Traceback" not in err, err


@pytest.mark.parametrize("gamma", [(-50.0, -49.0), (-50.0, 50.0), (49.0, 50.0)])
def test_vdm_samples_at_the_ends_of_its_gamma_range(gamma):
    from diffusion.config import SamplingConfig
    from diffusion.pipeline import generate
    from models.unet import UNet
    from test_unet import SMALL, perturbed
    from utils.config import ModelConfig
    torch.manual_seed(0)
    model = perturbed(UNet(ModelConfig(**SMALL)), 0.01).eval()
    vdm = make_process(DiffusionConfig(process="vdm", gamma_min=gamma[0], gamma_max=gamma[1]))
    for sampler in ("dpm++", "ddim", "heun"):
        assert torch.isfinite(generate(model, vdm, 2, SamplingConfig(sampler=sampler, steps=3))).all(), sampler


def bomb(path, width=15000, height=15000):
    """A PNG whose header claims width x height pixels (PIL refuses it on opening, before decoding)."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[ihdr + 17:ihdr + 21] = zlib.crc32(bytes(data[ihdr:ihdr + 17])).to_bytes(4, "big")
    path.write_bytes(bytes(data))
    return path


def test_a_decompression_bomb_is_one_line_for_every_image_reader(tmp_path, capsys):
    image = bomb(tmp_path / "bomb.png")
    with pytest.raises(UserError, match="bomb.png.*too large"):
        read_image(image, 28, 1)
    folder = tmp_path / "folder"
    folder.mkdir()
    Image.new("L", (28, 28)).save(folder / "fine.png")
    bomb(folder / "bomb.png")
    with pytest.raises(UserError, match="bomb.png.*too large"):
        load_folder(folder, 28, 1)
    for flag in ("--image", "--inpaint"):
        code, err = exit_code(inference.main, [flag, str(image), "--checkpoint_path", str(SHIPPED_MODEL),
                                               "--num_samples", "1", "--no_show",
                                               "--output_dir", str(tmp_path / "out")], capsys)
        last = err.strip().splitlines()[-1]
        assert code == 2 and last.startswith("error: cannot read") and "too large to decode" in last, (flag, err)
        assert "Traceback" not in err


@pytest.mark.parametrize("process", sorted(PROCESSES))
@pytest.mark.parametrize("sampler", sorted(set(SAMPLERS) - {"ddpm"}))
def test_every_grid_runs_from_the_noise_end_to_the_clean_end(process, sampler):
    """N steps start at the noise end for every N >= 1 (one step is a jump from pure noise to the
    data) and, from two steps on, end at the clean end, descending."""
    diffusion = make_process(DiffusionConfig(process=process))
    noise_end, clean_end = (999, 0) if process == "ddpm" else (diffusion.t_max, diffusion.t_min)
    for steps in (1, 2, 3, 8, 50):
        grid = make_timesteps(sampler, diffusion, steps)
        assert grid[0] == noise_end, (steps, grid[:3])
        assert all(a > b for a, b in zip(grid, grid[1:])), steps
        if steps > 1:
            assert grid[-1] == clean_end, (steps, grid[-3:])


def test_a_batch_larger_than_memory_is_refused_before_the_work(tmp_path, mnist_dir, monkeypatch, capsys):
    """--batch_size 10000000 becomes MNIST's 60,000 images: refused in one line naming the memory
    and a batch that fits (the free memory is set to 4 GiB, so the test means the same anywhere)."""
    import evaluate
    import utils.memory
    monkeypatch.setattr(utils.memory, "free_bytes", lambda device: 4 * 2 ** 30)
    code, err = exit_code(train.main, [*TINY_MODEL, "--data_dir", mnist_dir, "--batch_size", "10000000",
                                       "--checkpoint_path", str(tmp_path / "ck"), "--output_dir", str(tmp_path)], capsys)
    last = err.strip().splitlines()[-1]
    assert code == 2 and "--batch_size 60000 needs about" in last and "GiB free on cpu; try --batch_size" in last, err
    assert not (tmp_path / "ck").exists() and not list(tmp_path.glob(".ck.lock"))
    suggested = int(last.split("try --batch_size ")[1].split()[0])
    assert 100 < suggested < 60000
    code, err = exit_code(evaluate.main, ["--checkpoint_path", str(SHIPPED_MODEL), "--num_samples", "2000000",
                                          "--batch_size", "2000000"], capsys)
    assert code == 2 and "--batch_size 2000000 needs about" in err and "Traceback" not in err, err
    code, err = exit_code(inference.main, ["--checkpoint_path", str(SHIPPED_MODEL), "--num_samples", "2000000",
                                           "--no_show", "--output_dir", str(tmp_path)], capsys)
    assert code == 2 and "--num_samples 2000000 needs about" in err, err
    import likelihood
    code, err = exit_code(likelihood.main, ["--checkpoint_path", str(SHIPPED_MODEL), "--method", "bound",
                                            "--batch_size", "2000000"], capsys)
    assert code == 2 and "--batch_size 2000000 needs about" in err, err


def test_the_memory_estimate_grows_with_the_network_and_with_training():
    from models.unet import UNet
    from utils.config import ModelConfig
    from utils.memory import bytes_per_image
    default, wide = UNet(ModelConfig()), UNet(ModelConfig(base_channels=32, channel_mults=(1, 2, 2)))
    training = bytes_per_image(default, train.training_pass)
    assert 0 < bytes_per_image(default) < training < bytes_per_image(wide, train.training_pass)
    # the default network's training step: 3.6 MiB per image counted, 4.1 MiB measured as peak RSS
    assert 2.5 * 2 ** 20 < training < 5 * 2 ** 20


def test_an_allocation_that_fails_anyway_is_one_line(capsys):
    from utils.errors import exit_on_user_error

    def main():
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 1073741824000 bytes. Error code 12 (Cannot allocate memory)")

    with pytest.raises(SystemExit) as info:
        exit_on_user_error(main)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("error: out of memory (1073741824000 bytes") and "--batch_size" in err
    with pytest.raises(RuntimeError, match="something else"):
        exit_on_user_error(lambda: (_ for _ in ()).throw(RuntimeError("something else")))

"""Other data: a folder of your own images end to end, torchvision's sets on small fake files in
their layout (no network), the classifier of another data set, and every error case."""
import pickle

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import evaluate
import inference
import train
import train_classifier
from test_train import exit_code
from utils.checkpoint import load_checkpoint
from utils.datasets import load_dataset
from utils.mnist import file_digest, write_idx

SMALL = ["--base_channels", "8", "--channel_mults", "1", "2", "--norm_groups", "4", "--num_heads", "2",
         "--num_timesteps", "50", "--batch_size", "8", "--log_every", "1", "--num_grid_samples", "4"]


def make_folder(root, sizes=((20, 16), (16, 16)), per_class=8):
    """root/circle/*.png in RGB and root/square/*.jpg in grayscale, in two sizes."""
    rng = np.random.default_rng(0)
    for name, mode, suffix in (("circle", "RGB", ".png"), ("square", "L", ".jpg")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            w, h = sizes[i % len(sizes)]
            shape = (h, w, 3) if mode == "RGB" else (h, w)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / name / f"{i}{suffix}")
    return root


def test_folder_trains_resumes_and_samples_by_class_name(tmp_path, capsys):
    images = make_folder(tmp_path / "imgs")
    data = load_dataset("folder", images, image_size=12)
    assert data.images.shape == (16, 3, 12, 12) and data.images.dtype == torch.uint8
    assert data.classes == ("circle", "square") and data.labels.tolist() == [0] * 8 + [1] * 8
    gray = data.images[8:].float()  # the grayscale images, read as RGB, have three equal channels
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])

    ck, out = tmp_path / "ck", tmp_path / "out"
    args = ["--dataset", "folder", "--data_dir", images, "--image_size", "12", *SMALL,
            "--checkpoint_path", ck, "--output_dir", out, "--epochs", "2"]
    train.main([*map(str, args), "--max_steps", "2"])
    train.main([*map(str, args), "--max_steps", "3"])  # resumes: the images are read again at 12 x 12
    ckpt, _ = load_checkpoint(ck)
    assert ckpt["step"] == 3 and ckpt["classes"] == ["circle", "square"]
    assert ckpt["train_config"]["dataset"] == "folder"
    shape = ckpt["model_config"]
    assert (shape["image_size"], shape["in_channels"], shape["num_classes"], shape["attention_resolutions"]) == \
        (12, 3, 2, (6,))
    inference.main(["--checkpoint_path", str(ck), "--digit", "square", "--num_samples", "2", "--steps", "2",
                    "--no_show", "--output_dir", str(tmp_path / "inf")])
    assert Image.open(tmp_path / "inf" / "samples.png").mode == "RGB"
    code, err = exit_code(inference.main, ["--checkpoint_path", str(ck), "--digit", "triangle", "--no_show",
                                           "--output_dir", str(tmp_path / "inf")], capsys)
    assert code == 2 and "circle, square" in err


def test_folder_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    def fails(folder, *extra):
        ck = tmp_path / f"ck_{folder.name}"
        code, err = exit_code(train.main, ["--dataset", "folder", "--data_dir", str(folder), *SMALL, *extra,
                                           "--checkpoint_path", str(ck), "--output_dir", str(tmp_path / "o")], capsys)
        assert code == 2 and "Traceback" not in err and not ck.exists()
        return err

    (tmp_path / "empty").mkdir()
    assert "no images in" in fails(tmp_path / "empty")
    mixed = make_folder(tmp_path / "mixed")
    assert "not all one square size" in fails(mixed) and "--image_size" in fails(mixed)
    broken = make_folder(tmp_path / "broken", sizes=((16, 16),))
    (broken / "circle" / "bad.png").write_bytes(b"not a png")
    assert "cannot read" in fails(broken) and "bad.png" in fails(broken)
    both = make_folder(tmp_path / "both", sizes=((16, 16),))
    Image.new("L", (16, 16)).save(both / "loose.png")
    assert "use one layout" in fails(both)
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("L", (16, 16)).save(flat / "a.png")
    assert "have no labels" in fails(flat, "--num_classes", "3")


def test_an_unlabelled_folder_trains_an_unconditional_model(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(8):
        Image.fromarray(np.full((16, 16), 30 * i, np.uint8)).save(flat / f"{i}.png")
    train.main(["--dataset", "folder", "--data_dir", str(flat), *SMALL, "--max_steps", "1", "--epochs", "1",
                "--checkpoint_path", str(tmp_path / "ck"), "--output_dir", str(tmp_path / "o")])
    shape = load_checkpoint(tmp_path / "ck")[0]["model_config"]
    assert (shape["num_classes"], shape["in_channels"], shape["image_size"]) == (0, 1, 16)


# ---- torchvision's data sets, on fake files in its layout -----------------------------------------

def fake_fashion(root, n=16):
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for split, count in (("train", n), ("t10k", n // 2)):
        images = np.arange(count * 28 * 28, dtype=np.int64).reshape(count, 28, 28) % 256
        write_idx(raw / f"{split}-images-idx3-ubyte", images.astype(np.uint8))
        labels = np.arange(count) % 10
        path = raw / f"{split}-labels-idx1-ubyte"  # labels: magic 0x0801, count, bytes
        path.write_bytes(bytes([0, 0, 8, 1]) + np.array([count], ">i4").tobytes() + labels.astype(np.uint8).tobytes())
    return root


@pytest.fixture
def offline(monkeypatch):
    """torchvision's downloads fail at once, as behind a firewall (tests never use the network)."""
    def refuse(self):
        raise OSError("network unreachable (test)")
    for name in ("FashionMNIST", "KMNIST", "CIFAR10"):
        monkeypatch.setattr(getattr(torchvision.datasets, name), "download", refuse)


def test_fashion_mnist_from_files_in_place_trains_and_names_its_classes(tmp_path, offline, capsys):
    root = fake_fashion(tmp_path / "data")
    data = load_dataset("fashion_mnist", root, train=False)
    assert data.images.shape == (8, 1, 28, 28) and data.labels.tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert data.classes[7] == "Sneaker"
    ck = tmp_path / "ck"
    train.main(["--dataset", "fashion_mnist", "--data_dir", str(root), *SMALL, "--max_steps", "1", "--epochs", "1",
                "--checkpoint_path", str(ck), "--output_dir", str(tmp_path / "o")])
    assert load_checkpoint(ck)[0]["classes"][7] == "Sneaker"
    inference.main(["--checkpoint_path", str(ck), "--digit", "Sneaker", "--num_samples", "1", "--steps", "2",
                    "--no_show", "--output_dir", str(tmp_path / "inf")])


@pytest.mark.parametrize("name, place", [("fashion_mnist", "FashionMNIST/raw"), ("kmnist", "KMNIST/raw"),
                                         ("cifar10", "")])
def test_a_missing_data_set_says_which_files_go_where(tmp_path, offline, capsys, name, place):
    code, err = exit_code(train.main, ["--dataset", name, "--data_dir", str(tmp_path), *SMALL,
                                       "--checkpoint_path", str(tmp_path / "ck"), "--output_dir", str(tmp_path)], capsys)
    assert code == 2 and "Traceback" not in err
    assert f"could not get {name}" in err and str(tmp_path / place) in err
    assert ("cifar-10-python.tar.gz" if name == "cifar10" else "train-images-idx3-ubyte") in err


def test_cifar10_from_its_python_batches_is_nchw(tmp_path, offline, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

    def batch(filename, label):
        pixels = np.zeros((2, 3, 32, 32), np.uint8)
        pixels[:, 0], pixels[:, 1], pixels[:, 2] = 10, 20, 30  # channel c is 10 (c + 1)
        with open(folder / filename, "wb") as f:
            pickle.dump({"data": pixels.reshape(2, -1), "labels": [label, label + 1]}, f)
        return [filename, file_digest(folder / filename)]

    cls = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", [batch(f"data_batch_{i}", i) for i in range(1, 6)])
    monkeypatch.setattr(cls, "test_list", [batch("test_batch", 0)])
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names}, f)
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": file_digest(folder / "batches.meta")})
    data = load_dataset("cifar10", tmp_path, train=True)
    assert data.images.shape == (10, 3, 32, 32) and data.classes == tuple(names)
    assert [data.images[:, c].unique().tolist() for c in range(3)] == [[10], [20], [30]]
    assert data.labels.tolist() == [1, 2, 2, 3, 3, 4, 4, 5, 5, 6]


# ---- measuring another data set's samples ------------------------------------------------------

def test_evaluate_uses_the_data_sets_own_classifier_or_says_what_needs_one(tmp_path, capsys):
    images = make_folder(tmp_path / "imgs", sizes=((16, 16),))
    ck = tmp_path / "ck"
    train.main(["--dataset", "folder", "--data_dir", str(images), *SMALL, "--max_steps", "1", "--epochs", "1",
                "--checkpoint_path", str(ck), "--output_dir", str(tmp_path / "o")])
    common = ["--checkpoint_path", str(ck), "--num_samples", "4", "--steps", "2", "--classifier",
              str(tmp_path / "clf.pt")]
    results = evaluate.main([*common, "--out", str(tmp_path / "e1.json")])
    err = capsys.readouterr().err
    assert "no classifier of folder" in err and "train_classifier.py --dataset folder" in err
    assert set(results) >= {"memorisation"} and "fid" not in results

    train_classifier.main(["--dataset", "folder", "--data_dir", str(images), "--epochs", "1",
                           "--out", str(tmp_path / "clf.pt")])
    results = evaluate.main([*common, "--out", str(tmp_path / "e2.json")])
    assert results["dataset"] == "folder" and np.isfinite(results["fid"]) and 0 <= results["confident"] <= 1
    code, err = exit_code(evaluate.main, ["--checkpoint_path", str(ck), "--num_samples", "4", "--classifier",
                                          "models/weights/mnist_classifier.pt"], capsys)
    assert code == 2 and "a classifier of mnist, not of folder" in err

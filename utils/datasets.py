"""The data sets a model can learn, loaded once into memory as uint8 tensors (N, C, H, W), which
to_model_range turns into the model's floats in [-1, 1].

    mnist           the default (utils/mnist.py: offline fallback and MD5 checks)
    fashion_mnist   Zalando's Fashion-MNIST, 28x28 grayscale, 10 classes     } torchvision's classes: files
    kmnist          Kuzushiji-MNIST, 28x28 grayscale, 10 classes             } already in --data_dir in its
    cifar10         CIFAR-10, 32x32 RGB, 10 classes                          } layout, else its download
    folder          your own images under --data_dir (see load_folder)

torchvision checks what it downloads; when its mirrors are unreachable, the error names the files
to fetch and where to put them.
"""
import sys
import warnings
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from utils.config import DATASETS
from utils.errors import UserError
from utils.mnist import RAW_MD5, download_timeout, load_mnist

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
FOLDER_MAX_BYTES = 4 * 2 ** 30  # a folder is loaded into memory as uint8 only up to this size
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}

IDX_FILES = f"{', '.join(RAW_MD5)} (or the same names + .gz)"  # MNIST's file names, which its look-alikes share
# torchvision's class, the folder it reads under --data_dir, and the files it needs there
TORCHVISION = {
    "fashion_mnist": ("FashionMNIST", "FashionMNIST/raw", IDX_FILES),
    "kmnist": ("KMNIST", "KMNIST/raw", IDX_FILES),
    "cifar10": ("CIFAR10", "", "cifar-10-python.tar.gz, or its unpacked folder cifar-10-batches-py/"),
}
MNIST_CLASSES = tuple(str(d) for d in range(10))


@dataclass
class Data:
    images: torch.Tensor          # uint8 (N, C, H, W)
    labels: torch.Tensor | None   # int64 (N,), or None for unlabelled images
    classes: tuple                # the label names, () when unlabelled
    noise: torch.Tensor | None = None  # float (N, C, H, W): each image's own noise (a teacher's pairs), or None


def load_dataset(name, data_dir, train=True, image_size=0, channels=0):
    """One split of a data set. image_size and channels matter for `folder` only (0 = from the images)."""
    if name == "mnist":
        images, labels = load_mnist(data_dir, train)
        return Data(images.unsqueeze(1), labels, MNIST_CLASSES)
    if name == "folder":
        return load_folder(data_dir, image_size, channels)  # a folder has one split: train and test alike
    if name not in TORCHVISION:
        raise UserError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
    dataset = torchvision_dataset(name, data_dir, train)
    images = torch.as_tensor(np.asarray(dataset.data))
    images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)  # NHWC -> NCHW
    return Data(images.contiguous(), torch.as_tensor(np.asarray(dataset.targets)).long(), tuple(dataset.classes))


def to_model_range(images_uint8):
    """uint8 (B, C, H, W), or (B, H, W) for one channel -> float (B, C, H, W) in [-1, 1]."""
    images = images_uint8.unsqueeze(1) if images_uint8.dim() == 3 else images_uint8
    return images.float() / 127.5 - 1.0


def checkpoint_data(ckpt, train, data_dir="", dataset=""):
    """(name, one split) of the data set a checkpoint dict was trained on, from its --data_dir; a
    folder is read at the checkpoint's image size and channels. data_dir and dataset replace the
    checkpoint's when given; with no checkpoint (None), MNIST in data/."""
    saved = (ckpt or {}).get("train_config", {})
    dataset = dataset or saved.get("dataset", "mnist")
    shape = ckpt["model_config"] if ckpt and dataset == "folder" else {}
    return dataset, load_dataset(dataset, data_dir or saved.get("data_dir", "data"), train,
                                 shape.get("image_size", 0), shape.get("in_channels", 0))


def torchvision_dataset(name, data_dir, train):
    """torchvision's data set from files in its layout under data_dir, else from its download."""
    class_name, folder, files = TORCHVISION[name]
    cls = getattr(torchvision.datasets, class_name)
    with suppress(RuntimeError):  # not there (or, for CIFAR-10, failing its MD5 check)
        return cls(data_dir, train=train, download=False)
    try:
        with download_timeout():
            return cls(data_dir, train=train, download=True)  # uses archives already there if they check out
    except Exception as err:  # unreachable mirrors, a broken archive: say what to do
        print(f"{name}: torchvision's download failed ({type(err).__name__}: {str(err)[:200]})", file=sys.stderr)
    raise UserError(f"could not get {name}: its download failed and {Path(data_dir) / folder} lacks it. "
                    f"Place {files} in {Path(data_dir) / folder}/")


# ---- your own images -------------------------------------------------------------------------

def load_folder(root, image_size=0, channels=0):
    """The images under `root` (any common format, grayscale or colour, any size), labelled by their
    sub-folders' names when they sit in sub-folders (torchvision's ImageFolder convention: root/cat/1.png,
    root/dog/2.png), unlabelled directly in root. Every image is resized (shorter side) and centre-cropped
    to image_size; 0 takes the images' own size, which must then be one square size. channels: 1 or 3;
    0 = 1 if every image is grayscale, else 3. Loaded once into uint8 memory (at most FOLDER_MAX_BYTES)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"--data_dir {root} is not a folder of images")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise UserError(f"no images in {root} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    top = [p for p in files if p.parent == root]
    classes = tuple(sorted({p.relative_to(root).parts[0] for p in files if p.parent != root}))
    if top and classes:
        raise UserError(f"{root} holds images both directly ({top[0].name}, ...) and in sub-folders "
                        f"({', '.join(classes[:3])}, ...); use one layout")

    sizes, modes = {}, set()
    for path in files:  # a first pass over the headers only: sizes and colour
        with open_image(path) as image:
            sizes.setdefault(image.size, path)
            modes.add(image.mode)
    if not image_size:
        if len(sizes) > 1 or any(w != h for w, h in sizes):
            examples = "; ".join(f"{w}x{h} in {p.name}" for (w, h), p in list(sizes.items())[:2])
            raise UserError(f"the images in {root} are not all one square size ({examples}); give --image_size N "
                            "to resize and centre-crop them all to N x N")
        image_size = next(iter(sizes))[0]
    channels = channels or (1 if modes <= GRAY_MODES else 3)
    if channels not in (1, 3):
        raise UserError(f"--in_channels {channels}: images can be read with 1 (grayscale) or 3 (RGB) channels")
    needed = len(files) * channels * image_size ** 2
    if needed > FOLDER_MAX_BYTES:
        raise UserError(f"{len(files)} images of {channels}x{image_size}x{image_size} need {needed / 2 ** 30:.1f} GiB; "
                        f"this loader keeps a data set in memory up to {FOLDER_MAX_BYTES / 2 ** 30:.0f} GiB")

    images = torch.empty(len(files), channels, image_size, image_size, dtype=torch.uint8)
    for i, path in enumerate(tqdm(files, desc=f"loading {root}", leave=False)):
        images[i] = read_image(path, image_size, channels)
    labels = torch.tensor([classes.index(p.relative_to(root).parts[0]) for p in files]) if classes else None
    return Data(images, labels, classes)


def open_image(path):
    """PIL's image at `path` (the pixels decoded on use), or a one-line UserError for a file that is no
    image or is larger than PIL's guard against decompression bombs allows (about 89 million pixels)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise UserError(f"cannot read {path}: too large to decode ({err})") from None
    except (OSError, UnidentifiedImageError) as err:
        raise UserError(f"cannot read {path}: {err}") from None


def read_image(path, size, channels):
    """One image as uint8 (channels, size, size): shorter side resized to size, then centre-cropped."""
    with open_image(path) as image:
        try:
            image = image.convert("L" if channels == 1 else "RGB")
        except OSError as err:
            raise UserError(f"cannot read {path}: {err}") from None
    width, height = image.size
    scale = size / min(width, height)
    new = (max(size, round(width * scale)), max(size, round(height * scale)))
    if new != image.size:
        image = image.resize(new, Image.Resampling.BICUBIC)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    pixels = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return torch.from_numpy(pixels.reshape(size, size, channels).copy()).permute(2, 0, 1)

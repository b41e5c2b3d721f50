"""A small classifier whose features measure sample quality (FID, KID, precision/recall).

Inception features suit 28x28 grayscale digits poorly and need a download; MNIST papers use a
classifier trained on MNIST instead. MNIST's ships its weights (models/weights/), trained by
train_classifier.py --out models/weights/mnist_classifier.pt and checked against a recorded SHA-256
before loading; `python train_classifier.py --dataset X` writes checkpoints/classifier_X.pt, which
records the data set it learned so that no metric is ever computed with another data set's features.

Input: (B, C, H, W) in [-1, 1], the diffusion model's range (any H, W >= 4).
features(x): (B, 128), the penultimate layer. forward(x): (B, num_classes) logits.
"""
from pathlib import Path

import torch
from torch import nn

from utils.checkpoint import load_weights
from utils.config import CHECKPOINT_DIR
from utils.errors import UserError
from utils.mnist import file_digest

WEIGHTS = Path(__file__).resolve().parent / "weights" / "mnist_classifier.pt"
WEIGHTS_SHA256 = "2b7c4132916f6f85e7d7fe82049e795c35b54babab86fa969cadc831b046b7e9"


def conv_bn(c_in, c_out):
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class Classifier(nn.Module):
    num_features = 128  # read by torchmetrics' FID and KID

    def __init__(self, in_channels=1, num_classes=10):
        super().__init__()
        self.body = nn.Sequential(
            *conv_bn(in_channels, 32), *conv_bn(32, 32), nn.MaxPool2d(2),    # 28 -> 14
            *conv_bn(32, 64), *conv_bn(64, 64), nn.MaxPool2d(2),   # 14 -> 7
            *conv_bn(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(self.num_features, num_classes)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.dropout(self.features(x)))


def classifier_path(dataset):
    """Where train_classifier.py writes a data set's classifier by default, and evaluate.py looks for it."""
    return Path(CHECKPOINT_DIR) / f"classifier_{dataset}.pt"


def load_classifier(device="cpu", dataset="mnist", path="", sha256=None):
    """The feature network of a data set in eval mode: MNIST's shipped one after checking its
    SHA-256, or `path` / the file train_classifier.py wrote. None when there is no such file."""
    if dataset == "mnist" and not path:
        path, sha256 = WEIGHTS, sha256 or WEIGHTS_SHA256
        if not path.is_file():
            raise UserError(f"classifier weights missing: {path} (run python train_classifier.py)")
    path = Path(path or classifier_path(dataset))
    if not path.is_file():
        return None
    if sha256:
        digest = file_digest(path, "sha256")
        if digest != sha256:
            raise UserError(f"{path} fails its SHA-256 check (got {digest[:12]}..., expected {sha256[:12]}...)")
    saved = read_classifier(path)
    if saved["dataset"] != dataset:
        raise UserError(f"{path} is a classifier of {saved['dataset']}, not of {dataset}")
    model = Classifier(saved["in_channels"], saved["num_classes"])
    load_weights(model, saved["model"], path)
    return model.to(device).eval()


def read_classifier(path):
    """The dict train_classifier.py writes, or a one-line UserError saying what the file is instead."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch file, truncated, or holding objects weights_only refuses
        raise UserError(f"{path} is not a classifier file ({type(err).__name__}); expected one written by "
                        "train_classifier.py") from None
    if isinstance(saved, dict) and "model_config" in saved:
        raise UserError(f"{path} is a diffusion checkpoint, not a classifier; expected a file written by "
                        "train_classifier.py")
    keys = ("model", "dataset", "in_channels", "num_classes")
    if not isinstance(saved, dict) or any(key not in saved for key in keys) or not isinstance(saved["model"], dict):
        raise UserError(f"{path} is not a classifier: expected a file written by train_classifier.py, with "
                        f"{', '.join(keys)}")
    return saved

"""A small classifier whose features measure sample quality (FID, KID, precision/recall).

Inception features suit 28x28 grayscale digits poorly and need a download; MNIST papers use a
classifier trained on MNIST instead. MNIST's ships its weights (models/weights/), trained by
train_classifier.py and checked against a recorded SHA-256 before loading; for another data set,
`python train_classifier.py --dataset X` writes checkpoints/classifier_X.pt, which records the
data set it learned so that no metric is ever computed with another data set's features.

Input: (B, C, H, W) in [-1, 1], the diffusion model's range (any H, W >= 4).
features(x): (B, 128), the penultimate layer. forward(x): (B, num_classes) logits.
"""
from pathlib import Path

import torch
from torch import nn

from utils.data import file_digest
from utils.errors import UserError

WEIGHTS = Path(__file__).resolve().parent / "weights" / "mnist_classifier.pt"
WEIGHTS_SHA256 = "57e780af8bd2957f7c2c81b647440b534c83af1e20a9ceeaa947634e01d18434"


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


class FeatureExtractor(nn.Module):
    """The classifier's penultimate features, as torchmetrics expects a feature network."""
    num_features = Classifier.num_features

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, x):
        return self.classifier.features(x.float())


def classifier_path(dataset):
    """Where train_classifier.py writes (and evaluate.py looks for) a data set's classifier."""
    return WEIGHTS if dataset == "mnist" else Path("checkpoints") / f"classifier_{dataset}.pt"


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
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved.get("dataset", "mnist") != dataset:
        raise UserError(f"{path} is a classifier of {saved.get('dataset', 'mnist')}, not of {dataset}")
    model = Classifier(saved.get("in_channels", 1), saved.get("num_classes", 10))
    model.load_state_dict(saved["model"], strict=True)
    return model.to(device).eval()

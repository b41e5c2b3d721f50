"""A small MNIST classifier whose features measure sample quality (FID, KID, precision/recall).

Inception features suit 28x28 grayscale digits poorly and need a download; MNIST papers use a
classifier trained on MNIST instead. This one ships its weights (models/weights/), trained by
train_classifier.py, and is checked against a recorded SHA-256 before loading.

Input: (B, 1, 28, 28) in [-1, 1], the diffusion model's range.
features(x): (B, 128), the penultimate layer. forward(x): (B, 10) logits.
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


class MnistClassifier(nn.Module):
    num_features = 128  # read by torchmetrics' FID and KID

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            *conv_bn(1, 32), *conv_bn(32, 32), nn.MaxPool2d(2),    # 28 -> 14
            *conv_bn(32, 64), *conv_bn(64, 64), nn.MaxPool2d(2),   # 14 -> 7
            *conv_bn(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(self.num_features, 10)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.dropout(self.features(x)))


class FeatureExtractor(nn.Module):
    """The classifier's penultimate features, as torchmetrics expects a feature network."""
    num_features = MnistClassifier.num_features

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, x):
        return self.classifier.features(x.float())


def load_classifier(device="cpu", path=WEIGHTS, sha256=None):
    """The shipped classifier in eval mode, after checking the file's SHA-256."""
    sha256 = sha256 or WEIGHTS_SHA256
    if not Path(path).is_file():
        raise UserError(f"classifier weights missing: {path} (run python train_classifier.py)")
    digest = file_digest(path, "sha256")
    if digest != sha256:
        raise UserError(f"{path} fails its SHA-256 check (got {digest[:12]}..., expected {sha256[:12]}...)")
    model = MnistClassifier()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"], strict=True)
    return model.to(device).eval()

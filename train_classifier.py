"""Train the classifier whose features the quality metrics use (models/classifier.py).

    python train_classifier.py --dataset fashion_mnist  # writes checkpoints/classifier_fashion_mnist.pt
    python train_classifier.py --dataset folder --data_dir my_images --image_size 32  # labels from sub-folders
    python train_classifier.py                          # MNIST (5 min on 2 CPU cores): checkpoints/classifier_mnist.pt

Deterministic given --seed on a given machine. Prints the test accuracy (a folder: on a held-out
tenth of its images) and the file's SHA-256. MNIST's shipped classifier (models/weights/, its
SHA-256 recorded in models/classifier.py) is never written over by default: evaluate.py keeps
using it unless given --classifier checkpoints/classifier_mnist.pt.
"""
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from models.classifier import Classifier, classifier_path
from utils.config import ClassifierConfig
from utils.datasets import load_dataset, to_model_range
from utils.device import select_device, set_cpu_threads
from utils.errors import UserError, exit_on_user_error
from utils.flags import from_args, parse_flags
from utils.metrics import classify
from utils.mnist import file_digest

CONFIGS = (ClassifierConfig,)


def random_shift(x, generator, max_shift=2):
    """Translate each image by up to max_shift pixels (zero padding stays at -1, the background)."""
    b = x.shape[0]
    shifts = torch.randint(-max_shift, max_shift + 1, (b, 2), generator=generator).to(x.device)
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, :, 2] = shifts.float() * 2 / x.shape[-1]
    grid = F.affine_grid(theta, x.shape, align_corners=False)
    return F.grid_sample(x + 1, grid, mode="nearest", align_corners=False) - 1


def accuracy(model, images, labels, device):
    model.eval()
    _, probs = classify(model, to_model_range(images), device, desc="test accuracy")
    return (probs.argmax(dim=1) == labels).double().mean().item()


def splits(cfg):
    """(train images, labels, test images, labels, the training Data); a folder holds out every tenth image."""
    data = load_dataset(cfg.dataset, cfg.data_dir, train=True, image_size=cfg.image_size)
    if data.labels is None:
        raise UserError(f"{cfg.data_dir} has no labels: put each class's images in a sub-folder named after it")
    if cfg.dataset == "folder":
        test = torch.arange(len(data.images)) % 10 == 9
        return data.images[~test], data.labels[~test], data.images[test], data.labels[test], data
    test_data = load_dataset(cfg.dataset, cfg.data_dir, train=False)
    return data.images, data.labels, test_data.images, test_data.labels, data


def main(argv=None):
    args, _ = parse_flags(__doc__.splitlines()[0], CONFIGS, argv)
    cfg = from_args(ClassifierConfig, args)
    out = Path(cfg.out or classifier_path(cfg.dataset))  # never the shipped file unless typed
    device = select_device(cfg.device)
    set_cpu_threads()
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    train_x, train_y, test_x, test_y, data = splits(cfg)

    model = Classifier(data.images.shape[1], len(data.classes)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=5e-4)
    steps_per_epoch = math.ceil(len(train_x) / cfg.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg.lr, total_steps=cfg.epochs * steps_per_epoch)
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=generator)
        for i in tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}"):
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            x = random_shift(to_model_range(train_x[idx]), generator).to(device)
            loss = F.cross_entropy(model(x), train_y[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        acc = accuracy(model, test_x, test_y, device)
        print(f"epoch {epoch + 1}: test accuracy {acc:.4f}", file=sys.stderr)

    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {k: v.cpu() for k, v in model.state_dict().items()}, "test_accuracy": acc, "seed": cfg.seed,
                "epochs": cfg.epochs, "dataset": cfg.dataset, "in_channels": data.images.shape[1],
                "num_classes": len(data.classes), "classes": list(data.classes)}, out)
    print(f"test accuracy {acc:.4f}; wrote {out}; sha256 {file_digest(out, 'sha256')}")


if __name__ == "__main__":
    exit_on_user_error(main)

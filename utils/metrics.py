"""Sample-quality metrics, all on the features of a classifier of the same data set (models/classifier.py).

    FID, KID          torchmetrics, on the classifier's 128-d penultimate features
    precision/recall  improved precision and recall (Kynkaanniemi et al. 2019), k = 3
    class statistics  confident share (max softmax > 0.9), accuracy on requested digits,
                      predicted-class histogram and its KL divergence from uniform
    memorisation      share of samples whose nearest training image (pixel L2) is closer than
                      the median nearest-neighbour distance among training images themselves

Images are (N, C, H, W) float in [-1, 1] throughout (MNIST: (N, 1, 28, 28)).
"""
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance
from tqdm import tqdm

from utils.datasets import to_model_range


class Precomputed(nn.Module):
    """Identity 'feature network': lets torchmetrics take features computed once."""
    num_features = 128

    def forward(self, features):
        return features


@torch.no_grad()
def classify(classifier, images, device, batch_size=200, desc="features"):
    """(features (N, 128), softmax probabilities (N, classes)), both float64 on the CPU. Batches of
    200 keep a layer's activations (200 x 32 x 28 x 28 floats, 20 MB) within a CPU's cache: the
    10,000 MNIST test images take half the time of batches of 1,000, with the same features."""
    features, probs = [], []
    for i in tqdm(range(0, len(images), batch_size), desc=desc, leave=False):
        f = classifier.features(images[i:i + batch_size].to(device).float())
        features.append(f.double().cpu())
        probs.append(classifier.head(f).softmax(dim=1).double().cpu())
    return torch.cat(features), torch.cat(probs)


def fid_kid(real_features, fake_features):
    """FID and KID (mean, std) between two feature sets, with torchmetrics."""
    fid = FrechetInceptionDistance(feature=Precomputed())
    subset = min(1000, len(real_features), len(fake_features))
    kid = KernelInceptionDistance(feature=Precomputed(), subsets=50, subset_size=subset)
    for metric in (fid, kid):
        metric.update(real_features.float(), real=True)
        metric.update(fake_features.float(), real=False)
    kid_mean, kid_std = kid.compute()
    return fid.compute().item(), kid_mean.item(), kid_std.item()


def pairwise_min_over(a, b, fn, chunk=1000):
    """Apply fn to row-chunks of the distance matrix cdist(a, b); concatenate the results."""
    return torch.cat([fn(torch.cdist(a[i:i + chunk], b)) for i in range(0, len(a), chunk)])


def knn_radius(points, k=3, among=None):
    """Each point's distance to its k-th nearest neighbour in `among` (default: the points), itself excluded."""
    among = points if among is None else among
    return pairwise_min_over(points, among, lambda d: d.topk(k + 1, dim=1, largest=False).values[:, k])


def precision_recall(real, fake, k=3):
    """Improved precision (the share of fake samples inside the k-NN ball of some real sample) and
    recall (the share of real samples inside the k-NN ball of some fake sample)."""
    real_radius, fake_radius = knn_radius(real, k), knn_radius(fake, k)
    precision = pairwise_min_over(fake, real, lambda d: (d <= real_radius[None]).any(dim=1)).double().mean()
    recall = pairwise_min_over(real, fake, lambda d: (d <= fake_radius[None]).any(dim=1)).double().mean()
    return precision.item(), recall.item()


def class_statistics(probs, requested=None):
    """Confident share, class histogram, KL(histogram || uniform), and accuracy on requested classes."""
    predicted, num_classes = probs.argmax(dim=1), probs.shape[1]
    histogram = torch.bincount(predicted, minlength=num_classes).double() / len(predicted)
    nonzero = histogram[histogram > 0]
    stats = {
        "confident": (probs.max(dim=1).values > 0.9).double().mean().item(),
        "class_histogram": [round(p, 4) for p in histogram.tolist()],
        "class_kl": (nonzero * (nonzero * num_classes).log()).sum().item(),
    }
    if requested is not None:
        stats["digit_accuracy"] = (predicted == requested.cpu()).double().mean().item()
    return stats


def memorisation(samples, train_images, reference=1000, seed=0):
    """The memorisation share; the median is taken over `reference` training images drawn with `seed`."""
    train = train_images.reshape(len(train_images), -1).float()
    picks = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:reference]
    threshold = knn_radius(train[picks], 1, among=train).median()
    nearest = pairwise_min_over(samples.reshape(len(samples), -1).float(), train, lambda d: d.min(dim=1).values)
    return (nearest < threshold).double().mean().item()


def evaluate_samples(samples, classifier, test_images, train_images, device, requested=None):
    """Every metric for samples ([-1, 1]) against a test set (uint8); returns a flat dict. With no
    classifier (None), only the metric that needs no features: memorisation."""
    results = {"num_samples": len(samples), "memorisation": memorisation(samples, to_model_range(train_images))}
    if classifier is None:
        return results
    real_features, _ = classify(classifier, to_model_range(test_images), device, desc="test features")
    fake_features, probs = classify(classifier, samples, device, desc="sample features")
    fid, kid, kid_std = fid_kid(real_features, fake_features)
    precision, recall = precision_recall(real_features.float(), fake_features.float())
    return {**results, "fid": fid, "kid": kid, "kid_std": kid_std, "precision": precision, "recall": recall,
            **class_statistics(probs, requested)}

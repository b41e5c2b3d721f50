"""Interpolation between samples: spherically between two starting noises, and between two
classes' label embeddings at a fixed noise. Decoded with a deterministic sampler (eta = 0), so a
frame is a function of its noise and label alone, and the end frames are the plain samples.
"""
import torch


def slerp(a, b, weights):
    """Spherical interpolation (Shoemake 1985) of two noises a, b (same shape) at each weight in
    [0, 1]: sin((1 - w) theta) / sin(theta) a + sin(w theta) / sin(theta) b, theta the angle between
    them. Keeps the norm of a Gaussian noise typical, where a straight line would shrink it."""
    cos = (a * b).sum() / (a.norm() * b.norm())
    theta = torch.arccos(cos.clamp(-1, 1))
    w = weights.view(-1, *[1] * a.dim())
    return (torch.sin((1 - w) * theta) * a + torch.sin(w * theta) * b) / torch.sin(theta)


def soft_labels(first, second, weights, num_classes):
    """(frames, num_classes + 1) label weights moving from class `first` to class `second`: the
    U-Net mixes the two label embeddings with them (the last column is the null label's)."""
    labels = torch.zeros(len(weights), num_classes + 1)
    labels[:, first] = 1 - weights
    labels[:, second] += weights
    return labels

"""U-Net building blocks: time embedding, residual block, self-attention, resampling.

Shapes: images are (B, C, H, W); the conditioning embedding is (B, E).
"""
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def timestep_embedding(t, dim, max_period=10000):
    """Sinusoidal embedding of timesteps, integer or not (Vaswani et al. 2017; Ho et al. 2020).

    emb[:, i]         = cos(t * max_period^(-i / half))   for i < half
    emb[:, half + i]  = sin(t * max_period^(-i / half))
    t: (B,) -> (B, dim)
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def zero_init(module):
    """Zero a layer's weights and bias, so a residual branch starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, conditioned by scale-shift of the second norm, plus a skip."""

    def __init__(self, in_ch, out_ch, emb_dim, groups, dropout):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W positions, with a residual connection."""

    def __init__(self, channels, num_heads, groups):
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x):
        _, _, height, width = x.shape
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=1)
        q, k, v = (rearrange(a, "b (h d) x y -> b h (x y) d", h=self.num_heads) for a in (q, k, v))
        if not torch.is_grad_enabled():  # sampling: on a CPU, dense q, k, v take SDPA's flash kernel, whose forward
            q, k, v = (a.contiguous() for a in (q, k, v))  # beats the math path and whose backward does not (NOTEBOOK)
        out = F.scaled_dot_product_attention(q, k, v)
        out = rearrange(out, "b h (x y) d -> b (h d) x y", x=height, y=width)
        return x + self.proj(out)


class Downsample(nn.Module):
    """Halve H and W with a stride-2 conv (28 -> 14 -> 7)."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour then a 3x3 conv."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))

"""The U-Net: f(x_t, t[, y]) -> prediction with the shape of x_t.

The network knows nothing of the noise process; it sees a time per image (DDPM's integer timestep,
or 1000 t for a continuous-time process).
Layout for the defaults (28x28, channel_mults 1 2 4: widths 16, 32, 64): 28 -> 14 -> 7 -> 14 -> 28,
with a skip stack pushed on the way down and popped on the way up, and self-attention at 7x7.
"""
import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from models.blocks import AttentionBlock, Downsample, ResBlock, Upsample, timestep_embedding, zero_init


class UNet(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        ch = config.base_channels
        emb_dim = 4 * ch
        widths = [ch * m for m in config.channel_mults]
        res_block = partial(ResBlock, emb_dim=emb_dim, groups=config.norm_groups, dropout=config.dropout)
        attention = partial(AttentionBlock, num_heads=config.num_heads, groups=config.norm_groups)

        # Conditioning: sinusoidal time embedding -> MLP, plus a learned label embedding.
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if config.step_condition:  # the step's size, embedded like t; zero at first: a plain flow model
            self.step_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), zero_init(nn.Linear(emb_dim, emb_dim)))
        if config.num_classes > 0:
            self.label_emb = nn.Embedding(config.num_classes + 1, emb_dim)  # + 1: the null label (config.null_label)

        features = 1 + 2 * len(config.fourier_features)  # x, then sin and cos per frequency
        # a buffer, not a tensor made in forward: a CUDA graph cannot capture a copy from the host
        self.register_buffer("fourier_freqs", torch.tensor([2.0 ** n * math.pi for n in config.fourier_features]),
                             persistent=False)
        self.input_conv = nn.Conv2d(config.in_channels * features, ch, 3, padding=1)

        # Down path: each block's output is pushed on the skip stack.
        self.down = nn.ModuleList()
        skip_widths = [ch]
        size, in_ch = config.image_size, ch
        for level, width in enumerate(widths):
            for _ in range(config.num_res_blocks):
                layers = [res_block(in_ch, width)]
                if size in config.attention_resolutions:
                    layers.append(attention(width))
                self.down.append(nn.ModuleList(layers))
                skip_widths.append(width)
                in_ch = width
            if level < len(widths) - 1:
                self.down.append(nn.ModuleList([Downsample(in_ch)]))
                skip_widths.append(in_ch)
                size //= 2

        self.middle = nn.ModuleList([res_block(in_ch, in_ch), attention(in_ch), res_block(in_ch, in_ch)])

        # Up path: each block pops one skip and concatenates it on the channels.
        self.up = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            for i in range(config.num_res_blocks + 1):
                layers = [res_block(in_ch + skip_widths.pop(), width)]
                if size in config.attention_resolutions:
                    layers.append(attention(width))
                if level > 0 and i == config.num_res_blocks:
                    layers.append(Upsample(width))
                    size *= 2
                self.up.append(nn.ModuleList(layers))
                in_ch = width

        self.out_norm = nn.GroupNorm(config.norm_groups, in_ch)
        self.out_conv = zero_init(nn.Conv2d(in_ch, config.in_channels, 3, padding=1))

    def forward(self, x, t, y=None, step=None):
        """x: (B, C, H, W) noisy images, t: (B,) timesteps, y: (B,) labels, None (the null label), or
        (B, num_classes + 1) weights that mix the label embeddings (diffusion/interpolation.py);
        step: (B,) sizes of the step asked for, on t's scale (config.step_condition; None: 0)."""
        emb = self.time_mlp(timestep_embedding(t, self.config.base_channels))
        if self.config.step_condition:
            step = torch.zeros_like(t) if step is None else step
            emb = emb + self.step_mlp(timestep_embedding(step, self.config.base_channels))
        if self.config.num_classes > 0:
            if y is None:
                y = torch.full((len(x),), self.config.null_label, device=x.device)  # unconditional
            emb = emb + (y.to(emb.dtype) @ self.label_emb.weight if y.is_floating_point() else self.label_emb(y))

        h = self.input_conv(fourier_features(x, self.fourier_freqs))
        skips = [h]
        for layers in self.down:
            for layer in layers:
                h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            skips.append(h)

        for layer in self.middle:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)

        for layers in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            for layer in layers:
                h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)

        return self.out_conv(F.silu(self.out_norm(h)))


def fourier_features(x, freqs):
    """x with sin(f x) and cos(f x) for each f = 2^n pi in `freqs` as extra channels (Kingma et al.
    2021, appendix C): at n = 7, 8 one pixel level (2/255) turns the phase by about pi and 2 pi."""
    if not len(freqs):
        return x
    angles = x.unsqueeze(1) * freqs.to(x.dtype).view(1, -1, 1, 1, 1)  # (B, K, C, H, W)
    return torch.cat([x, angles.sin().flatten(1, 2), angles.cos().flatten(1, 2)], dim=1)


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())

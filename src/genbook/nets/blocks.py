"""Convolutional residual blocks and 2-D self-attention, shared by UNets, VAEs and video models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with the largest group count in (32, 16, 8, 4, 2, 1) that divides ``channels``."""
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class ResBlock(nn.Module):
    """norm-act-conv twice with a skip; an optional embedding (time, label) scales and shifts the second norm.

    h = conv(act(norm(x)));  out = skip(x) + conv(dropout(act(norm(h) (1 + s) + b))) with (s, b) = W e: adaptive
    group normalization (Dhariwal & Nichol 2021). Adding e before the norm, as DDPM did, is erased when a group
    holds a single channel, which small widths produce. Shapes: x (B, C_in, H, W), emb (B, emb_dim) -> (B, C_out, H, W).
    """

    def __init__(self, c_in: int, c_out: int, emb_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.conv1 = group_norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = group_norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out) if emb_dim else None
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm2(self.conv1(F.silu(self.norm1(x))))
        if self.emb is not None:
            if emb is None:
                raise ValueError("this ResBlock was built with an embedding; pass emb")
            scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)  # (B, C_out, 1, 1) each
            h = h * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over the H*W positions of a feature map, with a residual.

    Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, heads: int = 4):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.heads = heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)  # (B, 3, nh, hd, HW)
        q, k, v = qkv.permute(1, 0, 2, 4, 3)  # each (B, nh, HW, hd)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, nh, HW, hd)
        y = y.permute(0, 1, 3, 2).reshape(b, c, h, w)  # (B, C, H, W)
        return x + self.out(y)


class MinibatchStd(nn.Module):
    """Append the batch's average feature standard deviation as one more feature (ProGAN; chapter 3, "Mode collapse").

    A collapsed generator makes near-identical samples, so their batch std is small: the critic can see it.
    Shapes: (B, F) -> (B, F + 1) or (B, C, H, W) -> (B, C + 1, H, W).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        std = x.float().std(0, unbiased=False).mean().to(x.dtype)  # scalar over the batch
        extra = std.expand(x.shape[0], 1, *x.shape[2:])
        return torch.cat([x, extra], 1)

"""Time and label embeddings for conditional networks (diffusion, flow matching, conditional models)."""

from __future__ import annotations

import math

import torch
from torch import nn


class SinusoidalEmbedding(nn.Module):
    """Transformer-style features of a scalar t: [cos(t w_k), sin(t w_k)], w_k = max_period^(-k / half).

    Followed by a small MLP, as in DDPM (Ho et al. 2020) and DiT. ``t`` may be continuous; pass
    ``scale`` to stretch t in [0, 1] over the frequencies (1000 matches integer DDPM steps).
    Shapes: t (B,) -> (B, dim).
    """

    def __init__(self, dim: int, scale: float = 1000.0, max_period: float = 10000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)
        self.scale = scale
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.SiLU(), nn.Linear(4 * dim, dim))

    def features(self, t: torch.Tensor) -> torch.Tensor:
        args = (t.float().reshape(-1, 1) * self.scale) * self.freqs[None, :]  # (B, half)
        return torch.cat([torch.cos(args), torch.sin(args)], dim=1)  # (B, dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.features(t))


class LabelEmbedding(nn.Module):
    """Class labels to vectors, with one extra "no label" row for classifier-free guidance.

    ``y = -1`` (or any negative label) selects the null embedding. Shapes: y (B,) -> (B, dim).
    """

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        idx = torch.where(y < 0, torch.full_like(y, self.num_classes), y)
        return self.table(idx)

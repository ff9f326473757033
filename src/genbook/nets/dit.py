"""A small diffusion transformer (DiT, Peebles & Xie 2023): patches as tokens, adaLN-Zero conditioning on t and y.

| name in code | symbol |
| ------------ | ------ |
| ``patch``    | p: the image is cut into (S / p)^2 patches of p x p pixels, one token each |
| ``c``        | the conditioning vector, embedding(t) + embedding(y) |
| ``shift``, ``scale``, ``gate`` | adaLN's per-block modulation, LN(x) (1 + scale) + shift, and the residual gate |

adaLN-Zero: the modulation is regressed from c by a linear layer initialized at zero, so every block starts as
the identity and the model as a zero predictor. Like the UNet it knows nothing about noise schedules: it maps
(x, t, y) to a tensor shaped like x. Chapter 6, "DiT".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from genbook.nets.embeddings import LabelEmbedding, SinusoidalEmbedding
from genbook.nets.transformer import attend


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]  # (B, T, C) with (B, C) modulation


class DiTBlock(nn.Module):
    """x + gate_a attn(modulate(LN(x))), then x + gate_m MLP(modulate(LN(x))), modulation from c. (B, T, C) -> (B, T, C)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.ln2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada[1].weight)  # adaLN-Zero: gates start at 0, so the block starts as the identity
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.ada(c).chunk(6, dim=1)  # each (B, C)
        x = x + gate_a[:, None] * self.proj(attend(self.qkv(_modulate(self.ln1(x), shift_a, scale_a)), self.heads))
        return x + gate_m[:, None] * self.mlp(_modulate(self.ln2(x), shift_m, scale_m))


@dataclass
class DiTConfig:
    in_channels: int = 1
    size: int = 8
    patch: int = 2
    dim: int = 64
    depth: int = 4
    heads: int = 4
    num_classes: int | None = None  # label -1 means "no label" (classifier-free guidance)
    time_scale: float = 1000.0


class DiT(nn.Module):
    """eps_theta(x, t, y) as a transformer over patches. Shapes: x (B, C, S, S), t (B,), y (B,) -> (B, C, S, S)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        if cfg.size % cfg.patch:
            raise ValueError(f"the image size ({cfg.size}) must be a multiple of the patch size ({cfg.patch})")
        self.cfg = cfg
        n = (cfg.size // cfg.patch) ** 2
        self.embed = nn.Conv2d(cfg.in_channels, cfg.dim, cfg.patch, stride=cfg.patch)  # patchify + linear embedding
        self.pos = nn.Parameter(torch.randn(1, n, cfg.dim) * 0.02)
        self.time = SinusoidalEmbedding(cfg.dim, scale=cfg.time_scale)
        self.label = LabelEmbedding(cfg.num_classes, cfg.dim) if cfg.num_classes else None
        self.blocks = nn.ModuleList(DiTBlock(cfg.dim, cfg.heads) for _ in range(cfg.depth))
        self.ln = nn.LayerNorm(cfg.dim, elementwise_affine=False)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 2 * cfg.dim))
        self.out = nn.Linear(cfg.dim, cfg.patch * cfg.patch * cfg.in_channels)
        for layer in (self.ada[1], self.out):  # the whole model starts by predicting zero
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        b, ch, s, _ = x.shape
        p, g = self.cfg.patch, s // self.cfg.patch
        h = self.embed(x).flatten(2).transpose(1, 2) + self.pos  # (B, N, D), N = g^2 patches
        c = self.time(t)  # (B, D)
        if self.label is not None and y is not None:
            c = c + self.label(y)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.ada(c).chunk(2, dim=1)
        h = self.out(_modulate(self.ln(h), shift, scale))  # (B, N, p * p * C)
        h = h.view(b, g, g, p, p, ch).permute(0, 5, 1, 3, 2, 4)  # (B, C, g, p, g, p)
        return h.reshape(b, ch, s, s)

"""A small UNet for denoisers and velocity fields on 8x8 to 32x32 images (chapters 6, 7, 12).

Two resolution levels by default, residual blocks conditioned on a time embedding (and an
optional class label), self-attention at the lowest resolution. It knows nothing about noise
schedules: it maps (x, t, y) to a tensor shaped like x.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from genbook.nets.blocks import ResBlock, SelfAttention2d, group_norm
from genbook.nets.embeddings import LabelEmbedding, SinusoidalEmbedding


@dataclass
class UNetConfig:
    in_channels: int = 1
    out_channels: int | None = None  # defaults to in_channels
    width: int = 32
    mults: tuple[int, ...] = (1, 2)  # channel multiplier per level; len(mults) - 1 downsamplings
    attention: bool = True  # self-attention at the lowest resolution
    num_classes: int | None = None  # class-conditional when set; label -1 means "no label"
    time_scale: float = 1000.0  # t in [0, 1] (flows) or integer steps (DDPM): see SinusoidalEmbedding
    dropout: float = 0.0


class UNet(nn.Module):
    """eps_theta(x, t, y) or v_theta(x, t, y). Shapes: x (B, C, H, W), t (B,), y (B,) -> (B, C_out, H, W)."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        emb = 4 * cfg.width
        self.time = nn.Sequential(SinusoidalEmbedding(cfg.width, scale=cfg.time_scale), nn.Linear(cfg.width, emb))
        self.label = LabelEmbedding(cfg.num_classes, emb) if cfg.num_classes else None
        chans = [cfg.width * m for m in cfg.mults]
        self.stem = nn.Conv2d(cfg.in_channels, chans[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.pool = nn.ModuleList()
        c_prev = chans[0]
        for i, c in enumerate(chans):
            self.down.append(ResBlock(c_prev, c, emb, cfg.dropout))
            c_prev = c
            if i < len(chans) - 1:
                self.pool.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid = ResBlock(c_prev, c_prev, emb, cfg.dropout)
        self.attn = SelfAttention2d(c_prev) if cfg.attention else nn.Identity()
        self.up = nn.ModuleList()
        self.unpool = nn.ModuleList()
        for i, c in reversed(list(enumerate(chans))):
            self.up.append(ResBlock(c_prev + c, c, emb, cfg.dropout))  # skip concatenation
            c_prev = c
            if i > 0:
                self.unpool.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, chans[i - 1], 3, padding=1)))
                c_prev = chans[i - 1]
        self.head = nn.Sequential(group_norm(c_prev), nn.SiLU(), nn.Conv2d(c_prev, cfg.out_channels or cfg.in_channels, 3, padding=1))

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor | None = None,
        after_block: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``after_block(h, k)``, when given, transforms the features after the k-th residual block (down path, middle,
        up path, in order): the hook through which chapter 11's video model adds temporal attention between frames."""
        levels = len(self.cfg.mults)
        mix = after_block or (lambda h, k: h)
        n_down = len(self.down)
        if x.shape[-1] % 2 ** (levels - 1) or x.shape[-2] % 2 ** (levels - 1):
            raise ValueError(f"image size {tuple(x.shape[-2:])} must be divisible by {2 ** (levels - 1)} for {levels} levels")
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        e = self.time(t)  # (B, emb)
        if self.label is not None:
            if y is None:
                y = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
            e = e + self.label(y)
        h = self.stem(x)
        skips = []
        for i, block in enumerate(self.down):
            h = mix(block(h, e), i)  # blocks 0 .. n_down - 1
            skips.append(h)
            if i < len(self.pool):
                h = self.pool[i](h)  # (B, C, H/2, W/2)
        h = self.attn(mix(self.mid(h, e), n_down))  # block n_down
        for i, block in enumerate(self.up):
            h = mix(block(torch.cat([h, skips.pop()], dim=1), e), n_down + 1 + i)  # (B, C + C_skip, H, W) -> (B, C, H, W)
            if i < len(self.unpool):
                h = self.unpool[i](h)
        return self.head(h)

"""Two small time-conditioned networks for chapter 6: a noise-aware classifier and an MLP denoiser for latents.

Like the UNet and the DiT they know nothing about noise schedules: t is whatever the caller passes (integer
DDPM steps with ``time_scale=1``, or t in [0, 1] with the default scale).
"""

from __future__ import annotations

import torch
from torch import nn

from genbook.nets.blocks import ResBlock
from genbook.nets.embeddings import LabelEmbedding, SinusoidalEmbedding
from genbook.nets.mlp import MLP


class NoisyClassifier(nn.Module):
    """p_phi(y | x_t, t): residual conv blocks conditioned on t, global average pooling, a linear head.

    The classifier of classifier guidance must work on noisy inputs at every t (Dhariwal & Nichol 2021; survey eq. 90-91).
    Shapes: x (B, C, H, W), t (B,) -> logits (B, num_classes).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, time_scale: float = 1.0):
        super().__init__()
        emb = 4 * width
        self.time = nn.Sequential(SinusoidalEmbedding(width, scale=time_scale), nn.Linear(width, emb))
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1)
        self.blocks = nn.ModuleList([ResBlock(width, width, emb), ResBlock(width, 2 * width, emb)])
        self.pool = nn.AvgPool2d(2)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        e = self.time(t)
        h = self.stem(x)
        h = self.pool(self.blocks[0](h, e))  # (B, W, H/2, W/2)
        h = self.blocks[1](h, e)
        return self.head(h.mean((2, 3)))  # (B, num_classes)


class MLPDenoiser(nn.Module):
    """eps_theta(z_t, t, y) for vectors (an autoencoder's latents in latent diffusion, survey eq. 94-95):
    an MLP on [z_t, embedding(t) (+ embedding(y))]. Shapes: z (B, D), t (B,), y (B,) -> (B, D)."""

    def __init__(self, dim: int, hidden: tuple[int, ...] = (256, 256), num_classes: int | None = None, time_scale: float = 1.0):
        super().__init__()
        emb = 64
        self.time = SinusoidalEmbedding(emb, scale=time_scale)
        self.label = LabelEmbedding(num_classes, emb) if num_classes else None
        self.net = MLP(dim + emb, dim, hidden)

    def forward(self, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        e = self.time(t)
        if self.label is not None and y is not None:
            e = e + self.label(y)
        return self.net(torch.cat([z, e], 1))

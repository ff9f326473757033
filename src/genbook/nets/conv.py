"""Small convolutional encoder and decoder for 8x8 (digits) and larger square images.

The autoencoder of chapter 1 and the VAEs of chapter 2 are built from these; the encoder
ends in a linear map to ``out_dim`` numbers (a code z, or [mu, logvar] for a VAE).
"""

from __future__ import annotations

import torch
from torch import nn


class ConvEncoder(nn.Module):
    """x (B, C, S, S) -> (B, out_dim): two stride-2 convolutions (S -> S/4), then a linear layer."""

    def __init__(self, in_channels: int, out_dim: int, size: int = 8, width: int = 32):
        super().__init__()
        if size % 4:
            raise ValueError(f"image size must be a multiple of 4, got {size}")
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, width, 4, stride=2, padding=1),  # S -> S/2
            nn.SiLU(),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1),  # S/2 -> S/4
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(2 * width * (size // 4) ** 2, out_dim),
        )
        self.shape = (in_channels, size, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"ConvEncoder expects images of shape (B, {', '.join(map(str, self.shape))}), got {tuple(x.shape)}")
        return self.net(x)


class ConvDecoder(nn.Module):
    """z (B, in_dim) -> (B, out_channels, S, S): a linear layer to S/4 x S/4 maps, two upsampling convolutions.

    ``out_channels`` counts every output number per pixel: 1 for a mean image, 17 for a
    17-way categorical decoder (chapter 2), and so on.
    """

    def __init__(self, in_dim: int, out_channels: int, size: int = 8, width: int = 32):
        super().__init__()
        if size % 4:
            raise ValueError(f"image size must be a multiple of 4, got {size}")
        s = size // 4
        self.net = nn.Sequential(
            nn.Linear(in_dim, 2 * width * s * s),
            nn.SiLU(),
            nn.Unflatten(1, (2 * width, s, s)),  # (B, 2w, S/4, S/4)
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1),  # -> S/2
            nn.SiLU(),
            nn.ConvTranspose2d(width, width, 4, stride=2, padding=1),  # -> S
            nn.SiLU(),
            nn.Conv2d(width, out_channels, 3, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)

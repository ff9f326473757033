"""The plain autoencoder of survey eq. 1-2: the baseline every later chapter beats (chapter 1).

| name in code | symbol |
| ------------ | ------ |
| ``x``        | an image in [0, 1], shape (B, C, S, S) |
| ``z``        | its code z = f_phi(x), shape (B, d) |
| ``x_hat``    | the reconstruction g_theta(z) |
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from genbook.nets import ConvDecoder, ConvEncoder


@dataclass
class AutoencoderConfig:
    latent_dim: int = 8
    channels: int = 1
    size: int = 8
    width: int = 32


class Autoencoder(nn.Module):
    """z = f_phi(x), x_hat = g_theta(z) (survey eq. 1); the decoder ends in a sigmoid so x_hat is in [0, 1]."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = ConvEncoder(cfg.channels, cfg.latent_dim, cfg.size, cfg.width)
        self.decoder = ConvDecoder(cfg.latent_dim, cfg.channels, cfg.size, cfg.width)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)  # (B, d)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(z))  # (B, C, S, S)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def reconstruction_loss(model: Autoencoder, x: torch.Tensor) -> torch.Tensor:
    """E_x ||x - g_theta(f_phi(x))||^2 (survey eq. 2): squared error summed over pixels, mean over the batch."""
    x_hat = model(x)
    return (x - x_hat).pow(2).flatten(1).sum(1).mean()

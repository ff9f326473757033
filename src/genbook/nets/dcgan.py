"""DCGAN-style generator and discriminator (Radford et al. 2016) for 8x8 and 28x28/32x32 images.

The rules: strided (transposed) convolutions instead of pooling, batch norm in the generator,
no fully connected hidden layers, ReLU in the generator with a tanh output, LeakyReLU in the
discriminator. ``upsample="resize"`` swaps transposed convolutions for nearest-neighbour
resize + convolution, which removes checkerboard artifacts (chapter 12 measures the difference).
"""

from __future__ import annotations

import torch
from torch import nn

from genbook.nets.blocks import MinibatchStd


def _up(c_in: int, c_out: int, mode: str) -> nn.Module:
    if mode == "transposed":
        return nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False)
    if mode == "resize":
        return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1, bias=False))
    raise ValueError(f"unknown upsample mode {mode!r}; use 'transposed' or 'resize'")


class DCGANGenerator(nn.Module):
    """z (B, z_dim) -> images (B, C, S, S) in [-1, 1], S = base * 2**ups (8 = 2*2*2; 28 = 7*2*2; 32 = 4*2**3)."""

    def __init__(self, z_dim: int = 32, channels: int = 1, size: int = 8, width: int = 64, upsample: str = "transposed"):
        super().__init__()
        base, ups = {8: (2, 2), 16: (4, 2), 28: (7, 2), 32: (4, 3)}.get(size, (None, None))
        if base is None:
            raise ValueError(f"DCGANGenerator supports sizes 8, 16, 28 and 32, got {size}")
        c = width * 2**ups
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(z_dim, c, base, bias=False),  # (B, z, 1, 1) -> (B, c, base, base)
            nn.BatchNorm2d(c),
            nn.ReLU(True),
        ]
        for _ in range(ups):
            layers += [_up(c, c // 2, upsample), nn.BatchNorm2d(c // 2), nn.ReLU(True)]
            c //= 2
        layers += [nn.Conv2d(c, channels, 3, padding=1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.z_dim = z_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[:, :, None, None])  # (B, z, 1, 1) -> (B, C, S, S)


class DCGANDiscriminator(nn.Module):
    """images (B, C, S, S) -> (B, out_dim) logits (or critic values); strided convs halve S until <= 2."""

    def __init__(
        self, channels: int = 1, size: int = 8, width: int = 64, out_dim: int = 1, norm: str = "none", minibatch_std: bool = False
    ):
        super().__init__()
        if norm not in ("none", "batch", "layer"):
            raise ValueError(f"unknown discriminator norm {norm!r}; use 'none', 'batch' or 'layer'")
        layers: list[nn.Module] = []
        c_in, c, s = channels, width, size
        while s > 2:
            layers.append(nn.Conv2d(c_in, c, 4, stride=2, padding=1))  # S -> S/2
            if norm == "batch" and c_in != channels:
                layers.append(nn.BatchNorm2d(c))
            elif norm == "layer":
                layers.append(nn.GroupNorm(1, c))
            layers.append(nn.LeakyReLU(0.2, True))
            c_in, c, s = c, 2 * c, s // 2
        if minibatch_std:  # one more channel: the batch's feature spread, which a collapsed generator lacks
            layers.append(MinibatchStd())
            c_in += 1
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(c_in * s * s, out_dim)
        self.feature_dim = c_in * s * s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

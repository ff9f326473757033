"""Masked convolutions (PixelCNN, van den Oord et al. 2016): output pixel i sees only pixels before i.

Raster order: row by row, left to right. Mask A also hides the centre pixel (first layer, so the
model never sees the value it predicts); mask B keeps it (later layers, whose centre already
holds information about earlier pixels only). Single-channel (grey) images: channels are not
ordered among themselves. Chapter 2 uses these as a strong VAE decoder, chapter 5 as PixelCNN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def causal_mask(kernel_size: int, mask_type: str) -> torch.Tensor:
    """(k, k) mask of ones above the centre row, and left of the centre (mask A) or up to it (mask B)."""
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
    if kernel_size % 2 == 0:
        raise ValueError(f"masked convolutions need an odd kernel size, got {kernel_size}")
    c = kernel_size // 2
    mask = torch.ones(kernel_size, kernel_size)
    mask[c, c + (mask_type == "B") :] = 0  # the centre row: right of (or from) the centre
    mask[c + 1 :, :] = 0  # every row below the centre
    return mask


class MaskedConv2d(nn.Conv2d):
    """A 'same'-padded convolution whose kernel is multiplied by :func:`causal_mask`. Shapes: (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, mask_type: str):
        super().__init__(c_in, c_out, kernel_size, padding=kernel_size // 2)
        self.register_buffer("mask", causal_mask(kernel_size, mask_type)[None, None], persistent=False)
        self.mask_type = mask_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)

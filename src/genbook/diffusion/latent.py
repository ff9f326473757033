"""Latent diffusion's glue (Rombach et al. 2022, survey eq. 94-95): standardize an autoencoder's codes so that the
diffusion runs on unit-scale variables, as the noise assumes, and map samples back for the decoder.

| name in code | symbol |
| ------------ | ------ |
| ``z``        | the autoencoder's code z = E(x), shape (B, d) or (B, c, h, w) |
| ``mean``, ``std`` | per-coordinate statistics of the training codes (Stable Diffusion uses one scalar, 0.18215) |

Chapter 6, "Latent diffusion".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LatentNormalizer:
    """z_n = (z - mean) / std on the way into the diffusion model, z = z_n std + mean on the way out."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, z: torch.Tensor, eps: float = 1e-6) -> LatentNormalizer:
        """Statistics over the batch axis of training codes z (N, ...)."""
        return cls(z.mean(0, keepdim=True).detach(), z.std(0, keepdim=True).detach() + eps)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.mean.to(z.device)) / self.std.to(z.device)

    def denormalize(self, z_n: torch.Tensor) -> torch.Tensor:
        return z_n * self.std.to(z_n.device) + self.mean.to(z_n.device)

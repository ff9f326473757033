"""VideoGPT's two stages at toy size (chapter 11, "Video tokens"; survey eq. 120-124): a 3-D VQ-VAE turns a clip
into a small volume of discrete codes, and an autoregressive transformer models the flattened code volume.

| name in code | symbol |
| ------------ | ------ |
| ``clips``    | (B, T, C, H, W) in [0, 1] |
| ``z_e``      | the encoder's output volume (B, D, t, h, w), t = T / 2, h = H / 4, w = W / 4 |
| ``codes``    | the code volume (B, t, h, w), each entry one of ``num_codes`` |

The quantizer is chapter 2's :class:`~genbook.vqvae.VectorQuantizer` applied to the volume with time folded into
height; the prior is chapter 5's :class:`~genbook.vqvae.CodePrior` over the t*h*w codes in (t, h, w) raster order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genbook.vqvae import CodePrior, CodePriorConfig, VectorQuantizer, VQOutput


@dataclass
class VQVAE3DConfig:
    frames: int = 8
    size: int = 16
    channels: int = 3
    width: int = 64
    code_dim: int = 16
    num_codes: int = 64


class VQVAE3D(nn.Module):
    """Encoder: two strided 3-D convolutions, (T, H, W) -> (T/2, H/4, W/4); a vector quantizer; a mirrored decoder
    with a sigmoid output. Yan et al. 2021 (VideoGPT), survey eq. 120-122. Shapes: clips (B, T, C, H, W) ->
    reconstruction (B, T, C, H, W) and the quantizer's output."""

    def __init__(self, cfg: VQVAE3DConfig):
        super().__init__()
        if cfg.frames % 2 or cfg.size % 4:
            raise ValueError(f"frames ({cfg.frames}) must be even and size ({cfg.size}) a multiple of 4")
        self.cfg = cfg
        w = cfg.width
        self.encoder = nn.Sequential(
            nn.Conv3d(cfg.channels, w, 4, 2, 1), nn.ReLU(),  # (T, H, W) -> (T/2, H/2, W/2)
            nn.Conv3d(w, w, (3, 4, 4), (1, 2, 2), 1), nn.ReLU(),  # -> (T/2, H/4, W/4)
            nn.Conv3d(w, cfg.code_dim, 1),
        )  # fmt: skip
        self.quantizer = VectorQuantizer(cfg.num_codes, cfg.code_dim)
        self.decoder = nn.Sequential(
            nn.Conv3d(cfg.code_dim, w, 3, 1, 1), nn.ReLU(),
            nn.ConvTranspose3d(w, w, (3, 4, 4), (1, 2, 2), 1), nn.ReLU(),
            nn.ConvTranspose3d(w, cfg.channels, 4, 2, 1),
        )  # fmt: skip

    @property
    def grid(self) -> tuple[int, int, int]:
        return self.cfg.frames // 2, self.cfg.size // 4, self.cfg.size // 4

    def quantize(self, z_e: torch.Tensor) -> VQOutput:
        b, d, t, h, w = z_e.shape
        out = self.quantizer(z_e.reshape(b, d, t * h, w))  # time folded into height: (B, D, t*h, w)
        return out._replace(z_q=out.z_q.reshape(b, d, t, h, w), codes=out.codes.reshape(b, t, h, w))

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(z_q)).permute(0, 2, 1, 3, 4)  # (B, C, T, H, W) -> (B, T, C, H, W)

    def forward(self, clips: torch.Tensor) -> tuple[torch.Tensor, VQOutput]:
        vq = self.quantize(self.encoder(clips.permute(0, 2, 1, 3, 4)))
        return self.decode(vq.z_q), vq

    @torch.no_grad()
    def encode_codes(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) -> codes (B, t, h, w); the nearest codes only (no losses, no codebook update)."""
        z_e = self.encoder(clips.permute(0, 2, 1, 3, 4))
        b, d, t, h, w = z_e.shape
        return self.quantizer.nearest(z_e.reshape(b, d, t * h, w)).view(b, t, h, w)

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, t, h, w) -> clips (B, T, C, H, W)."""
        b, t, h, w = codes.shape
        z_q = self.quantizer.lookup(codes.reshape(b, t * h, w)).reshape(b, -1, t, h, w)  # (B, D, t, h, w)
        return self.decode(z_q)


def vq3d_loss(model: VQVAE3D, clips: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Squared reconstruction error summed over a clip's pixels plus the quantizer's commitment loss (survey eq. 122).
    For :func:`genbook.train.fit` on clips (B, T, C, H, W) in [0, 1]."""
    rec, vq = model(clips)
    mse = F.mse_loss(rec, clips, reduction="none").flatten(1).sum(1).mean()
    return mse + vq.loss, {"rec": mse.item(), "perplexity": vq.perplexity.item()}


def video_prior(model: VQVAE3D, dim: int = 64, depth: int = 2, heads: int = 4, dropout: float = 0.1) -> CodePrior:
    """A causal transformer over the flattened code volume (survey eq. 123-124). :class:`~genbook.vqvae.CodePrior`
    flattens its input, so code volumes (B, t, h, w) go in as they are, in (t, h, w) raster order; its config counts
    positions as grid^2, so t*h*w must be a square (4*4*4 = 8^2 for the default clips). Samples come back as
    (n, g, g): ``.view(n, *model.grid)``."""
    n = model.grid[0] * model.grid[1] * model.grid[2]
    g = round(n**0.5)
    if g * g != n:
        raise ValueError(f"the code volume has {n} entries; the prior needs a square number")
    return CodePrior(CodePriorConfig(num_codes=model.cfg.num_codes, grid=g, dim=dim, depth=depth, heads=heads, dropout=dropout))


__all__ = ["VQVAE3D", "VQVAE3DConfig", "video_prior", "vq3d_loss"]

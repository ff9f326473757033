"""JPEG-like compression as a distortion (chapter 12, C12.6): the lossy core of baseline JPEG (ITU-T T.81), in torch.

The steps are JPEG's: RGB to YCbCr (JFIF's full-range matrix), each channel cut into 8 x 8 blocks, a 2-D DCT-II of
every block, each coefficient divided by its entry in a quantization table and rounded, then everything undone. The
tables are the standard's example tables for luminance and chrominance (Annex K), scaled by a quality of 1-100 as
the Independent JPEG Group's library scales them. What is left out changes no pixel: the entropy coding after the
rounding is lossless. Two lossy options are also left out, and say so: no chroma subsampling (4:4:4; most encoders
halve the chroma resolution, 4:2:0, so web JPEGs lose more colour detail than this) and no integer DCT; nor does it
round the YCbCr values to 8 bits before the DCT, as libjpeg does. Against Pillow's encoder with ``subsampling=0`` the
mean absolute difference is under two grey levels, and under a quarter of what either loses to the compression
(``tests/test_forensics.py``; single pixels can differ more, where a coefficient rounds the other way).

With ``straight_through=True`` the roundings pass gradients through unchanged (x + (round(x) - x).detach()), so a
watermark's encoder can be trained through the compression, as HiDDeN and Stable Signature train through theirs.
"""

from __future__ import annotations

import math
import operator

import torch
import torch.nn.functional as F

# T.81 Annex K, tables K.1 (luminance) and K.2 (chrominance), in row-major order of the 8 x 8 block
LUMA_TABLE = (
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip
CHROMA_TABLE = (
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99,
    *([99] * 32),
)  # fmt: skip

# JFIF's RGB -> YCbCr (full range; Cb and Cr centred on 128 there, on 0 here)
_RGB_TO_YCC = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))


def quant_table(quality: int, chroma: bool = False) -> torch.Tensor:
    """The (8, 8) quantization table at ``quality`` (1-100) as libjpeg scales the standard's: a scale of 5000 / q
    below 50 and 200 - 2q from 50 up, in percent, each entry rounded and kept within 1-255 (q = 100: all ones)."""
    try:
        q = operator.index(quality)  # ints, numpy ints; not floats
    except TypeError:
        q = None
    if q is None or isinstance(quality, bool) or not 1 <= q <= 100:
        raise ValueError(f"JPEG quality is a whole number from 1 to 100, got {quality!r}")
    quality = q
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    base = torch.tensor(CHROMA_TABLE if chroma else LUMA_TABLE, dtype=torch.float64).view(8, 8)
    return ((base * scale + 50) // 100).clamp(1, 255).float()


def dct_matrix(n: int = 8) -> torch.Tensor:
    """The orthonormal DCT-II matrix C (n, n): C @ block @ C.T is the block's 2-D DCT, C.T @ coef @ C its inverse."""
    k, i = torch.arange(n, dtype=torch.float64).view(-1, 1), torch.arange(n, dtype=torch.float64).view(1, -1)
    c = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
    c[0] /= math.sqrt(2)
    return c.float()


def _round(x: torch.Tensor, straight_through: bool) -> torch.Tensor:
    return x + (x.round() - x).detach() if straight_through else x.round()


def jpeg(x: torch.Tensor, quality: int, straight_through: bool = False) -> torch.Tensor:
    """Compress and decompress a batch (B, C, H, W) in [0, 1], C = 3 (RGB, through YCbCr) or 1 (grey, the luminance
    table), at ``quality`` 1-100; returns the decoded images, the same shape, on 8-bit levels in [0, 1]. Sides that
    are not multiples of 8 are padded by repeating the edge, as encoders do, and cropped back after."""
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"jpeg takes (B, C, H, W) images with C = 1 or 3, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    ph, pw = (-h) % 8, (-w) % 8
    v = 255 * x.float()
    if ph or pw:
        v = F.pad(v, (0, pw, 0, ph), mode="replicate")
    rgb = x.shape[1] == 3
    if rgb:
        m = torch.tensor(_RGB_TO_YCC, device=x.device)
        v = torch.einsum("ij,bjhw->bihw", m, v)
        v[:, 0] -= 128  # level shift: Y to [-128, 127]; Cb and Cr are centred already
    else:
        v = v - 128
    b, c, hh, ww = v.shape
    blocks = v.view(b, c, hh // 8, 8, ww // 8, 8).transpose(3, 4)  # (B, C, rows, cols, 8, 8)
    d = dct_matrix().to(x.device)
    q = torch.stack([quant_table(quality, chroma=k > 0) for k in range(c)]).to(x.device).view(1, c, 1, 1, 8, 8)
    coef = _round(d @ blocks @ d.T / q, straight_through) * q
    v = (d.T @ coef @ d).transpose(3, 4).reshape(b, c, hh, ww)
    if rgb:
        v[:, 0] += 128
        v = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(m), v)
    else:
        v = v + 128
    v = v[..., :h, :w].clamp(0, 255)
    return (_round(v, straight_through) / 255).to(x.dtype)


__all__ = ["CHROMA_TABLE", "LUMA_TABLE", "dct_matrix", "jpeg", "quant_table"]

"""Copy-move forgery detection with PCA on overlapping blocks (chapter 12, C12.3; Popescu and Farid 2004,
survey section 9.2).

| name in code | symbol |
| ------------ | ------ |
| ``blocks``   | every b x b block of the (grey) image, one row each, (L, b*b), L = (H - b + 1)(W - b + 1) |
| ``coeffs``   | each block's first principal-component coefficients, quantized |
| ``shift``    | the offset (dy, dx) between a block and its duplicate, signed so that dy > 0, or dy = 0 and dx > 0 |

A region copied and pasted elsewhere in the same image produces pairs of identical blocks. Sorting the blocks'
(quantized, PCA-reduced) descriptions lexicographically puts identical blocks next to each other; a copy-move shows
up as many neighbouring pairs with the same offset, where accidental matches have scattered offsets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class CopyMoveResult:
    shift: tuple[int, int] | None  # (dy, dx) between the two regions (which one is the copy cannot be told), or None
    count: int  # neighbouring block pairs with that shift
    mask: torch.Tensor  # (H, W) bool on the CPU: pixels covered by the matched blocks, both regions


def copy_move(
    image: torch.Tensor,
    block: int = 4,
    components: int = 8,
    quant: float = 0.02,
    min_offset: float = 4.0,
    min_count: int = 10,
    min_std: float = 0.01,
) -> CopyMoveResult:
    """Find a duplicated region in one image (C, H, W) or (H, W) in [0, 1]. Blocks flatter than ``min_std`` are
    skipped (a flat sky matches itself everywhere); pairs closer than ``min_offset`` pixels are neighbours, not
    copies. The most frequent shift is reported when at least ``min_count`` block pairs share it."""
    grey = (image.float().mean(0) if image.dim() == 3 else image.float()).detach().cpu()  # sorting runs in numpy
    h, w = grey.shape
    blocks = F.unfold(grey[None, None], block).squeeze(0).T  # (L, b*b)
    ys, xs = torch.meshgrid(torch.arange(h - block + 1), torch.arange(w - block + 1), indexing="ij")
    pos = torch.stack([ys.flatten(), xs.flatten()], 1)  # (L, 2) top-left corner of each block
    textured = blocks.std(1) > min_std
    blocks, pos = blocks[textured], pos[textured]
    empty = CopyMoveResult(None, 0, torch.zeros(h, w, dtype=torch.bool))
    if len(blocks) < 2:
        return empty
    centred = blocks - blocks.mean(0)
    basis = torch.linalg.svd(centred, full_matrices=False).Vh[:components]  # principal directions, (k, b*b)
    codes = torch.round(centred @ basis.T / quant).long().numpy()  # (L, k)
    order = np.lexsort(codes.T[::-1])  # sort rows lexicographically, first component first
    same = (codes[order[1:]] == codes[order[:-1]]).all(1)  # neighbours in sorted order with equal codes
    a, b = torch.as_tensor(order[:-1][same]), torch.as_tensor(order[1:][same])
    shift = pos[b] - pos[a]
    flip = (shift[:, 0] < 0) | ((shift[:, 0] == 0) & (shift[:, 1] < 0))  # one sign per offset: (dy, dx) ~ (-dy, -dx)
    src = torch.where(flip[:, None], pos[b], pos[a])
    shift = torch.where(flip[:, None], -shift, shift)
    far = shift.float().norm(dim=1) >= min_offset
    shift, src = shift[far], src[far]
    if len(shift) == 0:
        return empty
    values, counts = torch.unique(shift, dim=0, return_counts=True)
    best = counts.argmax()
    if counts[best] < min_count:
        return CopyMoveResult(None, int(counts[best]), empty.mask)
    dy, dx = (int(v) for v in values[best])
    corners = src[(shift == values[best]).all(1)]  # top-left corners of the matched source blocks
    seeds = torch.zeros(h, w)
    seeds[corners[:, 0], corners[:, 1]] = 1.0
    seeds[corners[:, 0] + dy, corners[:, 1] + dx] = 1.0  # and of their copies
    cover = F.conv_transpose2d(seeds[None, None], torch.ones(1, 1, block, block))[0, 0, :h, :w]  # each corner -> its block
    return CopyMoveResult((dy, dx), int(counts[best]), cover > 0)


__all__ = ["CopyMoveResult", "copy_move"]

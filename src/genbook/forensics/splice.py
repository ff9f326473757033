"""Splice-and-blend forgeries and a detector for them (chapter 12, C12.8; survey 9.3-9.4).

A face swap, reduced to its geometry: find the subject in a real picture, draw a new one with a generator, move
it onto the subject's place, and blend it in through a mask whose edge is either hard or feathered, so that the
seam does not show (the last step of the DeepFake pipeline, which Li and Lyu, 2019, found the detectable part).
Here the pictures are chapter 3's sprites, the subject is the sprite, and the "face" is an 8 x 8 window around it.

| name in code       | meaning |
| ------------------ | ------- |
| ``subject_centre`` | where the subject is: the centroid of how far each pixel is from the border's colour |
| ``mask``           | the blending weight alpha in [0, 1], (N, 1, H, W): 1 in the window, a Gaussian ramp if feathered |
| ``forged``         | alpha * donor (moved onto the host's subject) + (1 - alpha) * host |

The detector is a small CNN whose last layer averages over positions (no position is special), trained with
binary cross-entropy on real pictures against forged ones; ``forgery_detector`` makes fresh forgeries for every
batch, so it never sees the same splice twice.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from genbook.metrics import gaussian_blur
from genbook.runtime import training_loop


def subject_centre(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, 2) the (row, column) of each picture's subject: the centroid of the squared distance of
    each pixel from the mean colour of the picture's border (the background), in pixels."""
    h, w = images.shape[-2:]
    border = torch.cat([images[..., 0, :], images[..., -1, :], images[..., 1:-1, 0], images[..., 1:-1, -1]], -1)
    weight = (images - border.mean(-1)[..., None, None]).pow(2).sum(1)  # (N, H, W)
    weight = weight + 1e-8  # a blank picture: the centre of the frame
    rows = torch.arange(h, dtype=images.dtype, device=images.device)
    cols = torch.arange(w, dtype=images.dtype, device=images.device)
    total = weight.sum((1, 2))
    return torch.stack([(weight.sum(2) * rows).sum(1) / total, (weight.sum(1) * cols).sum(1) / total], 1)


def window_mask(centres: torch.Tensor, size: tuple[int, int], half: int = 4, feather: float = 0.0) -> torch.Tensor:
    """(N, 2) centres -> (N, 1, H, W) blending masks: 1 on the 2 * half x 2 * half window around each centre (kept
    inside the frame), 0 elsewhere; ``feather`` > 0 blurs the mask's edge with a Gaussian of that std in pixels.
    The window's rows are floor(c + 1) - half ... floor(c + 1) + half - 1, centred on c to within half a pixel."""
    h, w = size
    if not 1 <= 2 * half <= min(h, w):
        raise ValueError(f"the window (2 * half = {2 * half} pixels) must fit in the {h} x {w} frame; choose a smaller half")
    top = ((centres[:, 0] + 1).floor().long() - half).clamp(0, h - 2 * half)
    left = ((centres[:, 1] + 1).floor().long() - half).clamp(0, w - 2 * half)
    rows = torch.arange(h, device=centres.device)[None, :, None]
    cols = torch.arange(w, device=centres.device)[None, None, :]
    inside = (rows >= top[:, None, None]) & (rows < top[:, None, None] + 2 * half)
    inside = inside & (cols >= left[:, None, None]) & (cols < left[:, None, None] + 2 * half)
    mask = inside.float()[:, None]
    return gaussian_blur(mask, feather) if feather > 0 else mask


def move(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Translate each picture by a whole number of pixels, (N, 2) (rows, columns), repeating the edge."""
    n, _, h, w = images.shape
    s = shift.round().long()
    rows = (torch.arange(h, device=images.device)[None, :] - s[:, :1]).clamp(0, h - 1)  # (N, H)
    cols = (torch.arange(w, device=images.device)[None, :] - s[:, 1:]).clamp(0, w - 1)  # (N, W)
    idx = (rows[:, :, None] * w + cols[:, None, :]).view(n, 1, h * w).expand(-1, images.shape[1], -1)
    return images.flatten(2).gather(2, idx).view_as(images)


def splice(hosts: torch.Tensor, donors: torch.Tensor, half: int = 4, feather: float = 0.0) -> torch.Tensor:
    """Forge each host (N, C, H, W) with the subject of its donor: the donor is moved so that its subject lands on
    the host's, and blended in through a window mask (``window_mask``) around the host's subject."""
    if hosts.shape != donors.shape:
        raise ValueError(f"hosts and donors must have the same shape, got {tuple(hosts.shape)} and {tuple(donors.shape)}")
    at = subject_centre(hosts)
    moved = move(donors, at - subject_centre(donors))
    alpha = window_mask(at, hosts.shape[-2:], half, feather)
    return alpha * moved + (1 - alpha) * hosts


class SpliceDetector(nn.Module):
    """(N, C, H, W) in [0, 1] -> (N,) logit that the picture was forged: three 3 x 3 convolutions (the middle one
    halves the resolution) and a linear read-out of the features averaged over all positions."""

    def __init__(self, channels: int = 3, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(2 * x - 1).squeeze(1)


def forgery_detector(
    real: torch.Tensor,
    forge: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    steps: int,
    batch: int = 64,
    lr: float = 2e-3,
    generator: torch.Generator | None = None,
    width: int = 32,
) -> tuple[SpliceDetector, list[float]]:
    """Train a ``SpliceDetector`` on ``real`` pictures (N, C, H, W) against forgeries: each step draws ``batch``
    real pictures and ``batch`` others, which ``forge(hosts, generator)`` turns into forgeries (so forgeries are
    made fresh for every batch). Binary cross-entropy, Adam; returns the detector (in eval mode) and the losses.
    In smoke mode (``GENBOOK_SMOKE=1``) the loop runs a few steps, like every training loop of the book."""
    if len(real) < 2:
        raise ValueError("forgery_detector needs at least two real pictures")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    det = SpliceDetector(real.shape[1], width).to(real.device)
    opt = torch.optim.Adam(det.parameters(), lr=lr)
    labels = torch.cat([torch.zeros(batch), torch.ones(batch)]).to(real.device)
    losses = []
    run = training_loop(steps, "splice detector")
    try:
        for step in range(run.steps):
            run.begin(step)
            pick = torch.randint(0, len(real), (2 * batch,), generator=g).to(real.device)
            x = torch.cat([real[pick[:batch]], forge(real[pick[batch:]], g)])
            loss = F.binary_cross_entropy_with_logits(det(x), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            run.end(step)
    finally:
        run.close()
    return det.eval(), losses


@torch.no_grad()
def forgery_scores(detector: nn.Module, images: torch.Tensor, chunk: int = 500) -> torch.Tensor:
    """The detector's logits for many pictures, in chunks, without gradients: (N, C, H, W) -> (N,) on the CPU."""
    return torch.cat([detector(x).cpu() for x in images.split(chunk)])


__all__ = ["SpliceDetector", "subject_centre", "forgery_detector", "forgery_scores", "move", "splice", "window_mask"]

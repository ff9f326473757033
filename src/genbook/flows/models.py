"""Recipes for chapter 4's flows, and their likelihood on digits in nats per image and bits/dim.

| name in code | symbol |
| ------------ | ------ |
| ``x_int``    | digits as integers 0..K-1, shape (B, 1, 8, 8) |
| ``y``        | the dequantized image (x_int + u) / K in [0, 1)^D, u ~ U[0, 1)^D |
| ``alpha``    | the logit transform's margin, z = logit(alpha + (1 - 2 alpha) y) |

The digits flow is RealNVP's multi-scale layout at toy size: couplings with checkerboard masks at 8x8
(each preceded by an ActNorm), a squeeze, couplings with channel masks at 4x4 (4 channels), a squeeze, the same
at 2x2 (16 channels), each channel coupling preceded by Glow's ActNorm and invertible 1x1 convolution. Chapter 4, "A flow on digits".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from genbook import data
from genbook.flows.autoregressive import MaskedAutoregressive
from genbook.flows.core import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    Flow,
    FlowLayer,
    InvConv1x1,
    LogitTransform,
    Reverse,
    Squeeze,
    alternating_mask,
    channel_mask,
    checkerboard_mask,
)
from genbook.flows.spline import SplineCoupling
from genbook.metrics import NLL, dequantized_nll
from genbook.nets import MLP, count_parameters


def conv_net(c_in: int, c_out: int, width: int, depth: int = 3, zero_last: bool = True) -> nn.Sequential:
    """3x3 convolutions c_in -> width ... -> c_out with SiLU between; ``zero_last`` makes the coupling start as the identity.

    The coupling networks of chapter 4's digits flow. Shapes: (B, c_in, H, W) -> (B, c_out, H, W)."""
    layers: list[nn.Module] = []
    c = c_in
    for _ in range(depth - 1):
        layers += [nn.Conv2d(c, width, 3, padding=1), nn.SiLU()]
        c = width
    last = nn.Conv2d(c, c_out, 3, padding=1)
    if zero_last:  # Glow: every coupling is the identity at initialization (kingma2018glow, section 3.3)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    return nn.Sequential(*layers, last)


@dataclass
class DigitsFlowConfig:
    """The multi-scale digits flow: ``coupling`` is "affine" (RealNVP) or "additive" (NICE)."""

    coupling: str = "affine"
    width: int = 32
    checkerboard_steps: int = 2
    steps_per_scale: int = 4
    alpha: float = 1e-3
    zero_last: bool = True
    glow: bool = True  # ActNorm + invertible 1x1 convolution before each coupling


def _coupling(cfg: DigitsFlowConfig, mask: torch.Tensor) -> FlowLayer:
    c = mask.shape[0]
    if cfg.coupling == "affine":
        return AffineCoupling(mask, conv_net(c, 2 * c, cfg.width, zero_last=cfg.zero_last))
    return AdditiveCoupling(mask, conv_net(c, c, cfg.width, zero_last=cfg.zero_last))


def digits_flow(cfg: DigitsFlowConfig | None = None, size: int = 8) -> Flow:
    """Build the multi-scale flow for (1, size, size) images in [0, 1). Chapter 4, "A flow on digits"."""
    cfg = cfg or DigitsFlowConfig()
    if cfg.coupling not in ("affine", "additive"):
        raise ValueError(f"coupling must be 'affine' or 'additive', got {cfg.coupling!r}")
    if size % 4:
        raise ValueError(f"the digits flow squeezes twice, so the image size must be a multiple of 4, got {size}")
    layers: list[FlowLayer] = [LogitTransform(cfg.alpha)]
    for i in range(cfg.checkerboard_steps):
        if cfg.glow:
            layers.append(ActNorm(1))
        layers.append(_coupling(cfg, checkerboard_mask((1, size, size), i % 2)))
    for channels, side in ((4, size // 2), (16, size // 4)):
        layers.append(Squeeze())
        for i in range(cfg.steps_per_scale):
            if cfg.glow:
                layers += [ActNorm(channels), InvConv1x1(channels)]
            layers.append(_coupling(cfg, channel_mask(channels, side, i % 2)))
    return Flow(layers, (1, size, size), base_shape=(16, size // 4, size // 4))


def autoregressive_flow(dim: int = 64, layers: int = 4, hidden: int = 256, mode: str = "maf", alpha: float = 1e-3) -> Flow:
    """A logit transform, then ``layers`` x (ActNorm, MAF or IAF layer, reversal) on flattened data in [0, 1)^D.

    Papamakarios et al. 2017 (papamakarios2017masked); chapter 4, "MAF and IAF".
    """
    out: list[FlowLayer] = [LogitTransform(alpha)]
    for _ in range(layers):
        out += [ActNorm(dim), MaskedAutoregressive(dim, (hidden, hidden), mode), Reverse()]
    return Flow(out, (dim,))


def width_for_params(make: Callable[[int], nn.Module], target: int, lo: int = 1, hi: int = 1024) -> int:
    """The width whose model's parameter count is closest to ``target`` (counts grow with width), by bisection.

    How chapter 4 compares NICE and RealNVP "at equal size"."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count_parameters(make(mid)) <= target else (lo, mid)
    return min((lo, hi), key=lambda w: abs(count_parameters(make(w)) - target))


@torch.no_grad()
def initialize(flow: Flow, x_int: torch.Tensor, batch: int = 512) -> None:
    """Run one batch of integer images (B, ...) through the flow in training mode, which sets every ActNorm's
    data-dependent init (chapter 4, "Glow's three pieces")."""
    flow.train()
    flow.log_prob(data.dequantize(x_int[:batch].to(next(flow.parameters()).device)))


def nll_loss(flow: Flow, x_int: torch.Tensor) -> torch.Tensor:
    """Training loss: the dequantization bound in nats per image, -log p((x + u) / K) + D log K, batch mean.

    For :func:`genbook.train.fit` on integer images (B, ...); chapter 4, "Dequantization and bits/dim"."""
    dims = x_int[0].numel()
    return dequantized_nll(flow.log_prob(data.dequantize(x_int)), dims).mean()


@torch.no_grad()
def evaluate_nll(flow: Flow, x_int: torch.Tensor, draws: int = 8, seed: int = 0, batch: int = 1024) -> NLL:
    """E_u[-log p((x + u) / K)] + D log K averaged over images and ``draws`` noise draws: an upper bound on the
    discrete NLL (Theis et al. 2016; survey eq. 61 for bits/dim). Chapter 4, "Dequantization and bits/dim"."""
    flow.eval()
    g = torch.Generator().manual_seed(seed)
    dims, total = x_int[0].numel(), 0.0
    device = next(flow.parameters()).device
    for _ in range(draws):
        for chunk in x_int.split(batch):
            y = data.dequantize(chunk, generator=g).to(device)
            total += float(dequantized_nll(flow.log_prob(y), dims).sum())
    return NLL(total / (draws * len(x_int)), dims, bound=True)


@torch.no_grad()
def sample_digits(flow: Flow, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample y ~ p(y) in [0, 1)^D and undo the dequantization: x_int = floor(K y), shape (n, *event_shape) long."""
    y = flow.sample(n, temperature, generator)
    return (y * data.DIGIT_LEVELS).floor().clamp(0, data.DIGIT_LEVELS - 1).long().reshape(n, *flow.event_shape)  # (n, *event)


def toy_flow(kind: str = "affine", layers: int = 4, hidden: int = 64, bins: int = 8, bound: float = 4.0) -> Flow:
    """A 2-D flow of alternating couplings (one coordinate conditions the other), affine or spline.

    Chapter 4, "Spline flows". Both kinds share the MLP trunk; the spline's head is wider (3K - 1 numbers
    per coordinate instead of 2), so equal-size comparisons pick ``hidden`` per kind.
    """
    if kind not in ("affine", "spline"):
        raise ValueError(f"kind must be 'affine' or 'spline', got {kind!r}")
    out: list[FlowLayer] = [ActNorm(2)]
    for i in range(layers):
        mask = alternating_mask(2, i % 2)
        if kind == "affine":
            out.append(AffineCoupling(mask, MLP(2, 4, (hidden, hidden), zero_last=True)))
        else:
            out.append(SplineCoupling(mask, MLP(2, 2 * (3 * bins - 1), (hidden, hidden), zero_last=True), bins, bound))
    return Flow(out, (2,))

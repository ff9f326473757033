"""Rational-quadratic spline couplings (Durkan et al. 2019, "Neural Spline Flows").

| name in code | symbol |
| ------------ | ------ |
| ``bound``    | B: the spline acts on [-B, B], the identity outside (linear tails) |
| ``widths``, ``heights`` | the K bin widths w_k and heights h_k (each sums to 2B) |
| ``derivs``   | the K + 1 knot derivatives d_k > 0; d_0 = d_K = 1 so the tails join smoothly |
| ``xi``       | the position inside bin k, (x - x_k) / w_k in [0, 1] |
| ``s``        | the bin's slope h_k / w_k |

Inside bin k, y = y_k + h_k (s xi^2 + d_k xi (1 - xi)) / (s + (d_{k+1} + d_k - 2 s) xi (1 - xi)), a ratio of
two quadratics (survey eq. 62), strictly increasing, with an inverse from a quadratic equation.
Chapter 4, "Spline flows".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genbook.flows.core import FlowLayer


def _knots(raw: torch.Tensor, bound: float, min_size: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax sizes (each >= min_size of 2B), their knot positions -B = x_0 < ... < x_K = B."""
    k = raw.shape[-1]
    sizes = min_size + (1 - min_size * k) * raw.softmax(-1)  # (..., K), sums to 1
    knots = F.pad(sizes.cumsum(-1), (1, 0)) * 2 * bound - bound  # (..., K + 1)
    knots[..., -1] = bound  # cumsum rounding must not leave a gap at the right end
    return knots[..., 1:] - knots[..., :-1], knots


def rational_quadratic_spline(
    x: torch.Tensor,
    raw_widths: torch.Tensor,
    raw_heights: torch.Tensor,
    raw_derivs: torch.Tensor,
    inverse: bool = False,
    bound: float = 3.0,
    min_size: float = 1e-3,
    min_deriv: float = 1e-3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the monotone RQ spline element-wise; returns (y, log |dy/dx|) with the shape of x.

    Unnormalized parameters have shape x.shape + (K,), (K,), (K - 1,). With ``inverse=True`` x is read as
    the spline's output and the exact inverse is returned, with the inverse's log-derivative.
    Durkan et al. 2019 (durkan2019neural), eq. 4-8 and appendix A; survey eq. 62.
    """
    inside = (x >= -bound) & (x <= bound)
    xc = x.clamp(-bound, bound)
    widths, xk = _knots(raw_widths, bound, min_size)  # (..., K), (..., K + 1)
    heights, yk = _knots(raw_heights, bound, min_size)
    ones = torch.ones_like(raw_derivs[..., :1])
    derivs = torch.cat([ones, min_deriv + F.softplus(raw_derivs) * (1 - min_deriv) / math.log(2), ones], -1)  # (..., K + 1); 1 at raw 0

    knots = yk if inverse else xk
    k = torch.searchsorted(knots[..., 1:-1].contiguous(), xc.unsqueeze(-1).contiguous())  # bin index 0..K-1
    gather = lambda t: t.gather(-1, k).squeeze(-1)  # noqa: E731 - a local shorthand
    w, h, x0, y0 = gather(widths), gather(heights), gather(xk[..., :-1]), gather(yk[..., :-1])
    d0, d1 = gather(derivs[..., :-1]), gather(derivs[..., 1:])
    s = h / w
    if not inverse:
        xi = (xc - x0) / w
        denom = s + (d1 + d0 - 2 * s) * xi * (1 - xi)
        y = y0 + h * (s * xi**2 + d0 * xi * (1 - xi)) / denom
        num = s**2 * (d1 * xi**2 + 2 * s * xi * (1 - xi) + d0 * (1 - xi) ** 2)  # dy/dx = num / denom^2
        logd = num.log() - 2 * denom.log()
    else:  # solve a xi^2 + b xi + c = 0 for xi in [0, 1] (appendix A)
        dy = xc - y0
        a = h * (s - d0) + dy * (d1 + d0 - 2 * s)
        b = h * d0 - dy * (d1 + d0 - 2 * s)
        c = -s * dy
        xi = (2 * c / (-b - (b**2 - 4 * a * c).clamp_min(0).sqrt())).clamp(0, 1)
        y = x0 + xi * w
        denom = s + (d1 + d0 - 2 * s) * xi * (1 - xi)
        num = s**2 * (d1 * xi**2 + 2 * s * xi * (1 - xi) + d0 * (1 - xi) ** 2)
        logd = 2 * denom.log() - num.log()
    return torch.where(inside, y, x), torch.where(inside, logd, torch.zeros_like(logd))


class SplineCoupling(FlowLayer):
    """A coupling whose transformed half goes through an RQ spline with parameters from net(x_keep).

    ``net`` maps the masked input (B, D) to (B, D * (3K - 1)). Durkan et al. 2019 (durkan2019neural);
    chapter 4, "Spline flows". Shapes: (B, D) -> (B, D).
    """

    def __init__(self, mask: torch.Tensor, net: nn.Module, bins: int = 8, bound: float = 3.0):
        super().__init__()
        self.register_buffer("mask", mask)
        self.net, self.bins, self.bound = net, bins, bound

    def _spline(self, x: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        params = self.net(x * self.mask).view(x.shape[0], x.shape[1], 3 * self.bins - 1)  # (B, D, 3K - 1)
        w, h, d = params.split([self.bins, self.bins, self.bins - 1], dim=-1)
        y, logd = rational_quadratic_spline(x, w, h, d, inverse=inverse, bound=self.bound)
        y = self.mask * x + (1 - self.mask) * y
        return y, (logd * (1 - self.mask)).sum(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._spline(x, inverse=False)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._spline(z, inverse=True)

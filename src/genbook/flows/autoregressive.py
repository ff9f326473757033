"""MADE, and the two ways to use it as a flow: MAF (fast density) and IAF (fast sampling).

| name in code | symbol |
| ------------ | ------ |
| ``degrees``  | MADE's m(k): an input or hidden unit k may only depend on inputs with a smaller degree |
| ``mu``, ``alpha`` | the shift and log-scale of coordinate i, functions of the coordinates before i |
| ``x``, ``z`` | data side and base side of the layer |

MAF (Papamakarios et al. 2017): z_i = (x_i - mu_i(x_<i)) exp(-alpha_i(x_<i)). All of z comes out of one
MADE pass over x, so density evaluation is one pass; sampling must recover x_1, x_2, ... in turn, D passes.
IAF (Kingma et al. 2016, survey eq. 58-60): x_i = z_i exp(alpha_i(z_<i)) + mu_i(z_<i), the same
network read the other way: sampling is one pass, density evaluation D passes. Chapter 4, "MAF and IAF".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from genbook.flows.core import FlowLayer, soft_clamp


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask of shape (out_features, in_features): MADE's
    building block (chapter 4, "MAF and IAF"). Shapes: (B, in_features) -> (B, out_features)."""

    def __init__(self, in_features: int, out_features: int, mask: torch.Tensor):
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Masked autoencoder for distribution estimation: output i (of each of ``out_mult`` groups) sees x_<i only.

    Degrees: inputs 1..D in order, hidden units cycle through 1..D-1, a hidden unit of degree m sees
    inputs of degree <= m, output i sees hidden units of degree < i. Germain et al. 2015 (germain2015made);
    chapter 4, "MAF and IAF". Shapes: (B, D) -> (B, out_mult, D).
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (128, 128), out_mult: int = 2, zero_last: bool = True):
        super().__init__()
        if dim < 2:
            raise ValueError(f"MADE needs at least 2 dimensions, got {dim}")
        self.dim, self.out_mult = dim, out_mult
        degrees = [torch.arange(1, dim + 1)]
        for h in hidden:
            degrees.append(torch.arange(h) % (dim - 1) + 1)  # cyclic: every degree 1..D-1 is represented
        layers: list[nn.Module] = []
        for d_in, d_out in zip(degrees[:-1], degrees[1:]):
            layers += [MaskedLinear(len(d_in), len(d_out), (d_out[:, None] >= d_in[None, :]).float()), nn.SiLU()]
        out_deg = torch.arange(1, dim + 1).repeat(out_mult)  # (out_mult * D,)
        last = MaskedLinear(len(degrees[-1]), out_mult * dim, (out_deg[:, None] > degrees[-1][None, :]).float())
        if zero_last:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(x.shape[0], self.out_mult, self.dim)  # (B, out_mult, D)


class MaskedAutoregressive(FlowLayer):
    """An affine autoregressive layer built on MADE; ``mode="maf"`` or ``"iaf"`` decides which direction is one pass.

    Both modes describe the same family of maps; they differ in which side the MADE reads. ``passes`` counts
    the network evaluations of the last call, which chapter 4 times (C4.4). Shapes: (B, D) -> (B, D).
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (128, 128), mode: str = "maf", scale_bound: float = 3.0):
        super().__init__()
        if mode not in ("maf", "iaf"):
            raise ValueError(f"mode must be 'maf' or 'iaf', got {mode!r}")
        self.made = MADE(dim, hidden, out_mult=2)
        self.mode, self.scale_bound, self.passes = mode, scale_bound, 0

    def _params(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, raw = self.made(h).unbind(1)  # (B, 2, D) -> two (B, D)
        return mu, soft_clamp(raw, self.scale_bound)

    def _one_pass_to_z(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, alpha = self._params(x)  # MAF: conditioned on the data side
        self.passes = 1
        return (x - mu) * (-alpha).exp(), -alpha.sum(1)

    def _one_pass_to_x(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, alpha = self._params(z)  # IAF: conditioned on the base side (eq. 58)
        self.passes = 1
        return z * alpha.exp() + mu, alpha.sum(1)

    def _sequential(self, given: torch.Tensor, to_x: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Recover the conditioning side one coordinate at a time: D MADE passes."""
        out = torch.zeros_like(given)
        for i in range(given.shape[1]):
            mu, alpha = self._params(out)  # coordinate i only reads out[:, :i], which is final
            if to_x:  # MAF sampling: x_i = z_i exp(alpha_i) + mu_i
                value = given[:, i] * alpha[:, i].exp() + mu[:, i]
            else:  # IAF density: z_i = (x_i - mu_i) exp(-alpha_i)
                value = (given[:, i] - mu[:, i]) * (-alpha[:, i]).exp()
            out = out.clone()  # a fresh tensor per step keeps autograd's record of the earlier ones
            out[:, i] = value
        self.passes = given.shape[1]
        return out, alpha.sum(1) if to_x else -alpha.sum(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._one_pass_to_z(x) if self.mode == "maf" else self._sequential(x, to_x=False)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._sequential(z, to_x=True) if self.mode == "maf" else self._one_pass_to_x(z)

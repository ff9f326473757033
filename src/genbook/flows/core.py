"""The pieces every discrete-time flow is built from: the layer interface, couplings, Glow's layers, the container.

| name in code | symbol |
| ------------ | ------ |
| ``x``        | a data point (or the output of the previous layer), shape (B, D) or (B, C, H, W) |
| ``z``        | the layer's output, one step closer to the base distribution |
| ``logdet``   | log |det dz/dx| of one layer, shape (B,) |
| ``mask``     | the coupling's binary mask: 1 = x_keep (conditions the net), 0 = x_shift (transformed) |
| ``s``, ``t`` | the affine coupling's log-scale and shift, y_shift = x_shift * exp(s) + t (survey eq. 56) |

Direction convention: ``forward`` maps data to the base ("normalizing", f), ``inverse`` maps the base to
data (f^-1, sampling). Both return ``(output, logdet)``, the log-determinant of the map just applied, so
log p_X(x) = log p_Z(f(x)) + sum_l logdet_l (survey eq. 53-54). Chapter 4, "Change of variables".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def soft_clamp(s: torch.Tensor, bound: float) -> torch.Tensor:
    """bound * tanh(s / bound): the identity near 0, never beyond +-bound, so exp(s) cannot overflow.

    Used for the log-scales of affine couplings and MAF/IAF (chapter 4, "NICE and RealNVP"). Any shape -> same shape.
    """
    return bound * torch.tanh(s / bound)


def _sum_except_batch(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).sum(1)


class FlowLayer(nn.Module):
    """One invertible map with a tractable log-determinant; subclasses define ``forward`` and ``inverse``."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError


# ----------------------------------------------------------------------------- masks


def checkerboard_mask(shape: tuple[int, ...], parity: int = 0) -> torch.Tensor:
    """1 on the squares (i + j) % 2 == parity of the last two axes, as in RealNVP's spatial masks (chapter 4).

    ``shape`` = (C, H, W) -> a float mask of that shape."""
    h, w = shape[-2:]
    board = (torch.arange(h)[:, None] + torch.arange(w)[None, :]) % 2 == parity  # (H, W)
    return board.float().expand(*shape).clone()


def half_mask(dim: int, parity: int = 0) -> torch.Tensor:
    """1 on the first half of the D coordinates (parity 0) or the second half (parity 1): shape (D,). Chapter 4."""
    mask = (torch.arange(dim) < dim // 2).float()
    return mask if parity == 0 else 1 - mask


def alternating_mask(dim: int, parity: int = 0) -> torch.Tensor:
    """1 on the even coordinates (parity 0) or the odd ones (parity 1), shape (D,): every layer sees a spread of
    positions (the 2-D couplings of chapter 4)."""
    return (torch.arange(dim) % 2 == parity).float()


# ----------------------------------------------------------------------------- couplings


class AdditiveCoupling(FlowLayer):
    """NICE's additive coupling: z_keep = x_keep, z_shift = x_shift + t(x_keep); volume preserving (logdet 0).

    Dinh et al. 2015 (dinh2015nice), survey eq. 50-51; chapter 4, "NICE and RealNVP".
    ``net`` maps the masked input (same shape as x) to t (same shape). Shapes: (B, *event) -> (B, *event).
    """

    def __init__(self, mask: torch.Tensor, net: nn.Module):
        super().__init__()
        self.register_buffer("mask", mask)
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.net(x * self.mask) * (1 - self.mask)
        return x + t, x.new_zeros(x.shape[0])

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.net(z * self.mask) * (1 - self.mask)  # z_keep = x_keep, so the net sees the same input
        return z - t, z.new_zeros(z.shape[0])


class AffineCoupling(FlowLayer):
    """RealNVP's affine coupling: z_shift = x_shift * exp(s(x_keep)) + t(x_keep), logdet = sum s.

    Dinh et al. 2017 (dinh2017density), survey eq. 55-56; chapter 4, "NICE and RealNVP".
    ``net`` maps the masked input (B, *event) to (B, 2 * C, ...) or (B, 2 * D): log-scales then shifts,
    concatenated along axis 1. The log-scale is soft-clamped to +-``scale_bound``.
    """

    def __init__(self, mask: torch.Tensor, net: nn.Module, scale_bound: float = 3.0):
        super().__init__()
        self.register_buffer("mask", mask)
        self.net = net
        self.scale_bound = scale_bound

    def _st(self, x_keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw_s, t = self.net(x_keep).chunk(2, dim=1)
        s = soft_clamp(raw_s, self.scale_bound) * (1 - self.mask)  # x_keep stays: s = t = 0 there
        return s, t * (1 - self.mask)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self._st(x * self.mask)
        return x * s.exp() + t, _sum_except_batch(s)  # eq. 56

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self._st(z * self.mask)
        return (z - t) * (-s).exp(), -_sum_except_batch(s)


# ----------------------------------------------------------------------------- Glow's layers


class ActNorm(FlowLayer):
    """Per-channel affine z = (x - b) * exp(-log_s), initialized from the first batch so z has mean 0, std 1.

    Kingma & Dhariwal 2018 (kingma2018glow), survey section 4.1; chapter 4, "Glow's three pieces".
    Works on (B, C) and (B, C, H, W); logdet = -H W sum(log_s).
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialized", torch.tensor(False))
        self.eps = eps

    def _view(self, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return p.view(1, -1, *([1] * (x.dim() - 2)))  # (1, C[, 1, 1])

    @torch.no_grad()
    def _initialize(self, x: torch.Tensor) -> None:
        flat = x.transpose(0, 1).flatten(1)  # (C, B * H * W)
        self.bias.copy_(flat.mean(1))
        self.log_scale.copy_((flat.std(1) + self.eps).log())
        self.initialized.fill_(True)

    def _pixels(self, x: torch.Tensor) -> int:
        return math.prod(x.shape[2:])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not self.initialized:
            self._initialize(x)
        z = (x - self._view(self.bias, x)) * self._view(-self.log_scale, x).exp()
        return z, -self.log_scale.sum().expand(x.shape[0]) * self._pixels(x)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = z * self._view(self.log_scale, z).exp() + self._view(self.bias, z)
        return x, self.log_scale.sum().expand(z.shape[0]) * self._pixels(z)


class InvConv1x1(FlowLayer):
    """Glow's invertible 1x1 convolution, W = P L (U + diag(sign * exp(log_s))), logdet = H W sum(log_s).

    The LU parameterization makes the determinant O(C) instead of O(C^3). P is a fixed random permutation,
    L unit lower-triangular, U strictly upper-triangular. Kingma & Dhariwal 2018 (kingma2018glow);
    chapter 4, "Glow's three pieces". On (B, C) inputs it is an invertible linear layer (a 1x1 convolution
    on a 1x1 image), which is how the vector flows of chapter 4 use it.
    """

    def __init__(self, channels: int, generator: torch.Generator | None = None):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(channels, channels, generator=generator))  # a random rotation
        p, lower, upper = torch.linalg.lu(q)
        diag = upper.diagonal()
        self.register_buffer("p", p)
        self.register_buffer("sign_s", diag.sign())
        self.register_buffer("l_mask", torch.tril(torch.ones(channels, channels), -1))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(diag.abs().log())

    def weight(self) -> torch.Tensor:
        eye = torch.eye(self.p.shape[0], device=self.p.device, dtype=self.p.dtype)
        lower = self.lower * self.l_mask + eye
        upper = self.upper * self.l_mask.T + torch.diag(self.sign_s * self.log_s.exp())
        return self.p @ lower @ upper  # (C, C)

    def _mix(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return x @ w.T  # (B, C)
        return torch.einsum("oc,bchw->bohw", w, x)  # (B, C, H, W): the same C x C map at every pixel

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = math.prod(x.shape[2:])
        return self._mix(x, self.weight()), self.log_s.sum().expand(x.shape[0]) * pixels

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = math.prod(z.shape[2:])
        return self._mix(z, torch.linalg.inv(self.weight())), -self.log_s.sum().expand(z.shape[0]) * pixels


class Reverse(FlowLayer):
    """Reverse the order of the D coordinates (MAF's reordering between autoregressive layers); logdet 0.

    Chapter 4, "MAF and IAF". Shapes: (B, D) -> (B, D)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.flip(1), x.new_zeros(x.shape[0])

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return z.flip(1), z.new_zeros(z.shape[0])


class Squeeze(FlowLayer):
    """Space-to-depth: (B, C, H, W) -> (B, 4C, H/2, W/2), each 2x2 patch becomes 4 channels; logdet 0.

    RealNVP's squeezing operation (dinh2017density, section 3.6): after it, a channel mask splits
    neighbouring pixels, so couplings at the coarser scale mix what checkerboards could not.
    """

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"Squeeze needs even height and width, got {h}x{w}")
        x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)  # (B, C, 2, 2, H/2, W/2)
        return x.reshape(b, 4 * c, h // 2, w // 2), x.new_zeros(b)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = z.shape
        z = z.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)  # (B, C/4, H, 2, W, 2)
        return z.reshape(b, c // 4, 2 * h, 2 * w), z.new_zeros(b)


def channel_mask(channels: int, size: int, parity: int = 0) -> torch.Tensor:
    """1 on the first half of the channels (parity 0) or the second half (parity 1), shape (C, size, size): the masks
    of the couplings after a squeeze (chapter 4, "A flow on digits")."""
    mask = (torch.arange(channels) < channels // 2).float().view(channels, 1, 1).expand(channels, size, size).clone()
    return mask if parity == 0 else 1 - mask


class LogitTransform(FlowLayer):
    """Map y in [0, 1) to z = logit(alpha + (1 - 2 alpha) y), so the flow models an unbounded variable.

    RealNVP's preprocessing (dinh2017density, section 4.1); its log-determinant is part of the likelihood,
    so the bound on the discrete NLL stays exact bookkeeping. Chapter 4, "Dequantization and bits/dim".
    """

    def __init__(self, alpha: float = 0.05):
        super().__init__()
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.alpha + (1 - 2 * self.alpha) * x
        z = s.log() - (-s).log1p()
        logdet = math.log(1 - 2 * self.alpha) - s.log() - (-s).log1p()  # d logit(s)/ds = 1 / (s (1 - s))
        return z, _sum_except_batch(logdet)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = torch.sigmoid(z)
        x = (s - self.alpha) / (1 - 2 * self.alpha)
        logdet = F.logsigmoid(z) + F.logsigmoid(-z) - math.log(1 - 2 * self.alpha)
        return x, _sum_except_batch(logdet)


# ----------------------------------------------------------------------------- the container


class Flow(nn.Module):
    """A stack of layers and a standard-normal base: log p(x) = log N(f(x); 0, I) + sum_l logdet_l (eq. 54).

    Survey Box 6 (training: ``log_prob``; generation: ``sample``); chapter 4, "Change of variables".
    ``event_shape`` is the shape of one data point, e.g. (2,) or (64,) or (1, 8, 8); ``base_shape`` the shape
    of z when the layers reshape (squeezes), by default the same.
    """

    def __init__(self, layers: list[FlowLayer], event_shape: tuple[int, ...], base_shape: tuple[int, ...] | None = None):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.event_shape = tuple(event_shape)
        self.base_shape = tuple(base_shape) if base_shape is not None else self.event_shape

    def base_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return _sum_except_batch(-0.5 * z**2 - 0.5 * math.log(2 * math.pi))  # eq. 48 with Gaussian factors

    def forward(self, x: torch.Tensor, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Run layers ``start``.. L on x: returns (z, sum of their logdets)."""
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers[start:]:
            x, ld = layer(x)
            logdet = logdet + ld
        return x, logdet

    def log_prob(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """log p(x) per example, shape (B,). With ``start = k`` it is the density of the k-th intermediate
        variable h_k = f_k o ... o f_1(x) (what the chapter's layer slider draws)."""
        z, logdet = self(x, start)
        return self.base_log_prob(z) + logdet

    def inverse(self, z: torch.Tensor, stop: int = 0) -> torch.Tensor:
        """Run layers L .. ``stop`` + 1 backwards: with ``stop = 0``, the data point x = f^-1(z)."""
        for layer in reversed(self.layers[stop:]):
            z, _ = layer.inverse(z)
        return z

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """Box 6, generation: z ~ N(0, T^2 I) of shape (n, *base_shape), x = f^-1(z) of shape (n, *event_shape)."""
        param = next(self.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        z = torch.randn((n, *self.base_shape), generator=generator, device="cpu").to(device) * temperature
        return self.inverse(z)

"""Autoregressive image models: PixelCNN, gated PixelCNN, pixel transformers, and MaskGIT's parallel decoding.

| name in code | symbol |
| ------------ | ------ |
| ``x_int``    | an image of integer levels 0..K-1, shape (B, 1, S, S); ``x_unit`` the same in [0, 1] |
| ``logits``   | per-pixel categorical logits over the K levels, shape (B, K, 1, S, S) |
| ``v``, ``h`` | the gated PixelCNN's vertical stack (rows above) and horizontal stack (the current row, to the left) |
| ``y``        | a class label, the conditioning h of survey eq. 69-70 |
| ``tokens``   | a flattened grid of token ids (grey levels or VQ codes), shape (B, T) |
| ``mask_id``  | MaskGIT's [MASK] token, the id after the vocabulary |

p(x) = prod_i p(x_i | x_<i) in raster order (survey eq. 65). PixelCNN (van den Oord et al. 2016) gets all
conditionals from one pass by masking its convolutions; its stacked masks leave a blind spot that the gated
PixelCNN's two stacks remove. The causal transformer over pixel tokens is chapter 2's code prior
(:class:`genbook.vqvae.CodePrior`) with the grey levels as its vocabulary. MaskGIT (Chang et al. 2022) trains
a bidirectional transformer to fill in masked tokens and decodes a grid in a few parallel steps.
Chapter 5 derives all of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genbook.data import DIGIT_LEVELS, to_unit
from genbook.metrics import categorical_nll
from genbook.nets.masked import MaskedConv2d, causal_mask
from genbook.nets.transformer import TinyTransformer, TinyTransformerConfig
from genbook.vqvae import CodePrior, CodePriorConfig

__all__ = [
    "CodePrior",
    "GatedPixelCNN",
    "MaskGIT",
    "MaskGITConfig",
    "MaskedConv2d",
    "PixelCNN",
    "PixelCNNConfig",
    "causal_mask",
    "dependency_map",
    "maskgit_loss",
    "masked_cross_entropy",
    "maskgit_sample",
    "marginal_nll",
    "masking_schedule",
    "pixel_loss",
    "pixel_nll",
    "pixel_transformer",
    "random_mask",
    "sample_pixels",
]


def _gumbel(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """G ~ Gumbel(0, 1) as -log(-log u) from CPU uniforms, so a seed gives the same draws on any device."""
    u = torch.rand(tuple(shape), generator=generator).clamp_min(1e-20).to(device)
    return -torch.log(-torch.log(u))


def _gumbel_argmax(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """A draw from softmax(logits) along the last axis: argmax(logits + G) (the Gumbel-max trick)."""
    return (logits + _gumbel(logits.shape, generator, logits.device)).argmax(-1)


# ----------------------------------------------------------------------------- PixelCNN


@dataclass
class PixelCNNConfig:
    """Sizes of :class:`PixelCNN` and :class:`GatedPixelCNN` (both read ``layers``, ``kernel``, ``first_kernel``)."""

    levels: int = DIGIT_LEVELS
    channels: int = 64
    layers: int = 6  # residual blocks (PixelCNN) or gated layers (gated PixelCNN) after the first layer
    kernel: int = 3
    first_kernel: int = 7  # PixelCNN's 7x7 mask-A layer
    num_classes: int | None = None  # gated PixelCNN only: class-conditional gates (eq. 70)
    dropout: float = 0.0


class PixelCNN(nn.Module):
    """The original PixelCNN: a 7x7 mask-A convolution, residual 3x3 mask-B blocks, two 1x1 layers, a K-way softmax.

    van den Oord et al. 2016 (vandenoord2016pixel), survey Table IV; chapter 5, "PixelCNN".
    Shapes: x_unit (B, 1, S, S) -> logits (B, K, 1, S, S).
    """

    def __init__(self, cfg: PixelCNNConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        self.first = MaskedConv2d(1, c, cfg.first_kernel, "A")
        self.blocks = nn.ModuleList(MaskedConv2d(c, c, cfg.kernel, "B") for _ in range(cfg.layers))
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, 1), nn.ReLU(), nn.Conv2d(c, cfg.levels, 1))

    def forward(self, x_unit: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is not None:
            raise ValueError("the plain PixelCNN is unconditional; use GatedPixelCNN with num_classes for labels")
        h = self.first(x_unit * 2 - 1)
        for block in self.blocks:
            h = h + self.drop(block(F.relu(h)))  # 1x1 convolutions and the residual keep the causal structure
        return self.out(h).unsqueeze(2)  # (B, K, 1, S, S)


# ----------------------------------------------------------------------------- gated PixelCNN


class _FixedMaskConv(nn.Conv2d):
    """A 'same'-padded convolution whose (kh, kw) kernel is multiplied by a fixed 0/1 mask."""

    def __init__(self, c_in: int, c_out: int, mask: torch.Tensor):
        kh, kw = mask.shape
        super().__init__(c_in, c_out, (kh, kw), padding=(kh // 2, kw // 2))
        self.register_buffer("mask", mask[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


def _stack_masks(k: int, first: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Vertical (k, k): the rows above the centre, plus the centre row after the first layer. Horizontal (1, k):
    the pixels left of the centre, plus the centre after the first layer."""
    c = k // 2
    vertical = torch.zeros(k, k)
    vertical[: c + (not first)] = 1
    horizontal = torch.zeros(1, k)
    horizontal[0, : c + (not first)] = 1
    return vertical, horizontal


class GatedLayer(nn.Module):
    """One gated PixelCNN layer (survey eq. 68-70): y = tanh(W_f * x + V_f h) * sigmoid(W_g * x + V_g h) on both stacks.

    The vertical stack at row i only ever sees rows < i (the first layer excludes the centre row), so it can
    feed the horizontal stack at the same position. van den Oord et al. 2016b (vandenoord2016conditional);
    chapter 5, "The blind spot". Shapes: v, h (B, C_in, S, S), y (B,) -> v, h (B, c, S, S).
    """

    def __init__(self, c_in: int, c: int, k: int, first: bool, num_classes: int | None, dropout: float):
        super().__init__()
        vertical, horizontal = _stack_masks(k, first)
        self.first = first
        self.v_conv, self.h_conv = _FixedMaskConv(c_in, 2 * c, vertical), _FixedMaskConv(c_in, 2 * c, horizontal)
        self.v_to_h = nn.Conv2d(2 * c, 2 * c, 1)
        self.h_out = nn.Conv2d(c, c, 1)
        self.cond = nn.Embedding(num_classes, 4 * c) if num_classes else None  # V_f h and V_g h for both stacks
        self.drop = nn.Dropout(dropout)

    def forward(self, v: torch.Tensor, h: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        v_feat = self.v_conv(v)  # (B, 2c, S, S): filter and gate halves
        h_feat = self.h_conv(h) + self.v_to_h(v_feat)
        if self.cond is not None:
            if y is None:
                raise ValueError("this gated PixelCNN is class-conditional: pass labels y")
            cv, ch = self.cond(y)[:, :, None, None].chunk(2, 1)  # (B, 2c, 1, 1) each
            v_feat, h_feat = v_feat + cv, h_feat + ch
        v_out = self._gate(v_feat)
        h_new = self.h_out(self.drop(self._gate(h_feat)))
        return v_out, h_new if self.first else h + h_new  # no residual at the first layer: h is the image itself there

    @staticmethod
    def _gate(feat: torch.Tensor) -> torch.Tensor:
        f, g = feat.chunk(2, 1)
        return torch.tanh(f) * torch.sigmoid(g)  # eq. 68


class GatedPixelCNN(nn.Module):
    """Gated PixelCNN with vertical and horizontal stacks and optional class conditioning (survey eq. 68-70).

    van den Oord et al. 2016b (vandenoord2016conditional); chapter 5, "Gated PixelCNN".
    Shapes: x_unit (B, 1, S, S), y (B,) -> logits (B, K, 1, S, S).
    """

    def __init__(self, cfg: PixelCNNConfig):
        super().__init__()
        self.cfg = cfg
        c, k = cfg.channels, cfg.kernel
        self.layers = nn.ModuleList(
            [GatedLayer(1, c, cfg.first_kernel, True, cfg.num_classes, cfg.dropout)]
            + [GatedLayer(c, c, k, False, cfg.num_classes, cfg.dropout) for _ in range(cfg.layers)]
        )
        self.out = nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, 1), nn.ReLU(), nn.Conv2d(c, cfg.levels, 1))

    def forward(self, x_unit: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        v = h = x_unit * 2 - 1
        for layer in self.layers:
            v, h = layer(v, h, y)
        return self.out(h).unsqueeze(2)  # (B, K, 1, S, S)


# ----------------------------------------------------------------------------- likelihood, sampling, receptive fields


def pixel_nll(model: nn.Module, x_int: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Exact discrete NLL -sum_i log p(x_i | x_<i) in nats per image (survey eq. 65): (B, 1, S, S) -> (B,)."""
    return categorical_nll(model(to_unit(x_int, model.cfg.levels), y), x_int)


def marginal_nll(model: nn.Module, x_int: torch.Tensor, class_prior: torch.Tensor) -> torch.Tensor:
    """Exact -log p(x) of a class-conditional model, p(x) = sum_y p(y) p(x | y), summing over the classes.

    With ten digit classes this costs ten passes and gives an unconditional likelihood comparable with every
    other model's. ``class_prior`` (num_classes,) sums to 1. Chapter 5, "Class-conditional PixelCNN". (B, 1, S, S) -> (B,).
    """
    classes = torch.arange(len(class_prior), device=x_int.device)
    log_joint = torch.stack([-pixel_nll(model, x_int, c.expand(len(x_int))) + class_prior[c].log() for c in classes], 1)  # (B, C)
    return -torch.logsumexp(log_joint, 1)


def pixel_loss(model: nn.Module, batch) -> torch.Tensor:
    """Training loss for :func:`genbook.train.fit`: mean NLL of a batch ``x_int`` (B, 1, S, S) or ``(x_int, y)``.

    Chapter 5, "Class-conditional PixelCNN"."""
    x_int, y = batch if isinstance(batch, (tuple, list)) else (batch, None)
    return pixel_nll(model, x_int, y).mean()


@torch.no_grad()
def sample_pixels(
    model: nn.Module,
    n: int,
    size: int = 8,
    y: torch.Tensor | None = None,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Ancestral sampling in raster order, one full network pass per pixel (S^2 passes), vectorized over the n images.

    Each draw uses the Gumbel-max trick with uniforms from ``generator`` on the CPU, so a seed fixes the samples
    on any device. Chapter 5, "Sampling is sequential". Returns x_int (n, 1, S, S).
    """
    device = next(model.parameters()).device
    levels = model.cfg.levels
    x = torch.zeros(n, 1, size, size, dtype=torch.long, device=device)
    for i in range(size):
        for j in range(size):
            logits = model(to_unit(x, levels), y)[:, :, 0, i, j] / temperature  # (n, K)
            x[:, 0, i, j] = _gumbel_argmax(logits, generator)
    return x


def dependency_map(model: nn.Module, position: tuple[int, int], size: int = 8, probes: int = 4) -> torch.Tensor:
    """Which input pixels the logits at ``position`` depend on: nonzero gradient for any of ``probes`` random images.

    Chapter 5, "The blind spot". Returns a (S, S) bool map.
    """
    p = next(model.parameters())
    x = torch.rand(probes, 1, size, size, device=p.device, dtype=p.dtype, requires_grad=True)
    y = torch.arange(probes, device=p.device) % model.cfg.num_classes if getattr(model.cfg, "num_classes", None) else None
    was_training = model.training
    model.eval()  # dropout could hide a dependency
    try:
        out = model(x, y)[:, :, 0, position[0], position[1]]  # (probes, K)
        (grad,) = torch.autograd.grad(out.sum(), x)
    finally:
        model.train(was_training)
    return (grad.abs().sum((0, 1)) > 0).cpu()


# ----------------------------------------------------------------------------- transformers over tokens


def pixel_transformer(
    levels: int = DIGIT_LEVELS, size: int = 8, dim: int = 64, depth: int = 4, heads: int = 4, dropout: float = 0.1
) -> CodePrior:
    """A causal transformer over the S^2 raster-ordered grey levels (iGPT at toy scale, survey eq. 71-72).

    It is chapter 2's code prior with the K grey levels as its vocabulary: ``forward``, ``sample`` and
    :func:`genbook.vqvae.code_nll` work on (B, S, S) grids of levels. Chapter 5, "A pixel transformer".
    """
    return CodePrior(CodePriorConfig(num_codes=levels, grid=size, dim=dim, depth=depth, heads=heads, dropout=dropout))


@dataclass
class MaskGITConfig:
    """Sizes of :class:`MaskGIT`: a vocabulary of ``vocab`` tokens on a ``grid`` x ``grid`` grid, plus [MASK]."""

    vocab: int = DIGIT_LEVELS
    grid: int = 8
    dim: int = 64
    depth: int = 4
    heads: int = 4
    dropout: float = 0.1


class MaskGIT(nn.Module):
    """A bidirectional transformer that predicts masked tokens of a grid from the visible ones.

    Chang et al. 2022 (chang2022maskgit), survey section 5.3; chapter 5, "MaskGIT".
    Shapes: tokens (B, T) with ids 0..vocab (vocab = [MASK]) -> logits (B, T, vocab).
    """

    def __init__(self, cfg: MaskGITConfig):
        super().__init__()
        self.cfg = cfg
        self.mask_id = cfg.vocab
        self.net = TinyTransformer(
            TinyTransformerConfig(cfg.vocab, cfg.grid**2, cfg.dim, cfg.depth, cfg.heads, causal=False, extra_tokens=1, dropout=cfg.dropout)
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net(tokens)  # (B, T, vocab)


def masking_schedule(r: torch.Tensor | float) -> torch.Tensor | float:
    """MaskGIT's cosine schedule gamma(r) = cos(pi r / 2): the fraction of tokens still masked at progress r in [0, 1].

    Chang et al. 2022, section 3.2; chapter 5, "MaskGIT". A float or a tensor of any shape."""
    return torch.cos(r * math.pi / 2) if isinstance(r, torch.Tensor) else math.cos(r * math.pi / 2)


def random_mask(b: int, t: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Training masks for MaskGIT: per row, r ~ U[0, 1) and exactly ceil(gamma(r) T) positions chosen at random.

    Chang et al. 2022, section 3.1. Returns (B, T) bool, True = replaced by [MASK].
    """
    r = torch.rand(b, device=device)
    n_masked = torch.ceil(masking_schedule(r) * t).clamp(1, t)  # (B,)
    rank = torch.rand(b, t, device=device).argsort(1).argsort(1)  # a random permutation rank per position
    return rank < n_masked[:, None]


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the masked positions of the whole batch only: MaskGIT's loss (Chang et al. 2022, eq. 1)
    given the network's output. Shapes: logits (B, T, V), targets (B, T) long, masked (B, T) bool -> scalar."""
    return F.cross_entropy(logits[masked], targets[masked])


def maskgit_loss(model: MaskGIT, grids: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the original tokens at the masked positions only (the visible ones are given).

    Chang et al. 2022, eq. 1. ``grids`` (B, g, g) long -> scalar (nats per masked token).
    """
    seq = grids.flatten(1)  # (B, T)
    masked = random_mask(*seq.shape, device=seq.device)
    logits = model(seq.masked_fill(masked, model.mask_id))  # (B, T, V)
    return masked_cross_entropy(logits, seq, masked)


@torch.no_grad()
def maskgit_sample(
    model: MaskGIT,
    n: int,
    steps: int = 8,
    temperature: float = 1.0,
    choice_temperature: float = 4.5,
    generator: torch.Generator | None = None,
    random_order: bool = False,
) -> torch.Tensor:
    """Iterative parallel decoding: start fully masked; at step s sample every masked token, keep the most confident,
    and re-mask the rest so that floor(gamma(s / steps) T) stay masked. ``steps`` network passes in all.

    Confidence is log p of the sampled token plus Gumbel noise scaled by ``choice_temperature`` (1 - s / steps),
    as in MaskGIT's released sampler, whose configuration sets it to 4.5. (On chapter 5's 16-token code grids a
    weight of 2 was erratic: over seeds 0-2 and two kernel sets, 8 steps were sometimes worse than 1.)
    ``random_order=True`` keeps a uniformly random subset of the new tokens instead (the confidence is the Gumbel
    noise alone): the "random" selection MaskGIT's paper compares against, and, with as many steps as tokens,
    exact sampling in a random order from the model's conditionals. Chang et al. 2022, section 3.2.
    Returns grids (n, g, g) long.
    """
    g_side, t = model.cfg.grid, model.cfg.grid**2
    device = next(model.parameters()).device
    tokens = torch.full((n, t), model.mask_id, dtype=torch.long, device=device)
    for s in range(1, steps + 1):
        masked = tokens == model.mask_id
        logits = model(tokens) / temperature  # (n, T, V)
        sampled = _gumbel_argmax(logits, generator)  # (n, T)
        log_p = logits.log_softmax(-1).gather(-1, sampled[..., None]).squeeze(-1)
        noise = _gumbel(log_p.shape, generator, device)
        confidence = noise if random_order else log_p + choice_temperature * (1 - s / steps) * noise
        confidence = confidence.masked_fill(~masked, float("inf"))  # tokens fixed earlier are never re-masked
        tokens = torch.where(masked, sampled, tokens)
        still = math.floor(masking_schedule(s / steps) * t)
        if still > 0:
            least = confidence.argsort(1)[:, :still]  # (n, still): the least confident new tokens
            tokens = tokens.scatter(1, least, model.mask_id)
    return tokens.view(n, g_side, g_side)

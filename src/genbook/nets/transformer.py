"""A tiny pre-norm transformer over token sequences (pixel transformers, MaskGIT, DiT-style models).

``causal=True`` gives a decoder that sees only earlier positions (chapter 5); ``causal=False``
gives a bidirectional encoder (MaskGIT, DiT).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def attend(qkv: torch.Tensor, heads: int, causal: bool = False, dropout: float = 0.0, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head scaled dot-product attention from fused projections: (B, T, 3C) -> (B, T, C), before the output
    projection. ``bias`` (nh, T, T) is added to the attention logits (a relative position bias); a boolean ``bias``
    broadcastable to (B, nh, T, T) is a mask, True where attention is allowed. Not with ``causal``."""
    if causal and bias is not None:
        raise ValueError("attend takes a causal mask or a bias, not both")
    b, t, c3 = qkv.shape
    c = c3 // 3
    q, k, v = qkv.reshape(b, t, 3, heads, c // heads).permute(2, 0, 3, 1, 4)  # each (B, nh, T, hd)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=causal, dropout_p=dropout)  # (B, nh, T, hd)
    return y.transpose(1, 2).reshape(b, t, c)  # (B, T, C)


def cached_attention(
    qkv: nn.Module, proj: nn.Module, heads: int, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, t: int
) -> torch.Tensor:
    """Self-attention of one position ``t`` over a KV cache, after its output projection: x (B, 1, C), already
    normalized -> (B, 1, C), the term a pre-norm block adds to its input.

    ``keys`` and ``values`` (B, nh, T, hd) hold the keys and values of positions 0..t-1; this position's are written
    into slot t, and its query attends to slots 0..t, all of them in its past: causal without a mask. Shared by every
    block with a ``step`` (:class:`TransformerBlock`, chapter 9's ``TokenDecoderBlock``)."""
    b, _, c = x.shape
    q, k, v = qkv(x).reshape(b, 1, 3, heads, c // heads).permute(2, 0, 3, 1, 4)  # (B, nh, 1, hd)
    keys[:, :, t : t + 1], values[:, :, t : t + 1] = k, v
    y = F.scaled_dot_product_attention(q, keys[:, :, : t + 1], values[:, :, : t + 1])  # (B, nh, 1, hd)
    return proj(y.transpose(1, 2).reshape(b, 1, c))


def empty_kv_cache(depth: int, batch: int, heads: int, length: int, dim: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Key and value caches for ``depth`` blocks, each (depth, batch, heads, length, dim // heads), on the device and
    in the dtype of ``like``; :func:`cached_attention` fills slot t of block i's at position t."""
    shape = (depth, batch, heads, length, dim // heads)
    return torch.empty(shape, device=like.device, dtype=like.dtype), torch.empty(shape, device=like.device, dtype=like.dtype)


class TransformerBlock(nn.Module):
    """x + attn(LN(x)), then x + MLP(LN(x)). Shapes: (B, T, C) -> (B, T, C)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))
        self.dropout = dropout

    def forward(self, x: torch.Tensor, causal: bool = False, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` (B, 1, 1, T), True where a key may be attended to (a caption's words, not its padding)."""
        drop = self.dropout if self.training else 0.0
        x = x + self.proj(attend(self.qkv(self.ln1(x)), self.heads, causal, drop, bias=mask))  # (B, T, C)
        return x + self.mlp(self.ln2(x))

    def step(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, t: int) -> torch.Tensor:
        """The block at position ``t`` alone, for causal sampling with a KV cache: x (B, 1, C) -> (B, 1, C).

        ``keys`` and ``values`` (B, nh, T, hd) hold the keys and values of positions 0..t-1; this position's are
        written into slot t, and its query attends to slots 0..t, all of them in its past: causal without a mask.
        """
        x = x + cached_attention(self.qkv, self.proj, self.heads, self.ln1(x), keys, values, t)
        return x + self.mlp(self.ln2(x))


@dataclass
class TinyTransformerConfig:
    vocab_size: int = 17  # tokens 0..vocab_size-1 (grey levels or codebook indices)
    seq_len: int = 64
    dim: int = 64
    depth: int = 4
    heads: int = 4
    causal: bool = True
    extra_tokens: int = 1  # extra ids after the vocabulary: a start token (causal) or [MASK] (MaskGIT)
    num_classes: int | None = None  # when set, a class embedding is added to every position
    dropout: float = 0.0


class TinyTransformer(nn.Module):
    """Token ids (B, T) -> logits (B, T, vocab_size)."""

    def __init__(self, cfg: TinyTransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size + cfg.extra_tokens, cfg.dim)
        self.pos = nn.Parameter(torch.zeros(1, cfg.seq_len, cfg.dim))
        nn.init.normal_(self.pos, std=0.02)
        nn.init.normal_(self.tok.weight, std=0.02)  # GPT-2's scale: a unit-variance token embedding would drown the positions
        self.cls = nn.Embedding(cfg.num_classes, cfg.dim) if cfg.num_classes else None
        self.blocks = nn.ModuleList(TransformerBlock(cfg.dim, cfg.heads, dropout=cfg.dropout) for _ in range(cfg.depth))
        self.ln = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size)

    def forward(self, tokens: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        b, t = tokens.shape
        if t > self.cfg.seq_len:
            raise ValueError(f"sequence of length {t} is longer than seq_len={self.cfg.seq_len}")
        h = self.tok(tokens) + self.pos[:, :t]  # (B, T, C)
        if self.cls is not None and y is not None:
            h = h + self.cls(y)[:, None, :]
        for block in self.blocks:
            h = block(h, causal=self.cfg.causal)
        return self.head(self.ln(h))  # (B, T, V)

    def kv_cache(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Empty key and value caches for :meth:`step`, each (depth, B, nh, seq_len, hd)."""
        cfg = self.cfg
        return empty_kv_cache(cfg.depth, batch, cfg.heads, cfg.seq_len, cfg.dim, like=self.pos)

    def step(self, token: torch.Tensor, t: int, cache: tuple[torch.Tensor, torch.Tensor], y: torch.Tensor | None = None) -> torch.Tensor:
        """Logits at position ``t`` given the token there and the cached past: token (B,) -> (B, V).

        Equals ``forward(tokens)[:, t]`` for a causal model whose positions 0..t-1 went through ``step`` before (the
        KV cache: each position's keys and values are computed once, so sampling T tokens costs O(T^2) attention
        work instead of O(T^3) for T full passes). Chapter 5, "Sampling is sequential". It is for sampling: like
        ``forward`` in eval mode, it applies no attention dropout.
        """
        if not self.cfg.causal:
            raise ValueError("step (a KV cache) needs a causal transformer: a bidirectional one's past changes with every token")
        if not 0 <= t < self.cfg.seq_len:
            raise ValueError(f"position {t} is outside 0..{self.cfg.seq_len - 1}")
        h = self.tok(token)[:, None] + self.pos[:, t : t + 1]  # (B, 1, C)
        if self.cls is not None and y is not None:
            h = h + self.cls(y)[:, None, :]
        keys, values = cache
        for i, block in enumerate(self.blocks):
            h = block.step(h, keys[i], values[i], t)
        return self.head(self.ln(h))[:, 0]  # (B, V)

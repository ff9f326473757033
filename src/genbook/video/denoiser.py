"""A video diffusion denoiser with factorized space-time blocks, and the inflation of an image denoiser into it
(chapter 11, "Video diffusion"; survey eq. 125 and Box 12).

| name in code | symbol |
| ------------ | ------ |
| ``x``        | a noisy clip (B, T, C, H, W) |
| ``frames``   | the same clip with time folded into the batch, (B*T, C, H, W) |
| ``temporal`` | attention along time at each pixel: the sequence is the T frames, the batch is B*H*W |

Every spatial layer of the image UNet runs on the frames independently: its 3x3 convolutions are 1x3x3
convolutions over (time, height, width) and its self-attention is spatial attention with the frames as the batch.
After each residual block (or each below a chosen resolution, ``min_level``) a temporal attention layer mixes
information across frames at each position (Ho et al. 2022, Video Diffusion Models). Its output projection starts at
zero, so a freshly inflated model computes exactly what the image model computes on each frame; switching
``temporal`` off makes the frames independent, which lets the same network train on single images (Box 12, joint
image-video training).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from genbook.nets import UNet


def frames_to_sequences(h: torch.Tensor, frames: int) -> torch.Tensor:
    """Per-frame features of B clips, (B*T, C, H, W) clip-major (row b*T + t is frame t of clip b), as one sequence
    over time per clip and spatial position: (B*H*W, T, C), row b*H*W + p holding position p of clip b. What
    factorized temporal attention attends over (survey eq. 125); chapter 11, "Video diffusion"."""
    bt, c, hh, ww = h.shape
    if bt % frames:
        raise ValueError(f"{bt} frames in the batch is not a whole number of clips of {frames} frames")
    return h.view(bt // frames, frames, c, hh * ww).permute(0, 3, 1, 2).reshape(bt // frames * hh * ww, frames, c)


class TemporalAttention(nn.Module):
    """Multi-head self-attention over the T frames at each spatial position, with a learned relative position bias
    per head (Ho et al. 2022) and a residual whose output projection is zero-initialized.
    Shapes: h (B*T, C, H, W) with ``frames`` = T <= ``max_frames`` -> (B*T, C, H, W).

    Without the position bias the layer would be permutation-equivariant in time: it could not tell the first frame
    from the last, and a model built from it would find a clip and its frame-shuffled copy equally likely."""

    def __init__(self, channels: int, heads: int = 4, max_frames: int = 16):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.heads, self.max_frames, self.chunk = heads, max_frames, 32768
        self.rel_bias = nn.Parameter(torch.zeros(heads, 2 * max_frames - 1))  # bias[h, i - j + max_frames - 1]
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)
        nn.init.zeros_(self.out.weight)  # starts as the identity: an inflated model equals its image model
        nn.init.zeros_(self.out.bias)

    def forward(self, h: torch.Tensor, frames: int) -> torch.Tensor:
        bt, c, hh, ww = h.shape
        if frames > self.max_frames:
            raise ValueError(f"{frames} frames; this layer was built for at most max_frames={self.max_frames}")
        b = bt // frames
        ij = torch.arange(frames, device=h.device)
        bias = self.rel_bias[:, ij[:, None] - ij[None, :] + self.max_frames - 1]  # (nh, T, T)
        seq = frames_to_sequences(h, frames)  # (B*HW, T, C)
        qkv = self.qkv(self.norm(seq))  # (B*HW, T, 3C)
        # in chunks, to bound one kernel call's batch: some CUDA kernels cap a grid dimension at 65535, and 1000
        # clips of 16 x 16 would be 256,000 sequences
        y = torch.cat([self._attend(part, bias) for part in qkv.split(self.chunk)])  # (B*HW, T, C)
        y = self.out(y).view(b, hh * ww, frames, c).permute(0, 2, 3, 1).reshape(bt, c, hh, ww)  # back to (B*T, C, H, W)
        return h + y

    def _attend(self, qkv: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T / sqrt(d) + bias) v over the T frames, per head: (N, T, 3C) -> (N, T, C). Written with
        einsum rather than ``attend`` (scaled_dot_product_attention): with a bias that needs a gradient SDPA takes
        its math path on a CPU, which for sequences this short (8 frames) spends its time on copies; this form trains
        the fast profile's video model about 10% faster per step, with the same result to float precision
        (tests/test_video.py compares the two)."""
        n, t, c3 = qkv.shape
        hd = c3 // 3 // self.heads
        q, k, v = qkv.reshape(n, t, 3, self.heads, hd).unbind(2)  # each (N, T, nh, hd)
        logits = torch.einsum("nihd,njhd->nhij", q, k) * hd**-0.5 + bias  # (N, nh, T, T)
        return torch.einsum("nhij,njhd->nihd", logits.softmax(-1), v).reshape(n, t, c3 // 3)


class VideoUNet(nn.Module):
    """eps_theta(x, t, y) for clips: an image :class:`~genbook.nets.UNet` applied to every frame, with a
    :class:`TemporalAttention` after its residual blocks (factorized space-time, survey eq. 125): after every block
    by default, or, with ``min_level`` = k, only after the blocks at least k downsamplings deep (``min_level=1``
    skips the full-resolution blocks, where the same layers attend over 4x as many positions).
    ``temporal=False`` skips every temporal layer: the frames are then processed independently (images).
    Shapes: x (B, T, C, H, W), t (B,), y (B,) -> (B, T, C, H, W)."""

    def __init__(self, image: UNet, heads: int = 4, min_level: int = 0):
        super().__init__()
        self.image = image
        widths = [blk.conv2.out_channels for blk in [*image.down, image.mid, *image.up]]  # channels after each block
        levels = block_levels(image)
        if not 0 <= min_level <= max(levels):
            raise ValueError(f"min_level={min_level}: this UNet's blocks are 0 to {max(levels)} downsamplings deep")
        self.blocks = tuple(k for k, level in enumerate(levels) if level >= min_level)  # blocks with temporal layers
        self.temporal_layers = nn.ModuleList(TemporalAttention(widths[k], heads) for k in self.blocks)
        self._layer = {k: i for i, k in enumerate(self.blocks)}  # block index -> its temporal layer
        self.temporal = True

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        b, frames = x.shape[:2]
        flat = x.flatten(0, 1)  # (B*T, C, H, W): the frames as a batch of images
        tt = t.expand(b).repeat_interleave(frames)  # every frame of a clip shares its noise level
        yy = None if y is None else y.repeat_interleave(frames)
        mix = self._mix(frames) if self.temporal else None
        return self.image(flat, tt, yy, after_block=mix).view_as(x)

    def _mix(self, frames: int):
        def mix(h: torch.Tensor, k: int) -> torch.Tensor:
            i = self._layer.get(k)
            return h if i is None else self.temporal_layers[i](h, frames)

        return mix


def block_levels(image: UNet) -> list[int]:
    """How many downsamplings deep each residual block of ``image`` works, in the order of ``UNet.forward``'s
    ``after_block`` index (down path, middle, up path): [0, 1, 1, 1, 0] for the default two-level UNet."""
    levels = len(image.cfg.mults)
    return [*range(levels), levels - 1, *range(levels - 1, -1, -1)]


def inflate(image: UNet, heads: int = 4, min_level: int = 0) -> VideoUNet:
    """Box 12, step 2: turn a trained image denoiser into a video denoiser. The spatial weights are copied (they
    become the 1x3x3 kernels and the per-frame attention); the new temporal layers start as the identity, so the
    inflated model reproduces the image model on every frame until video training teaches it to use time.
    ``min_level`` as in :class:`VideoUNet`."""
    return VideoUNet(copy.deepcopy(image), heads, min_level)


__all__ = ["TemporalAttention", "VideoUNet", "block_levels", "frames_to_sequences", "inflate"]

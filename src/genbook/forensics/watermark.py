"""Invisible watermarks (chapter 12, C12.6; Stable Signature, Fernandez et al. 2023, survey eq. 133-136).

| name in code | symbol |
| ------------ | ------ |
| ``m``        | a message of K bits in {0, 1}, (B, K) |
| ``delta``    | the encoder's residual W_E(x, m), the size of the image |
| ``x_w``      | the watermarked image x + alpha * delta (eq. 133) |
| ``T``        | a random distortion: crop, noise, blur or brightness (eq. 134); JPEG is tested, not trained |
| ``W``        | the extractor: image -> K logits, one per bit |

Stage one trains an encoder and an extractor together so that the bits survive the distortions. Stage two throws
the encoder away, freezes the extractor, and fine-tunes a generator's decoder so that everything it draws carries
one fixed signature (eq. 135-136). Whether an image is flagged is a k-of-K bit match, and the false positive rate
of that test on unmarked images is a binomial tail.
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F
from torch import nn

from genbook.forensics.jpeg import jpeg
from genbook.metrics import gaussian_blur

TRAINED_DISTORTIONS = ("none", "crop", "noise", "blur", "brightness")  # what random_distortion draws from
DISTORTIONS = (*TRAINED_DISTORTIONS, "jpeg")


class WatermarkEncoder(nn.Module):
    """W_E: (image (B, C, H, W), message (B, K)) -> residual delta (B, C, H, W) in [-1, 1]. The message becomes a
    coarse 4-channel map (a quarter of the image's size, upsampled smoothly, so that cropping and rescaling move it
    only a little), which a few convolutions mix with the image (so the mark can follow its texture)."""

    def __init__(self, bits: int, channels: int = 1, size: int = 16, width: int = 32):
        super().__init__()
        self.size = size
        self.spread = nn.Linear(bits, 4 * (size // 4) ** 2)  # a coarse code, smooth once upsampled: it survives crops
        self.mix = nn.Sequential(
            nn.Conv2d(channels + 4, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, channels, 3, padding=1), nn.Tanh(),
        )  # fmt: skip

    def forward(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.size, self.size):
            raise ValueError(f"this encoder was built for {self.size} x {self.size} images, got {tuple(x.shape[-2:])}")
        code = self.spread(2 * m.float() - 1).view(-1, 4, self.size // 4, self.size // 4)  # bits as -1/+1
        code = F.interpolate(code, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.mix(torch.cat([x, code], 1))


class WatermarkExtractor(nn.Module):
    """W: image (B, C, H, W) -> K bit logits (B, K); three convolutions and a linear read-out of the whole feature map
    (the distortions keep the image's size, so the layout of the mark is where the extractor expects it)."""

    def __init__(self, bits: int, channels: int = 1, size: int = 16, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(width * ((size + 1) // 2) ** 2, bits),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def distort(x: torch.Tensor, kind: str, strength: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """T(x) of eq. 134 on a batch (B, C, H, W) in [0, 1], keeping its size: "crop" keeps a random window of
    ``strength`` of each side (one window for the batch) and scales it back up to H x W, as a platform reframing an
    image would; "noise" adds Gaussian noise of std ``strength``; "blur" blurs with std ``strength`` pixels;
    "brightness" multiplies by ``strength``; "jpeg" compresses at quality ``strength`` (1-100, rounded; :func:`jpeg`, with
    straight-through rounding so that gradients pass); "none" returns x."""
    if kind == "none":
        return x
    if kind == "crop":
        h, w = x.shape[-2:]
        ch, cw = max(2, round(strength * h)), max(2, round(strength * w))
        top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
        return F.interpolate(x[..., top : top + ch, left : left + cw], size=(h, w), mode="bilinear", align_corners=False)
    if kind == "noise":
        return (x + strength * torch.randn(x.shape, generator=generator).to(x.device)).clamp(0, 1)  # saved as an image
    if kind == "blur":
        return gaussian_blur(x, strength)
    if kind == "brightness":
        return (x * strength).clamp(0, 1)
    if kind == "jpeg":
        return jpeg(x, round(strength), straight_through=True)
    raise ValueError(f"unknown distortion {kind!r}; choose one of {DISTORTIONS}")


def random_distortion(x: torch.Tensor, rng: random.Random, generator: torch.Generator | None = None) -> torch.Tensor:
    """One distortion for the whole batch, of a random kind and strength (the training augmentations: every kind of
    ``TRAINED_DISTORTIONS``; JPEG is left out, so that chapter 12 can test a distortion the mark never saw)."""
    kind = rng.choice(TRAINED_DISTORTIONS)
    strength = {"none": 0.0, "crop": rng.uniform(0.5, 1.0), "noise": rng.uniform(0.0, 0.08),
                "blur": rng.uniform(0.3, 1.0), "brightness": rng.uniform(0.7, 1.3)}[kind]  # fmt: skip
    return distort(x, kind, strength, generator)


def embed(encoder: WatermarkEncoder, x: torch.Tensor, m: torch.Tensor, alpha: float) -> torch.Tensor:
    """x_w = x + alpha * W_E(x, m), eq. 133, kept in [0, 1]."""
    return (x + alpha * encoder(x, m)).clamp(0, 1)


def message_loss(logits: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy between the extracted bit logits and the bits (L_m of eq. 136, and stage one's loss)."""
    return F.binary_cross_entropy_with_logits(logits, m.float())


def bit_accuracy(logits: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Share of bits read correctly, per image: (B, K), (B, K) -> (B,)."""
    return ((logits > 0).float() == m.float()).float().mean(1)


def binomial_fpr(bits: int, threshold: int) -> float:
    """P(at least ``threshold`` of ``bits`` match) for an unmarked image, whose extracted bits match the signature
    like fair coins: sum_{i >= threshold} C(bits, i) / 2^bits, exactly."""
    if not 0 <= threshold <= bits:
        raise ValueError(f"threshold must be between 0 and bits={bits}, got {threshold}")
    return sum(math.comb(bits, i) for i in range(threshold, bits + 1)) / 2**bits


def signature_loss(
    decoder: nn.Module, original: nn.Module, extractor: nn.Module, z: torch.Tensor, signature: torch.Tensor, weight: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """L = L_m + lambda_i L_i (eq. 136) for fine-tuning a decoder D_m: the extractor must read ``signature`` (K,) from
    D_m(z), and D_m(z) must stay close (mean squared error) to the original decoder's D(z) (eq. 135). Both decoders
    return images in the extractor's scale ([0, 1]); only ``decoder``'s parameters should be in the optimizer (the
    original runs without gradients; freeze the extractor with ``requires_grad_(False)`` to save its backward pass)."""
    x_sig = decoder(z)
    with torch.no_grad():
        x_orig = original(z)
    logits = extractor(x_sig)
    target = signature.to(logits).expand_as(logits)
    lm = message_loss(logits, target)
    li = F.mse_loss(x_sig, x_orig)
    logs = torch.stack([lm.detach(), li.detach(), bit_accuracy(logits.detach(), target).mean()]).tolist()  # one sync
    return lm + weight * li, dict(zip(("message", "image", "bits"), logs))


__all__ = [
    "DISTORTIONS",
    "TRAINED_DISTORTIONS",
    "WatermarkEncoder",
    "WatermarkExtractor",
    "binomial_fpr",
    "bit_accuracy",
    "distort",
    "embed",
    "message_loss",
    "random_distortion",
    "signature_loss",
]

"""Camera fingerprints from photo-response non-uniformity (chapter 12, C12.4; Lukas et al. 2006, survey eq. 127-128),
on simulated sensors.

| name in code | symbol |
| ------------ | ------ |
| ``images``   | grey photographs (N, H, W) in [0, 1] |
| ``residual`` | r = p - F(p), the image minus a denoised copy of itself (eq. 127) |
| ``pattern``  | P_c, the mean residual of many images from camera c (eq. 127) |
| ``rho``      | corr(n, P_c), the normalized correlation of a new image's residual with P_c (eq. 128) |

Every pixel of a real sensor converts light with a slightly different gain, so a camera multiplies every picture
by the same faint pattern 1 + K. Denoising removes the scene, not the pattern, so residuals of pictures from one
camera correlate with each other and with nothing else. Our cameras are simulated: a fixed random K per camera,
read noise per shot, and smooth random scenes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genbook.metrics import gaussian_blur


@dataclass
class Camera:
    """A simulated sensor: photo = clamp(scene * (1 + K) + read_noise * N(0, 1), 0, 1), K fixed per camera."""

    gain: torch.Tensor  # K, (H, W)
    read_noise: float

    def shoot(self, scenes: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(N, H, W) scenes -> (N, H, W) photographs taken with this camera."""
        noise = torch.randn(scenes.shape, generator=generator).to(scenes.device)
        return (scenes * (1 + self.gain.to(scenes.device)) + self.read_noise * noise).clamp(0, 1)


def cameras(n: int, size: int, strength: float = 0.03, read_noise: float = 0.01, seed: int = 0) -> list[Camera]:
    """n simulated cameras of size x size pixels, each with its own gain pattern K ~ N(0, strength^2)."""
    g = torch.Generator().manual_seed(seed)
    return [Camera(strength * torch.randn(size, size, generator=g), read_noise) for _ in range(n)]


def scenes(n: int, size: int, seed: int = 0, smoothness: float = 2.0) -> torch.Tensor:
    """n random scenes (N, H, W) in [0.1, 0.9]: blurred noise plus a random brightness gradient, so every picture
    has content the denoiser must remove."""
    g = torch.Generator().manual_seed(seed)
    texture = gaussian_blur(torch.randn(n, 1, size, size, generator=g), smoothness)[:, 0]
    texture = texture / texture.flatten(1).std(1)[:, None, None]
    ramp = torch.linspace(-1, 1, size)
    tilt = torch.randn(n, 2, generator=g)
    grad = tilt[:, :1, None] * ramp[None, :, None] + tilt[:, 1:, None] * ramp[None, None, :]
    x = 0.5 + 0.1 * texture + 0.1 * grad
    return x.clamp(0.1, 0.9)


def residual(images: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """n = p - F(p) with F a Gaussian blur of std ``sigma`` pixels (Lukas et al. use a wavelet denoiser; any
    denoiser that keeps the scene and drops pixel-level noise works): (N, H, W) -> (N, H, W)."""
    return images - gaussian_blur(images[:, None], sigma)[:, 0]


def fingerprint(images: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """P_c: the mean residual of a camera's pictures, eq. 127. (N, H, W) -> (H, W)."""
    return residual(images, sigma).mean(0)


def correlation(images: torch.Tensor, pattern: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """rho_c(p) = corr(p - F(p), P_c), eq. 128: the normalized correlation of each image's residual with a camera
    pattern. (N, H, W), (H, W) -> (N,) in [-1, 1]."""
    n = residual(images, sigma).flatten(1)
    n = n - n.mean(1, keepdim=True)
    p = (pattern - pattern.mean()).flatten()
    return (n @ p) / (n.norm(dim=1) * p.norm()).clamp_min(1e-12)


__all__ = ["Camera", "cameras", "correlation", "fingerprint", "residual", "scenes"]

"""Spectral artifacts of upsampling and a detector on them (chapter 12, C12.1-C12.2; survey section 9.5, eq. 129).

| name in code | symbol |
| ------------ | ------ |
| ``images``   | (N, C, H, W) in [0, 1]; colour is averaged to grey before the transform |
| ``spectrum`` | the log of the azimuthally averaged power spectrum, (N, R): bin r averages |F(u, v)|^2 over r <= |(u, v)| < r + 1 |

Durall et al. (2020) show that transposed convolutions and upsampling leave periodic traces that stand out at high
frequencies of the 2-D discrete Fourier transform. Averaging the power over rings of equal frequency turns each
image into a short 1-D profile on which even a linear classifier separates real from generated images, and a
penalty that pulls the generator's profile towards the real one (eq. 129) removes much of the trace.
"""

from __future__ import annotations

import torch


def _rings(h: int, w: int, device) -> tuple[torch.Tensor, int]:
    """Radial bin of each frequency of a centred (fftshift-ed) H x W spectrum, flattened, and the number of bins, out
    to the corners: the checkerboard of a stride-2 transposed convolution sits at the corner frequency (H/2, W/2)."""
    fy = torch.arange(h, device=device) - h // 2
    fx = torch.arange(w, device=device) - w // 2
    r = (fy[:, None] ** 2 + fx[None, :] ** 2).float().sqrt().floor().long().flatten()  # (H*W,)
    return r, int(r.max()) + 1


def ring_power(images: torch.Tensor) -> torch.Tensor:
    """|DFT|^2 of each (grey) image averaged over rings of equal spatial frequency: (N, C, H, W) -> (N, R), bin r
    holding the frequencies with r <= |(u, v)| < r + 1, from bin 0 (the mean brightness) out to the corner
    frequency (R = 23 bins for 32 x 32 images, 12 for 16 x 16). Differentiable."""
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    grey = images.float().mean(1)  # (N, H, W)
    h, w = grey.shape[-2:]
    power = torch.fft.fftshift(torch.fft.fft2(grey), dim=(-2, -1)).abs().pow(2).flatten(1)  # (N, H*W), zero frequency centred
    r, bins = _rings(h, w, grey.device)  # the ring of each frequency, (H*W,)
    sums = torch.zeros(len(grey), bins, device=grey.device, dtype=power.dtype).index_add(1, r, power)
    return sums / torch.bincount(r, minlength=bins).to(power.dtype)  # (N, R)


def azimuthal_spectrum(images: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """log of :func:`ring_power`, one 1-D profile per image: (N, C, H, W) -> (N, R). The features of the spectrum
    detector. Chapter 12, "Spectral artifacts"."""
    return torch.log(ring_power(images) + eps)


def mean_spectrum(images: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """log of the ring power averaged over a batch, (N, C, H, W) -> (R,): a set of images' spectrum."""
    return torch.log(ring_power(images).mean(0) + eps)


def spectral_loss(fake: torch.Tensor, real_spectrum: torch.Tensor) -> torch.Tensor:
    """L_spectral of eq. 129: the squared distance between the generated batch's :func:`mean_spectrum` and the real
    images' (R,), averaged over the rings. The batch is averaged before the log: the outer rings hold a handful of
    frequencies whose per-image power can be nearly zero, and the log of that would dominate the gradient. (Durall
    et al. compare normalized spectra with a cross-entropy; this is the same idea in its simplest form.)"""
    return (mean_spectrum(fake) - real_spectrum).pow(2).mean()


def _features(images: torch.Tensor):
    """The detector's input: azimuthal spectra as a numpy array (N, R)."""
    return azimuthal_spectrum(images).detach().cpu().numpy()


def spectrum_detector(real: torch.Tensor, fake: torch.Tensor):
    """Fit a standardized logistic regression on the azimuthal spectra of real (label 0) and generated (label 1)
    images, (N, C, H, W) each; returns the fitted scikit-learn pipeline (``predict`` on spectra)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = _features(torch.cat([real, fake]))
    y = [0] * len(real) + [1] * len(fake)
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, y)


def detector_accuracy(detector, real: torch.Tensor, fake: torch.Tensor) -> float:
    """Share of images a spectrum detector labels correctly (real as 0, generated as 1), on balanced or unbalanced
    sets alike (each image counts once)."""
    pr, pf = detector.predict(_features(real)), detector.predict(_features(fake))
    return float(((pr == 0).sum() + (pf == 1).sum()) / (len(pr) + len(pf)))


__all__ = ["azimuthal_spectrum", "detector_accuracy", "mean_spectrum", "ring_power", "spectral_loss", "spectrum_detector"]

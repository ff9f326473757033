"""Fake images, detection and watermarking (chapter 9): spectral artifacts and a detector on them, copy-move
detection, PRNU camera fingerprints on simulated sensors, DIRE, and invisible watermarks with a signed decoder."""

from genbook.forensics.copy_move import CopyMoveResult, copy_move
from genbook.forensics.dire import dire, reconstruct
from genbook.forensics.prnu import Camera, cameras, correlation, fingerprint, residual, scenes
from genbook.forensics.spectrum import (
    azimuthal_spectrum,
    detector_accuracy,
    mean_spectrum,
    ring_power,
    spectral_loss,
    spectrum_detector,
)
from genbook.forensics.watermark import (
    DISTORTIONS,
    WatermarkEncoder,
    WatermarkExtractor,
    binomial_fpr,
    bit_accuracy,
    distort,
    embed,
    message_loss,
    random_distortion,
    signature_loss,
)

__all__ = [
    "DISTORTIONS",
    "Camera",
    "CopyMoveResult",
    "WatermarkEncoder",
    "WatermarkExtractor",
    "azimuthal_spectrum",
    "binomial_fpr",
    "bit_accuracy",
    "cameras",
    "copy_move",
    "correlation",
    "detector_accuracy",
    "dire",
    "distort",
    "embed",
    "fingerprint",
    "mean_spectrum",
    "message_loss",
    "random_distortion",
    "reconstruct",
    "residual",
    "ring_power",
    "scenes",
    "signature_loss",
    "spectral_loss",
    "spectrum_detector",
]

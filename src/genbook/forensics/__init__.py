"""Fake images, detection and watermarking (chapter 12): spectral artifacts and a detector on them, copy-move
detection, PRNU camera fingerprints on simulated sensors, DIRE, invisible watermarks with a signed decoder (tested
under JPEG-like compression), and splice-and-blend forgeries with a detector for them."""

from genbook.forensics.copy_move import CopyMoveResult, copy_move
from genbook.forensics.dire import dire, reconstruct
from genbook.forensics.jpeg import jpeg, quant_table
from genbook.forensics.prnu import Camera, cameras, correlation, fingerprint, residual, scenes
from genbook.forensics.spectrum import (
    azimuthal_spectrum,
    detector_accuracy,
    mean_spectrum,
    ring_power,
    spectral_loss,
    spectrum_detector,
)
from genbook.forensics.splice import (
    SpliceDetector,
    forgery_detector,
    forgery_scores,
    splice,
    subject_centre,
    window_mask,
)
from genbook.forensics.watermark import (
    DISTORTIONS,
    TRAINED_DISTORTIONS,
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
    "TRAINED_DISTORTIONS",
    "Camera",
    "CopyMoveResult",
    "SpliceDetector",
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
    "forgery_detector",
    "forgery_scores",
    "jpeg",
    "mean_spectrum",
    "message_loss",
    "quant_table",
    "random_distortion",
    "reconstruct",
    "residual",
    "ring_power",
    "scenes",
    "signature_loss",
    "spectral_loss",
    "splice",
    "spectrum_detector",
    "subject_centre",
    "window_mask",
]

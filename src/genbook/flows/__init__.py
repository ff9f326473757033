"""Normalizing flows: couplings, Glow's layers, MAF/IAF, spline couplings, continuous flows. Chapter 4.

``genbook.flows.core`` holds the layer interface and the container, ``autoregressive`` MADE/MAF/IAF,
``spline`` the rational-quadratic couplings, ``cnf`` the continuous flows, ``models`` the recipes and the
digits likelihood used by chapter 4 and the comparison chapter.
"""

from genbook.flows.autoregressive import MADE, MaskedAutoregressive, MaskedLinear
from genbook.flows.cnf import CNF, TimeConvNet, TimeMLP, divergence_exact, divergence_hutchinson, rademacher
from genbook.flows.core import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    Flow,
    FlowLayer,
    InvConv1x1,
    LogitTransform,
    Reverse,
    Squeeze,
    alternating_mask,
    channel_mask,
    checkerboard_mask,
    half_mask,
    soft_clamp,
)
from genbook.flows.models import (
    DigitsFlowConfig,
    autoregressive_flow,
    digits_flow,
    evaluate_nll,
    initialize,
    nll_loss,
    sample_digits,
    toy_flow,
    width_for_params,
)
from genbook.flows.spline import SplineCoupling, rational_quadratic_spline

__all__ = [
    "CNF",
    "DigitsFlowConfig",
    "MADE",
    "ActNorm",
    "AdditiveCoupling",
    "AffineCoupling",
    "Flow",
    "FlowLayer",
    "InvConv1x1",
    "LogitTransform",
    "MaskedAutoregressive",
    "MaskedLinear",
    "Reverse",
    "Squeeze",
    "SplineCoupling",
    "TimeConvNet",
    "TimeMLP",
    "alternating_mask",
    "autoregressive_flow",
    "channel_mask",
    "checkerboard_mask",
    "digits_flow",
    "divergence_exact",
    "divergence_hutchinson",
    "half_mask",
    "initialize",
    "nll_loss",
    "rademacher",
    "rational_quadratic_spline",
    "sample_digits",
    "soft_clamp",
    "evaluate_nll",
    "toy_flow",
    "width_for_params",
]

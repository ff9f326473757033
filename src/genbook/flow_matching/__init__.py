"""Rectified flow and flow matching (chapter 7): Gaussian paths (straight/OT and diffusion), the velocity and eps
regression losses, Euler, Heun, DDIM and adaptive ODE samplers, straightness, reflow and minibatch-OT couplings, and the
likelihood through the ODE."""

from genbook.flow_matching.coupling import ot_couple
from genbook.flow_matching.paths import GaussianPath, OTPath, VPPath, eps_loss, fm_loss, sample_t, velocity_from_eps
from genbook.flow_matching.solvers import adaptive, ddim, euler, heun, straightness, trajectory
from genbook.flows.cnf import ode_log_prob  # a flow-matching model is a CNF: chapter 4's likelihood, unchanged

__all__ = [
    "GaussianPath",
    "OTPath",
    "VPPath",
    "adaptive",
    "ddim",
    "eps_loss",
    "euler",
    "fm_loss",
    "heun",
    "ode_log_prob",
    "ot_couple",
    "sample_t",
    "straightness",
    "trajectory",
    "velocity_from_eps",
]

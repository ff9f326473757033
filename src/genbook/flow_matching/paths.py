"""Gaussian probability paths and the regression losses of rectified flow and flow matching (chapter 7).

| name in code | symbol |
| ------------ | ------ |
| ``x0``       | a base (noise) sample, N(0, I); t = 0 is noise, t = 1 is data (the survey's convention) |
| ``x1``       | a data sample |
| ``a``, ``sigma`` | the conditional path psi_t(x0; x1) = a_t x1 + sigma_t x0 = mu_t(x1) + sigma_t x0 (survey eq. 110-111) |
| ``da``, ``dsigma`` | their time derivatives: the target velocity u_t = da_t x1 + dsigma_t x0 (eq. 112) |
| ``v``        | the network's velocity v_theta(x, t) |

Every path here is Gaussian with a mean linear in x1, so one interface covers rectified flow's straight line
(eq. 103), flow matching's OT path with sigma_min (Box 11) and its diffusion (variance-preserving) path.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, t) -> v, t of shape (B,)


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (x.dim() - 1)))  # (B,) -> (B, 1, ..., 1)


class GaussianPath:
    """p_t(x | x1) = N(a_t x1, sigma_t^2 I), reached by psi_t(x0; x1) = a_t x1 + sigma_t x0 from x0 ~ N(0, I).

    Subclasses define a, sigma and their derivatives for t in [0, t_max]; ``t_max`` < 1 where the path is singular
    at t = 1. Lipman et al. 2023 (lipman2023flow), survey eq. 110-112; chapter 7, "Flow matching".
    """

    t_max: float = 1.0

    def a(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def da(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dsigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dlog_a(self, t: torch.Tensor) -> torch.Tensor:
        """d log a_t / dt (overridden where a closed form avoids dividing by a small a_t)."""
        return self.da(t) / self.a(t)

    def sample_xt(self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = psi_t(x0; x1) = a_t x1 + sigma_t x0 (eq. 111). t: (B,)."""
        return _bcast(self.a(t), x1) * x1 + _bcast(self.sigma(t), x0) * x0

    def target(self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """u_t = d/dt psi_t(x0; x1) = da_t x1 + dsigma_t x0, the regression target of eq. 112."""
        return _bcast(self.da(t), x1) * x1 + _bcast(self.dsigma(t), x0) * x0


class OTPath(GaussianPath):
    """mu_t = t x1, sigma_t = 1 - (1 - sigma_min) t: the optimal-transport path of flow matching (Box 11).

    With sigma_min = 0 it is rectified flow's straight line x_t = (1 - t) x0 + t x1 with target x1 - x0
    (Liu et al. 2023, survey eq. 103-104)."""

    def __init__(self, sigma_min: float = 0.0):
        if not 0 <= sigma_min < 1:
            raise ValueError(f"sigma_min must be in [0, 1), got {sigma_min}")
        self.sigma_min = sigma_min

    def a(self, t):
        return t

    def sigma(self, t):
        return 1 - (1 - self.sigma_min) * t

    def da(self, t):
        return torch.ones_like(t)

    def dsigma(self, t):
        return torch.full_like(t, -(1 - self.sigma_min))


class VPPath(GaussianPath):
    """The diffusion path of flow matching: mu_t = alpha_{1-t} x1, sigma_t = sqrt(1 - alpha_{1-t}^2), with
    alpha_s = exp(-T(s) / 2), T(s) = beta_min s + (beta_max - beta_min) s^2 / 2: the variance-preserving SDE of
    Song et al. 2021 run backwards in time (Lipman et al. 2023, eq. 18-19). sigma_t -> 0 at t = 1, where the
    target velocity blows up, so t stops at ``t_max`` = 1 - 1e-3."""

    t_max = 1.0 - 1e-3

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self.beta_min, self.beta_max = beta_min, beta_max

    def beta(self, s: torch.Tensor) -> torch.Tensor:
        return self.beta_min + (self.beta_max - self.beta_min) * s

    def a(self, t):
        s = 1 - t
        return torch.exp(-0.5 * (self.beta_min * s + 0.5 * (self.beta_max - self.beta_min) * s**2))

    def sigma(self, t):
        return (1 - self.a(t) ** 2).clamp_min(0).sqrt()

    def dlog_a(self, t):
        return 0.5 * self.beta(1 - t)  # d/dt [-T(1 - t) / 2] = beta(1 - t) / 2

    def da(self, t):
        return self.dlog_a(t) * self.a(t)

    def dsigma(self, t):
        return -self.a(t) * self.da(t) / self.sigma(t)  # d/dt sqrt(1 - a^2)


def sample_t(n: int, path: GaussianPath, device=None) -> torch.Tensor:
    """t ~ U[0, t_max], shape (n,)."""
    return (torch.rand(n) * path.t_max).to(device)


def fm_loss(v_fn: VelocityFn, path: GaussianPath, x1: torch.Tensor, x0: torch.Tensor | None = None) -> torch.Tensor:
    """L_FM = E_{t, x1, x0} ||v_theta(psi_t(x0; x1), t) - d/dt psi_t(x0; x1)||^2 per dimension (survey eq. 112, Box 11).

    ``x0`` defaults to fresh noise (independent coupling); pass coupled noise for minibatch OT, or the noise that
    generated ``x1`` for reflow. Shapes: x1, x0 (B, ...). Chapter 7, "Rectified flow" and "Flow matching".
    """
    x0 = torch.randn_like(x1) if x0 is None else x0
    t = sample_t(x1.shape[0], path, x1.device)
    return F.mse_loss(v_fn(path.sample_xt(x0, x1, t), t), path.target(x0, x1, t))


def eps_loss(eps_fn: VelocityFn, path: GaussianPath, x1: torch.Tensor) -> torch.Tensor:
    """The DDPM objective on the same path: E ||eps_theta(a_t x1 + sigma_t eps, t) - eps||^2 (survey eq. 83 in
    continuous time), the baseline of the survey's table XI. Chapter 7, "Flow matching against diffusion"."""
    eps = torch.randn_like(x1)
    t = sample_t(x1.shape[0], path, x1.device)
    return F.mse_loss(eps_fn(path.sample_xt(eps, x1, t), t), eps)


def clipped_prediction(path: GaussianPath, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, clip_x1: float | None):
    """x1_hat = (x - sigma_t eps) / a_t, clipped to [-clip_x1, clip_x1] when ``clip_x1`` is set, and the eps that
    the clipped x1_hat implies, (x - a_t x1_hat) / sigma_t: chapter 6's ``clip_x0`` on a Gaussian path."""
    a, sigma = _bcast(path.a(t), x), _bcast(path.sigma(t), x)
    x1_hat = (x - sigma * eps) / a
    if clip_x1 is None:
        return x1_hat, eps
    x1_hat = x1_hat.clamp(-clip_x1, clip_x1)
    return x1_hat, (x - a * x1_hat) / sigma


def velocity_from_eps(eps_fn: VelocityFn, path: GaussianPath, clip_x1: float | None = None) -> VelocityFn:
    """The probability-flow velocity of a noise predictor: with x1_hat = (x - sigma_t eps_hat) / a_t,
    v = da_t x1_hat + dsigma_t eps_hat = (dlog_a_t) x + (dsigma_t - dlog_a_t sigma_t) eps_hat.
    On the VP path this is (beta / 2) (x - eps_hat / sigma_t), the diffusion model's ODE (Song et al. 2021). On the
    OT path a_0 = 0 and dlog_a = 1/t, so a noise predictor there can only be sampled from t > 0. ``clip_x1`` clips
    x1_hat to the data's range and recomputes eps_hat from it, chapter 6's ``clip_x0``."""

    def v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = eps_fn(x, t)
        if clip_x1 is not None:
            x1_hat, eps = clipped_prediction(path, x, t, eps, clip_x1)
            return _bcast(path.da(t), x) * x1_hat + _bcast(path.dsigma(t), x) * eps
        r = path.dlog_a(t)
        return _bcast(r, x) * x + _bcast(path.dsigma(t) - r * path.sigma(t), x) * eps

    return v


__all__ = ["GaussianPath", "OTPath", "VPPath", "VelocityFn", "eps_loss", "fm_loss", "sample_t", "velocity_from_eps"]

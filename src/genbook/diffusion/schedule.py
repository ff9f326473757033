"""Noise schedules and the closed-form forward process of DDPM.

| name in code  | symbol |
| ------------- | ------ |
| ``t``         | a step index 0..T-1 (0-based: ``t = 0`` is the survey's step 1), shape (B,) long, or float for EDM |
| ``betas``     | beta_t, the variance added at step t |
| ``alphas``    | alpha_t = 1 - beta_t |
| ``alpha_bar`` | alpha_bar_t = prod_{s <= t} alpha_s, the signal variance left at step t |
| ``x0``, ``xt``, ``eps`` | clean data, its noisy version at step t, the Gaussian noise that made it |

q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I) (survey eq. 82). Schedules and samplers never know
the network: they take ``eps_fn(x, t, y)``. Chapter 6, "The forward process".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def _bcast(v: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """v[t] reshaped to broadcast over x: (T,) indexed by (B,) -> (B, 1, ..., 1)."""
    return v.to(x.device)[t].float().view(-1, *([1] * (x.dim() - 1)))


@dataclass
class Schedule:
    """A discrete variance schedule beta_1..beta_T and everything derived from it (Ho et al. 2020, section 2)."""

    betas: torch.Tensor  # (T,) float64

    def __post_init__(self):
        self.betas = self.betas.double()
        if self.betas.dim() != 1 or not ((self.betas > 0) & (self.betas < 1)).all():
            raise ValueError("betas must be a 1-D tensor with every value in (0, 1)")
        self.alphas = 1 - self.betas
        self.alpha_bar = torch.cumprod(self.alphas, 0)
        self.alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bar[:-1]])

    @property
    def T(self) -> int:  # noqa: N802 - the papers' name
        return len(self.betas)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (survey eq. 82)."""
        ab = _bcast(self.alpha_bar, t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps

    def predict_x0(self, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t) (survey eq. 84)."""
        ab = _bcast(self.alpha_bar, t, xt)
        return (xt - (1 - ab).sqrt() * eps) / ab.sqrt()

    def posterior(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(x_{t-1} | x_t, x_0), a Gaussian (Ho et al. 2020, eq. 6-7).

        mean = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0 + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t,
        variance = beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t.
        """
        ab, ab_prev, beta = (_bcast(v, t, xt) for v in (self.alpha_bar, self.alpha_bar_prev, self.betas))
        mean = ab_prev.sqrt() * beta / (1 - ab) * x0 + (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab) * xt
        return mean, (1 - ab_prev) / (1 - ab) * beta

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t); falls with t (C6.1)."""
        ab = self.alpha_bar[t]
        return ab / (1 - ab)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """EDM's noise level of step t, sigma = sqrt((1 - alpha_bar) / alpha_bar): x_t / sqrt(alpha_bar) = x_0 + sigma eps."""
        ab = self.alpha_bar[t]
        return ((1 - ab) / ab).sqrt()

    def t_of_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        """The fractional step whose sigma equals ``sigma``, interpolating log sigma linearly between steps."""
        log_sig = self.sigma(torch.arange(self.T)).log()  # increasing in t
        s = sigma.double().log().clamp(log_sig[0], log_sig[-1])
        hi = torch.searchsorted(log_sig, s).clamp(1, self.T - 1)
        lo = hi - 1
        w = (s - log_sig[lo]) / (log_sig[hi] - log_sig[lo])
        return (lo + w).float()


def linear_schedule(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:  # noqa: N803
    """DDPM's linear betas from 1e-4 to 0.02 over 1000 steps, rescaled by 1000 / T for other T (Ho et al. 2020)."""
    scale = 1000 / T
    return Schedule(torch.linspace(beta_start * scale, beta_end * scale, T, dtype=torch.float64))


def cosine_alpha_bar(u: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """alpha_bar(u) = f(u) / f(0), f(u) = cos^2((u + s) / (1 + s) * pi / 2), u = t / T in [0, 1] (Nichol & Dhariwal 2021, eq. 17)."""
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return f / math.cos(s / (1 + s) * math.pi / 2) ** 2


def cosine_schedule(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Schedule:  # noqa: N803
    """Betas from the cosine alpha_bar: beta_t = 1 - alpha_bar(t / T) / alpha_bar((t - 1) / T), clipped at ``max_beta``."""
    u = torch.arange(T + 1, dtype=torch.float64) / T
    ab = cosine_alpha_bar(u, s)
    return Schedule((1 - ab[1:] / ab[:-1]).clamp(max=max_beta))

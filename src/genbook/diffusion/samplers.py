"""The training loss and the samplers of chapter 6: DDPM, DDIM (and its inversion), guidance, EDM's Heun sampler.

| name in code | symbol |
| ------------ | ------ |
| ``eps_fn``   | the noise predictor eps_theta(x_t, t, y): any callable (x, t, y) -> tensor shaped like x |
| ``steps``    | the decreasing step indices a sampler visits, a subset of 0..T-1 |
| ``eta``      | DDIM's stochasticity: 0 deterministic, 1 the DDPM posterior variance (survey eq. 85) |
| ``w``        | the classifier-free guidance weight (survey eq. 92) |

Every sampler reads like its box or equation in the survey; none knows the network's architecture.
Randomness comes from ``generator`` on the CPU, so a seed gives the same samples on any device. Chapter 6.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from genbook.diffusion.schedule import Schedule, _bcast

EpsFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def _randn(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=generator).to(device)


def _steps_tensor(t: int, n: int, device) -> torch.Tensor:
    return torch.full((n,), t, dtype=torch.long, device=device)


def eps_loss(eps_fn: EpsFn, sched: Schedule, x0: torch.Tensor, y: torch.Tensor | None = None, p_uncond: float = 0.0) -> torch.Tensor:
    """L_simple = E_{t, eps} ||eps - eps_theta(x_t, t, y)||^2 per dimension (survey eq. 83, Box 8 training).

    With ``p_uncond`` > 0 each label is replaced by -1 ("no label") with that probability: the label dropout
    that lets one network give both eps(x, t, y) and eps(x, t, none) for classifier-free guidance (eq. 92).
    """
    b = x0.shape[0]
    t = torch.randint(0, sched.T, (b,), device=x0.device)
    eps = torch.randn_like(x0)
    if y is not None and p_uncond > 0:  # y may be labels (B,) or a caption's tokens (B, L): a dropped row becomes -1
        drop = (torch.rand(b, device=y.device) < p_uncond).view(b, *[1] * (y.dim() - 1))
        y = torch.where(drop, torch.full_like(y, -1), y)
    return F.mse_loss(eps_fn(sched.q_sample(x0, t, eps), t, y), eps)


def _x0_and_eps(sched: Schedule, x: torch.Tensor, tt: torch.Tensor, eps: torch.Tensor, clip_x0: float | None):
    """x0_hat from eq. 84, clipped to [-clip_x0, clip_x0] when given, and the eps consistent with the clipped x0_hat.

    Early in sampling alpha_bar_t is tiny and eq. 84 divides the network's error by sqrt(alpha_bar_t); clipping
    x0_hat to the data's range is the standard remedy (Ho et al. 2020's released code, Nichol & Dhariwal 2021)."""
    x0_hat = sched.predict_x0(x, tt, eps)
    if clip_x0 is None:
        return x0_hat, eps
    x0_hat = x0_hat.clamp(-clip_x0, clip_x0)
    ab = _bcast(sched.alpha_bar, tt, x)
    return x0_hat, (x - ab.sqrt() * x0_hat) / (1 - ab).sqrt()


@torch.no_grad()
def ddpm_sample(
    eps_fn: EpsFn,
    sched: Schedule,
    shape,
    y: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device="cpu",
    clip_x0: float | None = None,
) -> torch.Tensor:
    """Ancestral sampling, survey Box 8: x_T ~ N(0, I); for t = T..1, x_{t-1} ~ N(mu(x_t, x0_hat), beta_t I) with mu
    the posterior mean of q(x_{t-1} | x_t, x0_hat). Unclipped, mu = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t),
    the form of the box. No noise at the last step. T network evaluations. ``clip_x0`` clips x0_hat to the data's range.
    """
    x = _randn(shape, generator, device)
    for t in reversed(range(sched.T)):
        tt = _steps_tensor(t, shape[0], device)
        x0_hat, _ = _x0_and_eps(sched, x, tt, eps_fn(x, tt, y), clip_x0)
        x, _ = sched.posterior(x0_hat, x, tt)
        if t > 0:
            x = x + _bcast(sched.betas, tt, x).sqrt() * _randn(shape, generator, device)
    return x


def ddim_steps(T: int, n: int) -> list[int]:  # noqa: N803
    """n evenly spaced step indices from T-1 down to 0 (DDIM's subsequence tau, Song et al. 2021)."""
    if not 1 <= n <= T:
        raise ValueError(f"the number of DDIM steps must be between 1 and T={T}, got {n}")
    return sorted({round(i * (T - 1) / max(n - 1, 1)) for i in range(n)}, reverse=True) if n > 1 else [T - 1]


def _alpha_bar_at(sched: Schedule, t: int, x: torch.Tensor) -> torch.Tensor:
    """alpha_bar_t broadcast over x, with t = -1 meaning clean data (alpha_bar = 1)."""
    if t < 0:
        return torch.ones(x.shape[0], *([1] * (x.dim() - 1)), device=x.device)
    return _bcast(sched.alpha_bar, _steps_tensor(t, x.shape[0], x.device), x)


def ddim_step(
    eps_fn: EpsFn,
    sched: Schedule,
    x: torch.Tensor,
    t: int,
    t_prev: int,
    y: torch.Tensor | None = None,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    clip_x0: float | None = None,
) -> torch.Tensor:
    """One DDIM update from step t to step t_prev < t (t_prev = -1: to clean data), survey eq. 84-85:
    x_prev = sqrt(alpha_bar_prev) x0_hat + sqrt(1 - alpha_bar_prev - sigma^2) eps_hat + sigma z,
    sigma = eta sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_prev)."""
    tt = _steps_tensor(t, x.shape[0], x.device)
    x0_hat, eps = _x0_and_eps(sched, x, tt, eps_fn(x, tt, y), clip_x0)
    ab, ab_prev = _alpha_bar_at(sched, t, x), _alpha_bar_at(sched, t_prev, x)
    sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).sqrt()
    x = ab_prev.sqrt() * x0_hat + (1 - ab_prev - sigma**2).clamp_min(0).sqrt() * eps
    if eta > 0 and t_prev >= 0:
        x = x + sigma * _randn(x.shape, generator, x.device)
    return x


@torch.no_grad()
def ddim_sample(
    eps_fn: EpsFn,
    sched: Schedule,
    shape,
    steps: int | list[int] = 50,
    eta: float = 0.0,
    y: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    x_T: torch.Tensor | None = None,  # noqa: N803
    device="cpu",
    clip_x0: float | None = None,
) -> torch.Tensor:
    """DDIM (survey eq. 84-85) over a decreasing subset of steps, one :func:`ddim_step` (one network evaluation)
    per step; with eta = 0 the map from x_T to x_0 is deterministic. ``clip_x0`` as in :func:`ddpm_sample`."""
    taus = ddim_steps(sched.T, steps) if isinstance(steps, int) else list(steps)
    x = _randn(shape, generator, device) if x_T is None else x_T.clone()
    for i, t in enumerate(taus):
        x = ddim_step(eps_fn, sched, x, t, taus[i + 1] if i + 1 < len(taus) else -1, y, eta, generator, clip_x0)
    return x


@torch.no_grad()
def ddim_invert(
    eps_fn: EpsFn,
    sched: Schedule,
    x0: torch.Tensor,
    steps: int | list[int] = 50,
    y: torch.Tensor | None = None,
    clip_x0: float | None = None,
) -> torch.Tensor:
    """Run deterministic DDIM backwards, x_0 -> x_T, reusing eps_theta at the next step's time: the latent that
    ``ddim_sample(..., eta=0, x_T=...)`` maps back to (approximately) x0. ``clip_x0`` clips each x0 estimate as the
    sampler does. Used by DIRE in chapter 12."""
    taus = list(reversed(ddim_steps(sched.T, steps) if isinstance(steps, int) else list(steps)))  # increasing
    x = x0.clone()
    ab_prev = _alpha_bar_at(sched, -1, x0)  # clean data
    for t in taus:
        tt = _steps_tensor(t, x0.shape[0], x0.device)
        ab = _alpha_bar_at(sched, t, x)
        eps = eps_fn(x, tt, y)
        x0_hat = (x - (1 - ab_prev).sqrt() * eps) / ab_prev.sqrt()
        if clip_x0 is not None:
            x0_hat = x0_hat.clamp(-clip_x0, clip_x0)
        x = ab.sqrt() * x0_hat + (1 - ab).sqrt() * eps
        ab_prev = ab
    return x


def guide(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, w: float) -> torch.Tensor:
    """Classifier-free guidance's combination (survey eq. 92): (1 + w) eps_cond - w eps_uncond; w = 0 is the
    conditional prediction, and w > 0 moves away from the unconditional one."""
    return (1 + w) * eps_cond - w * eps_uncond


def classifier_free(eps_fn: EpsFn, w: float) -> EpsFn:
    """eps_tilde(x, t, c) = (1 + w) eps(x, t, c) - w eps(x, t, none) (survey eq. 92; Ho & Salimans 2022).

    Both terms come from one batched call; label -1 means "no label". w = 0 is the plain conditional model.
    """

    def guided(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if w == 0:
            return eps_fn(x, t, y)
        both = eps_fn(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, -1)]))
        cond, uncond = both.chunk(2)
        return guide(cond, uncond, w)

    return guided


def classifier_guided(eps_fn: EpsFn, classifier: Callable, sched: Schedule, scale: float) -> EpsFn:
    """eps_hat = eps_theta(x_t, t) - s sqrt(1 - alpha_bar_t) grad_x log p_phi(y | x_t, t): survey eq. 91 written for
    eps-prediction (Dhariwal & Nichol 2021, algorithm 2). ``classifier(x_t, t)`` returns logits of a noise-aware classifier."""

    def guided(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        eps = eps_fn(x, t, None)
        if scale == 0:
            return eps
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            log_p = classifier(xg, t).log_softmax(-1).gather(1, y[:, None]).sum()
            (grad,) = torch.autograd.grad(log_p, xg)
        return eps - scale * (1 - _bcast(sched.alpha_bar, t, x)).sqrt() * grad

    return guided


def edm_sigmas(sched: Schedule, n: int, rho: float = 7.0, sigma_max: float = 80.0) -> torch.Tensor:
    """Karras et al. 2022's noise levels sigma_i = (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho, then 0.

    smin is the schedule's first step; smax its last, capped at EDM's 80 (a cosine schedule reaches thousands,
    and steps spent there are wasted: x is pure noise either way)."""
    s_min = sched.sigma(torch.tensor(0))
    s_max = sched.sigma(torch.tensor(sched.T - 1)).clamp(max=sigma_max)
    i = torch.arange(n, dtype=torch.float64) / max(n - 1, 1)
    sig = (s_max ** (1 / rho) + i * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    return torch.cat([sig, torch.zeros(1, dtype=torch.float64)])


@torch.no_grad()
def edm_heun_sample(
    eps_fn: EpsFn,
    sched: Schedule,
    shape,
    steps: int = 10,
    y: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device="cpu",
    clip_x0: float | None = None,
) -> torch.Tensor:
    """EDM's deterministic Heun sampler (Karras et al. 2022, algorithm 1) on the probability-flow ODE
    dx/dsigma = (x - D(x, sigma)) / sigma in the variable x = x_t / sqrt(alpha_bar_t) = x_0 + sigma eps, with the
    denoiser D(x, sigma) = x - sigma eps_theta(x / sqrt(1 + sigma^2), t(sigma)) built from the trained eps-network
    (no retraining). 2 * steps - 1 network evaluations. D is an estimate of x_0, so ``clip_x0`` clips it to the data's
    range, as in :func:`ddpm_sample`."""
    sig = edm_sigmas(sched, steps)

    def denoise(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        t = sched.t_of_sigma(s).to(device).expand(shape[0])
        x0_hat = x - float(s) * eps_fn(x / float((1 + s**2).sqrt()), t, y)
        return x0_hat if clip_x0 is None else x0_hat.clamp(-clip_x0, clip_x0)

    x = _randn(shape, generator, device) * float(sig[0])
    for i in range(steps):
        s, s_next = sig[i], sig[i + 1]
        d = (x - denoise(x, s)) / float(s)
        x_next = x + float(s_next - s) * d  # Euler step
        if s_next > 0:  # Heun's correction
            d_next = (x_next - denoise(x_next, s_next)) / float(s_next)
            x_next = x + float(s_next - s) * (d + d_next) / 2
        x = x_next
    return x

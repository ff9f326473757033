"""ODE samplers for a learned velocity field, and the straightness of the paths they follow (chapter 7).

| name in code | symbol |
| ------------ | ------ |
| ``v_fn``     | the velocity v_theta(x, t), called with t of shape (B,) |
| ``x0``       | the starting points at t = 0 (noise), shape (B, ...) |
| ``steps``    | N, the number of solver steps of size 1/N |
| ``nfe``      | network evaluations: N for Euler, 2N for Heun, counted for the adaptive solver |

dZ_t/dt = v_theta(Z_t, t) from Z_0 ~ N(0, I) to Z_1 (survey eq. 105). Euler is Box 10 and Box 11's sampler.
"""

from __future__ import annotations

import numpy as np
import torch

from genbook.flow_matching.paths import GaussianPath, VelocityFn, _bcast, clipped_prediction


def _t(value: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), value, device=x.device, dtype=x.dtype)


def _solve(v_fn: VelocityFn, x0: torch.Tensor, steps: int, method: str, t1: float, keep: bool) -> list[torch.Tensor]:
    if method not in ("euler", "heun"):
        raise ValueError(f"method must be 'euler' or 'heun', got {method!r}")
    if steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    h = t1 / steps
    x, states = x0, [x0]
    for i in range(steps):
        t = i * h
        d = v_fn(x, _t(t, x))
        x_next = x + h * d  # Euler: Z <- Z + h v(Z, t)
        if method == "heun":
            x_next = x + h / 2 * (d + v_fn(x_next, _t(t + h, x)))  # trapezoid with the predicted end point
        x = x_next
        if keep:
            states.append(x)
    return states if keep else [x]


@torch.no_grad()
def euler(v_fn: VelocityFn, x0: torch.Tensor, steps: int, t1: float = 1.0) -> torch.Tensor:
    """Forward Euler, Box 10: for i = 0..N-1, t_i = i h, Z <- Z + h v_theta(Z, t_i). N evaluations.
    Chapter 7, "Rectified flow"."""
    return _solve(v_fn, x0, steps, "euler", t1, keep=False)[-1]


@torch.no_grad()
def heun(v_fn: VelocityFn, x0: torch.Tensor, steps: int, t1: float = 1.0) -> torch.Tensor:
    """Heun's method (explicit trapezoid): an Euler predictor, then the average of the slopes at both ends.
    Second order; 2N evaluations. Chapter 7, "Rectified flow"."""
    return _solve(v_fn, x0, steps, "heun", t1, keep=False)[-1]


@torch.no_grad()
def trajectory(v_fn: VelocityFn, x0: torch.Tensor, steps: int, method: str = "euler", t1: float = 1.0) -> torch.Tensor:
    """The states Z_{t_0}, ..., Z_{t_N} of a fixed-step solve from t = 0, shape (N + 1, B, ...)."""
    return torch.stack(_solve(v_fn, x0, steps, method, t1, keep=True))


@torch.no_grad()
def adaptive(v_fn: VelocityFn, x0: torch.Tensor, rtol: float = 1e-3, atol: float = 1e-3, t1: float = 1.0) -> tuple[torch.Tensor, int]:
    """Dormand-Prince RK45 with error control (scipy's ``solve_ivp``) on the whole batch as one system, as in the
    survey's table XI, whose NFE column counts the evaluations such a solver needs. Returns (Z_1, nfe)."""
    from scipy.integrate import solve_ivp

    shape, device, dtype = x0.shape, x0.device, x0.dtype
    nfe = 0

    def f(t: float, y: np.ndarray) -> np.ndarray:
        nonlocal nfe
        nfe += 1
        x = torch.from_numpy(y).to(device=device, dtype=dtype).view(shape)
        return v_fn(x, _t(t, x)).flatten().double().cpu().numpy()

    sol = solve_ivp(f, (0.0, t1), x0.flatten().double().cpu().numpy(), method="RK45", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"the adaptive solver failed: {sol.message}")
    return torch.from_numpy(sol.y[:, -1]).to(device=device, dtype=dtype).view(shape), nfe


@torch.no_grad()
def ddim(
    eps_fn: VelocityFn, path: GaussianPath, x0: torch.Tensor, steps: int, t1: float = 1.0, clip_x1: float | None = None
) -> torch.Tensor:
    """DDIM (eta = 0) for a noise predictor on a Gaussian path, chapter 6's sampler in this chapter's time: on the
    even grid t_i = i t1 / N, predict x1_hat = (x - sigma_t eps_hat) / a_t, then jump to
    x <- a_{t'} x1_hat + sigma_{t'} eps_hat. It integrates the probability-flow ODE of :func:`velocity_from_eps`
    to first order, and exactly wherever eps_hat is constant along the path (a single data point), which is why
    it copes with the VP path's stiff start, where a_t is tiny. ``clip_x1`` clips x1_hat to the data's range and
    recomputes eps_hat from it (chapter 6's ``clip_x0``). N evaluations; needs a_t > 0 on the grid (the VP path,
    not the OT path at t = 0). Chapter 7, "Flow matching against diffusion"."""
    if steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    grid = torch.linspace(0.0, t1, steps + 1, dtype=torch.float64)
    if not bool((path.a(grid[:-1]) > 0).all()):
        raise ValueError("ddim needs a_t > 0 on its grid; this path has a_t = 0 there (use it on the VP path)")
    grid = grid.tolist()
    x = x0
    for t, t_next in zip(grid[:-1], grid[1:]):
        tt = _t(t, x)
        x1_hat, eps = clipped_prediction(path, x, tt, eps_fn(x, tt), clip_x1)
        nt = _t(t_next, x)
        x = _bcast(path.a(nt), x) * x1_hat + _bcast(path.sigma(nt), x) * eps
    return x


@torch.no_grad()
def straightness(v_fn: VelocityFn, x0: torch.Tensor, steps: int = 100) -> float:
    """S = int_0^1 E ||(Z_1 - Z_0) - v_theta(Z_t, t)||^2 dt along the model's own paths (Liu et al. 2023, eq. 4),
    per dimension: 0 exactly when every path is a straight line travelled at constant speed, which one Euler
    step then solves exactly. Estimated on an Euler solve with ``steps`` steps. Chapter 7, "Reflow"."""
    path = trajectory(v_fn, x0, steps)  # (N + 1, B, ...)
    chord = path[-1] - path[0]
    vel = (path[1:] - path[:-1]) * steps  # v_theta(Z_{t_i}, t_i), exactly what Euler used
    return float(((vel - chord) ** 2).mean())


__all__ = ["adaptive", "ddim", "euler", "heun", "straightness", "trajectory"]

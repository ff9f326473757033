"""Continuous normalizing flows (Chen et al. 2018) with FFJORD's trace estimator (Grathwohl et al. 2019).

| name in code | symbol |
| ------------ | ------ |
| ``velocity`` | the vector field v_theta(x, t); dx/dt = v (t = 0 base, t = 1 data) |
| ``div``      | the divergence tr(dv/dx), exact (D backward passes) or Hutchinson's eps^T (dv/dx) eps (one) |
| ``eps``      | Hutchinson's probe: E[eps eps^T] = I (Rademacher +-1 here) |
| ``delta``    | the accumulated change of log-density along the path |

Instantaneous change of variables: d log p(x(t)) / dt = -tr(dv/dx), so
log p_1(x_1) = log p_0(x_0) - int_0^1 tr(dv/dx(x(t), t)) dt, integrated backwards from the data point.
The exact trace costs D vector-Jacobian products; Hutchinson's estimator costs one and is unbiased
(survey section 4.1, FFJORD); a log-determinant of a dense Jacobian would cost O(D^3). Chapter 4, "CNF and FFJORD".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from genbook.nets import MLP


def divergence_exact(v: torch.Tensor, x: torch.Tensor, create_graph: bool = True) -> torch.Tensor:
    """tr(dv/dx) per example from D backward passes; v = f(x) must be built from x. Shapes (B, *event) -> (B,)."""
    v_flat = v.flatten(1)  # (B, D)
    div = v.new_zeros(v.shape[0])
    for i in range(v_flat.shape[1]):
        g = torch.autograd.grad(v_flat[:, i].sum(), x, create_graph=create_graph, retain_graph=True)[0]
        div = div + g.flatten(1)[:, i]  # dv_i / dx_i; examples do not interact, so summing over B is exact
    return div


def divergence_hutchinson(v: torch.Tensor, x: torch.Tensor, eps: torch.Tensor, create_graph: bool = True) -> torch.Tensor:
    """Hutchinson's unbiased estimate eps^T (dv/dx) eps from one vector-Jacobian product. Shapes (B, *event) -> (B,)."""
    g = torch.autograd.grad((v * eps).sum(), x, create_graph=create_graph, retain_graph=True)[0]  # eps^T dv/dx
    return (g * eps).flatten(1).sum(1)


def rademacher(shape: Sequence[int], generator: torch.Generator | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """Entries +-1 with probability 1/2 each: E[eps eps^T] = I, the lowest-variance Hutchinson probe."""
    return (torch.randint(0, 2, tuple(shape), generator=generator).float() * 2 - 1).to(device)


class TimeMLP(nn.Module):
    """v(x, t) for vector data: an MLP on [x, t] with smooth (SiLU) activations, so its Jacobian is smooth too."""

    def __init__(self, dim: int, hidden: Sequence[int] = (64, 64)):
        super().__init__()
        self.net = MLP(dim + 1, dim, hidden)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, t.expand(x.shape[0]).unsqueeze(1)], 1))  # (B, D + 1) -> (B, D)


class TimeConvNet(nn.Module):
    """v(x, t) for images: 3x3 convolutions on x with t appended as a constant channel. (B, C, H, W) -> same."""

    def __init__(self, channels: int = 1, width: int = 32, depth: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        c = channels + 1
        for _ in range(depth - 1):
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.SiLU()]
            c = width
        layers.append(nn.Conv2d(c, channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t_map = t.expand(x.shape[0]).view(-1, 1, 1, 1).expand(-1, 1, *x.shape[2:])  # (B, 1, H, W)
        return self.net(torch.cat([x, t_map], 1))


def integrate(
    velocity,
    x: torch.Tensor,
    t0: float,
    t1: float,
    steps: int,
    method: str = "rk4",
    eps: torch.Tensor | None = None,
    with_div: bool = False,
    create_graph: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed-step solve of dx/dt = velocity(x, t) from t0 to t1 (Euler or classic RK4), with t passed as a 0-dim tensor;
    returns (x(t1), int_{t0}^{t1} div dt), the integral 0 without ``with_div``. ``eps`` None: exact trace, else
    Hutchinson's with that probe. Without ``create_graph`` the states are detached after every evaluation (evaluation:
    no graph through the solve). Chapter 4, "CNF and FFJORD"; chapter 7 reuses it for flow matching's likelihood."""
    h = (t1 - t0) / steps
    acc = x.new_zeros(x.shape[0])

    def f(x_: torch.Tensor, t_: float) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.tensor(t_, device=x.device)
        if not with_div:
            return velocity(x_, t), acc
        with torch.enable_grad():
            x_ = x_ if x_.requires_grad and create_graph else x_.detach().requires_grad_(True)  # never flag the caller's tensor
            v = velocity(x_, t)
            div = divergence_exact(v, x_, create_graph) if eps is None else divergence_hutchinson(v, x_, eps, create_graph)
        return (v, div) if create_graph else (v.detach(), div.detach())

    for k in range(steps):
        t = t0 + k * h
        if method == "euler":
            v, d = f(x, t)
            x, acc = x + h * v, acc + h * d
        else:  # classic RK4 on the augmented state (x, acc)
            v1, d1 = f(x, t)
            v2, d2 = f(x + h / 2 * v1, t + h / 2)
            v3, d3 = f(x + h / 2 * v2, t + h / 2)
            v4, d4 = f(x + h * v3, t + h)
            x = x + h / 6 * (v1 + 2 * v2 + 2 * v3 + v4)
            acc = acc + h / 6 * (d1 + 2 * d2 + 2 * d3 + d4)
    return x, acc


def ode_log_prob(
    velocity,
    x: torch.Tensor,
    steps: int = 8,
    method: str = "rk4",
    trace: str = "exact",
    generator: torch.Generator | None = None,
    t1: float = 1.0,
    create_graph: bool = False,
) -> torch.Tensor:
    """log p_{t1}(x) = log N(z_0; 0, I) - int_0^{t1} tr(dv/dx) dt by a fixed-step solve backwards from z_{t1} = x, in nats
    per example, shape (B,). ``trace="exact"`` costs D vector-Jacobian products per evaluation, ``"hutchinson"`` one,
    with one Rademacher probe per solve (FFJORD). Exact up to the solver's error. Chapters 4 and 7."""
    if trace not in ("exact", "hutchinson"):
        raise ValueError(f"trace must be 'exact' or 'hutchinson', got {trace!r}")
    eps = None if trace == "exact" else rademacher(x.shape, generator, x.device)
    z0, acc = integrate(velocity, x, t1, 0.0, steps, method, eps, with_div=True, create_graph=create_graph)  # acc = -int_0^t1 div
    return (-0.5 * z0**2 - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1) + acc


class CNF(nn.Module):
    """A continuous normalizing flow: x(1) = x(0) + int_0^1 v(x(t), t) dt with x(0) ~ N(0, I).

    ``trace`` is "exact" or "hutchinson"; the ODE is solved with ``steps`` fixed steps of RK4 (or Euler),
    and training backpropagates through the solver (no adjoint: the models of chapter 4 are small).
    Chen et al. 2018 (chen2018neural), Grathwohl et al. 2019 (grathwohl2019ffjord). Chapter 4, "CNF and FFJORD".
    """

    def __init__(self, velocity: nn.Module, event_shape: tuple[int, ...], steps: int = 8, method: str = "rk4", trace: str = "exact"):
        super().__init__()
        if method not in ("euler", "rk4"):
            raise ValueError(f"method must be 'euler' or 'rk4', got {method!r}")
        if trace not in ("exact", "hutchinson"):
            raise ValueError(f"trace must be 'exact' or 'hutchinson', got {trace!r}")
        self.velocity, self.event_shape = velocity, tuple(event_shape)
        self.steps, self.method, self.trace = steps, method, trace

    def _integrate(self, x: torch.Tensor, t0: float, t1: float, eps: torch.Tensor | None, with_div: bool, steps: int | None = None):
        return integrate(self.velocity, x, t0, t1, steps or self.steps, self.method, eps, with_div, torch.is_grad_enabled())

    def log_prob(self, x: torch.Tensor, trace: str | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """log p_1(x) = log N(x(0); 0, I) - int_0^1 div dt, solving backwards from x(1) = x. Shape (B,)."""
        return ode_log_prob(self.velocity, x, self.steps, self.method, trace or self.trace, generator, create_graph=torch.is_grad_enabled())

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        device = next(self.parameters()).device
        z = torch.randn((n, *self.event_shape), generator=generator).to(device)
        return self._integrate(z, 0.0, 1.0, None, with_div=False)[0]

    @torch.no_grad()
    def trajectory(self, z: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """The states x(0), x(1/n), ..., x(1) from base points z, with ``steps`` = n solver steps (default:
        the model's own). Shape (n + 1, B, *event)."""
        n = steps or self.steps
        states = [z]
        for k in range(n):
            states.append(self._integrate(states[-1], k / n, (k + 1) / n, None, with_div=False, steps=1)[0])
        return torch.stack(states)

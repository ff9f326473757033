"""Progressive distillation (Salimans & Ho 2022): a student learns to take one DDIM step where its teacher takes two.

| name in code    | symbol |
| --------------- | ------ |
| ``teacher_steps`` | the teacher's decreasing step indices; the student takes every ``per_step``-th of them (2: every other) |
| ``z_t``         | a noisy sample at the student's step t |
| ``x0_tilde``    | the target: the clean image that makes one DDIM step from z_t land where the teacher's steps land |

Repeating the procedure halves the number of sampling steps each round: 8 -> 4 -> 2 -> 1 (survey eq. 89). The same
target works for one student step per k teacher steps (``per_step``): chapter 6 has time for one round, and turns
DDIM's 4 steps into 1 with a student that predicts x0 (:class:`X0Student`). Chapter 6, "Fewer steps".
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from genbook.diffusion.samplers import EpsFn, _alpha_bar_at, _steps_tensor, ddim_step
from genbook.diffusion.schedule import Schedule, _bcast


def halve(steps: list[int]) -> list[int]:
    """Every other step of a decreasing grid: the student's grid when ``steps`` is the teacher's (len must be even)."""
    if len(steps) % 2:
        raise ValueError(f"the teacher's grid must have an even number of steps, got {len(steps)}")
    return steps[::2]


class X0Student(nn.Module):
    """A student that predicts the clean image, x0_hat = net(z_t, t, y), and gives a sampler the eps that goes with it,
    eps = (z_t - sqrt(alpha_bar_t) x0_hat) / sqrt(1 - alpha_bar_t) (eq. 84 solved for eps), with x0_hat clipped to
    [-clip, clip] as the samplers clip theirs; so ``ddim_sample`` runs it unchanged.

    Salimans & Ho 2022 (section 4) replace eps by a parameterization that stays stable as the SNR goes to zero (x,
    x and eps from separate outputs, or v); this is the first. From eps, x0_hat = (z_t - sqrt(1 - alpha_bar) eps) /
    sqrt(alpha_bar) multiplies any error in eps by sqrt((1 - alpha_bar) / alpha_bar), which is about 2000 at the last
    step of chapter 6's cosine schedule. For integer steps t (the DDIM samplers), not EDM's fractional ones.
    A student step that ends at a noisy t_next can have a target x0_tilde outside [-clip, clip], where the clipped
    step misses the teacher's z''; chapter 6's student has one step, to clean data, whose target lies inside."""

    def __init__(self, net: nn.Module, sched: Schedule, clip: float | None = 1.0):
        super().__init__()
        self.net, self.sched, self.clip = net, sched, clip

    def predict_x0(self, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The network's clean image, unclipped (the distillation loss regresses it)."""
        return self.net(z, t, y)

    def forward(self, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        x0 = self.predict_x0(z, t, y)
        if self.clip is not None:
            x0 = x0.clamp(-self.clip, self.clip)
        ab = _bcast(self.sched.alpha_bar, t, z)
        return (z - ab.sqrt() * x0) / (1 - ab).sqrt()


@torch.no_grad()
def distillation_target(
    teacher: EpsFn,
    sched: Schedule,
    z_t: torch.Tensor,
    t: int,
    t_mid: int | list[int],
    t_next: int,
    y: torch.Tensor | None = None,
    clip_x0: float | None = None,
) -> torch.Tensor:
    """x0_tilde = (z'' - r z_t) / (sqrt(alpha_bar_next) - r sqrt(alpha_bar_t)), r = sqrt(1 - alpha_bar_next) / sqrt(1 - alpha_bar_t),
    where z'' comes from two teacher DDIM steps t -> t_mid -> t_next (Salimans & Ho 2022, algorithm 2), or from
    more when ``t_mid`` lists several intermediate steps; each teacher step clips its x0 estimate when ``clip_x0`` is
    set, as the teacher's sampler does. A DDIM step t -> t_next whose x0_hat is x0_tilde lands exactly on z''; at
    t_next = -1 (clean) the target is z'' itself."""
    path = [t, *([t_mid] if isinstance(t_mid, int) else t_mid), t_next]
    z_next = z_t
    for a, b in zip(path[:-1], path[1:], strict=True):
        z_next = ddim_step(teacher, sched, z_next, a, b, y, clip_x0=clip_x0)
    ab, ab_next = _alpha_bar_at(sched, t, z_t), _alpha_bar_at(sched, t_next, z_t)
    r = (1 - ab_next).sqrt() / (1 - ab).sqrt()
    return (z_next - r * z_t) / (ab_next.sqrt() - r * ab.sqrt())


def distillation_loss(
    student: nn.Module,
    teacher: EpsFn,
    sched: Schedule,
    x0: torch.Tensor,
    teacher_steps: list[int],
    y: torch.Tensor | None = None,
    clip_x0: float | None = None,
    per_step: int = 2,
) -> torch.Tensor:
    """E ||x0_hat_student(z_t) - x0_tilde||^2 weighted by max(SNR_t, 1) (the paper's truncated SNR weighting), with t drawn
    from the student's grid, every ``per_step``-th step of ``teacher_steps`` (2: Salimans & Ho 2022, algorithm 2; more:
    one student step for that many of the teacher's). An :class:`X0Student` gives x0_hat directly; any other student
    is read as an eps model, x0_hat by eq. 84. ``clip_x0`` as in :func:`distillation_target`: the teacher's steps then
    follow the sampler the student replaces."""
    if per_step < 2 or len(teacher_steps) % per_step:
        raise ValueError(f"the teacher's {len(teacher_steps)} steps must split into groups of per_step = {per_step} >= 2")
    grid = [*teacher_steps, -1]  # the teacher's steps, then clean data
    i = per_step * int(torch.randint(0, len(teacher_steps) // per_step, ()))  # a student step
    t, between, t_next = grid[i], grid[i + 1 : i + per_step], grid[i + per_step]
    tt = _steps_tensor(t, x0.shape[0], x0.device)
    z_t = sched.q_sample(x0, tt, torch.randn_like(x0))
    target = distillation_target(teacher, sched, z_t, t, between, t_next, y, clip_x0)
    if isinstance(student, X0Student):
        x0_hat = student.predict_x0(z_t, tt, y)
    else:
        x0_hat = sched.predict_x0(z_t, tt, student(z_t, tt, y))
    weight = sched.snr(torch.tensor(t)).clamp(min=1.0).float()
    return weight * F.mse_loss(x0_hat, target)


def new_student(teacher: nn.Module, sched: Schedule | None = None) -> nn.Module:
    """The student starts as a copy of the teacher (the paper's initialization). With ``sched``, an :class:`X0Student`
    instead: the copy's output layer (its last convolution or linear layer) is set to zero, so the student starts out
    predicting x0_hat = 0 from the teacher's features, and learns to read them as a clean image."""
    net = copy.deepcopy(teacher).train().requires_grad_(True)
    if sched is None:
        return net
    last = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not last:
        raise ValueError("an x0 student needs a teacher whose output layer is an nn.Conv2d or nn.Linear")
    nn.init.zeros_(last[-1].weight)
    if last[-1].bias is not None:
        nn.init.zeros_(last[-1].bias)
    return X0Student(net, sched)


__all__ = ["X0Student", "distillation_loss", "distillation_target", "halve", "new_student"]

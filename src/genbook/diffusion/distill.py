"""Progressive distillation (Salimans & Ho 2022): a student learns to take one DDIM step where its teacher takes two.

| name in code | symbol |
| ------------ | ------ |
| ``steps``    | the student's N decreasing step indices; the teacher walks the 2N-step grid through their midpoints |
| ``z_t``      | a noisy sample at the student's step t |
| ``x0_tilde`` | the target: the clean image that makes one DDIM step from z_t land where two teacher steps land |

Repeating the procedure halves the number of sampling steps each round: 8 -> 4 -> 2 -> 1 (survey eq. 89).
Chapter 6, "Fewer steps".
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from genbook.diffusion.samplers import EpsFn, _alpha_bar_at, _steps_tensor, ddim_step
from genbook.diffusion.schedule import Schedule


def halve(steps: list[int]) -> list[int]:
    """Every other step of a decreasing grid: the student's grid when ``steps`` is the teacher's (len must be even)."""
    if len(steps) % 2:
        raise ValueError(f"the teacher's grid must have an even number of steps, got {len(steps)}")
    return steps[::2]


@torch.no_grad()
def distillation_target(
    teacher: EpsFn, sched: Schedule, z_t: torch.Tensor, t: int, t_mid: int, t_next: int, y: torch.Tensor | None = None
) -> torch.Tensor:
    """x0_tilde = (z'' - r z_t) / (sqrt(alpha_bar_next) - r sqrt(alpha_bar_t)), r = sqrt(1 - alpha_bar_next) / sqrt(1 - alpha_bar_t),
    where z'' comes from two teacher DDIM steps t -> t_mid -> t_next (Salimans & Ho 2022, algorithm 2). A DDIM step
    t -> t_next whose x0_hat is x0_tilde lands exactly on z''; at t_next = -1 (clean) the target is z'' itself."""
    z_next = ddim_step(teacher, sched, ddim_step(teacher, sched, z_t, t, t_mid, y), t_mid, t_next, y)
    ab, ab_next = _alpha_bar_at(sched, t, z_t), _alpha_bar_at(sched, t_next, z_t)
    r = (1 - ab_next).sqrt() / (1 - ab).sqrt()
    return (z_next - r * z_t) / (ab_next.sqrt() - r * ab.sqrt())


def distillation_loss(
    student: nn.Module, teacher: EpsFn, sched: Schedule, x0: torch.Tensor, teacher_steps: list[int], y: torch.Tensor | None = None
) -> torch.Tensor:
    """E ||x0_hat_student(z_t) - x0_tilde||^2 weighted by max(SNR_t, 1) (the paper's truncated SNR weighting), with t drawn
    from the student's grid (every other step of ``teacher_steps``). Salimans & Ho 2022, algorithm 2."""
    grid = [*teacher_steps, -1]  # the teacher's steps, then clean data
    i = 2 * int(torch.randint(0, len(teacher_steps) // 2, ()))  # a student step: even positions of the teacher's grid
    t, t_mid, t_next = grid[i], grid[i + 1], grid[i + 2]
    tt = _steps_tensor(t, x0.shape[0], x0.device)
    z_t = sched.q_sample(x0, tt, torch.randn_like(x0))
    target = distillation_target(teacher, sched, z_t, t, t_mid, t_next, y)
    x0_hat = sched.predict_x0(z_t, tt, student(z_t, tt, y))
    weight = sched.snr(torch.tensor(t)).clamp(min=1.0).float()
    return weight * F.mse_loss(x0_hat, target)


def new_student(teacher: nn.Module) -> nn.Module:
    """The student starts as a copy of the teacher (the paper's initialization)."""
    return copy.deepcopy(teacher).train().requires_grad_(True)


__all__ = ["distillation_loss", "distillation_target", "halve", "new_student"]

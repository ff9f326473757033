"""Couplings of noise and data: minibatch optimal transport and reflow's model-generated pairs (chapter 7).

| name in code | symbol |
| ------------ | ------ |
| ``x0``, ``x1`` | noise and data minibatches, (B, ...) each |
| ``cost``     | C_ij = ||x0_i - x1_j||^2 |

Flow matching draws (x0, x1) independently, so the straight lines it regresses on cross each other and the
learned paths bend around the crossings. Pairing each noise sample with a nearby data point (the exact OT
assignment within a minibatch, Tong et al. 2024) or with the point the current model sends
it to (reflow, Liu et al. 2023) removes crossings, and the paths straighten.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment

from genbook.flow_matching.paths import VelocityFn
from genbook.flow_matching.solvers import heun


@torch.no_grad()
def ot_couple(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Reorder the noise x0 so that pairing x0[i] with x1[i] minimizes sum_i ||x0_i - x1_i||^2: the exact OT plan
    between the two empirical minibatches (a permutation, by the Birkhoff-von Neumann theorem). Returns x0 permuted.
    O(B^3) with the Hungarian algorithm: fine for B in the hundreds. Chapter 7, "Minibatch OT"."""
    if x0.shape != x1.shape:
        raise ValueError(f"ot_couple needs minibatches of the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
    cost = torch.cdist(x0.flatten(1).double(), x1.flatten(1).double()) ** 2  # (B, B)
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    perm = torch.empty(len(cols), dtype=torch.long)
    perm[torch.as_tensor(cols)] = torch.as_tensor(rows)  # x1[j] is paired with x0[perm[j]]
    return x0[perm.to(x0.device)]


@torch.no_grad()
def reflow_pairs(v_fn: VelocityFn, x0: torch.Tensor, steps: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """(Z_0, Z_1) with Z_1 = ODE_v(Z_0) solved by Heun with ``steps`` steps: the coupling of the next rectified flow
    ("reflow", Liu et al. 2023; survey section 7.1). Training on it with the straight path gives 2-rectified flow."""
    return x0, heun(v_fn, x0, steps)


__all__ = ["ot_couple", "reflow_pairs"]

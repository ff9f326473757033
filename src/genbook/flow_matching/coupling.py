"""Couplings of noise and data: minibatch optimal transport and reflow's model-generated pairs (chapter 7).

| name in code | symbol |
| ------------ | ------ |
| ``x0``, ``x1`` | noise and data minibatches, (B, ...) each |
| ``cost``     | C_ij = ||x0_i - x1_j||^2 |

Flow matching draws (x0, x1) independently, so the straight lines it regresses on cross each other and the
learned paths bend around the crossings. Pairing each noise sample with a nearby data point (the exact OT
assignment within a minibatch, Tong et al. 2024) removes most crossings, and the paths straighten. Reflow's
coupling (Liu et al. 2023) is the trained flow itself: pairs (z0, heun(v, z0)), as chapter 7 builds them.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment


@torch.no_grad()
def ot_couple(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Reorder the noise x0 so that pairing x0[i] with x1[i] minimizes sum_i ||x0_i - x1_i||^2: the exact OT plan
    between the two empirical minibatches (a permutation, by the Birkhoff-von Neumann theorem). Returns x0 permuted.
    O(B^3) with the Hungarian algorithm: fine for B in the hundreds. Chapter 7, "Minibatch OT"."""
    if x0.shape != x1.shape:
        raise ValueError(f"ot_couple needs minibatches of the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
    cost = torch.cdist(x1.flatten(1).double(), x0.flatten(1).double()) ** 2  # (B, B), C_ji = ||x1_j - x0_i||^2
    _, cols = linear_sum_assignment(cost.cpu().numpy())  # x1[j] is paired with x0[cols[j]]
    return x0[torch.as_tensor(cols, device=x0.device)]


__all__ = ["ot_couple"]

"""Measuring temporal coherence of moving-sprite clips against the data's physics (chapter 8, C8.5).

| name in code | symbol |
| ------------ | ------ |
| ``clips``    | videos (N, T, 3, H, W) in [0, 1] on the constant background of :func:`genbook.data.moving_sprites` |
| ``track``    | the sprite's centre per frame, (N, T, 2) in pixels (x, y) |
| ``accel``    | second differences of the track, p_{t+1} - 2 p_t + p_{t-1}: zero for constant velocity |

Every sprite of the data moves at constant velocity and bounces off the walls, so a coherent clip has a track
whose acceleration is zero except at the (rare) bounces. A clip whose frames are shuffled, or whose sprite
jitters, flickers or vanishes, does not. Eyeballing frame strips is not a measurement; this is.
"""

from __future__ import annotations

import torch

BACKGROUND = 0.08  # the background grey of genbook.data's sprites


def track(clips: torch.Tensor, threshold: float = 0.25, background: float = BACKGROUND) -> torch.Tensor:
    """Centre of mass of the foreground (pixels whose largest channel differs from the background by more than
    ``threshold``, weighted by that difference) in each frame: (N, T, 3, H, W) -> (N, T, 2), NaN where a frame has
    no foreground. Chapter 8, "Measuring coherence"."""
    if clips.dim() != 5:
        raise ValueError(f"clips must be (N, T, C, H, W), got shape {tuple(clips.shape)}")
    diff = (clips.float() - background).abs().amax(2)  # (N, T, H, W)
    weight = torch.where(diff > threshold, diff, torch.zeros_like(diff))
    mass = weight.sum((2, 3))  # (N, T)
    h, w = clips.shape[-2:]
    ys = torch.arange(h, dtype=torch.float32, device=clips.device) + 0.5  # pixel centres
    xs = torch.arange(w, dtype=torch.float32, device=clips.device) + 0.5
    cx = (weight * xs).sum((2, 3)) / mass
    cy = (weight * ys[:, None]).sum((2, 3)) / mass
    centre = torch.stack([cx, cy], -1)  # (N, T, 2)
    return torch.where(mass[..., None] > 0, centre, torch.full_like(centre, float("nan")))


def acceleration(tracks: torch.Tensor) -> torch.Tensor:
    """|p_{t+1} - 2 p_t + p_{t-1}| in pixels per frame^2: (N, T, 2) -> (N, T - 2)."""
    return (tracks[:, 2:] - 2 * tracks[:, 1:-1] + tracks[:, :-2]).norm(dim=-1)


def incoherence(clips: torch.Tensor, missing: float = 8.0, **kwargs) -> torch.Tensor:
    """Per clip, the median acceleration of the tracked sprite (pixels / frame^2; the median ignores a bounce);
    a frame without a sprite counts as an acceleration of ``missing`` pixels. (N, T, 3, H, W) -> (N,).
    Lower is more coherent; constant-velocity clips score about 0. Chapter 8, "Measuring coherence"."""
    acc = acceleration(track(clips, **kwargs))
    return torch.nan_to_num(acc, nan=missing).median(1).values


def shuffle_frames(clips: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The failure case: each clip's frames in a random order (same frames, no motion). (N, T, ...) -> same."""
    n, t = clips.shape[:2]
    order = torch.argsort(torch.rand(n, t, generator=generator), dim=1).to(clips.device)  # (N, T)
    return torch.gather(clips, 1, order.view(n, t, 1, 1, 1).expand_as(clips))


__all__ = ["BACKGROUND", "acceleration", "incoherence", "shuffle_frames", "track"]

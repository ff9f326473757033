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

from genbook.data import SPRITE_BACKGROUND

BACKGROUND = SPRITE_BACKGROUND  # for tests and plots; tracking estimates each frame's background itself


def track(clips: torch.Tensor, threshold: float = 0.25, max_area: float = 0.5) -> torch.Tensor:
    """Centre of mass of the foreground in each frame: (N, T, 3, H, W) -> (N, T, 2), NaN where a frame has no
    foreground or where more than ``max_area`` of it is foreground (then there is no single sprite to track).

    The background of a frame is its per-channel median (the sprite covers well under half of a frame), so a
    generator that draws the wrong background colour is still tracked; the foreground is every pixel whose largest
    channel differs from it by more than ``threshold``, weighted by that difference. Chapter 8, "Measuring coherence".
    """
    if clips.dim() != 5:
        raise ValueError(f"clips must be (N, T, C, H, W), got shape {tuple(clips.shape)}")
    background = clips.float().flatten(3).median(3).values[..., None, None]  # (N, T, C, 1, 1)
    diff = (clips.float() - background).abs().amax(2)  # (N, T, H, W)
    weight = torch.where(diff > threshold, diff, torch.zeros_like(diff))
    area = (weight > 0).float().mean((2, 3))  # (N, T), share of the frame that is foreground
    mass = torch.where(area <= max_area, weight.sum((2, 3)), torch.zeros_like(area))  # (N, T)
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
    Lower is more coherent; the data's constant-velocity clips score about 0.5 (rasterized shapes make the tracked
    centre wobble by a fraction of a pixel), frame-shuffled ones about 5. Chapter 8, "Measuring coherence"."""
    acc = acceleration(track(clips, **kwargs))
    return torch.nan_to_num(acc, nan=missing).median(1).values


def speed(clips: torch.Tensor, **kwargs) -> torch.Tensor:
    """Per clip, the median distance the tracked sprite moves between frames, in pixels per frame (NaN where it
    cannot be tracked): a sprite that stands still is perfectly "coherent" by :func:`incoherence` and wrong all the
    same, since the data's sprites move at 1.5 pixels per frame. (N, T, 3, H, W) -> (N,)."""
    tracks = track(clips, **kwargs)
    return (tracks[:, 1:] - tracks[:, :-1]).norm(dim=-1).median(1).values


def moves_like_data(
    clips: torch.Tensor, data_speed: float = 1.5, max_incoherence: float = 1.5, tolerance: float = 0.5, **kwargs
) -> torch.Tensor:
    """Per clip, True when its sprite is tracked in every frame, moves at the data's speed (within ``tolerance`` times
    ``data_speed``) and with a median acceleration below ``max_incoherence`` pixels / frame^2: (N, ...) -> (N,) bool.
    Neither number alone is enough: a still sprite has no acceleration, shuffled frames have the right speed on
    average. Practically all of the data's own clips pass (2000 of 2000 for seed 0); about 1% of frame-shuffled
    ones do."""
    tracks = track(clips, **kwargs)
    acc = acceleration(tracks).median(1).values  # NaN when any frame is untracked
    v = (tracks[:, 1:] - tracks[:, :-1]).norm(dim=-1).median(1).values
    ok = (acc < max_incoherence) & ((v - data_speed).abs() < tolerance * data_speed)
    return ok & ~torch.isnan(tracks).any((1, 2))


def sprite_colour(clips: torch.Tensor, threshold: float = 0.25) -> torch.Tensor:
    """The mean colour of each clip's foreground pixels over all its frames (the sprite's appearance), with the
    foreground found as in :func:`track`: (N, T, C, H, W) -> (N, C); NaN for a clip without foreground."""
    background = clips.float().flatten(3).median(3).values[..., None, None]  # (N, T, C, 1, 1)
    fg = ((clips.float() - background).abs().amax(2, keepdim=True) > threshold).float()  # (N, T, 1, H, W)
    return (clips.float() * fg).sum((1, 3, 4)) / fg.sum((1, 3, 4))


def shuffle_frames(clips: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The failure case: each clip's frames in a random order (same frames, no motion). (N, T, ...) -> same."""
    n, t = clips.shape[:2]
    order = torch.argsort(torch.rand(n, t, generator=generator), dim=1).to(clips.device)  # (N, T)
    return torch.gather(clips, 1, order.view(n, t, 1, 1, 1).expand_as(clips))


__all__ = ["BACKGROUND", "acceleration", "incoherence", "moves_like_data", "shuffle_frames", "speed", "sprite_colour", "track"]

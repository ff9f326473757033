"""Measuring temporal coherence of moving-sprite clips against the data's physics (chapter 11, C11.5).

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
MAX_INCOHERENCE, SPEED_TOLERANCE = 1.5, 0.5  # what "moves like the data" allows (see moves_like_data)


def _foreground(clips: torch.Tensor, threshold: float) -> torch.Tensor:
    """How far each pixel is from its frame's background (the per-channel median: the sprite covers well under half of
    a frame), where that exceeds ``threshold`` in its largest channel, else 0: (N, T, C, H, W) -> (N, T, H, W)."""
    background = clips.float().flatten(3).median(3).values[..., None, None]  # (N, T, C, 1, 1)
    diff = (clips.float() - background).abs().amax(2)  # (N, T, H, W)
    return torch.where(diff > threshold, diff, torch.zeros_like(diff))


def track(clips: torch.Tensor, threshold: float = 0.25, max_area: float = 0.5) -> torch.Tensor:
    """Centre of mass of the foreground in each frame: (N, T, 3, H, W) -> (N, T, 2), NaN where a frame has no
    foreground or where more than ``max_area`` of it is foreground (then there is no single sprite to track).

    The foreground is every pixel whose largest channel differs from the frame's median colour by more than
    ``threshold``, weighted by that difference, so a generator that draws the wrong background colour is still
    tracked. Chapter 11, "Measuring coherence".
    """
    if clips.dim() != 5:
        raise ValueError(f"clips must be (N, T, C, H, W), got shape {tuple(clips.shape)}")
    weight = _foreground(clips, threshold)  # (N, T, H, W)
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


def _incoherence(tracks: torch.Tensor, missing: float) -> torch.Tensor:
    return torch.nan_to_num(acceleration(tracks), nan=missing).median(1).values


def _speed(tracks: torch.Tensor) -> torch.Tensor:
    return (tracks[:, 1:] - tracks[:, :-1]).norm(dim=-1).nanmedian(1).values  # over the steps with both ends tracked


def _moves(tracks: torch.Tensor, data_speed: float, max_incoherence: float, tolerance: float) -> torch.Tensor:
    acc = acceleration(tracks).median(1).values  # NaN, and so never below the bound, when a frame is untracked
    return (acc < max_incoherence) & ((_speed(tracks) - data_speed).abs() < tolerance * data_speed)


def incoherence(clips: torch.Tensor, missing: float = 8.0, **kwargs) -> torch.Tensor:
    """Per clip, the median acceleration of the tracked sprite (pixels / frame^2; the median ignores a bounce);
    a frame without a sprite counts as an acceleration of ``missing`` pixels. (N, T, 3, H, W) -> (N,).
    Lower is more coherent; the data's constant-velocity clips score about 0.5 (rasterized shapes make the tracked
    centre wobble by a fraction of a pixel), frame-shuffled ones about 5. Chapter 11, "Measuring coherence"."""
    return _incoherence(track(clips, **kwargs), missing)


def speed(clips: torch.Tensor, **kwargs) -> torch.Tensor:
    """Per clip, the median distance the tracked sprite moves between frames, in pixels per frame, over the steps
    whose two frames are both tracked (NaN if there are none): a sprite that stands still is perfectly "coherent" by
    :func:`incoherence` and wrong all the same, since the data's sprites move at 1.5 pixels per frame.
    (N, T, 3, H, W) -> (N,)."""
    return _speed(track(clips, **kwargs))


def moves_like_data(
    clips: torch.Tensor,
    data_speed: float = 1.5,
    max_incoherence: float = MAX_INCOHERENCE,
    tolerance: float = SPEED_TOLERANCE,
    **kwargs,
) -> torch.Tensor:
    """Per clip, True when its sprite is tracked in every frame, moves at the data's speed (within ``tolerance`` times
    ``data_speed``) and with a median acceleration below ``max_incoherence`` pixels / frame^2: (N, ...) -> (N,) bool.
    Neither number alone is enough: a still sprite has no acceleration, shuffled frames have the right speed on
    average. Practically all of the data's own clips pass (2000 of 2000 for seed 0); a few percent of frame-shuffled
    ones do."""
    return _moves(track(clips, **kwargs), data_speed, max_incoherence, tolerance)


def summary(clips: torch.Tensor, data_speed: float = 1.5, missing: float = 8.0, **kwargs) -> dict[str, float]:
    """One tracking pass, four numbers for a batch of clips: mean incoherence, median speed (over the clips with a
    speed), the share of clips that move like the data, and the share of frames without a trackable sprite.
    Chapter 11's coherence table has one row of these per model."""
    tracks = track(clips, **kwargs)
    return {
        "incoherence": _incoherence(tracks, missing).mean().item(),
        "speed": _speed(tracks).nanmedian().item(),
        "moves like data": _moves(tracks, data_speed, MAX_INCOHERENCE, SPEED_TOLERANCE).float().mean().item(),
        "untracked frames": torch.isnan(tracks).any(-1).float().mean().item(),
    }


def sprite_colour(clips: torch.Tensor, threshold: float = 0.25) -> torch.Tensor:
    """The mean colour of each clip's foreground pixels (as :func:`track` finds them) over all its frames: the
    sprite's appearance. (N, T, C, H, W) -> (N, C); NaN for a clip without foreground."""
    fg = (_foreground(clips, threshold) > 0).float()[:, :, None]  # (N, T, 1, H, W)
    return (clips.float() * fg).sum((1, 3, 4)) / fg.sum((1, 3, 4))


def shuffle_frames(clips: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The failure case: each clip's frames in a random order (same frames, no motion). (N, T, ...) -> same."""
    n, t = clips.shape[:2]
    order = torch.argsort(torch.rand(n, t, generator=generator), dim=1).to(clips.device)  # (N, T)
    return torch.gather(clips, 1, order.view(n, t, 1, 1, 1).expand_as(clips))


__all__ = [
    "BACKGROUND",
    "acceleration",
    "incoherence",
    "moves_like_data",
    "shuffle_frames",
    "speed",
    "sprite_colour",
    "summary",
    "track",
]

"""Datasets for every chapter: real digits offline, procedural sets made here, torchvision sets online.

| name in code | meaning |
| ------------ | ------- |
| ``x_int``    | digit pixels as integers 0..16 (K = 17 grey levels), shape (N, 1, 8, 8) |
| ``x``        | pixels scaled to [0, 1] ("unit") or [-1, 1] ("signed") |
| ``y``        | class labels 0..9 |
| ``K``        | number of grey levels, 17 for digits |

The digits split (train = first 1000, val = next 350, test = last 447) is the one of the
*Deep Generative Modeling* book's code, so likelihoods compare with it (chapter 1, "The data").
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import tempfile
import urllib.parse
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from genbook.runtime import ConfigError

DIGIT_LEVELS = 17  # K: scikit-learn's digits hold the integers 0..16
DIGIT_SPLITS = {"train": slice(0, 1000), "val": slice(1000, 1350), "test": slice(1350, 1797)}
TOY_SETS = ("moons", "8gaussians", "checkerboard", "spirals")
ONLINE_SETS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10"}
DATASETS = ("digits", *ONLINE_SETS)

# Where torchvision fetches each online set from; probed before any download starts so that an
# offline machine gets an answer in seconds instead of a hang.
MIRRORS = {
    "mnist": ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"],
    "fashion_mnist": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
    "cifar10": ["https://www.cs.toronto.edu/~kriz/"],
}


class DatasetUnavailableError(RuntimeError):
    """A dataset that cannot be had on this machine now (offline, or torchvision missing)."""


def _check_name(name: str, valid: tuple[str, ...], what: str) -> str:
    key = name.strip().lower().replace("-", "_")
    if key not in valid:
        raise ConfigError(f"unknown {what} {name!r}; valid names are {', '.join(valid)}")
    return key


# ----------------------------------------------------------------------------- digits


@dataclass(frozen=True)
class ImageSet:
    """Images with labels. ``x_int`` keeps the discrete pixel values; ``unit``/``signed`` scale them."""

    x_int: torch.Tensor  # (N, C, H, W), integer levels 0..levels-1
    y: torch.Tensor  # (N,)
    levels: int

    def __len__(self) -> int:
        return self.x_int.shape[0]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x_int.shape[1:])

    @property
    def dims(self) -> int:
        """D, the number of pixel values per image (64 for digits)."""
        return math.prod(self.shape)

    def unit(self) -> torch.Tensor:
        """Pixels in [0, 1]: x = x_int / (K - 1)."""
        return to_unit(self.x_int, self.levels)

    def signed(self) -> torch.Tensor:
        """Pixels in [-1, 1]: x = 2 x_int / (K - 1) - 1."""
        return self.unit() * 2 - 1


def to_unit(x_int: torch.Tensor, levels: int = DIGIT_LEVELS) -> torch.Tensor:
    return x_int.float() / (levels - 1)


def categorical_mean(logits: torch.Tensor) -> torch.Tensor:
    """Expected pixel value in [0, 1] under per-pixel categorical logits: sum_k softmax_k * k / (K - 1).

    The "mean image" of the 17-way decoders of chapter 2. Shapes: (B, K, *pixels) -> (B, *pixels).
    """
    probs = logits.float().softmax(1)
    values = torch.linspace(0, 1, logits.shape[1], device=logits.device)  # k / (K - 1)
    return torch.einsum("bk...,k->b...", probs, values)


def quantize(x_unit: torch.Tensor, levels: int = DIGIT_LEVELS) -> torch.Tensor:
    """Round images in [0, 1] back to the integer levels 0..K-1 (clamping what falls outside)."""
    return (x_unit.clamp(0, 1) * (levels - 1)).round().long()


def dequantize(x_int: torch.Tensor, levels: int = DIGIT_LEVELS, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantization y = (x_int + u) / K, u ~ U[0, 1)^D, so y lives in [0, 1)^D.

    A continuous density p(y) then bounds the discrete likelihood (Theis et al. 2016):
    -log P(x_int) <= E_u[-log p(y)] + D log K; see :func:`genbook.metrics.dequantized_nll`.
    """
    u = torch.rand(x_int.shape, generator=generator, device="cpu").to(x_int.device)
    y = (x_int.float() + u) / levels
    # float32 rounding can turn x + u (u just below 1) into x + 1: keep y strictly inside its cell
    upper = torch.nextafter((x_int + 1).float() / levels, torch.zeros((), device=y.device))
    return torch.minimum(y, upper)


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.int64), bunch.target.astype(np.int64)


def digits(split: str = "train") -> ImageSet:
    """scikit-learn's 8x8 digits (1797 images, 17 grey levels) with the book's fixed split.

    ``split`` is ``train`` (first 1000), ``val`` (next 350), ``test`` (last 447) or ``all``.
    """
    images, labels = _digits_arrays()
    if split == "all":
        sl = slice(0, len(images))
    else:
        sl = DIGIT_SPLITS[_check_name(split, (*DIGIT_SPLITS,), "split")]
    x = torch.from_numpy(images[sl]).unsqueeze(1)  # (N, 1, 8, 8)
    return ImageSet(x_int=x, y=torch.from_numpy(labels[sl]), levels=DIGIT_LEVELS)


# ----------------------------------------------------------------------------- online sets


def data_dir() -> Path:
    return Path(os.environ.get("GENBOOK_DATA", Path.home() / ".cache" / "genbook" / "data"))


def _reachable(url: str, timeout: float) -> bool:
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def load_dataset(name: str, split: str = "train", root: str | os.PathLike | None = None, timeout: float = 5.0) -> ImageSet:
    """Load ``digits`` (offline) or ``mnist`` / ``fashion_mnist`` / ``cifar10`` through torchvision.

    Online sets are cached under ``root`` (default ``GENBOOK_DATA``). When they are not cached
    and no mirror answers within ``timeout`` seconds, or ``GENBOOK_OFFLINE=1``, this raises
    :class:`DatasetUnavailableError` saying what to do. Downloads go to a temporary folder that
    is moved into place only when complete, so a failure never leaves a partial file.
    ``split`` for online sets is ``train`` or ``test``.
    """
    key = _check_name(name, DATASETS, "dataset")
    if key == "digits":
        return digits(split)
    if split not in ("train", "test"):
        raise ConfigError(f"online datasets have splits 'train' and 'test', not {split!r}")
    root = Path(root) if root is not None else data_dir()
    target = root / key
    if not target.exists():
        _download(key, target, timeout)
    try:
        import torchvision.datasets as tvd
    except ImportError as exc:
        raise DatasetUnavailableError(
            f"{name!r} is cached in {target}, but loading it needs torchvision, which is not installed; "
            "`pip install torchvision` (matching your torch), or use load_dataset('digits')."
        ) from exc
    ds = getattr(tvd, ONLINE_SETS[key])(str(target), train=(split == "train"), download=False)
    data = torch.as_tensor(np.asarray(ds.data))
    x = data.permute(0, 3, 1, 2) if data.ndim == 4 else data.unsqueeze(1)  # (N, C, H, W)
    return ImageSet(x_int=x.long(), y=torch.as_tensor(np.asarray(ds.targets)).long(), levels=256)


def _download(key: str, target: Path, timeout: float) -> None:
    advice = (
        f"To go on: use load_dataset('digits') (always offline), or copy the torchvision files for "
        f"{key!r} into {target} (set GENBOOK_DATA to choose the folder), or connect and retry."
    )
    if os.environ.get("GENBOOK_OFFLINE", "") not in ("", "0"):
        raise DatasetUnavailableError(f"{key!r} is not cached and GENBOOK_OFFLINE is set. {advice}")
    if not any(_reachable(url, timeout) for url in MIRRORS[key]):
        raise DatasetUnavailableError(
            f"{key!r} is not cached in {target} and none of its download mirrors "
            f"({', '.join(MIRRORS[key])}) answered within {timeout:.0f} s: this machine looks offline. {advice}"
        )
    try:
        import torchvision.datasets as tvd
    except ImportError as exc:
        raise DatasetUnavailableError(
            f"downloading {key!r} needs torchvision, which is not installed; `pip install torchvision` "
            "(matching your torch), or use load_dataset('digits')."
        ) from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
    try:
        cls = getattr(tvd, ONLINE_SETS[key])
        for train in (True, False):
            cls(str(tmp), train=train, download=True)
        tmp.rename(target)
    except Exception as exc:
        raise DatasetUnavailableError(f"downloading {key!r} failed ({exc}). {advice}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- 2-D toys


def toy2d(name: str, n: int, seed: int = 0, noise: float = 0.05) -> torch.Tensor:
    """n points of a 2-D toy set (``moons``, ``8gaussians``, ``checkerboard``, ``spirals``), shape (n, 2).

    Each set is roughly centred with unit-order scale; ``8gaussians`` has modes on a circle of
    radius 2 with std 0.1 (the ring used for mode collapse in chapter 3).
    """
    key = _check_name(name, TOY_SETS, "2-D toy set")
    g = torch.Generator().manual_seed(seed)
    if key == "moons":
        t = torch.rand(n, generator=g) * math.pi
        upper = torch.rand(n, generator=g) < 0.5
        x = torch.where(upper, torch.cos(t), 1 - torch.cos(t))
        y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
        pts = torch.stack([x - 0.5, y - 0.25], 1) * 1.5
    elif key == "8gaussians":
        k = torch.randint(0, 8, (n,), generator=g)
        angle = k.float() * (2 * math.pi / 8)
        centres = 2.0 * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
        return centres + 0.1 * torch.randn(n, 2, generator=g)
    elif key == "checkerboard":
        # 8 unit squares of a 4x4 board on [-2, 2]^2, alternating like a chessboard
        col = torch.randint(0, 4, (n,), generator=g)
        row = 2 * torch.randint(0, 2, (n,), generator=g) + (col % 2)
        pts = torch.stack([col.float(), row.float()], 1) + torch.rand(n, 2, generator=g) - 2
        return pts
    else:  # spirals
        t = torch.sqrt(torch.rand(n, generator=g)) * 3 * math.pi
        arm = torch.randint(0, 2, (n,), generator=g).float() * 2 - 1  # +1 or -1: two interleaved arms
        pts = arm[:, None] * torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) / (1.5 * math.pi)
    return pts + noise * torch.randn(n, 2, generator=g)


# ----------------------------------------------------------------------------- sprites

SHAPES = ("square", "circle", "triangle")
COLOURS = torch.tensor([[0.9, 0.2, 0.2], [0.2, 0.8, 0.3], [0.25, 0.4, 0.95], [0.95, 0.8, 0.2]])  # (4, 3) RGB


def _shape_masks(shape: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, r: torch.Tensor, size: int) -> torch.Tensor:
    """Soft-free binary masks (N, size, size) of each shape centred at (cx, cy) with half-size r, in pixels."""
    grid = torch.arange(size, dtype=torch.float32) + 0.5
    dx = grid[None, None, :] - cx[:, None, None]  # (N, 1, W)
    dy = grid[None, :, None] - cy[:, None, None]  # (N, H, 1)
    r = r[:, None, None]
    square = (dx.abs() <= r) & (dy.abs() <= r)
    circle = dx**2 + dy**2 <= r**2
    triangle = (dy <= r) & (dy >= -r) & (dx.abs() <= (dy + r) / 2)  # apex up, base at the bottom
    masks = torch.stack([square, circle, triangle], 1)  # (N, 3, H, W)
    return masks[torch.arange(len(shape)), shape].float()


@dataclass(frozen=True)
class Sprites:
    """Coloured shapes on a dark background with their generating factors."""

    images: torch.Tensor  # (N, 3, H, W) in [0, 1]
    shape: torch.Tensor  # (N,) index into SHAPES
    colour: torch.Tensor  # (N,) index into COLOURS
    scale: torch.Tensor  # (N,) half-size in pixels
    position: torch.Tensor  # (N, 2) centre (x, y) in pixels


SPRITE_BACKGROUND = 0.08  # the grey behind every sprite


def sprites(n: int, size: int = 16, seed: int = 0) -> Sprites:
    """n images of one shape each, with known factors: shape, colour, scale, position."""
    return _draw_sprites(n, size, torch.Generator().manual_seed(seed))


def _draw_sprites(n: int, size: int, g: torch.Generator) -> Sprites:
    shape = torch.randint(0, len(SHAPES), (n,), generator=g)
    colour = torch.randint(0, len(COLOURS), (n,), generator=g)
    scale = size * (0.12 + 0.13 * torch.rand(n, generator=g))
    pos = scale[:, None] + (size - 2 * scale[:, None]) * torch.rand(n, 2, generator=g)
    mask = _shape_masks(shape, pos[:, 0], pos[:, 1], scale, size)
    images = SPRITE_BACKGROUND + mask[:, None] * (COLOURS[colour][:, :, None, None] - SPRITE_BACKGROUND)  # (N, 3, H, W)
    return Sprites(images, shape, colour, scale, pos)


@dataclass(frozen=True)
class MovingSprites:
    """Clips of one shape moving at constant velocity and bouncing off the walls."""

    clips: torch.Tensor  # (N, T, 3, H, W) in [0, 1]
    trajectory: torch.Tensor  # (N, T, 2) centre (x, y) in pixels, the ground-truth motion
    velocity: torch.Tensor  # (N, 2) initial velocity in pixels per frame
    shape: torch.Tensor  # (N,)
    colour: torch.Tensor  # (N,)


def _bounce(p: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Reflect unconstrained positions into [lo, hi] (a triangle wave), i.e. elastic bounces."""
    span = hi - lo
    q = torch.remainder(p - lo, 2 * span)
    return lo + torch.where(q > span, 2 * span - q, q)


def moving_sprites(n: int, frames: int = 8, size: int = 16, seed: int = 0, speed: float = 1.5) -> MovingSprites:
    """n clips of ``frames`` frames; each sprite moves with a random velocity of norm ``speed`` px/frame."""
    g = torch.Generator().manual_seed(seed)
    still = _draw_sprites(n, size, g)  # the velocities below continue the same random stream
    angle = 2 * math.pi * torch.rand(n, generator=g)
    vel = speed * torch.stack([torch.cos(angle), torch.sin(angle)], 1)  # (N, 2)
    t = torch.arange(frames, dtype=torch.float32)
    free = still.position[:, None, :] + t[None, :, None] * vel[:, None, :]  # (N, T, 2)
    lo, hi = still.scale[:, None, None], size - still.scale[:, None, None]
    traj = _bounce(free, lo, hi)
    flat = traj.reshape(-1, 2)  # (N*T, 2)
    rep = lambda v: v.repeat_interleave(frames)  # noqa: E731
    mask = _shape_masks(rep(still.shape), flat[:, 0], flat[:, 1], rep(still.scale), size)
    col = COLOURS[rep(still.colour)][:, :, None, None]
    clips = (SPRITE_BACKGROUND + mask[:, None] * (col - SPRITE_BACKGROUND)).reshape(n, frames, 3, size, size)
    return MovingSprites(clips, traj, vel, still.shape, still.colour)


# ----------------------------------------------------------------------------- captioned shapes

# One or two coloured shapes per image, with a caption from a small grammar (the text-to-image chapter). Layouts 0-3
# hold one shape, at the left, right, top or bottom; layouts 4 and 5 hold two, side by side or one above the other,
# slot 0 being the left (or upper) one. Every factor of every image is known, so prompt following is measured exactly.
LAYOUTS = ("left", "right", "top", "bottom", "side by side", "stacked")
SIZES = ("small", "big")
_HALF_SIZE = (2.25, 3.25)  # pixels, for a 16 x 16 image
_SLOT_CENTRES = (  # (x, y) of slot 0 and slot 1 in units of the image size, per layout
    ((0.25, 0.5), None),
    ((0.75, 0.5), None),
    ((0.5, 0.25), None),
    ((0.5, 0.75), None),
    ((0.25, 0.5), (0.75, 0.5)),
    ((0.5, 0.25), (0.5, 0.75)),
)
HELD_OUT = ((0, 2), (2, 1))  # (colour, shape) pairs never drawn in the "train" split: red triangles, blue circles
CAPTION_SPLITS = ("train", "test", "novel", "all")

_COLOUR_WORDS = (("red",), ("green",), ("blue",), ("yellow",))
_SHAPE_WORDS = (("square", "box"), ("circle", "disc"), ("triangle",))
_SIZE_WORDS = (("small", "little"), ("big", "large"))
_PLACE_WORDS = (
    ("on the left", "at the left"),
    ("on the right", "at the right"),
    ("at the top", "near the top"),
    ("at the bottom", "near the bottom"),
)
_RELATION_WORDS = {  # the first-named shape relative to the second
    "left of": ("left of", "to the left of"),
    "right of": ("right of", "to the right of"),
    "above": ("above", "over"),
    "below": ("below", "under"),
}


def caption_words() -> list[str]:
    """Every word the caption grammar can emit (the text encoders' vocabulary), sorted."""
    phrases = [w for group in (*_COLOUR_WORDS, *_SHAPE_WORDS, *_SIZE_WORDS, *_PLACE_WORDS) for w in group]
    phrases += [w for group in _RELATION_WORDS.values() for w in group] + ["a that is"]
    return sorted({word for phrase in phrases for word in phrase.split()})


@dataclass(frozen=True)
class CaptionedShapes:
    """Images of one or two shapes, their captions and every factor behind both.

    Per-slot factors are (N, 2) with -1 in slot 1 of a one-shape image; slot 0 is the left or upper shape.
    """

    images: torch.Tensor  # (N, 3, S, S) in [0, 1]
    captions: list[str]
    layout: torch.Tensor  # (N,) index into LAYOUTS
    colour: torch.Tensor  # (N, 2) index into COLOURS, -1 for no shape
    shape: torch.Tensor  # (N, 2) index into SHAPES, -1 for no shape
    size: torch.Tensor  # (N, 2) index into SIZES, -1 for no shape

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def pairs(self) -> torch.Tensor:
        """(N,) True where the image holds two shapes."""
        return self.layout >= 4

    def subset(self, idx: torch.Tensor | slice) -> CaptionedShapes:
        keep = torch.arange(len(self))[idx]
        return CaptionedShapes(
            self.images[keep],
            [self.captions[i] for i in keep.tolist()],
            self.layout[keep],
            self.colour[keep],
            self.shape[keep],
            self.size[keep],
        )


def _object_phrase(colour: int, shape: int, size: int, g: torch.Generator) -> str:
    pick = lambda options: options[int(torch.randint(len(options), (1,), generator=g))]  # noqa: E731
    adjective, noun = pick(_SIZE_WORDS[size]), pick(_SHAPE_WORDS[shape])
    colour_word = pick(_COLOUR_WORDS[colour])
    if torch.rand(1, generator=g).item() < 0.25:  # another word order: "a red circle that is small"
        return f"a {colour_word} {noun} that is {adjective}"
    return f"a {adjective} {colour_word} {noun}"


def _caption(layout: int, colour, shape, size, g: torch.Generator) -> str:
    flip = torch.rand(1, generator=g).item() < 0.5
    first = _object_phrase(colour[0], shape[0], size[0], g)
    if layout < 4:
        place = _PLACE_WORDS[layout][int(torch.randint(2, (1,), generator=g))]
        return f"{place} {first}" if flip else f"{first} {place}"
    second = _object_phrase(colour[1], shape[1], size[1], g)
    relation = ("left of", "right of") if layout == 4 else ("above", "below")
    if flip:  # name the right (lower) shape first: "a blue square right of a red circle"
        first, second, relation = second, first, relation[::-1]
    words = _RELATION_WORDS[relation[0]][int(torch.randint(2, (1,), generator=g))]
    return f"{first} {words} {second}"


def describe(layout: int, colour, shape, size) -> str:
    """The plain caption of a scene (first synonyms, the left or upper shape named first): "a small red circle on the
    left", "a big blue square left of a small green triangle". Per-slot factors as in ``CaptionedShapes``."""
    first = f"a {_SIZE_WORDS[size[0]][0]} {_COLOUR_WORDS[colour[0]][0]} {_SHAPE_WORDS[shape[0]][0]}"
    if layout < 4:
        return f"{first} {_PLACE_WORDS[layout][0]}"
    second = f"a {_SIZE_WORDS[size[1]][0]} {_COLOUR_WORDS[colour[1]][0]} {_SHAPE_WORDS[shape[1]][0]}"
    return f"{first} {'left of' if layout == 4 else 'above'} {second}"


def captioned_shapes(n: int, split: str = "train", seed: int = 0, size: int = 16) -> CaptionedShapes:
    """n captioned images of one or two shapes (half each), drawn procedurally.

    ``split``: "train" never draws a held-out (colour, shape) pair of ``HELD_OUT``; "test" is drawn the same way from
    another random stream (images no model trained on); "novel" puts a held-out pair in every image (in one slot, the
    other slot drawn freely); "all" draws every pair (for the attribute classifier, which must know them all).
    """
    _check_name(split, CAPTION_SPLITS, "caption split")
    if size < 12:
        raise ValueError(f"captioned shapes need at least 12 x 12 pixels for two shapes side by side, got {size}")
    g = torch.Generator().manual_seed(1000 * seed + CAPTION_SPLITS.index(split))
    layout = torch.cat([torch.randint(0, 4, (n - n // 2,), generator=g), torch.randint(4, 6, (n // 2,), generator=g)])
    layout = layout[torch.randperm(n, generator=g)]
    two = layout >= 4
    combos = torch.tensor([(c, s) for c in range(len(COLOURS)) for s in range(len(SHAPES))])  # (12, 2)
    seen = torch.tensor([tuple(c.tolist()) not in HELD_OUT for c in combos])
    pool = combos if split in ("novel", "all") else combos[seen]
    pair = pool[torch.randint(len(pool), (n, 2), generator=g)]  # (N, 2 slots, colour/shape)
    if split == "novel":  # one slot (the only one, or either of two) gets a held-out pair
        held = torch.tensor(HELD_OUT)[torch.randint(len(HELD_OUT), (n,), generator=g)]
        slot = torch.where(two, torch.randint(2, (n,), generator=g), 0)
        pair[torch.arange(n), slot] = held
    scale = torch.randint(2, (n, 2), generator=g)
    jitter = (torch.rand(n, 2, 2, generator=g) - 0.5) * 1.5  # up to 0.75 px either way, per slot and axis
    absent = torch.stack([torch.zeros(n, dtype=torch.bool), ~two], 1)  # (N, 2)
    colour = torch.where(absent, -1, pair[..., 0])
    shape = torch.where(absent, -1, pair[..., 1])
    scale = torch.where(absent, -1, scale)
    centres = torch.tensor([[c0, c1 or (0.0, 0.0)] for c0, c1 in _SLOT_CENTRES]) * size  # (6, 2 slots, xy)
    half = torch.tensor(_HALF_SIZE)[scale.clamp_min(0)] * size / 16  # (N, 2)
    pos = torch.minimum(torch.maximum(centres[layout] + jitter, half[..., None]), size - half[..., None])
    images = torch.full((n, 3, size, size), SPRITE_BACKGROUND)
    for s in range(2):  # paint slot 0, then slot 1 where there is one (never overlapping: slots are half an image apart)
        mask = _shape_masks(shape[:, s].clamp_min(0), pos[:, s, 0], pos[:, s, 1], half[:, s], size) * (~absent[:, s]).float()[:, None, None]
        colours = COLOURS[colour[:, s].clamp_min(0)][:, :, None, None]
        images = images + mask[:, None] * (colours - images)
    captions = [_caption(int(layout[i]), colour[i].tolist(), shape[i].tolist(), scale[i].tolist(), g) for i in range(n)]
    return CaptionedShapes(images, captions, layout, colour, shape, scale)


def caption_scenes(layout: torch.Tensor, colour: torch.Tensor, shape: torch.Tensor, size: torch.Tensor, seed: int = 0) -> list[str]:
    """Captions from the grammar (synonyms and word order drawn from ``seed``) for scenes given by their factors:
    ``layout`` (N,), per-slot ``colour``, ``shape``, ``size`` (N, 2) as in ``CaptionedShapes`` (slot 1 is ignored
    where the layout holds one shape). A captioner that reads the factors off an image writes its caption with this."""
    if not (len(layout) == len(colour) == len(shape) == len(size)):
        raise ValueError(f"one layout and one (colour, shape, size) per scene: got {len(layout)}, {len(colour)}, {len(shape)}, {len(size)}")
    g = torch.Generator().manual_seed(seed)
    return [_caption(int(layout[i]), colour[i].tolist(), shape[i].tolist(), size[i].tolist(), g) for i in range(len(layout))]


_WORD_INDEX = tuple({w: i for i, group in enumerate(groups) for w in group} for groups in (_COLOUR_WORDS, _SHAPE_WORDS, _SIZE_WORDS))


def read_caption(caption: str) -> dict[str, list[int] | int]:
    """What a caption of the grammar says, as factors: "layout" (an index into ``LAYOUTS``, -1 where the caption
    does not say), and per slot "colour", "shape", "size" (lists of two, -1 where not said; slot 0 is the left or
    upper shape, as in ``CaptionedShapes``). The inverse of the grammar, for counting what captions get right."""
    words = caption.lower().split()
    colours, forms, sizes = _WORD_INDEX
    starts = [i for i, w in enumerate(words) if w == "a"] + [len(words)]
    objects = []
    for a, b in zip(starts, starts[1:]):
        span = words[a:b]
        objects.append(
            (
                next((colours[w] for w in span if w in colours), -1),
                next((forms[w] for w in span if w in forms), -1),
                next((sizes[w] for w in span if w in sizes), -1),
            )
        )
    out = {"layout": -1, "colour": [-1, -1], "shape": [-1, -1], "size": [-1, -1]}
    if len(objects) == 2:
        relation = next((w for w in words if w in ("left", "right", "above", "over", "below", "under")), None)
        if relation is None:
            return out
        out["layout"] = 4 if relation in ("left", "right") else 5
        if relation in ("right", "below", "under"):  # the first-named shape is in slot 1
            objects = objects[::-1]
    elif len(objects) == 1:
        place = next((w for w in words if w in ("left", "right", "top", "bottom")), None)
        out["layout"] = -1 if place is None else ("left", "right", "top", "bottom").index(place)
    for slot, (c, f, z) in enumerate(objects[:2]):
        out["colour"][slot], out["shape"][slot], out["size"][slot] = c, f, z
    return out


def said_right_wrong(said: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Of the slots that hold a shape (``true`` >= 0), the share whose factor a caption said right and the share it
    said wrong, as a tensor [right, wrong]; -1 in ``said`` is "not said" (neither), -1 in ``true`` an empty slot."""
    present = true >= 0
    n = present.sum().clamp_min(1)
    right = ((said == true) & present).sum() / n
    wrong = ((said >= 0) & (said != true) & present).sum() / n
    return torch.stack([right, wrong]).float()


def caption_truth(captions: list[str], shapes: CaptionedShapes) -> dict[str, float]:
    """How well ``captions`` describe ``shapes``, one per scene: for "place" (the layout: a single shape's place, or
    the relation between two) and each named factor of each shape present, the share said and right, and the share
    said and wrong (the rest is not said); "complete and right" is the share of captions that say every factor of
    their scene correctly."""
    if len(captions) != len(shapes):
        raise ValueError(f"one caption per scene: got {len(captions)} captions for {len(shapes)} scenes")
    read = [read_caption(c) for c in captions]
    for i, r in enumerate(read):  # one shape named, nothing said of where: credit it to the slot it describes best
        if r["layout"] < 0 and r["shape"][1] < 0 and int(shapes.layout[i]) >= 4:
            fit = [sum(r[k][0] == int(getattr(shapes, k)[i, s]) for k in ("colour", "shape", "size")) for s in (0, 1)]
            if fit[1] > fit[0]:
                for k in ("colour", "shape", "size"):
                    r[k] = r[k][::-1]
    out: dict[str, float] = {}
    layout = torch.tensor([r["layout"] for r in read])
    out["place right"] = (layout == shapes.layout).float().mean().item()
    out["place wrong"] = ((layout >= 0) & (layout != shapes.layout)).float().mean().item()
    every, said_all = layout == shapes.layout, layout >= 0
    for name in ("colour", "shape", "size"):
        said = torch.tensor([r[name] for r in read])  # (N, 2)
        true = getattr(shapes, name)
        out[f"{name} right"], out[f"{name} wrong"] = said_right_wrong(said, true).tolist()
        every &= ((said == true) | (true < 0)).all(1)
        said_all &= ((said >= 0) | (true < 0)).all(1)
    out["complete"] = said_all.float().mean().item()
    out["complete and right"] = every.float().mean().item()
    return out


def vague_captions(shapes: CaptionedShapes, mention: float = 0.3, wrong: float = 0.3, seed: int = 0) -> list[str]:
    """Captions like scraped alt text, in the grammar's words and word orders (synonyms, "a red circle that is
    small", the place first or last, either shape of a pair named first), but saying less: each named shape's size
    and colour words, the place of a single shape and the relation between two are each kept with probability
    ``mention`` (a two-shape caption without its relation names one of the two shapes only), and a colour that is
    kept is the wrong one with probability ``wrong``. Text-to-image: "captions matter"."""
    if not (0 <= mention <= 1 and 0 <= wrong <= 1):
        raise ValueError(f"mention and wrong are probabilities, got {mention} and {wrong}")
    g = torch.Generator().manual_seed(seed)
    coin = lambda p: torch.rand(1, generator=g).item() < p  # noqa: E731
    pick = lambda options: options[int(torch.randint(len(options), (1,), generator=g))]  # noqa: E731

    def name(colour: int, shape: int, size: int) -> str:
        noun = pick(_SHAPE_WORDS[shape])
        adjective = pick(_SIZE_WORDS[size]) if coin(mention) else None
        colour_word = None
        if coin(mention):
            if coin(wrong):
                colour = (colour + 1 + int(torch.randint(len(COLOURS) - 1, (1,), generator=g))) % len(COLOURS)
            colour_word = pick(_COLOUR_WORDS[colour])
        if adjective and coin(0.25):  # the grammar's other word order: "a red circle that is small"
            return " ".join(["a", *([colour_word] if colour_word else []), noun, "that is", adjective])
        return " ".join(["a", *([adjective] if adjective else []), *([colour_word] if colour_word else []), noun])

    out = []
    for i in range(len(shapes)):
        layout, colour, shape, size = int(shapes.layout[i]), shapes.colour[i].tolist(), shapes.shape[i].tolist(), shapes.size[i].tolist()
        if layout < 4:
            first = name(colour[0], shape[0], size[0])
            if coin(mention):
                place = pick(_PLACE_WORDS[layout])
                out.append(f"{place} {first}" if coin(0.5) else f"{first} {place}")
            else:
                out.append(first)
        elif coin(mention):
            first, second = name(colour[0], shape[0], size[0]), name(colour[1], shape[1], size[1])
            relation = ("left of", "right of") if layout == 4 else ("above", "below")
            if coin(0.5):  # name the right (lower) shape first
                first, second, relation = second, first, relation[::-1]
            out.append(f"{first} {pick(_RELATION_WORDS[relation[0]])} {second}")
        else:
            s = int(torch.randint(2, (1,), generator=g))
            out.append(name(colour[s], shape[s], size[s]))
    return out


# ----------------------------------------------------------------------------- batches


class Batches:
    """Endless random minibatches of tensors already on the device (faster than a DataLoader for small sets).

    Each epoch is a fresh permutation drawn from ``generator``; the last partial batch is dropped.
    """

    def __init__(self, *tensors: torch.Tensor, batch_size: int, seed: int = 0):
        if not tensors or any(len(t) != len(tensors[0]) for t in tensors):
            raise ValueError("Batches needs one or more tensors of the same length")
        if batch_size > len(tensors[0]):
            raise ValueError(f"batch_size {batch_size} is larger than the data ({len(tensors[0])} rows)")
        self.tensors, self.batch_size = tensors, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self._perm, self._pos = self._new_perm(), 0

    def _new_perm(self) -> torch.Tensor:
        return torch.randperm(len(self.tensors[0]), generator=self.generator).to(self.tensors[0].device)

    def __iter__(self) -> Batches:
        return self

    def __next__(self) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if self._pos + self.batch_size > len(self._perm):
            self._perm, self._pos = self._new_perm(), 0
        idx = self._perm[self._pos : self._pos + self.batch_size]
        self._pos += self.batch_size
        out = tuple(t[idx] for t in self.tensors)
        return out[0] if len(out) == 1 else out

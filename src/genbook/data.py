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

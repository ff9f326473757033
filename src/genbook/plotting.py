"""Figures the chapters share: image grids, 2-D scatter and densities, loss curves, trajectories, clips.

Every function draws with matplotlib, returns the figure (or the axis it drew on), and keeps
figures small (the committed notebooks carry them). Plotting code in a chapter is tagged
``hide-input`` so the page shows the picture, with the code one click away.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

BOOK_RC = {
    "figure.dpi": 80,
    "savefig.dpi": 80,
    "figure.figsize": (6.0, 3.2),
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "font.size": 10,
    "animation.embed_limit": 8.0,  # MB
}


def use_book_style() -> None:
    """The book's matplotlib defaults: small figures, light grids, no top/right spines."""
    plt.rcParams.update(BOOK_RC)


def _to_numpy_images(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> (N, H, W, C) numpy, clipped; C is 1 or 3."""
    x = images.detach().float().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images, dtype=np.float32)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (N, 1 or 3, H, W), got {x.shape}")
    return np.clip(x.transpose(0, 2, 3, 1), 0, 1)


def mosaic(images: torch.Tensor | np.ndarray, nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile images (N, C, H, W) in [0, 1] into one (rows*(H+pad)-pad, cols*(W+pad)-pad, C) array; gaps are grey (0.5)."""
    x = _to_numpy_images(images)
    n, h, w, c = x.shape
    cols = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, c), 0.5, dtype=np.float32)
    for i in range(n):
        r, q = divmod(i, cols)
        out[r * (h + pad) : r * (h + pad) + h, q * (w + pad) : q * (w + pad) + w] = x[i]
    return out


def image_grid(images, nrow: int | None = None, title: str | None = None, ax=None, scale: float = 0.35):
    """Show images (N, C, H, W) in [0, 1] as one grid; returns the axis."""
    grid = mosaic(images, nrow)
    if ax is None:
        h, w = grid.shape[:2]
        side = scale * math.sqrt(len(images)) if nrow is None else scale * nrow
        _, ax = plt.subplots(figsize=(max(1.5, side * w / max(h, w) * 1.2), max(1.5, side * h / max(h, w) * 1.2)))
    ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def image_rows(rows: Sequence, labels: Sequence[str], ncol: int | None = None, scale: float = 0.45):
    """Several image sets stacked as labelled rows (e.g. originals over reconstructions); returns the figure."""
    ncol = ncol or len(rows[0])
    fig, axes = plt.subplots(len(rows), 1, figsize=(scale * ncol, scale * 1.25 * len(rows) + 0.3), squeeze=False)
    for ax, imgs, label in zip(axes[:, 0], rows, labels):
        image_grid(imgs[:ncol], nrow=ncol, ax=ax)
        ax.set_title(label, fontsize=9, loc="left")
    fig.tight_layout()
    return fig


def scatter2d(point_sets: Sequence, labels: Sequence[str] | None = None, lim: float = 3.0, ax=None, s: float = 2.0):
    """Overlay 2-D point sets (each (N, 2)); returns the axis."""
    if ax is None:
        _, ax = plt.subplots(figsize=(3.2, 3.2))
    for i, pts in enumerate(point_sets):
        p = pts.detach().cpu().numpy() if isinstance(pts, torch.Tensor) else np.asarray(pts)
        ax.scatter(p[:, 0], p[:, 1], s=s, alpha=0.6, label=None if labels is None else labels[i])
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    if labels is not None:
        ax.legend(markerscale=4, fontsize=8, loc="upper right")
    return ax


def density2d(log_density, lim: float = 3.0, n: int = 150, ax=None, title: str | None = None):
    """Image of exp(log_density(points)) on a grid over [-lim, lim]^2; ``log_density`` maps (M, 2) -> (M,)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(3.2, 3.2))
    g = torch.linspace(-lim, lim, n)
    xx, yy = torch.meshgrid(g, g, indexing="xy")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)  # (n*n, 2)
    with torch.no_grad():
        dens = log_density(pts).exp().reshape(n, n).cpu().numpy()
    ax.imshow(dens, extent=(-lim, lim, -lim, lim), origin="lower", cmap="magma")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def loss_curve(histories: dict, ax=None, window: int = 25, logy: bool = False, ylabel: str = "loss"):
    """Smoothed training curves, one line per ``{name: History or list of losses}``; returns the axis."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 2.8))
    for name, h in histories.items():
        values = np.asarray(h.loss if hasattr(h, "loss") else h, dtype=np.float64)
        w = min(window, len(values))
        smooth = np.convolve(values, np.ones(w) / w, mode="valid")
        ax.plot(np.arange(w, len(values) + 1), smooth, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if len(histories) > 1:
        ax.legend(fontsize=8)
    return ax


def trajectories(paths: torch.Tensor, ax=None, lim: float = 3.0, max_paths: int = 200):
    """Draw 2-D paths (T, N, 2): lines from start (grey dots) to end (black dots); returns the axis."""
    if ax is None:
        _, ax = plt.subplots(figsize=(3.2, 3.2))
    p = paths[:, :max_paths].detach().cpu().numpy()
    ax.plot(p[:, :, 0], p[:, :, 1], lw=0.5, alpha=0.5, color="tab:blue")
    ax.scatter(p[0, :, 0], p[0, :, 1], s=3, color="0.6")
    ax.scatter(p[-1, :, 0], p[-1, :, 1], s=3, color="k")
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    return ax


def animate_clips(clips: torch.Tensor, interval: int = 200, scale: float = 1.2, nrow: int | None = None):
    """An HTML5 animation of video clips (N, T, C, H, W) in [0, 1], ``nrow`` to a row (default: all in one row);
    renders in the book."""
    from IPython.display import HTML
    from matplotlib import animation

    n, t = clips.shape[:2]
    nrow = nrow or n
    fig, ax = plt.subplots(figsize=(scale * nrow, scale * 1.1 * math.ceil(n / nrow)))

    def tile(i: int) -> np.ndarray:
        grid = mosaic(clips[:, i], nrow=nrow)  # (H', W', C)
        return grid[..., 0] if grid.shape[-1] == 1 else grid  # grey clips as 2-D so the colormap applies

    frame = ax.imshow(tile(0), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()

    def update(i: int):
        frame.set_data(tile(i))
        return (frame,)

    anim = animation.FuncAnimation(fig, update, frames=t, interval=interval, blit=True)
    html = HTML(anim.to_jshtml(default_mode="loop"))
    plt.close(fig)
    return html

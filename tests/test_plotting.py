"""Tests for genbook.plotting: mosaic arithmetic and that every figure helper draws without error."""

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from genbook import plotting
from genbook.train import History


@pytest.mark.parametrize(
    ("n", "nrow", "pad", "rows", "cols"),
    [(10, None, 1, 3, 4), (10, 5, 1, 2, 5), (16, None, 2, 4, 4), (1, None, 1, 1, 1), (7, 7, 0, 1, 7)],
)
def test_mosaic_shape(n, nrow, pad, rows, cols):
    """A mosaic of N HxW images is rows*H + (rows-1)*pad by cols*W + (cols-1)*pad, with cols = nrow or ceil(sqrt N)."""
    out = plotting.mosaic(torch.rand(n, 1, 8, 6), nrow=nrow, pad=pad)
    assert out.shape == (rows * 8 + (rows - 1) * pad, cols * 6 + (cols - 1) * pad, 1)


def test_mosaic_places_images_row_major_with_grey_padding():
    """Image i sits at row i // cols, column i % cols; padding and empty cells are 0.5."""
    images = torch.stack([torch.full((3, 4, 4), i / 10) for i in range(5)])  # (5, 3, 4, 4), image i has value i/10
    out = plotting.mosaic(images, nrow=3, pad=1)  # 2 rows x 3 cols, cells 5 px apart
    assert out.shape == (9, 14, 3)
    for i in range(5):
        r, c = divmod(i, 3)
        np.testing.assert_allclose(out[5 * r : 5 * r + 4, 5 * c : 5 * c + 4], i / 10, atol=1e-6)
    assert (out[4] == 0.5).all() and (out[:, 4] == 0.5).all()
    assert (out[5:, 10:] == 0.5).all()  # the sixth cell is empty


def test_mosaic_clips_and_accepts_three_dims():
    """Values are clipped to [0, 1]; (N, H, W) input is read as one channel; 2 channels are refused."""
    out = plotting.mosaic(np.array([[[-1.0, 2.0]]]), pad=0)
    assert out.tolist() == [[[0.0], [1.0]]]
    with pytest.raises(ValueError, match="1 or 3"):
        plotting.mosaic(torch.rand(2, 2, 4, 4))


def test_image_grid_and_rows_draw():
    """image_grid returns the Axes it drew on; image_rows returns a Figure with one axis per row."""
    ax = plotting.image_grid(torch.rand(6, 1, 8, 8), title="digits")
    assert isinstance(ax, Axes) and ax.get_title() == "digits"
    fig = plotting.image_rows([torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8)], ["x", "x_hat"])
    assert isinstance(fig, Figure) and len(fig.axes) == 2


def test_scatter2d_draws_sets_with_legend():
    """scatter2d draws one collection per point set, with a legend when labelled."""
    ax = plotting.scatter2d([torch.randn(20, 2), np.zeros((5, 2))], labels=["data", "model"], lim=2.0)
    assert len(ax.collections) == 2
    assert ax.get_legend() is not None
    assert ax.get_xlim() == (-2.0, 2.0)


def test_loss_curve_draws_histories_and_lists():
    """loss_curve takes History objects and plain lists, one smoothed line each."""
    ax = plotting.loss_curve({"a": History(loss=list(np.linspace(2, 1, 60))), "b": [3.0, 2.0, 1.0]}, window=10, logy=True)
    assert len(ax.lines) == 2
    assert len(ax.lines[0].get_xdata()) == 60 - 10 + 1
    assert ax.get_yscale() == "log"


def test_density2d_draws_a_density():
    """density2d shows exp(log_density) on an n x n grid."""
    log_normal = lambda p: -0.5 * (p**2).sum(1) - np.log(2 * np.pi)
    ax = plotting.density2d(log_normal, n=30, title="N(0, I)")
    (image,) = ax.images
    assert image.get_array().shape == (30, 30)
    assert image.get_array().max() == pytest.approx(1 / (2 * np.pi), rel=0.05)


def test_trajectories_draws_paths():
    """trajectories draws one line per path (up to max_paths) and start/end dots."""
    paths = torch.cumsum(torch.randn(10, 30, 2) * 0.1, 0)  # (T, N, 2)
    ax = plotting.trajectories(paths, max_paths=20)
    assert len(ax.lines) == 20
    assert len(ax.collections) == 2


def test_animate_clips_returns_html_animation():
    """animate_clips returns an HTML object whose markup embeds a JavaScript player."""
    html = plotting.animate_clips(torch.rand(2, 3, 3, 8, 8), interval=100)
    assert hasattr(html, "_repr_html_")
    assert "<script" in html.data


def test_animate_clips_grey_clips_use_grey_colormap(monkeypatch):
    """A 1-channel clip is drawn like image_grid draws it: grey colormap on the fixed range [0, 1]."""
    figures = []
    monkeypatch.setattr(plotting.plt, "close", figures.append)
    plotting.animate_clips(torch.rand(2, 2, 1, 8, 8) * 0.5)
    (image,) = figures[0].axes[0].images
    assert image.get_cmap().name == "gray"
    assert image.get_clim() == (0, 1)


def test_use_book_style_sets_rc():
    """use_book_style applies the book's rcParams."""
    with matplotlib.rc_context():
        plotting.use_book_style()
        assert matplotlib.rcParams["figure.dpi"] == plotting.BOOK_RC["figure.dpi"]
        assert matplotlib.rcParams["axes.spines.top"] is False

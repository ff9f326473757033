"""Tests for genbook.data: the digits split, scalings, dequantization, toys, sprites, Batches, load_dataset."""

import math
import time

import pytest
import torch
from sklearn.datasets import load_digits

from genbook import data
from genbook.runtime import ConfigError

# ----------------------------------------------------------------------------- digits


def test_digits_split_sizes():
    """The train / val / test splits hold 1000 / 350 / 447 images, 1797 in all."""
    sizes = {split: len(data.digits(split)) for split in ("train", "val", "test", "all")}
    assert sizes == {"train": 1000, "val": 350, "test": 447, "all": 1797}


def test_digits_splits_are_first_next_last_rows_of_sklearn():
    """train = first 1000 rows, val = next 350, test = last 447 rows of sklearn's load_digits."""
    bunch = load_digits()
    images, labels = torch.tensor(bunch.images), torch.tensor(bunch.target)
    for split, rows in (("train", slice(0, 1000)), ("val", slice(1000, 1350)), ("test", slice(-447, None))):
        s = data.digits(split)
        assert torch.equal(s.x_int[:, 0].double(), images[rows]), split
        assert torch.equal(s.y, labels[rows].long()), split


def test_digits_values_are_integer_levels():
    """Digits pixels are integers 0..16 (K = 17 levels) in images of shape (1, 8, 8), D = 64."""
    s = data.digits("all")
    assert not s.x_int.is_floating_point()
    assert s.x_int.min() == 0 and s.x_int.max() == 16
    assert s.levels == data.DIGIT_LEVELS == 17
    assert s.shape == (1, 8, 8) and s.dims == 64
    assert set(s.y.unique().tolist()) == set(range(10))


def test_unknown_split_raises_config_error():
    """An unknown split name raises ConfigError listing the valid splits."""
    with pytest.raises(ConfigError, match="train, val, test"):
        data.digits("training")


def test_unit_and_signed_ranges():
    """unit() = x/16 spans [0, 1] and signed() = 2 unit - 1 spans [-1, 1]."""
    s = data.digits("train")
    unit, signed = s.unit(), s.signed()
    assert unit.min() == 0 and unit.max() == 1
    assert signed.min() == -1 and signed.max() == 1
    torch.testing.assert_close(unit, s.x_int.float() / 16)
    torch.testing.assert_close(signed, 2 * unit - 1)


def test_quantize_inverts_to_unit():
    """quantize(to_unit(x)) == x for every level, and quantize clamps values outside [0, 1]."""
    x = data.digits("all").x_int
    assert torch.equal(data.quantize(data.to_unit(x)), x)
    assert data.quantize(torch.tensor([-0.3, 1.7])).tolist() == [0, 16]


def test_dequantize_lies_in_its_bin():
    """dequantize(x) lies in [x/K, (x+1)/K), i.e. floor(K y) = x, for every digits pixel."""
    x = data.digits("all").x_int
    y = data.dequantize(x, 17, generator=torch.Generator().manual_seed(0))
    assert (y >= x.float() / 17).all()
    assert (y < (x + 1).float() / 17).all()
    assert torch.equal(torch.floor(y * 17).long(), x)


def test_dequantize_noise_is_uniform():
    """The dequantization offset K y - x averages 1/2 with variance 1/12, like U[0, 1)."""
    x = torch.full((100_000,), 5)
    u = data.dequantize(x, 17, generator=torch.Generator().manual_seed(1)) * 17 - 5
    assert abs(u.mean().item() - 0.5) < 0.01
    assert abs(u.var().item() - 1 / 12) < 0.01


def test_dequantize_never_reaches_upper_edge():
    """y < 1 for the top level x = 16 even over 4 million draws (a float32 rounding edge)."""
    x = torch.full((2**22,), 16)
    y = data.dequantize(x, 17, generator=torch.Generator().manual_seed(1))
    assert (y < 1).all()


# ----------------------------------------------------------------------------- 2-D toys


@pytest.mark.parametrize("name", data.TOY_SETS)
def test_toy2d_shape_finite_and_seeded(name):
    """Each toy set gives finite (n, 2) points, the same for one seed and different across seeds."""
    a, b, c = data.toy2d(name, 500, seed=1), data.toy2d(name, 500, seed=1), data.toy2d(name, 500, seed=2)
    assert a.shape == (500, 2)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.abs().max() < 5  # unit-order scale


def test_toy2d_8gaussians_lie_on_radius_two():
    """8gaussians points lie within 0.5 of radius 2 and fill all 8 modes at angles k pi/4."""
    pts = data.toy2d("8gaussians", 4000, seed=0)
    radius = pts.norm(dim=1)
    assert ((radius - 2).abs() < 0.5).all()
    assert abs(radius.mean().item() - 2) < 0.05
    mode = torch.round(torch.atan2(pts[:, 1], pts[:, 0]) / (math.pi / 4)).long() % 8
    assert mode.bincount(minlength=8).min() > 350


def test_toy2d_checkerboard_uses_dark_squares_only():
    """checkerboard points lie in [-2, 2]^2, on unit squares whose row and column have equal parity."""
    pts = data.toy2d("checkerboard", 2000, seed=0)
    assert (pts.abs() <= 2).all()
    col, row = torch.floor(pts[:, 0] + 2).long(), torch.floor(pts[:, 1] + 2).long()
    assert torch.equal(col % 2, row % 2)


def test_toy2d_unknown_name_lists_valid_ones():
    """An unknown toy set raises ConfigError listing every valid name."""
    with pytest.raises(ConfigError) as info:
        data.toy2d("swissroll", 10)
    for name in data.TOY_SETS:
        assert name in str(info.value)


# ----------------------------------------------------------------------------- sprites


@pytest.mark.parametrize("size", [16, 32])
def test_sprites_shapes_and_range(size):
    """sprites gives (n, 3, S, S) images in [0, 1] and factors that lie in their ranges."""
    s = data.sprites(20, size=size, seed=0)
    assert s.images.shape == (20, 3, size, size)
    assert s.images.min() >= 0 and s.images.max() <= 1
    assert s.shape.shape == s.colour.shape == s.scale.shape == (20,)
    assert s.position.shape == (20, 2)
    assert s.shape.max() < len(data.SHAPES) and s.colour.max() < len(data.COLOURS)
    assert (s.position >= s.scale[:, None]).all() and (s.position <= size - s.scale[:, None]).all()


def test_moving_sprites_shapes_and_range():
    """moving_sprites gives clips (n, T, 3, S, S) in [0, 1] and trajectories (n, T, 2)."""
    m = data.moving_sprites(6, frames=5, size=16, seed=0)
    assert m.clips.shape == (6, 5, 3, 16, 16)
    assert m.clips.min() >= 0 and m.clips.max() <= 1
    assert m.trajectory.shape == (6, 5, 2) and m.velocity.shape == (6, 2)


def test_moving_sprites_first_frame_is_the_still_sprite():
    """Frame 0 of each clip is the sprites() image drawn with the same seed."""
    m = data.moving_sprites(8, frames=4, size=16, seed=3)
    still = data.sprites(8, size=16, seed=3)
    torch.testing.assert_close(m.clips[:, 0], still.images)
    torch.testing.assert_close(m.trajectory[:, 0], still.position)


def test_moving_sprites_stay_inside_and_keep_speed():
    """Trajectories keep the sprite inside the image, move at most `speed` px per frame, and at exactly |v| per axis away from walls."""
    speed, size = 1.5, 16
    m = data.moving_sprites(50, frames=24, size=size, seed=0, speed=speed)
    still = data.sprites(50, size=size, seed=0)
    lo, hi = still.scale[:, None, None], size - still.scale[:, None, None]
    assert (m.trajectory >= lo - 1e-5).all() and (m.trajectory <= hi + 1e-5).all()
    torch.testing.assert_close(m.velocity.norm(dim=1), torch.full((50,), speed))
    step = m.trajectory[:, 1:] - m.trajectory[:, :-1]  # (N, T-1, 2)
    assert (step.norm(dim=-1) <= speed + 1e-4).all()
    # a point at least |v| from both walls cannot reach a wall within one frame, so it moves by exactly |v|
    v = m.velocity.abs()[:, None, :]
    start = m.trajectory[:, :-1]
    free = (start - lo >= v) & (hi - start >= v)
    assert free.sum() > 1000
    torch.testing.assert_close(step.abs()[free], v.expand_as(step)[free], atol=1e-4, rtol=0)
    # bounces happened, and the clips still move at the same speed after them
    assert (step.sign() != m.velocity.sign()[:, None, :]).any()


def test_moving_sprites_pixels_follow_the_trajectory():
    """In every frame the sprite's pixel centroid is within 1 px of the trajectory (triangles: of their centroid, r/3 below)."""
    m = data.moving_sprites(30, frames=6, size=16, seed=2)
    still = data.sprites(30, size=16, seed=2)
    mask = ((m.clips - 0.08).abs().sum(2) > 1e-6).float()  # (N, T, H, W) pixels the sprite covers
    centre = torch.arange(16, dtype=torch.float32) + 0.5  # pixel centres, as in the trajectory's coordinates
    area = mask.sum((-1, -2))
    assert (area > 0).all()
    cx = (mask * centre[None, None, None, :]).sum((-1, -2)) / area
    cy = (mask * centre[None, None, :, None]).sum((-1, -2)) / area
    # an apex-up triangle with half-size r has its area centroid r/3 below its box centre
    is_triangle = still.shape == data.SHAPES.index("triangle")
    offset = torch.where(is_triangle, still.scale / 3, torch.zeros(30))[:, None]
    expected_x, expected_y = m.trajectory[..., 0], m.trajectory[..., 1] + offset
    assert ((cx - expected_x).abs() < 1).all()
    assert ((cy - expected_y).abs() < 1).all()


# ----------------------------------------------------------------------------- Batches


def test_batches_yield_each_row_once_per_epoch():
    """Over each epoch (12 rows, batches of 4) every row appears exactly once, and paired tensors stay aligned."""
    x = torch.arange(12)
    y = 100 + torch.arange(12)
    batches = data.Batches(x, y, batch_size=4, seed=0)
    for _ in range(3):
        epoch = [next(batches) for _ in range(3)]
        xs = torch.cat([b[0] for b in epoch])
        ys = torch.cat([b[1] for b in epoch])
        assert sorted(xs.tolist()) == list(range(12))
        assert torch.equal(ys, xs + 100)


def test_batches_drop_the_partial_batch():
    """With 10 rows and batches of 4, an epoch is 2 batches of distinct rows; a single tensor comes back bare."""
    batches = data.Batches(torch.arange(10), batch_size=4, seed=1)
    first = torch.cat([next(batches), next(batches)])
    assert isinstance(first, torch.Tensor)
    assert len(set(first.tolist())) == 8


def test_batches_reject_bad_input():
    """Batches refuses tensors of different lengths and a batch larger than the data."""
    with pytest.raises(ValueError, match="same length"):
        data.Batches(torch.zeros(3), torch.zeros(4), batch_size=2)
    with pytest.raises(ValueError, match="larger than the data"):
        data.Batches(torch.zeros(3), batch_size=4)


# ----------------------------------------------------------------------------- load_dataset


def test_load_dataset_digits_is_the_digits_split():
    """load_dataset('digits', split) returns the same images as digits(split)."""
    assert torch.equal(data.load_dataset("digits", "test").x_int, data.digits("test").x_int)


def test_load_dataset_unknown_name_lists_valid_ones():
    """An unknown dataset raises ConfigError listing every valid dataset."""
    with pytest.raises(ConfigError) as info:
        data.load_dataset("imagenet")
    for name in data.DATASETS:
        assert name in str(info.value)


def test_load_dataset_online_split_must_be_train_or_test():
    """Online sets have only train and test splits; 'val' raises ConfigError."""
    with pytest.raises(ConfigError, match="'train' and 'test'"):
        data.load_dataset("mnist", "val")


def _assert_unavailable_fast_and_clean(root):
    start = time.perf_counter()
    with pytest.raises(data.DatasetUnavailableError, match="digits"):
        data.load_dataset("mnist")
    assert time.perf_counter() - start < 30
    assert list(root.iterdir()) == []


def test_load_dataset_offline_flag_fails_fast_and_clean(tmp_path, monkeypatch):
    """With GENBOOK_OFFLINE=1 an uncached 'mnist' raises DatasetUnavailableError pointing to 'digits', writing nothing."""
    monkeypatch.setenv("GENBOOK_OFFLINE", "1")
    monkeypatch.setenv("GENBOOK_DATA", str(tmp_path))
    _assert_unavailable_fast_and_clean(tmp_path)


def test_load_dataset_unreachable_mirror_fails_fast_and_clean(tmp_path, monkeypatch):
    """With the only mirror on a closed local port, 'mnist' raises DatasetUnavailableError at once, writing nothing."""
    monkeypatch.setenv("GENBOOK_DATA", str(tmp_path))
    monkeypatch.setitem(data.MIRRORS, "mnist", ["http://127.0.0.1:9/"])  # loopback discard port: refused at once
    _assert_unavailable_fast_and_clean(tmp_path)


def test_categorical_mean_is_the_expected_level():
    """categorical_mean equals sum_k softmax_k * k / (K - 1), written out with a loop over levels."""
    torch.manual_seed(0)
    logits = torch.randn(3, 17, 1, 4, 4)
    probs = torch.softmax(logits, 1)
    by_hand = sum(probs[:, k] * k for k in range(17)) / 16
    torch.testing.assert_close(data.categorical_mean(logits), by_hand)
    assert data.categorical_mean(torch.full((1, 17, 2), -1e4).index_fill(1, torch.tensor([16]), 0.0)).allclose(torch.ones(1, 2))

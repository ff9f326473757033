"""Tests for genbook.metrics: likelihood bookkeeping, FD, MMD, precision/recall, blur, the harness, cost."""

import hashlib
import math
import time

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from genbook import data, metrics

# ----------------------------------------------------------------------------- likelihoods


def test_uniform_nll_digits():
    """uniform_nll(64, 17) = 64 ln 17 ~ 181.33 nats, which is log2(17) bits/dim, exact (not a bound)."""
    nll = metrics.uniform_nll(64, 17)
    assert nll.nats == pytest.approx(64 * math.log(17))
    assert nll.nats == pytest.approx(181.33, abs=0.01)
    assert nll.bpd == pytest.approx(math.log2(17))
    assert not nll.bound
    assert "= 181.33 nats/image" in str(nll) and "exact" in str(nll)


def test_bits_per_dim_converts_nats():
    """bits/dim = nats / (D ln 2), for floats and tensors alike."""
    assert metrics.bits_per_dim(64 * math.log(2), 64) == pytest.approx(1.0)
    torch.testing.assert_close(metrics.bits_per_dim(torch.tensor([math.log(4) * 8]), 8), torch.tensor([2.0]))
    assert "<=" in str(metrics.NLL(10.0, 64, bound=True))


def test_categorical_nll_matches_manual_log_softmax():
    """categorical_nll equals -sum over pixels of log_softmax(logits)[x], gathered by hand."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 2, 2, generator=g)  # (B, K, H, W)
    x = torch.randint(0, 5, (3, 2, 2), generator=g)
    expected = []
    for b in range(3):
        total = 0.0
        for i in range(2):
            for j in range(2):
                column = [logits[b, k, i, j].item() for k in range(5)]
                log_norm = math.log(sum(math.exp(v) for v in column))
                total -= column[x[b, i, j]] - log_norm
        expected.append(total)
    torch.testing.assert_close(metrics.categorical_nll(logits, x), torch.tensor(expected))


def test_categorical_nll_of_flat_logits_is_uniform_nll():
    """Equal logits give every image D ln K nats, the uniform model."""
    x = data.digits("val").x_int[:, 0]  # (N, 8, 8)
    nll = metrics.categorical_nll(torch.zeros(len(x), 17, 8, 8), x)
    torch.testing.assert_close(nll, torch.full((len(x),), metrics.uniform_nll(64, 17).nats))


def test_dequantized_nll_of_uniform_density_is_d_ln_k():
    """For the density uniform on [0, 1)^D (log p = 0) the dequantization bound is exactly D ln K."""
    bound = metrics.dequantized_nll(torch.zeros(4), dims=64, levels=17)
    torch.testing.assert_close(bound, torch.full((4,), 64 * math.log(17)))
    torch.testing.assert_close(metrics.dequantized_nll(torch.tensor([2.0]), 64, 17), torch.tensor([64 * math.log(17) - 2]))


# ----------------------------------------------------------------------------- Frechet distance


def _fd_scipy(a: np.ndarray, b: np.ndarray) -> float:
    """FD written independently: |mu_a - mu_b|^2 + tr(S_a + S_b - 2 sqrtm(S_a S_b))."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s_a @ s_b).real
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(s_a + s_b - 2 * root))


@pytest.fixture
def feature_sets():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 5)) @ rng.normal(size=(5, 5))
    b = rng.normal(size=(200, 5)) @ rng.normal(size=(5, 5)) + 0.5
    return a, b


def test_frechet_distance_matches_scipy_sqrtm(feature_sets):
    """frechet_distance agrees with a separate implementation using scipy.linalg.sqrtm."""
    a, b = feature_sets
    assert metrics.frechet_distance(a, b) == pytest.approx(_fd_scipy(a, b), rel=1e-6)


def test_frechet_distance_is_zero_to_itself_and_symmetric(feature_sets):
    """FD(a, a) ~ 0 and FD(a, b) = FD(b, a); torch and numpy inputs give the same number."""
    a, b = feature_sets
    assert abs(metrics.frechet_distance(a, a)) < 1e-8 * np.trace(np.cov(a, rowvar=False))
    assert metrics.frechet_distance(a, b) == pytest.approx(metrics.frechet_distance(b, a), rel=1e-9)
    assert metrics.frechet_distance(torch.tensor(a), torch.tensor(b)) == pytest.approx(metrics.frechet_distance(a, b))


def test_frechet_distance_of_scaled_copy(feature_sets):
    """For b = s a + m the closed form is |m + (s - 1) mu_a|^2 + (1 - s)^2 tr(S_a)."""
    a, _ = feature_sets
    s, m = 1.7, np.array([0.3, -1.0, 0.0, 2.0, 0.5])
    expected = np.sum((m + (s - 1) * a.mean(0)) ** 2) + (1 - s) ** 2 * np.trace(np.cov(a, rowvar=False))
    assert metrics.frechet_distance(a, s * a + m) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_one_dimensional_closed_form():
    """In 1-D, FD = (mu1 - mu2)^2 + (s1 - s2)^2 with sample means and standard deviations."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, size=(400, 1)), rng.normal(1, 2, size=(300, 1))
    expected = (a.mean() - b.mean()) ** 2 + (a.std(ddof=1) - b.std(ddof=1)) ** 2
    assert metrics.frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_rejects_bad_shapes():
    """Mismatched widths or fewer than two samples raise ValueError."""
    with pytest.raises(ValueError, match="same d"):
        metrics.frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        metrics.frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))


# ----------------------------------------------------------------------------- MMD


def test_mmd2_matches_double_loop():
    """mmd2 equals the unbiased estimator written as plain Python loops over pairs."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 2, generator=g), torch.randn(4, 2, generator=g) + 0.5
    hs = (0.1, 0.3, 1.0, 3.0)

    def k(a, b):
        d2 = sum((a[i].item() - b[i].item()) ** 2 for i in range(2))
        return sum(math.exp(-d2 / (2 * h * h)) for h in hs)

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    assert metrics.mmd2(x, y, hs) == pytest.approx(xx + yy - 2 * xy, rel=1e-9, abs=1e-12)


def test_mmd2_near_zero_for_same_distribution_positive_for_shift():
    """Over several draws, MMD^2 of two samples of one Gaussian averages ~0; a shift by 1 gives a clearly positive value."""
    g = torch.Generator().manual_seed(0)
    same = [metrics.mmd2(torch.randn(200, 2, generator=g), torch.randn(200, 2, generator=g)) for _ in range(5)]
    shifted = metrics.mmd2(torch.randn(200, 2, generator=g), torch.randn(200, 2, generator=g) + 1.0)
    assert abs(np.mean(same)) < 0.01
    assert shifted > 0.1
    assert shifted > 20 * max(abs(v) for v in same)


# ----------------------------------------------------------------------------- precision / recall


def test_precision_recall_identical_sets():
    """A sample compared with itself has precision 1 and recall 1."""
    pts = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    assert metrics.precision_recall(pts, pts.clone()) == (1.0, 1.0)


def test_precision_recall_disjoint_sets():
    """Two sets far apart have precision 0 and recall 0."""
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(50, 4, generator=g), torch.randn(40, 4, generator=g) + 100
    assert metrics.precision_recall(real, fake) == (0.0, 0.0)


def test_precision_counts_fake_points_on_the_real_manifold():
    """If half the fake points are copies of real points and half are far away, precision is 1/2."""
    g = torch.Generator().manual_seed(0)
    real = torch.randn(60, 3, generator=g)
    fake = torch.cat([real[:20], torch.randn(20, 3, generator=g) + 50])
    precision, _ = metrics.precision_recall(real, fake)
    assert precision == 0.5


def test_precision_recall_far_from_the_origin():
    """Precision and recall do not change when every feature is offset by 1000 (neighbours 0.1 apart): cdist's
    matmul shortcut in float32 got distances wrong by about 0.3 there and read recall 1.0 instead of 0.89."""
    g = torch.Generator().manual_seed(0)
    real = 0.1 * torch.randn(100, 8, generator=g)
    fake = torch.cat([real[:50], real[50:] + 1.0])  # half copies, half moved away
    at_origin = metrics.precision_recall(real, fake)
    assert at_origin[0] == 0.5
    assert metrics.precision_recall(real + 1000, fake + 1000) == at_origin
    assert metrics.precision_recall(real + 1000, real + 1000) == (1.0, 1.0)
    assert metrics._distances(real + 1000, real + 1000).diagonal().abs().max() == 0


# ----------------------------------------------------------------------------- corruptions


def test_gaussian_blur_keeps_constant_image():
    """Blurring a constant image returns the same constant (so its mean is preserved)."""
    img = torch.full((2, 3, 8, 8), 0.37)
    torch.testing.assert_close(metrics.gaussian_blur(img, 1.2), img)


def test_gaussian_blur_sigma_zero_is_identity():
    """sigma = 0 returns the images unchanged."""
    img = torch.rand(2, 1, 8, 8)
    assert torch.equal(metrics.gaussian_blur(img, 0.0), img)


@pytest.mark.parametrize("sigma", [0.7, 1.0])
def test_gaussian_blur_matches_direct_2d_convolution(sigma):
    """Away from the borders the blur equals a direct 2-D convolution with an explicit Gaussian kernel."""
    img = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    r = math.ceil(3 * sigma)
    offsets = np.arange(-r, r + 1)
    kernel = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma**2))
    kernel /= kernel.sum()
    x = img[0, 0].numpy()
    direct = np.array([[np.sum(x[i - r : i + r + 1, j - r : j + r + 1] * kernel) for j in range(r, 16 - r)] for i in range(r, 16 - r)])
    blurred = metrics.gaussian_blur(img, sigma)[0, 0, r : 16 - r, r : 16 - r].numpy()
    np.testing.assert_allclose(blurred, direct, rtol=1e-10, atol=1e-12)


def test_gaussian_blur_keeps_shape_when_kernel_exceeds_image():
    """A kernel wider than the image (sigma = 3 on 4x4) still returns the input shape and keeps constants."""
    img = torch.full((1, 2, 4, 4), 0.5)
    torch.testing.assert_close(metrics.gaussian_blur(img, 3.0), img)


def test_gaussian_blur_non_square_images():
    """A blur wider than the image height but not its width (4x16, sigma 1.5) works and keeps constants."""
    img = torch.full((1, 1, 4, 16), 0.5)
    torch.testing.assert_close(metrics.gaussian_blur(img, 1.5), img)


# ----------------------------------------------------------------------------- the harness classifier


def test_harness_classifier_accuracy(harness_classifier):
    """The harness classifier labels at least 95% of the digits test split correctly."""
    test = data.digits("test")
    labels, conf = metrics.classify(test.unit())
    accuracy = (labels == test.y).float().mean().item()
    assert accuracy >= 0.95, accuracy
    assert ((conf > 0) & (conf <= 1)).all()


def test_harness_features_and_label_histogram(harness_classifier):
    """features gives (N, 64) vectors; label_histogram is a distribution over 10 digits; a wrong shape raises ValueError."""
    x = data.digits("val").unit()
    assert metrics.features(x).shape == (350, 64)
    hist = metrics.label_histogram(x)
    assert hist.shape == (10,) and hist.sum() == pytest.approx(1.0)
    assert hist.min() > 0.05  # the val split holds every digit
    with pytest.raises(ValueError, match="8, 8"):
        metrics.features(torch.zeros(2, 1, 16, 16))


def test_fd_of_real_digits_is_small_and_positive_and_train_is_refused(harness_classifier):
    """The FD of real validation digits against the test split is finite, positive and far below that of uniform-noise
    images; scoring against the training split is refused."""
    real = metrics.fd_digits(data.digits("val").unit()[:300])
    noise = metrics.fd_digits(torch.rand(300, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    assert math.isfinite(real) and real > 0
    assert noise > 10 * real
    for fn in (metrics.fd_digits, metrics.precision_recall_digits):
        with pytest.raises(ValueError, match="held-out"):
            fn(data.digits("val").unit(), "train")


def test_precision_recall_digits_of_real_val_split(harness_classifier):
    """Real validation digits score high precision and recall against the test split."""
    precision, recall = metrics.precision_recall_digits(data.digits("val").unit())
    assert precision > 0.7 and recall > 0.5


def _quick_classifier():
    torch.manual_seed(0)
    return metrics.DigitsClassifier(metrics.CLASSIFIER_RECIPE["width"], metrics.CLASSIFIER_RECIPE["feature_dim"]).eval()


@pytest.fixture
def counted_training(monkeypatch):
    """Replace the 15 s classifier training with an untrained network, counting the calls."""
    calls = []
    monkeypatch.setattr(metrics, "train_digits_classifier", lambda: calls.append(1) or _quick_classifier())
    return calls


def test_classifier_is_cached_on_disk(fresh_cache, counted_training, monkeypatch):
    """The first call trains and writes one file under GENBOOK_CACHE; a new process state loads it instead of training."""
    first = metrics.digits_classifier()
    files = list(fresh_cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".pt"
    assert metrics.digits_classifier() is first  # kept in memory
    monkeypatch.setattr(metrics, "_CLASSIFIER", None)
    second = metrics.digits_classifier()
    assert len(counted_training) == 1
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "damage",
    [
        b"",
        b"PK\x03\x04 a truncated zip",
        b"not a checkpoint at all",
    ],
)
def test_damaged_classifier_cache_is_retrained(fresh_cache, counted_training, monkeypatch, damage):
    """A damaged cache file is retrained and overwritten, as the docstring promises, not raised."""
    metrics.digits_classifier()
    (path,) = fresh_cache.iterdir()
    path.write_bytes(damage)
    monkeypatch.setattr(metrics, "_CLASSIFIER", None)
    metrics.digits_classifier()
    assert len(counted_training) == 2
    assert torch.load(path, weights_only=True).keys() == _quick_classifier().state_dict().keys()


# ----------------------------------------------------------------------------- cost


def test_nfe_counter_counts_calls():
    """NFECounter passes calls through to the network and counts each one."""
    net = metrics.NFECounter(torch.nn.Linear(2, 2))
    x = torch.randn(3, 2)
    for _ in range(4):
        out = net(x)
    assert net.nfe == 4
    torch.testing.assert_close(out, F.linear(x, net.net.weight, net.net.bias))


def test_timer_measures_a_sleep():
    """Timer measures a 50 ms sleep as at least 50 ms and well under half a second."""
    with metrics.Timer() as t:
        time.sleep(0.05)
    assert 0.05 <= t.seconds < 0.5


def test_inception_score_bounds(harness_classifier):
    """IS is 1 for one image repeated and close to 10 for confident, balanced real digits."""
    real = data.digits("test").unit()
    assert metrics.inception_score(real[:1].repeat(50, 1, 1, 1)) == pytest.approx(1.0, abs=1e-6)
    assert 8.5 < metrics.inception_score(real) <= 10.0


def test_mode_coverage_counts_modes_and_quality():
    """Samples on 3 of 4 centres (and some far away) give 3 modes and the share of near samples."""
    centres = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0], [5.0, 5.0]])
    near = centres[[0, 0, 1, 2]].repeat(25, 1) + 0.01  # 100 samples on 3 modes
    far = torch.full((100, 2), 20.0)
    modes, quality = metrics.mode_coverage(torch.cat([near, far]), centres, radius=0.5)
    assert modes == 3
    assert quality == pytest.approx(0.5)
    modes, _ = metrics.mode_coverage(torch.cat([near, far]), centres, radius=0.5, min_share=0.2)
    assert modes == 1  # only centre 0 holds at least 20% of all samples


def test_independent_pixel_nll_matches_a_loop_over_pixels():
    train, test = data.digits("train").x_int, data.digits("test").x_int[:50]
    nll = metrics.independent_pixel_nll(train, test)
    by_hand = 0.0
    for i in range(8):
        for j in range(8):
            counts = torch.bincount(train[:, 0, i, j], minlength=17).float() + 1
            by_hand += -(counts / counts.sum()).log()[test[:, 0, i, j]].sum().item()
    assert abs(nll.nats - by_hand / len(test)) < 1e-3 and nll.dims == 64 and not nll.bound
    assert nll.nats < metrics.uniform_nll().nats


def test_classifier_training_leaves_the_callers_state_alone():
    """Trained from inside a no_grad caller (a fresh machine's first FD), it still trains, and the caller's random
    stream is the same as if the classifier had been cached: a chapter's numbers must not depend on the cache."""
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with torch.no_grad():
        model = metrics.train_digits_classifier({"steps": 3, "batch": 8})
    assert torch.equal(torch.rand(3), expected)
    assert isinstance(model, metrics.DigitsClassifier) and not model.training


# ----------------------------------------------------------------------------- honest yardsticks


def _gaussians(n: int, d: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Samples of N(0, I) and of N(mu, diag(s^2)), and the population Frechet distance between the two."""
    mu = torch.full((d,), 0.25)
    s = torch.linspace(0.8, 1.2, d)
    a = torch.randn(n, d, generator=g)
    b = mu + s * torch.randn(n, d, generator=g)
    exact = float((mu**2).sum() + ((s - 1) ** 2).sum())  # |mu|^2 + tr(I + S^2 - 2 S) for diagonal S
    return a, b, exact


def test_fd_infinity_recovers_the_population_distance_where_small_n_fd_is_biased():
    """Two known 16-d Gaussians (population FD 1.13): FD on 100 samples per set is off by more than 100%,
    FD-infinity from subsets of 4000 samples lands within 10% of the truth."""
    g = torch.Generator().manual_seed(0)
    a, b, exact = _gaussians(4000, 16, g)
    small = np.mean([metrics.frechet_distance(a[i * 100 : (i + 1) * 100], b[i * 100 : (i + 1) * 100]) for i in range(10)])
    fd_inf, curve = metrics.fd_infinity(a, b, ns=(500, 1000, 2000, 4000), repeats=2)
    assert small > 2 * exact  # the bias the extrapolation removes
    assert abs(fd_inf - exact) < 0.1 * exact, (fd_inf, exact, curve)
    assert list(curve) == [500, 1000, 2000, 4000] and curve[500] > curve[4000] > exact


def test_fd_infinity_rejects_subsets_larger_than_the_sets():
    with pytest.raises(ValueError, match="subset sizes"):
        metrics.fd_infinity(np.zeros((50, 3)), np.zeros((40, 3)), ns=(20, 50))


def _copying_trial(g: torch.Generator, jitter: float | None) -> float:
    """C_T for 300 generated points: fresh draws of the training distribution (jitter None) or jittered training copies."""
    d = 8
    train = torch.randn(600, d, generator=g)
    test = torch.randn(300, d, generator=g)
    if jitter is None:
        gen = torch.randn(300, d, generator=g)
    else:
        gen = train[torch.randperm(600, generator=g)[:300]] + jitter * torch.randn(300, d, generator=g)
    return metrics.copying_statistic(train, test, gen, seed=0)


def test_copying_statistic_rarely_flags_fresh_samples():
    """False-positive rate: over 20 trials with fresh samples of the training distribution, C_T < -3 at most once,
    and the values average near 0 (each cell's z-score is about N(0, 1) under no copying)."""
    g = torch.Generator().manual_seed(1)
    values = [_copying_trial(g, None) for _ in range(20)]
    assert sum(v < -3 for v in values) <= 1, values
    assert abs(np.mean(values)) < 1.0, values


def test_copying_statistic_flags_copies_and_jittered_copies():
    """Power: exact copies and copies jittered by a tenth of the data's scale are flagged (C_T < -3) in 5 of 5 trials."""
    g = torch.Generator().manual_seed(2)
    for jitter in (0.0, 0.1):
        values = [_copying_trial(g, jitter) for _ in range(5)]
        assert all(v < -3 for v in values), (jitter, values)


def test_copying_statistic_says_what_to_do_when_no_cell_has_samples():
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(100, 2, generator=g), torch.randn(50, 2, generator=g)
    with pytest.raises(ValueError, match="fewer cells or more samples"):
        far_apart = torch.tensor([[-10.0, -10.0], [10.0, 10.0]])  # two points in two different cells
        metrics.copying_statistic(train, test, far_apart, cells=5, min_share=0.6)


def test_score_digits_refuses_the_training_split_and_bad_sizes():
    images = torch.rand(30, 1, 8, 8)
    with pytest.raises(ValueError, match="held-out split"):
        metrics.score_digits(images, reference="train")
    with pytest.raises(ValueError, match="between 20 and 1000"):
        metrics.score_digits(torch.rand(5, 1, 8, 8))


def test_compare_scores_refuses_different_sample_sizes():
    base = dict(reference="test", fd=1.0, precision=1.0, recall=1.0, copying=0.0, fd_real=1.0, fd_real_spread=0.1,
                precision_real=1.0, recall_real=1.0, copying_real=-5.0)  # fmt: skip
    metrics.compare_scores(metrics.Score(n=400, **base), metrics.Score(n=400, **base))
    with pytest.raises(ValueError, match="different sample sizes"):
        metrics.compare_scores(metrics.Score(n=400, **base), metrics.Score(n=350, **base))


def test_score_digits_yardstick_copies_score_as_copies(harness_classifier):
    """Training digits scored as samples get the yardstick's values (within FD's spread) and a strongly negative C_T;
    fresh test digits' C_T is near 0 (scored against the validation split, on which neither set was drawn)."""
    train = data.digits("train").unit()
    g = torch.Generator().manual_seed(0)
    copies = train[torch.randperm(len(train), generator=g)[:300]]
    s = metrics.score_digits(copies, reference="test", seed=0, redraws=3)
    assert s.n == 300 and s.copying == pytest.approx(s.copying_real) and s.precision == s.precision_real
    assert abs(s.fd - s.fd_real) < 3 * s.fd_real_spread and s.copying < -3
    fresh = metrics.score_digits(data.digits("test").unit()[:300], reference="val", seed=0, redraws=2)
    assert abs(fresh.copying) < 3, fresh


def test_nearest_training_digits_finds_a_copy_at_distance_zero(harness_classifier):
    """A training digit's nearest training digit is itself (or an identical twin): distance 0; a validation digit's is
    farther away, and a jittered copy's nearest neighbour is usually the digit it was copied from."""
    train, val = data.digits("train").unit(), data.digits("val").unit()
    idx = torch.tensor([3, 141, 592, 653, 999])
    found, dist = metrics.nearest_training_digits(train[idx])
    assert torch.all(dist < 1e-6) and torch.equal(train[found], train[idx])
    _, dist_val = metrics.nearest_training_digits(val[:50])
    assert dist_val.min() > 0.1
    jittered = (train[:100] + 0.05 * torch.randn(100, 1, 8, 8, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    found, _ = metrics.nearest_training_digits(jittered)
    assert (found == torch.arange(100)).float().mean() > 0.8


def test_score_digits_shares_one_yardstick_per_n_split_and_seed(harness_classifier):
    """Two models scored at the same n, split and seed get the very same yardstick (computed once), so their scores
    can be read against one number."""
    test = data.digits("test").unit()
    a = metrics.score_digits(test[:40], reference="val", seed=3, redraws=2)
    b = metrics.score_digits(test[40:80], reference="val", seed=3, redraws=2)
    assert (a.fd_real, a.fd_real_spread, a.copying_real) == (b.fd_real, b.fd_real_spread, b.copying_real)
    assert a.fd != b.fd


def test_yardstick_is_the_score_digits_yardstick_and_refuses_the_training_split(harness_classifier):
    s = metrics.score_digits(data.digits("val").unit()[:60], reference="test", seed=4)
    assert metrics.yardstick(60, "test", seed=4) == (s.fd_real, s.fd_real_spread)
    with pytest.raises(ValueError, match="held-out"):
        metrics.yardstick(60, "train")


def test_the_shipped_classifier_is_used_without_training_or_cache(tmp_path, monkeypatch, counted_training):
    """With an empty cache the package's weights are loaded, nothing is trained or written, and they are a good judge."""
    monkeypatch.setenv("GENBOOK_CACHE", str(tmp_path))
    monkeypatch.setattr(metrics, "_CLASSIFIER", None)
    clf = metrics.digits_classifier()
    assert counted_training == [] and list(tmp_path.iterdir()) == []
    key = hashlib.sha256(repr(sorted(metrics.CLASSIFIER_RECIPE.items())).encode()).hexdigest()[:12]
    shipped = torch.load(metrics.SHIPPED_DIR / f"digits_classifier_{key}.pt", weights_only=True)
    assert all(torch.equal(shipped[k], v) for k, v in clf.state_dict().items())
    test = data.digits("test")
    assert (metrics.classify(test.unit())[0] == test.y).float().mean() > 0.95


def test_a_class_balanced_yardstick_draws_training_digits_of_the_requested_classes(harness_classifier):
    """With labels, every yardstick draw holds a training digit of each sample's class; a balanced set of real digits
    scores lower than a random one and varies less (the class mix of a random draw is part of its noise)."""
    labels = torch.arange(10).repeat_interleave(30)
    idx = metrics._draw(300, tuple(labels.tolist()), torch.Generator().manual_seed(0))
    assert torch.equal(data.digits("train").y[idx], labels) and len(idx.unique()) == 300
    balanced, random = metrics.yardstick(300, seed=0, labels=labels), metrics.yardstick(300, seed=0)
    assert balanced[0] < random[0] and balanced[1] < random[1]
    with pytest.raises(ValueError, match="only"):
        metrics.yardstick(300, seed=0, labels=torch.zeros(300, dtype=torch.long))
    with pytest.raises(ValueError, match="one class per sample"):
        metrics.score_digits(data.digits("val").unit()[:300], labels=labels[:100])

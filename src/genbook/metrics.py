"""One evaluation harness for every family: likelihoods, sample quality on digits, 2-D distances, cost.

| name in code | meaning |
| ------------ | ------- |
| ``nll``      | negative log-likelihood in nats per image, -log P(x) |
| ``D``        | dimensions per image (64 for 8x8 digits) |
| ``K``        | grey levels (17 for digits) |
| ``bpd``      | bits per dimension, nll / (D ln 2) |
| ``FD``       | Frechet distance between Gaussians fitted to classifier features (Heusel et al. 2017) |
| ``SCORE_N``  | the sample size of every FD, precision and recall the book reports (300), against the test digits |
| ``C_T``      | Meehan et al. (2020)'s data-copying statistic: about 0 for fresh samples, below -3 for copies |

Chapter 1 ("The evaluation harness") validates every piece here before later chapters use it.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genbook import data, runtime

# ----------------------------------------------------------------------------- likelihoods


@dataclass(frozen=True)
class NLL:
    """A test NLL in nats per image with its bits/dim; ``bound`` marks an upper bound (ELBO, dequantization)."""

    nats: float
    dims: int
    bound: bool = False

    @property
    def bpd(self) -> float:
        return bits_per_dim(self.nats, self.dims)

    def __str__(self) -> str:
        rel = "<=" if self.bound else "="
        kind = " (upper bound)" if self.bound else " (exact)"
        return f"NLL {rel} {self.nats:.2f} nats/image, {self.bpd:.3f} bits/dim{kind}"


def bits_per_dim(nll_nats: float | torch.Tensor, dims: int) -> float | torch.Tensor:
    """bits/dim = NLL / (D ln 2)."""
    return nll_nats / (dims * math.log(2))


def uniform_nll(dims: int = 64, levels: int = data.DIGIT_LEVELS) -> NLL:
    """The model that gives every image the same probability K^-D: NLL = D ln K (64 ln 17 ~ 181.3 for digits)."""
    return NLL(dims * math.log(levels), dims)


def categorical_nll(logits: torch.Tensor, x_int: torch.Tensor) -> torch.Tensor:
    """Exact discrete NLL per image: -sum_i log softmax(logits)_i[x_i].

    Shapes: logits (B, K, *pixels), x_int (B, *pixels) with values 0..K-1 -> (B,).
    """
    nll = F.cross_entropy(logits, x_int, reduction="none")  # (B, *pixels)
    return nll.flatten(1).sum(1)


def independent_pixel_nll(train_int: torch.Tensor, test_int: torch.Tensor, levels: int = data.DIGIT_LEVELS) -> NLL:
    """Exact test NLL of the independent-pixel model: each pixel's own add-one-smoothed histogram on ``train_int``.

    The baseline every likelihood model must beat (chapter 1 derives it; chapters 4 and 5 compare against it).
    Shapes: integer images (N, *pixels) and (M, *pixels) -> NLL in nats per image.
    """
    counts = F.one_hot(train_int, levels).sum(0).float() + 1  # (*pixels, K)
    log_probs = (counts / counts.sum(-1, keepdim=True)).log().movedim(-1, 0)  # (K, *pixels)
    nll = categorical_nll(log_probs.expand(len(test_int), *log_probs.shape), test_int).mean().item()
    return NLL(nll, test_int[0].numel())


def dequantized_nll(log_p_y: torch.Tensor, dims: int, levels: int = data.DIGIT_LEVELS) -> torch.Tensor:
    """Upper bound on the discrete NLL from a density on y = (x_int + u) / K in [0, 1)^D.

    -log P(x) <= E_u[-log p(y)] + D log K (Jensen; Theis et al. 2016). ``log_p_y`` (B,) -> (B,).
    """
    return -log_p_y + dims * math.log(levels)


# ----------------------------------------------------------------------------- the digits classifier


def classifier_body(channels: int, size: int, width: int = 32, feature_dim: int = 64, act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """The rulers' feature extractor: (B, channels, S, S) -> (B, feature_dim). Two 3x3 convolutions, max pooling,
    a third convolution, max pooling again (S -> S/4), a linear layer. The digits classifier here and the text-to-image
    chapter's attribute classifier (``text2image.AttributeClassifier``) are this body with their own heads."""
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1),
        act(),
        nn.Conv2d(width, width, 3, padding=1),
        act(),
        nn.MaxPool2d(2),  # S -> S/2
        nn.Conv2d(width, 2 * width, 3, padding=1),
        act(),
        nn.MaxPool2d(2),  # S/2 -> S/4
        nn.Flatten(),
        nn.Linear(2 * width * (size // 4) ** 2, feature_dim),
        act(),
    )


class DigitsClassifier(nn.Module):
    """A small CNN on 8x8 digits in [0, 1]; ``features`` gives the 64-d vectors the Frechet distance uses."""

    def __init__(self, width: int = 32, feature_dim: int = 64):
        super().__init__()
        self.body = classifier_body(1, 8, width, feature_dim)
        self.head = nn.Linear(feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1:] != (1, 8, 8):
            raise ValueError(f"the digits harness takes images of shape (B, 1, 8, 8) in [0, 1], got {tuple(x.shape)}")
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


CLASSIFIER_RECIPE = {"width": 32, "feature_dim": 64, "steps": 1500, "batch": 128, "lr": 2e-3, "seed": 1234, "shift": 1}


def cache_dir() -> Path:
    return Path(os.environ.get("GENBOOK_CACHE", Path.home() / ".cache" / "genbook"))


def _random_shift(x: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero fill): cheap augmentation for 1000 images."""
    pad = F.pad(x, (max_shift,) * 4)
    n, size = x.shape[0], x.shape[-1]
    dx, dy = torch.randint(0, 2 * max_shift + 1, (2, n), generator=g)
    rows = (dy[:, None] + torch.arange(size))[:, :, None]  # (N, 8, 1)
    cols = (dx[:, None] + torch.arange(size))[:, None, :]  # (N, 1, 8)
    return pad[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)  # (N, 1, 8, 8)


def train_digits_classifier(recipe: dict | None = None) -> DigitsClassifier:
    """Train the harness classifier on the digits train split, deterministically (fixed seed, CPU)."""
    r = {**CLASSIFIER_RECIPE, **(recipe or {})}
    g = torch.Generator().manual_seed(r["seed"])
    # The caller's random stream is left as it was, and gradients are on even inside a no_grad caller (the first FD
    # of a fresh machine trains this from inside ``features``): a chapter's numbers must not depend on whether the
    # classifier was cached.
    with torch.random.fork_rng(devices=[]), torch.enable_grad(), runtime.uncut():  # the ruler: never cut by smoke mode
        torch.manual_seed(r["seed"])  # weight init
        model = DigitsClassifier(r["width"], r["feature_dim"])
        train = data.digits("train")
        x, y = train.unit(), train.y
        opt = torch.optim.Adam(model.parameters(), lr=r["lr"])
        model.train()
        for _ in range(r["steps"]):
            idx = torch.randint(0, len(x), (r["batch"],), generator=g)
            xb = _random_shift(x[idx], r["shift"], g) if r["shift"] else x[idx]
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval().requires_grad_(False)


_CLASSIFIER: DigitsClassifier | None = None


# The recipe's weights as trained once (torch 2.13 on a 2-core x86 CPU) and shipped with the package. Retrained on
# another CPU the same recipe gives other weights (training amplifies float-level kernel differences: with torch's
# scalar kernels the weights differed by up to 0.33 and the FD of 300 validation digits read 60.0 instead of 55.4), so
# every machine uses these, and every FD in the book is measured with the same ruler.
SHIPPED_DIR = Path(__file__).parent / "weights"


def load_or_train(
    name: str, build: Callable[[], nn.Module], train: Callable[[], nn.Module], label: str, verbose: bool = False
) -> nn.Module:
    """A ruler's weights: the file ``name`` shipped with the package (``SHIPPED_DIR``), else the same file in
    ``GENBOOK_CACHE`` if trained before, else ``train()``, cached there for next time. ``build()`` makes the empty
    network; a damaged or stale file is passed over. Returns the model in eval mode without gradients."""
    model = build()
    for path in (SHIPPED_DIR / name, cache_dir() / name):
        if not path.exists():
            continue
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except (RuntimeError, OSError, EOFError, pickle.UnpicklingError):
            continue  # a stale or damaged cache file: retrain and overwrite it
        if verbose:
            print(f"{label}: the package's weights ({path.name})" if path.parent == SHIPPED_DIR else f"{label} loaded from {path}")
        return model.eval().requires_grad_(False)
    start = time.perf_counter()
    model = train()
    path = cache_dir() / name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(path)
    except OSError:
        pass  # a read-only cache folder only costs a retrain next time
    if verbose:
        print(f"{label} trained in {time.perf_counter() - start:.1f} s, cached at {path}")
    return model.eval().requires_grad_(False)


def digits_classifier(verbose: bool = False) -> DigitsClassifier:
    """The harness classifier: the weights shipped with the package for ``CLASSIFIER_RECIPE``; if a changed recipe has
    none, loaded from ``GENBOOK_CACHE`` if trained before, else trained (~15 s on 2 cores) and cached."""
    global _CLASSIFIER
    if _CLASSIFIER is None:
        key = hashlib.sha256(repr(sorted(CLASSIFIER_RECIPE.items())).encode()).hexdigest()[:12]
        _CLASSIFIER = load_or_train(
            f"digits_classifier_{key}.pt",
            lambda: DigitsClassifier(CLASSIFIER_RECIPE["width"], CLASSIFIER_RECIPE["feature_dim"]),
            train_digits_classifier,
            "harness classifier",
            verbose,
        )
    return _CLASSIFIER


@torch.no_grad()
def features(images: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    """Harness features (N, 64) of digit images (N, 1, 8, 8) in [0, 1], computed on the CPU."""
    clf = digits_classifier()
    x = images.detach().float().cpu().clamp(0, 1)
    return torch.cat([clf.features(x[i : i + batch]) for i in range(0, len(x), batch)])


@torch.no_grad()
def classify(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted labels (N,) and the classifier's confidence in them (N,) for digit images in [0, 1]."""
    clf = digits_classifier()
    probs = clf.head(features(images)).softmax(-1)
    conf, labels = probs.max(-1)
    return labels, conf


@torch.no_grad()
def inception_score(images: torch.Tensor) -> float:
    """IS = exp(E_x KL(p(y | x) || p(y))) with the harness classifier in place of Inception (Salimans et al. 2016).

    Between 1 (every image gets the same prediction) and 10 (confident predictions, all digits equally often).
    """
    probs = digits_classifier().head(features(images)).double().softmax(-1)  # (N, 10)
    marginal = probs.mean(0, keepdim=True)  # p(y)
    kl = (probs * (probs.clamp_min(1e-12).log() - marginal.log())).sum(1)
    return float(kl.mean().exp())


def label_histogram(images: torch.Tensor) -> np.ndarray:
    """Fraction of images the classifier assigns to each digit 0..9 (a mode-coverage diagnostic)."""
    labels, _ = classify(images)
    return np.bincount(labels.numpy(), minlength=10) / len(labels)


# ----------------------------------------------------------------------------- Frechet distance


def frechet_distance(feat_a: torch.Tensor | np.ndarray, feat_b: torch.Tensor | np.ndarray) -> float:
    """FD = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between Gaussians fitted to two feature sets.

    The trace of the matrix square root is computed as the sum of square roots of the eigenvalues
    of S_a^(1/2) S_b S_a^(1/2), a symmetric PSD matrix with the same spectrum as S_a S_b.
    """
    a = np.asarray(feat_a, dtype=np.float64)
    b = np.asarray(feat_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance needs two (N, d) arrays with the same d, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("frechet_distance needs at least 2 samples in each set")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))  # (d, d), also for d = 1
    w, v = np.linalg.eigh(cov_a)
    sqrt_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # S_a^(1/2)
    mid = sqrt_a @ cov_b @ sqrt_a
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((mid + mid.T) / 2), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_sqrt)


_REFERENCE: dict[str, torch.Tensor] = {}


def reference_features(split: str = "train") -> torch.Tensor:
    """Harness features of a real digits split (cached in memory)."""
    if split not in _REFERENCE:
        _REFERENCE[split] = features(data.digits(split).unit())
    return _REFERENCE[split]


HELD_OUT = ("val", "test")  # validation digits choose models, test digits report them


def _held_out(reference: str) -> str:
    """``reference`` if it is a split no model trained on, else a clear error: quality is never scored against train."""
    if reference not in HELD_OUT:
        raise ValueError(f"score against a held-out split, 'val' or 'test', not {reference!r}: no model may have trained on it")
    return reference


def fd_digits(images: torch.Tensor, reference: str = "test") -> float:
    """FD between digit images (N, 1, 8, 8) in [0, 1] and a held-out split, on the harness features. Compare only FDs
    of the same n (``SCORE_N``); ``score_digits`` puts the yardstick at that n beside it."""
    return frechet_distance(features(images), reference_features(_held_out(reference)))


# ----------------------------------------------------------------------------- precision / recall, MMD


def _distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise Euclidean distances (N, M) in float64, without cdist's matmul shortcut, which computes |a|^2 + |b|^2
    - 2 a.b and so loses the distance when the points lie far from the origin (at norm 1000, in float32, a point's
    distance to itself reads 6.3 instead of 0)."""
    return torch.cdist(a.double(), b.double(), compute_mode="donot_use_mm_for_euclid_dist")


def _kth_radius(x: torch.Tensor, k: int) -> torch.Tensor:
    d = _distances(x, x)  # (N, N)
    return d.kthvalue(k + 1, dim=1).values  # k+1: the point itself is at distance 0


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) on feature vectors (N, d).

    precision = share of fake points inside some real point's k-NN ball; recall = the reverse.
    """
    r_real, r_fake = _kth_radius(real, k), _kth_radius(fake, k)
    d = _distances(fake, real)  # (N_fake, N_real)
    precision = (d <= r_real[None, :]).any(1).float().mean().item()
    recall = (d.T <= r_fake[None, :]).any(1).float().mean().item()
    return precision, recall


def precision_recall_digits(images: torch.Tensor, reference: str = "test", k: int = 3) -> tuple[float, float]:
    """Precision and recall of digit images against a held-out split, on the harness features."""
    return precision_recall(reference_features(_held_out(reference)), features(images), k)


# ----------------------------------------------------------------------------- honest yardsticks


def fd_infinity(feat_a: torch.Tensor | np.ndarray, feat_b: torch.Tensor | np.ndarray, ns: tuple[int, ...] | None = None,
                repeats: int = 4, seed: int = 0) -> tuple[float, dict[int, float]]:  # fmt: skip
    """FD extrapolated to infinitely many samples (Chong & Forsyth 2020), and the FD at each n it was fitted on.

    FD estimated from n samples per set is biased upwards by about c / n (the fitted covariances are noisy), so
    FD_n is measured on random equal-size subsets of both sets for several n (``repeats`` subsets each), a line
    is fitted to FD_n against 1 / n, and its value at 1 / n = 0 is returned: an estimate of the Frechet distance
    between the two populations, comparable across sample sizes. Both sets need at least max(ns) rows.
    """
    a = np.asarray(feat_a, dtype=np.float64)
    b = np.asarray(feat_b, dtype=np.float64)
    most = min(len(a), len(b))
    if ns is None:
        ns = tuple(int(v) for v in np.linspace(max(most // 4, 2 * a.shape[1] // 3), most, 8))
    if min(ns) < 2 or max(ns) > most:
        raise ValueError(f"fd_infinity: subset sizes {ns} must lie in [2, {most}] (the smaller set has {most} rows)")
    rng = np.random.default_rng(seed)
    curve = {
        n: float(
            np.mean(
                [frechet_distance(a[rng.choice(len(a), n, replace=False)], b[rng.choice(len(b), n, replace=False)]) for _ in range(repeats)]
            )
        )  # fmt: skip
        for n in ns
    }
    slope, intercept = np.polyfit(1.0 / np.array(list(curve)), np.array(list(curve.values())), 1)
    return float(intercept), curve


def _nearest_distance(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Distance from each row of x to its nearest row of ref."""
    return _distances(x, ref).min(1).values


def copying_statistic(train: torch.Tensor, test: torch.Tensor, generated: torch.Tensor, cells: int = 5,
                      min_share: float = 0.02, seed: int = 0) -> float:  # fmt: skip
    """Meehan, Chaudhuri & Dasgupta (2020)'s three-sample data-copying statistic C_T on feature vectors (N, d).

    The feature space is cut into ``cells`` by k-means on the training set. In each cell, the distances of held-out
    (``test``) and of ``generated`` points to their nearest training point are compared with a Mann-Whitney U test;
    its z-score is near 0 when generated points are as far from the training set as fresh data is, strongly
    negative when they sit closer (copies), positive when farther (underfitting). C_T is the average z-score over
    cells, weighted by each cell's share of the test points, over the cells that hold at least ``min_share`` of the
    generated points. Under no copying each cell's z is about N(0, 1), so C_T below -3 is copying, not chance.
    """
    from sklearn.cluster import KMeans

    train, test, generated = train.double().cpu(), test.double().cpu(), generated.double().cpu()
    km = KMeans(n_clusters=cells, n_init=4, random_state=seed).fit(train.numpy())
    cell_test = torch.from_numpy(km.predict(test.numpy()))
    cell_gen = torch.from_numpy(km.predict(generated.numpy()))
    d_test, d_gen = _nearest_distance(test, train), _nearest_distance(generated, train)
    zs, weights = [], []
    for c in range(cells):
        p, q = d_test[cell_test == c], d_gen[cell_gen == c]
        if len(q) < max(min_share * len(generated), 1) or len(p) == 0:
            continue
        m, n = len(p), len(q)
        ranks = torch.cat([p, q]).argsort().argsort().double() + 1  # ties have probability 0 for continuous features
        u = ranks[m:].sum() - n * (n + 1) / 2  # pairs (test, generated) where the generated point is farther away
        z = (u - m * n / 2) / math.sqrt(m * n * (m + n + 1) / 12)
        zs.append(float(z))
        weights.append(m / len(test))
    if not zs:
        raise ValueError("copying_statistic: no cell holds enough generated points; use fewer cells or more samples")
    w = np.array(weights)
    return float(np.dot(w, zs) / w.sum())


@dataclass(frozen=True)
class Score:
    """A set of samples scored against held-out digits, beside n training digits scored the same way (the yardstick).

    ``fd``, ``precision``, ``recall`` and ``copying`` (C_T) are the samples'; the ``*_real`` fields are those of n
    training digits, exactly what a model that copies its training set would output, at the same n against the same
    held-out set: ``fd_real`` is the mean FD over several draws of the n training digits and ``fd_real_spread`` its
    standard deviation over them, FD's sampling noise at this n (differences smaller than about twice it are noise);
    the other ``*_real`` fields come from the first draw.
    """

    n: int
    reference: str
    fd: float
    precision: float
    recall: float
    copying: float
    fd_real: float
    fd_real_spread: float
    precision_real: float
    recall_real: float
    copying_real: float
    real_name: str = "training digits"

    def __str__(self) -> str:
        return (
            f"FD {self.fd:.1f} (n {self.real_name}: {self.fd_real:.1f} +- {self.fd_real_spread:.1f}), precision {self.precision:.2f} "
            f"({self.precision_real:.2f}), recall {self.recall:.2f} ({self.recall_real:.2f}), copying C_T {self.copying:+.1f} "
            f"({self.copying_real:+.1f}); n = {self.n} against the {self.reference} split"
        )


SCORE_N_FULL = 300  # every FD, precision and recall in the book is computed on this many samples (FD's bias depends on n)
SCORE_N = runtime.SMOKE_SAMPLES if runtime.smoke_mode() else SCORE_N_FULL  # smoke mode caps it like every sample count
_YARDSTICK: dict[tuple, tuple] = {}


def _draw(n: int, labels: tuple[int, ...] | None, g: torch.Generator) -> torch.Tensor:
    """n random training digits; with ``labels`` (one class per sample), a training digit of each sample's class."""
    if labels is None:
        return torch.randperm(len(data.digits("train")), generator=g)[:n]
    y = data.digits("train").y
    want = torch.tensor(labels)
    idx = torch.empty(n, dtype=torch.long)
    for c in want.unique():
        pool = torch.nonzero(y == c).flatten()
        slots = torch.nonzero(want == c).flatten()
        if len(slots) > len(pool):
            raise ValueError(f"{len(slots)} samples of class {int(c)}, but the training split has only {len(pool)} digits of it")
        idx[slots] = pool[torch.randperm(len(pool), generator=g)[: len(slots)]]
    return idx


def _yardstick(n: int, reference: str, seed: int, redraws: int, labels: tuple[int, ...] | None = None) -> tuple:
    """n training digits scored against ``reference``: FDs over 1 + redraws draws, P/R and C_T of the first draw
    (cached: every model scored at the same n, split, seed and labels shares its yardstick)."""
    key = (n, reference, seed, redraws, labels)
    if key not in _YARDSTICK:
        g = torch.Generator().manual_seed(seed)
        draws = [_draw(n, labels, g) for _ in range(1 + redraws)]
        # at n = 300: FD about 48 +- 8 against test, 41 +- 4 class-balanced
        _YARDSTICK[key] = yardstick_scores(reference_features("train"), reference_features(reference), draws, seed)
    return _YARDSTICK[key]


def yardstick_scores(f_train: torch.Tensor, f_ref: torch.Tensor, draws: list[torch.Tensor], seed: int = 0) -> tuple:
    """The yardstick from features: FD of each draw of training rows (``draws``, index tensors of n rows) against
    ``f_ref``, its mean and standard deviation (nan for one draw), and precision, recall and C_T of the first draw.
    ``_yardstick`` (digits) and ``text2image.score_shapes`` (shapes) both use it."""
    fds = [frechet_distance(f_train[d], f_ref) for d in draws]
    p, r = precision_recall(f_ref, f_train[draws[0]])
    c = copying_statistic(f_train, f_ref, f_train[draws[0]], seed=seed)
    return float(np.mean(fds)), float(np.std(fds, ddof=1)) if len(fds) > 1 else float("nan"), p, r, c


def _labels_key(labels: torch.Tensor | None, n: int) -> tuple[int, ...] | None:
    if labels is None:
        return None
    labels = torch.as_tensor(labels).flatten().cpu()
    if len(labels) != n:
        raise ValueError(f"labels must give one class per sample: {len(labels)} labels for {n} samples")
    return tuple(int(v) for v in labels)


def yardstick(n: int = SCORE_N, reference: str = "test", seed: int = 0, labels: torch.Tensor | None = None) -> tuple[float, float]:
    """FD of n training digits against a held-out split: the mean over 11 draws and its standard deviation, FD's
    sampling noise at this n. The same numbers ``score_digits`` puts beside a model's FD (seed for seed). With
    ``labels`` (the classes a conditional model was asked for, one per sample) each draw takes a training digit of
    each sample's class: a class-balanced set of real digits scores lower, and varies less, than a random one."""
    fd, spread, *_ = _yardstick(n, _held_out(reference), seed, 10, _labels_key(labels, n))
    return fd, spread


def score_digits(
    images: torch.Tensor, reference: str = "test", seed: int = 0, redraws: int = 10, labels: torch.Tensor | None = None
) -> Score:
    """Score n digit images (N, 1, 8, 8) in [0, 1] against a held-out split, with n training digits as the yardstick.

    The yardstick draws n of the 1000 training digits (a fixed draw per ``seed``), so samples and yardstick always
    have the same n; ``redraws`` further draws give its mean and spread. Use ``reference="val"`` while choosing a model and
    ``"test"`` for the numbers a chapter reports. A conditional model's samples pass the ``labels`` they were drawn
    for, and the yardstick then draws training digits of the same classes (what a copier asked for those labels
    would output).
    """
    _held_out(reference)
    n = len(images)
    if not 20 <= n <= len(data.digits("train")):
        raise ValueError(
            f"score_digits needs between 20 and {len(data.digits('train'))} images (the training digits bound the yardstick's n), "
            f"got {n}; the book scores metrics.SCORE_N = {SCORE_N}"
        )
    f_gen, f_ref, f_train = features(images), reference_features(reference), reference_features("train")
    fd_real, spread, p_real, r_real, c_real = _yardstick(n, reference, seed, redraws, _labels_key(labels, n))
    p, r = precision_recall(f_ref, f_gen)
    return Score(
        n=n,
        reference=reference,
        fd=frechet_distance(f_gen, f_ref),
        precision=p,
        recall=r,
        copying=copying_statistic(f_train, f_ref, f_gen, seed=seed),
        fd_real=fd_real,
        fd_real_spread=spread,
        precision_real=p_real,
        recall_real=r_real,
        copying_real=c_real,
    )


def nearest_training_digits(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index (N,) of each image's nearest training digit in harness-feature space, and the distance (N,) to it.
    For comparison, a validation digit's nearest training digit lies at a typical distance of
    ``nearest_training_digits(val)[1].median()``."""
    d = _distances(features(images), reference_features("train"))
    dist, idx = d.min(1)
    return idx, dist


def compare_scores(*scores: Score) -> None:
    """Refuse to compare scores made at different n or against different splits (FD's bias depends on n)."""
    kinds = {(s.n, s.reference) for s in scores}
    if len(kinds) > 1:
        raise ValueError(
            f"these scores were made at different sample sizes or splits {sorted(kinds)}; "
            "score every model with the same n against the same split"
        )


def mmd2(x: torch.Tensor, y: torch.Tensor, bandwidths: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0)) -> float:
    """Unbiased squared MMD (Gretton et al. 2012) with a sum of Gaussian kernels k(a, b) = exp(-|a-b|^2 / (2 h^2)).

    MMD^2 = mean_{i!=j} k(x_i, x_j) + mean_{i!=j} k(y_i, y_j) - 2 mean_{i,j} k(x_i, y_j). Shapes: (N, d), (M, d).
    """
    x, y = x.double(), y.double()

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d2 = torch.cdist(a, b).pow(2)
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)

    n, m = len(x), len(y)
    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    term_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    term_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(term_x + term_y - 2 * kxy.mean())


def mode_coverage(samples: torch.Tensor, centres: torch.Tensor, radius: float, min_share: float = 0.01) -> tuple[int, float]:
    """Modes covered and sample quality for a mixture with known centres (chapter 3, "Mode collapse").

    A mode is covered when at least ``min_share`` of the samples lie within ``radius`` of its centre;
    quality is the share of samples within ``radius`` of any centre. Shapes: (N, d), (M, d).
    """
    d = torch.cdist(samples.float(), centres.float())  # (N, M)
    nearest, which = d.min(1)
    close = nearest <= radius
    share = torch.bincount(which[close], minlength=len(centres)).float() / len(samples)
    return int((share >= min_share).sum()), close.float().mean().item()


# ----------------------------------------------------------------------------- corruptions (harness validation)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur (B, C, H, W) images with a Gaussian of std ``sigma`` pixels (reflect padding); sigma=0 is identity."""
    if sigma <= 0:
        return images
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    k1 = torch.exp(-(t**2) / (2 * sigma**2))
    k1 = k1 / k1.sum()
    c = images.shape[1]
    mode = "reflect" if radius < min(images.shape[-2:]) else "replicate"  # reflect needs radius < H and W
    x = F.pad(images, (radius,) * 4, mode=mode)
    x = F.conv2d(x, k1.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)  # horizontal pass
    return F.conv2d(x, k1.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)  # vertical pass


# ----------------------------------------------------------------------------- cost


class NFECounter(nn.Module):
    """Wraps a network and counts its forward calls (network function evaluations, NFE)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.nfe = 0

    def forward(self, *args, **kwargs):
        self.nfe += 1
        return self.net(*args, **kwargs)


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``; synchronizes CUDA so GPU work is counted."""

    def __enter__(self) -> Timer:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start

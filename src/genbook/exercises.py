"""Graded exercises: each chapter asks the reader to write pieces of its math as functions, and this module grades them.

Every exercise is one function with a fixed name and signature (``reparameterize(mu, logvar, eps)``, ...). Its test
cases call the reader's function on tensors they make themselves (nothing is trained), compare the answer with the
package's own implementation within stated tolerances, and, when the answer is wrong, say what is wrong: a known
mistake is named (``exp(logvar)`` is the variance, not the standard deviation), anything else gets the shape or the
largest error and where it is. Cases marked ``hidden`` run only in the autograder (``make student`` builds it with
otter-grader; ``make grade`` runs it), the others also run in the chapter's check cell:

    >>> from genbook import exercises
    >>> exercises.check(reparameterize)          # in the chapter, under the exercise
    reparameterize (exercise 2.1): 3 of 3 checks passed; the autograder runs 2 more.

Under ``GENBOOK_STRICT=1`` (``make test``, CI) a failed check raises, so the chapters' reference solutions are tested
on every run; otherwise it prints what failed and the notebook goes on.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genbook import autoregressive, data, gan, metrics, text2image, vae, vqvae
from genbook.diffusion import samplers, schedule
from genbook.flow_matching import paths, solvers
from genbook.flows import core as flow_core
from genbook.forensics import spectrum, watermark
from genbook.nets import masked
from genbook.notebook import strict
from genbook.video import coherence, denoiser

__all__ = ["EXERCISES", "Case", "Exercise", "ExerciseError", "check", "for_chapter", "get", "run_case", "run_cases"]


class ExerciseError(AssertionError):
    """A reader's answer failed a check; the message says what was wrong. An AssertionError, as graders expect."""


@dataclass(frozen=True)
class Case:
    """One check: ``run(fn)`` returns if ``fn`` passes and raises :class:`ExerciseError` with feedback if not."""

    name: str
    run: Callable[[Callable], None]
    hidden: bool = False
    points: int = 1


@dataclass(frozen=True)
class Exercise:
    """A graded exercise: the function the reader writes, its checks, and a typical wrong answer (tested to fail
    with feedback that names its mistake)."""

    number: str  # "2.1": chapter 2, first graded exercise
    function: str  # the name the reader's function must have
    title: str
    cases: tuple[Case, ...]
    mistake: Callable  # a typical wrong answer
    mistake_says: str  # a phrase of the feedback that answer gets

    @property
    def chapter(self) -> int:
        return int(self.number.split(".")[0])

    @property
    def question(self) -> str:
        """The autograder's name for it (a CSV column): e2_1_reparameterize."""
        return f"e{self.number.replace('.', '_')}_{self.function}"

    @property
    def points(self) -> int:
        return sum(c.points for c in self.cases)


# ----------------------------------------------------------------------------- comparing answers


def _clone(args: tuple) -> tuple:
    return tuple(a.detach().clone().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a for a in args)


def _describe(args: tuple) -> str:
    def one(a):
        if isinstance(a, torch.Tensor):
            return f"tensor{tuple(a.shape)}" if a.dim() else f"tensor({a.item():.3g})"
        if isinstance(a, nn.Module):
            return type(a).__name__
        return "a function" if callable(a) else repr(a)

    return ", ".join(one(a) for a in args)


def _call(fn: Callable, args: tuple, name: str):
    try:
        out = fn(*_clone(args))
    except ExerciseError:
        raise
    except Exception as exc:  # the reader's code: any error becomes feedback, never a crash of the grader
        raise ExerciseError(f"calling {name}({_describe(args)}) raised {type(exc).__name__}: {exc}") from None
    if out is None or out is Ellipsis:
        raise ExerciseError(f"{name} returned None: its body is still `...`, or a `return` is missing")
    return out


def _as_tensor(x) -> torch.Tensor | None:
    if isinstance(x, torch.Tensor):
        return x.detach().double()
    if isinstance(x, np.ndarray):
        return torch.as_tensor(x.astype(np.float64))
    if isinstance(x, numbers.Real):  # int, float, numpy scalars, fractions.Fraction
        return torch.tensor(float(x), dtype=torch.float64)
    return None


def _mismatch(got, want, rtol: float, atol: float, what: str = "the answer") -> str | None:
    """None if ``got`` matches ``want`` (a tensor, a number or a tuple of them); otherwise what differs, in words."""
    if isinstance(want, tuple):
        if not isinstance(got, (tuple, list)) or len(got) != len(want):
            return f"{what} should be a tuple of {len(want)} values, got {type(got).__name__}" + (
                f" of {len(got)}" if isinstance(got, (tuple, list)) else ""
            )
        for i, (g, w) in enumerate(zip(got, want)):
            problem = _mismatch(g, w, rtol, atol, f"output {i + 1} of {len(want)}")
            if problem:
                return problem
        return None
    g, w = _as_tensor(got), _as_tensor(want)
    if g is None:
        return f"{what} should be {'a tensor' if isinstance(want, torch.Tensor) else 'a number'}, got {type(got).__name__}"
    if isinstance(want, torch.Tensor) and not isinstance(got, torch.Tensor):
        return f"{what} should be a torch tensor of shape {tuple(want.shape)}, got {type(got).__name__}"
    if not isinstance(want, torch.Tensor) and g.numel() != 1:
        return f"{what} should be a single number, got shape {tuple(g.shape)}"
    if isinstance(want, torch.Tensor) and g.shape != w.shape:
        return f"{what} has shape {tuple(g.shape)}; expected {tuple(w.shape)}"
    g, w = g.reshape(w.shape), w
    bad = ~torch.isfinite(g) & torch.isfinite(w)
    if bad.any():
        i = tuple(int(j) for j in bad.nonzero()[0]) if w.dim() else ()
        return f"{what} holds {g[i].item()} at index {i} where the answer is {w[i].item():.6g}: a number overflowed or divided by zero"
    if torch.allclose(g, w, rtol=rtol, atol=atol, equal_nan=True):
        return None
    err = ((g - w).abs() - rtol * w.abs()).nan_to_num(nan=float("inf"))
    i = tuple(int(j) for j in np.unravel_index(int(err.argmax()), tuple(w.shape))) if w.dim() else ()
    where = f" at index {i}" if i else ""
    tolerance = f"tolerance {atol:g} + {rtol:g} x |answer|"
    return (
        f"{what} is off by {(g - w).abs().max().item():.3g} ({tolerance}): {g[i].item():.6g}{where} where the answer is {w[i].item():.6g}"
    )


def _compare(
    name: str,
    make: Callable[[], tuple],
    reference: Callable,
    diagnoses: tuple[tuple[Callable, str], ...] = (),
    *,
    function: str,
    hidden: bool = False,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    hint: str = "",
) -> Case:
    """A case that calls the reader's function on ``make()`` and compares with ``reference`` on the same inputs.
    On a mismatch, each diagnosis (a wrong function, its message) whose output equals the reader's names the mistake."""

    def run(fn: Callable) -> None:
        args = make()
        want = reference(*_clone(args))
        got = _call(fn, args, function)
        problem = _mismatch(got, want, rtol, atol)
        if problem is None:
            return
        for wrong, message in diagnoses:
            try:
                if _mismatch(got, wrong(*_clone(args)), rtol, atol) is None:
                    raise ExerciseError(f"{name}: {message}")
            except ExerciseError:
                raise
            except Exception:  # a diagnosis that does not apply to these inputs
                continue
        raise ExerciseError(f"{name}: {problem}." + (f" {hint}" if hint else ""))

    return Case(name, run, hidden)


def _custom(name: str, run: Callable[[Callable], None], hidden: bool = False) -> Case:
    def wrapped(fn: Callable) -> None:
        try:
            run(fn)
        except ExerciseError as exc:
            raise ExerciseError(f"{name}: {exc}") from None

    return Case(name, wrapped, hidden)


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=_g(seed), dtype=dtype)


def _raises(fn: Callable, args: tuple, name: str, error: type[Exception], why: str) -> None:
    try:
        fn(*args)
    except error:
        return
    except Exception as exc:
        raise ExerciseError(f"{name}({_describe(args)}) raised {type(exc).__name__}; expected a {error.__name__}: {why}") from None
    raise ExerciseError(f"{name}({_describe(args)}) returned; it should raise a {error.__name__}: {why}")


# ----------------------------------------------------------------------------- chapter 1: the toolkit


def _fd_sets(seed: int, d: int = 4, n: int = 300, rotate: bool = False):
    a = _randn(n, d, seed=seed, dtype=torch.float64) @ torch.diag(torch.linspace(0.5, 2.0, d, dtype=torch.float64))
    b = _randn(n, d, seed=seed + 1, dtype=torch.float64) + 0.7
    if rotate:  # covariances that do not commute: sqrt(S_a S_b) is not sqrt(S_a) sqrt(S_b)
        q, _ = torch.linalg.qr(_randn(d, d, seed=seed + 2, dtype=torch.float64))
        b = b @ torch.diag(torch.linspace(3.0, 0.3, d, dtype=torch.float64)) @ q
    return a, b


def _fd_no_mean(a, b):
    return metrics.frechet_distance(a, b) - float(((a.mean(0) - b.mean(0)) ** 2).sum())


def _fd_product_of_roots(a, b):
    def root(m):
        w, v = torch.linalg.eigh(m)
        return (v * w.clamp_min(0).sqrt()) @ v.T

    ca, cb = torch.cov(a.T), torch.cov(b.T)
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + ca.trace() + cb.trace() - 2 * (root(ca) @ root(cb)).trace())


def _fd_biased(a, b):
    def shrink(x):  # rescaled about its mean so that np.cov's N - 1 gives the covariance divided by N
        return x.mean(0) + (x - x.mean(0)) * math.sqrt((len(x) - 1) / len(x))

    return metrics.frechet_distance(shrink(a), shrink(b))


_FD = dict(function="frechet_distance", rtol=1e-3, atol=1e-4)
_FD_DIAG = (
    (_fd_no_mean, "the mean term |mu_a - mu_b|^2 is missing"),
    (
        _fd_product_of_roots,
        "tr((S_a S_b)^(1/2)) is not tr(S_a^(1/2) S_b^(1/2)) unless the covariances commute; take the square root of the product",
    ),
    (_fd_biased, "the covariances divide by N; np.cov and torch.cov divide by N - 1, as the package does"),
)

_CATEGORICAL = dict(function="categorical_nll", rtol=1e-4, atol=1e-3)
_CATEGORICAL_DIAG = (
    (lambda lg, x: F.cross_entropy(lg, x, reduction="none").flatten(1).mean(1), "the NLL of an image sums over its pixels; you averaged"),
    (
        lambda lg, x: -lg.gather(1, x[:, None]).flatten(1).sum(1),
        "logits are not log-probabilities: subtract their logsumexp over the K levels (log_softmax) first",
    ),
    (lambda lg, x: F.cross_entropy(lg, x, reduction="none").sum(), "return one NLL per image, shape (B,), not the batch's total"),
)


def _categorical_inputs(seed: int, scale: float = 2.0, b: int = 3, k: int = 17, size: int = 4):
    logits = _randn(b, k, size, size, seed=seed) * scale
    return logits, torch.randint(0, k, (b, size, size), generator=_g(seed + 1))


# ----------------------------------------------------------------------------- chapter 2: VAEs


_REPARAM = dict(function="reparameterize", rtol=1e-5, atol=1e-6)
_REPARAM_DIAG = (
    (lambda mu, lv, eps: mu + lv.exp() * eps, "exp(logvar) is the variance; the standard deviation is exp(logvar / 2)"),
    (lambda mu, lv, eps: mu + lv * eps, "logvar is a log-variance: the standard deviation is exp(logvar / 2)"),
    (lambda mu, lv, eps: mu + lv.sqrt() * eps, "logvar is a log-variance: the standard deviation is exp(logvar / 2), not sqrt(logvar)"),
)


def _reparam_gradients(fn: Callable) -> None:
    mu, lv, eps = _randn(4, 3, seed=21), _randn(4, 3, seed=22) - 1, _randn(4, 3, seed=23)
    grads = []
    for f in (vae.reparameterize, fn):
        m, l_ = mu.clone().requires_grad_(), lv.clone().requires_grad_()
        try:
            out = f(m, l_, eps)
        except Exception as exc:  # the reader's code
            raise ExerciseError(f"calling reparameterize raised {type(exc).__name__}: {exc}") from None
        if out is None:
            raise ExerciseError("reparameterize returned None: its body is still `...`, or a `return` is missing")
        if not isinstance(out, torch.Tensor) or not out.requires_grad:
            raise ExerciseError(
                "no gradient reaches mu and logvar: the sample must be computed from them with tensor operations "
                "(no .detach(), .item() or a fresh torch.randn)"
            )
        out.pow(2).sum().backward()
        grads.append((m.grad, l_.grad))
    for (w, g), which in zip(zip(*grads), ("mu", "logvar")):
        if g is None or not torch.allclose(g, w, rtol=1e-4, atol=1e-5):
            raise ExerciseError(
                f"the gradient with respect to {which} is wrong; the trick is that z = mu + sigma * eps is a differentiable "
                "function of both"
            )


_KL = dict(function="gaussian_kl", rtol=1e-4, atol=1e-5)
_KL_DIAG = (
    (
        lambda mu, lv: 0.5 * (mu.pow(2) + lv.exp() + lv - 1).sum(-1),
        "the sign of the log-variance term: it is -log sigma^2 (KL = 1/2 sum(mu^2 + sigma^2 - log sigma^2 - 1))",
    ),
    (lambda mu, lv: (mu.pow(2) + lv.exp() - lv - 1).sum(-1), "the factor 1/2 is missing"),
    (
        lambda mu, lv: 0.5 * (mu.pow(2) + lv.exp() - lv - 1).mean(-1),
        "the KL of a diagonal Gaussian sums over the latent dimensions; you averaged",
    ),
    (lambda mu, lv: 0.5 * (mu.pow(2) + lv - lv.log() - 1).sum(-1), "logvar is log sigma^2: sigma^2 is exp(logvar)"),
)


# ----------------------------------------------------------------------------- chapter 3: GANs


_DLOSS = dict(function="d_loss", rtol=1e-4, atol=1e-5)
_DLOSS_DIAG = (
    (
        lambda r, f: gan.d_loss(f, r),
        "real and fake are swapped: D should give real images high logits, so the loss is softplus(-real) + softplus(fake)",
    ),
    (lambda r, f: F.softplus(-r).sum() + F.softplus(f).sum(), "average over the batch (an expectation), do not sum"),
    (lambda r, f: (F.softplus(-r).mean() + F.softplus(f).mean()) / 2, "the two cross-entropy terms are added, not averaged"),
)
_GLOSS = dict(function="g_loss_nonsaturating", rtol=1e-4, atol=1e-5)
_GLOSS_DIAG = (
    (
        gan.g_loss_minimax,
        "this is the minimax loss log(1 - D(G(z))), whose gradient vanishes where D rejects the fakes; "
        "the non-saturating loss is -log D(G(z))",
    ),
    (lambda f: -F.softplus(-f).mean(), "the sign: the generator minimizes -log D(G(z)) = softplus(-logit)"),
    (lambda f: F.softplus(-f).sum(), "average over the batch (an expectation), do not sum"),
)


def _logits(seed: int, n: int = 8, scale: float = 2.0) -> torch.Tensor:
    return _randn(n, seed=seed) * scale


def _extreme(n: int = 4) -> torch.Tensor:
    return torch.tensor([-200.0, -60.0, 60.0, 200.0])[:n]


# ----------------------------------------------------------------------------- chapter 4: flows


def _coupling_parts(dim: int, parity: int, seed: int):
    with torch.random.fork_rng():  # a fixed initialization that leaves the reader's random stream alone
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(dim, 16), nn.Tanh(), nn.Linear(16, 2 * dim))
    return flow_core.alternating_mask(dim, parity), net


def _package_coupling(mask, net):
    return flow_core.AffineCoupling(mask, net, scale_bound=1e4)  # soft clamp at 1e4: the identity on these inputs


def _coupling_forward_ref(x, mask, net):
    with torch.no_grad():
        return _package_coupling(mask, net)(x)


def _coupling_inverse_ref(z, mask, net):
    with torch.no_grad():
        return _package_coupling(mask, net).inverse(z)


def _st(x, mask, net):
    s, t = net(x * mask).chunk(2, dim=1)
    return s * (1 - mask), t * (1 - mask)


def _fwd_bad_logdet(x, mask, net):
    s, t = _st(x, mask, net)
    return x * s.exp() + t, -s.sum(1)


def _fwd_unmasked(x, mask, net):
    s, t = net(x * mask).chunk(2, dim=1)
    return x * s.exp() + t, s.sum(1)


def _fwd_net_sees_all(x, mask, net):
    s, t = net(x).chunk(2, dim=1)
    s, t = s * (1 - mask), t * (1 - mask)
    return x * s.exp() + t, s.sum(1)


def _inv_wrong_order(z, mask, net):
    s, t = _st(z, mask, net)
    return z * (-s).exp() - t, -s.sum(1)


def _inv_scale_up(z, mask, net):
    s, t = _st(z, mask, net)
    return (z - t) * s.exp(), -s.sum(1)


def _inv_bad_logdet(z, mask, net):
    s, t = _st(z, mask, net)
    return (z - t) * (-s).exp(), s.sum(1)


_COUPLING_FWD = dict(function="coupling_forward", rtol=1e-4, atol=1e-5)
_COUPLING_FWD_DIAG = (
    (_fwd_bad_logdet, "the log-determinant of the forward map is +sum(s): the scales multiply volumes by exp(s)"),
    (_fwd_unmasked, "s and t must act only on the transformed coordinates (where mask = 0): multiply them by (1 - mask)"),
    (_fwd_net_sees_all, "the net may see only the kept coordinates, x * mask; otherwise the map cannot be inverted"),
)
_COUPLING_INV = dict(function="coupling_inverse", rtol=1e-4, atol=1e-5)
_COUPLING_INV_DIAG = (
    (_inv_wrong_order, "undo the forward map in reverse order: subtract t first, then divide by exp(s): x = (z - t) exp(-s)"),
    (_inv_scale_up, "the inverse divides by the scale: multiply by exp(-s), not exp(s)"),
    (_inv_bad_logdet, "the inverse map's log-determinant is -sum(s), the negative of the forward one"),
)


def _coupling_jacobian(fn: Callable) -> None:
    mask, net = _coupling_parts(4, 0, seed=41)
    x = _randn(3, 4, seed=42)
    for i in range(len(x)):
        out = _call(fn, (x[i : i + 1], mask, net), "coupling_forward")
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise ExerciseError("coupling_forward must return a pair (z, logdet)")
        with torch.no_grad():
            jac = torch.autograd.functional.jacobian(lambda v: _package_coupling(mask, net)(v[None])[0][0], x[i])
        want = torch.linalg.slogdet(jac).logabsdet.item()
        got = _as_tensor(out[1])
        if got is None or got.numel() != 1 or abs(got.item() - want) > 1e-4 + 1e-4 * abs(want):
            raise ExerciseError(
                f"logdet should be log|det dz/dx| = {want:.5f} for this input (from the full Jacobian), "
                f"got {got.flatten().tolist() if got is not None else out[1]}"
            )


def _coupling_roundtrip(fn: Callable) -> None:
    mask, net = _coupling_parts(6, 1, seed=43)
    x = _randn(5, 6, seed=44)
    z, logdet = _coupling_forward_ref(x, mask, net)
    out = _call(fn, (z, mask, net), "coupling_inverse")
    problem = _mismatch(out, (x, -logdet), 1e-4, 1e-5)
    if problem:
        raise ExerciseError(f"coupling_inverse(coupling_forward(x)) should give back (x, -logdet): {problem}")


# ----------------------------------------------------------------------------- chapter 5: autoregressive models


_MASK = dict(function="causal_mask", rtol=0, atol=0)
_MASK_DIAG = (
    (
        lambda k, t: masked.causal_mask(k, "B" if t == "A" else "A"),
        "masks A and B are swapped: mask A (the first layer) excludes the centre pixel, which is the one being predicted; mask B keeps it",
    ),
    (
        lambda k, t: masked.causal_mask(k, t).T,
        "transposed: the rows above the centre and the pixels left of the centre in its own row are visible (raster order)",
    ),
    (
        lambda k, t: masked.causal_mask(k, t).flip(0).flip(1),
        "flipped: raster order reads top to bottom and left to right, so the visible pixels are above and to the left",
    ),
)


def _mask_even(fn: Callable) -> None:
    _raises(fn, (4, "A"), "causal_mask", ValueError, "an even kernel has no centre pixel")


_MASKED_CE = dict(function="masked_cross_entropy", rtol=1e-4, atol=1e-5)
_MASKED_CE_DIAG = (
    (
        lambda lg, y, m: F.cross_entropy(lg.flatten(0, 1), y.flatten()),
        "only the masked positions count: the visible ones are given to the model",
    ),
    (
        lambda lg, y, m: (F.cross_entropy(lg.transpose(1, 2), y, reduction="none") * m).sum(1).div(m.sum(1).clamp_min(1)).mean(),
        "average over every masked token of the batch at once, not row by row (rows mask different numbers of tokens)",
    ),
    (
        lambda lg, y, m: F.cross_entropy(lg[~m], y[~m]),
        "the mask is True where a token was replaced by [MASK]: score those, not the visible ones",
    ),
)


def _ce_inputs(seed: int, b: int = 4, t: int = 16, v: int = 10, share: float = 0.5):
    logits = _randn(b, t, v, seed=seed) * 2
    targets = torch.randint(0, v, (b, t), generator=_g(seed + 1))
    m = torch.rand(b, t, generator=_g(seed + 2)) < torch.linspace(0.2, 0.9, b)[:, None] * share * 2
    m[:, 0] = True  # at least one masked token per row
    return logits, targets, m


# ----------------------------------------------------------------------------- chapter 6: diffusion


_SCHED = schedule.cosine_schedule(1000)


def _q_ref(x0, ab, eps):
    ab = ab.reshape(-1, *([1] * (x0.dim() - 1)))
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


def _q_package(x0, ab, eps):
    t = (_SCHED.alpha_bar.float()[None, :] - ab[:, None]).abs().argmin(1)  # the steps these alpha_bars belong to
    return _SCHED.q_sample(x0, t, eps)


def _q_inputs(seed: int, shape=(8, 1, 8, 8), steps=(0, 100, 250, 400, 600, 750, 900, 999)):
    ab = _SCHED.alpha_bar.float()[list(steps)]
    return _randn(*shape, seed=seed), ab, _randn(*shape, seed=seed + 1)


def _q_unbroadcast(x0, ab, eps):
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


_QSAMPLE = dict(function="q_sample", rtol=1e-4, atol=1e-5)
_QSAMPLE_DIAG = (
    (lambda x0, ab, e: _q_ref(x0, ab**2, e), "the coefficients are square roots: sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps"),
    (lambda x0, ab, e: _q_ref(e, ab, x0), "x0 and eps are swapped: alpha_bar near 1 (small t) should leave the image almost clean"),
    (_q_unbroadcast, "alpha_bar has one value per image, shape (B,): reshape it to (B, 1, 1, 1) so that it broadcasts over the pixels"),
)


def _ddim_package(x, eps_hat, ab_t, ab_prev):
    """The package's ddim_step on a schedule whose two steps have exactly these alpha_bars (t = 1 -> t_prev = 0, or
    to clean data when ab_prev = 1)."""
    if ab_prev >= 1:
        sched = schedule.Schedule(torch.tensor([1 - ab_t], dtype=torch.float64))
        t, t_prev = 0, -1
    else:
        sched = schedule.Schedule(torch.tensor([1 - ab_prev, 1 - ab_t / ab_prev], dtype=torch.float64))
        t, t_prev = 1, 0
    return samplers.ddim_step(lambda x_, tt, y: eps_hat, sched, x, t, t_prev)


def _ddim_inputs(seed: int, t: int = 600, t_prev: int = 400, shape=(3, 1, 8, 8)):
    ab = _SCHED.alpha_bar
    ab_prev = 1.0 if t_prev < 0 else float(ab[t_prev])
    return _randn(*shape, seed=seed), _randn(*shape, seed=seed + 1), float(ab[t]), ab_prev


def _ddim_sign(x, e, a, ap):
    x0 = (x + math.sqrt(1 - a) * e) / math.sqrt(a)
    return math.sqrt(ap) * x0 + math.sqrt(1 - ap) * e


def _ddim_no_direction(x, e, a, ap):
    return math.sqrt(ap) * (x - math.sqrt(1 - a) * e) / math.sqrt(a)


def _ddim_no_sqrt(x, e, a, ap):
    x0 = (x - (1 - a) * e) / a
    return ap * x0 + (1 - ap) * e


_DDIM = dict(function="ddim_update", rtol=1e-4, atol=1e-4)
_DDIM_DIAG = (
    (
        _ddim_sign,
        "the sign in the predicted clean image: x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_bar_t), "
        "the noise is subtracted",
    ),
    (
        _ddim_no_direction,
        "the term pointing back to x_t, sqrt(1 - alpha_bar_prev) eps_hat, is missing: without it every step jumps to the clean estimate",
    ),
    (_ddim_no_sqrt, "the coefficients are square roots of the alpha_bars"),
)


# ----------------------------------------------------------------------------- chapter 7: flow matching


def _ot_ref(x0, x1, t, sigma_min):
    path = paths.OTPath(sigma_min)
    return path.sample_xt(x0, x1, t), path.target(x0, x1, t)


def _ot_inputs(seed: int, sigma_min: float, shape=(5, 3), t=None):
    t = torch.rand(shape[0], generator=_g(seed + 2)) if t is None else t
    return _randn(*shape, seed=seed), _randn(*shape, seed=seed + 1) + 2, t, sigma_min


_OT = dict(function="ot_path", rtol=1e-5, atol=1e-5)
_OT_DIAG = (
    (
        lambda x0, x1, t, s: (_ot_ref(x0, x1, t, s)[0], -_ot_ref(x0, x1, t, s)[1]),
        "the velocity points the wrong way: the path runs from noise x0 at t = 0 to data x1 at t = 1, so u_t = x1 - (1 - sigma_min) x0",
    ),
    (
        lambda x0, x1, t, s: _ot_ref(x0, x1, t, 0.0),
        "sigma_min is ignored: sigma_t = 1 - (1 - sigma_min) t, so the noise keeps a width sigma_min at t = 1",
    ),
    (lambda x0, x1, t, s: _ot_ref(x1, x0, t, s), "noise and data are swapped: x0 is the noise (t = 0), x1 the data (t = 1)"),
)


def _field_linear(x, t):
    return -x


def _field_time(x, t):
    t = torch.as_tensor(t, dtype=x.dtype)
    return t.reshape(-1, *([1] * (x.dim() - 1))) * torch.cos(x) + 0.5


def _euler(v, x0, steps):
    return solvers.euler(v, x0, steps)


def _heun_at_t(v, x0, steps):
    h, x = 1.0 / steps, x0
    for i in range(steps):
        t = torch.full((len(x),), i * h)
        d = v(x, t)
        x = x + h / 2 * (d + v(x + h * d, t))
    return x


_HEUN = dict(function="heun", rtol=1e-4, atol=1e-5)
_HEUN_DIAG = (
    (
        _euler,
        "that is Euler's method; Heun takes an Euler step to predict the end point, then steps with the average of the slopes at both ends",
    ),
    (_heun_at_t, "the predicted end point's slope is taken at time t + h, not t"),
)


def _heun_evaluations(fn: Callable) -> None:
    calls = []

    def v(x, t):
        calls.append(1)
        return _field_time(x, t)

    _call(fn, (v, _randn(4, 2, seed=71), 5), "heun")
    if len(calls) != 10:
        raise ExerciseError(f"heun with 5 steps called v_fn {len(calls)} times; Heun's method costs two evaluations per step (10)")


# ----------------------------------------------------------------------------- chapter 9: image tokens and unCLIP


def _codes_inputs(seed: int, b: int = 2, d: int = 3, h: int = 4, w: int = 5, k: int = 7) -> tuple:
    return _randn(b, d, h, w, seed=seed), _randn(k, d, seed=seed + 1)


def _codes_no_permute(z, book):
    b, d, h, w = z.shape
    return torch.cdist(z.reshape(-1, d), book).argmin(1).view(b, h, w)


def _codes_dot(z, book):
    return torch.einsum("bdhw,kd->bhwk", z, book).argmax(-1)


_CODES = dict(function="nearest_codes", rtol=0.0, atol=0.0)
_CODES_DIAG = (
    (
        _codes_no_permute,
        "z_e is (B, D, h, w): move D last (permute(0, 2, 3, 1)) before reading one D-vector per position",
    ),
    (
        lambda z, book: torch.cdist(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]), book).argmax(1).view(z.shape[0], *z.shape[2:]),
        "the nearest code is the one at the smallest distance (argmin), not the largest",
    ),
    (
        lambda z, book: torch.cdist(z.permute(0, 3, 2, 1).reshape(-1, z.shape[1]), book).argmin(1).view(z.shape[0], *z.shape[2:]),
        "the positions come out in the wrong order: permute(0, 2, 3, 1) lists them row by row, as view(B, h, w) reads them",
    ),
    (
        _codes_dot,
        "the largest dot product is not the nearest code: ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2, and ||e||^2 differs between codes",
    ),
)


def _unit_pair(seed: int, n: int = 4, e: int = 6, t: float = 0.3) -> tuple:
    return F.normalize(_randn(n, e, seed=seed), dim=-1), F.normalize(_randn(n, e, seed=seed + 1), dim=-1), t


def _same_pair(seed: int) -> tuple:
    a = torch.tensor([[0.6, 0.8, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, -0.8, 0.6]])  # exactly unit
    return a, a.clone(), 0.4  # <a, a> = 1 exactly, so sin(theta) = 0: the formula divides by zero


_SLERP = dict(function="slerp", rtol=1e-4, atol=1e-5)
_SLERP_DIAG = (
    (lambda a, b, t: (1 - t) * a + t * b, "the straight line between two unit vectors leaves the sphere: interpolate the angle"),
    (
        lambda a, b, t: F.normalize((1 - t) * a + t * b, dim=-1),
        "normalizing the straight line stays on the sphere, but its angle does not move evenly with t",
    ),
    (
        lambda a, b, t: text2image.slerp(a, b, 1 - t),
        "at t = 0 the answer must be a, at t = 1 b: sin((1 - t) theta) weighs a",
    ),
)


# ----------------------------------------------------------------------------- chapter 10: captions


def _said_true(seed: int, n: int = 8, k: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = _g(seed)
    true = torch.randint(0, k, (n, 2), generator=g)
    true[: n // 2, 1] = -1  # one-shape scenes: slot 1 is empty
    said = torch.where(torch.rand(n, 2, generator=g) < 0.6, true, torch.randint(0, k, (n, 2), generator=g))
    said[torch.rand(n, 2, generator=g) < 0.3] = -1  # not said
    said[true < 0] = torch.randint(-1, k, (int((true < 0).sum()),), generator=g)  # whatever it says of an empty slot
    return said, true


_SAID = dict(function="said_right_wrong", rtol=1e-5, atol=1e-6)
_SAID_DIAG = (
    (
        lambda s, t: torch.stack([((s == t) & (t >= 0)).sum() / (t >= 0).sum(), ((s != t) & (t >= 0)).sum() / (t >= 0).sum()]).float(),
        "a factor the caption does not say (-1) is neither right nor wrong: count as wrong only what it says (>= 0) and gets wrong",
    ),
    (
        lambda s, t: torch.stack([((s == t) & (t >= 0)).sum() / t.numel(), ((s >= 0) & (s != t) & (t >= 0)).sum() / t.numel()]).float(),
        "divide by the number of slots that hold a shape (true >= 0), not by every slot",
    ),
    (
        lambda s, t: torch.stack([(s == t).sum() / (t >= 0).sum(), ((s >= 0) & (s != t) & (t >= 0)).sum() / (t >= 0).sum()]).float(),
        "an empty slot (-1 in true) is not a right answer, even where the caption says nothing of it",
    ),
)

_GUIDE = dict(function="guided_eps", rtol=1e-5, atol=1e-6)
_GUIDE_DIAG = (
    (
        lambda c, u, w: w * c + (1 - w) * u,
        "with w = 0 the answer must be the conditional prediction: (1 + w) eps_cond - w eps_uncond",
    ),
    (
        lambda c, u, w: (1 + w) * u - w * c,
        "eps_cond and eps_uncond are swapped: guidance moves away from the unconditional prediction",
    ),
    (
        lambda c, u, w: c + w * u,
        "guidance adds w times the difference eps_cond - eps_uncond to the conditional prediction",
    ),
)


def _eps_pair(seed: int, w: float) -> tuple:
    return _randn(2, 4, 3, 3, seed=seed), _randn(2, 4, 3, 3, seed=seed + 1), w


# ----------------------------------------------------------------------------- chapter 11: video


def _video_h(seed: int, b: int = 2, t: int = 3, c: int = 4, hh: int = 2, ww: int = 3) -> tuple:
    return _randn(b * t, c, hh, ww, seed=seed), t


def _seq_time_major(h, frames):
    bt, c, hh, ww = h.shape
    return h.view(frames, bt // frames, c, hh * ww).permute(1, 3, 0, 2).reshape(-1, frames, c)


def _seq_no_permute(h, frames):
    bt, c, hh, ww = h.shape
    return h.reshape(-1, frames, c)


_SEQ = dict(function="frames_to_sequences", rtol=0, atol=0)
_SEQ_DIAG = (
    (_seq_time_major, "the batch is clip-major: row b * T + t of h is frame t of clip b, so view it as (B, T, C, H*W), not (T, B, ...)"),
    (_seq_no_permute, "a reshape alone mixes channels, positions and frames: move the axes first (permute), then reshape"),
)


def _seq_meaning(fn: Callable) -> None:
    h, frames = _video_h(81, b=2, t=4, c=3, hh=2, ww=2)
    out = _call(fn, (h, frames), "frames_to_sequences")
    if not isinstance(out, torch.Tensor) or out.shape != (8, 4, 3):
        raise ExerciseError(f"expected shape (B*H*W, T, C) = (8, 4, 3), got {getattr(out, 'shape', type(out).__name__)}")
    b, p, t = 1, 2, 3  # clip 1, spatial position 2 (row 1, column 0), frame 3
    want = h[b * frames + t, :, p // 2, p % 2]
    if not torch.equal(out[b * 4 + p, t], want):
        raise ExerciseError("sequence b * H * W + p should hold position p of clip b: its step t is h[b * T + t, :, p // W, p % W]")


def _track_inputs(seed: int, n: int = 4, t: int = 6):
    return (_randn(n, t, 2, seed=seed) * 3).cumsum(1)


_ACC = dict(function="acceleration", rtol=1e-5, atol=1e-5)
_ACC_DIAG = (
    (
        lambda p: (p[:, 2:] - 2 * p[:, 1:-1] + p[:, :-2]).pow(2).sum(-1),
        "the acceleration is the length of the 2-D second difference: take the square root (norm), not the squared length",
    ),
    (
        lambda p: (p[:, 2:] - 2 * p[:, 1:-1] + p[:, :-2]).abs().sum(-1),
        "the length of a 2-D vector is its Euclidean norm, not the sum of |x| and |y|",
    ),
    (lambda p: (p[:, 2:] - p[:, 1:-1] + p[:, :-2]).norm(dim=-1), "the second difference is p[t+1] - 2 p[t] + p[t-1]"),
)


# ----------------------------------------------------------------------------- chapter 12: forensics


def _images(seed: int, n: int = 3, c: int = 1, size: int = 8) -> torch.Tensor:
    return torch.rand(n, c, size, size, generator=_g(seed))


def _ring_variant(images, squared: bool = True, shifted: bool = True, averaged: bool = True):
    """spectrum.ring_power with one step done wrong: the magnitude instead of the power, the spectrum not centred, or
    the ring's total instead of its mean (the three diagnoses below)."""
    grey = images.float().mean(1)
    h, w = grey.shape[-2:]
    f = torch.fft.fft2(grey)
    f = torch.fft.fftshift(f, dim=(-2, -1)) if shifted else f
    power = (f.abs().pow(2) if squared else f.abs()).flatten(1)
    r, bins = spectrum._rings(h, w, grey.device)
    sums = torch.zeros(len(grey), bins, dtype=power.dtype).index_add(1, r, power)
    return sums / torch.bincount(r, minlength=bins).to(power.dtype) if averaged else sums


def _ring_unsquared(images):
    return _ring_variant(images, squared=False)


_RING = dict(function="ring_power", rtol=1e-3, atol=1e-3)
_RING_DIAG = (
    (_ring_unsquared, "power is the squared magnitude |F(u, v)|^2 of the transform"),
    (
        lambda images: _ring_variant(images, shifted=False),
        "measure each frequency's radius from the zero frequency: centre the spectrum with fftshift first",
    ),
    (
        lambda images: _ring_variant(images, averaged=False),
        "average the power over each ring (rings hold different numbers of frequencies), do not sum it",
    ),
)


_FPR = dict(function="binomial_fpr", rtol=1e-9, atol=1e-300)
_FPR_DIAG = (
    (
        lambda n, k: math.comb(n, k) / 2**n,
        "that is the chance of exactly `threshold` matches; a detection needs at least `threshold`: sum the tail i = threshold..bits",
    ),
    (
        lambda n, k: watermark.binomial_fpr(n, k + 1) if k < n else 0.0,
        "off by one: `threshold` matching bits already count as a detection (i >= threshold)",
    ),
    (
        lambda n, k: 1 - watermark.binomial_fpr(n, k),
        "that is the chance of fewer than `threshold` matches: the false-positive rate is the upper tail",
    ),
)


def _fpr_bad_threshold(fn: Callable) -> None:
    _raises(fn, (8, 9), "binomial_fpr", ValueError, "a threshold above the number of bits is a mistake the caller should hear about")


# ----------------------------------------------------------------------------- chapter 13: one table


_DEQ = dict(function="dequantized_nll", rtol=1e-5, atol=1e-4)
_DEQ_DIAG = (
    (
        lambda lp, d, k: -lp - d * math.log(k),
        "the sign of D log K: y = (x + u) / K squeezes each level into a width 1/K, so densities on y are K^D times "
        "larger than probabilities of x; add D log K",
    ),
    (lambda lp, d, k: lp + d * math.log(k), "the sign of the log-density: the NLL is -log p(y) + D log K"),
    (lambda lp, d, k: -lp + math.log(k), "the correction is D log K, one log K per pixel"),
)


def _pr_sets(seed: int, n: int = 60, shift: float = 1.0, d: int = 3):
    return _randn(n, d, seed=seed), _randn(n, d, seed=seed + 1) * 1.5 + shift


_PR = dict(function="precision_recall", rtol=0, atol=1e-6)  # shares of 60 points differ by 1/60
_PR_DIAG = (
    (
        lambda r, f, k: metrics.precision_recall(r, f, k)[::-1],
        "precision and recall are swapped: precision asks how many fakes land near the real data (inside some real point's k-NN ball)",
    ),
    (
        lambda r, f, k: _pr_self(r, f, k),
        "the k-th neighbour of a point excludes the point itself (at distance 0): use the (k + 1)-th smallest distance",
    ),
)


def _pr_self(real, fake, k):
    def radius(x):
        return metrics._distances(x, x).kthvalue(k, dim=1).values

    d = metrics._distances(fake, real)
    return (d <= radius(real)[None]).any(1).double().mean().item(), (d.T <= radius(fake)[None]).any(1).double().mean().item()


# ----------------------------------------------------------------------------- chapter 8: text to image


def _emb(seed: int, b: int = 6, d: int = 8, match: float = 0.0):
    img = F.normalize(_randn(b, d, seed=seed), dim=-1)
    txt = F.normalize(_randn(b, d, seed=seed + 1) + match * img, dim=-1)
    return img, txt


_CLIP = dict(function="clip_loss", rtol=1e-4, atol=1e-5)
_CLIP_DIAG = (
    (
        lambda i, t, s: F.cross_entropy(s.clamp(max=math.log(100)).exp() * i @ t.T, torch.arange(len(i))),
        "CLIP's loss is symmetric: average the cross-entropy over captions for each image (rows) and over images for "
        "each caption (columns)",
    ),
    (
        lambda i, t, s: text2image.clip_loss(i, t, s.log()),
        "logit_scale is the log of the inverse temperature: the logits are exp(logit_scale) * cosine similarity",
    ),
    (
        lambda i, t, s: (
            (F.cross_entropy(s.exp() * i @ t.T, torch.arange(len(i))) + F.cross_entropy(s.exp() * t @ i.T, torch.arange(len(i)))) / 2
        ),
        "exp(logit_scale) is capped at 100, as in CLIP",
    ),
)


def _attn_ref(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, :])


def _attn_inputs(seed: int, b: int = 3, tq: int = 4, tk: int = 5, d: int = 8):
    q, k, v = _randn(b, tq, d, seed=seed), _randn(b, tk, d, seed=seed + 1), _randn(b, tk, d, seed=seed + 2)
    lengths = torch.tensor([tk, 2, 1][:b])
    return q, k, v, torch.arange(tk)[None, :] < lengths[:, None]


_ATTN = dict(function="masked_attention", rtol=1e-4, atol=1e-5)
_ATTN_DIAG = (
    (
        lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m[:, None, :], scale=1.0),
        "scale the logits by 1 / sqrt(d), the width of the queries and keys",
    ),
    (
        lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v),
        "the padding mask is ignored: set the logits of padded keys to -inf before the softmax",
    ),
    (
        lambda q, k, v, m: (((q @ k.transpose(1, 2)) / math.sqrt(q.shape[-1])) * m[:, None, :]).softmax(-1) @ v,
        "multiplying the logits by the mask gives padding a logit of 0, not a weight of 0: fill them with -inf before the softmax",
    ),
)


def _attn_padding(fn: Callable) -> None:
    q, k, v, m = _attn_inputs(111)
    out1 = _call(fn, (q, k, v, m), "masked_attention")
    k2, v2 = k.clone(), v.clone()
    k2[~m], v2[~m] = 50.0, -50.0  # change only what sits under the padding
    out2 = _call(fn, (q, k2, v2, m), "masked_attention")
    problem = _mismatch(out2, _as_tensor(out1).float() if isinstance(out1, torch.Tensor) else out1, 1e-4, 1e-5)
    if problem:
        raise ExerciseError(f"changing the padded keys and values changed the output ({problem}); padding must get weight 0")


# ----------------------------------------------------------------------------- the exercises


def _exercises() -> tuple[Exercise, ...]:
    c = _compare
    return (
        Exercise(
            "1.1",
            "frechet_distance",
            "the Fréchet distance",
            (
                c("two feature sets", lambda: _fd_sets(11), metrics.frechet_distance, _FD_DIAG, **_FD),
                c("a set against itself is 0", lambda: (_fd_sets(12)[0],) * 2, metrics.frechet_distance, _FD_DIAG, **_FD),
                c(
                    "covariances that do not commute",
                    lambda: _fd_sets(13, rotate=True),
                    metrics.frechet_distance,
                    _FD_DIAG,
                    hidden=True,
                    **_FD,
                ),
                c(
                    "one-dimensional features, shape (N, 1)",
                    lambda: _fd_sets(14, d=1),
                    metrics.frechet_distance,
                    _FD_DIAG,
                    hidden=True,
                    **_FD,
                ),
            ),
            _fd_no_mean,
            "mean term",
        ),
        Exercise(
            "1.2",
            "categorical_nll",
            "the exact discrete NLL of an image",
            (
                c("random logits", lambda: _categorical_inputs(15), metrics.categorical_nll, _CATEGORICAL_DIAG, **_CATEGORICAL),
                c(
                    "one image of one pixel",
                    lambda: _categorical_inputs(16, b=1, size=1),
                    metrics.categorical_nll,
                    _CATEGORICAL_DIAG,
                    **_CATEGORICAL,
                ),
                c(
                    "confident logits (|logit| up to 300)",
                    lambda: _categorical_inputs(17, scale=100.0),
                    metrics.categorical_nll,
                    _CATEGORICAL_DIAG,
                    hidden=True,
                    hint="A softmax followed by a log overflows or gives log(0) here: use log_softmax (or subtract logsumexp).",
                    **_CATEGORICAL,
                ),
                c(
                    "two levels",
                    lambda: _categorical_inputs(18, k=2),
                    metrics.categorical_nll,
                    _CATEGORICAL_DIAG,
                    hidden=True,
                    **_CATEGORICAL,
                ),
            ),
            lambda lg, x: F.cross_entropy(lg, x, reduction="none").flatten(1).mean(1),
            "sums over its pixels",
        ),
        Exercise(
            "2.1",
            "reparameterize",
            "the reparameterization trick",
            (
                c(
                    "a batch of codes",
                    lambda: (_randn(5, 4, seed=21), _randn(5, 4, seed=22) - 1, _randn(5, 4, seed=23)),
                    vae.reparameterize,
                    _REPARAM_DIAG,
                    **_REPARAM,
                ),
                c(
                    "logvar = 0 gives mu + eps",
                    lambda: (_randn(3, 2, seed=24), torch.zeros(3, 2), _randn(3, 2, seed=25)),
                    vae.reparameterize,
                    _REPARAM_DIAG,
                    **_REPARAM,
                ),
                c(
                    "a very uncertain encoder (logvar = 6)",
                    lambda: (_randn(3, 2, seed=26), torch.full((3, 2), 6.0), _randn(3, 2, seed=27)),
                    vae.reparameterize,
                    _REPARAM_DIAG,
                    hidden=True,
                    **_REPARAM,
                ),
                _custom("gradients reach mu and logvar", _reparam_gradients, hidden=True),
            ),
            lambda mu, lv, eps: mu + lv.exp() * eps,
            "standard deviation is exp(logvar / 2)",
        ),
        Exercise(
            "2.2",
            "gaussian_kl",
            "the KL from the posterior to the prior",
            (
                c("a batch of posteriors", lambda: (_randn(5, 4, seed=28), _randn(5, 4, seed=29)), vae.gaussian_kl, _KL_DIAG, **_KL),
                c("the prior itself has KL 0", lambda: (torch.zeros(2, 3), torch.zeros(2, 3)), vae.gaussian_kl, _KL_DIAG, **_KL),
                c(
                    "one latent dimension",
                    lambda: (torch.tensor([[1.0], [-2.0]]), torch.tensor([[math.log(0.25)], [1.5]])),
                    vae.gaussian_kl,
                    _KL_DIAG,
                    hidden=True,
                    **_KL,
                ),
                c(
                    "a wide code",
                    lambda: (_randn(2, 64, seed=30) * 3, _randn(2, 64, seed=31) * 3),
                    vae.gaussian_kl,
                    _KL_DIAG,
                    hidden=True,
                    **_KL,
                ),
            ),
            lambda mu, lv: 0.5 * (mu.pow(2) + lv.exp() + lv - 1).sum(-1),
            "sign of the log-variance term",
        ),
        Exercise(
            "3.1",
            "d_loss",
            "the discriminator's loss",
            (
                c("random logits", lambda: (_logits(31), _logits(32)), gan.d_loss, _DLOSS_DIAG, **_DLOSS),
                c(
                    "a confident discriminator (|logit| up to 200)",
                    lambda: (_extreme(), _extreme().flip(0)),
                    gan.d_loss,
                    _DLOSS_DIAG,
                    hidden=True,
                    hint="log(sigmoid(x)) underflows to log(0) for large |x|: use softplus (log(1 + e^x)) or F.logsigmoid.",
                    **_DLOSS,
                ),
                c(
                    "batches of different sizes",
                    lambda: (_logits(33, n=3), _logits(34, n=7)),
                    gan.d_loss,
                    _DLOSS_DIAG,
                    hidden=True,
                    **_DLOSS,
                ),
            ),
            lambda r, f: gan.d_loss(f, r),
            "swapped",
        ),
        Exercise(
            "3.2",
            "g_loss_nonsaturating",
            "the non-saturating generator loss",
            (
                c("random logits", lambda: (_logits(35),), gan.g_loss_nonsaturating, _GLOSS_DIAG, **_GLOSS),
                c(
                    "a discriminator that rejects every fake (logits -8)",
                    lambda: (torch.full((4,), -8.0),),
                    gan.g_loss_nonsaturating,
                    _GLOSS_DIAG,
                    **_GLOSS,
                ),
                c(
                    "a confident discriminator (|logit| up to 200)",
                    lambda: (_extreme(),),
                    gan.g_loss_nonsaturating,
                    _GLOSS_DIAG,
                    hidden=True,
                    hint="log(sigmoid(x)) underflows to log(0) for large |x|: use softplus(-x) or -F.logsigmoid(x).",
                    **_GLOSS,
                ),
            ),
            gan.g_loss_minimax,
            "minimax",
        ),
        Exercise(
            "4.1",
            "coupling_forward",
            "an affine coupling and its log-determinant",
            (
                c(
                    "a batch of vectors",
                    lambda: (_randn(5, 6, seed=41), *_coupling_parts(6, 0, seed=40)),
                    _coupling_forward_ref,
                    _COUPLING_FWD_DIAG,
                    **_COUPLING_FWD,
                ),
                c(
                    "the other mask",
                    lambda: (_randn(5, 6, seed=45), *_coupling_parts(6, 1, seed=46)),
                    _coupling_forward_ref,
                    _COUPLING_FWD_DIAG,
                    **_COUPLING_FWD,
                ),
                _custom("logdet against the full Jacobian", _coupling_jacobian, hidden=True),
            ),
            _fwd_bad_logdet,
            "+sum(s)",
        ),
        Exercise(
            "4.2",
            "coupling_inverse",
            "the coupling's inverse",
            (
                c(
                    "a batch of codes",
                    lambda: (_randn(5, 6, seed=47), *_coupling_parts(6, 0, seed=48)),
                    _coupling_inverse_ref,
                    _COUPLING_INV_DIAG,
                    **_COUPLING_INV,
                ),
                _custom("inverting the forward map gives x back", _coupling_roundtrip),
                c(
                    "large codes",
                    lambda: (_randn(4, 6, seed=49) * 20, *_coupling_parts(6, 1, seed=50)),
                    _coupling_inverse_ref,
                    _COUPLING_INV_DIAG,
                    hidden=True,
                    **_COUPLING_INV,
                ),
            ),
            _inv_wrong_order,
            "subtract t first",
        ),
        Exercise(
            "5.1",
            "causal_mask",
            "masks A and B",
            (
                c("a 3 x 3 mask A", lambda: (3, "A"), masked.causal_mask, _MASK_DIAG, **_MASK),
                c("a 3 x 3 mask B", lambda: (3, "B"), masked.causal_mask, _MASK_DIAG, **_MASK),
                c("PixelCNN's 7 x 7 mask A", lambda: (7, "A"), masked.causal_mask, _MASK_DIAG, hidden=True, **_MASK),
                c("a 1 x 1 mask B", lambda: (1, "B"), masked.causal_mask, _MASK_DIAG, hidden=True, **_MASK),
                _custom("an even kernel size is refused", _mask_even, hidden=True),
            ),
            lambda k, t: masked.causal_mask(k, "B" if t == "A" else "A"),
            "swapped",
        ),
        Exercise(
            "5.2",
            "masked_cross_entropy",
            "MaskGIT's loss on the masked tokens",
            (
                c("a batch of token grids", lambda: _ce_inputs(51), autoregressive.masked_cross_entropy, _MASKED_CE_DIAG, **_MASKED_CE),
                c(
                    "one masked token per row",
                    lambda: (lambda lg, y, m: (lg, y, torch.arange(16)[None, :].expand(4, 16) == 0))(*_ce_inputs(52)),
                    autoregressive.masked_cross_entropy,
                    _MASKED_CE_DIAG,
                    hidden=True,
                    **_MASKED_CE,
                ),
                c(
                    "rows with very different numbers of masked tokens",
                    lambda: _ce_inputs(53, share=0.9),
                    autoregressive.masked_cross_entropy,
                    _MASKED_CE_DIAG,
                    hidden=True,
                    **_MASKED_CE,
                ),
            ),
            lambda lg, y, m: F.cross_entropy(lg.flatten(0, 1), y.flatten()),
            "only the masked positions",
        ),
        Exercise(
            "6.1",
            "q_sample",
            "noising an image to step t",
            (
                c("a batch at eight steps", lambda: _q_inputs(61), _q_package, _QSAMPLE_DIAG, **_QSAMPLE),
                c(
                    "colour images (B, 3, 4, 4)",
                    lambda: _q_inputs(62, shape=(4, 3, 4, 4), steps=(0, 250, 600, 999)),
                    _q_package,
                    _QSAMPLE_DIAG,
                    hidden=True,
                    **_QSAMPLE,
                ),
                c(
                    "the first and last steps",
                    lambda: _q_inputs(63, shape=(2, 1, 4, 4), steps=(0, 999)),
                    _q_package,
                    _QSAMPLE_DIAG,
                    hidden=True,
                    **_QSAMPLE,
                ),
            ),
            lambda x0, ab, e: _q_ref(x0, ab**2, e),
            "square roots",
        ),
        Exercise(
            "6.2",
            "ddim_update",
            "one deterministic DDIM step",
            (
                c("from t = 600 to 400", lambda: _ddim_inputs(64), _ddim_package, _DDIM_DIAG, **_DDIM),
                c(
                    "the last step, to clean data (alpha_bar_prev = 1)",
                    lambda: _ddim_inputs(65, t=50, t_prev=-1),
                    _ddim_package,
                    _DDIM_DIAG,
                    **_DDIM,
                ),
                c(
                    "a long jump, from t = 900 to 100",
                    lambda: _ddim_inputs(66, t=900, t_prev=100),
                    _ddim_package,
                    _DDIM_DIAG,
                    hidden=True,
                    **_DDIM,
                ),
            ),
            _ddim_sign,
            "noise is subtracted",
        ),
        Exercise(
            "7.1",
            "ot_path",
            "the flow-matching path and its target",
            (
                c("rectified flow (sigma_min = 0)", lambda: _ot_inputs(71, 0.0), _ot_ref, _OT_DIAG, **_OT),
                c("sigma_min = 0.1", lambda: _ot_inputs(72, 0.1), _ot_ref, _OT_DIAG, **_OT),
                c(
                    "the ends, t = 0 and t = 1",
                    lambda: _ot_inputs(73, 0.05, shape=(2, 3), t=torch.tensor([0.0, 1.0])),
                    _ot_ref,
                    _OT_DIAG,
                    hidden=True,
                    **_OT,
                ),
                c(
                    "images (B, 1, 4, 4) with one t per image",
                    lambda: _ot_inputs(74, 0.02, shape=(3, 1, 4, 4)),
                    _ot_ref,
                    _OT_DIAG,
                    hidden=True,
                    **_OT,
                ),
            ),
            lambda x0, x1, t, s: (_ot_ref(x0, x1, t, s)[0], -_ot_ref(x0, x1, t, s)[1]),
            "wrong way",
        ),
        Exercise(
            "7.2",
            "heun",
            "Heun's solver for the flow ODE",
            (
                c("v = -x, 4 steps", lambda: (_field_linear, _randn(3, 2, seed=75), 4), solvers.heun, _HEUN_DIAG, **_HEUN),
                c(
                    "a field that changes with t, 5 steps",
                    lambda: (_field_time, _randn(3, 2, seed=76), 5),
                    solvers.heun,
                    _HEUN_DIAG,
                    **_HEUN,
                ),
                c("one step", lambda: (_field_time, _randn(3, 2, seed=77), 1), solvers.heun, _HEUN_DIAG, hidden=True, **_HEUN),
                _custom("two evaluations per step", _heun_evaluations, hidden=True),
            ),
            _euler,
            "Euler",
        ),
        Exercise(
            "9.1",
            "nearest_codes",
            "the nearest code at every position",
            (
                c("two 4 x 5 grids, seven codes", lambda: _codes_inputs(141), vqvae.nearest_codes, _CODES_DIAG, **_CODES),
                c("one grid, 3 x 3", lambda: _codes_inputs(142, b=1, h=3, w=3, k=4), vqvae.nearest_codes, _CODES_DIAG, **_CODES),
                c("a code per position", lambda: _codes_inputs(143, d=8, k=64), vqvae.nearest_codes, _CODES_DIAG, hidden=True, **_CODES),
                c("wide grids", lambda: _codes_inputs(144, h=2, w=9), vqvae.nearest_codes, _CODES_DIAG, hidden=True, **_CODES),
            ),
            _codes_no_permute,
            "move D last",
        ),
        Exercise(
            "9.2",
            "slerp",
            "spherical interpolation of embeddings",
            (
                c("four pairs, t = 0.3", lambda: _unit_pair(145), text2image.slerp, _SLERP_DIAG, **_SLERP),
                c("t = 0.8", lambda: _unit_pair(146, t=0.8), text2image.slerp, _SLERP_DIAG, **_SLERP),
                c("t = 0 gives a", lambda: _unit_pair(147, t=0.0), text2image.slerp, _SLERP_DIAG, hidden=True, **_SLERP),
                c("a = b: no division by zero", lambda: _same_pair(148), text2image.slerp, _SLERP_DIAG, hidden=True, **_SLERP),
            ),
            _SLERP_DIAG[1][0],
            "angle",
        ),
        Exercise(
            "10.1",
            "said_right_wrong",
            "what a caption says right and wrong",
            (
                c("eight scenes, four of one shape", lambda: _said_true(121), data.said_right_wrong, _SAID_DIAG, **_SAID),
                c("nothing said", lambda: (torch.full((4, 2), -1), _said_true(122, n=4)[1]), data.said_right_wrong, _SAID_DIAG, **_SAID),
                c("everything said right", lambda: (_said_true(123)[1],) * 2, data.said_right_wrong, _SAID_DIAG, hidden=True, **_SAID),
                c("many scenes, three values", lambda: _said_true(124, n=40, k=3), data.said_right_wrong, _SAID_DIAG, hidden=True, **_SAID),
            ),
            _SAID_DIAG[0][0],
            "neither right nor wrong",
        ),
        Exercise(
            "10.2",
            "guided_eps",
            "classifier-free guidance's combination",
            (
                c("w = 2", lambda: _eps_pair(125, 2.0), samplers.guide, _GUIDE_DIAG, **_GUIDE),
                c("w = 0 is the conditional model", lambda: _eps_pair(126, 0.0), samplers.guide, _GUIDE_DIAG, **_GUIDE),
                c("w = 7.5", lambda: _eps_pair(127, 7.5), samplers.guide, _GUIDE_DIAG, hidden=True, **_GUIDE),
                c("negative w", lambda: _eps_pair(128, -0.5), samplers.guide, _GUIDE_DIAG, hidden=True, **_GUIDE),
            ),
            _GUIDE_DIAG[0][0],
            "conditional prediction",
        ),
        Exercise(
            "11.1",
            "frames_to_sequences",
            "frames to sequences over time",
            (
                c("two clips of three frames", lambda: _video_h(81), denoiser.frames_to_sequences, _SEQ_DIAG, **_SEQ),
                _custom("each sequence is one position of one clip", _seq_meaning),
                c("one clip", lambda: _video_h(82, b=1, t=5), denoiser.frames_to_sequences, _SEQ_DIAG, hidden=True, **_SEQ),
            ),
            _seq_time_major,
            "clip-major",
        ),
        Exercise(
            "11.2",
            "acceleration",
            "the acceleration of a track",
            (
                c("random tracks", lambda: (_track_inputs(83),), coherence.acceleration, _ACC_DIAG, **_ACC),
                c(
                    "constant velocity has acceleration 0",
                    lambda: (torch.arange(5.0)[None, :, None].expand(2, 5, 2) * torch.tensor([1.5, -0.5]),),
                    coherence.acceleration,
                    _ACC_DIAG,
                    **_ACC,
                ),
                c(
                    "a lost track (NaN) stays NaN",
                    lambda: (lambda p: (p.index_fill_(1, torch.tensor([2]), float("nan")),))(_track_inputs(84)),
                    coherence.acceleration,
                    _ACC_DIAG,
                    hidden=True,
                    **_ACC,
                ),
            ),
            _ACC_DIAG[0][0],
            "not the squared length",
        ),
        Exercise(
            "12.1",
            "ring_power",
            "the azimuthally averaged power spectrum",
            (
                c("grey 8 x 8 images", lambda: (_images(91),), spectrum.ring_power, _RING_DIAG, **_RING),
                c(
                    "a flat image has all its power in ring 0",
                    lambda: (torch.full((1, 1, 8, 8), 0.5),),
                    spectrum.ring_power,
                    _RING_DIAG,
                    **_RING,
                ),
                c(
                    "colour 16 x 16 images (grey = mean of the channels)",
                    lambda: (_images(92, c=3, size=16),),
                    spectrum.ring_power,
                    _RING_DIAG,
                    hidden=True,
                    **_RING,
                ),
                c(
                    "a checkerboard: power at the corner frequency",
                    lambda: (((torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2).float()[None, None].expand(2, 1, 8, 8).clone(),),
                    spectrum.ring_power,
                    _RING_DIAG,
                    hidden=True,
                    **_RING,
                ),
            ),
            _ring_unsquared,
            "squared magnitude",
        ),
        Exercise(
            "12.2",
            "binomial_fpr",
            "the false-positive rate of a bit watermark",
            (
                c("8 of 8 bits", lambda: (8, 8), watermark.binomial_fpr, _FPR_DIAG, **_FPR),
                c("at least 40 of 48 bits", lambda: (48, 40), watermark.binomial_fpr, _FPR_DIAG, **_FPR),
                c("threshold 0 always fires", lambda: (16, 0), watermark.binomial_fpr, _FPR_DIAG, hidden=True, **_FPR),
                c("a long signature: 200 of 256 bits", lambda: (256, 200), watermark.binomial_fpr, _FPR_DIAG, hidden=True, **_FPR),
                _custom("a threshold above the number of bits is refused", _fpr_bad_threshold, hidden=True),
            ),
            _FPR_DIAG[1][0],
            "off by one",
        ),
        Exercise(
            "13.1",
            "dequantized_nll",
            "a density's NLL on the discrete table",
            (
                c(
                    "digits: 64 pixels, 17 levels",
                    lambda: (_randn(5, seed=101) * 20 + 50, 64, 17),
                    metrics.dequantized_nll,
                    _DEQ_DIAG,
                    **_DEQ,
                ),
                c("binary images", lambda: (_randn(3, seed=102) * 5, 16, 2), metrics.dequantized_nll, _DEQ_DIAG, hidden=True, **_DEQ),
            ),
            _DEQ_DIAG[0][0],
            "add D log K",
        ),
        Exercise(
            "13.2",
            "precision_recall",
            "improved precision and recall",
            (
                c("two overlapping clouds, k = 3", lambda: (*_pr_sets(103), 3), metrics.precision_recall, _PR_DIAG, **_PR),
                c(
                    "a narrow cloud inside a wide one",
                    lambda: (_randn(60, 3, seed=104) * 2.0, _randn(40, 3, seed=105) * 0.4 + 0.3, 3),
                    metrics.precision_recall,
                    _PR_DIAG,
                    hidden=True,
                    **_PR,
                ),
                c("k = 1", lambda: (*_pr_sets(105, shift=0.5), 1), metrics.precision_recall, _PR_DIAG, hidden=True, **_PR),
                c("clouds far apart", lambda: (*_pr_sets(106, shift=50.0), 3), metrics.precision_recall, _PR_DIAG, hidden=True, **_PR),
            ),
            _PR_DIAG[0][0],
            "swapped",
        ),
        Exercise(
            "8.1",
            "clip_loss",
            "CLIP's symmetric contrastive loss",
            (
                c(
                    "a batch of pairs",
                    lambda: (*_emb(111, match=1.0), torch.tensor(math.log(10.0))),
                    text2image.clip_loss,
                    _CLIP_DIAG,
                    **_CLIP,
                ),
                c(
                    "temperature above the cap",
                    lambda: (*_emb(112, match=2.0), torch.tensor(6.0)),
                    text2image.clip_loss,
                    _CLIP_DIAG,
                    hidden=True,
                    **_CLIP,
                ),
                c(
                    "one pair has loss 0",
                    lambda: (*_emb(113, b=1), torch.tensor(2.0)),
                    text2image.clip_loss,
                    _CLIP_DIAG,
                    hidden=True,
                    **_CLIP,
                ),
            ),
            _CLIP_DIAG[0][0],
            "symmetric",
        ),
        Exercise(
            "8.2",
            "masked_attention",
            "attention that ignores padding",
            (
                c("captions of lengths 5, 2 and 1", lambda: _attn_inputs(114), _attn_ref, _ATTN_DIAG, **_ATTN),
                _custom("padding gets weight 0", _attn_padding),
                c("a single query", lambda: _attn_inputs(115, tq=1), _attn_ref, _ATTN_DIAG, hidden=True, **_ATTN),
            ),
            _ATTN_DIAG[0][0],
            "1 / sqrt(d)",
        ),
    )


EXERCISES: dict[str, Exercise] = {e.function: e for e in _exercises()}
assert len(EXERCISES) == len(_exercises()), "two exercises share a function name"


def get(name: str | Callable) -> Exercise:
    """The exercise whose function is ``name`` (or has the name of the function given)."""
    key = name if isinstance(name, str) else getattr(name, "__name__", "")
    if key not in EXERCISES:
        raise KeyError(f"no graded exercise is called {key!r}; the exercises are: {', '.join(EXERCISES)}")
    return EXERCISES[key]


def for_chapter(chapter: int) -> list[Exercise]:
    return [e for e in EXERCISES.values() if e.chapter == chapter]


def run_cases(fn: Callable, name: str | None = None, hidden: bool = True) -> list[tuple[Case, str | None]]:
    """Each case of ``fn``'s exercise (the public ones only unless ``hidden``) with None if it passed, or the feedback."""
    ex = get(name or fn)
    out = []
    for case in ex.cases:
        if case.hidden and not hidden:
            continue
        try:
            with torch.enable_grad():
                case.run(fn)
            out.append((case, None))
        except ExerciseError as exc:
            out.append((case, str(exc)))
    return out


def run_case(name: str, case: str, fn: Callable) -> None:
    """Run one named case (what an autograder test calls); raises :class:`ExerciseError` with the feedback."""
    found = [c for c in get(name).cases if c.name == case]
    if not found:
        raise KeyError(f"exercise {name!r} has no case {case!r}")
    if not callable(fn):
        raise ExerciseError(f"{name} is not a function: define `def {name}(...)` in the exercise's cell and run it")
    with torch.enable_grad():
        found[0].run(fn)


def check(fn: Callable) -> int:
    """Run the public checks of ``fn``'s exercise, print what passed and what to fix, and return the number passed.
    Under ``GENBOOK_STRICT=1`` a failure raises :class:`ExerciseError` (the reference solutions are tested in CI)."""
    ex = get(fn)
    results = run_cases(fn, hidden=False)
    passed = sum(msg is None for _, msg in results)
    hidden = sum(c.hidden for c in ex.cases)
    print(f"{ex.function} (exercise {ex.number}): {passed} of {len(results)} checks passed; the autograder runs {hidden} more.")
    for _, msg in results:
        if msg is not None:
            print(f"  not yet: {msg}")
    if passed < len(results) and strict():
        raise ExerciseError(f"{ex.function} failed {len(results) - passed} of its checks (GENBOOK_STRICT=1)")
    return passed

"""Every family on one table (chapter 13): one run, the same digits split, the same metrics and the same training
budget for the best unconditional digits model of each family.

``compare(budget(seconds))`` trains a VAE (autoregressive decoder), a DCGAN, a RealNVP-style flow, a gated PixelCNN, a
DDPM/DDIM diffusion model and a flow-matching model, each for the same training time on the book's reference machine
(a nominal 2-core machine at half the speed of a 2-core Intel Xeon host, about the speed at which one AVX2-only host
ran the chapters), fixed as a number of steps per family so that the table
does not depend on the speed or the load of the machine that makes it, and measures each on the
test digits: the negative log-likelihood (exact, or an upper bound, labelled), and with ``metrics.score_digits`` the
Fréchet distance of ``metrics.SCORE_N`` samples against the test digits, precision, recall and the data-copying
statistic C_T, beside the same scores of as many training digits (the yardstick: ``markdown_table`` gives it a row of
its own); then trainable parameters, training seconds and steps, sampling seconds per image and network
evaluations (NFE) per image. ``markdown_table(rows)`` prints the table the book renders. Every recipe is the one its
chapter settled on in its ``fast`` profile, without class labels (the chapters explain the choices); the sizes
stay fixed whatever the budget, so a longer budget trains the same models longer. Two things differ from the
chapters: the diffusion and flow-matching averages (EMA) warm up, since an equal budget gives those slow-stepping
models only a few hundred steps, and the GAN's parameter count is its generator's.

With ``GENBOOK_CHECKPOINTS=DIR`` set, a family whose checkpoint ``DIR/FAMILY-digits.pt`` exists (written by
``python -m genbook train FAMILY --out DIR``, or by an earlier run of this function) is loaded instead of trained,
and its row reports the training that checkpoint had.

Runs on the CPU in a few minutes at the ``fast`` budget and on one GPU at any size:
``python -c "from genbook import compare; print(compare.markdown_table(compare.compare(compare.budget(60))))"``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from genbook import autoregressive as ar
from genbook import data, flows, gan, metrics, recipes, runtime, vae
from genbook import diffusion as dif
from genbook import flow_matching as fm
from genbook.flows.cnf import ode_log_prob
from genbook.nets import count_parameters
from genbook.train import EMA, fit, fit_or_load

FAMILIES = ("VAE", "GAN", "flow", "autoregressive", "diffusion", "flow matching")
LEVELS = data.DIGIT_LEVELS
DIMS = 64


@dataclass
class Row:
    """One family's line of the table. ``nll`` is in nats per image (None for a GAN, which has no likelihood);
    ``nll_kind`` says whether it is "exact" or an upper "bound"; ``samples`` (n, 1, 8, 8) in [0, 1] on 17 levels.
    ``model`` is the trained network (the EMA copy where there is one) and ``sample(n, generator)`` draws from it
    as the table did, for further experiments."""

    family: str
    name: str  # the model and where its recipe comes from
    nll: float | None
    nll_kind: str
    fd: float
    precision: float
    recall: float
    copying: float  # Meehan et al.'s C_T: near 0 for fresh samples, below -3 for copies of the training digits
    params: int
    train_seconds: float
    train_steps: int
    sample_seconds: float  # per image
    nfe: int  # network evaluations per image
    samples: torch.Tensor = field(repr=False)
    model: torch.nn.Module | None = field(default=None, repr=False)
    sample: Callable[[int, torch.Generator], torch.Tensor] | None = field(default=None, repr=False)
    source: str = "trained"  # or "loaded": a checkpoint from GENBOOK_CHECKPOINTS (train.fit_or_load)
    score: metrics.Score | None = field(default=None, repr=False)  # fd, precision, recall, copying and the yardstick

    @property
    def bpd(self) -> float | None:
        return None if self.nll is None else metrics.bits_per_dim(self.nll, DIMS)


@dataclass
class _Split:
    train: torch.Tensor  # integer levels (N, 1, 8, 8) on the device
    val: torch.Tensor
    test: torch.Tensor


def snap(x01: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] snapped to the digits' 17 levels, on the CPU: every family is scored on the data's own grid."""
    return data.to_unit(data.quantize(x01.cpu()))


# ----------------------------------------------------------------------------- training and scoring each family
# The networks and samplers are ``genbook.recipes``'s; what follows is how chapter 13 trains each one for its
# step budget (``budget``) (as its chapter does: early stopping on the validation digits where the chapter uses it) and
# how it measures each one's likelihood.


IWAE_K = 200  # importance samples for the VAE's bound (chapter 2 used 500: about 0.4 nats tighter, 2.5x the time)
DIFFUSION_T, DDIM_STEPS, HEUN_STEPS = recipes.DIFFUSION_T, recipes.DDIM_STEPS, recipes.HEUN_STEPS


# Training steps per second of each family on the reference machine, a nominal 2-core machine, torch at its default
# two threads, otherwise idle, validation checks included as
# ``compare`` trains. How they were set: on a 2-core AVX-512 host (Intel Xeon, torch 2.13) the six families trained
# at 84, 68, 33, 27, 21 and 21 steps/s; the issue "Claims that hold on any machine" measured the chapters about 2x
# slower on a 2-core AVX2-only host (AMD EPYC), so the reference is half of those. (Emulating AVX2 on the AVX-512
# host with ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 gave 67, 62, 27, 21, 16
# and 16: only 1.25x slower, so the vector units are not the whole difference; and hosts with AVX-512 have since run
# the same chapters up to about 2x slower on some days than on others, 2026-12-07.)
REFERENCE_STEPS_PER_SECOND = {
    "VAE": 42.0,
    "GAN": 34.0,
    "flow": 16.0,
    "autoregressive": 13.0,
    "diffusion": 10.0,
    "flow matching": 10.0,
}


def budget(seconds: float) -> dict[str, int]:
    """Each family's number of training steps for ``seconds`` of training on the reference machine (see
    :data:`REFERENCE_STEPS_PER_SECOND`): equal time, fixed as steps, so that a faster, slower or busier machine
    trains exactly the same models and only the seconds in the table change."""
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    steps = {f: max(1, round(rate * seconds)) for f, rate in REFERENCE_STEPS_PER_SECOND.items()}
    planned = getattr(seconds, "planned", None)  # smoke mode (runtime.Length): keep the planned steps for the projection
    if planned is not None:
        steps = {f: runtime.Length(n, max(1, round(REFERENCE_STEPS_PER_SECOND[f] * planned))) for f, n in steps.items()}
    return steps


def _fitted(h) -> dict[str, float]:
    return {"train_seconds": h.seconds, "train_steps": h.steps}


def _train_vae(nets, s: _Split, steps: int, seed: int, progress: bool):
    h = fit(nets["net"], vae.vae_loss, data.Batches(s.train, batch_size=64, seed=seed), steps=steps, lr=2e-3,
            progress=progress, eval_fn=lambda m: vae.negative_elbo(m, s.val, samples=1).mean().item(), eval_every=125,
            desc="VAE")  # fmt: skip
    return _fitted(h)


def _train_gan(nets, s: _Split, steps: int, seed: int, progress: bool):
    batches = data.Batches(data.to_unit(s.train) * 2 - 1, batch_size=64, seed=seed)
    h = gan.train_gan(nets["net"], nets["disc"], batches, steps=steps, z_dim=recipes.GAN_Z, r1_gamma=1.0, betas=(0.0, 0.99))
    return {"train_seconds": h.seconds, "train_steps": len(h.g_loss)}


def _train_flow(nets, s: _Split, steps: int, seed: int, progress: bool):
    f = nets["net"]
    flows.initialize(f, s.train)
    h = fit(f, flows.nll_loss, data.Batches(s.train, batch_size=128, seed=seed), steps=steps, lr=1e-3, amp=False,
            progress=progress, eval_fn=lambda m: flows.evaluate_nll(m, s.val, draws=2).nats, eval_every=50, desc="flow")  # fmt: skip
    return _fitted(h)


def _train_pixelcnn(nets, s: _Split, steps: int, seed: int, progress: bool):
    @torch.no_grad()
    def val_nll(m):
        return ar.pixel_nll(m, s.val).mean().item()

    h = fit(nets["net"], ar.pixel_loss, data.Batches(s.train, batch_size=64, seed=seed), steps=steps, lr=2e-3,
            progress=progress, eval_fn=val_nll, eval_every=50, desc="PixelCNN")  # fmt: skip
    return _fitted(h)


def _train_averaged(loss: Callable, batches_of: Callable, desc: str):
    """Diffusion and flow matching: Adam at 2e-3 with an EMA that warms up (a few hundred steps: without the warm-up
    the average keeps ~20% of the initial weights); the network ends holding the average."""

    def train(nets, s: _Split, steps: int, seed: int, progress: bool):
        net = nets["net"]
        ema = EMA(net, decay=0.995, warmup=True)
        h = fit(net, loss, data.Batches(batches_of(s.train), batch_size=128, seed=seed), steps=steps, lr=2e-3, ema=ema,
                progress=progress, desc=desc)  # fmt: skip
        net.load_state_dict(ema.model.state_dict())
        return _fitted(h)

    return train


TRAIN = {
    "VAE": _train_vae,
    "GAN": _train_gan,
    "flow": _train_flow,
    "autoregressive": _train_pixelcnn,
    "diffusion": _train_averaged(lambda m, b: dif.eps_loss(m, recipes.schedule(), b), lambda x: data.to_unit(x) * 2 - 1, "diffusion"),
    "flow matching": _train_averaged(lambda m, b: fm.fm_loss(m, recipes.FM_PATH, recipes.fm_dequantize(b)), lambda x: x, "flow matching"),
}


def _nll(family: str, net: torch.nn.Module, s: _Split, seed: int) -> tuple[float | None, str]:
    """Nats per test digit and whether that is exact or an upper bound."""
    if family == "VAE":
        torch.manual_seed(seed)
        return vae.iwae_bound(net, s.test, IWAE_K).mean().item(), "bound"
    if family == "flow":
        return flows.evaluate_nll(net, s.test, seed=seed).nats, "bound"
    if family == "autoregressive":
        with torch.no_grad():
            return ar.pixel_nll(net, s.test).mean().item(), "exact"
    if family == "diffusion":
        # DDPM's bound (discretized Gaussian decoder over the 17 levels), on the chain of T - 1 steps that chapter 6
        # uses: the last step of the cosine schedule has beta clipped at 0.999 and would cost far more than it is worth.
        with torch.no_grad():
            x = data.to_unit(s.test) * 2 - 1
            b = dif.vlb(net, recipes.schedule(), x, LEVELS, generator=torch.Generator().manual_seed(seed), variance="beta")
            ab = float(recipes.schedule().alpha_bar[DIFFUSION_T - 2])
            prior = dif.gaussian_kl(ab**0.5 * x, torch.full_like(x, 1 - ab), torch.zeros_like(x), torch.ones_like(x)).flatten(1).sum(1)
            return (prior + b["per_step"][:, :-1].sum(1)).mean().item(), "bound"
    if family == "flow matching":
        g = torch.Generator().manual_seed(seed)
        lp = ode_log_prob(net, recipes.fm_dequantize(s.test, g), steps=16, trace="hutchinson", generator=g, t1=recipes.FM_PATH.t_max)
        return metrics.dequantized_nll(lp.detach() + DIMS * math.log(2), DIMS).mean().item(), "bound"  # [-1, 1) -> [0, 1)
    return None, "none"  # a GAN has no likelihood


def _run(family: str, s: _Split, steps: int, seed: int, progress: bool, checkpoints):
    """Build the family's network, train it (or load it: ``GENBOOK_CHECKPOINTS``, see ``train.fit_or_load``)."""
    r = recipes.BY_FAMILY[family]
    cfg = recipes.ModelConfig(r.key)
    torch.manual_seed(seed)
    nets = {k: v.to(s.train.device) for k, v in r.build(cfg).items()}
    net = nets["net"]

    def train():
        return TRAIN[family](nets, s, steps, seed, progress)

    if checkpoints is False:
        info = {"source": "trained", "path": None, **train()}
    else:
        info = fit_or_load(cfg.name, net, cfg, train, directory=checkpoints)
    net.eval()
    return r, cfg, net, info


def compare(
    steps: int | dict[str, int] | None = None,
    families: tuple[str, ...] = FAMILIES,
    device: torch.device | str | None = None,
    seed: int = 0,
    progress: bool = False,
    verbose: bool = True,
    n_test: int | None = None,
    checkpoints: str | os.PathLike | bool | None = None,
) -> list[Row]:
    """Train and score the best unconditional digits model of each family in ``families``, each for its number of
    ``steps`` (a dict by family, as :func:`budget` gives, or one number for all; default ``budget(20)``: 20 seconds
    each on the reference machine), validation checks included where its chapter early-stops, on the digits split.
    Returns one :class:`Row` per family, in order. Sampling draws ``metrics.SCORE_N`` images, scored against the test
    digits; ``n_test`` evaluates the likelihood on only the first ``n_test`` test digits and draws as many samples
    (at least 20), for quick runs and tests.
    ``checkpoints`` is a folder to load each family's model from (and save it to), as ``train.fit_or_load`` does;
    None reads ``GENBOOK_CHECKPOINTS``, False always trains and saves nothing (e.g. to retrain with another seed)."""
    unknown = [f for f in families if f not in TRAIN]
    if unknown:
        raise ValueError(f"unknown families {unknown}; choose from {list(TRAIN)}")
    steps = budget(20) if steps is None else steps
    per_family = steps if isinstance(steps, dict) else dict.fromkeys(families, steps)
    missing = [f for f in families if f not in per_family]
    if missing:
        raise ValueError(f"no step budget for {missing}: pass steps={{family: steps, ...}} for every family, or one number")
    bad = {f: per_family[f] for f in families if not (isinstance(per_family[f], int) and per_family[f] > 0)}
    if bad:
        raise ValueError(f"steps must be positive integers, got {bad}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    split = _Split(*(data.digits(name).x_int.to(device) for name in ("train", "val", "test")))
    if n_test is not None:
        if not 20 <= n_test <= len(split.test):
            raise ValueError(f"n_test must be between 20 and {len(split.test)}, got {n_test}")
        split.test = split.test[:n_test]
    metrics.digits_classifier()  # the harness classifier trains once and is cached: keep it out of every timing
    n = metrics.SCORE_N if n_test is None else n_test
    rows = []
    for family in families:
        r, cfg, model, info = _run(family, split, per_family[family], seed, progress, checkpoints)
        train_s, trained, nfe = info.get("train_seconds", float("nan")), int(info.get("train_steps", 0)), r.nfe(cfg)

        def sample(n, g, r=r, cfg=cfg, model=model):
            return r.sample(model, cfg, n, g)

        sample(2, torch.Generator().manual_seed(seed))  # warm-up: allocation and kernel selection stay out of the timing
        with metrics.Timer() as timer:  # synchronizes CUDA, so GPU work is counted
            images = sample(n, torch.Generator().manual_seed(seed + 1))
        sample_s, images = timer.seconds, snap(images)
        nats, kind = _nll(family, model, split, seed)
        score = metrics.score_digits(images, "test", seed=seed)
        fd = score.fd
        row = Row(family, r.title, nats, kind, fd, score.precision, score.recall, score.copying, count_parameters(model), train_s,
                  trained, sample_s / n, nfe, images, model, sample, source=info["source"], score=score)  # fmt: skip
        rows.append(row)
        if verbose:
            nll_text = "n/a" if nats is None else f"{nats:.1f} nats ({kind})"
            ms = 1e3 * row.sample_seconds
            how = f"{trained} steps in {train_s:.0f} s" + (f" (loaded from {info['path']})" if info["source"] == "loaded" else "")
            print(f"{family}: {how}; NLL {nll_text}; FD {fd:.1f}, C_T {score.copying:+.1f}; sampling {ms:.2f} ms/image")
    return rows


def markdown_table(rows: list[Row]) -> str:
    """The comparison as a markdown table (the book renders it), with a last row for the real data: as many training
    digits as each model drew samples, scored the same way against the same test digits (the FD is the mean over
    redraws of them, +- their standard deviation, FD's noise at this n). Rows scored at different n are refused."""
    metrics.compare_scores(*(r.score for r in rows))
    head = ["family", "model", "NLL (nats)", "bits/dim", "FD", "precision", "recall", "C_T", "parameters", "train s (steps)",
            "ms / image", "NFE"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r.nll is None:
            nll, bpd = "n/a", "n/a"
        else:
            rel = "=" if r.nll_kind == "exact" else "≤"
            nll, bpd = f"{rel} {r.nll:.1f}", f"{rel} {r.bpd:.3f}"
        cells = [r.family, r.name, nll, bpd, f"{r.fd:.1f}", f"{r.precision:.2f}", f"{r.recall:.2f}", f"{r.copying:+.1f}",
                 f"{r.params:,}", f"{r.train_seconds:.0f} ({r.train_steps})", f"{1e3 * r.sample_seconds:.2f}", str(r.nfe)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    s = rows[0].score
    real = ["real digits", f"{s.n} training digits (a perfect copier)", "", "", f"{s.fd_real:.1f} ± {s.fd_real_spread:.1f}",
            f"{s.precision_real:.2f}", f"{s.recall_real:.2f}", f"{s.copying_real:+.1f}", "", "", "", ""]  # fmt: skip
    lines.append("| " + " | ".join(real) + " |")
    return "\n".join(lines)


__all__ = ["FAMILIES", "REFERENCE_STEPS_PER_SECOND", "TRAIN", "Row", "budget", "compare", "markdown_table", "snap"]

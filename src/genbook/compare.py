"""Every family on one table (chapter 10): one run, the same digits split, the same metrics and the same training
budget for the best unconditional digits model of each family.

``compare(seconds=...)`` trains a VAE (autoregressive decoder), a DCGAN, a RealNVP-style flow, a gated PixelCNN, a
DDPM/DDIM diffusion model and a flow-matching model, each for the same wall-clock budget, and measures each on the
test digits: the negative log-likelihood (exact, or an upper bound, labelled), the Fréchet distance of as many
samples as there are test digits (so the floor beside it, the test digits' own FD, is measured at the same size),
precision and recall, trainable parameters, training seconds and steps, sampling seconds per image and network
evaluations (NFE) per image. ``markdown_table(rows)`` prints the table the book renders. Every recipe is the one its
chapter settled on in its ``fast`` profile, without class labels (the chapters explain the choices); the sizes
stay fixed whatever the budget, so a longer budget trains the same models longer. Two things differ from the
chapters: the diffusion and flow-matching averages (EMA) warm up, since an equal budget gives those slow-stepping
models only a few hundred steps, and the GAN's parameter count is its generator's.

Runs on the CPU in a few minutes at the ``fast`` budget and on one GPU at any size:
``python -c "from genbook import compare; print(compare.markdown_table(compare.compare(seconds=60)))"``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from genbook import autoregressive as ar
from genbook import data, flows, gan, metrics, vae
from genbook import diffusion as dif
from genbook import flow_matching as fm
from genbook.flows.cnf import ode_log_prob
from genbook.nets import DCGANDiscriminator, DCGANGenerator, UNet, UNetConfig, count_parameters
from genbook.train import EMA, fit

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
    params: int
    train_seconds: float
    train_steps: int
    sample_seconds: float  # per image
    nfe: int  # network evaluations per image
    samples: torch.Tensor = field(repr=False)
    model: torch.nn.Module | None = field(default=None, repr=False)
    sample: Callable[[int, torch.Generator], torch.Tensor] | None = field(default=None, repr=False)

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


# ----------------------------------------------------------------------------- the six recipes
# Each returns (model name, trained model, params, train seconds, steps, sample(n, g) -> [0, 1], nll() -> (nats, kind), nfe).


IWAE_K = 200  # importance samples for the VAE's bound (chapter 2 used 500: about 0.4 nats tighter, 2.5x the time)


def _vae(s: _Split, seconds: float, seed: int, progress: bool):
    torch.manual_seed(seed)
    m = vae.VAE(vae.VAEConfig(latent_dim=16, decoder="autoregressive", ar_condition="spatial")).to(s.train.device)
    params = count_parameters(m)
    h = fit(m, vae.vae_loss, data.Batches(s.train, batch_size=64, seed=seed), seconds=seconds, lr=2e-3, progress=progress,
            eval_fn=lambda m: vae.negative_elbo(m, s.val, samples=1).mean().item(), eval_every=125, desc="VAE")  # fmt: skip

    def nll():
        torch.manual_seed(seed)
        return vae.iwae_bound(m, s.test, IWAE_K).mean().item(), "bound"

    return "VAE, autoregressive decoder (ch. 2)", m, params, h.seconds, h.steps, lambda n, g: m.sample(n, generator=g), nll, DIMS


def _gan(s: _Split, seconds: float, seed: int, progress: bool):
    torch.manual_seed(seed)
    G = DCGANGenerator(z_dim=32, size=8, width=32).to(s.train.device)  # noqa: N806 - the papers' names
    D = DCGANDiscriminator(size=8, width=32, minibatch_std=True).to(s.train.device)  # noqa: N806
    params = count_parameters(G)
    batches = data.Batches(data.to_unit(s.train) * 2 - 1, batch_size=64, seed=seed)
    h = gan.train_gan(G, D, batches, seconds=seconds, z_dim=32, r1_gamma=1.0, betas=(0.0, 0.99))

    @torch.no_grad()
    def sample(n, g):
        return (G(torch.randn(n, 32, generator=g).to(s.train.device)) + 1) / 2

    return "DCGAN, minibatch std + R1 (ch. 3)", G, params, h.seconds, len(h.g_loss), sample, lambda: (None, "none"), 1


def _flow(s: _Split, seconds: float, seed: int, progress: bool):
    torch.manual_seed(seed)
    f = flows.digits_flow(flows.DigitsFlowConfig(coupling="affine", width=32)).to(s.train.device)
    flows.initialize(f, s.train)
    params = count_parameters(f)
    h = fit(f, flows.nll_loss, data.Batches(s.train, batch_size=128, seed=seed), seconds=seconds, lr=1e-3, amp=False,
            progress=progress, eval_fn=lambda m: flows.evaluate_nll(m, s.val, draws=2).nats, eval_every=50, desc="flow")  # fmt: skip

    def sample(n, g):
        return data.to_unit(flows.sample_digits(f, n, generator=g))

    return (
        "RealNVP-style flow (ch. 4)",
        f,
        params,
        h.seconds,
        h.steps,
        sample,
        lambda: (flows.evaluate_nll(f, s.test, seed=seed).nats, "bound"),
        1,
    )


def _autoregressive(s: _Split, seconds: float, seed: int, progress: bool):
    torch.manual_seed(seed)
    p = ar.GatedPixelCNN(ar.PixelCNNConfig(channels=32, layers=5, dropout=0.1)).to(s.train.device)
    params = count_parameters(p)

    @torch.no_grad()
    def val_nll(m):
        return ar.pixel_nll(m, s.val).mean().item()

    h = fit(p, ar.pixel_loss, data.Batches(s.train, batch_size=64, seed=seed), seconds=seconds, lr=2e-3, progress=progress,
            eval_fn=val_nll, eval_every=50, desc="PixelCNN")  # fmt: skip

    @torch.no_grad()
    def nll():
        return ar.pixel_nll(p, s.test).mean().item(), "exact"

    def sample(n, g):
        return data.to_unit(ar.sample_pixels(p, n, generator=g))

    return "gated PixelCNN (ch. 5)", p, params, h.seconds, h.steps, sample, nll, DIMS


DIFFUSION_T, DDIM_STEPS = 100, 20


def _diffusion(s: _Split, seconds: float, seed: int, progress: bool):
    sched = dif.cosine_schedule(DIFFUSION_T)
    torch.manual_seed(seed)
    net = UNet(UNetConfig(width=32, time_scale=1.0)).to(s.train.device)  # t is an integer step, as in chapter 6
    params = count_parameters(net)
    ema = EMA(net, decay=0.995, warmup=True)  # a few hundred steps: without warm-up the average keeps ~20% of the init
    h = fit(net, lambda m, b: dif.eps_loss(m, sched, b), data.Batches(data.to_unit(s.train) * 2 - 1, batch_size=128, seed=seed),
            seconds=seconds, lr=2e-3, ema=ema, progress=progress, desc="diffusion")  # fmt: skip
    model = ema.model.eval()

    def sample(n, g):
        x = dif.ddim_sample(model, sched, (n, 1, 8, 8), steps=DDIM_STEPS, generator=g, device=s.train.device, clip_x0=1.0)
        return (x + 1) / 2

    @torch.no_grad()
    def nll():
        # DDPM's bound (discretized Gaussian decoder over the 17 levels), on the chain of T - 1 steps that chapter 6
        # uses: the last step of the cosine schedule has beta clipped at 0.999 and would cost far more than it is worth.
        x = data.to_unit(s.test) * 2 - 1
        b = dif.vlb(model, sched, x, LEVELS, generator=torch.Generator().manual_seed(seed), variance="beta")
        ab = float(sched.alpha_bar[DIFFUSION_T - 2])
        prior = dif.gaussian_kl(ab**0.5 * x, torch.full_like(x, 1 - ab), torch.zeros_like(x), torch.ones_like(x)).flatten(1).sum(1)
        return (prior + b["per_step"][:, :-1].sum(1)).mean().item(), "bound"

    return f"DDPM, DDIM {DDIM_STEPS} steps (ch. 6)", model, params, h.seconds, h.steps, sample, nll, DDIM_STEPS


HEUN_STEPS = 10


def _flow_matching(s: _Split, seconds: float, seed: int, progress: bool):
    path = fm.OTPath(sigma_min=1e-3)

    def dequant(x_int, g=None):
        return 2 * data.dequantize(x_int, generator=g) - 1  # [-1, 1): a density on it bounds the discrete NLL

    torch.manual_seed(seed)
    net = UNet(UNetConfig(width=32)).to(s.train.device)  # t in [0, 1]
    params = count_parameters(net)
    ema = EMA(net, decay=0.995, warmup=True)
    h = fit(net, lambda m, b: fm.fm_loss(m, path, dequant(b)), data.Batches(s.train, batch_size=128, seed=seed), seconds=seconds,
            lr=2e-3, ema=ema, progress=progress, desc="flow matching")  # fmt: skip
    v = ema.model.eval()

    def sample(n, g):
        x = fm.heun(v, torch.randn(n, 1, 8, 8, generator=g).to(s.train.device), steps=HEUN_STEPS, t1=path.t_max)
        return ((x + 1) / 2 * LEVELS).floor().clamp(0, LEVELS - 1) / (LEVELS - 1)  # undo the dequantization

    def nll():
        g = torch.Generator().manual_seed(seed)
        lp = ode_log_prob(v, dequant(s.test, g), steps=16, trace="hutchinson", generator=g, t1=path.t_max)
        return metrics.dequantized_nll(lp.detach() + DIMS * math.log(2), DIMS).mean().item(), "bound"  # [-1, 1) -> [0, 1)

    return f"flow matching, OT path, Heun {HEUN_STEPS} steps (ch. 7)", v, params, h.seconds, h.steps, sample, nll, 2 * HEUN_STEPS


RECIPES = {
    "VAE": _vae,
    "GAN": _gan,
    "flow": _flow,
    "autoregressive": _autoregressive,
    "diffusion": _diffusion,
    "flow matching": _flow_matching,
}


def compare(
    seconds: float = 25.0,
    families: tuple[str, ...] = FAMILIES,
    device: torch.device | str | None = None,
    seed: int = 0,
    progress: bool = False,
    verbose: bool = True,
    n_test: int | None = None,
) -> list[Row]:
    """Train and score the best unconditional digits model of each family in ``families``, each for ``seconds`` of
    wall-clock training (validation checks included where its chapter early-stops), on the book's digits split.
    Returns one :class:`Row` per family, in order. Sampling draws as many images as there are test digits;
    ``n_test`` scores only the first ``n_test`` of them (and draws as many samples), for quick runs and tests."""
    unknown = [f for f in families if f not in RECIPES]
    if unknown:
        raise ValueError(f"unknown families {unknown}; choose from {list(RECIPES)}")
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    split = _Split(*(data.digits(name).x_int.to(device) for name in ("train", "val", "test")))
    if n_test is not None:
        if not 1 < n_test <= len(split.test):
            raise ValueError(f"n_test must be between 2 and {len(split.test)}, got {n_test}")
        split.test = split.test[:n_test]
    metrics.digits_classifier()  # the harness classifier trains once and is cached: keep it out of every timing
    n = len(split.test)
    rows = []
    for family in families:
        name, model, params, train_s, steps, sample, nll, nfe = RECIPES[family](split, seconds, seed, progress)
        model.eval()
        sample(2, torch.Generator().manual_seed(seed))  # warm-up: allocation and kernel selection stay out of the timing
        with metrics.Timer() as timer:  # synchronizes CUDA, so GPU work is counted
            images = sample(n, torch.Generator().manual_seed(seed + 1))
        sample_s, images = timer.seconds, snap(images)
        nats, kind = nll()
        precision, recall = metrics.precision_recall_digits(images)
        fd = metrics.fd_digits(images)
        row = Row(family, name, nats, kind, fd, precision, recall, params, train_s, steps, sample_s / n, nfe, images, model, sample)
        rows.append(row)
        if verbose:
            nll_text = "n/a" if nats is None else f"{nats:.1f} nats ({kind})"
            ms = 1e3 * row.sample_seconds
            print(f"{family}: {steps} steps in {train_s:.0f} s; NLL {nll_text}; FD {fd:.1f}; sampling {ms:.2f} ms/image")
    return rows


def real_floor() -> float:
    """FD of the real test digits against the training split: what a perfect model scores with as many samples as
    :func:`compare` draws (the test split's size)."""
    return metrics.fd_digits(data.digits("test").unit())


def markdown_table(rows: list[Row], floor: float | None = None) -> str:
    """The comparison as a markdown table (the book renders it); ``floor`` adds the real data's FD beside each FD."""
    head = ["family", "model", "NLL (nats)", "bits/dim", "FD", "precision", "recall", "parameters", "train s (steps)",
            "ms / image", "NFE"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r.nll is None:
            nll, bpd = "n/a", "n/a"
        else:
            rel = "=" if r.nll_kind == "exact" else "≤"
            nll, bpd = f"{rel} {r.nll:.1f}", f"{rel} {r.bpd:.3f}"
        fd = f"{r.fd:.1f}" + (f" (real: {floor:.1f})" if floor is not None else "")
        cells = [r.family, r.name, nll, bpd, fd, f"{r.precision:.2f}", f"{r.recall:.2f}", f"{r.params:,}",
                 f"{r.train_seconds:.0f} ({r.train_steps})", f"{1e3 * r.sample_seconds:.2f}", str(r.nfe)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = ["FAMILIES", "RECIPES", "Row", "compare", "markdown_table", "real_floor", "snap"]

"""The book's best unconditional model of each family as a recipe a script can train at any size.

A recipe knows how to build its networks from a :class:`ModelConfig`, the loss to train them with (as a module
whose ``forward`` returns the loss, which is what :class:`torch.nn.parallel.DistributedDataParallel` wraps) and
how to sample from the trained network. The networks and the sampling settings are chapter 13's (each from its
own chapter's ``fast`` profile); ``genbook.compare`` builds its models here, and ``python -m genbook train
FAMILY`` (``genbook.cli``) trains them longer, bigger or on more GPUs. A checkpoint's config is the
:class:`ModelConfig`, so a chapter loads what the command line trained whenever the two configs agree.

| key | family | network | sampler |
| --- | ------ | ------- | ------- |
| ``vae`` | VAE | conv encoder, autoregressive decoder (ch. 2) | ancestral, S*S decoder passes |
| ``gan`` | GAN | DCGAN, minibatch std + R1 (ch. 3) | one generator pass |
| ``flow`` | flow | RealNVP-style multi-scale flow (ch. 4) | one inverse pass |
| ``pixelcnn`` | autoregressive | gated PixelCNN (ch. 5) | S*S passes |
| ``diffusion`` | diffusion | UNet, cosine schedule T = 100 (ch. 6) | DDIM, 20 steps |
| ``flow-matching`` | flow matching | UNet, OT path (ch. 7) | Heun, 10 steps |
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from genbook import autoregressive as ar
from genbook import data, flows, gan, vae
from genbook import diffusion as dif
from genbook import flow_matching as fm
from genbook.nets import DCGANDiscriminator, DCGANGenerator, UNet, UNetConfig
from genbook.runtime import ConfigError
from genbook.train import CheckpointMismatch, load_checkpoint, read_checkpoint

LEVELS = data.DIGIT_LEVELS
SIZES = (8, 16, 28, 32)  # what every family's network supports (DCGAN's generator sets the list)
GRAY_SETS = ("digits", "mnist", "fashion_mnist")
DIFFUSION_T, DDIM_STEPS, HEUN_STEPS = 100, 20, 10
GAN_Z = 32


@dataclass(frozen=True)
class ModelConfig:
    """What a checkpoint must match to be loaded: the family, the data it models and the network's size.

    How long or how it was trained (steps, batch size, learning rate, GPUs) is not part of it: a model trained
    for 100k steps on eight GPUs loads wherever one trained for 20 seconds on a laptop does."""

    family: str
    dataset: str = "digits"
    size: int = 8
    width: int = 32

    def __post_init__(self):
        if self.family not in RECIPES:
            raise ConfigError(f"unknown family {self.family!r}; valid families are {', '.join(RECIPES)}")
        if self.dataset not in GRAY_SETS:
            raise ConfigError(f"unknown dataset {self.dataset!r} for the recipes; valid datasets are {', '.join(GRAY_SETS)}")
        if self.dataset == "digits" and self.size != 8:
            raise ConfigError(f"the digits are 8x8 images; use size 8 with them, not {self.size}")
        if self.size not in SIZES:
            raise ConfigError(f"size {self.size} is not supported; the recipes' networks take sizes {SIZES}")
        if not 4 <= self.width <= 1024:
            raise ConfigError(f"width must be between 4 and 1024 channels, got {self.width}")

    @property
    def name(self) -> str:
        """The checkpoint's file stem: ``FAMILY-DATASET`` (``-sSIZE-wWIDTH`` when those differ from the book's)."""
        stem = f"{self.family}-{self.dataset}"
        if self.size != 8 or self.width != 32:
            stem += f"-s{self.size}-w{self.width}"
        return stem


class Objective(nn.Module):
    """A recipe's networks and its loss on integer images: ``objective(x_int, phase)`` -> (loss, logs)."""

    def __init__(self, nets: dict[str, nn.Module], loss: Callable, phases: tuple[str, ...] = ("main",)):
        super().__init__()
        self.nets = nn.ModuleDict(nets)
        self.loss, self.phases = loss, phases

    def forward(self, x_int: torch.Tensor, phase: str = "main"):
        out = self.loss(self.nets, x_int, phase)
        return out if isinstance(out, tuple) else (out, {})

    def parameters_of(self, phase: str) -> list[nn.Parameter]:
        """The parameters the optimizer of ``phase`` updates (the GAN's two players; everything otherwise)."""
        return list(self.nets["disc" if phase == "d" else "net"].parameters()) if phase in ("d", "g") else list(self.parameters())


@dataclass(frozen=True)
class Recipe:
    key: str
    family: str  # as chapter 13's table names it
    title: str
    build: Callable[[ModelConfig], dict[str, nn.Module]]  # "net" samples; "disc" is the GAN's discriminator
    loss: Callable[[nn.ModuleDict, torch.Tensor, str], torch.Tensor | tuple]
    sample: Callable[[nn.Module, ModelConfig, int, torch.Generator | None], torch.Tensor]  # -> images in [0, 1]
    nfe: Callable[[ModelConfig], int]  # network evaluations per image
    lr: float
    batch_size: int
    phases: tuple[str, ...] = ("main",)
    ema: float | None = None  # decay of the weight average that samples, when the chapter uses one
    early_stop: bool = False  # keep the weights of the best validation loss (the chapter early-stops on 1000 digits)
    amp: bool = True  # the flow's log-determinants stay in fp32
    fp16: bool = True  # False: mixed precision only in bf16 (the GAN's R1 penalty differentiates unscaled fp16 gradients)
    compiles: bool = True  # False: torch.compile cannot differentiate twice (the GAN's R1 penalty)
    betas: tuple[float, float] = (0.9, 0.999)
    init: Callable[[dict[str, nn.Module], torch.Tensor], None] | None = None  # data-dependent initialization

    def objective(self, nets: dict[str, nn.Module]) -> Objective:
        return Objective(nets, self.loss, self.phases)


# ----------------------------------------------------------------------------- the six recipes


def _vae_build(c: ModelConfig):
    return {"net": vae.VAE(vae.VAEConfig(latent_dim=16, size=c.size, width=c.width, ar_width=c.width, decoder="autoregressive"))}


def _gan_build(c: ModelConfig):
    g = DCGANGenerator(z_dim=GAN_Z, size=c.size, width=c.width)
    d = DCGANDiscriminator(size=c.size, width=c.width, minibatch_std=True)
    return {"net": g, "disc": d}


def _gan_loss(nets, x_int, phase, r1_gamma: float = 1.0):
    g, d = nets["net"], nets["disc"]
    real = data.to_unit(x_int) * 2 - 1
    z = torch.randn(len(real), GAN_Z, device=real.device)
    if phase == "d":
        with torch.no_grad():
            fake = g(z)
        return gan.d_loss(d(real).squeeze(-1), d(fake).squeeze(-1)) + 0.5 * r1_gamma * gan.r1_penalty(d, real)
    return gan.g_loss_nonsaturating(d(g(z)).squeeze(-1))


@torch.no_grad()
def _gan_sample(g, c, n, generator):
    return (g(torch.randn(n, GAN_Z, generator=generator).to(next(g.parameters()).device)) + 1) / 2


def _flow_build(c: ModelConfig):
    return {"net": flows.digits_flow(flows.DigitsFlowConfig(coupling="affine", width=c.width), size=c.size)}


def _pixelcnn_build(c: ModelConfig):
    return {"net": ar.GatedPixelCNN(ar.PixelCNNConfig(channels=c.width, layers=5, dropout=0.1))}


def _diffusion_build(c: ModelConfig):
    return {"net": UNet(UNetConfig(width=c.width, time_scale=1.0))}  # t is an integer step, as in chapter 6


@lru_cache(maxsize=1)
def schedule() -> dif.Schedule:
    """The diffusion recipe's noise schedule: cosine, T = 100 steps (chapter 6)."""
    return dif.cosine_schedule(DIFFUSION_T)


def _diffusion_sample(net, c, n, generator):
    shape = (n, 1, c.size, c.size)
    device = next(net.parameters()).device
    x = dif.ddim_sample(net, schedule(), shape, steps=DDIM_STEPS, generator=generator, device=device, clip_x0=1.0)
    return (x + 1) / 2


def _fm_build(c: ModelConfig):
    return {"net": UNet(UNetConfig(width=c.width))}  # t in [0, 1]


FM_PATH = fm.OTPath(sigma_min=1e-3)


def fm_dequantize(x_int: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Integer images -> [-1, 1) with uniform dequantization noise: a density there bounds the discrete NLL."""
    return 2 * data.dequantize(x_int, generator=generator) - 1


def fm_to_unit(x: torch.Tensor) -> torch.Tensor:
    """Flow matching's samples in [-1, 1) back on the 17 levels, in [0, 1]: undo :func:`fm_dequantize` (floor of K y)."""
    return ((x + 1) / 2 * LEVELS).floor().clamp(0, LEVELS - 1) / (LEVELS - 1)


def _fm_sample(v, c, n, generator):
    x0 = torch.randn(n, 1, c.size, c.size, generator=generator).to(next(v.parameters()).device)
    return fm_to_unit(fm.heun(v, x0, steps=HEUN_STEPS, t1=FM_PATH.t_max))


RECIPES: dict[str, Recipe] = {
    r.key: r
    for r in (
        Recipe("vae", "VAE", "VAE, autoregressive decoder (ch. 2)", _vae_build,
               lambda nets, x, phase: vae.vae_loss(nets["net"], x), lambda m, c, n, g: m.sample(n, generator=g),
               lambda c: c.size**2, lr=2e-3, batch_size=64, early_stop=True),
        Recipe("gan", "GAN", "DCGAN, minibatch std + R1 (ch. 3)", _gan_build, _gan_loss, _gan_sample, lambda c: 1,
               lr=2e-4, batch_size=64, phases=("d", "g"), betas=(0.0, 0.99), fp16=False, compiles=False),
        Recipe("flow", "flow", "RealNVP-style flow (ch. 4)", _flow_build, lambda nets, x, phase: flows.nll_loss(nets["net"], x),
               lambda m, c, n, g: data.to_unit(flows.sample_digits(m, n, generator=g)), lambda c: 1, lr=1e-3,
               batch_size=128, early_stop=True, amp=False, init=lambda nets, x: flows.initialize(nets["net"], x)),
        Recipe("pixelcnn", "autoregressive", "gated PixelCNN (ch. 5)", _pixelcnn_build,
               lambda nets, x, phase: ar.pixel_loss(nets["net"], x),
               lambda m, c, n, g: data.to_unit(ar.sample_pixels(m, n, size=c.size, generator=g)), lambda c: c.size**2,
               lr=2e-3, batch_size=64, early_stop=True),
        Recipe("diffusion", "diffusion", f"DDPM, DDIM {DDIM_STEPS} steps (ch. 6)", _diffusion_build,
               lambda nets, x, phase: dif.eps_loss(nets["net"], schedule(), data.to_unit(x) * 2 - 1), _diffusion_sample,
               lambda c: DDIM_STEPS, lr=2e-3, batch_size=128, ema=0.995),
        Recipe("flow-matching", "flow matching", f"flow matching, OT path, Heun {HEUN_STEPS} steps (ch. 7)", _fm_build,
               lambda nets, x, phase: fm.fm_loss(nets["net"], FM_PATH, fm_dequantize(x)), _fm_sample,
               lambda c: 2 * HEUN_STEPS, lr=2e-3, batch_size=128, ema=0.995),
    )
}  # fmt: skip
BY_FAMILY = {r.family: r for r in RECIPES.values()}


def recipe(key: str) -> Recipe:
    """The recipe for ``key`` (``vae``, ``gan``, ``flow``, ``pixelcnn``, ``diffusion``, ``flow-matching``), or a
    :class:`ConfigError` listing them."""
    k = key.strip().lower().replace("_", "-")
    if k not in RECIPES:
        raise ConfigError(f"unknown family {key!r}; valid families are {', '.join(RECIPES)}")
    return RECIPES[k]


# ----------------------------------------------------------------------------- data


def load_levels(dataset: str, split: str, size: int, root: str | os.PathLike | None = None) -> torch.Tensor:
    """Integer images on the 17 grey levels the recipes model, (N, 1, size, size). ``digits`` splits are train, val,
    test; the online sets (``mnist``, ``fashion_mnist``, downloaded once through torchvision) have train and test,
    are averaged down to ``size`` when it is smaller than 28 and padded when it is 32."""
    key = data._check_name(dataset, GRAY_SETS, "dataset for the recipes")
    if key == "digits":
        return data.digits(split).x_int
    x = data.load_dataset(key, split, root=root).x_int.float() / 255  # (N, 1, 28, 28) in [0, 1]
    if size == 32:
        x = nn.functional.pad(x, (2, 2, 2, 2))
    elif size != 28:
        x = nn.functional.interpolate(x, size=(size, size), mode="area")
    return data.quantize(x)


# ----------------------------------------------------------------------------- checkpoints


def load(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[nn.Module, ModelConfig, dict]:
    """Rebuild the sampling network a recipe checkpoint holds, from the config saved with it, and load its weights
    (checked against their hash; ``weights_only``, so nothing but tensors and plain data is read).
    Returns (network in eval mode, its ModelConfig, what was saved with it: steps, seconds, ...)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}; train one with `python -m genbook train FAMILY --out {path.parent}`")
    saved = read_checkpoint(path, what="recipe checkpoint")["config"]
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    if not isinstance(saved, dict) or set(saved) != fields:
        have = f"fields {sorted(saved)}" if isinstance(saved, dict) else f"a {type(saved).__name__}"
        raise CheckpointMismatch(
            f"{path} is not a recipe checkpoint (its config is {have}, not fields {sorted(fields)}); "
            "train again (python -m genbook train FAMILY), or pass the checkpoint you meant"
        )
    cfg = ModelConfig(**saved)
    net = recipe(cfg.family).build(cfg)["net"]
    extra = load_checkpoint(path, net, cfg)
    return net.to(device).eval(), cfg, extra


__all__ = ["BY_FAMILY", "GRAY_SETS", "RECIPES", "SIZES", "ModelConfig", "Objective", "Recipe", "load", "load_levels", "recipe"]

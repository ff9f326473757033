"""Generative adversarial networks (chapter 3): losses, penalties, conditional critics, style mixing, Dirac-GAN.

| name in code | symbol |
| ------------ | ------ |
| ``real_logits``, ``fake_logits`` | the discriminator's logit f, D(x) = sigmoid(f(x)) |
| ``critic`` | a WGAN critic C(x), unbounded (survey eq. 38, Box 4) |
| ``gamma`` | the weight of the R1 penalty (survey eq. 40-41) |
| ``w`` | StyleGAN's intermediate latent w = mapping(z) (survey Box 5) |

Losses take logits and use softplus, so log D = -softplus(-f) and log(1 - D) = -softplus(f) stay
finite where D saturates. The networks (``genbook.nets.DCGANGenerator``/``DCGANDiscriminator``,
``MLP``) know nothing about these losses.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from genbook.nets import MLP, DCGANDiscriminator, DCGANGenerator
from genbook.nets import MinibatchStd as MinibatchStd  # re-exported: chapter 3 introduces it beside the losses
from genbook.runtime import training_loop

# ----------------------------------------------------------------------------- losses (survey eq. 32-36, Box 3)


def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """-E[log D(x)] - E[log(1 - D(G(z)))] (survey eq. 35): the discriminator's cross-entropy."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_loss_minimax(fake_logits: torch.Tensor) -> torch.Tensor:
    """E[log(1 - D(G(z)))] (survey eq. 34): the original game; its gradient vanishes when D rejects G(z) confidently."""
    return -F.softplus(fake_logits).mean()


def g_loss_nonsaturating(fake_logits: torch.Tensor) -> torch.Tensor:
    """-E[log D(G(z))] (survey eq. 36): same fixed point, strong gradients early in training."""
    return F.softplus(-fake_logits).mean()


def wgan_critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """E[C(G(z))] - E[C(x)]: the critic maximizes the Kantorovich-Rubinstein estimate of W(P_r, P_g) (eq. 38)."""
    return fake_scores.mean() - real_scores.mean()


def wgan_g_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """-E[C(G(z))]: the generator moves its samples up the critic's slope."""
    return -fake_scores.mean()


@torch.no_grad()
def clip_weights(critic: nn.Module, c: float = 0.01) -> None:
    """WGAN's Lipschitz constraint by weight clipping (Arjovsky et al. 2017): every parameter into [-c, c]."""
    for p in critic.parameters():
        p.clamp_(-c, c)


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor, *args, generator: torch.Generator | None = None) -> torch.Tensor:
    """E[(||grad_x C(x_hat)||_2 - 1)^2] at x_hat = eps x + (1 - eps) G(z), eps ~ U[0, 1] (WGAN-GP, survey Box 4).

    Extra ``args`` (e.g. labels) are passed to the critic. Shapes: real, fake (B, ...) -> scalar.
    """
    eps = torch.rand(real.shape[0], *([1] * (real.ndim - 1)), generator=generator).to(real.device)
    x_hat = (eps * real + (1 - eps) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat, *args).sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


def r1_penalty(discriminator, real: torch.Tensor, *args) -> torch.Tensor:
    """E_x[||grad_x D(x)||^2] on real data (survey eq. 40; Mescheder et al. 2018); the loss adds gamma/2 times it (eq. 41)."""
    x = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminator(x, *args).sum(), x, create_graph=True)
    return grad.flatten(1).pow(2).sum(1).mean()


# ----------------------------------------------------------------------------- conditional generators and critics


class ConditionalGenerator(nn.Module):
    """G(z, y): a DCGAN generator whose input is z concatenated with the one-hot label (conditional GAN, eq. 42)."""

    def __init__(self, z_dim: int, num_classes: int, channels: int = 1, size: int = 8, width: int = 64):
        super().__init__()
        self.z_dim, self.num_classes = z_dim, num_classes
        self.net = DCGANGenerator(z_dim + num_classes, channels, size, width)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z, F.one_hot(y, self.num_classes).to(z.dtype)], 1))


class ConcatDiscriminator(nn.Module):
    """D(x | y) with the label as extra one-hot input channels (Mirza and Osindero 2014; eq. 42). (B, C, S, S), (B,) -> (B,)."""

    def __init__(self, num_classes: int, channels: int = 1, size: int = 8, width: int = 64):
        super().__init__()
        self.num_classes = num_classes
        self.net = DCGANDiscriminator(channels + num_classes, size, width)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(y, self.num_classes).to(x.dtype)[:, :, None, None].expand(-1, -1, *x.shape[-2:])
        return self.net(torch.cat([x, onehot], 1)).squeeze(1)


class ACGANDiscriminator(nn.Module):
    """One body, two heads: a real/fake logit and class logits (AC-GAN, Odena et al. 2017; eq. 43-45).

    ``forward(x, y)`` returns the real/fake logit so it plugs into the same losses and penalties;
    ``class_logits(x)`` gives P(C | x). Shapes: (B, C, S, S) -> (B,) and (B, K).
    """

    def __init__(self, num_classes: int, channels: int = 1, size: int = 8, width: int = 64):
        super().__init__()
        self.net = DCGANDiscriminator(channels, size, width, out_dim=1 + num_classes)

    def both(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(x)
        return out[:, 0], out[:, 1:]

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.both(x)[0]

    def class_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.both(x)[1]


class ProjectionDiscriminator(nn.Module):
    """D(x, y) = psi(phi(x)) + <v_y, phi(x)> (Miyato and Koyama 2018; survey eq. 46). (B, C, S, S), (B,) -> (B,)."""

    def __init__(self, num_classes: int, channels: int = 1, size: int = 8, width: int = 64):
        super().__init__()
        self.net = DCGANDiscriminator(channels, size, width)
        self.embed = nn.Embedding(num_classes, self.net.feature_dim)  # v_y

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        phi = self.net.features(x)  # (B, F)
        return self.net.head(phi).squeeze(1) + (self.embed(y) * phi).sum(1)  # unconditional term + label-image match


# ----------------------------------------------------------------------------- training


@dataclass
class GANHistory:
    """Per-step losses and the generator's gradient norm, as measured by :func:`train_gan`."""

    d_loss: list[float] = field(default_factory=list)
    g_loss: list[float] = field(default_factory=list)
    g_grad_norm: list[float] = field(default_factory=list)
    seconds: float = 0.0
    snapshots: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # step -> generator state_dict


LOSSES = ("nonsaturating", "minimax", "wgan-clip", "wgan-gp")


class _Game:
    """The two players of :func:`train_gan` and one step of each: the losses, penalties and updates of Box 3 and 4."""

    def __init__(
        self, generator, discriminator, z_dim, loss, r1_gamma, gp_weight, clip_value, conditional, acgan, rng, g_penalty, lr, betas
    ):
        self.G, self.D = generator, discriminator
        self.z_dim, self.loss, self.r1_gamma, self.gp_weight, self.clip_value = z_dim, loss, r1_gamma, gp_weight, clip_value
        self.conditional, self.acgan, self.rng, self.g_penalty = conditional, acgan, rng, g_penalty
        self.device = next(generator.parameters()).device
        self.opt_g = torch.optim.Adam(generator.parameters(), lr=lr, betas=betas)
        self.opt_d = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=betas)

    def draw(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.z_dim, generator=self.rng).to(self.device)

    def call(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return net(x, y) if self.conditional else net(x)

    def judge(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The real/fake output, and the class logits for AC-GAN, from one forward pass of D."""
        if self.acgan:
            return self.D.both(x)
        return self.call(self.D, x, y).squeeze(-1), None

    def discriminator_step(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One update of D on a real batch and as many fakes; returns (its loss, the real images, their labels)."""
        real, y = batch if self.conditional else (batch, None)
        extra = [y] if self.conditional else []
        with torch.no_grad():
            fake = self.call(self.G, self.draw(len(real)), y)
        (real_out, real_cls), (fake_out, fake_cls) = self.judge(real, y), self.judge(fake, y)
        ld = wgan_critic_loss(real_out, fake_out) if self.loss.startswith("wgan") else d_loss(real_out, fake_out)
        if self.loss == "wgan-gp":
            ld = ld + self.gp_weight * gradient_penalty(self.D, real, fake, *extra)
        if self.r1_gamma:
            ld = ld + 0.5 * self.r1_gamma * r1_penalty(self.D, real, *extra)
        if self.acgan:  # L_C of eq. 44 on real and fake samples
            ld = ld + F.cross_entropy(real_cls, y) + F.cross_entropy(fake_cls, y)
        self.opt_d.zero_grad(set_to_none=True)
        ld.backward()
        self.opt_d.step()
        if self.loss == "wgan-clip":
            clip_weights(self.D, self.clip_value)
        return ld, real, y

    def generator_step(self, n: int, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One update of G on n fakes; returns (its loss, the per-parameter sums of squares of its gradient)."""
        fake = self.call(self.G, self.draw(n), y)
        fake_out, fake_cls = self.judge(fake, y)
        lg = {"nonsaturating": g_loss_nonsaturating, "minimax": g_loss_minimax}.get(self.loss, wgan_g_loss)(fake_out)
        if self.g_penalty is not None:
            lg = lg + self.g_penalty(fake)
        if self.acgan:
            lg = lg + F.cross_entropy(fake_cls, y)
        self.opt_g.zero_grad(set_to_none=True)
        lg.backward()
        squares = torch.stack([p.grad.detach().float().pow(2).sum() for p in self.G.parameters() if p.grad is not None])
        self.opt_g.step()
        return lg, squares


class _GANLog:
    """Both players' losses and G's gradient norm, read back every step on a CPU, every 25 on a GPU (no stalls)."""

    def __init__(self, hist: GANHistory):
        self.hist = hist
        self.d_losses: list[torch.Tensor] = []
        self.g_losses: list[torch.Tensor] = []
        self.norms: list[torch.Tensor] = []

    def add(self, ld: torch.Tensor, lg: torch.Tensor, squares: torch.Tensor) -> None:
        self.norms.append(squares)
        self.d_losses.append(ld.detach())
        self.g_losses.append(lg.detach())

    def read(self) -> None:
        for values, out in ((self.d_losses, self.hist.d_loss), (self.g_losses, self.hist.g_loss)):
            if values:
                out.extend(torch.stack(values).float().tolist())  # float32: MPS has no float64
                values.clear()
        # the generator's gradient norm: per-parameter sums of squares in float32, added up in float64 on the CPU
        self.hist.g_grad_norm.extend(squares.cpu().double().sum().sqrt().item() for squares in self.norms)
        self.norms.clear()


def train_gan(
    generator: nn.Module,
    discriminator: nn.Module,
    batches,
    steps: int | None = None,
    z_dim: int = 32,
    loss: str = "nonsaturating",
    r1_gamma: float = 0.0,
    n_critic: int = 1,
    lr: float = 2e-4,
    betas: tuple[float, float] = (0.5, 0.999),
    gp_weight: float = 10.0,
    clip_value: float = 0.01,
    conditional: bool = False,
    acgan: bool = False,
    generator_rng: torch.Generator | None = None,
    g_penalty: Callable[[torch.Tensor], torch.Tensor] | None = None,
    seconds: float | None = None,
    snapshot_at: tuple[int, ...] = (),
) -> GANHistory:
    """Alternate ``n_critic`` discriminator steps and one generator step (survey Box 3 and Box 4).

    ``batches`` yields real images (or (images, labels) when ``conditional``). The losses are the
    ones named in :data:`LOSSES`; ``r1_gamma`` adds gamma/2 R1 (eq. 41) to the discriminator's loss;
    ``acgan`` adds the class cross-entropies L_C of eq. 44-45 to both players. ``g_penalty(fake)`` is added to the
    generator's loss on its batch (chapter 12's spectral regularization, eq. 129). The budget is ``steps`` generator
    steps, ``seconds`` of wall-clock time (chapter 13's equal budgets), or whichever runs out first.
    ``snapshot_at`` keeps a copy of the generator's weights after each of those generator steps in
    ``hist.snapshots[step]``: the same run, read at a shorter budget (chapter 3's ablation at equal steps); absent
    when a ``seconds`` budget ends the run first.
    """
    if steps is None and seconds is None:
        raise ValueError("train_gan needs a budget: steps=..., seconds=..., or both")
    if any(k < 1 or (steps is not None and k > steps) for k in snapshot_at):
        raise ValueError(f"snapshot_at steps must lie in 1..steps ({steps}), got {tuple(snapshot_at)}")
    if loss not in LOSSES:
        raise ValueError(f"unknown GAN loss {loss!r}; valid losses are {', '.join(LOSSES)}")
    if acgan and not conditional:
        raise ValueError("acgan=True needs conditional=True: the batches must carry labels")
    game = _Game(
        generator, discriminator, z_dim, loss, r1_gamma, gp_weight, clip_value, conditional, acgan, generator_rng, g_penalty, lr, betas
    )
    hist = GANHistory()
    log = _GANLog(hist)
    start = time.perf_counter()
    generator.train()
    discriminator.train()
    step = 0
    run = training_loop(steps, "GAN")  # smoke mode (GENBOOK_SMOKE=1): a few steps, one measured (fp32: no autocast here)
    steps = run.steps
    keep = {min(k, steps) if steps is not None else k: k for k in snapshot_at}  # smoke mode: the last step stands in
    try:
        while (steps is None or step < steps) and (seconds is None or time.perf_counter() - start < seconds):
            run.begin(step)
            step += 1
            for _ in range(n_critic):
                ld, real, y = game.discriminator_step(next(batches))
            lg, squares = game.generator_step(len(real), y)
            log.add(ld, lg, squares)
            if step in keep:
                hist.snapshots[keep[step]] = {k: v.detach().clone() for k, v in generator.state_dict().items()}
            run.end(step - 1)
            if game.device.type != "cuda" or step % 25 == 0:
                log.read()
    finally:
        run.close()
    log.read()
    generator.eval()
    discriminator.eval()
    hist.seconds = time.perf_counter() - start
    return hist


# ----------------------------------------------------------------------------- style mixing at toy scale (Box 5)


class AdaIN(nn.Module):
    """Adaptive instance norm: normalize each channel, then scale and shift it by an affine map of w."""

    def __init__(self, channels: int, w_dim: int):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels)
        self.style = nn.Linear(w_dim, 2 * channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        scale, shift = self.style(w).chunk(2, 1)  # (B, C) each
        return self.norm(x) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


class StyleGenerator(nn.Module):
    """A mapping network z -> w and a synthesis network from a learned constant, one style per resolution (StyleGAN, Box 5).

    8x8 output: const 2x2 -> 4x4 -> 8x8, three AdaIN layers. ``forward(z, z_mix, crossover)`` uses w(z)
    for layers before ``crossover`` and w(z_mix) from it on: style mixing. Shapes: z (B, z_dim) -> (B, C, 8, 8).

    The mapping network's linear layers start from He initialization for the LeakyReLU (zero biases), so that
    w varies across z as much as z does. StyleGAN gets the same from its equalized learning rate. PyTorch's
    default ``nn.Linear`` init draws weights with a sixth of He's variance, so with the LeakyReLUs each layer
    keeps about a sixth of the mean square (w keeps ~0.035 of z's spread after four layers; ``mapping_init=
    "default"`` keeps that init, for chapter 3's measurement), and every style starts out nearly the same.
    """

    def __init__(
        self,
        z_dim: int = 32,
        w_dim: int = 32,
        channels: int = 1,
        width: int = 64,
        mapping_layers: int = 4,
        mapping_init: str = "he",
    ):
        super().__init__()
        if mapping_init not in ("he", "default"):
            raise ValueError(f"unknown mapping_init {mapping_init!r}; use 'he' (StyleGAN's spread) or 'default' (PyTorch's)")
        self.z_dim = z_dim
        self.mapping = MLP(z_dim, w_dim, (w_dim,) * (mapping_layers - 1), act=lambda: nn.LeakyReLU(0.2))
        if mapping_init == "he":
            for layer in self.mapping.net:
                if isinstance(layer, nn.Linear):
                    nn.init.kaiming_normal_(layer.weight, a=0.2, nonlinearity="leaky_relu")
                    nn.init.zeros_(layer.bias)
        self.const = nn.Parameter(torch.randn(1, width, 2, 2))
        chans = [width, width, width // 2, width // 4]  # const, then one conv per resolution 2, 4, 8
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(chans[:-1], chans[1:]))
        self.styles = nn.ModuleList(AdaIN(c, w_dim) for c in chans[1:])
        self.out = nn.Conv2d(chans[-1], channels, 1)
        self.num_layers = len(self.convs)

    def forward(self, z: torch.Tensor, z_mix: torch.Tensor | None = None, crossover: int | None = None) -> torch.Tensor:
        w = self.mapping(z)  # (B, w_dim)
        w2 = self.mapping(z_mix) if z_mix is not None else w
        cross = self.num_layers if crossover is None else crossover
        h = self.const.expand(len(z), -1, -1, -1)
        for i, (conv, style) in enumerate(zip(self.convs, self.styles)):
            if i > 0:
                h = F.interpolate(h, scale_factor=2, mode="nearest")  # 2 -> 4 -> 8
            h = style(F.leaky_relu(conv(h), 0.2), w if i < cross else w2)
        return torch.tanh(self.out(h))


# ----------------------------------------------------------------------------- the Dirac-GAN (Mescheder et al. 2018)


def dirac_gan(steps: int, lr: float = 0.1, r1_gamma: float = 0.0, theta0: float = 1.0, psi0: float = 1.0) -> torch.Tensor:
    """Simultaneous gradient descent on the Dirac-GAN: data at 0, G is a point mass at theta, D(x) = sigmoid(psi x).

    The game L(theta, psi) = f(psi theta) + f(0) with f(t) = -log(1 + exp(-t)) has its equilibrium at (0, 0);
    unregularized updates circle away from it, R1 (gamma/2 psi^2 here, since grad_x D = psi) pulls them in.
    Returns the trajectory (steps + 1, 2) of (theta, psi). Computed with autograd on the package's losses.
    """
    theta = torch.tensor(theta0, requires_grad=True)
    psi = torch.tensor(psi0, requires_grad=True)
    path = [(theta0, psi0)]
    for _ in range(steps):
        fake_logit, real_logit = psi * theta, psi * torch.zeros(())
        ld = d_loss(real_logit, fake_logit)  # D minimizes its cross-entropy, G the minimax loss (eq. 34-35)
        if r1_gamma:
            ld = ld + 0.5 * r1_gamma * psi.pow(2)  # ||grad_x psi x||^2 = psi^2 at every real x
        lg = g_loss_minimax(fake_logit)
        g_theta = torch.autograd.grad(lg, theta, retain_graph=True)[0]
        g_psi = torch.autograd.grad(ld, psi)[0]
        with torch.no_grad():
            theta -= lr * g_theta
            psi -= lr * g_psi
        path.append((theta.item(), psi.item()))
    return torch.tensor(path)

"""Variational autoencoders (chapter 2): the ELBO, its decoders, beta and capacity, CVAE, IWAE, hierarchies.

| name in code | symbol |
| ------------ | ------ |
| ``x_int``    | an image's integer pixels 0..K-1 (K = 17 for digits), shape (B, C, S, S) |
| ``mu, logvar`` | q_phi(z | x) = N(mu, diag(exp(logvar))), shape (B, d) |
| ``eps``      | epsilon ~ N(0, I), the only randomness in z = mu + sigma * eps (survey eq. 13) |
| ``log_px_z`` | log p_theta(x | z), nats per image, shape (B,) |
| ``kl``       | KL(q_phi(z | x) || p(z)) (survey eq. 3), shape (B,) |
| ``beta``, ``gamma``, ``capacity`` | the weights of survey eq. 16 and 17 |

All likelihoods are of the discrete pixels, in nats per image, except the Gaussian decoder's,
which is a density on dequantized pixels y = (x_int + u) / K and turns into a bound on the
discrete NLL through :func:`genbook.metrics.dequantized_nll`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genbook import data, metrics
from genbook.nets import ConvDecoder, ConvEncoder, MaskedConv2d

DECODERS = ("categorical", "gaussian", "autoregressive")


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) = 1/2 sum_i (mu_i^2 + sigma_i^2 - log sigma_i^2 - 1) (survey eq. 3). (B, d) -> (B,)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(-1)


def gaussian_kl_between(mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor, logvar_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_q, s_q^2) || N(mu_p, s_p^2)) = 1/2 sum (log s_p^2/s_q^2 + (s_q^2 + (mu_q - mu_p)^2) / s_p^2 - 1). (B, d) -> (B,)."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p).pow(2)) / logvar_p.exp() - 1).sum(-1)


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))) summed over the last dimension. (B, d) -> (B,)."""
    return -0.5 * (math.log(2 * math.pi) + logvar + (z - mu).pow(2) / logvar.exp()).sum(-1)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I) (survey eq. 13): a sample of q(z | x) that gradients pass through."""
    if eps is None:
        eps = torch.randn_like(mu)
    return mu + (0.5 * logvar).exp() * eps


@dataclass
class VAEConfig:
    latent_dim: int = 16
    channels: int = 1
    size: int = 8
    width: int = 32
    decoder: str = "categorical"  # one of DECODERS
    levels: int = data.DIGIT_LEVELS
    num_classes: int | None = None  # set for a conditional VAE (survey Box 1)
    ar_width: int = 32  # autoregressive decoder: channels of its masked convolutions
    ar_layers: int = 3
    ar_condition: str = "spatial"  # how z enters it: "spatial" (a map per pixel) or "global" (one bias per channel)


class AutoregressiveDecoder(nn.Module):
    """p(x | z) = prod_i p(x_i | x_<i, z) (survey eq. 20 with z): masked convolutions plus a z-dependent bias.

    ``ar_condition="spatial"`` decodes z into a bias map with one vector per pixel (PixelVAE-like);
    ``"global"`` adds one vector to every pixel, as the conditional PixelCNN does with a class or an
    embedding. A decoder this strong can model the digits without z, which is what makes posterior
    collapse happen (chapter 2, "Posterior collapse"). Shapes: z (B, d), x (B, C, S, S) -> (B, K, C, S, S).
    """

    def __init__(self, cfg: VAEConfig, z_dim: int):
        super().__init__()
        w, c = cfg.ar_width, cfg.channels
        if cfg.ar_condition == "spatial":
            self.cond = ConvDecoder(z_dim, w, cfg.size, cfg.width)  # z -> (B, w, S, S)
        elif cfg.ar_condition == "global":
            self.cond = nn.Sequential(nn.Linear(z_dim, w), nn.Unflatten(1, (w, 1, 1)))  # z -> (B, w, 1, 1)
        else:
            raise ValueError(f"ar_condition must be 'spatial' or 'global', got {cfg.ar_condition!r}")
        self.first = MaskedConv2d(c, w, 7, "A")
        self.layers = nn.ModuleList(MaskedConv2d(w, w, 3, "B") for _ in range(cfg.ar_layers))
        self.out = nn.Conv2d(w, cfg.levels * c, 1)
        self.levels, self.channels, self.size = cfg.levels, c, cfg.size

    def forward(self, z: torch.Tensor, x_unit: torch.Tensor) -> torch.Tensor:
        h = self.cond(z)
        a = self.first(x_unit) + h
        for layer in self.layers:
            a = a + layer(F.silu(a)) + h  # residual, with z injected at every layer
        logits = self.out(F.silu(a))  # (B, K*C, S, S)
        return logits.view(a.shape[0], self.levels, self.channels, *a.shape[-2:])

    @torch.no_grad()
    def sample(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw x ~ p(x | z) pixel by pixel in raster order (S*S network calls). Returns x_int (B, C, S, S)."""
        b, s = z.shape[0], self.size
        x_int = torch.zeros(b, self.channels, s, s, dtype=torch.long, device=z.device)
        for i in range(s * s):
            r, q = divmod(i, s)
            logits = self(z, x_int.float() / (self.levels - 1))[:, :, :, r, q]  # (B, K, C)
            probs = logits.float().softmax(1).permute(0, 2, 1).reshape(-1, self.levels)  # (B*C, K)
            x_int[:, :, r, q] = torch.multinomial(probs.cpu(), 1, generator=generator).view(b, -1).to(z.device)
        return x_int


class VAE(nn.Module):
    """q_phi(z | x) = N(mu, sigma^2) from a conv encoder; p_theta(x | z) categorical, Gaussian or autoregressive.

    With ``num_classes`` set it is a conditional VAE: the label enters the encoder as extra
    one-hot channels and the decoder as a one-hot vector beside z (survey Box 1).
    """

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        if cfg.decoder not in DECODERS:
            raise ValueError(f"unknown decoder {cfg.decoder!r}; valid decoders are {', '.join(DECODERS)}")
        self.cfg = cfg
        n_cls = cfg.num_classes or 0
        self.encoder = ConvEncoder(cfg.channels + n_cls, 2 * cfg.latent_dim, cfg.size, cfg.width)
        z_in = cfg.latent_dim + n_cls
        if cfg.decoder == "autoregressive":
            self.decoder = AutoregressiveDecoder(cfg, z_in)
        else:
            out = cfg.levels * cfg.channels if cfg.decoder == "categorical" else cfg.channels
            self.decoder = ConvDecoder(z_in, out, cfg.size, cfg.width)
        # Gaussian decoder: one learned log-sigma per pixel (survey eq. 18 with a learned sigma)
        self.log_sigma = nn.Parameter(torch.full((cfg.channels, cfg.size, cfg.size), -2.0)) if cfg.decoder == "gaussian" else None

    def _onehot(self, y: torch.Tensor | None, b: int) -> torch.Tensor | None:
        if self.cfg.num_classes is None:
            if y is not None:
                raise ValueError("this VAE is unconditional: build it with num_classes=... to pass labels y")
            return None
        if y is None:
            raise ValueError("this is a conditional VAE: pass the labels y")
        return F.one_hot(y, self.cfg.num_classes).float().view(b, -1)

    def encode(self, x_unit: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """mu, logvar of q(z | x[, y]), each (B, d)."""
        onehot = self._onehot(y, x_unit.shape[0])
        if onehot is not None:
            x_unit = torch.cat([x_unit, onehot[:, :, None, None].expand(-1, -1, *x_unit.shape[-2:])], 1)  # (B, C + n, S, S)
        mu, logvar = self.encoder(x_unit).chunk(2, dim=-1)
        return mu, logvar.clamp(-12, 8)

    def _z_in(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        onehot = self._onehot(y, z.shape[0])
        return z if onehot is None else torch.cat([z, onehot], -1)

    def log_px_z(self, x_int: torch.Tensor, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x | z) in nats per image, (B,). For the Gaussian decoder, a density on y = (x_int + u) / K."""
        zin = self._z_in(z, y)
        cfg = self.cfg
        if cfg.decoder == "categorical":
            logits = self.decoder(zin).view(len(z), cfg.levels, cfg.channels, cfg.size, cfg.size)  # (B, K, C, S, S)
            return -metrics.categorical_nll(logits, x_int)
        if cfg.decoder == "autoregressive":
            return -metrics.categorical_nll(self.decoder(zin, data.to_unit(x_int, cfg.levels)), x_int)
        y_deq = data.dequantize(x_int, cfg.levels)  # Gaussian: a density on dequantized pixels
        mean = self.decoder(zin)
        var = (2 * self.log_sigma).exp()
        return (-0.5 * (math.log(2 * math.pi) + 2 * self.log_sigma + (y_deq - mean).pow(2) / var)).flatten(1).sum(1)

    def elbo_terms(self, x_int: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One-sample estimates of log p(x | z) and KL(q(z | x) || p(z)), each (B,): ELBO = first - second (survey eq. 11)."""
        mu, logvar = self.encode(data.to_unit(x_int, self.cfg.levels), y)
        z = reparameterize(mu, logvar)
        return self.log_px_z(x_int, z, y), gaussian_kl(mu, logvar)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None, mode: str = "mean", generator: torch.Generator | None = None):
        """Images in [0, 1] from codes z (B, d): ``mean`` = E[x | z], ``mode`` = most likely level, ``sample`` = x ~ p(x | z).

        The autoregressive decoder only samples. The Gaussian decoder's mean and mode are mu_theta(z).
        """
        zin = self._z_in(z, y)
        cfg = self.cfg
        if cfg.decoder == "autoregressive":
            return data.to_unit(self.decoder.sample(zin, generator), cfg.levels)
        if cfg.decoder == "gaussian":
            mean = self.decoder(zin)
            if mode == "sample":
                noise = torch.randn(mean.shape, generator=generator).to(mean.device)
                mean = mean + self.log_sigma.exp() * noise
            return mean.clamp(0, 1)
        logits = self.decoder(zin).view(len(z), cfg.levels, cfg.channels, cfg.size, cfg.size)  # (B, K, C, S, S)
        if mode == "mean":
            return data.categorical_mean(logits)
        probs = logits.float().softmax(1)
        if mode == "mode":
            return probs.argmax(1).float() / (cfg.levels - 1)
        flat = probs.permute(0, 2, 3, 4, 1).reshape(-1, cfg.levels)  # (B*C*S*S, K)
        x_int = torch.multinomial(flat.cpu(), 1, generator=generator).view(len(z), cfg.channels, cfg.size, cfg.size)
        return x_int.float().to(z.device) / (cfg.levels - 1)

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None, mode: str = "mean", generator: torch.Generator | None = None):
        """Decode z ~ p(z) = N(0, I): n images in [0, 1]."""
        z = torch.randn(n, self.cfg.latent_dim, generator=generator).to(next(self.parameters()).device)
        return self.decode(z, y, mode, generator)


def _unpack(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    return batch if isinstance(batch, (tuple, list)) else (batch, None)


def vae_loss(model: nn.Module, batch, beta: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """-E[log p(x | z)] + beta KL (survey eq. 16; beta = 1 is the negative ELBO, eq. 12). ``batch``: x_int or (x_int, y)."""
    x_int, y = _unpack(batch)
    log_px_z, kl = model.elbo_terms(x_int, y)
    loss = (-log_px_z + beta * kl).mean()
    return loss, {"rec": -log_px_z.mean().item(), "kl": kl.mean().item()}


class CapacityLoss:
    """-E[log p(x | z)] + gamma |KL - C_t| with C_t rising linearly from 0 to c_max over ``steps`` (survey eq. 17; Burgess et al. 2018).

    A callable for ``fit``; it counts its own calls to know the step t.
    """

    def __init__(self, c_max: float, steps: int, gamma: float = 10.0):
        self.c_max, self.steps, self.gamma, self.t = c_max, steps, gamma, 0

    def capacity(self) -> float:
        return self.c_max * min(1.0, self.t / self.steps)

    def __call__(self, model: VAE, batch) -> tuple[torch.Tensor, dict[str, float]]:
        x_int, y = _unpack(batch)
        log_px_z, kl = model.elbo_terms(x_int, y)
        c = self.capacity()
        self.t += 1
        loss = (-log_px_z + self.gamma * (kl - c).abs()).mean()
        return loss, {"rec": -log_px_z.mean().item(), "kl": kl.mean().item(), "capacity": c}


@torch.no_grad()
def negative_elbo(
    model: nn.Module, x_int: torch.Tensor, y: torch.Tensor | None = None, samples: int = 10, batch: int = 512
) -> torch.Tensor:
    """-ELBO per image (B,), averaging ``samples`` draws of z; an upper bound on -log p(x) in nats.

    Works for any model with an ``elbo_terms(x_int, y)`` method (:class:`VAE`, the hierarchical VAE, DRAW).
    """
    out = []
    for i in range(0, len(x_int), batch):
        xb, yb = x_int[i : i + batch], None if y is None else y[i : i + batch]
        est = torch.stack([k - r for r, k in (model.elbo_terms(xb, yb) for _ in range(samples))]).mean(0)
        out.append(est)
    return torch.cat(out)


@torch.no_grad()
def iwae_bound(model: VAE, x_int: torch.Tensor, k: int, y: torch.Tensor | None = None, chunk: int = 256) -> torch.Tensor:
    """-L_K per image (B,): L_K = E[log (1/K) sum_k p(x, z_k) / q(z_k | x)] (survey eq. 24-25; Burda et al. 2016).

    L_1 is the ELBO and L_K rises towards log p(x) with K. Images are processed one at a time
    with their K samples in chunks, so memory stays flat for any K.
    """
    x_unit = data.to_unit(x_int, model.cfg.levels)
    mu, logvar = model.encode(x_unit, y)
    out = torch.empty(len(x_int), device=x_int.device)
    for i in range(len(x_int)):
        log_w = []
        for start in range(0, k, chunk):
            n = min(chunk, k - start)
            m, lv = mu[i].expand(n, -1), logvar[i].expand(n, -1)  # (n, d)
            z = reparameterize(m, lv)
            yi = None if y is None else y[i].expand(n)
            log_p = model.log_px_z(x_int[i].expand(n, *x_int.shape[1:]), z, yi) + gaussian_log_density(
                z, torch.zeros_like(z), torch.zeros_like(z)
            )
            log_w.append(log_p - gaussian_log_density(z, m, lv))  # (n,) log w_k, eq. 24
        out[i] = -(torch.logsumexp(torch.cat(log_w), 0) - math.log(k))
    return out


@torch.no_grad()
def active_units(model: VAE, x_int: torch.Tensor, threshold: float = 0.01, y: torch.Tensor | None = None) -> tuple[int, torch.Tensor]:
    """Latent dimensions whose posterior mean varies with x: Cov_x(E_q[z_i]) > threshold (Burda et al. 2016).

    Returns the count and the per-dimension KL averaged over the data, (d,).
    """
    mu, logvar = model.encode(data.to_unit(x_int, model.cfg.levels), y)
    kl_per_unit = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).mean(0)
    return int((mu.var(0) > threshold).sum()), kl_per_unit

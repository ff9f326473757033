"""A hierarchical VAE with L latent groups, top-down (chapter 2, "Hierarchical VAEs"; survey eq. 29-31).

| name in code | symbol |
| ------------ | ------ |
| ``z[l]``     | the l-th latent group z_l, shape (B, d_l); l = 0 is the top group |
| ``c``        | the top-down context summarizing z_<l, shape (B, hidden) |
| ``h``        | bottom-up features of x, shape (B, hidden) |

Prior p(z) = prod_l p(z_l | z_<l) (eq. 29) and posterior q(z | x) = prod_l q(z_l | z_<l, x) (eq. 30)
share the top-down path, as in the ladder VAE, NVAE and VDVAE; the ELBO has one KL per group (eq. 31).
Train it with ``fit(..., skip_grad_norm=...)`` for VDVAE's gradient skipping.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genbook import data, metrics
from genbook.nets import MLP, ConvDecoder, ConvEncoder
from genbook.vae import gaussian_kl_between, reparameterize


@dataclass
class HVAEConfig:
    latent_dims: tuple[int, ...] = (8, 8)  # d_1 (top) ... d_L
    channels: int = 1
    size: int = 8
    width: int = 32
    hidden: int = 64
    levels: int = data.DIGIT_LEVELS


class HierarchicalVAE(nn.Module):
    """x -> h (bottom-up); then for each group, top-down: prior from c, posterior from (h, c), c <- c + f(c, z_l); x ~ p(x | c).

    p(z_1) is N(0, I); the lower priors' heads start at zero, so they too start as N(0, I). The categorical decoder reads
    the final context. Shapes: x_int (B, C, S, S) -> per-image log p(x | z) and KLs, (B,).
    """

    def __init__(self, cfg: HVAEConfig):
        super().__init__()
        if len(cfg.latent_dims) < 2:
            raise ValueError("a hierarchical VAE needs at least two latent groups")
        self.cfg = cfg
        hid = cfg.hidden
        self.encoder = ConvEncoder(cfg.channels, hid, cfg.size, cfg.width)
        # p(z_1) = N(0, I) has no parameters; groups 2..L get a prior head on the context (zero at init)
        self.priors = nn.ModuleList(MLP(hid, 2 * d, (hid,), zero_last=True) for d in cfg.latent_dims[1:])
        self.posteriors = nn.ModuleList(MLP(2 * hid, 2 * d, (hid,)) for d in cfg.latent_dims)
        self.updates = nn.ModuleList(MLP(hid + d, hid, (hid,)) for d in cfg.latent_dims)
        self.decoder = ConvDecoder(hid, cfg.levels * cfg.channels, cfg.size, cfg.width)

    def _prior(self, level: int, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if level == 0:  # p(z_1) = N(0, I), eq. 29's first factor
            zeros = c.new_zeros(len(c), self.cfg.latent_dims[0])
            return zeros, zeros
        mu, logvar = self.priors[level - 1](c).chunk(2, -1)
        return mu, logvar.clamp(-12, 8)

    def _logits(self, c: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        return self.decoder(c).view(len(c), cfg.levels, cfg.channels, cfg.size, cfg.size)  # (B, K, C, S, S)

    def group_terms(self, x_int: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """log p(x | z) (B,) and the list of per-group KL(q(z_l | z_<l, x) || p(z_l | z_<l)), each (B,) (eq. 31)."""
        h = self.encoder(data.to_unit(x_int, self.cfg.levels))
        c = torch.zeros_like(h)
        kls = []
        for level in range(len(self.cfg.latent_dims)):
            mu_p, logvar_p = self._prior(level, c)
            mu_q, logvar_q = self.posteriors[level](torch.cat([h, c], -1)).chunk(2, -1)
            logvar_q = logvar_q.clamp(-12, 8)
            z = reparameterize(mu_q, logvar_q)
            kls.append(gaussian_kl_between(mu_q, logvar_q, mu_p, logvar_p))
            c = c + self.updates[level](torch.cat([c, z], -1))  # the context now summarizes z_<=l
        return -metrics.categorical_nll(self._logits(F.silu(c)), x_int), kls

    def elbo_terms(self, x_int: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(x | z) and the summed KL, each (B,), the interface of :func:`genbook.vae.negative_elbo`."""
        if y is not None:
            raise ValueError("this hierarchical VAE is unconditional")
        log_px_z, kls = self.group_terms(x_int)
        return log_px_z, torch.stack(kls).sum(0)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Ancestral sampling z_1 ~ p(z_1), z_2 ~ p(z_2 | z_1), ...; returns E[x | z] in [0, 1], (n, C, S, S)."""
        device = next(self.parameters()).device
        c = torch.zeros(n, self.cfg.hidden, device=device)
        for level, d in enumerate(self.cfg.latent_dims):
            mu, logvar = self._prior(level, c)
            eps = torch.randn(n, d, generator=generator).to(device)
            c = c + self.updates[level](torch.cat([c, reparameterize(mu, logvar, eps)], -1))
        return data.categorical_mean(self._logits(F.silu(c)))


def hvae_loss(model: HierarchicalVAE, x_int: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """The negative ELBO of eq. 31 with one KL per group, for ``fit``; logs each group's KL."""
    log_px_z, kls = model.group_terms(x_int)
    loss = (-log_px_z + torch.stack(kls).sum(0)).mean()
    return loss, {"rec": -log_px_z.mean().item(), **{f"kl{i + 1}": kl.mean().item() for i, kl in enumerate(kls)}}

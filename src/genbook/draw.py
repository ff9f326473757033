"""DRAW (chapter 2; survey 2.6.1, Gregor et al. 2015): a recurrent VAE that writes its image on a canvas in T steps.

| name in code | symbol |
| ------------ | ------ |
| ``steps``    | T, the number of glimpses and writes |
| ``canvas``   | c_t, logits of p(x | z_1..t) for every pixel and level, shape (B, K * C * S * S) |
| ``x_hat``    | x - mean(c_{t-1}), the error image the encoder reads beside x |
| ``h_enc``, ``h_dec`` | the encoder's and decoder's LSTM states |
| ``z``        | z_t ~ q(z_t | x, z_<t) = N(mu_t, diag(sigma_t^2)); the prior is N(0, I) at every step |

One step, without attention (read and write see the whole image, Gregor et al.'s section 3.1):

    x_hat_t = x - mean(c_{t-1})
    h_enc_t = LSTM_enc(h_enc_{t-1}, [x, x_hat_t, h_dec_{t-1}])
    z_t     ~ q(z_t | h_enc_t)
    h_dec_t = LSTM_dec(h_dec_{t-1}, z_t)
    c_t     = c_{t-1} + write(h_dec_t)

Both LSTMs start from zero states; the first canvas c_0 is learned.

The loss is -log p(x | c_T) + sum_t KL(q(z_t | ...) || N(0, I)), a negative ELBO with T * d latent numbers in all.
Pixels are categorical over K levels, as in :class:`genbook.vae.VAE`, so the bound is in nats per image and
compares with the chapter's other models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from genbook import data, metrics
from genbook.vae import gaussian_kl, reparameterize


@dataclass
class DRAWConfig:
    steps: int = 8  # T
    latent_dim: int = 2  # per step: T * latent_dim numbers in all
    hidden: int = 128  # each LSTM's state
    channels: int = 1
    size: int = 8
    levels: int = data.DIGIT_LEVELS


class DRAW(nn.Module):
    """A DRAW network without attention; ``elbo_terms`` makes it a drop-in for :func:`genbook.vae.vae_loss`."""

    def __init__(self, cfg: DRAWConfig):
        super().__init__()
        if cfg.steps < 1 or cfg.latent_dim < 1:
            raise ValueError(
                f"DRAW needs at least one step and one latent number per step, got steps={cfg.steps}, latent_dim={cfg.latent_dim}"
            )
        self.cfg = cfg
        n = cfg.channels * cfg.size * cfg.size
        self.encoder = nn.LSTMCell(2 * n + cfg.hidden, cfg.hidden)
        self.to_q = nn.Linear(cfg.hidden, 2 * cfg.latent_dim)
        self.decoder = nn.LSTMCell(cfg.latent_dim, cfg.hidden)
        self.write = nn.Linear(cfg.hidden, cfg.levels * n)
        self.canvas0 = nn.Parameter(torch.zeros(cfg.levels * n))  # c_0, learned

    def mean_image(self, canvas: torch.Tensor) -> torch.Tensor:
        """E[x / (K - 1)] under the canvas's categorical pixels, (B, C * S * S) in [0, 1]."""
        return data.categorical_mean(canvas.view(len(canvas), self.cfg.levels, -1))

    def _zeros(self, b: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(b, self.cfg.hidden, device=device), torch.zeros(b, self.cfg.hidden, device=device)

    def _write(self, z: torch.Tensor, dec: tuple[torch.Tensor, torch.Tensor], canvas: torch.Tensor):
        """The decoder's half of a step: h_dec_t = LSTM_dec(h_dec_{t-1}, z_t), c_t = c_{t-1} + write(h_dec_t)."""
        dec = self.decoder(z, dec)
        return dec, canvas + self.write(dec[0])

    def run(self, x_int: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """The T steps on images x_int: (final canvas, KL per step (B, T), canvases c_0..c_T)."""
        cfg, b = self.cfg, x_int.shape[0]
        x = data.to_unit(x_int, cfg.levels).flatten(1)
        enc, dec = self._zeros(b, x.device), self._zeros(b, x.device)
        canvas = self.canvas0.expand(b, -1)
        canvases, kls = [canvas], []
        for _ in range(cfg.steps):
            x_hat = x - self.mean_image(canvas)
            enc = self.encoder(torch.cat([x, x_hat, dec[0]], 1), enc)
            mu, logvar = self.to_q(enc[0]).chunk(2, -1)
            logvar = logvar.clamp(-12, 8)
            kls.append(gaussian_kl(mu, logvar))
            dec, canvas = self._write(reparameterize(mu, logvar), dec, canvas)
            canvases.append(canvas)
        return canvas, torch.stack(kls, 1), canvases

    def log_px(self, x_int: torch.Tensor, canvas: torch.Tensor) -> torch.Tensor:
        """log p(x | c_T) in nats per image, (B,)."""
        cfg = self.cfg
        logits = canvas.view(len(canvas), cfg.levels, cfg.channels, cfg.size, cfg.size)
        return -metrics.categorical_nll(logits, x_int)

    def elbo_terms(self, x_int: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One-sample estimates of log p(x | z_1..T) and sum_t KL_t, each (B,): ELBO = first - second."""
        if y is not None:
            raise ValueError("this DRAW network is unconditional: pass no labels")
        canvas, kl, _ = self.run(x_int)
        return self.log_px(x_int, canvas), kl.sum(1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw n images with z_t ~ N(0, I): the mean image of every canvas c_0..c_T, (T + 1, n, C, S, S) in [0, 1]."""
        cfg = self.cfg
        device = self.canvas0.device
        z = torch.randn(cfg.steps, n, cfg.latent_dim, generator=generator).to(device)
        dec = self._zeros(n, device)
        canvas = self.canvas0.expand(n, -1)
        means = [self.mean_image(canvas)]
        for t in range(cfg.steps):
            dec, canvas = self._write(z[t], dec, canvas)
            means.append(self.mean_image(canvas))
        return torch.stack(means).view(cfg.steps + 1, n, cfg.channels, cfg.size, cfg.size)

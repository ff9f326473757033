"""Video GANs of chapter 11: VGAN's two-stream generator (survey eq. 113-114) and MoCoGAN's content/motion split
(eq. 116-119), with a 3-D convolutional video discriminator and one training loop for both.

| name in code | symbol |
| ------------ | ------ |
| ``video``    | a clip (B, T, C, H, W) in [-1, 1] (the GANs' scale; ``(video + 1) / 2`` is the data's [0, 1]) |
| ``f``, ``m``, ``b`` | VGAN's foreground video, mask video and static background image: G(z) = m f + (1 - m) b |
| ``z_c``      | MoCoGAN's content code, one per clip |
| ``z_m``      | MoCoGAN's motion codes z_m^(1..T), from a recurrent network driven by fresh noise eps^(t) |
| ``D_V``, ``D_I`` | the video discriminator (whole clips) and the image discriminator (single frames) |
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from genbook.gan import GANHistory, d_loss, g_loss_nonsaturating
from genbook.nets import DCGANDiscriminator, DCGANGenerator
from genbook.runtime import training_loop


@dataclass
class VideoGANConfig:
    frames: int = 8
    size: int = 16
    channels: int = 3
    width: int = 32
    z_dim: int = 64  # VGAN's noise; MoCoGAN splits it into content_dim + motion_dim
    content_dim: int = 48
    motion_dim: int = 16


def _check(cfg: VideoGANConfig) -> None:
    if cfg.frames % 4 or cfg.size % 4:
        raise ValueError(f"frames ({cfg.frames}) and size ({cfg.size}) must be multiples of 4 (two 2x upsamplings)")


class TwoStreamGenerator(nn.Module):
    """VGAN (Vondrick et al. 2016): a 3-D stream draws a foreground video f and a mask m, a 2-D stream a static
    background b, and G(z) = m(z) * f(z) + (1 - m(z)) * b(z) (survey eq. 113). Chapter 11, "Two streams".
    Shapes: z (B, z_dim) -> video (B, T, C, H, W); ``parts`` also returns f (B, T, C, H, W), m (B, T, 1, H, W),
    b (B, C, H, W)."""

    def __init__(self, cfg: VideoGANConfig):
        super().__init__()
        _check(cfg)
        self.cfg = cfg
        w, t4, s4 = cfg.width, cfg.frames // 4, cfg.size // 4
        self.fg_in = nn.Linear(cfg.z_dim, 2 * w * t4 * s4 * s4)
        self.fg = nn.Sequential(
            nn.BatchNorm3d(2 * w), nn.ReLU(),
            nn.ConvTranspose3d(2 * w, w, 4, 2, 1), nn.BatchNorm3d(w), nn.ReLU(),  # (T/4, S/4) -> (T/2, S/2)
            nn.ConvTranspose3d(w, cfg.channels + 1, 4, 2, 1),  # -> (T, S): C foreground channels + 1 mask channel
        )  # fmt: skip
        self.bg_in = nn.Linear(cfg.z_dim, 2 * w * s4 * s4)
        self.bg = nn.Sequential(
            nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.BatchNorm2d(w), nn.ReLU(),
            nn.ConvTranspose2d(w, cfg.channels, 4, 2, 1),
        )  # fmt: skip

    def parts(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c, w, t4, s4 = self.cfg.channels, self.cfg.width, self.cfg.frames // 4, self.cfg.size // 4
        out = self.fg(self.fg_in(z).view(-1, 2 * w, t4, s4, s4)).permute(0, 2, 1, 3, 4)  # (B, C + 1, T, H, W) -> (B, T, C + 1, H, W)
        f, m = torch.tanh(out[:, :, :c]), torch.sigmoid(out[:, :, c:])
        b = torch.tanh(self.bg(self.bg_in(z).view(-1, 2 * w, s4, s4)))  # (B, C, H, W)
        return f, m, b

    @staticmethod
    def compose(f: torch.Tensor, m: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Survey eq. 113: m * f + (1 - m) * b, the background broadcast over time. -> (B, T, C, H, W)."""
        return m * f + (1 - m) * b[:, None]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.compose(*self.parts(z))


def mask_l1(m: torch.Tensor) -> torch.Tensor:
    """||m||_1 per element, batch mean: the sparsity term lambda E||m(z)||_1 of survey eq. 114 without lambda. It
    pushes the generator to explain the static scene with the background and use the mask only for what moves."""
    return m.mean()  # m = sigmoid(...) >= 0, so ||m||_1 is its sum


class MotionRNN(nn.Module):
    """z_m^(t) = h_t, h_t = GRU(eps^(t), h_{t-1}): MoCoGAN's motion trajectory through the latent space.
    Shapes: eps (B, T, motion_dim), h0 (B, motion_dim) -> (B, T, motion_dim)."""

    def __init__(self, dim: int):
        super().__init__()
        self.gru = nn.GRU(dim, dim, batch_first=True)

    def forward(self, eps: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        return self.gru(eps, h0[None])[0]  # all hidden states h_1..h_T, (B, T, dim)


class ContentMotionGenerator(nn.Module):
    """MoCoGAN (Tulyakov et al. 2018): frame t = G_I([z_c, z_m^(t)]) with one content code z_c per clip and motion
    codes from :class:`MotionRNN` (survey eq. 116-117); G_I is an image generator. Chapter 11, "Content and motion".
    Shapes: z_c (B, content_dim), eps (B, T, motion_dim), h0 (B, motion_dim) -> video (B, T, C, H, W)."""

    def __init__(self, cfg: VideoGANConfig):
        super().__init__()
        self.cfg = cfg
        self.motion = MotionRNN(cfg.motion_dim)
        self.image = DCGANGenerator(cfg.content_dim + cfg.motion_dim, cfg.channels, cfg.size, cfg.width)

    def forward(self, z_c: torch.Tensor, eps: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        b, t = eps.shape[:2]
        z_m = self.motion(eps, h0)  # (B, T, motion_dim)
        z = torch.cat([z_c[:, None].expand(-1, t, -1), z_m], -1).reshape(b * t, -1)  # (B*T, content + motion)
        return self.image(z).view(b, t, self.cfg.channels, self.cfg.size, self.cfg.size)

    def draw(self, n: int, generator: torch.Generator | None = None, z_c: torch.Tensor | None = None) -> torch.Tensor:
        """n clips; pass ``z_c`` (n, content_dim) to keep the content and draw only new motion."""
        device = next(self.parameters()).device
        if z_c is None:
            z_c = torch.randn(n, self.cfg.content_dim, generator=generator).to(device)
        eps = torch.randn(n, self.cfg.frames, self.cfg.motion_dim, generator=generator).to(device)
        h0 = torch.randn(n, self.cfg.motion_dim, generator=generator).to(device)
        return self(z_c, eps, h0)


class VideoDiscriminator(nn.Module):
    """D_V: 3-D convolutions over (time, height, width), halving each twice, then a linear logit.
    Shapes: video (B, T, C, H, W) -> (B,)."""

    def __init__(self, cfg: VideoGANConfig):
        super().__init__()
        _check(cfg)
        w = cfg.width
        self.net = nn.Sequential(
            nn.Conv3d(cfg.channels, w, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv3d(w, 2 * w, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Flatten(), nn.Linear(2 * w * (cfg.frames // 4) * (cfg.size // 4) ** 2, 1),
        )  # fmt: skip

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.net(video.permute(0, 2, 1, 3, 4)).squeeze(-1)  # (B, T, C, H, W) -> (B, C, T, H, W)


def image_discriminator(cfg: VideoGANConfig) -> nn.Module:
    """D_I: MoCoGAN's per-frame discriminator, a DCGAN discriminator on single frames (B, C, H, W) -> (B, 1)."""
    return DCGANDiscriminator(cfg.channels, cfg.size, cfg.width)


def train_video_gan(
    draw: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    g_params,
    d_video: nn.Module,
    batches,
    steps: int,
    d_image: nn.Module | None = None,
    lr: float = 2e-4,
    betas: tuple[float, float] = (0.5, 0.999),
    seed: int = 0,
) -> GANHistory:
    """Alternate one discriminator step and one generator step with the non-saturating loss (survey Box 3).

    ``draw(n)`` returns n generated clips and an extra generator loss (VGAN's lambda ||m||_1, or 0). With an image
    discriminator ``d_image``, one random frame per clip is judged by D_I as well: MoCoGAN's objective
    F_V(D_I, D_V, G_I, R_M) (survey eq. 118-119), the sum of the two GAN losses. ``batches`` yields real clips
    (B, T, C, H, W) in [-1, 1]. Chapter 11.
    """
    params_d = list(d_video.parameters()) + (list(d_image.parameters()) if d_image is not None else [])
    opt_g = torch.optim.Adam(g_params, lr=lr, betas=betas)
    opt_d = torch.optim.Adam(params_d, lr=lr, betas=betas)
    g = torch.Generator().manual_seed(seed)
    hist, start = GANHistory(), time.perf_counter()

    def frames(video: torch.Tensor) -> torch.Tensor:  # one random frame per clip, for D_I
        pick = torch.randint(0, video.shape[1], (video.shape[0],), generator=g).to(video.device)
        return video[torch.arange(video.shape[0], device=video.device), pick]  # (B, C, H, W)

    def logits(video: torch.Tensor) -> list[torch.Tensor]:
        out = [d_video(video)]
        if d_image is not None:
            out.append(d_image(frames(video)).squeeze(-1))
        return out

    run = training_loop(steps, "video GAN")  # smoke mode (GENBOOK_SMOKE=1) cuts it to a few steps and measures one
    try:
        for i in range(run.steps):
            run.begin(i)
            real = next(batches)
            fake, extra = draw(len(real))  # one generator pass serves both updates
            ld = sum(d_loss(r, f) for r, f in zip(logits(real), logits(fake.detach())))
            opt_d.zero_grad(set_to_none=True)
            ld.backward()
            opt_d.step()
            lg = sum(g_loss_nonsaturating(f) for f in logits(fake)) + extra  # judged by the updated discriminators
            opt_g.zero_grad(set_to_none=True)
            lg.backward()
            opt_g.step()
            hist.d_loss.append(ld.item())
            hist.g_loss.append(lg.item())
            run.end(i)
    finally:
        run.close()
    hist.seconds = time.perf_counter() - start
    return hist


__all__ = [
    "ContentMotionGenerator",
    "MotionRNN",
    "TwoStreamGenerator",
    "VideoDiscriminator",
    "VideoGANConfig",
    "image_discriminator",
    "mask_l1",
    "train_video_gan",
]

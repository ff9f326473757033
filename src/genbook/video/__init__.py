"""Video generation (chapter 11): coherence measured on tracked sprites, VGAN's two streams, MoCoGAN's content and
motion, VideoGPT's 3-D VQ-VAE and code prior, and a factorized space-time diffusion denoiser inflated from an image
model. The clips themselves come from :func:`genbook.data.moving_sprites`."""

from genbook.video.coherence import (
    BACKGROUND,
    acceleration,
    incoherence,
    moves_like_data,
    shuffle_frames,
    speed,
    sprite_colour,
    summary,
    track,
)
from genbook.video.denoiser import TemporalAttention, VideoUNet, block_levels, inflate
from genbook.video.gans import (
    ContentMotionGenerator,
    MotionRNN,
    TwoStreamGenerator,
    VideoDiscriminator,
    VideoGANConfig,
    image_discriminator,
    mask_l1,
    train_video_gan,
)
from genbook.video.vq3d import VQVAE3D, VQVAE3DConfig, video_prior, vq3d_loss

__all__ = [
    "BACKGROUND",
    "ContentMotionGenerator",
    "MotionRNN",
    "TemporalAttention",
    "TwoStreamGenerator",
    "VQVAE3D",
    "VQVAE3DConfig",
    "VideoDiscriminator",
    "VideoGANConfig",
    "VideoUNet",
    "acceleration",
    "block_levels",
    "image_discriminator",
    "incoherence",
    "inflate",
    "mask_l1",
    "moves_like_data",
    "shuffle_frames",
    "speed",
    "sprite_colour",
    "summary",
    "track",
    "train_video_gan",
    "video_prior",
    "vq3d_loss",
]

"""Building blocks shared by the model families. Networks here know nothing about losses or noise schedules."""

from genbook.nets.blocks import MinibatchStd, ResBlock, SelfAttention2d
from genbook.nets.conv import ConvDecoder, ConvEncoder
from genbook.nets.dcgan import DCGANDiscriminator, DCGANGenerator
from genbook.nets.denoisers import MLPDenoiser, NoisyClassifier
from genbook.nets.dit import DiT, DiTConfig
from genbook.nets.embeddings import LabelEmbedding, SinusoidalEmbedding
from genbook.nets.masked import MaskedConv2d, causal_mask
from genbook.nets.mlp import MLP
from genbook.nets.transformer import TinyTransformer, TransformerBlock
from genbook.nets.unet import UNet, UNetConfig

__all__ = [
    "MLP",
    "ConvDecoder",
    "ConvEncoder",
    "DCGANDiscriminator",
    "DCGANGenerator",
    "DiT",
    "DiTConfig",
    "LabelEmbedding",
    "MLPDenoiser",
    "MaskedConv2d",
    "MinibatchStd",
    "NoisyClassifier",
    "ResBlock",
    "SelfAttention2d",
    "SinusoidalEmbedding",
    "TinyTransformer",
    "TransformerBlock",
    "UNet",
    "UNetConfig",
    "causal_mask",
]


def count_parameters(module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)

"""Tests for genbook.nets: output shapes, causality, embeddings and input validation."""

import math

import pytest
import torch
from torch import nn

from genbook.nets import (
    MLP,
    ConvDecoder,
    ConvEncoder,
    DCGANDiscriminator,
    DCGANGenerator,
    LabelEmbedding,
    MaskedConv2d,
    ResBlock,
    SelfAttention2d,
    SinusoidalEmbedding,
    TinyTransformer,
    TransformerBlock,
    UNet,
    UNetConfig,
    causal_mask,
    count_parameters,
)
from genbook.nets.transformer import TinyTransformerConfig


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ----------------------------------------------------------------------------- MLP


def test_mlp_shape():
    """MLP maps (B, in_dim) to (B, out_dim) with one Linear per hidden layer plus one."""
    mlp = MLP(3, 5, hidden=(16, 16, 16))
    assert mlp(torch.randn(7, 3)).shape == (7, 5)
    assert sum(isinstance(m, nn.Linear) for m in mlp.modules()) == 4


def test_mlp_zero_last_outputs_zeros():
    """With zero_last=True the initial MLP outputs exactly zero."""
    mlp = MLP(2, 4, zero_last=True)
    assert torch.equal(mlp(torch.randn(10, 2)), torch.zeros(10, 4))


def test_count_parameters():
    """count_parameters counts trainable weights and biases only."""
    net = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    net[1].requires_grad_(False)
    assert count_parameters(net) == 3 * 2 + 2


# ----------------------------------------------------------------------------- UNet


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [8, 16])
@pytest.mark.parametrize("num_classes", [None, 10])
def test_unet_output_shape(channels, size, num_classes):
    """UNet returns a tensor shaped like x, conditional or not, for 1 or 3 channels at 8x8 and 16x16."""
    net = UNet(UNetConfig(in_channels=channels, width=16, num_classes=num_classes))
    x = torch.randn(2, channels, size, size)
    y = torch.tensor([3, -1]) if num_classes else None
    assert net(x, torch.rand(2), y).shape == x.shape


def test_unet_out_channels_and_scalar_time():
    """out_channels overrides the output channel count, and a scalar t is broadcast over the batch."""
    net = UNet(UNetConfig(in_channels=1, out_channels=2, width=16, mults=(1, 2, 2)))
    x = torch.randn(3, 1, 8, 8)
    out = net(x, torch.tensor(0.5))
    assert out.shape == (3, 2, 8, 8)
    torch.testing.assert_close(out, net(x, torch.full((3,), 0.5)))


def test_unet_label_conditioning():
    """The class label changes the output, and y=None means the null label -1."""
    net = UNet(UNetConfig(width=16, num_classes=10))
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    null = net(x, t, torch.tensor([-1, -1]))
    torch.testing.assert_close(net(x, t), null)
    assert not torch.allclose(net(x, t, torch.tensor([1, 2])), null)


def test_unet_rejects_indivisible_size():
    """An image size not divisible by 2^(levels-1) raises ValueError."""
    net = UNet(UNetConfig(width=16))
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(1, 1, 7, 7), torch.rand(1))


def test_resblock_and_attention_shapes():
    """ResBlock maps (B, C_in, H, W) to (B, C_out, H, W) and requires emb when built with one; attention keeps the shape."""
    block = ResBlock(4, 8, emb_dim=6)
    x = torch.randn(2, 4, 5, 5)
    assert block(x, torch.randn(2, 6)).shape == (2, 8, 5, 5)
    with pytest.raises(ValueError, match="emb"):
        block(x)
    assert SelfAttention2d(8, heads=4)(torch.randn(2, 8, 3, 3)).shape == (2, 8, 3, 3)
    with pytest.raises(ValueError, match="divisible"):
        SelfAttention2d(6, heads=4)


# ----------------------------------------------------------------------------- transformer


def _small_transformer(causal, **kw):
    return TinyTransformer(TinyTransformerConfig(vocab_size=5, seq_len=10, dim=16, depth=2, heads=4, causal=causal, **kw))


def test_tiny_transformer_shape():
    """TinyTransformer maps tokens (B, T) to logits (B, T, V), also with a class label and T < seq_len."""
    net = _small_transformer(causal=True, num_classes=3)
    tokens = torch.randint(0, 6, (4, 7))  # 6 = vocab 5 + one extra (start) token
    assert net(tokens).shape == (4, 7, 5)
    assert net(tokens, torch.tensor([0, 1, 2, 0])).shape == (4, 7, 5)


def test_tiny_transformer_rejects_long_sequences():
    """A sequence longer than seq_len raises ValueError."""
    with pytest.raises(ValueError, match="seq_len"):
        _small_transformer(causal=True)(torch.zeros(1, 11, dtype=torch.long))


def _input_jacobian_mask(net, seq_len=8):
    """mask[i, j] = whether output position i depends on the embedding at input position j (by autograd)."""
    leaf = {}

    def replace_with_leaf(module, args, output):
        leaf["h"] = output.detach().requires_grad_(True)
        return leaf["h"]

    handle = net.tok.register_forward_hook(replace_with_leaf)
    try:
        logits = net(torch.randint(0, 5, (1, seq_len)))  # (1, T, V)
    finally:
        handle.remove()
    mask = torch.zeros(seq_len, seq_len, dtype=torch.bool)
    for i in range(seq_len):
        (grad,) = torch.autograd.grad(logits[0, i].sum(), leaf["h"], retain_graph=True)
        mask[i] = grad[0].abs().sum(-1) > 0  # (T,)
    return mask


def test_tiny_transformer_is_causal():
    """With causal=True, output i has zero gradient w.r.t. input embeddings at positions j > i, and nonzero for j <= i."""
    mask = _input_jacobian_mask(_small_transformer(causal=True).eval())
    lower = torch.tril(torch.ones(8, 8, dtype=torch.bool))
    assert torch.equal(mask, lower)


def test_tiny_transformer_bidirectional_sees_everything():
    """With causal=False every output depends on every input position (so the causality check can fail)."""
    mask = _input_jacobian_mask(_small_transformer(causal=False).eval())
    assert mask.all()


def test_transformer_block_checks_heads():
    """TransformerBlock refuses a width not divisible by the head count."""
    with pytest.raises(ValueError, match="divisible"):
        TransformerBlock(10, heads=4)


# ----------------------------------------------------------------------------- DCGAN


@pytest.mark.parametrize("size", [8, 16, 28, 32])
@pytest.mark.parametrize("upsample", ["transposed", "resize"])
def test_dcgan_shapes(size, upsample):
    """The generator maps z (B, z_dim) to (B, C, S, S) in [-1, 1]; the discriminator maps those to (B, out_dim)."""
    gen = DCGANGenerator(z_dim=8, channels=3, size=size, width=8, upsample=upsample)
    disc = DCGANDiscriminator(channels=3, size=size, width=8, out_dim=2)
    images = gen(torch.randn(2, 8))
    assert images.shape == (2, 3, size, size)
    assert images.min() >= -1 and images.max() <= 1
    assert disc(images).shape == (2, 2)
    assert disc.features(images).shape == (2, disc.feature_dim)


@pytest.mark.parametrize("norm", ["none", "batch", "layer"])
def test_dcgan_discriminator_norms(norm):
    """Each discriminator norm option builds and gives (B, 1) logits."""
    assert DCGANDiscriminator(size=16, width=8, norm=norm)(torch.randn(2, 1, 16, 16)).shape == (2, 1)


def test_dcgan_generator_rejects_bad_settings():
    """An unsupported size or upsample mode raises ValueError."""
    with pytest.raises(ValueError, match="sizes"):
        DCGANGenerator(size=12)
    with pytest.raises(ValueError, match="upsample mode"):
        DCGANGenerator(size=8, upsample="bilinear")


def test_dcgan_discriminator_rejects_unknown_norm():
    """An unknown discriminator norm raises ValueError, as an unknown generator upsample mode does."""
    with pytest.raises(ValueError):
        DCGANDiscriminator(size=8, norm="spectral")


# ----------------------------------------------------------------------------- conv encoder / decoder


def test_conv_encoder_decoder_shapes():
    """ConvEncoder maps (B, C, S, S) to (B, out_dim); ConvDecoder maps (B, in_dim) to (B, C_out, S, S)."""
    enc, dec = ConvEncoder(3, 6, size=16, width=8), ConvDecoder(6, 17, size=16, width=8)
    z = enc(torch.randn(2, 3, 16, 16))
    assert z.shape == (2, 6)
    assert dec(z).shape == (2, 17, 16, 16)


@pytest.mark.parametrize("shape", [(2, 1, 16, 16), (2, 3, 8, 8), (2, 1, 8, 9)])
def test_conv_encoder_rejects_wrong_shapes(shape):
    """ConvEncoder raises ValueError, naming the expected shape, for images of another shape."""
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\)"):
        ConvEncoder(1, 4, size=8)(torch.randn(*shape))


def test_conv_nets_reject_sizes_not_multiple_of_four():
    """Encoder and decoder refuse an image size that is not a multiple of 4."""
    with pytest.raises(ValueError, match="multiple of 4"):
        ConvEncoder(1, 4, size=10)
    with pytest.raises(ValueError, match="multiple of 4"):
        ConvDecoder(4, 1, size=10)


# ----------------------------------------------------------------------------- embeddings


def test_label_embedding_maps_negative_labels_to_null_row():
    """LabelEmbedding sends -1 (and any negative label) to the extra null row num_classes, others to their own rows."""
    emb = LabelEmbedding(10, 4)
    out = emb(torch.tensor([-1, -5, 0, 9]))
    table = emb.table.weight
    assert table.shape == (11, 4)
    torch.testing.assert_close(out, torch.stack([table[10], table[10], table[0], table[9]]))


def test_sinusoidal_features_match_formula():
    """features(t) = [cos(s t w_k), sin(s t w_k)], w_k = P^(-k/half), checked element by element."""
    dim, scale, period = 8, 1000.0, 10000.0
    emb = SinusoidalEmbedding(dim, scale=scale, max_period=period)
    ts = [0.0, 0.013, 0.5, 1.0]
    got = emb.features(torch.tensor(ts))
    half = dim // 2
    w = [period ** (-k / half) for k in range(half)]
    expected = [[math.cos(scale * t * w_k) for w_k in w] + [math.sin(scale * t * w_k) for w_k in w] for t in ts]
    torch.testing.assert_close(got, torch.tensor(expected), atol=1e-4, rtol=0)
    assert emb(torch.tensor(ts)).shape == (4, dim)


def test_sinusoidal_embedding_needs_even_dim():
    """An odd embedding width raises ValueError."""
    with pytest.raises(ValueError, match="even"):
        SinusoidalEmbedding(7)


# ----------------------------------------------------------------------------- masked convolutions


MASK_A3 = [
    [1, 1, 1],
    [1, 0, 0],
    [0, 0, 0],
]
MASK_B3 = [
    [1, 1, 1],
    [1, 1, 0],
    [0, 0, 0],
]
MASK_A5 = [
    [1, 1, 1, 1, 1],
    [1, 1, 1, 1, 1],
    [1, 1, 0, 0, 0],
    [0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0],
]
MASK_B5 = [
    [1, 1, 1, 1, 1],
    [1, 1, 1, 1, 1],
    [1, 1, 1, 0, 0],
    [0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0],
]


@pytest.mark.parametrize(("size", "mask_type", "expected"), [(3, "A", MASK_A3), (3, "B", MASK_B3), (5, "A", MASK_A5), (5, "B", MASK_B5)])
def test_causal_mask_matches_hand_written(size, mask_type, expected):
    """causal_mask(k, A/B) equals the hand-written 3x3 and 5x5 PixelCNN masks."""
    assert torch.equal(causal_mask(size, mask_type), torch.tensor(expected, dtype=torch.float32))


@pytest.mark.parametrize(("size", "mask_type"), [(4, "A"), (2, "B"), (3, "C"), (3, "a")])
def test_causal_mask_rejects_even_kernels_and_unknown_types(size, mask_type):
    """An even kernel size or a mask type other than 'A'/'B' raises ValueError."""
    with pytest.raises(ValueError):
        causal_mask(size, mask_type)


def _masked_conv_dependence(net, in_channels, size=6):
    """dep[i, j] = whether output pixel i (raster order) has a nonzero gradient w.r.t. input pixel j, one batch row per i."""
    n = size * size
    x = torch.randn(1, in_channels, size, size).repeat(n, 1, 1, 1).requires_grad_(True)
    out = net(x)  # (n, C_out, S, S)
    rows, cols = torch.arange(n) // size, torch.arange(n) % size
    out[torch.arange(n), :, rows, cols].sum().backward()  # row i reads only output pixel i
    return x.grad.abs().sum(1).view(n, n) > 0  # (n, n), summed over input channels


def _expected_dependence(mask, size=6):
    """The pixels a 'same'-padded convolution with kernel support ``mask`` lets output pixel i see, by loops."""
    c = len(mask) // 2
    n = size * size
    dep = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        r, q = divmod(i, size)
        for dr in range(-c, c + 1):
            for dq in range(-c, c + 1):
                if mask[dr + c][dq + c] and 0 <= r + dr < size and 0 <= q + dq < size:
                    dep[i, (r + dr) * size + q + dq] = True
    return dep


@pytest.mark.parametrize(("mask_type", "hand"), [("A", MASK_A5), ("B", MASK_B5)])
def test_masked_conv_is_causal(mask_type, hand):
    """Output i of MaskedConv2d depends exactly on the masked neighbourhood: never on j > i, and for mask A not on j = i."""
    conv = MaskedConv2d(2, 3, 5, mask_type)
    dep = _masked_conv_dependence(conv, in_channels=2)
    assert torch.equal(dep, _expected_dependence(hand))
    strictly_past = torch.tril(torch.ones_like(dep), diagonal=-1)
    allowed = strictly_past if mask_type == "A" else strictly_past | torch.eye(len(dep), dtype=torch.bool)
    assert not (dep & ~allowed).any()
    assert dep.diagonal().all() == (mask_type == "B")


def test_masked_conv_stack_stays_causal():
    """A mask-A layer followed by mask-B layers: output i depends on no input j >= i, but on more than one layer's reach."""
    net = nn.Sequential(MaskedConv2d(1, 4, 3, "A"), nn.SiLU(), MaskedConv2d(4, 4, 3, "B"), nn.SiLU(), MaskedConv2d(4, 2, 3, "B"))
    dep = _masked_conv_dependence(net, in_channels=1)
    assert not (dep & torch.triu(torch.ones_like(dep))).any()
    assert dep[3 * 6 + 3, 0 * 6 + 3]  # three rows up: seen only through the stack


def test_masked_conv_ignores_masked_weights():
    """Changing kernel weights under the mask's zeros leaves the output unchanged; the shape is kept ('same' padding)."""
    conv = MaskedConv2d(1, 2, 3, "A")
    x = torch.randn(2, 1, 5, 5)
    before = conv(x)
    assert before.shape == (2, 2, 5, 5)
    with torch.no_grad():
        conv.weight[:, :, 1, 1:] += 100.0  # the centre and right of the centre row
        conv.weight[:, :, 2, :] -= 100.0  # the row below
    torch.testing.assert_close(conv(x), before)
    assert "mask" not in conv.state_dict()  # rebuilt from the kernel size, not saved in checkpoints


# ----------------------------------------------------------------------------- DiT


def test_dit_shapes_zero_start_and_conditioning():
    from genbook.nets import DiT, DiTConfig

    torch.manual_seed(0)
    net = DiT(DiTConfig(in_channels=1, size=8, patch=2, dim=32, depth=2, heads=4, num_classes=10))
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([0, 10, 999]), torch.tensor([1, -1, 9])
    out = net(x, t, y)
    assert out.shape == x.shape
    assert out.abs().max() == 0  # adaLN-Zero and a zero output layer: the untrained model predicts 0
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = net(x, t, y)
    assert not torch.allclose(out, net(x, t, torch.tensor([2, -1, 9])))  # the label matters
    assert not torch.allclose(out, net(x, t + 100, y))  # so does the time
    with pytest.raises(ValueError, match="multiple"):
        DiT(DiTConfig(size=8, patch=3))


def test_dit_patches_are_tokens():
    """Changing one pixel changes the output in every patch (attention mixes tokens) and most in its own patch."""
    from genbook.nets import DiT, DiTConfig

    torch.manual_seed(0)
    net = DiT(DiTConfig(size=8, patch=4, dim=16, depth=1, heads=2))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(1, 1, 8, 8)
    x2 = x.clone()
    x2[0, 0, 1, 1] += 1.0  # a pixel in the top-left patch
    diff = (net(x2, torch.tensor([5])) - net(x, torch.tensor([5]))).abs()[0, 0]
    per_patch = diff.view(2, 4, 2, 4).sum((1, 3))  # (2, 2) patches
    assert (per_patch > 0).all() and per_patch.argmax() == 0


def test_noisy_classifier_and_mlp_denoiser_shapes_and_conditioning():
    from genbook.nets import MLPDenoiser, NoisyClassifier

    torch.manual_seed(0)
    clf = NoisyClassifier(1, 10, width=8)
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([0, 5, 50, 99])
    logits = clf(x, t)
    assert logits.shape == (4, 10)
    assert not torch.allclose(logits, clf(x, t + 30))  # the noise level is an input
    den = MLPDenoiser(8, (32,), num_classes=10)
    z, y = torch.randn(4, 8), torch.tensor([1, 2, -1, 3])
    out = den(z, t, y)
    assert out.shape == (4, 8)
    assert not torch.allclose(out, den(z, t, torch.tensor([2, 2, -1, 3])))
    assert torch.allclose(den(z, t, None), MLPDenoiser.forward(den, z, t, None))


def test_resblock_embedding_survives_per_channel_normalization():
    """With 8 channels group_norm has one channel per group; the embedding must still change the output."""
    torch.manual_seed(0)
    block = ResBlock(8, 8, emb_dim=4)
    x = torch.randn(2, 8, 4, 4)
    assert not torch.allclose(block(x, torch.zeros(2, 4)), block(x, torch.ones(2, 4)))

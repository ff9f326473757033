"""Video generation (chapter 11): the coherence measure, the video GANs, the 3-D VQ-VAE and the video denoiser."""

import math

import pytest
import torch

from genbook import data, video
from genbook.nets import UNet, UNetConfig
from genbook.nets.transformer import attend


@pytest.fixture(scope="module")
def clips():
    return data.moving_sprites(64, seed=0)


def test_tracking_recovers_the_ground_truth_trajectory(clips):
    tracks = video.track(clips.clips)
    assert tracks.shape == (64, 8, 2) and not torch.isnan(tracks).any()
    assert (tracks - clips.trajectory).norm(dim=-1).mean() < 0.6  # pixels: shapes are rasterized on a 16x16 grid
    empty = torch.full((1, 3, 3, 16, 16), video.BACKGROUND)
    assert torch.isnan(video.track(empty)).all()
    with pytest.raises(ValueError, match="N, T, C, H, W"):
        video.track(clips.clips[0])


def test_incoherence_separates_real_from_shuffled_and_empty_clips(clips):
    real = video.incoherence(clips.clips)
    shuffled = video.incoherence(video.shuffle_frames(clips.clips, torch.Generator().manual_seed(0)))
    assert real.mean() < 0.6 and shuffled.mean() > 5 * real.mean()
    vanished = clips.clips.clone()
    vanished[:, 2:6] = video.BACKGROUND  # the sprite disappears for four frames
    assert (video.incoherence(vanished) == 8.0).all()


def test_tracking_ignores_the_background_colour_and_rejects_textures(clips):
    recoloured = clips.clips.clone()
    recoloured[recoloured == recoloured.flatten(1).median(1).values[0]] = 0.5  # a grey background instead of 0.08
    torch.testing.assert_close(video.track(recoloured), video.track(clips.clips))
    noise = torch.rand(4, 8, 3, 16, 16, generator=torch.Generator().manual_seed(0))  # foreground everywhere
    assert torch.isnan(video.track(noise)).all()


def test_speed_matches_the_data_and_is_zero_for_a_still_sprite(clips):
    assert abs(video.speed(clips.clips).mean().item() - 1.5) < 0.15  # the data's sprites move 1.5 px per frame
    still = clips.clips[:, :1].expand_as(clips.clips)
    assert video.speed(still).abs().max() == 0 and video.incoherence(still).abs().max() == 0


def test_shuffle_frames_permutes_each_clip(clips):
    s = video.shuffle_frames(clips.clips[:4], torch.Generator().manual_seed(1))
    assert not torch.equal(s, clips.clips[:4])
    for i in range(4):  # the same frames, each exactly once
        match = (s[i].flatten(1)[:, None] == clips.clips[i].flatten(1)[None]).all(-1)  # (T, T)
        assert match.any(1).all() and match.any(0).all()


def test_two_stream_generator_composes_foreground_mask_and_background():
    torch.manual_seed(0)
    cfg = video.VideoGANConfig(width=8)
    g = video.TwoStreamGenerator(cfg).eval()
    z = torch.randn(3, cfg.z_dim)
    f, m, b = g.parts(z)
    assert f.shape == (3, 8, 3, 16, 16) and m.shape == (3, 8, 1, 16, 16) and b.shape == (3, 3, 16, 16)
    last = g.fg[-1]  # the layer that writes the C foreground channels and the mask channel
    with torch.no_grad():
        last.weight[:, 3:].zero_()
        last.bias[3:] = -30.0  # mask ~ 0: every frame must be the static background
    video_ = g(z)
    torch.testing.assert_close(video_, g.parts(z)[2][:, None].expand_as(video_), atol=1e-6, rtol=0)
    with torch.no_grad():
        last.bias[3:] = 30.0  # mask ~ 1: the foreground stream alone
    torch.testing.assert_close(g(z), g.parts(z)[0], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="multiples of 4"):
        video.TwoStreamGenerator(video.VideoGANConfig(frames=6))


def test_motion_codes_are_causal_and_content_stays_fixed():
    torch.manual_seed(0)
    cfg = video.VideoGANConfig(width=8)
    gen = video.ContentMotionGenerator(cfg).eval()
    eps = torch.randn(2, 8, cfg.motion_dim, requires_grad=True)
    z_m = gen.motion(eps, torch.zeros(2, cfg.motion_dim))
    (grad,) = torch.autograd.grad(z_m[:, 3].sum(), eps)
    assert grad[:, 4:].abs().max() == 0 and grad[:, :4].abs().max() > 0  # z_m^(3) depends on eps^(<=3) only
    eps, h0 = torch.randn(2, 8, cfg.motion_dim), torch.randn(2, cfg.motion_dim)
    z_c1, z_c2 = torch.randn(2, cfg.content_dim), torch.randn(2, cfg.content_dim)
    torch.testing.assert_close(gen(z_c1, eps, h0), gen(z_c1, eps, h0))  # content and motion determine the clip
    assert (gen(z_c1, eps, h0) - gen(z_c2, eps, h0)).abs().max() > 1e-3  # same motion, new content: a new clip
    assert (gen(z_c1, eps, h0) - gen(z_c1, -eps, h0)).abs().max() > 1e-3  # same content, new motion: a new clip
    assert gen.draw(2, torch.Generator().manual_seed(1), z_c=z_c1).shape == (2, 8, 3, 16, 16)


def test_video_gan_training_runs_and_discriminators_have_the_right_shapes(clips):
    torch.manual_seed(0)
    cfg = video.VideoGANConfig(width=8)
    gen, d_v, d_i = video.ContentMotionGenerator(cfg), video.VideoDiscriminator(cfg), video.image_discriminator(cfg)
    real = clips.clips * 2 - 1
    assert d_v(real[:5]).shape == (5,) and d_i(real[:5, 0]).shape == (5, 1)
    batches = data.Batches(real, batch_size=16)
    calls = []

    def draw(n):
        calls.append(n)
        return gen.draw(n), torch.zeros(())

    before = [p.clone() for p in gen.parameters()]
    hist = video.train_video_gan(draw, gen.parameters(), d_v, batches, steps=3, d_image=d_i)
    assert len(hist.d_loss) == 3 and all(math.isfinite(v) for v in hist.d_loss + hist.g_loss)
    assert calls == [16, 16, 16]  # one generator pass per step serves both updates
    assert all(not torch.equal(a, b) for a, b in zip(before, gen.parameters()))  # and the generator did learn


def test_vqvae3d_codes_decode_to_the_forward_reconstruction_and_feed_the_prior(clips):
    torch.manual_seed(0)
    model = video.VQVAE3D(video.VQVAE3DConfig(width=16, num_codes=32)).eval()
    rec, vq = model(clips.clips[:4])
    assert rec.shape == (4, 8, 3, 16, 16) and vq.codes.shape == (4, 4, 4, 4) and model.grid == (4, 4, 4)
    codes = model.encode_codes(clips.clips[:4])
    torch.testing.assert_close(model.decode_codes(codes), rec)
    model.train()
    before = model.quantizer.codebook.clone()
    model.encode_codes(clips.clips[:4])  # reading codes must not move the codebook, even in training mode
    assert torch.equal(before, model.quantizer.codebook)
    prior = video.video_prior(model, dim=16, depth=1)
    assert prior(codes).shape == (4, 64, 32)  # the code volume, flattened in (t, h, w) order
    assert prior.sample(2).view(2, *model.grid).shape == (2, 4, 4, 4)
    loss, logs = video.vq3d_loss(model, clips.clips[:4])
    assert loss.ndim == 0 and {"rec", "perplexity"} <= logs.keys()


def small_unet():
    torch.manual_seed(0)
    return UNet(UNetConfig(in_channels=3, width=16, time_scale=1.0)).eval()


def randomize_temporal(model):
    with torch.no_grad():
        for layer in model.temporal_layers:
            layer.out.weight.normal_(0, 0.5)


def test_switching_temporal_attention_off_isolates_the_frames():
    model = video.inflate(small_unet())
    randomize_temporal(model)
    x = torch.randn(2, 4, 3, 8, 8, requires_grad=True)
    t = torch.tensor([3, 7])
    for temporal, leaks in ((True, True), (False, False)):
        model.temporal = temporal
        (grad,) = torch.autograd.grad(model(x, t)[:, 0].sum(), x)  # output frame 0
        other = grad[:, 1:].abs().max().item()  # its dependence on frames 1..3
        assert (other > 1e-6) == leaks, (temporal, other)


def test_inflated_model_reproduces_the_image_model():
    image = small_unet()
    model = video.inflate(image).eval()
    t = torch.tensor([2, 9])
    frame = torch.randn(2, 3, 8, 8)
    same = frame[:, None].expand(2, 5, 3, 8, 8).contiguous()  # a clip of identical frames
    torch.testing.assert_close(model(same, t), image(frame, t)[:, None].expand(2, 5, 3, 8, 8), atol=1e-5, rtol=1e-5)
    moving = torch.randn(2, 5, 3, 8, 8)  # zero-initialized temporal layers: any clip, frame by frame
    torch.testing.assert_close(model(moving, t), torch.stack([image(moving[:, k], t) for k in range(5)], 1), atol=1e-5, rtol=1e-5)
    assert model.image is not image  # the image model is copied, not shared


def test_min_level_puts_temporal_layers_only_below_full_resolution():
    image = small_unet()
    assert video.block_levels(image) == [0, 1, 1, 1, 0]
    model = video.inflate(image, min_level=1)
    assert model.blocks == (1, 2, 3) and len(model.temporal_layers) == 3
    assert [layer.qkv.in_features for layer in model.temporal_layers] == [32, 32, 32]  # the half-resolution blocks' width
    calls = []
    for k, layer in zip(model.blocks, model.temporal_layers, strict=True):
        layer.register_forward_hook(lambda mod, inp, out, k=k: calls.append((k, inp[0].shape[-1])))
    randomize_temporal(model)
    x, t = torch.randn(2, 4, 3, 8, 8), torch.tensor([3, 7])
    model(x, t)
    assert calls == [(1, 4), (2, 4), (3, 4)]  # each layer once, at half resolution
    model.temporal = False  # still one frame at a time without them
    torch.testing.assert_close(model(x, t), torch.stack([model.image(x[:, k], t) for k in range(4)], 1))
    with pytest.raises(ValueError, match="min_level=2"):
        video.inflate(image, min_level=2)


def test_moves_like_data_needs_the_right_speed_and_a_steady_path(clips):
    real = clips.clips
    assert video.moves_like_data(real).float().mean() > 0.95
    assert video.moves_like_data(video.shuffle_frames(real, torch.Generator().manual_seed(0))).float().mean() < 0.1
    assert not video.moves_like_data(real[:, :1].expand_as(real)).any()  # a still sprite: coherent, but not moving
    assert not video.moves_like_data(real, data_speed=4.0).any()  # the data's sprites are too slow for 4 px/frame
    vanished = real.clone()
    vanished[:, 3] = video.BACKGROUND  # one frame without a sprite fails the clip
    assert not video.moves_like_data(vanished).any()


def test_summary_is_the_four_measures_from_one_tracking_pass(clips):
    x = clips.clips.clone()
    x[:4, 5] = video.BACKGROUND  # four clips lose their sprite in one frame
    s = video.summary(x)
    assert s["incoherence"] == pytest.approx(video.incoherence(x).mean().item())
    assert s["speed"] == pytest.approx(video.speed(x).nanmedian().item())
    assert s["moves like data"] == pytest.approx(video.moves_like_data(x).float().mean().item())
    assert s["untracked frames"] == pytest.approx(4 / (64 * 8))
    assert not torch.isnan(video.speed(x)).any()  # a clip's speed comes from its tracked steps


def test_temporal_attention_in_chunks_equals_one_pass():
    torch.manual_seed(0)
    layer = video.TemporalAttention(8, heads=2)
    with torch.no_grad():
        layer.out.weight.normal_(0, 0.5)
        layer.rel_bias.normal_(0, 1.0)
    h = torch.randn(3 * 4, 8, 5, 5)
    whole = layer(h, 4)
    layer.chunk = 7  # 75 sequences in 11 chunks
    torch.testing.assert_close(layer(h, 4), whole, atol=1e-6, rtol=1e-6)


def test_temporal_attention_equals_scaled_dot_product_attention():
    # the layer's einsum attention is the library's (F.scaled_dot_product_attention through attend), values and gradients
    torch.manual_seed(0)
    layer = video.TemporalAttention(8, heads=2)
    qkv = torch.randn(30, 5, 24, requires_grad=True)
    bias = torch.randn(2, 5, 5, requires_grad=True)
    ours, ref = layer._attend(qkv, bias), attend(qkv, 2, bias=bias)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(ours, (qkv, bias), g), torch.autograd.grad(ref, (qkv, bias), g), atol=1e-5, rtol=1e-5)


def test_sprite_colour_is_the_drawn_colour(clips):
    colour = video.sprite_colour(clips.clips)
    torch.testing.assert_close(colour, data.COLOURS[clips.colour], atol=1e-5, rtol=0)
    assert torch.isnan(video.sprite_colour(torch.full((1, 3, 3, 8, 8), video.BACKGROUND))).all()


def test_temporal_attention_knows_the_order_of_the_frames():
    torch.manual_seed(0)
    layer = video.TemporalAttention(8, heads=2, max_frames=6)
    with torch.no_grad():
        layer.out.weight.normal_(0, 0.5)
    h = torch.randn(5 * 4, 8, 3, 3)  # 4 clips of 5 frames
    order = torch.tensor([4, 2, 0, 3, 1])

    def permuted(x):  # the same frames of each clip in another order
        return x.view(4, 5, 8, 3, 3)[:, order].reshape(20, 8, 3, 3)

    # with a zero position bias the layer cannot tell the order: permuting the input permutes the output
    torch.testing.assert_close(layer(permuted(h), 5), permuted(layer(h, 5)), atol=1e-5, rtol=1e-5)
    # a large bias at offset i - j = +1 makes every frame attend to the frame before it: with q = k = 0, v = identity
    # and an identity output projection, frame i's update is the normalized features of frame i - 1
    with torch.no_grad():
        layer.qkv.weight.zero_()
        layer.qkv.bias.zero_()
        layer.qkv.weight[16:].copy_(torch.eye(8))  # v = LN(h)
        layer.out.weight.copy_(torch.eye(8))
        layer.out.bias.zero_()
        layer.rel_bias.zero_()
        layer.rel_bias[:, layer.max_frames] = 30.0  # index i - j + max_frames - 1 with i - j = 1
    update = (layer(h, 5) - h).view(4, 5, 8, 9).transpose(2, 3)  # (clips, frames, positions, C)
    normed = layer.norm(h.view(4, 5, 8, 9).transpose(2, 3))
    torch.testing.assert_close(update[:, 1:], normed[:, :-1], atol=1e-4, rtol=1e-4)
    assert (update[:, 1:] - normed[:, 1:]).abs().max() > 0.1  # not its own frame, and not the next one
    with pytest.raises(ValueError, match="max_frames"):
        layer(torch.randn(7 * 2, 8, 3, 3), 7)
    with pytest.raises(ValueError, match="not both"):
        attend(torch.randn(1, 3, 6), 1, causal=True, bias=torch.zeros(1, 3, 3))

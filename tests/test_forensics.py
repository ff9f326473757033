"""Chapter 12's forensics: spectra, copy-move, PRNU, DIRE and watermarks."""

import copy
import io
import itertools
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

from genbook import forensics, metrics
from genbook.diffusion import cosine_schedule, ddim_sample
from genbook.forensics.jpeg import dct_matrix
from genbook.forensics.splice import move


def test_spectrum_of_a_sinusoid_peaks_at_its_frequency():
    size = 32
    x = torch.arange(size).float()
    for k in (3, 7, 12):
        image = (0.5 + 0.4 * torch.cos(2 * math.pi * k * x / size)).expand(size, size)[None, None]  # vertical stripes
        spec = forensics.azimuthal_spectrum(image)[0]
        assert spec.shape == (23,)  # rings out to the corner, radius 16 sqrt(2)
        assert int(spec[1:].argmax()) + 1 == k  # bin 0 is the mean brightness
    odd = torch.arange(33).float()
    stripes = (0.5 + 0.4 * torch.cos(2 * math.pi * 6 * odd / 33)).expand(33, 33)[None, None]  # odd size: centring matters
    assert int(forensics.azimuthal_spectrum(stripes)[0, 1:].argmax()) + 1 == 6
    diagonal = 0.5 + 0.4 * torch.cos(2 * math.pi * 5 * (x[:, None] + x[None, :]) / size)  # frequency (5, 5): radius 7.07
    assert int(forensics.azimuthal_spectrum(diagonal[None, None])[0, 1:].argmax()) + 1 == 7
    with pytest.raises(ValueError, match="N, C, H, W"):
        forensics.azimuthal_spectrum(image[0])


def test_spectral_loss_is_zero_on_the_real_spectrum_and_has_gradients():
    g = torch.Generator().manual_seed(0)
    real = torch.rand(16, 1, 16, 16, generator=g)
    target = forensics.mean_spectrum(real)
    assert forensics.spectral_loss(real, target).item() < 1e-10
    fake = torch.rand(16, 1, 16, 16, generator=g).requires_grad_(True)
    loss = forensics.spectral_loss(fake * 0.5, target)
    loss.backward()
    assert loss.item() > 0.01 and fake.grad.abs().sum() > 0


def test_spectrum_detector_finds_a_periodic_trace():
    x = torch.arange(16).float()
    checker = 0.03 * torch.cos(math.pi * x)[:, None] * torch.cos(math.pi * x)[None, :]  # a faint checkerboard (corner)
    real = forensics.scenes(200, 16, seed=1)[:, None]
    fake = (forensics.scenes(200, 16, seed=2)[:, None] + checker).clamp(0, 1)
    det = forensics.spectrum_detector(real[:100], fake[:100])
    assert forensics.detector_accuracy(det, real[100:], fake[100:]) > 0.95
    shuffled = forensics.spectrum_detector(real[:100], forensics.scenes(100, 16, seed=3)[:, None])  # no trace to find
    assert forensics.detector_accuracy(shuffled, real[100:], forensics.scenes(100, 16, seed=4)[:, None]) < 0.75


def test_copy_move_finds_a_planted_duplicate_and_nothing_in_a_clean_image():
    image = forensics.scenes(1, 48, seed=0, smoothness=1.0)[0]
    forged = image.clone()
    forged[30:42, 28:40] = image[5:17, 4:16]  # copy a 12 x 12 region 25 down, 24 right
    found = forensics.copy_move(forged)
    assert found.shift == (25, 24) and found.count >= 50
    assert found.mask[5:17, 4:16].all() and found.mask[30:42, 28:40].all()
    assert found.mask.float().mean() < 0.2  # and not much else
    clean = forensics.copy_move(image)
    assert clean.shift is None and not clean.mask.any()
    noisy = (forged + 0.002 * torch.randn(forged.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert forensics.copy_move(noisy, quant=0.05).shift == (25, 24)  # robust to faint noise after the paste
    left = image.clone()
    left[8:20, 4:16] = image[8:20, 30:42]  # a purely horizontal copy, to the left
    assert forensics.copy_move(left).shift == (0, 26)  # reported with dx > 0 when dy = 0
    down_left = image.clone()
    down_left[30:42, 4:16] = image[2:14, 30:42]  # down and to the left
    found = forensics.copy_move(down_left)
    assert found.shift == (28, -26) and found.mask[30:42, 4:16].all() and found.mask[2:14, 30:42].all()


def test_prnu_matches_pictures_to_the_camera_that_took_them():
    cams = forensics.cameras(4, 32, seed=0)
    g = torch.Generator().manual_seed(1)
    patterns = [forensics.fingerprint(c.shoot(forensics.scenes(40, 32, seed=10 + i), g)) for i, c in enumerate(cams)]
    hits = 0
    for i, c in enumerate(cams):
        test = c.shoot(forensics.scenes(20, 32, seed=100 + i), g)
        rho = torch.stack([forensics.correlation(test, p) for p in patterns], 1)  # (20, cameras)
        hits += (rho.argmax(1) == i).sum().item()
        assert rho[:, i].mean() > 3 * rho[:, [j for j in range(4) if j != i]].abs().mean()
    assert hits / 80 > 0.95


def test_binomial_fpr_matches_a_direct_count():
    k = 10
    signature = [random.Random(0).randint(0, 1) for _ in range(k)]
    for threshold in (0, 5, 8, 10):
        count = sum(sum(b == s for b, s in zip(bits, signature)) >= threshold for bits in itertools.product((0, 1), repeat=k))
        assert forensics.binomial_fpr(k, threshold) == pytest.approx(count / 2**k, abs=1e-15)
    assert forensics.binomial_fpr(48, 48) == 2.0**-48
    with pytest.raises(ValueError, match="threshold"):
        forensics.binomial_fpr(8, 9)


def test_distortions_and_the_extractor_reads_any_crop():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 16, 16, generator=g)
    cropped = forensics.distort(x, "crop", 0.5, g)
    assert cropped.shape == (3, 1, 16, 16) and not torch.allclose(cropped, x)  # a quarter of the image, scaled back up
    torch.testing.assert_close(forensics.distort(x, "crop", 1.0, g), x)  # the whole image: unchanged
    grey = torch.full((200, 1, 16, 16), 0.5)
    assert abs(forensics.distort(grey, "noise", 0.1, g).std().item() - 0.1) < 0.005
    assert forensics.distort(x, "noise", 2.0, g).min() >= 0 and forensics.distort(x, "brightness", 3.0).max() <= 1
    blurred = forensics.distort(x, "blur", 1.0)
    assert abs(blurred.mean() - x.mean()) < 0.01 and blurred.std() < 0.7 * x.std()
    assert torch.equal(forensics.distort(x, "none", 0.0), x)
    torch.testing.assert_close(forensics.distort(x, "brightness", 0.8), 0.8 * x)
    with pytest.raises(ValueError, match="16 x 16"):
        forensics.WatermarkEncoder(8, size=16)(torch.rand(2, 1, 8, 8), torch.zeros(2, 8))
    with pytest.raises(ValueError, match="unknown distortion"):
        forensics.distort(x, "rotate", 0.5)
    ext = forensics.WatermarkExtractor(8, width=8)
    assert ext(x).shape == (3, 8) and ext(forensics.distort(x, "crop", 0.6, g)).shape == (3, 8)
    rng = random.Random(0)
    changed = [not torch.equal(forensics.random_distortion(x, rng, g), x) for _ in range(40)]
    assert 20 < sum(changed) < 40  # most draws distort, "none" leaves some alone


def test_encoder_and_extractor_learn_to_carry_bits_through_distortions():
    torch.manual_seed(0)
    bits = 8
    enc, ext = forensics.WatermarkEncoder(bits, size=16, width=16), forensics.WatermarkExtractor(bits, width=16)
    opt = torch.optim.Adam([*enc.parameters(), *ext.parameters()], lr=3e-3)
    g, rng = torch.Generator().manual_seed(0), random.Random(0)
    images = forensics.scenes(256, 16, seed=0)[:, None]
    for _ in range(600):
        x = images[torch.randint(0, 256, (32,), generator=g)]
        m = torch.randint(0, 2, (32, bits), generator=g)
        loss = forensics.message_loss(ext(forensics.random_distortion(forensics.embed(enc, x, m, alpha=0.05), rng, g)), m)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m = torch.randint(0, 2, (64, bits), generator=g)
    with torch.no_grad():
        marked = forensics.embed(enc, images[:64], m, alpha=0.05)
        acc = {k: forensics.bit_accuracy(ext(forensics.distort(marked, k, s, g)), m).mean().item()
               for k, s in (("none", 0), ("crop", 0.9), ("blur", 0.6), ("brightness", 0.8))}  # fmt: skip
        chance = forensics.bit_accuracy(ext(images[:64]), m).mean().item()  # unmarked images carry no message
    assert (marked - images[:64]).abs().max() <= 0.05 + 1e-6  # alpha bounds the change (tanh residual)
    assert min(acc.values()) > 0.8, acc  # chance is 0.5
    assert abs(chance - 0.5) < 0.15


def test_signature_loss_trains_the_decoder_only():
    torch.manual_seed(0)
    decoder = torch.nn.Sequential(torch.nn.Linear(4, 256), torch.nn.Unflatten(1, (1, 16, 16)), torch.nn.Sigmoid())
    original = copy.deepcopy(decoder)  # not frozen: the loss itself must keep gradients out of it
    ext = forensics.WatermarkExtractor(8, width=8).requires_grad_(False)
    signature = torch.randint(0, 2, (8,))
    loss, logs = forensics.signature_loss(decoder, original, ext, torch.randn(5, 4), signature, weight=2.0)
    loss.backward()
    assert decoder[0].weight.grad is not None and all(p.grad is None for p in original.parameters())
    assert loss.item() == pytest.approx(logs["message"] + 2.0 * logs["image"], rel=1e-5)
    assert logs["image"] == 0 and 0 <= logs["bits"] <= 1  # an untouched copy: no image change yet


def binary_eps():
    """The exact noise predictor for data whose pixels are -1 or +1 with equal odds, under a cosine schedule:
    E[x0 | x_t] = tanh(sqrt(ab) x_t / (1 - ab)) per pixel, eps = (x_t - sqrt(ab) E[x0 | x_t]) / sqrt(1 - ab)."""
    sched = cosine_schedule(100)

    def eps_fn(x, t, y=None):
        ab = sched.alpha_bar[t].float().view(-1, *([1] * (x.dim() - 1)))
        x0 = torch.tanh(ab.sqrt() * x / (1 - ab))
        return (x - ab.sqrt() * x0) / (1 - ab).sqrt()

    return sched, eps_fn


def test_dire_separates_the_model_s_samples_from_images_it_did_not_make():
    from sklearn.metrics import roc_auc_score

    sched, eps_fn = binary_eps()
    g = torch.Generator().manual_seed(0)
    made = ddim_sample(eps_fn, sched, (100, 1, 8, 8), steps=20, generator=g, clip_x0=1.0)  # pixels near -1 or +1
    other = torch.rand(100, 1, 8, 8, generator=g) * 2 - 1  # uniform grey levels: not this model's images
    d_made, d_other = forensics.dire(eps_fn, sched, made), forensics.dire(eps_fn, sched, other)
    assert d_made.shape == (100,) and forensics.dire(eps_fn, sched, made[:2], per_pixel=True).shape == (2, 1, 8, 8)
    assert roc_auc_score([0] * 100 + [1] * 100, torch.cat([d_made, d_other]).numpy()) > 0.95
    assert d_made.mean() < 0.2 * d_other.mean()


def _pillow_jpeg(x, quality):
    """Pillow's baseline JPEG at 4:4:4, a round trip through bytes: the reference for forensics.jpeg."""
    out = []
    for im in x:
        buf = io.BytesIO()
        Image.fromarray((im.permute(1, 2, 0) * 255).round().byte().numpy()).save(buf, format="JPEG", quality=quality, subsampling=0)
        out.append(torch.from_numpy(np.array(Image.open(io.BytesIO(buf.getvalue())))).permute(2, 0, 1) / 255)
    return torch.stack(out).float()


def test_jpeg_agrees_with_pillow_and_loses_more_at_lower_quality():
    g = torch.Generator().manual_seed(0)
    x = metrics.gaussian_blur(torch.rand(8, 3, 16, 16, generator=g), 1.0)
    x = (x - x.amin((1, 2, 3), keepdim=True)) / (x.amax((1, 2, 3), keepdim=True) - x.amin((1, 2, 3), keepdim=True))
    x = (x * 255).round() / 255  # 8-bit images, as Pillow sees them
    d = dct_matrix()
    torch.testing.assert_close(d @ d.T, torch.eye(8), atol=1e-6, rtol=0)  # the DCT is orthonormal
    errors = []
    for q in (75, 50, 20):
        ours, ref = forensics.jpeg(x, q), _pillow_jpeg(x, q)
        lost, gap = (ref - x).abs().mean().item(), (ours - ref).abs().mean().item()
        assert gap < min(0.25 * lost, 2 / 255), (q, gap, lost)  # within two grey levels, a quarter of what is lost
        assert abs((ours - x).abs().mean().item() - lost) < 0.1 * lost
        errors.append(lost)
    assert errors[0] < errors[1] < errors[2]
    assert (forensics.jpeg(x, 100) - x).abs().max() <= 2.5 / 255  # all-ones tables: only the roundings
    assert forensics.quant_table(50)[0, 0] == 16 and forensics.quant_table(10)[0, 0] == 80  # T.81's table, scaled
    grey, odd = forensics.jpeg(x[:, :1], 50), forensics.jpeg(torch.rand(2, 3, 13, 10, generator=g), 50)
    assert grey.shape == (8, 1, 16, 16) and odd.shape == (2, 3, 13, 10)
    xs = (0.25 + 0.5 * x).requires_grad_()  # mid-range, so that no clamp cuts the gradient
    forensics.distort(xs, "jpeg", 50).sum().backward()  # straight-through: the gradient of the identity
    torch.testing.assert_close(xs.grad, torch.ones_like(xs), atol=1e-4, rtol=0)
    torch.testing.assert_close(forensics.jpeg(x, np.int64(50)), forensics.jpeg(x, 50))
    for bad in (0, 101, 50.0, True):
        with pytest.raises(ValueError, match="quality"):
            forensics.jpeg(x, bad)
    with pytest.raises(ValueError, match="C = 1 or 3"):
        forensics.jpeg(torch.rand(2, 2, 8, 8), 50)


def _squares(n, g, size=16, noisy=False):
    """n pictures of one 4 x 4 square at a random place on a grey background; noisy squares for donors."""
    x = torch.full((n, 3, size, size), 0.1)
    at = torch.randint(2, size - 6, (n, 2), generator=g)
    colour = torch.rand(n, 3, generator=g)
    for i in range(n):
        r, c = at[i].tolist()
        patch = colour[i, :, None, None].expand(3, 4, 4)
        if noisy:
            patch = (patch + 0.3 * torch.randn(3, 4, 4, generator=g)).clamp(0, 1)
        x[i, :, r : r + 4, c : c + 4] = patch
    return x, at + 1.5  # the square's centre


def test_splice_moves_the_donor_onto_the_host_subject_inside_the_window_only():
    g = torch.Generator().manual_seed(0)
    hosts, at = _squares(6, g)
    donors, _ = _squares(6, g, noisy=True)
    torch.testing.assert_close(forensics.subject_centre(hosts), at.float(), atol=0.01, rtol=0)
    shifted = move(hosts, torch.tensor([[2, -1]] * 6))
    torch.testing.assert_close(shifted[..., 4:12, 4:12], hosts[..., 2:10, 5:13])
    hard = forensics.window_mask(at, (16, 16), half=4)
    assert hard.shape == (6, 1, 16, 16) and torch.equal(hard.sum((1, 2, 3)), torch.full((6,), 64.0))
    edge = forensics.window_mask(torch.tensor([[0.0, 15.0]]), (16, 16), half=4)
    assert edge.sum() == 64 and edge[0, 0, :8, 8:].sum() == 64  # kept inside the frame
    soft = forensics.window_mask(at, (16, 16), half=4, feather=1.5)
    assert 0 <= soft.min() and soft.max() <= 1 and ((soft > 0) & (soft < 1)).sum() > ((hard > 0) & (hard < 1)).sum()
    forged = forensics.splice(hosts, donors, half=4)
    torch.testing.assert_close(forged * (1 - hard), hosts * (1 - hard))  # outside the window: the host, untouched
    assert not torch.allclose(forged, hosts)
    with pytest.raises(ValueError, match="same shape"):
        forensics.splice(hosts, donors[:3])
    with pytest.raises(ValueError, match="must fit"):
        forensics.window_mask(at, (16, 16), half=9)
    odd = forensics.window_mask(torch.tensor([[4.5, 5.5]]), (16, 16), half=2)[0, 0]
    assert odd[3:7, 4:8].sum() == 16  # centred on (4.5, 5.5), whatever the parity


def test_forgery_detector_learns_to_spot_a_splice():
    g = torch.Generator().manual_seed(0)
    real, _ = _squares(300, g)
    donors, _ = _squares(300, g, noisy=True)

    def forge(hosts, gen):
        pick = torch.randint(0, len(donors), (len(hosts),), generator=gen)
        return forensics.splice(hosts, donors[pick], half=4, feather=1.0)

    torch.manual_seed(0)
    det, losses = forensics.forgery_detector(real[:200], forge, steps=150, batch=32, lr=2e-3, generator=g, width=16)
    test_real, test_fake = real[200:], forge(real[200:], g)
    scores = forensics.forgery_scores(det, torch.cat([test_real, test_fake]))
    labels = torch.cat([torch.zeros(100), torch.ones(100)])
    auc = (scores[labels == 1][:, None] > scores[labels == 0][None, :]).float().mean().item()
    assert auc > 0.9 and sum(losses[-10:]) / 10 < losses[0], (auc, losses[0], losses[-1])
    assert scores.shape == (200,)
    with pytest.raises(ValueError, match="two real"):
        forensics.forgery_detector(real[:1], forge, steps=1)

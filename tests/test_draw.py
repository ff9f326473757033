"""Tests for genbook.draw: the canvas recurrence written out by hand, the per-step KL, sampling's shapes,
the ELBO as a drop-in for the VAE's loss and bound, and bad configurations."""

import pytest
import torch
import torch.nn.functional as F

from genbook import data
from genbook.draw import DRAW, DRAWConfig
from genbook.train import fit
from genbook.vae import gaussian_kl, negative_elbo, vae_loss

K = data.DIGIT_LEVELS


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def digits16():
    return data.digits("train").x_int[:16]


def _model(steps=3, latent_dim=2, hidden=12):  # hidden != the batch of 16, so a swapped state shape fails
    return DRAW(DRAWConfig(steps=steps, latent_dim=latent_dim, hidden=hidden))


def test_run_is_the_recurrence_written_out(digits16):
    """run() equals the DRAW step written by hand (error image, encoder LSTM, z = mu + sigma eps, decoder LSTM, additive
    write), with the same eps, and elbo_terms is log p(x | c_T) by cross-entropy and the sum of the per-step KLs."""
    m = _model()
    torch.manual_seed(1)
    canvas, kl, canvases = m.run(digits16)
    torch.manual_seed(1)
    x = digits16.float().flatten(1) / (K - 1)
    h = [torch.zeros(16, 12) for _ in range(4)]  # h_enc, c_enc, h_dec, c_dec
    c = m.canvas0.expand(16, -1)
    kls = []
    for _ in range(3):
        mean = (c.view(16, K, 64).softmax(1) * torch.linspace(0, 1, K)[None, :, None]).sum(1)
        h[0], h[1] = m.encoder(torch.cat([x, x - mean, h[2]], 1), (h[0], h[1]))
        mu, logvar = m.to_q(h[0]).chunk(2, -1)
        logvar = logvar.clamp(-12, 8)
        kls.append(gaussian_kl(mu, logvar))
        z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
        h[2], h[3] = m.decoder(z, (h[2], h[3]))
        c = c + m.write(h[2])
    torch.testing.assert_close(canvas, c)
    torch.testing.assert_close(kl, torch.stack(kls, 1))
    assert len(canvases) == 4 and torch.equal(canvases[-1], canvas)
    nll = F.cross_entropy(canvas.view(16, K, 64), digits16.view(16, 64), reduction="none").sum(1)
    torch.testing.assert_close(-m.log_px(digits16, canvas), nll)
    torch.manual_seed(1)
    log_px, kl_sum = m.elbo_terms(digits16)
    torch.testing.assert_close(log_px, -nll)
    torch.testing.assert_close(kl_sum, kl.sum(1))


def test_mean_image_is_the_expected_level():
    """A canvas sure of level k at pixel i has mean k / (K - 1) there; a flat canvas has 1/2 everywhere."""
    m = _model()
    canvas = torch.zeros(3, K, 64)
    for b, (k, i) in enumerate([(0, 5), (4, 17), (16, 63)]):
        canvas[b, k, i] = 50.0
    mean = m.mean_image(canvas.flatten(1))
    for b, (k, i) in enumerate([(0, 5), (4, 17), (16, 63)]):
        assert mean[b, i].item() == pytest.approx(k / (K - 1), abs=1e-6)
    torch.testing.assert_close(m.mean_image(torch.zeros(2, K * 64)), torch.full((2, 64), 0.5))


def test_sample_replays_the_decoder_with_prior_codes():
    """sample() is the decoder half of the recurrence driven by z_t ~ N(0, I): replayed by hand with the same draws."""
    m = _model(steps=3)
    out = m.sample(5, generator=torch.Generator().manual_seed(3))
    z = torch.randn(3, 5, 2, generator=torch.Generator().manual_seed(3))
    h, c = torch.zeros(5, 12), torch.zeros(5, 12)
    canvas = m.canvas0.expand(5, -1)
    means = [m.mean_image(canvas)]
    for t in range(3):
        h, c = m.decoder(z[t], (h, c))
        canvas = canvas + m.write(h)
        means.append(m.mean_image(canvas))
    torch.testing.assert_close(out, torch.stack(means).view(4, 5, 1, 8, 8))


def test_sample_shapes_range_and_generator():
    """Samples are (T + 1, n, 1, 8, 8) in [0, 1] and follow the generator: the same seed repeats, another differs."""
    m = _model(steps=4)
    a = m.sample(5, generator=torch.Generator().manual_seed(3))
    assert a.shape == (5, 5, 1, 8, 8) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, m.sample(5, generator=torch.Generator().manual_seed(3)))
    other = m.sample(5, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(a[-1], other[-1])


def test_training_lowers_the_bound_and_every_parameter_learns(digits16):
    m = _model(steps=2, hidden=32)
    before = negative_elbo(m, digits16, samples=4).mean().item()
    start = {k: v.detach().clone() for k, v in m.named_parameters()}
    fit(m, vae_loss, data.Batches(digits16, batch_size=16, seed=0), steps=150, lr=1e-2, progress=False)
    after = negative_elbo(m, digits16, samples=4).mean().item()
    assert after < before - 20, (before, after)
    assert all(not torch.equal(start[k], v) for k, v in m.named_parameters())
    _, kl = m.elbo_terms(digits16)
    assert kl.mean() > 1.0, "the codes carry information, not only the learned canvas c_0"


def test_bad_configurations_and_labels_are_refused(digits16):
    with pytest.raises(ValueError, match="at least one step"):
        DRAW(DRAWConfig(steps=0))
    with pytest.raises(ValueError, match="at least one step"):
        DRAW(DRAWConfig(latent_dim=0))
    with pytest.raises(ValueError, match="unconditional"):
        _model().elbo_terms(digits16, torch.zeros(16, dtype=torch.long))

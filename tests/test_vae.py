"""Tests for genbook.vae: Gaussian KL and densities against torch.distributions and Monte Carlo, the three decoders,
the CVAE, beta and capacity losses, the IWAE bound against hand formulas and exact cases, and active units."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from genbook import data
from genbook.vae import (
    DECODERS,
    VAE,
    AutoregressiveDecoder,
    CapacityLoss,
    VAEConfig,
    active_units,
    gaussian_kl,
    gaussian_kl_between,
    gaussian_log_density,
    iwae_bound,
    negative_elbo,
    reparameterize,
    vae_loss,
)

K = data.DIGIT_LEVELS  # 17 grey levels


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def digits16():
    """The first 16 training digits as integers 0..16, (16, 1, 8, 8), and their labels."""
    ds = data.digits("train")
    return ds.x_int[:16], ds.y[:16]


def _model(decoder="categorical", num_classes=None, latent_dim=4):
    return VAE(VAEConfig(latent_dim=latent_dim, width=8, decoder=decoder, num_classes=num_classes, ar_width=8, ar_layers=2))


def _hand_categorical_log_lik(logits, x_int):
    """sum over pixels of log softmax(logits)[x], written with log_softmax and gather. logits (B, K, C, S, S) -> (B,)."""
    logp = torch.log_softmax(logits, dim=1)
    return logp.gather(1, x_int.unsqueeze(1)).flatten(1).sum(1)


# ----------------------------------------------------------------------------- Gaussian closed forms


def test_gaussian_kl_matches_torch_distributions():
    """gaussian_kl(mu, logvar) equals kl_divergence(N(mu, sigma), N(0, 1)) summed over dimensions."""
    mu, logvar = torch.randn(5, 3), torch.randn(5, 3)
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(gaussian_kl(mu, logvar), expected)


def test_gaussian_kl_matches_monte_carlo():
    """gaussian_kl equals E_q[log q(z) - log p(z)] estimated with 20000 samples, within 4 standard errors."""
    mu = torch.tensor([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5], [0.3, 0.1, -1.0]])
    logvar = torch.tensor([[0.0, 0.0, 0.0], [-1.0, 0.5, 0.0], [1.0, -2.0, 0.3]])
    q = Normal(mu, (0.5 * logvar).exp())
    z = q.sample((20000,))  # (N, B, d)
    log_ratio = (q.log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum(-1)  # (N, B)
    est, se = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(len(z))
    kl = gaussian_kl(mu, logvar)
    assert kl[0].item() == 0.0
    assert ((kl - est).abs() <= 4 * se + 1e-4).all(), (kl, est, se)


def test_gaussian_kl_between_matches_torch_distributions():
    """gaussian_kl_between equals kl_divergence(N(mu_q, s_q), N(mu_p, s_p)) summed, and is 0 for equal Gaussians."""
    mu_q, lv_q, mu_p, lv_p = torch.randn(4, 6, 5).unbind(0)
    expected = kl_divergence(Normal(mu_q, (0.5 * lv_q).exp()), Normal(mu_p, (0.5 * lv_p).exp())).sum(-1)
    torch.testing.assert_close(gaussian_kl_between(mu_q, lv_q, mu_p, lv_p), expected)
    torch.testing.assert_close(gaussian_kl_between(mu_q, lv_q, mu_q, lv_q), torch.zeros(6))


def test_gaussian_log_density_matches_normal_log_prob():
    """gaussian_log_density(z, mu, logvar) equals Normal(mu, exp(logvar / 2)).log_prob(z) summed over dimensions."""
    z, mu, logvar = torch.randn(3, 7, 4).unbind(0)
    expected = Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    torch.testing.assert_close(gaussian_log_density(z, mu, logvar), expected)


# ----------------------------------------------------------------------------- reparameterization


def test_reparameterize_with_given_eps():
    """With eps given, reparameterize returns mu + exp(logvar / 2) * eps exactly."""
    mu, logvar, eps = torch.randn(3, 4, 5).unbind(0)
    torch.testing.assert_close(reparameterize(mu, logvar, eps), mu + torch.exp(logvar / 2) * eps)


def test_reparameterize_samples_have_the_right_moments():
    """20000 draws for one (mu, logvar) have mean mu and variance exp(logvar) within sampling error."""
    mu, logvar = torch.tensor([1.0, -3.0, 0.0]), torch.tensor([0.0, 1.0, -2.0])
    z = reparameterize(mu.expand(20000, 3), logvar.expand(20000, 3))
    var = logvar.exp()
    assert ((z.mean(0) - mu).abs() < 4 * (var / 20000).sqrt()).all()
    assert ((z.var(0) / var - 1).abs() < 4 * math.sqrt(2 / 20000)).all()


def test_reparameterize_passes_gradients():
    """d z / d mu = 1 and d z / d logvar = eps * exp(logvar / 2) / 2, by autograd."""
    mu = torch.randn(4, 3, requires_grad=True)
    logvar = torch.randn(4, 3, requires_grad=True)
    eps = torch.randn(4, 3)
    reparameterize(mu, logvar, eps).sum().backward()
    torch.testing.assert_close(mu.grad, torch.ones(4, 3))
    torch.testing.assert_close(logvar.grad, eps * torch.exp(logvar.detach() / 2) / 2)


# ----------------------------------------------------------------------------- the VAE's API


@pytest.mark.parametrize("num_classes", [None, 10])
@pytest.mark.parametrize("decoder", DECODERS)
def test_vae_shapes(decoder, num_classes, digits16):
    """encode gives (B, d) twice, log_px_z and elbo_terms (B,), decode in every mode and sample(n) give (n, 1, 8, 8) in [0, 1]."""
    model = _model(decoder, num_classes)
    x, labels = digits16[0][:3], digits16[1][:3]
    y = labels if num_classes else None
    mu, logvar = model.encode(data.to_unit(x), y)
    assert mu.shape == logvar.shape == (3, 4)
    z = reparameterize(mu, logvar)
    assert model.log_px_z(x, z, y).shape == (3,)
    log_px_z, kl = model.elbo_terms(x, y)
    assert log_px_z.shape == kl.shape == (3,)
    assert (kl >= 0).all()
    if decoder != "gaussian":  # a probability of discrete pixels; the Gaussian one is a density
        assert (log_px_z <= 0).all()
    for mode in ("mean", "mode", "sample"):
        images = model.decode(z, y, mode=mode)
        assert images.shape == (3, 1, 8, 8)
        assert images.min() >= 0 and images.max() <= 1
    assert model.sample(3, y).shape == (3, 1, 8, 8)


@pytest.mark.parametrize("decoder", ["categorical", "autoregressive"])
def test_sampled_images_lie_on_the_level_grid(decoder):
    """decode(mode='sample') and 'mode' of a categorical (or autoregressive) decoder give values k / 16, k integer."""
    model = _model(decoder)
    z = torch.randn(4, 4)
    for mode in ("sample", "mode"):
        scaled = model.decode(z, mode=mode, generator=torch.Generator().manual_seed(0)) * (K - 1)
        torch.testing.assert_close(scaled, scaled.round(), atol=1e-5, rtol=0)


def test_categorical_decode_mean_is_expected_level():
    """decode(mode='mean') is sum_k k softmax(logits)_k / 16 and mode='mode' is argmax_k / 16, per pixel."""
    model = _model("categorical")
    z = torch.randn(2, 4)
    with torch.no_grad():
        probs = model.decoder(z).view(2, K, 1, 8, 8).softmax(1)
    levels = torch.arange(K, dtype=torch.float32)
    expected_mean = torch.einsum("bkcij,k->bcij", probs, levels) / (K - 1)
    torch.testing.assert_close(model.decode(z, mode="mean"), expected_mean)
    torch.testing.assert_close(model.decode(z, mode="mode"), probs.argmax(1).float() / (K - 1))


def test_decode_sample_is_reproducible_with_generator():
    """decode(mode='sample') and sample(n) give the same images for the same seeded generator."""
    model = _model("categorical")
    z = torch.randn(3, 4)
    a = model.decode(z, mode="sample", generator=torch.Generator().manual_seed(5))
    b = model.decode(z, mode="sample", generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert torch.equal(
        model.sample(2, generator=torch.Generator().manual_seed(1)), model.sample(2, generator=torch.Generator().manual_seed(1))
    )


def test_unknown_decoder_raises():
    """A decoder name outside DECODERS raises ValueError naming the valid ones."""
    with pytest.raises(ValueError, match="categorical"):
        VAE(VAEConfig(decoder="bernoulli"))


def test_conditional_vae_needs_labels(digits16):
    """A CVAE (num_classes set) raises ValueError when encode, elbo_terms or sample are called without y."""
    model = _model("categorical", num_classes=10)
    x = digits16[0][:2]
    with pytest.raises(ValueError, match="labels"):
        model.encode(data.to_unit(x))
    with pytest.raises(ValueError, match="labels"):
        model.elbo_terms(x)
    with pytest.raises(ValueError, match="labels"):
        model.sample(2)


def test_conditional_vae_decoder_uses_the_label():
    """The CVAE's decoded mean changes with the label for the same z."""
    model = _model("categorical", num_classes=10)
    z = torch.randn(1, 4).expand(2, -1)
    out = model.decode(z, torch.tensor([3, 7]))
    assert not torch.allclose(out[0], out[1])


def test_conditional_encoder_sees_label_planes(digits16):
    """CVAE encode(x, y) feeds the encoder [x, one constant 8x8 plane per class, 1 at the label's plane] and splits [mu, logvar]."""
    model = _model("categorical", num_classes=10)
    x, y = digits16[0][:3].float() / (K - 1), digits16[1][:3]
    planes = torch.zeros(3, 10, 8, 8)
    for b in range(3):
        planes[b, y[b]] = 1.0
    with torch.no_grad():
        out = model.encoder(torch.cat([x, planes], 1))
        mu, logvar = model.encode(x, y)
    torch.testing.assert_close(mu, out[:, :4])
    torch.testing.assert_close(logvar, out[:, 4:].clamp(-12, 8))


def test_gaussian_decode_mean_and_sample_spread():
    """Gaussian decode: 'mean' and 'mode' are mu_theta(z) clipped to [0, 1]; 'sample' pixels have std exp(log_sigma) (4000 draws)."""
    model = _model("gaussian")
    with torch.no_grad():
        model.decoder.net[-1].bias.fill_(0.5)  # means near 0.5, far from the clipping at 0 and 1
        model.log_sigma.fill_(-3.0)
    z = torch.randn(1, 4)
    with torch.no_grad():
        mean = model.decoder(z).clamp(0, 1)
    torch.testing.assert_close(model.decode(z, mode="mean"), mean)
    torch.testing.assert_close(model.decode(z, mode="mode"), mean)
    draws = model.decode(z.expand(4000, -1), mode="sample", generator=torch.Generator().manual_seed(0))  # (4000, 1, 8, 8)
    sigma = math.exp(-3.0)
    assert ((draws.mean(0) - mean[0]).abs() < 4 * sigma / math.sqrt(4000)).all()
    assert ((draws.std(0) / sigma - 1).abs() < 4 * math.sqrt(1 / (2 * 4000))).all()


# ----------------------------------------------------------------------------- log p(x | z) by hand


def test_categorical_log_px_z_by_hand(digits16):
    """Categorical log p(x | z) = sum_pixels log_softmax(decoder(z))[x], by log_softmax and gather."""
    model = _model("categorical")
    x = digits16[0][:4]
    z = torch.randn(4, 4)
    with torch.no_grad():
        expected = _hand_categorical_log_lik(model.decoder(z).view(4, K, 1, 8, 8), x)
        torch.testing.assert_close(model.log_px_z(x, z), expected)


def test_conditional_categorical_log_px_z_by_hand(digits16):
    """CVAE log p(x | z, y) is the categorical log-likelihood of the decoder fed [z, onehot(y)]."""
    model = _model("categorical", num_classes=10)
    x, y = digits16[0][:4], digits16[1][:4]
    z = torch.randn(4, 4)
    onehot = torch.zeros(4, 10)
    onehot[torch.arange(4), y] = 1.0
    with torch.no_grad():
        expected = _hand_categorical_log_lik(model.decoder(torch.cat([z, onehot], 1)).view(4, K, 1, 8, 8), x)
        torch.testing.assert_close(model.log_px_z(x, z, y), expected)


def test_gaussian_log_px_z_by_hand(digits16):
    """Gaussian log p(y | z) = sum log N(y; mu_theta(z), sigma^2) at y = (x + u) / 17, u ~ U[0, 1) drawn with the same seed."""
    model = _model("gaussian")
    with torch.no_grad():
        model.log_sigma.copy_(torch.linspace(-3, 0, 64).view(1, 8, 8))
    x = digits16[0][:3]
    z = torch.randn(3, 4)
    torch.manual_seed(11)
    got = model.log_px_z(x, z)
    torch.manual_seed(11)
    y = (x.float() + torch.rand(x.shape)) / K
    with torch.no_grad():
        expected = Normal(model.decoder(z), model.log_sigma.exp()).log_prob(y).flatten(1).sum(1)
    torch.testing.assert_close(got.detach(), expected)


def test_autoregressive_log_px_z_by_hand(digits16):
    """Autoregressive log p(x | z) is the categorical log-likelihood of the decoder's logits given (z, x / 16)."""
    model = _model("autoregressive")
    x = digits16[0][:3]
    z = torch.randn(3, 4)
    with torch.no_grad():
        expected = _hand_categorical_log_lik(model.decoder(z, x.float() / (K - 1)), x)
        torch.testing.assert_close(model.log_px_z(x, z), expected)


def test_elbo_terms_by_hand(digits16):
    """elbo_terms = (log p(x | mu + sigma eps), 1/2 sum(mu^2 + sigma^2 - log sigma^2 - 1)) with eps from the same seed."""
    model = _model("categorical")
    x = digits16[0][:5]
    torch.manual_seed(3)
    log_px_z, kl = model.elbo_terms(x)
    with torch.no_grad():
        mu, logvar = model.encode(x.float() / (K - 1))
        torch.manual_seed(3)
        z = mu + torch.exp(logvar / 2) * torch.randn(5, 4)
        expected_rec = _hand_categorical_log_lik(model.decoder(z).view(5, K, 1, 8, 8), x)
        expected_kl = 0.5 * (mu**2 + logvar.exp() - logvar - 1).sum(1)
    torch.testing.assert_close(log_px_z.detach(), expected_rec)
    torch.testing.assert_close(kl.detach(), expected_kl)


# ----------------------------------------------------------------------------- the autoregressive decoder


def test_autoregressive_decoder_is_causal(digits16):
    """The logits at pixel i have zero gradient w.r.t. x at pixels j >= i (raster order), and nonzero w.r.t. the left neighbour."""
    model = _model("autoregressive")
    dec = model.decoder
    n = 64  # one batch row per output pixel i: row i's loss reads only pixel i's logits
    x = (digits16[0][5:6].float() / (K - 1)).repeat(n, 1, 1, 1).requires_grad_(True)  # (64, 1, 8, 8)
    z = torch.randn(1, 4).expand(n, -1)
    logits = dec(z, x)  # (64, K, 1, 8, 8)
    w = torch.randn(K)
    rows, cols = torch.arange(n) // 8, torch.arange(n) % 8
    picked = logits[torch.arange(n), :, 0, rows, cols]  # (64, K): row i holds pixel i's logits
    (picked @ w).sum().backward()
    grad = x.grad.view(n, n)  # grad[i, j] = d (logits at pixel i) / d x_j
    future = torch.triu(torch.ones(n, n, dtype=torch.bool))  # j >= i
    assert (grad[future] == 0).all()
    left = [(i, i - 1) for i in range(n) if i % 8 > 0]
    assert all(grad[i, j] != 0 for i, j in left)


def test_autoregressive_sample_is_integer_and_seeded():
    """AutoregressiveDecoder.sample gives long integers 0..16 of shape (B, 1, 8, 8), equal for equal seeded generators."""
    model = _model("autoregressive")
    assert isinstance(model.decoder, AutoregressiveDecoder)
    z = torch.randn(3, 4)
    a = model.decoder.sample(z, torch.Generator().manual_seed(7))
    b = model.decoder.sample(z, torch.Generator().manual_seed(7))
    c = model.decoder.sample(z, torch.Generator().manual_seed(8))
    assert a.shape == (3, 1, 8, 8) and a.dtype == torch.long
    assert a.min() >= 0 and a.max() <= K - 1
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_autoregressive_first_pixel_follows_its_logits():
    """Pixel (0, 0) of 400 samples for one z has frequencies softmax(logits at (0, 0)), within 4 standard errors per level."""
    model = _model("autoregressive")
    with torch.no_grad():
        model.decoder.out.bias.add_(torch.linspace(-2, 2, K))  # an uneven distribution to recover
    n = 400
    z = torch.randn(1, 4).expand(n, -1)
    first = model.decoder.sample(z, torch.Generator().manual_seed(0))[:, 0, 0, 0]
    with torch.no_grad():
        probs = model.decoder(z[:1], torch.zeros(1, 1, 8, 8))[0, :, 0, 0, 0].softmax(0)  # depends on z only
    freq = torch.bincount(first, minlength=K).float() / n
    assert ((freq - probs).abs() <= 4 * (probs * (1 - probs) / n).sqrt() + 1e-3).all()


# ----------------------------------------------------------------------------- beta and capacity


def test_vae_loss_with_beta(digits16):
    """vae_loss(beta) = mean(-log p(x | z) + beta KL) with the same eps, and logs rec and kl as those means."""
    model = _model("categorical")
    x = digits16[0]
    torch.manual_seed(4)
    loss, logs = vae_loss(model, x, beta=4.0)
    torch.manual_seed(4)
    log_px_z, kl = model.elbo_terms(x)
    torch.testing.assert_close(loss, (-log_px_z + 4.0 * kl).mean())
    assert logs["rec"] == pytest.approx(-log_px_z.mean().item(), rel=1e-6)
    assert logs["kl"] == pytest.approx(kl.mean().item(), rel=1e-6)


@pytest.mark.parametrize("decoder", DECODERS)
def test_vae_loss_trains_every_parameter(decoder, digits16):
    """One backward pass of vae_loss gives every encoder and decoder parameter (and log_sigma) a nonzero gradient."""
    model = _model(decoder)
    loss, _ = vae_loss(model, digits16[0][:4])
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_vae_loss_accepts_labelled_batches(digits16):
    """vae_loss on (x, y) for a CVAE equals mean(-log p(x | z, y) + KL) with the same eps."""
    model = _model("categorical", num_classes=10)
    x, y = digits16
    torch.manual_seed(2)
    loss, _ = vae_loss(model, (x, y))
    torch.manual_seed(2)
    log_px_z, kl = model.elbo_terms(x, y)
    torch.testing.assert_close(loss, (kl - log_px_z).mean())


def test_capacity_schedule():
    """CapacityLoss.capacity() is c_max * t / steps after t calls, then stays at c_max."""
    model = _model("categorical")
    x = data.digits("train").x_int[:2]
    cap = CapacityLoss(c_max=6.0, steps=3, gamma=2.0)
    seen = []
    for _ in range(5):
        seen.append(cap.capacity())
        _, logs = cap(model, x)
        assert logs["capacity"] == seen[-1]
    seen.append(cap.capacity())
    assert seen == pytest.approx([0.0, 2.0, 4.0, 6.0, 6.0, 6.0])


def test_capacity_loss_formula(digits16):
    """CapacityLoss = mean(-log p(x | z) + gamma |KL - C_t|) with the same eps, at C_0 = 0 and C_t > KL."""
    model = _model("categorical")
    x = digits16[0]
    cap = CapacityLoss(c_max=1000.0, steps=2, gamma=3.0)
    for c in (0.0, 500.0):  # the KL lies between these, so both signs of KL - C are exercised
        torch.manual_seed(6)
        loss, logs = cap(model, x)
        torch.manual_seed(6)
        log_px_z, kl = model.elbo_terms(x)
        torch.testing.assert_close(loss, (-log_px_z + 3.0 * (kl - c).abs()).mean())
        assert logs["capacity"] == c


# ----------------------------------------------------------------------------- negative ELBO and IWAE


def _spread_model():
    """A fixed random categorical VAE, decoder strongly dependent on z and q(z|x) away from N(0, I), so ELBO and IWAE differ by nats."""
    torch.manual_seed(0)
    model = _model("categorical", latent_dim=2)
    with torch.no_grad():
        model.decoder.net[0].weight.mul_(10)
        model.decoder.net[-1].weight.mul_(10)
        model.encoder.net[-1].bias.add_(torch.tensor([1.0, -0.5, -1.0, 0.5]))  # q(z|x) off the prior: mu shifted, one sigma smaller
    return model


def test_negative_elbo_by_hand(digits16):
    """negative_elbo with samples=1 equals KL - log p(x | z) from elbo_terms with the same eps, also when split into batches."""
    model = _model("categorical")
    x = digits16[0][:6]
    torch.manual_seed(1)
    got = negative_elbo(model, x, samples=1)
    torch.manual_seed(1)
    log_px_z, kl = model.elbo_terms(x)
    torch.testing.assert_close(got, (kl - log_px_z).detach())
    torch.manual_seed(1)
    batched = negative_elbo(model, x, samples=1, batch=4)  # eps drawn for rows 0-3, then rows 4-5
    torch.manual_seed(1)
    first = model.elbo_terms(x[:4])
    second = model.elbo_terms(x[4:])
    torch.testing.assert_close(batched, torch.cat([first[1] - first[0], second[1] - second[0]]).detach())


def _hand_neg_iwae(model, x1, eps):
    """-(logsumexp_k [log p(x|z_k) + log N(z_k; 0, I) - log q(z_k|x)] - log K) for one image x1 (1, 1, 8, 8), z_k = mu + sigma eps_k."""
    k = len(eps)
    with torch.no_grad():
        mu, logvar = model.encode(x1.float() / (K - 1))
        z = mu + torch.exp(logvar / 2) * eps  # (k, d)
        log_lik = _hand_categorical_log_lik(model.decoder(z).view(k, K, 1, 8, 8), x1.expand(k, -1, -1, -1))
        log_w = log_lik + Normal(0.0, 1.0).log_prob(z).sum(1) - Normal(mu, torch.exp(logvar / 2)).log_prob(z).sum(1)
        return -(torch.logsumexp(log_w, 0) - math.log(k))


def test_iwae_bound_by_hand(digits16):
    """iwae_bound = -(logsumexp_k log w_k - log K), log w = log p(x|z) + log N(z; 0, I) - log q(z|x), with the same eps."""
    model = _spread_model()
    x = digits16[0][:1]
    torch.manual_seed(9)
    got = iwae_bound(model, x, 7)
    torch.manual_seed(9)
    torch.testing.assert_close(got, _hand_neg_iwae(model, x, torch.randn(7, 2)).view(1))


def test_iwae_chunks_combine_into_one_bound(digits16):
    """With chunk=3 and K=8 the bound pools all 8 weights (eps drawn as 3 + 3 + 2) in one logsumexp."""
    model = _spread_model()
    x = digits16[0][1:2]
    torch.manual_seed(5)
    got = iwae_bound(model, x, 8, chunk=3)
    torch.manual_seed(5)
    eps = torch.cat([torch.randn(3, 2), torch.randn(3, 2), torch.randn(2, 2)])
    torch.testing.assert_close(got, _hand_neg_iwae(model, x, eps).view(1))


def test_iwae_is_tighter_than_elbo(digits16):
    """On 16 digits, the mean -ELBO (10 samples) exceeds the mean -L_10 of IWAE for a fixed random model."""
    model = _spread_model()
    x = digits16[0]
    assert negative_elbo(model, x, samples=10).mean() > iwae_bound(model, x, 10).mean() + 1.0


def test_iwae_tightens_with_k(digits16):
    """Averaged over 16 repeats on 4 digits, -L_1 >= -L_10 >= -L_100 for a fixed random model."""
    model = _spread_model()
    x = digits16[0][:4]
    means = [torch.stack([iwae_bound(model, x, k) for _ in range(16)]).mean().item() for k in (1, 10, 100)]
    assert means[0] > means[1] > means[2], means


def test_iwae_with_one_sample_is_the_elbo_in_expectation(digits16):
    """E[-L_1] equals -ELBO: 400 one-sample IWAE draws agree with 400 ELBO draws within 4 standard errors."""
    model = _model("categorical")
    with torch.no_grad():
        model.decoder.net[0].weight.mul_(4)  # some dependence on z, so the check is not trivially 0 = 0
    x = digits16[0][:1].repeat(400, 1, 1, 1)
    iw = iwae_bound(model, x, 1)
    ne = negative_elbo(model, x, samples=1)
    se = math.sqrt(iw.var() / len(iw) + ne.var() / len(ne))
    assert abs(iw.mean() - ne.mean()) < 4 * se, (iw.mean(), ne.mean(), se)


def test_iwae_is_exact_when_posterior_is_prior(digits16):
    """With q(z|x) = N(0, I) and a decoder that ignores z, q is the true posterior: -L_K = -ELBO = -log p(x) for every K."""
    model = _model("categorical")
    with torch.no_grad():
        model.encoder.net[-1].weight.zero_()  # mu = 0, logvar = 0 for every x
        model.encoder.net[-1].bias.zero_()
        model.decoder.net[0].weight.zero_()  # p(x | z) = p(x): the decoder ignores z
        x = digits16[0][:3]
        nll = -_hand_categorical_log_lik(model.decoder(torch.zeros(1, 4)).view(1, K, 1, 8, 8).expand(3, -1, -1, -1, -1), x)
    for k in (1, 5, 50):
        torch.testing.assert_close(iwae_bound(model, x, k), nll)
    torch.testing.assert_close(negative_elbo(model, x, samples=2), nll)


def test_conditional_iwae_and_negative_elbo_shapes(digits16):
    """iwae_bound and negative_elbo accept labels for a CVAE and return one value per image."""
    model = _model("categorical", num_classes=10)
    x, y = digits16[0][:3], digits16[1][:3]
    assert iwae_bound(model, x, 4, y).shape == (3,)
    assert negative_elbo(model, x, y, samples=2).shape == (3,)


# ----------------------------------------------------------------------------- active units


def test_active_units_of_an_encoder_ignoring_x(digits16):
    """An encoder whose mean ignores x has 0 active units; the per-unit KL (d,) is the data mean of 1/2(mu^2 + s^2 - log s^2 - 1)."""
    model = _model("categorical")
    with torch.no_grad():
        model.encoder.net[-1].weight[:4].zero_()  # the mean half of [mu, logvar]
        model.encoder.net[-1].bias[:4].copy_(torch.tensor([0.5, -1.0, 0.0, 2.0]))
    count, kl = active_units(model, digits16[0])
    assert count == 0
    assert kl.shape == (4,)
    with torch.no_grad():
        mu, logvar = model.encode(digits16[0].float() / (K - 1))
    expected = kl_divergence(Normal(mu, torch.exp(logvar / 2)), Normal(0.0, 1.0)).mean(0)
    torch.testing.assert_close(kl, expected)


def test_active_units_counts_varying_means(digits16):
    """Units whose posterior mean varies across x by more than the threshold are counted; a huge threshold counts none."""
    model = _model("categorical")
    with torch.no_grad():
        model.encoder.net[-1].weight[:2].mul_(100)  # units 0 and 1 vary strongly with x
        model.encoder.net[-1].weight[2:4].zero_()  # units 2 and 3 do not vary at all
    count, _ = active_units(model, digits16[0])
    assert count == 2
    assert active_units(model, digits16[0], threshold=1e9)[0] == 0


def test_unconditional_vae_refuses_labels(digits16):
    """Passing labels to a VAE built without num_classes raises instead of silently ignoring them."""
    x_int, y = digits16
    with pytest.raises(ValueError, match="unconditional"):
        _model().encode(data.to_unit(x_int), y)

"""Tests for genbook.hvae: the top-down hierarchy's per-group KLs and likelihood against a hand-written forward pass,
the N(0, I) top prior, ancestral sampling, and that training lowers the loss."""

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from genbook import data
from genbook.hvae import HierarchicalVAE, HVAEConfig, hvae_loss
from genbook.train import fit
from genbook.vae import negative_elbo

K = data.DIGIT_LEVELS


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def digits():
    return data.digits("train").x_int


def _model(latent_dims=(3, 2)):
    return HierarchicalVAE(HVAEConfig(latent_dims=latent_dims, width=8, hidden=16))


def _randomize_priors(model):
    """Give every prior head nonzero weights (they start at zero), so the priors really depend on the context."""
    with torch.no_grad():
        for prior in model.priors:
            for p in prior.parameters():
                p.copy_(0.5 * torch.randn_like(p))


def _normal(mu, logvar):
    return Normal(mu, torch.exp(logvar / 2))


def _hand_forward(model, x_int, eps):
    """The two-group ELBO pieces written out: h = enc(x), c_0 = 0, z_1 ~ q(z_1|h), c_1 = c_0 + f_1(c_0, z_1), z_2 ~ q(z_2|h, c_1), ..."""
    h = model.encoder(x_int.float() / (K - 1))
    c = torch.zeros_like(h)
    kls = []
    for level, e in enumerate(eps):
        mu_q, logvar_q = model.posteriors[level](torch.cat([h, c], 1)).chunk(2, 1)
        logvar_q = logvar_q.clamp(-12, 8)
        if level == 0:
            mu_p, logvar_p = torch.zeros_like(mu_q), torch.zeros_like(logvar_q)  # p(z_1) = N(0, I)
        else:
            mu_p, logvar_p = model.priors[level - 1](c).chunk(2, 1)
        kls.append(kl_divergence(_normal(mu_q, logvar_q), _normal(mu_p, logvar_p)).sum(1))
        z = mu_q + torch.exp(logvar_q / 2) * e
        c = c + model.updates[level](torch.cat([c, z], 1))
    logits = model.decoder(torch.nn.functional.silu(c)).view(len(x_int), K, 1, 8, 8)
    log_px_z = torch.log_softmax(logits, 1).gather(1, x_int.unsqueeze(1)).flatten(1).sum(1)
    return log_px_z, kls


def test_needs_two_groups():
    """A hierarchy with fewer than two latent groups raises ValueError."""
    with pytest.raises(ValueError, match="two"):
        HierarchicalVAE(HVAEConfig(latent_dims=(8,)))


@pytest.mark.parametrize("latent_dims", [(3, 2), (4, 2, 3)])
def test_group_terms_shapes_and_signs(latent_dims, digits):
    """group_terms gives log p(x | z) <= 0 of shape (B,) and one KL per group, each (B,) and >= 0."""
    model = _model(latent_dims)
    _randomize_priors(model)
    log_px_z, kls = model.group_terms(digits[:5])
    assert log_px_z.shape == (5,) and (log_px_z <= 0).all()
    assert len(kls) == len(latent_dims)
    for kl in kls:
        assert kl.shape == (5,) and (kl >= 0).all()


def test_group_terms_match_hand_forward_pass(digits):
    """log p(x | z) and both group KLs (KL(q(z_l|z_<l, x) || p(z_l|z_<l)) by torch.distributions) match a hand forward pass, same eps."""
    model = _model()
    _randomize_priors(model)
    x = digits[:4]
    torch.manual_seed(8)
    log_px_z, kls = model.group_terms(x)
    torch.manual_seed(8)
    eps = [torch.randn(4, 3), torch.randn(4, 2)]
    with torch.no_grad():
        expected_rec, expected_kls = _hand_forward(model, x, eps)
    torch.testing.assert_close(log_px_z.detach(), expected_rec)
    for kl, expected in zip(kls, expected_kls):
        torch.testing.assert_close(kl.detach(), expected)


def test_top_prior_is_standard_normal(digits):
    """The first group's KL is 1/2 sum(mu^2 + s^2 - log s^2 - 1) of its posterior, whatever the other prior heads' weights."""
    model = _model()
    _randomize_priors(model)  # the lower groups' heads must not leak into the top prior
    x = digits[:6]
    _, kls = model.group_terms(x)
    with torch.no_grad():
        h = model.encoder(x.float() / (K - 1))
        mu, logvar = model.posteriors[0](torch.cat([h, torch.zeros_like(h)], 1)).chunk(2, 1)
        logvar = logvar.clamp(-12, 8)
    torch.testing.assert_close(kls[0].detach(), 0.5 * (mu**2 + logvar.exp() - logvar - 1).sum(1))


def test_lower_priors_start_as_standard_normal():
    """Fresh prior heads output zeros, so at initialization every p(z_l | z_<l) is N(0, I)."""
    model = _model((3, 2, 4))
    c = torch.randn(5, 16)
    for level in range(3):
        mu, logvar = model._prior(level, c)
        assert torch.equal(mu, torch.zeros_like(mu)) and torch.equal(logvar, torch.zeros_like(logvar))


def test_elbo_terms_sum_the_group_kls(digits):
    """elbo_terms returns group_terms' log p(x | z) and the sum of its per-group KLs, for the same eps."""
    model = _model((3, 2, 4))
    _randomize_priors(model)
    x = digits[:4]
    torch.manual_seed(1)
    log_px_z, kls = model.group_terms(x)
    torch.manual_seed(1)
    rec, kl = model.elbo_terms(x)
    torch.testing.assert_close(rec, log_px_z)
    torch.testing.assert_close(kl, kls[0] + kls[1] + kls[2])


def test_elbo_terms_refuse_labels(digits):
    """The hierarchical VAE is unconditional: elbo_terms with labels raises ValueError."""
    with pytest.raises(ValueError, match="unconditional"):
        _model().elbo_terms(digits[:2], torch.zeros(2, dtype=torch.long))


def test_negative_elbo_works_for_the_hierarchy(digits):
    """genbook.vae.negative_elbo accepts the hierarchical VAE and gives -(log p(x|z) - sum KL) per image, same eps."""
    model = _model()
    x = digits[:3]
    torch.manual_seed(2)
    got = negative_elbo(model, x, samples=1)
    torch.manual_seed(2)
    log_px_z, kls = model.group_terms(x)
    torch.testing.assert_close(got, (kls[0] + kls[1] - log_px_z).detach())


def test_sample_shapes_range_and_seed():
    """sample(n) gives (n, 1, 8, 8) in [0, 1], equal for equal seeded generators and different for other seeds."""
    model = _model()
    _randomize_priors(model)
    a = model.sample(4, generator=torch.Generator().manual_seed(3))
    b = model.sample(4, generator=torch.Generator().manual_seed(3))
    c = model.sample(4, generator=torch.Generator().manual_seed(4))
    assert a.shape == (4, 1, 8, 8)
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_hvae_loss_is_negative_elbo_and_logs_each_group(digits):
    """hvae_loss = mean(-log p(x|z) + sum_l KL_l) with the same eps, logging rec, kl1 and kl2."""
    model = _model()
    x = digits[:8]
    torch.manual_seed(4)
    loss, logs = hvae_loss(model, x)
    torch.manual_seed(4)
    log_px_z, kls = model.group_terms(x)
    torch.testing.assert_close(loss, (-log_px_z + kls[0] + kls[1]).mean())
    assert set(logs) == {"rec", "kl1", "kl2"}
    assert logs["kl2"] == pytest.approx(kls[1].mean().item(), rel=1e-6)


def test_hvae_loss_decreases_with_fit(digits):
    """150 Adam steps on 256 digits lower the mean hvae_loss of the last 20 steps well below the first 20."""
    model = _model()
    hist = fit(model, hvae_loss, data.Batches(digits[:256], batch_size=16), steps=150, lr=3e-3, progress=False)
    first, last = sum(hist.loss[:20]) / 20, sum(hist.loss[-20:]) / 20
    assert last < first - 30, (first, last)
    assert set(hist.logs) == {"rec", "kl1", "kl2", "grad_norm"}

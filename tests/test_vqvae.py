"""Tests for genbook.vqvae: the quantizer against hand formulas, the VQ-VAE's code-grid API, the stage-2 prior."""

import math

import pytest
import torch

from genbook import data
from genbook.metrics import categorical_nll
from genbook.train import fit
from genbook.vqvae import (
    VQVAE,
    CodePrior,
    CodePriorConfig,
    VectorQuantizer,
    VQVAEConfig,
    code_nll,
    nll_bound,
    prior_loss,
    vqvae_loss,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _set_codebook(vq: VectorQuantizer, codebook: torch.Tensor) -> None:
    """Put a known codebook in place (with EMA statistics N_k = 1, m_k = e_k, as a fresh quantizer has)."""
    with torch.no_grad():
        vq.codebook.copy_(codebook)
        if vq.ema:
            vq.embed_sum.copy_(codebook)
            vq.cluster_size.fill_(1.0)


# ----------------------------------------------------------------------------- the quantizer


def test_nearest_code_matches_brute_force():
    """codes(u, v) = argmin_k sum_d (z_e[d, u, v] - e_k[d])^2, found by looping over codes; z_q is that code's vector."""
    vq = VectorQuantizer(num_codes=5, dim=3).eval()
    z_e = torch.randn(2, 3, 2, 3)
    out = vq(z_e)
    assert out.codes.shape == (2, 2, 3) and out.codes.dtype == torch.long
    for b in range(2):
        for u in range(2):
            for v in range(3):
                dists = [sum((z_e[b, d, u, v].item() - vq.codebook[k, d].item()) ** 2 for d in range(3)) for k in range(5)]
                k_star = min(range(5), key=lambda k: dists[k])
                assert out.codes[b, u, v].item() == k_star
                torch.testing.assert_close(out.z_q[b, :, u, v], vq.codebook[k_star])
    torch.testing.assert_close(vq.lookup(out.codes), out.z_q)


def test_straight_through_gradient_is_identity():
    """With z_q^ST = z_e + sg[z_q - z_e], dL/dz_e equals dL/dz_q^ST for any downstream L."""
    vq = VectorQuantizer(num_codes=8, dim=4).eval()
    z_e = torch.randn(3, 4, 2, 2, requires_grad=True)
    z_q_st = vq(z_e).z_q
    loss = (torch.sin(z_q_st) * torch.arange(16.0).view(1, 4, 2, 2)).sum()  # any nonlinear function of z_q^ST
    (grad_st,) = torch.autograd.grad(loss, z_q_st, retain_graph=True)
    (grad_e,) = torch.autograd.grad(loss, z_e)
    torch.testing.assert_close(grad_e, grad_st)


def test_commitment_loss_hand_formula():
    """EMA mode: loss = commitment = beta (1/B) sum_b sum_{d,u,v} (z_e - e_c)^2, summed element by element."""
    vq = VectorQuantizer(num_codes=6, dim=3, beta=0.3).eval()
    z_e = torch.randn(2, 3, 2, 2)
    out = vq(z_e)
    total = 0.0
    for b in range(2):
        for u in range(2):
            for v in range(2):
                k = out.codes[b, u, v].item()
                total += sum((z_e[b, d, u, v].item() - vq.codebook[k, d].item()) ** 2 for d in range(3))
    assert out.commitment.item() == pytest.approx(0.3 * total / 2, rel=1e-5)
    assert out.loss.item() == pytest.approx(out.commitment.item(), rel=1e-6)


def test_codebook_loss_without_ema():
    """ema=False: loss = (1 + beta) ||z_e - z_q||^2 per image, and only ||sg[z_e] - z_q||^2 moves code k:
    dL/de_k = (2 / B) sum_{positions with c = k} (e_k - z_e)."""
    vq = VectorQuantizer(num_codes=4, dim=2, beta=0.25, ema=False).eval()
    assert any(p is vq.codebook for p in vq.parameters())
    z_e = torch.randn(3, 2, 2, 2)
    out = vq(z_e)
    assert out.loss.item() == pytest.approx(out.commitment.item() * 1.25 / 0.25, rel=1e-5)
    out.loss.backward()
    expected = torch.zeros(4, 2)
    for b in range(3):
        for u in range(2):
            for v in range(2):
                k = out.codes[b, u, v]
                expected[k] += 2 * (vq.codebook[k].detach() - z_e[b, :, u, v]) / 3
    torch.testing.assert_close(vq.codebook.grad, expected)


def test_ema_update_matches_hand_computation():
    """One training step: N_k <- d N_k + (1-d) n_k, m_k <- d m_k + (1-d) sum z, e_k = m_k / N~_k (Laplace-smoothed)."""
    K, D, decay, eps = 4, 2, 0.9, 1e-5
    vq = VectorQuantizer(num_codes=K, dim=D, decay=decay, eps=eps)
    codebook = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [-4.0, -4.0]])
    _set_codebook(vq, codebook)
    # five positions: three near code 0, two near code 1, none near codes 2 and 3
    points = torch.tensor([[0.1, 0.2], [-0.3, 0.1], [0.2, -0.1], [3.8, 0.3], [4.1, -0.2]])
    z_e = points.T.reshape(1, D, 1, 5)  # (B=1, D, h=1, w=5)
    vq.train()(z_e)
    n = [3, 2, 0, 0]
    sums = [points[:3].sum(0), points[3:].sum(0), torch.zeros(2), torch.zeros(2)]
    N = [decay * 1.0 + (1 - decay) * n[k] for k in range(K)]
    m = [decay * codebook[k] + (1 - decay) * sums[k] for k in range(K)]
    total = sum(N)
    smoothed = [(N[k] + eps) / (total + K * eps) * total for k in range(K)]
    torch.testing.assert_close(vq.cluster_size, torch.tensor(N))
    torch.testing.assert_close(vq.embed_sum, torch.stack(m))
    torch.testing.assert_close(vq.codebook, torch.stack([m[k] / smoothed[k] for k in range(K)]))
    before = vq.codebook.clone()
    vq.eval()(z_e)
    torch.testing.assert_close(vq.codebook, before)  # evaluation never moves the codebook


def test_dead_code_is_revived():
    """When every input sits at code 0, codes 1..3 go unused; after ``revive_after`` batches each is reset to an input."""
    vq = VectorQuantizer(num_codes=4, dim=2, revive_after=3).train()
    _set_codebook(vq, torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0], [5.0, -5.0]]))
    for _ in range(3):
        z_e = 0.01 * torch.randn(2, 2, 3, 3)  # all 18 positions nearest code 0
        assert vq.revived == 0
        out = vq(z_e)
        assert (out.codes == 0).all()
    assert vq.revived == 3
    inputs = z_e.permute(0, 2, 3, 1).reshape(-1, 2)  # (18, D)
    for k in (1, 2, 3):
        assert torch.isclose(inputs, vq.codebook[k]).all(1).any(), f"code {k} was not moved onto an encoder output"
    assert (vq.unused == 0).all()


def test_perplexity_uniform_and_single_code():
    """perplexity = exp(-sum_k p_k log p_k): K when every code is used equally often, 1 when one code takes all."""
    K = 8
    vq = VectorQuantizer(num_codes=K, dim=3).eval()
    uniform = vq.codebook.T.reshape(1, 3, 2, 4).repeat(2, 1, 1, 1)  # each code exactly twice
    assert vq(uniform).perplexity.item() == pytest.approx(K, rel=1e-5)
    single = vq.codebook[5].view(1, 3, 1, 1).expand(2, 3, 2, 2)
    assert vq(single).perplexity.item() == pytest.approx(1.0, abs=1e-6)


# ----------------------------------------------------------------------------- the VQ-VAE


@pytest.mark.parametrize("grid", [4, 2])
def test_code_grid_api_shapes(grid):
    """encode_codes: (B, 1, 8, 8) -> (B, g, g) codes; decode_codes -> (B, 17, 1, 8, 8); codes_to_images in [0, 1]."""
    model = VQVAE(VQVAEConfig(grid=grid, num_codes=16, width=16)).eval()
    x = data.digits("val").unit()[:5]
    codes = model.encode_codes(x)
    assert codes.shape == (5, grid, grid) and codes.dtype == torch.long
    assert 0 <= codes.min() and codes.max() < 16
    logits, vq = model(x)
    assert logits.shape == (5, 17, 1, 8, 8)
    torch.testing.assert_close(vq.codes, codes)
    torch.testing.assert_close(model.decode_codes(codes), logits)
    images = model.codes_to_images(codes)
    assert images.shape == x.shape and images.min() >= 0 and images.max() <= 1
    expected = sum(logits.softmax(1)[:, k] * k / 16 for k in range(17))  # E[x] = sum_k p_k k / (K - 1)
    torch.testing.assert_close(images, expected)


def test_grid_must_divide_size_by_a_power_of_two():
    """A 3x3 code grid for 8x8 images is rejected."""
    with pytest.raises(ValueError):
        VQVAE(VQVAEConfig(grid=3))


def test_vqvae_loss_decreases_with_fit():
    """200 fit steps on 256 digits bring the stage-1 loss below 60% of its start, with the codebook in use (perplexity > 4)."""
    model = VQVAE(VQVAEConfig(num_codes=16, width=16, code_dim=8))
    x_int = data.digits("train").x_int[:256]
    with torch.no_grad():
        before = vqvae_loss(model.eval(), x_int)[0].item()
    hist = fit(model, vqvae_loss, data.Batches(x_int, batch_size=16), steps=200, lr=3e-3, progress=False)
    with torch.no_grad():
        after, logs = vqvae_loss(model.eval(), x_int)
    assert after.item() < 0.6 * before, (before, after.item())
    assert set(hist.logs) == {"rec", "commitment", "perplexity", "grad_norm"}
    assert 4 < logs["perplexity"] <= 16


# ----------------------------------------------------------------------------- the stage-2 prior


def _prior(num_codes: int = 8, grid: int = 3) -> CodePrior:
    return CodePrior(CodePriorConfig(num_codes=num_codes, grid=grid, dim=16, depth=1, heads=2)).eval()


def test_prior_loss_of_uniform_prior():
    """A prior whose output head is zero predicts 1/K everywhere: -log p(c) = g^2 log K for every grid."""
    prior = _prior(num_codes=8, grid=3)
    torch.nn.init.zeros_(prior.net.head.weight)
    torch.nn.init.zeros_(prior.net.head.bias)
    codes = torch.randint(0, 8, (4, 3, 3))
    assert prior_loss(prior, codes).item() == pytest.approx(9 * math.log(8), rel=1e-6)
    torch.testing.assert_close(code_nll(prior, codes), torch.full((4,), 9 * math.log(8)))


def test_prior_is_causal():
    """Changing code j leaves the predictions for positions 0..j unchanged (position i sees only c_<i)."""
    prior = _prior()
    codes = torch.randint(0, 8, (2, 3, 3))
    changed = codes.clone()
    j = 4
    changed.view(2, -1)[:, j] = (codes.view(2, -1)[:, j] + 1) % 8
    a, b = prior(codes), prior(changed)
    torch.testing.assert_close(a[:, : j + 1], b[:, : j + 1])
    assert not torch.allclose(a[:, j + 1 :], b[:, j + 1 :])


def test_sample_shapes_and_seeded_determinism():
    """sample(n, generator) gives (n, g, g) long codes; the same seed gives the same grids."""
    prior = _prior()
    a = prior.sample(6, generator=torch.Generator().manual_seed(3))
    b = prior.sample(6, generator=torch.Generator().manual_seed(3))
    assert a.shape == (6, 3, 3) and a.dtype == torch.long
    assert 0 <= a.min() and a.max() < 8
    torch.testing.assert_close(a, b)


def test_sample_first_code_follows_the_prior():
    """The Gumbel-max draw of c_1 has the frequencies softmax(logits of p(c_1)), within sampling error."""
    prior = _prior(num_codes=4, grid=2)
    n = 20000
    first = prior.sample(n, generator=torch.Generator().manual_seed(0))[:, 0, 0]
    with torch.no_grad():
        p = prior(torch.zeros(1, 2, 2, dtype=torch.long))[0, 0].softmax(0)  # p(c_1) depends on the start token only
    freq = torch.bincount(first, minlength=4).float() / n
    torch.testing.assert_close(freq, p, atol=0.015, rtol=0)


def test_nll_bound_with_uniform_prior():
    """With a uniform prior, the bound is the reconstruction NLL -log p(x | z_q) plus g^2 log K per image."""
    model = VQVAE(VQVAEConfig(num_codes=8, width=16)).eval()
    prior = _prior(num_codes=8, grid=4)
    torch.nn.init.zeros_(prior.net.head.weight)
    torch.nn.init.zeros_(prior.net.head.bias)
    x_int = data.digits("val").x_int[:4]
    logits, _ = model(data.to_unit(x_int))
    expected = categorical_nll(logits, x_int) + 16 * math.log(8)
    torch.testing.assert_close(nll_bound(model, prior, x_int), expected.detach())

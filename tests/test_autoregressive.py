"""Tests for genbook.autoregressive: causality by gradients, the blind spot and its removal, sampling, MaskGIT."""

import math

import pytest
import torch

from genbook import autoregressive as ar
from genbook import data, metrics
from genbook.vqvae import code_nll


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


S = 8


def _earlier(i: int, j: int, size: int = S) -> torch.Tensor:
    """(S, S) bool: the pixels strictly before (i, j) in raster order."""
    order = torch.arange(size * size).view(size, size)
    return order < i * size + j


def _small(cls, **kw):
    cfg = ar.PixelCNNConfig(channels=8, **{"layers": 5, **kw})
    return cls(cfg).double()


@pytest.mark.parametrize("mask_type", ["A", "B"])
def test_masked_convolution_is_causal(mask_type):
    conv = ar.MaskedConv2d(1, 4, 5, mask_type).double()
    x = torch.rand(2, 1, S, S, dtype=torch.float64, requires_grad=True)
    for i, j in ((0, 0), (3, 4), (7, 7)):
        (grad,) = torch.autograd.grad(conv(x)[:, :, i, j].sum(), x)
        seen = grad.abs().sum((0, 1)) > 0
        allowed = _earlier(i, j).clone()
        allowed[i, j] = mask_type == "B"
        assert not (seen & ~allowed).any()  # nothing at or after (i, j) for A, after (i, j) for B
        assert seen[i, j] == (mask_type == "B")


@pytest.mark.parametrize("cls", [ar.PixelCNN, ar.GatedPixelCNN])
def test_models_never_see_the_current_or_later_pixels(cls):
    model = _small(cls)
    for pos in [(0, 0), (2, 5), (4, 0), (7, 7)]:
        seen = ar.dependency_map(model, pos)
        assert not (seen & ~_earlier(*pos)).any()


def test_gated_stacks_have_no_blind_spot_and_plain_stacks_do():
    gated, plain = _small(ar.GatedPixelCNN), _small(ar.PixelCNN)
    missing_plain = 0
    for i in range(S):
        for j in range(S):
            earlier = _earlier(i, j)
            assert torch.equal(ar.dependency_map(gated, (i, j)), earlier), (i, j)
            missing_plain += int((earlier & ~ar.dependency_map(plain, (i, j))).sum())
    assert missing_plain > 0  # the blind spot: earlier pixels above and to the right that plain stacks never reach


def test_pixel_nll_is_the_sum_of_per_pixel_cross_entropies():
    model = _small(ar.GatedPixelCNN).float()
    x = data.digits("train").x_int[:3]
    logits = model(data.to_unit(x))  # (3, 17, 1, 8, 8)
    by_hand = -(logits.log_softmax(1).gather(1, x.unsqueeze(1)).squeeze(1)).flatten(1).sum(1)
    torch.testing.assert_close(ar.pixel_nll(model, x), by_hand)
    assert ar.pixel_loss(model, x).shape == ()


def test_marginal_nll_sums_over_classes():
    model = ar.GatedPixelCNN(ar.PixelCNNConfig(channels=8, layers=1, num_classes=3))
    x = data.digits("train").x_int[:4]
    prior = torch.tensor([0.2, 0.3, 0.5])
    cond = torch.stack([ar.pixel_nll(model, x, torch.full((4,), c)) for c in range(3)], 1)  # (4, 3)
    low = cond.min(1, keepdim=True).values  # factor out the largest p(x | y) so exp does not underflow
    expected = low.squeeze(1) - torch.log((prior * torch.exp(-(cond - low))).sum(1))
    torch.testing.assert_close(ar.marginal_nll(model, x, prior), expected, rtol=1e-5, atol=1e-4)
    assert (ar.marginal_nll(model, x, prior) <= cond.min(1).values - prior.log().min() + 1e-4).all()
    with pytest.raises(ValueError, match="labels"):
        model(data.to_unit(x))


def test_sampling_shapes_range_and_determinism():
    model = ar.GatedPixelCNN(ar.PixelCNNConfig(channels=8, layers=1, num_classes=10)).eval()
    y = torch.arange(5)
    a = ar.sample_pixels(model, 5, y=y, generator=torch.Generator().manual_seed(3))
    b = ar.sample_pixels(model, 5, y=y, generator=torch.Generator().manual_seed(3))
    c = ar.sample_pixels(model, 5, y=y, generator=torch.Generator().manual_seed(4))
    assert a.shape == (5, 1, S, S) and a.dtype == torch.long
    assert a.min() >= 0 and a.max() < data.DIGIT_LEVELS
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_sampling_counts_one_pass_per_pixel():
    model = ar.PixelCNN(ar.PixelCNNConfig(channels=8, layers=1, first_kernel=3))
    counted = metrics.NFECounter(model)
    counted.cfg = model.cfg
    ar.sample_pixels(counted, 2, size=4)
    assert counted.nfe == 16


def test_pixel_transformer_is_causal_over_grey_levels():
    tf = ar.pixel_transformer(dim=16, depth=1, heads=2, dropout=0.0).eval()
    x = data.digits("train").x_int[:2, 0]  # (2, 8, 8) grids of levels
    logits = tf(x)  # (2, 64, 17)
    changed = x.clone()
    changed.view(2, -1)[:, 30:] = 16 - changed.view(2, -1)[:, 30:]  # alter every token from position 30 on
    torch.testing.assert_close(tf(changed)[:, :31], logits[:, :31])  # position i predicts token i from tokens < i
    assert (tf(changed)[:, 31:] - logits[:, 31:]).abs().max() > 0
    assert code_nll(tf, x).shape == (2,)
    assert tf.sample(3, generator=torch.Generator().manual_seed(0)).shape == (3, 8, 8)


def test_kv_cache_gives_the_full_pass_logits_and_the_same_samples():
    torch.manual_seed(0)
    tf = ar.pixel_transformer(dim=32, depth=2, heads=4, dropout=0.0).eval()
    for p in tf.parameters():  # a trained-looking spread of logits, not the near-uniform ones of a fresh init
        p.data.normal_(0, 0.3)
    x = data.digits("train").x_int[:3, 0]  # (3, 8, 8)
    seq = torch.cat([torch.full((3, 1), tf.start), x.flatten(1)[:, :-1]], 1)  # what forward feeds the network
    full = tf.net(seq)  # (3, 64, 17)
    cache = tf.net.kv_cache(3)
    with torch.no_grad():
        stepped = torch.stack([tf.net.step(seq[:, t], t, cache) for t in range(64)], 1)
    torch.testing.assert_close(stepped, full, atol=1e-5, rtol=1e-5)
    cached = tf.sample(50, generator=torch.Generator().manual_seed(1))
    uncached = tf.sample(50, generator=torch.Generator().manual_seed(1), kv_cache=False)
    assert torch.equal(cached, uncached)
    assert len(cached.unique()) > 5  # the draws are not all one level
    with pytest.raises(ValueError, match="outside"):
        tf.net.step(seq[:, 0], 64, cache)
    with pytest.raises(ValueError, match="causal"):
        ar.MaskGIT(ar.MaskGITConfig(vocab=5, grid=2, dim=8, depth=1, heads=2, dropout=0.0)).net.step(seq[:, 0], 0, cache)


def test_masking_schedule_and_random_mask_counts():
    assert ar.masking_schedule(0.0) == 1.0 and abs(ar.masking_schedule(1.0)) < 1e-12
    r = torch.linspace(0, 1, 5)
    torch.testing.assert_close(ar.masking_schedule(r), torch.cos(math.pi / 2 * r))
    torch.manual_seed(1)
    masked = ar.random_mask(2000, 16)
    counts = masked.sum(1)
    assert counts.min() >= 1 and counts.max() <= 16
    # E[ceil(16 cos(pi r / 2))] for r ~ U[0, 1): about 16 * 2 / pi + 0.5
    assert abs(counts.float().mean().item() - (16 * 2 / math.pi + 0.5)) < 0.4


def test_maskgit_loss_scores_masked_tokens_only():
    model = ar.MaskGIT(ar.MaskGITConfig(vocab=5, grid=2, dim=8, depth=1, heads=2, dropout=0.0))
    grids = torch.randint(0, 5, (16, 2, 2))
    torch.manual_seed(7)
    masked = ar.random_mask(16, 4)  # the mask maskgit_loss will draw with the same seed
    seq = grids.flatten(1)
    logits = model(seq.masked_fill(masked, model.mask_id))
    by_hand = torch.nn.functional.cross_entropy(logits[masked], seq[masked])
    torch.manual_seed(7)
    torch.testing.assert_close(ar.maskgit_loss(model, grids), by_hand)
    loss = ar.maskgit_loss(model, grids)
    assert loss.shape == () and loss > 0
    loss.backward()
    assert model.net.tok.weight.grad[model.mask_id].abs().sum() > 0  # the [MASK] embedding is trained


def test_maskgit_sampling_fills_every_token_in_the_given_number_of_passes():
    model = ar.MaskGIT(ar.MaskGITConfig(vocab=7, grid=4, dim=16, depth=1, heads=2)).eval()
    calls = []
    model.net.register_forward_hook(lambda *_: calls.append(1))
    for steps in (1, 4, 8):
        calls.clear()
        grids = ar.maskgit_sample(model, 6, steps=steps, generator=torch.Generator().manual_seed(0))
        assert len(calls) == steps
        assert grids.shape == (6, 4, 4) and grids.max() < 7 and grids.min() >= 0  # no [MASK] left
    again = ar.maskgit_sample(model, 6, steps=8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(grids, again)


class _SharpFirstHalf(torch.nn.Module):
    """A stand-in MaskGIT: certain about the first 8 of 16 positions, uniform over the rest; records its inputs."""

    def __init__(self):
        super().__init__()
        self.cfg = ar.MaskGITConfig(vocab=5, grid=4)
        self.mask_id = 5
        self.dummy = torch.nn.Parameter(torch.zeros(()))
        self.inputs = []

    def forward(self, tokens):
        self.inputs.append(tokens.clone())
        logits = torch.zeros(*tokens.shape, 5)
        logits[:, :8, 0] = 20.0
        return logits


def test_maskgit_confidence_order_keeps_the_sure_tokens_and_random_order_does_not():
    """After step 1 of 2, 5 of 16 tokens are kept: by confidence (no noise) always among the 8 certain positions; in
    random order, over 20 draws, the kept tokens land on the uncertain half too, about as often as on the certain."""
    kept_uncertain = {}
    for random_order in (False, True):
        model, count = _SharpFirstHalf(), 0
        for seed in range(20):
            ar.maskgit_sample(
                model, 4, steps=2, choice_temperature=0.0, random_order=random_order, generator=torch.Generator().manual_seed(seed)
            )
            kept = model.inputs[-1] != model.mask_id  # the grid the second pass sees
            assert int(kept.sum(1).unique()) == 5
            count += int(kept[:, 8:].sum())
        kept_uncertain[random_order] = count / (20 * 4 * 5)
    assert kept_uncertain[False] == 0
    assert 0.3 < kept_uncertain[True] < 0.7

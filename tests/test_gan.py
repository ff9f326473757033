"""Tests for genbook.gan: the GAN losses against -log D / log(1 - D) written out (survey eq. 34-36), WGAN losses and
clipping, gradient penalty and R1 against exact linear-critic values, MinibatchStd against numpy, conditional critics'
shapes and the projection formula, train_gan on tiny 2-D MLPs, StyleGAN mixing, and the Dirac-GAN's exact dynamics."""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from genbook.gan import (
    LOSSES,
    ACGANDiscriminator,
    ConcatDiscriminator,
    ConditionalGenerator,
    MinibatchStd,
    ProjectionDiscriminator,
    StyleGenerator,
    clip_weights,
    d_loss,
    dirac_gan,
    g_loss_minimax,
    g_loss_nonsaturating,
    gradient_penalty,
    r1_penalty,
    train_gan,
    wgan_critic_loss,
    wgan_g_loss,
)
from genbook.nets import MLP, DCGANDiscriminator

Z_DIM = 4
K = 3  # classes in the conditional tests


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _log_d(f):
    """log D = log sigmoid(f), written out naively (fine for moderate f)."""
    return torch.log(torch.sigmoid(f))


def _log_one_minus_d(f):
    """log(1 - D) = log(1 - sigmoid(f)), written out naively (fine for moderate f)."""
    return torch.log(1 - torch.sigmoid(f))


class _Linear(nn.Module):
    """C(x) = <a, flatten(x)>, the critic whose input gradient is a everywhere."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.a = nn.Parameter(a.clone())

    def forward(self, x):
        return x.flatten(1) @ self.a  # (B, D) @ (D,) -> (B,)


class _LabelLinear(nn.Module):
    """C(x, y) = <A[y], x>: a label-dependent linear critic, input gradient A[y]."""

    def __init__(self, A: torch.Tensor):
        super().__init__()
        self.A = nn.Parameter(A.clone())

    def forward(self, x, y):
        return (self.A[y] * x).sum(1)


def _batches(batch=16, dim=2, labels=False, counter=None):
    """An endless stream of 2-D Gaussian data (optionally with labels); counter[0] counts the batches drawn."""
    while True:
        if counter is not None:
            counter[0] += 1
        x = torch.randn(batch, dim) * 0.5 + 1.0
        yield (x, torch.randint(0, K, (batch,))) if labels else x


def _image_batches(batch=8):
    """An endless stream of (8x8 images in [-1, 1], labels) batches."""
    while True:
        yield torch.rand(batch, 1, 8, 8) * 2 - 1, torch.randint(0, K, (batch,))


def _mlps():
    return MLP(Z_DIM, 2, (16,)), MLP(2, 1, (16,))


# ----------------------------------------------------------------------------- losses (eq. 34-36)


def test_d_loss_matches_cross_entropy_formula():
    """d_loss = -mean log D(x) - mean log(1 - D(G(z))) (eq. 35) for moderate logits."""
    real, fake = torch.randn(7, dtype=torch.float64) * 3, torch.randn(5, dtype=torch.float64) * 3
    expected = -_log_d(real).mean() - _log_one_minus_d(fake).mean()
    torch.testing.assert_close(d_loss(real, fake), expected)


def test_g_loss_minimax_matches_formula():
    """g_loss_minimax = mean log(1 - D(G(z))) (eq. 34) for moderate logits."""
    fake = torch.randn(9, dtype=torch.float64) * 3
    torch.testing.assert_close(g_loss_minimax(fake), _log_one_minus_d(fake).mean())


def test_g_loss_nonsaturating_matches_formula():
    """g_loss_nonsaturating = -mean log D(G(z)) (eq. 36) for moderate logits, checked in numpy."""
    fake = np.random.default_rng(0).normal(size=9) * 3
    expected = -np.log(1 / (1 + np.exp(-fake))).mean()
    assert g_loss_nonsaturating(torch.from_numpy(fake)).item() == pytest.approx(expected, rel=1e-12)


def test_losses_finite_at_large_logits():
    """At |logits| = 1000 the naive formulas overflow to inf, the package's losses stay finite and take their asymptotes."""
    big = torch.tensor([1000.0, -1000.0])
    assert torch.isinf(_log_d(big)).any()  # the naive form fails here
    # softplus(t) -> max(t, 0): real logits [1000, -1000] give [0, 1000], fake [1000, -1000] give [1000, 0]
    assert d_loss(big, big).item() == pytest.approx(1000.0)
    assert g_loss_minimax(big).item() == pytest.approx(-500.0)
    assert g_loss_nonsaturating(big).item() == pytest.approx(500.0)
    for value in (d_loss(big, big), g_loss_minimax(big), g_loss_nonsaturating(big)):
        assert torch.isfinite(value)


def test_minimax_gradient_vanishes_nonsaturating_does_not():
    """At a confidently rejected fake (logit -10) d/df of the minimax loss is ~ -sigmoid(-10), the non-saturating one ~ -1."""
    f = torch.tensor([-10.0], dtype=torch.float64, requires_grad=True)
    (g_mm,) = torch.autograd.grad(g_loss_minimax(f), f)
    (g_ns,) = torch.autograd.grad(g_loss_nonsaturating(f), f)
    # d/df log(1 - sigmoid f) = -sigmoid f ; d/df -log sigmoid f = -(1 - sigmoid f)
    assert g_mm.item() == pytest.approx(-1 / (1 + math.exp(10)), rel=1e-9)
    assert g_ns.item() == pytest.approx(-1 / (1 + math.exp(-10)), rel=1e-9)
    assert abs(g_mm.item()) < 1e-4 and abs(g_ns.item()) > 0.99


def test_wgan_losses():
    """wgan_critic_loss = mean C(fake) - mean C(real) and wgan_g_loss = -mean C(fake) (eq. 38)."""
    real, fake = torch.tensor([1.0, 2.0, 6.0]), torch.tensor([-1.0, 4.0])
    assert wgan_critic_loss(real, fake).item() == pytest.approx(1.5 - 3.0)
    assert wgan_g_loss(fake).item() == pytest.approx(-1.5)


def test_clip_weights_clamps_every_parameter():
    """After clip_weights(c) every parameter lies in [-c, c], and entries already inside are unchanged."""
    net = MLP(2, 1, (8,))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(10)
    before = [p.detach().clone() for p in net.parameters()]
    clip_weights(net, 0.05)
    for p, b in zip(net.parameters(), before):
        assert p.abs().max() <= 0.05
        torch.testing.assert_close(p.detach(), b.clamp(-0.05, 0.05))


# ----------------------------------------------------------------------------- penalties (Box 4, eq. 40-41)


def test_gradient_penalty_zero_for_unit_linear_critic():
    """A critic <a, x> with ||a|| = 1 is 1-Lipschitz with unit gradient everywhere: the penalty is 0."""
    a = torch.randn(12, dtype=torch.float64)
    critic = _Linear(a / a.norm())
    real, fake = torch.randn(6, 3, 2, 2, dtype=torch.float64), torch.randn(6, 3, 2, 2, dtype=torch.float64)
    assert gradient_penalty(critic, real, fake).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("scale", [0.3, 2.5])
def test_gradient_penalty_linear_critic_exact(scale):
    """For C(x) = <a, x> the penalty is (||a|| - 1)^2 exactly, whatever the interpolation eps."""
    a = torch.randn(5, dtype=torch.float64)
    a = scale * a / a.norm()
    critic = _Linear(a)
    real, fake = torch.randn(8, 5, dtype=torch.float64), torch.randn(8, 5, dtype=torch.float64)
    assert gradient_penalty(critic, real, fake).item() == pytest.approx((scale - 1) ** 2, rel=1e-10)


def test_gradient_penalty_interpolates_with_generator():
    """For C(x) = ||x||^2 / 2 (gradient x_hat) the penalty is mean (||x_hat|| - 1)^2 with eps from the given generator."""
    real, fake = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    eps = torch.rand(6, 1, generator=torch.Generator().manual_seed(7)).to(torch.float64)
    x_hat = eps * real + (1 - eps) * fake
    expected = ((x_hat.norm(dim=1) - 1) ** 2).mean()
    got = gradient_penalty(lambda x: 0.5 * x.pow(2).sum(1), real, fake, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(got, expected)


def test_gradient_penalty_quadratic_critic_real_equals_fake():
    """With real = fake, x_hat = x for any eps, so C(x) = ||x||^2 / 2 gives mean (||x|| - 1)^2 on images."""
    x = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    expected = ((x.flatten(1).norm(dim=1) - 1) ** 2).mean()
    torch.testing.assert_close(gradient_penalty(lambda x: 0.5 * x.pow(2).flatten(1).sum(1), x, x.clone()), expected)


def test_gradient_penalty_passes_labels_through():
    """Extra args reach the critic: C(x, y) = <A[y], x> gives mean over the batch of (||A[y_i]|| - 1)^2."""
    A = torch.randn(K, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 2, 0])
    critic = _LabelLinear(A)
    expected = ((A[y].norm(dim=1) - 1) ** 2).mean()
    got = gradient_penalty(critic, torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64), y)
    torch.testing.assert_close(got, expected)


def test_gradient_penalty_differentiable_in_critic():
    """The penalty is built with create_graph: d/da (||a|| - 1)^2 = 2 (||a|| - 1) a / ||a||."""
    a = torch.randn(5, dtype=torch.float64) * 2
    critic = _Linear(a)
    gradient_penalty(critic, torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)).backward()
    torch.testing.assert_close(critic.a.grad, 2 * (a.norm() - 1) * a / a.norm())


def test_r1_penalty_linear_discriminator():
    """For D(x) = <a, x> + b the R1 penalty is ||a||^2 (eq. 40)."""
    D = nn.Linear(6, 1).double()
    assert r1_penalty(D, torch.randn(5, 6, dtype=torch.float64)).item() == pytest.approx(D.weight.pow(2).sum().item(), rel=1e-10)


@pytest.mark.parametrize("psi", [-3.0, 0.5, 2.0])
def test_r1_penalty_dirac_discriminator(psi):
    """For the Dirac-GAN's D(x) = psi x on scalar data the R1 penalty is psi^2."""
    x = torch.randn(7, 1, dtype=torch.float64)
    assert r1_penalty(lambda x: psi * x, x).item() == pytest.approx(psi**2, rel=1e-12)


def test_r1_penalty_quadratic_discriminator():
    """For D(x) = ||x||^2 the gradient is 2x, so R1 = mean 4 ||x||^2 (per-sample norms, then the batch mean)."""
    x = torch.randn(5, 2, 2, 2, dtype=torch.float64)
    expected = 4 * x.flatten(1).pow(2).sum(1).mean()
    torch.testing.assert_close(r1_penalty(lambda x: x.pow(2).flatten(1).sum(1), x), expected)


def test_r1_penalty_passes_labels_through():
    """Extra args reach the discriminator: D(x, y) = <A[y], x> gives mean ||A[y_i]||^2."""
    A = torch.randn(K, 4, dtype=torch.float64)
    y = torch.tensor([2, 2, 1, 0])
    torch.testing.assert_close(r1_penalty(_LabelLinear(A), torch.randn(4, 4, dtype=torch.float64), y), A[y].pow(2).sum(1).mean())


def test_r1_penalty_differentiable_in_weights():
    """R1 keeps the graph (create_graph): for D(x) = <a, x> + b, d/da ||a||^2 = 2a reaches D's weight."""
    D = nn.Linear(3, 1).double()
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    r1_penalty(D, x).backward()
    torch.testing.assert_close(D.weight.grad, 2 * D.weight.detach())
    assert x.grad is None  # the real batch is detached


# ----------------------------------------------------------------------------- MinibatchStd


def test_minibatch_std_vectors():
    """(B, F) -> (B, F + 1): x unchanged, the new feature = mean over features of the biased batch std (numpy)."""
    x = torch.randn(5, 3)
    out = MinibatchStd()(x)
    assert out.shape == (5, 4)
    torch.testing.assert_close(out[:, :3], x)
    expected = np.std(x.numpy(), axis=0, ddof=0).mean()
    torch.testing.assert_close(out[:, 3], torch.full((5,), float(expected)))


def test_minibatch_std_images():
    """(B, C, H, W) -> (B, C + 1, H, W): one constant channel equal to the mean over C, H, W of the biased batch std."""
    x = torch.randn(2, 3, 4, 4)
    out = MinibatchStd()(x)
    assert out.shape == (2, 4, 4, 4)
    torch.testing.assert_close(out[:, :3], x)
    expected = np.std(x.numpy(), axis=0, ddof=0).mean()  # for B = 2 the unbiased std would be sqrt(2) times larger
    torch.testing.assert_close(out[:, 3], torch.full((2, 4, 4), float(expected)))


def test_minibatch_std_identical_rows_zero():
    """A collapsed batch (all rows equal) gets a std feature of ~0."""
    x = torch.randn(1, 2, 3, 3).expand(6, -1, -1, -1)
    assert MinibatchStd()(x)[:, 2].abs().max() < 1e-6


# ----------------------------------------------------------------------------- conditional networks (eq. 42-46)


@pytest.mark.parametrize("size,channels", [(8, 1), (8, 3), (28, 1)])
def test_conditional_shapes(size, channels):
    """ConditionalGenerator -> (B, C, S, S); Concat/ACGAN(forward, class_logits, both)/Projection critics -> (B,) and (B, K)."""
    z, y = torch.randn(3, Z_DIM), torch.tensor([0, 1, 2])
    G = ConditionalGenerator(Z_DIM, K, channels, size, width=4)
    x = G(z, y)
    assert x.shape == (3, channels, size, size)
    assert ConcatDiscriminator(K, channels, size, width=4)(x, y).shape == (3,)
    ac = ACGANDiscriminator(K, channels, size, width=4)
    assert ac(x, y).shape == (3,) and ac(x).shape == (3,)
    assert ac.class_logits(x).shape == (3, K)
    logit, cls = ac.both(x)
    torch.testing.assert_close(logit, ac(x))
    torch.testing.assert_close(cls, ac.class_logits(x))
    assert ProjectionDiscriminator(K, channels, size, width=4)(x, y).shape == (3,)


def test_conditional_generator_uses_label():
    """Changing y with z fixed changes G(z, y) (the one-hot is part of the input)."""
    G = ConditionalGenerator(Z_DIM, K, width=4).eval()
    z = torch.randn(2, Z_DIM)
    assert not torch.allclose(G(z, torch.tensor([0, 0])), G(z, torch.tensor([1, 1])))


def test_concat_discriminator_uses_label():
    """Changing y with x fixed changes D(x | y) (the label enters as one-hot channels)."""
    D = ConcatDiscriminator(K, width=4)
    x = torch.randn(2, 1, 8, 8)
    assert not torch.allclose(D(x, torch.tensor([0, 0])), D(x, torch.tensor([2, 2])))


def test_projection_discriminator_formula():
    """D(x, y) = psi(phi(x)) + <v_y, phi(x)> (eq. 46), with psi's weight/bias and v_y read from the submodules."""
    D = ProjectionDiscriminator(K, width=4).double()
    with torch.no_grad():
        D.embed.weight.normal_()  # make the projection term visibly nonzero
    x, y = torch.randn(4, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 2, 1, 2])
    phi = D.net.features(x)  # (B, F)
    psi = phi @ D.net.head.weight[0] + D.net.head.bias[0]
    proj = (D.embed.weight[y] * phi).sum(1)
    torch.testing.assert_close(D(x, y), psi + proj)


# ----------------------------------------------------------------------------- train_gan


@pytest.mark.parametrize("loss", LOSSES)
def test_train_gan_each_loss(loss):
    """train_gan runs every loss on 2-D data with MLPs and records one finite value per step in each history."""
    G, D = _mlps()
    hist = train_gan(G, D, _batches(), steps=4, z_dim=Z_DIM, loss=loss, lr=1e-3)
    assert len(hist.d_loss) == len(hist.g_loss) == len(hist.g_grad_norm) == 4
    assert all(math.isfinite(v) for v in hist.d_loss + hist.g_loss + hist.g_grad_norm)
    assert all(v > 0 for v in hist.g_grad_norm)
    assert hist.seconds > 0
    assert not G.training and not D.training


def test_train_gan_wall_clock_budget():
    """seconds= stops training when the time is up (chapter 13's equal budgets); without any budget it refuses."""
    G, D = _mlps()
    hist = train_gan(G, D, _batches(), seconds=0.3, z_dim=Z_DIM)
    assert len(hist.g_loss) >= 2 and 0.3 <= hist.seconds < 2.0
    assert len(train_gan(G, D, _batches(), steps=3, seconds=60, z_dim=Z_DIM).g_loss) == 3  # whichever runs out first
    with pytest.raises(ValueError, match="budget"):
        train_gan(G, D, _batches(), z_dim=Z_DIM)


def test_train_gan_snapshot_is_the_shorter_run():
    """A snapshot after k steps holds the weights a run of k steps ends with, and later training does not change it."""
    torch.manual_seed(0)
    G, D = _mlps()
    G_short, D_short = copy.deepcopy(G), copy.deepcopy(D)
    torch.manual_seed(1)
    hist = train_gan(G, D, _batches(), steps=6, z_dim=Z_DIM, snapshot_at=(4,))
    torch.manual_seed(1)
    train_gan(G_short, D_short, _batches(), steps=4, z_dim=Z_DIM)
    assert list(hist.snapshots) == [4]
    for k, v in G_short.state_dict().items():
        torch.testing.assert_close(hist.snapshots[4][k], v, rtol=0, atol=0)
    assert any((hist.snapshots[4][k] != v).any() for k, v in G.state_dict().items())  # the run went on
    with pytest.raises(ValueError, match="snapshot_at"):
        train_gan(G, D, _batches(), steps=3, z_dim=Z_DIM, snapshot_at=(5,))


def test_train_gan_rejects_unknown_loss():
    """An unknown loss name raises ValueError naming it."""
    G, D = _mlps()
    with pytest.raises(ValueError, match="hinge"):
        train_gan(G, D, _batches(), steps=1, z_dim=Z_DIM, loss="hinge")


def test_train_gan_first_step_losses_by_hand():
    """The first recorded d_loss is eq. 35 plus gamma/2 R1 at the initial nets, written out with log sigmoid and autograd."""
    gamma = 3.0
    G, D = _mlps()
    real = torch.randn(16, 2)
    z = torch.randn(16, Z_DIM, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        fake = G(z)
        expected = -_log_d(D(real)).mean() - _log_one_minus_d(D(fake)).mean()
    x = real.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(D(x).sum(), x)
    expected = expected + gamma / 2 * grad.pow(2).sum(1).mean()
    hist = train_gan(G, D, iter([real]), steps=1, z_dim=Z_DIM, r1_gamma=gamma, generator_rng=torch.Generator().manual_seed(5))
    assert hist.d_loss[0] == pytest.approx(expected.item(), rel=1e-5)


def test_train_gan_n_critic():
    """With n_critic = 3, each of the steps draws three real batches, and the histories still have one entry per step."""
    counter = [0]
    G, D = _mlps()
    hist = train_gan(G, D, _batches(counter=counter), steps=2, z_dim=Z_DIM, loss="wgan-gp", n_critic=3)
    assert counter[0] == 6
    assert len(hist.d_loss) == len(hist.g_loss) == 2


def test_train_gan_wgan_clip_keeps_critic_in_box():
    """With wgan-clip, after training every critic parameter lies in [-c, c]."""
    G, D = _mlps()
    train_gan(G, D, _batches(), steps=3, z_dim=Z_DIM, loss="wgan-clip", clip_value=0.02, n_critic=2, lr=1e-2)
    for p in D.parameters():
        assert p.abs().max() <= 0.02


@pytest.mark.parametrize("D_cls", [ConcatDiscriminator, ProjectionDiscriminator])
def test_train_gan_conditional(D_cls):
    """conditional=True feeds (images, labels) batches and the labels to both nets; with R1 on top it stays finite."""
    G, D = ConditionalGenerator(Z_DIM, K, width=4), D_cls(K, width=4)
    hist = train_gan(G, D, _image_batches(), steps=2, z_dim=Z_DIM, conditional=True, r1_gamma=1.0)
    assert len(hist.d_loss) == 2
    assert all(math.isfinite(v) for v in hist.d_loss + hist.g_loss)


def test_train_gan_acgan():
    """acgan=True: the first D loss is eq. 35 plus the class cross-entropies on real and fake (eq. 44-45), written out."""
    G, D = ConditionalGenerator(Z_DIM, K, width=4), ACGANDiscriminator(K, width=4)
    real, y = torch.rand(8, 1, 8, 8) * 2 - 1, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    z = torch.randn(8, Z_DIM, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        fake = G.train()(z, y)  # train mode: batch-norm statistics of this batch, as in train_gan
        (real_logit, real_cls), (fake_logit, fake_cls) = D.both(real), D.both(fake)
        ce = lambda logits: -torch.log_softmax(logits, 1)[torch.arange(8), y].mean()
        expected = -_log_d(real_logit).mean() - _log_one_minus_d(fake_logit).mean() + ce(real_cls) + ce(fake_cls)
    rng = torch.Generator().manual_seed(3)
    hist = train_gan(G, D, iter([(real, y)]), steps=1, z_dim=Z_DIM, conditional=True, acgan=True, generator_rng=rng)
    assert hist.d_loss[0] == pytest.approx(expected.item(), rel=1e-5)


def test_train_gan_acgan_wgan_gp_runs():
    """acgan=True combines with wgan-gp and n_critic > 1 and records finite losses."""
    G, D = ConditionalGenerator(Z_DIM, K, width=4), ACGANDiscriminator(K, width=4)
    hist = train_gan(G, D, _image_batches(), steps=2, z_dim=Z_DIM, conditional=True, acgan=True, loss="wgan-gp", n_critic=2)
    assert len(hist.g_loss) == 2
    assert all(math.isfinite(v) for v in hist.d_loss + hist.g_loss)


def test_train_gan_r1():
    """r1_gamma > 0 on the unconditional 2-D setup runs and records finite losses."""
    G, D = _mlps()
    hist = train_gan(G, D, _batches(), steps=3, z_dim=Z_DIM, r1_gamma=10.0)
    assert len(hist.d_loss) == 3 and all(math.isfinite(v) for v in hist.d_loss)


# ----------------------------------------------------------------------------- StyleGAN mixing (Box 5)


def _style():
    return StyleGenerator(z_dim=8, w_dim=8, channels=2, width=8, mapping_layers=2).eval()


def test_style_generator_shape_and_range():
    """z (B, z_dim) -> (B, C, 8, 8) with every value strictly inside (-1, 1)."""
    x = _style()(torch.randn(3, 8))
    assert x.shape == (3, 2, 8, 8)
    assert x.abs().max() < 1


def test_style_mixing_crossovers():
    """crossover = num_layers is no mixing, crossover = 0 is forward(z_mix), an intermediate crossover differs from both."""
    G = _style()
    z, z_mix = torch.randn(3, 8), torch.randn(3, 8)
    plain, other = G(z), G(z_mix)
    torch.testing.assert_close(G(z, z_mix, crossover=G.num_layers), plain)
    torch.testing.assert_close(G(z, z_mix, crossover=0), other)
    for k in range(1, G.num_layers):
        mixed = G(z, z_mix, crossover=k)
        assert (mixed - plain).abs().max() > 1e-4 and (mixed - other).abs().max() > 1e-4


def test_style_mixing_with_itself_is_identity():
    """Mixing z with z_mix = z gives forward(z) at every crossover."""
    G = _style()
    z = torch.randn(2, 8)
    for k in range(G.num_layers + 1):
        torch.testing.assert_close(G(z, z.clone(), crossover=k), G(z))


# ----------------------------------------------------------------------------- Dirac-GAN


def _sigmoid(t):
    return 1 / (1 + math.exp(-t))


def test_dirac_gan_one_step_by_hand():
    """One step: theta' = theta + lr psi s, psi' = psi - lr (theta s + gamma psi), s = sigmoid(psi theta), from the losses."""
    # D minimizes softplus(0) + softplus(psi theta) (+ gamma/2 psi^2): d/dpsi = theta s (+ gamma psi)
    # G minimizes -softplus(psi theta): d/dtheta = -psi s
    for gamma in (0.0, 1.0):
        theta, psi, lr = 0.7, -1.3, 0.2
        s = _sigmoid(psi * theta)
        path = dirac_gan(1, lr=lr, r1_gamma=gamma, theta0=theta, psi0=psi)
        assert path.shape == (2, 2)
        assert path[0].tolist() == pytest.approx([theta, psi])
        assert path[1, 0].item() == pytest.approx(theta + lr * psi * s, rel=1e-6)
        assert path[1, 1].item() == pytest.approx(psi - lr * (theta * s + gamma * psi), rel=1e-6)


def test_dirac_gan_unregularized_spirals_out():
    """Without R1 each simultaneous step multiplies |(theta, psi)|^2 by exactly 1 + lr^2 sigmoid(psi theta)^2 > 1."""
    lr = 0.1
    path = dirac_gan(50, lr=lr).double()
    r2 = path.pow(2).sum(1)
    s = torch.sigmoid(path[:-1, 0] * path[:-1, 1])
    torch.testing.assert_close(r2[1:] / r2[:-1], 1 + lr**2 * s**2, rtol=1e-5, atol=0)
    assert (r2[1:] > r2[:-1]).all()


def test_dirac_gan_r1_converges():
    """With r1_gamma = 1 the iterates converge to the equilibrium (0, 0): the final distance is below 1e-3 of the start."""
    path = dirac_gan(300, lr=0.1, r1_gamma=1.0)  # crosses 1e-3 near step 220
    assert path[-1].norm() < 1e-3 * path[0].norm()


def test_dcgan_discriminator_with_minibatch_std_sees_batch_spread():
    """With minibatch_std the discriminator's output changes when the rest of the batch changes."""
    torch.manual_seed(0)
    d = DCGANDiscriminator(size=8, width=8, minibatch_std=True)
    x = torch.randn(4, 1, 8, 8)
    same = torch.cat([x[:1], x[:1].repeat(3, 1, 1, 1)])
    assert not torch.allclose(d(x)[0], d(same)[0])


def test_train_gan_adds_the_generator_penalty():
    """g_penalty(fake) joins the generator's loss: a strong pull of the samples towards the point (5, 5) moves them there,
    and the recorded generator loss includes the penalty."""
    torch.manual_seed(0)
    G, D = _mlps()
    target = torch.tensor([5.0, 5.0])
    hist = train_gan(G, D, _batches(), steps=60, z_dim=Z_DIM, lr=1e-2, g_penalty=lambda fake: 10 * (fake - target).pow(2).mean())
    with torch.no_grad():
        pulled = G(torch.randn(256, Z_DIM)).mean(0)
    assert (pulled - target).abs().max() < 1.0
    torch.manual_seed(0)
    G0, D0 = _mlps()
    train_gan(G0, D0, _batches(), steps=60, z_dim=Z_DIM, lr=1e-2)
    with torch.no_grad():
        assert (G0(torch.randn(256, Z_DIM)).mean(0) - target).abs().max() > 3.0  # without it the samples stay near the data
    assert hist.g_loss[0] > 200  # the first loss carries the penalty: samples start near 0, so about 10 * 25


def test_style_mapping_keeps_the_spread_of_z():
    """He-initialized mapping layers keep w's spread across z near z's (0.6-1.6 of it after 4 layers); PyTorch's
    default init shrinks it several-fold, and an unknown init is refused."""
    torch.manual_seed(0)
    z = torch.randn(4096, 32)
    spread = {init: StyleGenerator(z_dim=32, w_dim=32, mapping_init=init).mapping(z).std(0).mean().item() for init in ("he", "default")}
    assert 0.6 < spread["he"] < 1.6, spread
    assert spread["default"] < spread["he"] / 4, spread
    with pytest.raises(ValueError, match="mapping_init"):
        StyleGenerator(mapping_init="xavier")

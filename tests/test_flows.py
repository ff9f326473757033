"""Tests for genbook.flows: every layer inverts exactly and its log-determinant equals autograd's Jacobian."""

import math

import pytest
import torch
from torch.autograd.functional import jacobian

from genbook import data
from genbook.flows import (
    CNF,
    MADE,
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    DigitsFlowConfig,
    Flow,
    InvConv1x1,
    LogitTransform,
    MaskedAutoregressive,
    Reverse,
    SplineCoupling,
    Squeeze,
    TimeConvNet,
    TimeMLP,
    alternating_mask,
    channel_mask,
    checkerboard_mask,
    digits_flow,
    divergence_exact,
    divergence_hutchinson,
    evaluate_nll,
    half_mask,
    initialize,
    nll_loss,
    rademacher,
    rational_quadratic_spline,
    toy_flow,
    width_for_params,
)
from genbook.flows.models import conv_net
from genbook.nets import MLP, count_parameters
from genbook.train import fit


@pytest.fixture(autouse=True)
def _float64():
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _perturb(module: torch.nn.Module, scale: float = 0.3) -> torch.nn.Module:
    """Move every parameter off its initial value, so zero-initialized layers are not trivially the identity."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)
    return module.eval()


D = 6


def _vector_layers():
    bins = 5
    return {
        "additive": AdditiveCoupling(alternating_mask(D), MLP(D, D, (16,))),
        "affine": AffineCoupling(half_mask(D), MLP(D, 2 * D, (16,))),
        "actnorm": ActNorm(D),
        "invconv": InvConv1x1(D),
        "reverse": Reverse(),
        "maf": MaskedAutoregressive(D, (16, 16), "maf"),
        "iaf": MaskedAutoregressive(D, (16, 16), "iaf"),
        "spline": SplineCoupling(alternating_mask(D), MLP(D, D * (3 * bins - 1), (16,)), bins=bins, bound=2.0),
    }


def _image_layers():
    return {
        "affine-checkerboard": AffineCoupling(checkerboard_mask((1, 4, 4), 1), conv_net(1, 2, 8)),
        "additive-channels": AdditiveCoupling(channel_mask(4, 4, 1), conv_net(4, 4, 8)),
        "actnorm-image": ActNorm(4),
        "invconv-image": InvConv1x1(4),
        "squeeze": Squeeze(),
    }


def _jacobian_logdet(fn, x: torch.Tensor) -> torch.Tensor:
    """log |det J| of fn at one example x (shape event), by autograd's dense Jacobian."""
    jac = jacobian(lambda v: fn(v.unsqueeze(0))[0].squeeze(0), x)
    n = x.numel()
    return torch.linalg.slogdet(jac.reshape(n, n))[1]


def _check_layer(layer, x):
    _perturb(layer)
    z, logdet = layer(x)
    x_back, logdet_inv = layer.inverse(z)
    assert z.shape == x.shape or isinstance(layer, Squeeze)
    torch.testing.assert_close(x_back, x, atol=1e-10, rtol=0)
    torch.testing.assert_close(logdet_inv, -logdet, atol=1e-10, rtol=0)
    for i in range(2):
        torch.testing.assert_close(logdet[i], _jacobian_logdet(layer, x[i]), atol=1e-9, rtol=0)
        torch.testing.assert_close(logdet_inv[i], _jacobian_logdet(layer.inverse, z[i]), atol=1e-9, rtol=0)


@pytest.mark.parametrize("name", list(_vector_layers()))
def test_vector_layer_inverts_and_logdet_matches_autograd(name):
    x = torch.randn(3, D) * 1.5  # some points fall outside the spline's [-B, B], exercising its tails
    _check_layer(_vector_layers()[name], x)


@pytest.mark.parametrize("name", list(_image_layers()))
def test_image_layer_inverts_and_logdet_matches_autograd(name):
    channels = 1 if name in ("affine-checkerboard", "squeeze") else 4
    _check_layer(_image_layers()[name], torch.randn(3, channels, 4, 4))


def test_logit_transform_inverts_on_the_unit_cube():
    _check_layer(LogitTransform(0.01), torch.rand(3, D))


def test_additive_coupling_preserves_volume():
    layer = _perturb(AdditiveCoupling(half_mask(D), MLP(D, D, (16,))))
    assert layer(torch.randn(4, D))[1].abs().max() == 0


def test_couplings_leave_the_kept_half_unchanged():
    mask = half_mask(D)
    for layer in (AffineCoupling(mask, MLP(D, 2 * D, (8,))), SplineCoupling(mask, MLP(D, D * 11, (8,)), bins=4)):
        x = torch.randn(5, D)
        z, _ = _perturb(layer)(x)
        torch.testing.assert_close(z[:, : D // 2], x[:, : D // 2], atol=0, rtol=0)
        assert (z[:, D // 2 :] - x[:, D // 2 :]).abs().max() > 1e-3


def test_zero_initialized_couplings_start_as_the_identity():
    x = torch.randn(4, 1, 8, 8)
    for layer in (
        AffineCoupling(checkerboard_mask((1, 8, 8)), conv_net(1, 2, 8)),
        SplineCoupling(half_mask(D), MLP(D, D * 11, (8,), zero_last=True), bins=4),
    ):
        inp = x if isinstance(layer, AffineCoupling) else x.flatten(1)[:, :D]
        z, logdet = layer(inp)
        torch.testing.assert_close(z, inp, atol=1e-12, rtol=0)
        assert logdet.abs().max() < 1e-12


def test_masks():
    assert checkerboard_mask((1, 2, 2)).tolist() == [[[1.0, 0.0], [0.0, 1.0]]]
    assert checkerboard_mask((2, 4, 4), 1).sum() == 16
    assert half_mask(4).tolist() == [1, 1, 0, 0] and half_mask(4, 1).tolist() == [0, 0, 1, 1]
    assert alternating_mask(4).tolist() == [1, 0, 1, 0]
    assert channel_mask(4, 2)[:, 0, 0].tolist() == [1, 1, 0, 0]


def test_squeeze_moves_each_2x2_patch_into_channels_and_rejects_odd_sizes():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    z, _ = Squeeze()(x)
    assert z.shape == (1, 4, 2, 2)
    assert z[0, :, 0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]  # the top-left patch
    with pytest.raises(ValueError, match="even"):
        Squeeze()(torch.zeros(1, 1, 3, 4))


# ----------------------------------------------------------------------------- Glow's pieces


def test_actnorm_data_dependent_initialization():
    x = torch.randn(256, 3, 4, 4) * torch.tensor([0.5, 2.0, 7.0]).view(1, 3, 1, 1) + 3.0
    layer = ActNorm(3).train()
    z, _ = layer(x)
    flat = z.transpose(0, 1).flatten(1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(3), atol=1e-10, rtol=0)
    torch.testing.assert_close(flat.std(1), torch.ones(3), atol=1e-5, rtol=0)
    bias = layer.bias.detach().clone()
    layer(x * 10)  # a later batch must not re-initialize
    torch.testing.assert_close(layer.bias.detach(), bias)
    fresh = ActNorm(3).eval()
    fresh(x)
    assert not fresh.initialized  # evaluation never initializes


def test_invconv_lu_logdet_equals_slogdet_and_weight_is_a_rotation_at_init():
    layer = InvConv1x1(5).to("cpu", torch.float64)  # moves must keep working (nn.Module._apply)
    w = layer.weight()
    torch.testing.assert_close(w @ w.T, torch.eye(5), atol=1e-10, rtol=0)
    _perturb(layer)
    w = layer.weight()
    x = torch.randn(2, 5, 3, 3)
    torch.testing.assert_close(layer(x)[1][0], 9 * torch.linalg.slogdet(w)[1], atol=1e-10, rtol=0)


# ----------------------------------------------------------------------------- MADE, MAF, IAF


def test_made_is_autoregressive():
    made = _perturb(MADE(5, (12, 12), out_mult=2))
    jac = jacobian(lambda v: made(v.unsqueeze(0)).squeeze(0), torch.randn(5))  # (2, 5, 5): output (k, i), input j
    for i in range(5):
        assert jac[:, i, i:].abs().max() == 0  # output i ignores x_i and everything after it
        if i > 0:
            assert jac[:, i, :i].abs().max() > 0  # ... but does use what comes before


def test_maf_and_iaf_pass_counts():
    maf, iaf = (_perturb(MaskedAutoregressive(D, (16,), mode)) for mode in ("maf", "iaf"))
    x = torch.randn(4, D)
    maf(x)
    assert maf.passes == 1
    maf.inverse(x)
    assert maf.passes == D
    iaf.inverse(x)
    assert iaf.passes == 1
    iaf(x)
    assert iaf.passes == D
    with pytest.raises(ValueError, match="maf"):
        MaskedAutoregressive(D, mode="made")
    with pytest.raises(ValueError, match="2 dimensions"):
        MADE(1)


# ----------------------------------------------------------------------------- splines


def _spline_params(shape, bins, scale=1.0):
    return (torch.randn(*shape, bins) * scale, torch.randn(*shape, bins) * scale, torch.randn(*shape, bins - 1) * scale)


def test_spline_is_monotone_with_exact_inverse_and_identity_tails():
    bins, bound = 7, 2.0
    x = torch.linspace(-3, 3, 601)
    w, h, d = (p.expand(601, -1) for p in _spline_params((1,), bins, 2.0))
    y, logd = rational_quadratic_spline(x, w, h, d, bound=bound)
    assert (y[1:] - y[:-1] > 0).all()  # strictly increasing
    tails = x.abs() > bound
    torch.testing.assert_close(y[tails], x[tails], atol=0, rtol=0)
    assert logd[tails].abs().max() == 0
    x_back, logd_inv = rational_quadratic_spline(y, w, h, d, inverse=True, bound=bound)
    torch.testing.assert_close(x_back, x, atol=1e-10, rtol=0)
    torch.testing.assert_close(logd_inv, -logd, atol=1e-9, rtol=0)
    knots_hit = rational_quadratic_spline(torch.tensor([-bound, bound]), w[:2], h[:2], d[:2], bound=bound)[0]
    torch.testing.assert_close(knots_hit, torch.tensor([-bound, bound]), atol=1e-12, rtol=0)  # continuous at the ends


def test_spline_log_derivative_matches_autograd():
    x = (torch.rand(50) * 3.8 - 1.9).requires_grad_(True)
    w, h, d = _spline_params((50,), 6)
    y, logd = rational_quadratic_spline(x, w, h, d, bound=2.0)
    (dy,) = torch.autograd.grad(y.sum(), x)  # each y_i depends on x_i only
    torch.testing.assert_close(logd, dy.log(), atol=1e-10, rtol=0)


def test_spline_with_zero_parameters_is_the_identity():
    x = torch.linspace(-2.5, 2.5, 11)
    zeros = torch.zeros(11, 4)
    y, logd = rational_quadratic_spline(x, zeros, zeros, zeros[:, :3], bound=3.0)
    torch.testing.assert_close(y, x, atol=1e-12, rtol=0)
    assert logd.abs().max() < 1e-12


# ----------------------------------------------------------------------------- continuous flows


def test_exact_divergence_is_the_jacobian_trace():
    net = _perturb(MLP(3, 3, (16,)))
    x = torch.randn(4, 3, requires_grad=True)
    div = divergence_exact(net(x), x)
    for i in range(4):
        torch.testing.assert_close(div[i], torch.trace(jacobian(net, x[i].detach())), atol=1e-10, rtol=0)


def test_hutchinson_is_unbiased():
    """The mean over many probes approaches the exact trace, within 4 standard errors."""
    net = _perturb(TimeConvNet(1, width=8, depth=2), 0.2)
    t = torch.tensor(0.3)
    x = torch.randn(1, 1, 4, 4).requires_grad_(True)
    v = net(x, t)
    exact = divergence_exact(v, x, create_graph=False)
    g = torch.Generator().manual_seed(0)
    probes = 4000
    xs = x.detach().expand(probes, -1, -1, -1).clone().requires_grad_(True)
    est = divergence_hutchinson(net(xs, t), xs, rademacher(xs.shape, g), create_graph=False)
    stderr = est.std() / math.sqrt(probes)
    assert abs(est.mean() - exact[0]) < 4 * stderr
    assert est.std() > 0  # a real estimator, not the exact trace in disguise


class _Linear(torch.nn.Module):
    """v(x, t) = A x, so x(1) = expm(A) x(0) and p_1 = N(0, expm(A) expm(A)^T)."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.a = torch.nn.Parameter(a)

    def forward(self, x, t):
        return x @ self.a.T


def test_cnf_log_prob_of_a_linear_field_matches_the_closed_form():
    a = torch.tensor([[0.3, -0.8], [0.5, -0.2]])
    cnf = CNF(_Linear(a), (2,), steps=16)
    x = torch.randn(6, 2)
    m = torch.linalg.matrix_exp(a)
    exact = torch.distributions.MultivariateNormal(torch.zeros(2), covariance_matrix=m @ m.T).log_prob(x)
    torch.testing.assert_close(cnf.log_prob(x), exact, atol=1e-6, rtol=0)
    hutch = torch.stack([cnf.log_prob(x, trace="hutchinson", generator=torch.Generator().manual_seed(i)) for i in range(200)]).mean(0)
    torch.testing.assert_close(hutch, exact, atol=0.05, rtol=0)  # tr(A) = 0.1; each probe errs by +-0.8 * h
    z = torch.randn(5, 2)
    torch.testing.assert_close(cnf._integrate(z, 0.0, 1.0, None, False)[0], z @ m.T, atol=1e-7, rtol=0)


def test_cnf_sampling_inverts_log_prob_path_and_trajectory_shape():
    cnf = CNF(_perturb(TimeMLP(2, (16,)), 0.2), (2,), steps=6)
    z = torch.randn(5, 2)
    x = cnf._integrate(z, 0.0, 1.0, None, False)[0]
    back = cnf._integrate(x, 1.0, 0.0, None, False)[0]
    torch.testing.assert_close(back, z, atol=1e-4, rtol=0)  # RK4 round trip at 6 steps
    traj = cnf.trajectory(z)
    assert traj.shape == (7, 5, 2)
    torch.testing.assert_close(traj[-1], x, atol=1e-12, rtol=0)
    assert cnf.trajectory(z, steps=12).shape == (13, 5, 2)
    assert cnf.sample(3).shape == (3, 2)
    with pytest.raises(ValueError, match="method"):
        CNF(TimeMLP(2), (2,), method="dopri5")


# ----------------------------------------------------------------------------- the container and recipes


def test_flow_log_prob_is_base_plus_logdets_and_samples_invert():
    flow = _perturb(Flow([ActNorm(D), InvConv1x1(D), AffineCoupling(half_mask(D), MLP(D, 2 * D, (8,)))], (D,)))
    x = torch.randn(4, D)
    z, logdet = flow(x)
    base = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
    torch.testing.assert_close(flow.log_prob(x), base + logdet)
    torch.testing.assert_close(flow.inverse(z), x, atol=1e-10, rtol=0)
    torch.testing.assert_close(flow.log_prob(z, start=3), base)  # after the last layer: the base density
    assert flow.sample(7).shape == (7, D)


def test_digits_flow_inverts_and_counts_parameters():
    flow = _perturb(digits_flow(DigitsFlowConfig(width=8, checkerboard_steps=1, steps_per_scale=1)), 0.05)
    y = torch.rand(3, 1, 8, 8)
    z, _ = flow(y)
    torch.testing.assert_close(flow.inverse(z), y, atol=1e-9, rtol=0)
    assert z.shape[1:] == flow.base_shape == (16, 2, 2)
    samples = flow.sample(5)
    assert samples.shape == (5, 1, 8, 8) and ((samples >= 0) & (samples < 1)).all()
    with pytest.raises(ValueError, match="coupling"):
        digits_flow(DigitsFlowConfig(coupling="spline"))
    with pytest.raises(ValueError, match="multiple of 4"):
        digits_flow(size=6)


def test_width_for_params_matches_the_target():
    def make(w):
        return digits_flow(DigitsFlowConfig(coupling="additive", width=w, steps_per_scale=1))

    target = count_parameters(digits_flow(DigitsFlowConfig(width=16, steps_per_scale=1)))
    w = width_for_params(make, target)
    assert abs(count_parameters(make(w)) - target) <= abs(count_parameters(make(w + 1)) - target)
    assert abs(count_parameters(make(w)) - target) <= abs(count_parameters(make(w - 1)) - target)


def test_training_the_digits_flow_lowers_the_dequantization_bound():
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(0)
    x = data.digits("train").x_int[:256]
    flow = digits_flow(DigitsFlowConfig(width=8, checkerboard_steps=1, steps_per_scale=1))
    initialize(flow, x)
    before = evaluate_nll(flow, x, draws=1)
    fit(flow, nll_loss, iter(data.Batches(x, batch_size=64)), steps=40, lr=3e-3, progress=False)
    after = evaluate_nll(flow, x, draws=1)
    assert before.bound and after.dims == 64
    assert after.nats < before.nats - 10
    assert after.nats > 0  # a bound on a discrete NLL is never negative
    assert abs(after.bpd - after.nats / (64 * math.log(2))) < 1e-9


def test_toy_flow_kinds():
    for kind in ("affine", "spline"):
        flow = toy_flow(kind, layers=2, hidden=8)
        x = torch.randn(5, 2)
        z, _ = _perturb(flow)(x)
        torch.testing.assert_close(flow.inverse(z), x, atol=1e-9, rtol=0)
    with pytest.raises(ValueError, match="kind"):
        toy_flow("planar")

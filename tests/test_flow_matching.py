"""Flow matching (chapter 7): paths, losses, solvers, couplings and the ODE likelihood against closed forms."""

import itertools
import math

import pytest
import torch

from genbook import flow_matching as fm


def vp_alpha(s: torch.Tensor, beta_min: float = 0.1, beta_max: float = 20.0) -> torch.Tensor:
    """alpha_s = exp(-1/2 int_0^s beta(r) dr), the integral by the trapezoid rule (not the closed form)."""
    out = []
    for si in s.tolist():
        r = torch.linspace(0, si, 20001, dtype=torch.float64)
        out.append(math.exp(-0.5 * torch.trapezoid(beta_min + (beta_max - beta_min) * r, r).item()))
    return torch.tensor(out, dtype=torch.float64)


T_GRID = torch.tensor([0.0, 0.1, 0.37, 0.5, 0.9, 0.99], dtype=torch.float64)


@pytest.mark.parametrize("sigma_min", [0.0, 1e-3, 0.1])
def test_ot_path_matches_box_11(sigma_min):
    path = fm.OTPath(sigma_min)
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g, dtype=torch.float64)
    t = T_GRID
    xt = (1 - (1 - sigma_min) * t)[:, None] * x0 + t[:, None] * x1  # Box 11
    torch.testing.assert_close(path.sample_xt(x0, x1, t), xt)
    torch.testing.assert_close(path.target(x0, x1, t), x1 - (1 - sigma_min) * x0)


def test_vp_path_matches_its_definition_and_the_derivative_of_psi():
    path = fm.VPPath()
    g = torch.Generator().manual_seed(1)
    x0, x1 = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64)
    t = T_GRID
    alpha = vp_alpha(1 - t)
    xt = alpha[:, None] * x1 + (1 - alpha**2).sqrt()[:, None] * x0
    torch.testing.assert_close(path.sample_xt(x0, x1, t), xt, rtol=1e-6, atol=1e-8)
    h = 1e-6  # the target is d/dt psi_t(x0; x1): central differences of the path itself
    fd = (path.sample_xt(x0, x1, t + h) - path.sample_xt(x0, x1, t - h)) / (2 * h)
    torch.testing.assert_close(path.target(x0, x1, t), fd, rtol=1e-5, atol=1e-6)
    assert path.t_max < 1 and float(path.sigma(torch.tensor(0.0))) > 0.99


def test_ot_path_rejects_a_bad_sigma_min():
    with pytest.raises(ValueError, match="sigma_min"):
        fm.OTPath(1.0)


def test_fm_loss_is_rectified_flows_loss_for_the_straight_path():
    path = fm.OTPath(0.0)
    x1, x0 = torch.randn(64, 2), torch.randn(64, 2)

    def v(x, t):
        return 0.5 * x + t[:, None]

    torch.manual_seed(3)
    loss = fm.fm_loss(v, path, x1, x0)
    torch.manual_seed(3)
    t = torch.rand(64)
    expected = (((x1 - x0) - v((1 - t)[:, None] * x0 + t[:, None] * x1, t)) ** 2).mean()  # eq. 104
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("path", [fm.VPPath(), fm.OTPath(0.1)], ids=["vp", "ot"])
def test_velocity_from_the_exact_eps_is_the_conditional_field(path):
    c = torch.tensor([[0.3, -0.7]], dtype=torch.float64)  # data: a single point, so eps and u are known exactly

    def eps(x, t):
        return (x - path.a(t)[:, None] * c) / path.sigma(t)[:, None]

    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0.05, 0.3, 0.5, 0.8, 0.95], dtype=torch.float64)
    u = path.dsigma(t)[:, None] / path.sigma(t)[:, None] * (x - path.a(t)[:, None] * c) + path.da(t)[:, None] * c
    torch.testing.assert_close(fm.velocity_from_eps(eps, path)(x, t), u)


def linear_ode():
    a = torch.tensor([[-0.5, 1.0], [-1.0, -0.2]], dtype=torch.float64)
    x0 = torch.tensor([[1.0, 0.5], [-0.3, 2.0]], dtype=torch.float64)
    exact = x0 @ torch.linalg.matrix_exp(a).T
    return (lambda x, t: x @ a.T), x0, exact


def test_euler_and_heun_converge_at_first_and_second_order_to_the_exact_solution():
    v, x0, exact = linear_ode()
    for solver, order in ((fm.euler, 1), (fm.heun, 2)):
        errors = [(solver(v, x0, n) - exact).abs().max().item() for n in (20, 40, 80)]
        ratios = [errors[i] / errors[i + 1] for i in range(2)]
        assert all(abs(r - 2**order) < 0.3 * 2**order for r in ratios), (solver.__name__, errors)
    assert (fm.heun(v, x0, 80) - exact).abs().max() < 1e-4


def test_adaptive_solver_is_accurate_and_counts_evaluations():
    v, x0, exact = linear_ode()
    x1, nfe = fm.adaptive(v, x0, rtol=1e-8, atol=1e-8)
    assert (x1 - exact).abs().max() < 1e-6
    _, nfe_loose = fm.adaptive(v, x0, rtol=1e-3, atol=1e-3)
    assert 0 < nfe_loose < nfe


def test_ddim_is_exact_for_a_single_point_and_first_order_for_gaussian_data():
    path, t1 = fm.VPPath(), fm.VPPath.t_max
    x0 = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    zero, end = torch.zeros(1, dtype=torch.float64), torch.full((1,), t1, dtype=torch.float64)
    # one data point c: eps is constant along every ODE path, x_t = a_t c + sigma_t eps, and one DDIM step is exact
    c = torch.tensor([[0.3, -0.7]], dtype=torch.float64)

    def eps_point(x, t):
        return (x - path.a(t)[:, None] * c) / path.sigma(t)[:, None]

    eps0 = (x0 - path.a(zero) * c) / path.sigma(zero)
    torch.testing.assert_close(fm.ddim(eps_point, path, x0, 1, t1=t1), path.a(end) * c + path.sigma(end) * eps0)
    assert (fm.heun(fm.velocity_from_eps(eps_point, path), x0, 1, t1=t1) - (path.a(end) * c + path.sigma(end) * eps0)).abs().max() > 1e-2
    # data N(0, s^2 I): E[eps | x_t] = sigma_t x / (a_t^2 s^2 + sigma_t^2), and the ODE scales x by the marginal's std
    s2 = 0.25

    def eps_gauss(x, t):
        return path.sigma(t)[:, None] * x / (path.a(t)[:, None] ** 2 * s2 + path.sigma(t)[:, None] ** 2)

    def std(t):
        return (path.a(t) ** 2 * s2 + path.sigma(t) ** 2).sqrt()

    exact = x0 * std(end) / std(zero)
    errors = [(fm.ddim(eps_gauss, path, x0, n, t1=t1) - exact).abs().max().item() for n in (80, 160, 320)]
    assert all(1.6 < errors[i] / errors[i + 1] < 2.4 for i in range(2)), errors
    assert errors[-1] < 1e-2


def test_ddim_clips_the_predicted_data_and_refuses_a_path_that_starts_at_zero():
    path, t1 = fm.VPPath(), fm.VPPath.t_max
    c = torch.tensor([[3.0, -0.5]], dtype=torch.float64)  # outside [-1, 1] in its first coordinate

    def eps_point(x, t):
        return (x - path.a(t)[:, None] * c) / path.sigma(t)[:, None]

    x0 = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    zero, end = torch.zeros(1, dtype=torch.float64), torch.full((1,), t1, dtype=torch.float64)
    x1_hat = c.clamp(-1, 1).expand(4, 2)  # one step: x1_hat = c exactly, clipped
    eps = (x0 - path.a(zero) * x1_hat) / path.sigma(zero)
    torch.testing.assert_close(fm.ddim(eps_point, path, x0, 1, t1=t1, clip_x1=1.0), path.a(end) * x1_hat + path.sigma(end) * eps)
    with pytest.raises(ValueError, match="a_t > 0"):
        fm.ddim(eps_point, fm.OTPath(1e-3), x0, 4)
    with pytest.raises(ValueError, match="steps"):
        fm.ddim(eps_point, path, x0, 0, t1=t1)


def test_trajectory_validates_its_arguments():
    v, x0, _ = linear_ode()
    assert fm.trajectory(v, x0, 5).shape == (6, 2, 2)
    with pytest.raises(ValueError, match="method"):
        fm.trajectory(v, x0, 5, method="rk4")
    with pytest.raises(ValueError, match="steps"):
        fm.euler(v, x0, 0)


def test_straightness_is_zero_for_straight_paths_and_positive_for_curved_ones():
    x0 = torch.randn(100, 2, generator=torch.Generator().manual_seed(0))
    assert fm.straightness(lambda x, t: torch.ones_like(x) * torch.tensor([1.0, -2.0]), x0) < 1e-12
    rotate = lambda x, t: torch.stack([-x[:, 1], x[:, 0]], 1)  # noqa: E731 - each point turns by one radian
    # closed form: int_0^1 ||J R(t) z - (R(1) - I) z||^2 dt = (2 cos 1 - 1) ||z||^2, per dimension / 2
    exact = (2 * math.cos(1) - 1) * (x0**2).sum(1).mean().item() / 2
    assert abs(fm.straightness(rotate, x0, steps=2000) - exact) < 0.01 * exact


def test_ot_couple_finds_the_cheapest_pairing():
    g = torch.Generator().manual_seed(4)
    x0, x1 = torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g)
    paired = fm.ot_couple(x0, x1)
    assert sorted(map(tuple, paired.tolist())) == sorted(map(tuple, x0.tolist()))  # a permutation of x0
    best = min(((x0[list(p)] - x1) ** 2).sum().item() for p in itertools.permutations(range(6)))
    assert abs(((paired - x1) ** 2).sum().item() - best) < 1e-5
    with pytest.raises(ValueError, match="same shape"):
        fm.ot_couple(x0, x1[:5])


def test_ode_likelihood_of_a_gaussian_to_gaussian_flow_matches_the_closed_form():
    m, s = torch.tensor([1.0, -0.5]), 0.5  # the OT conditional field towards m carries N(0, I) to N(m, s^2 I)

    def v(x, t):
        return (m - (1 - s) * x) / (1 - (1 - s) * t.reshape(-1, 1))

    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(5)) * s + m
    exact = torch.distributions.Normal(m, s).log_prob(x).sum(1)
    torch.testing.assert_close(fm.ode_log_prob(v, x, steps=32, trace="exact"), exact, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="trace"):
        fm.ode_log_prob(v, x, trace="approximate")


def test_hutchinson_likelihood_is_unbiased_for_a_non_diagonal_jacobian():
    a = torch.tensor([[-0.3, 0.8], [-0.6, 0.2]], dtype=torch.float64)  # dx/dt = A x: x_1 = expm(A) x_0 ~ N(0, M M^T)
    m = torch.linalg.matrix_exp(a)
    x = torch.tensor([[0.7, -1.2]], dtype=torch.float64)
    closed = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64), m @ m.T).log_prob(x)

    def v(z, t):
        return z @ a.T

    torch.testing.assert_close(fm.ode_log_prob(v, x, steps=64, trace="exact"), closed, atol=1e-8, rtol=0)
    probes = fm.ode_log_prob(v, x.repeat(4000, 1), steps=64, trace="hutchinson", generator=torch.Generator().manual_seed(6))
    assert probes.std() > 0.1  # one probe is not the trace: the estimate varies
    assert abs(probes.mean() - closed) < 4 * probes.std() / math.sqrt(4000)

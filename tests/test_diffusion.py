"""Tests for genbook.diffusion: schedules against their formulas, the posterior against Bayes' rule, and every sampler
against the exact denoiser of Gaussian data, whose samples must have the data's variance."""

import math

import pytest
import torch

from genbook import diffusion as dif


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


S_DATA = 0.5  # data x0 ~ N(0, S_DATA^2 I)


def exact_eps(sched):
    """E[eps | x_t] for Gaussian data: sqrt(1 - ab) / (ab s^2 + 1 - ab) * x_t. A fractional t (EDM) interpolates
    log sigma between steps, as ``Schedule.t_of_sigma`` assumes."""
    log_sig = sched.sigma(torch.arange(sched.T)).log()

    def eps_fn(x, t, y=None):
        if t.is_floating_point():
            lo = t.floor().long().clamp(0, sched.T - 2)
            w = (t - lo).double()
            sig = ((1 - w) * log_sig[lo] + w * log_sig[lo + 1]).exp()
            ab = (1 / (1 + sig**2)).float()
        else:
            ab = sched.alpha_bar[t].float()
        ab = ab.view(-1, *([1] * (x.dim() - 1)))
        return (1 - ab).sqrt() / (ab * S_DATA**2 + 1 - ab) * x

    return eps_fn


def test_linear_and_cosine_schedules_match_their_definitions():
    lin = dif.linear_schedule(1000)
    assert math.isclose(lin.betas[0].item(), 1e-4) and math.isclose(lin.betas[-1].item(), 0.02)
    assert math.isclose(dif.linear_schedule(100).betas[-1].item(), 0.2)  # rescaled by 1000 / T
    T, s = 100, 0.008
    cos = dif.cosine_schedule(T, s)
    for t in (0, 10, 50, 90):
        by_hand = math.cos(((t + 1) / T + s) / (1 + s) * math.pi / 2) ** 2 / math.cos(s / (1 + s) * math.pi / 2) ** 2
        assert math.isclose(cos.alpha_bar[t].item(), by_hand, rel_tol=1e-9)
    assert cos.betas.max() <= 0.999
    with pytest.raises(ValueError, match="betas"):
        dif.Schedule(torch.tensor([0.1, 1.5]))


def test_q_sample_moments_and_snr_falls():
    sched = dif.cosine_schedule(50)
    x0 = torch.full((20000, 1), 2.0)
    t = torch.full((20000,), 30)
    xt = sched.q_sample(x0, t, torch.randn_like(x0))
    ab = sched.alpha_bar[30].item()
    assert abs(xt.mean().item() - 2 * math.sqrt(ab)) < 0.02
    assert abs(xt.var().item() - (1 - ab)) < 0.02
    snr = sched.snr(torch.arange(50))
    assert (snr[1:] < snr[:-1]).all()
    torch.testing.assert_close(sched.predict_x0(xt, t, (xt - math.sqrt(ab) * x0) / math.sqrt(1 - ab)), x0, atol=1e-4, rtol=0)


def test_posterior_matches_bayes_rule():
    sched = dif.linear_schedule(100)
    x0, xt = torch.randn(5, 3), torch.randn(5, 3)
    for step in (1, 40, 99):
        t = torch.full((5,), step)
        mean, var = sched.posterior(x0, xt, t)
        ab_prev, alpha = sched.alpha_bar[step - 1].item(), sched.alphas[step].item()
        beta = 1 - alpha
        # q(x_{t-1} | x0) = N(sqrt(ab_prev) x0, 1 - ab_prev), q(x_t | x_{t-1}) = N(sqrt(alpha) x_{t-1}, beta): multiply the Gaussians
        precision = 1 / (1 - ab_prev) + alpha / beta
        by_hand_mean = (math.sqrt(ab_prev) * x0 / (1 - ab_prev) + math.sqrt(alpha) * xt / beta) / precision
        torch.testing.assert_close(mean, by_hand_mean, atol=1e-5, rtol=1e-5)
        assert math.isclose(var.flatten()[0].item(), 1 / precision, rel_tol=1e-4)  # float32
    _, var0 = sched.posterior(x0, xt, torch.zeros(5, dtype=torch.long))
    assert var0.abs().max() < 1e-12  # at the first step the posterior is x0 itself


def test_ddim_steps():
    assert dif.ddim_steps(1000, 1) == [999]
    steps = dif.ddim_steps(1000, 10)
    assert len(steps) == 10 and steps[0] == 999 and steps[-1] == 0 and steps == sorted(steps, reverse=True)
    with pytest.raises(ValueError, match="between 1"):
        dif.ddim_steps(100, 0)


@pytest.mark.parametrize(
    "sampler",
    [
        lambda f, s, g: dif.ddpm_sample(f, s, (4000, 2), generator=g),
        lambda f, s, g: dif.ddim_sample(f, s, (4000, 2), steps=200, generator=g),
        lambda f, s, g: dif.ddim_sample(f, s, (4000, 2), steps=200, eta=1.0, generator=g),
        lambda f, s, g: dif.edm_heun_sample(f, s, (4000, 2), steps=48, generator=g),
    ],
    ids=["ddpm", "ddim", "ddim-eta1", "edm-heun"],
)
def test_samplers_reproduce_the_data_variance_with_the_exact_denoiser(sampler):
    sched = dif.cosine_schedule(200)
    x = sampler(exact_eps(sched), sched, torch.Generator().manual_seed(0))
    assert abs(x.std().item() - S_DATA) < 0.03, x.std().item()
    assert abs(x.mean().item()) < 0.03


def test_ddim_is_deterministic_and_inversion_round_trips():
    sched = dif.cosine_schedule(200)
    f = exact_eps(sched)
    x_T = torch.randn(64, 2)
    a = dif.ddim_sample(f, sched, (64, 2), steps=200, x_T=x_T, generator=torch.Generator().manual_seed(1))
    b = dif.ddim_sample(f, sched, (64, 2), steps=200, x_T=x_T, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    errors = {}
    for n in (50, 200):  # both directions are first-order schemes: the round trip tightens as steps are added
        a_n = dif.ddim_sample(f, sched, (64, 2), steps=n, x_T=x_T)
        errors[n] = (dif.ddim_invert(f, sched, a_n, steps=n) - x_T).abs().max().item()
    assert errors[200] < 0.05 and errors[200] < 0.5 * errors[50], errors


def test_edm_heun_counts_network_evaluations():
    sched = dif.cosine_schedule(100)
    calls = []

    def f(x, t, y):
        calls.append(t)
        return exact_eps(sched)(x, t.round().long())

    dif.edm_heun_sample(f, sched, (8, 2), steps=6)
    assert len(calls) == 2 * 6 - 1
    sig = dif.edm_sigmas(sched, 6)
    assert sig[-1] == 0 and (sig[1:] < sig[:-1]).all()
    t_back = sched.t_of_sigma(sched.sigma(torch.tensor([3, 50, 97])))
    torch.testing.assert_close(t_back, torch.tensor([3.0, 50.0, 97.0]), atol=1e-4, rtol=0)


def _labelled_eps(x, t, y):
    """A stub network whose output depends on the label: -1 (no label) gives 0."""
    return x * 0 + torch.where(y < 0, torch.zeros_like(y), y + 1).float().view(-1, 1)


def test_classifier_free_guidance():
    x, t, y = torch.randn(4, 3), torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, 2, 3])
    torch.testing.assert_close(dif.classifier_free(_labelled_eps, 0.0)(x, t, y), _labelled_eps(x, t, y))
    w = 2.5
    expected = (1 + w) * _labelled_eps(x, t, y) - w * _labelled_eps(x, t, torch.full_like(y, -1))  # eq. 92
    torch.testing.assert_close(dif.classifier_free(_labelled_eps, w)(x, t, y), expected)


def test_classifier_guidance_moves_eps_along_the_class_gradient():
    sched = dif.linear_schedule(100)
    weights = torch.randn(3, 2)  # a linear "noise-aware" classifier: logits = W x

    def classifier(x, t):
        return x @ weights.T

    f = exact_eps(sched)
    x, t, y = torch.randn(5, 2), torch.full((5,), 50), torch.tensor([0, 1, 2, 0, 1])
    torch.testing.assert_close(dif.classifier_guided(f, classifier, sched, 0.0)(x, t, y), f(x, t))
    guided = dif.classifier_guided(f, classifier, sched, 2.0)(x, t, y)
    probs = (x @ weights.T).softmax(-1)
    grad = weights[y] - probs @ weights  # d log softmax_y / dx for linear logits
    torch.testing.assert_close(guided, f(x, t) - 2.0 * math.sqrt(1 - sched.alpha_bar[50].item()) * grad, atol=1e-5, rtol=1e-5)


def test_eps_loss_label_dropout_and_the_optimal_denoiser():
    sched = dif.cosine_schedule(100)
    seen = []

    def spy(x, t, y):
        seen.append(y.clone())
        return torch.zeros_like(x)

    x0, y = torch.randn(256, 2) * S_DATA, torch.randint(0, 10, (256,))
    zero_loss = dif.eps_loss(spy, sched, x0, y, p_uncond=1.0)
    assert (seen[-1] == -1).all()
    dif.eps_loss(spy, sched, x0, y, p_uncond=0.0)
    assert torch.equal(seen[-1], y)
    assert abs(zero_loss.item() - 1.0) < 0.1  # predicting 0 costs E||eps||^2 / D = 1
    exact = exact_eps(sched)
    assert dif.eps_loss(lambda x, t, y: exact(x, t), sched, x0).item() < 0.8 * zero_loss.item()


def test_clipping_x0_keeps_eps_consistent_and_is_inactive_when_loose():
    sched = dif.cosine_schedule(100)
    f = exact_eps(sched)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(6, 2) * 3, torch.full((6,), 60)
    from genbook.diffusion.samplers import _x0_and_eps

    x0, eps = _x0_and_eps(sched, x, t, torch.randn(6, 2, generator=g), 0.5)
    assert x0.abs().max() <= 0.5
    torch.testing.assert_close(sched.predict_x0(x, t, eps), x0, atol=1e-4, rtol=1e-4)
    tight = dif.ddpm_sample(f, sched, (500, 2), generator=torch.Generator().manual_seed(0), clip_x0=0.3)
    assert tight.abs().max() <= 0.3 + 1e-4  # the last step returns the clipped x0_hat's posterior mean, inside the range


# ----------------------------------------------------------------------------- the bound


def test_discretized_gaussian_is_a_distribution_over_the_levels():
    levels = 17
    grid = torch.linspace(-1, 1, levels).view(-1, 1)  # (17, 1): every level
    for mean, std in ((0.3, 0.2), (-0.9, 0.05), (2.0, 1.0)):
        logp = dif.discretized_gaussian_log_likelihood(grid, torch.full_like(grid, mean), torch.full_like(grid, std), levels)
        assert abs(logp.exp().sum().item() - 1) < 1e-5


def test_gaussian_kl_matches_torch():
    m1, v1, m2, v2 = torch.randn(5), torch.rand(5) + 0.1, torch.randn(5), torch.rand(5) + 0.1
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(m1, v1.sqrt()), torch.distributions.Normal(m2, v2.sqrt()))
    torch.testing.assert_close(dif.gaussian_kl(m1, v1, m2, v2), expected)


def test_vlb_with_the_exact_denoiser_of_discrete_data_approaches_the_entropy():
    """For data on the 17-level grid (independent pixels, N(0, S^2) rounded), E[x0 | x_t] is a softmax over the levels,
    so the exact eps is known. E[bound] >= H(data) for any model, and with the exact eps the bound tightens toward H
    as the number of steps grows."""
    levels, dims = 17, 2
    grid = torch.linspace(-1, 1, levels)
    edges = torch.cat([torch.tensor([-math.inf]), (grid[1:] + grid[:-1]) / 2, torch.tensor([math.inf])])
    cdf = torch.distributions.Normal(0.0, S_DATA).cdf(edges)
    probs = cdf[1:] - cdf[:-1]
    entropy = -(probs * probs.log()).sum().item() * dims
    idx = torch.multinomial(probs, 2000 * dims, replacement=True, generator=torch.Generator().manual_seed(0))
    x0 = grid[idx].view(2000, dims)

    def discrete_eps(sched):
        def eps_fn(x, t, y=None):
            ab = sched.alpha_bar[t].view(-1, 1, 1)  # float64
            logits = probs.log().double() - (x.double()[..., None] - ab.sqrt() * grid.double()) ** 2 / (2 * (1 - ab))  # (B, D, K)
            x0_mean = (logits.softmax(-1) * grid.double()).sum(-1)
            return ((x.double() - ab[..., 0].sqrt() * x0_mean) / (1 - ab[..., 0]).sqrt()).float()

        return eps_fn

    totals = {}
    for T in (50, 400):
        sched = dif.cosine_schedule(T)
        terms = dif.vlb(discrete_eps(sched), sched, x0, levels, generator=torch.Generator().manual_seed(1))
        assert (terms["prior"] >= 0).all() and (terms["diffusion"] >= 0).all() and (terms["decoder"] >= 0).all()
        totals[T] = terms["total"].mean().item()
    assert entropy < totals[400] < totals[50], (entropy, totals)
    assert totals[400] - entropy < 0.5 * (totals[50] - entropy), (entropy, totals)  # the gap shrinks as the chain refines
    g = lambda: torch.Generator().manual_seed(2)  # noqa: E731 - the same draws of x_t for both variances
    beta_var = dif.vlb(discrete_eps(sched), sched, x0[:200], levels, variance="beta", generator=g())["total"]
    posterior_var = dif.vlb(discrete_eps(sched), sched, x0[:200], levels, generator=g())["total"]
    assert beta_var.mean() > posterior_var.mean() > entropy  # the other fixed variance is a valid, looser bound here
    with pytest.raises(ValueError, match="variance"):
        dif.vlb(discrete_eps(sched), sched, x0[:2], levels, variance="learned")


# ----------------------------------------------------------------------------- progressive distillation


def test_halve_and_the_distillation_target_lands_on_the_teachers_two_steps():
    assert dif.halve([9, 7, 5, 3]) == [9, 5]
    with pytest.raises(ValueError, match="even"):
        dif.halve([9, 5, 1])
    sched = dif.cosine_schedule(100)
    f = exact_eps(sched)
    z = torch.randn(16, 2)
    for t, t_mid, t_next in ((80, 60, 40), (20, 10, -1)):
        x0_tilde = dif.distillation_target(f, sched, z, t, t_mid, t_next)
        two_steps = dif.ddim_step(f, sched, dif.ddim_step(f, sched, z, t, t_mid), t_mid, t_next)
        ab = sched.alpha_bar[t].item()
        ab_next = 1.0 if t_next < 0 else sched.alpha_bar[t_next].item()
        eps_implied = (z - math.sqrt(ab) * x0_tilde) / math.sqrt(1 - ab)
        one_step = math.sqrt(ab_next) * x0_tilde + math.sqrt(1 - ab_next) * eps_implied  # DDIM with x0_hat = x0_tilde
        torch.testing.assert_close(one_step, two_steps, atol=1e-4, rtol=1e-4)


def test_distillation_loss_trains_the_student_only():
    from genbook.nets import MLP

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = MLP(3, 2, (16,))

        def forward(self, x, t, y=None):
            return self.mlp(torch.cat([x, t.float()[:, None] / 100], 1))

    sched = dif.cosine_schedule(100)
    teacher = Net().requires_grad_(False)
    student = dif.new_student(teacher)
    assert all(p.requires_grad for p in student.parameters()) and not any(p.requires_grad for p in teacher.parameters())
    loss = dif.distillation_loss(student, teacher, sched, torch.randn(32, 2) * S_DATA, dif.ddim_steps(100, 8))
    assert loss.shape == ()
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


class _TimeMLP(torch.nn.Module):
    """A small network of (x, t) for the distillation tests: x (B, 2), t (B,) -> (B, 2)."""

    def __init__(self):
        super().__init__()
        from genbook.nets import MLP

        self.mlp = MLP(3, 2, (16,))

    def forward(self, x, t, y=None):
        return self.mlp(torch.cat([x, t.to(x.dtype)[:, None] / 100], 1))


def test_distillation_target_with_clipping_follows_the_clipped_sampler():
    """With clip_x0 the target is built from two clipped teacher steps, the sampler the student replaces: a DDIM step
    with x0_hat = x0_tilde lands on them, and the target differs from the unclipped one when clipping bites."""
    sched = dif.cosine_schedule(100)
    f = exact_eps(sched)
    z = 3 * torch.randn(64, 2, generator=torch.Generator().manual_seed(0))  # the teacher's x0 estimates leave [-1, 1]
    t, t_mid, t_next = 60, 40, 20
    x0_tilde = dif.distillation_target(f, sched, z, t, t_mid, t_next, clip_x0=1.0)
    two = dif.ddim_step(f, sched, dif.ddim_step(f, sched, z, t, t_mid, clip_x0=1.0), t_mid, t_next, clip_x0=1.0)
    ab, ab_next = sched.alpha_bar[t].item(), sched.alpha_bar[t_next].item()
    eps_implied = (z - math.sqrt(ab) * x0_tilde) / math.sqrt(1 - ab)
    torch.testing.assert_close(math.sqrt(ab_next) * x0_tilde + math.sqrt(1 - ab_next) * eps_implied, two, atol=1e-4, rtol=1e-4)
    assert (x0_tilde - dif.distillation_target(f, sched, z, t, t_mid, t_next)).abs().max() > 0.1


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-6), (torch.float32, 2e-3)])
def test_x0_student_gives_samplers_the_eps_of_its_clipped_clean_image(dtype, tol):
    """X0Student's eps, read back through eq. 84, is its network's x0 clipped to [-1, 1], at every step including the
    last (alpha_bar ~ 2.4e-7, where float32 loses about 1e-3 of it: harmless for 17 grey levels)."""
    sched = dif.cosine_schedule(100)
    torch.manual_seed(0)
    net = _TimeMLP().to(dtype)
    with torch.no_grad():
        net.mlp.net[-1].bias.fill_(0.5)  # some outputs beyond 1, so clipping shows
    wide = dif.X0Student(lambda x, t, y=None: 3 * net(x, t), sched)
    z = torch.randn(8, 2, dtype=dtype)
    with torch.no_grad():
        for step in (0, 50, 99):
            t = torch.full((8,), step)
            x0 = (3 * net(z, t)).clamp(-1, 1)
            assert x0.abs().max() == 1  # clipping bites
            torch.testing.assert_close(sched.predict_x0(z, t, wide(z, t)).to(dtype), x0, atol=tol, rtol=tol)


def test_new_student_zeroes_the_output_layer_of_the_books_networks():
    """new_student(teacher, sched) copies the teacher and zeroes its output layer, so the X0Student starts at
    x0_hat = 0 exactly, for a UNet (its last module is the output convolution), a DiT and an MLP; the teacher is
    left as it was, and only the student trains."""
    from genbook.nets import DiT, DiTConfig, UNet, UNetConfig

    sched = dif.cosine_schedule(100)
    x, t, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 30, 60, 99]), torch.tensor([1, 2, -1, 3])
    torch.manual_seed(0)
    cases = [
        (UNet(UNetConfig(width=16, num_classes=10, time_scale=1.0)), (x, t, y)),
        (DiT(DiTConfig(dim=32, depth=1, heads=4, patch=2, time_scale=1.0)), (x, t, None)),
        (_TimeMLP(), (torch.randn(4, 2), t, None)),
    ]
    for teacher, args in cases:
        teacher.requires_grad_(False)
        with torch.no_grad():  # a DiT starts with a zero output layer of its own (adaLN-Zero): move every weight
            for p in teacher.parameters():
                p.add_(0.05 * torch.randn_like(p))
        before = [p.clone() for p in teacher.parameters()]
        assert teacher(*args).abs().max() > 0
        student = dif.new_student(teacher, sched)
        assert isinstance(student, dif.X0Student) and all(p.requires_grad for p in student.parameters())
        assert student.predict_x0(*args).abs().max() == 0
        assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters(), strict=True))


def test_distillation_loss_of_an_x0_student_regresses_its_clean_image():
    """For an X0Student the loss is max(SNR_t, 1) ||net(z_t) - x0_tilde||^2 (Salimans & Ho's x-parameterization) on
    the network's unclipped output, computed by hand from the same random draws (at t = 30, where SNR > 1 weighs in);
    the target is detached, so only the student gets gradients."""
    sched = dif.cosine_schedule(100)
    torch.manual_seed(0)
    teacher, net = _TimeMLP(), _TimeMLP()  # the teacher trainable: the target must not carry its graph
    with torch.no_grad():
        net.mlp.net[-1].bias.fill_(2.0)  # outputs beyond 1: an eps reading (clipped) would differ by O(1)
    student = dif.X0Student(net, sched)
    x0 = torch.randn(32, 2) * S_DATA
    grid = [30, 20]  # a one-step student at t = 30 of a two-step teacher
    weight = sched.snr(torch.tensor(30)).item()
    assert weight > 2
    torch.manual_seed(1)
    loss = dif.distillation_loss(student, teacher, sched, x0, grid, clip_x0=1.0)
    torch.manual_seed(1)
    torch.randint(0, 1, ())  # the student step the loss draws (there is one)
    z = sched.q_sample(x0, torch.full((32,), 30), torch.randn_like(x0))
    target = dif.distillation_target(teacher, sched, z, 30, 20, -1, clip_x0=1.0)
    expected = weight * (net(z, torch.full((32,), 30)) - target).pow(2).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_one_student_step_for_four_teacher_steps():
    """per_step = 4: the target of a one-step student at t = 99 is where the teacher's four clipped DDIM steps land
    (a list of intermediate steps in distillation_target), and the loss regresses the student's x0 on it; a grid that
    does not split into groups of per_step >= 2 is refused."""
    sched = dif.cosine_schedule(100)
    torch.manual_seed(0)
    teacher, student = _TimeMLP().requires_grad_(False), dif.X0Student(_TimeMLP(), sched)
    x0 = torch.randn(32, 2) * S_DATA
    grid = [99, 66, 33, 0]
    torch.manual_seed(1)
    loss = dif.distillation_loss(student, teacher, sched, x0, grid, clip_x0=1.0, per_step=4)
    torch.manual_seed(1)
    torch.randint(0, 1, ())
    z = sched.q_sample(x0, torch.full((32,), 99), torch.randn_like(x0))
    four = dif.ddim_sample(teacher, sched, z.shape, steps=grid, x_T=z, clip_x0=1.0)
    torch.testing.assert_close(dif.distillation_target(teacher, sched, z, 99, [66, 33, 0], -1, clip_x0=1.0), four)
    torch.testing.assert_close(loss, (student.net(z, torch.full((32,), 99)) - four).pow(2).mean())
    for bad, per_step in (([99, 66, 33], 2), (grid, 1)):
        with pytest.raises(ValueError, match="per_step"):
            dif.distillation_loss(student, teacher, sched, x0, bad, per_step=per_step)


def test_latent_normalizer_standardizes_and_round_trips():
    z = torch.randn(500, 8) * torch.linspace(0.1, 5, 8) + 3
    norm = dif.LatentNormalizer.fit(z)
    zn = norm.normalize(z)
    torch.testing.assert_close(zn.mean(0), torch.zeros(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(zn.std(0), torch.ones(8), atol=1e-4, rtol=0)
    torch.testing.assert_close(norm.denormalize(zn), z, atol=1e-5, rtol=1e-5)


def test_vlb_with_a_later_decoder_is_still_a_bound_and_validates_its_step():
    levels = 17
    sched = dif.cosine_schedule(50)
    grid = torch.linspace(-1, 1, levels)
    x0 = grid[torch.randint(0, levels, (200, 2), generator=torch.Generator().manual_seed(0))]  # uniform over the grid
    entropy = 2 * math.log(levels)
    f = exact_eps(sched)  # a model that ignores the grid: its bound must still be >= the entropy
    for k, std in ((0, None), (5, None), (5, 0.05)):
        terms = dif.vlb(f, sched, x0, levels, decoder_step=k, decoder_std=std, generator=torch.Generator().manual_seed(1))
        assert terms["total"].mean().item() > entropy
        assert (terms["decoder"] >= 0).all()
    with pytest.raises(ValueError, match="decoder_step"):
        dif.vlb(f, sched, x0, levels, decoder_step=50)


def test_clip_x0_keeps_every_sampler_in_the_data_range_and_is_inactive_when_not_needed():
    sched = dif.cosine_schedule(50)

    def wild(x, t, y):  # a bad denoiser whose x0 estimate is far outside [-1, 1]
        return -5 * x

    for sample in (
        lambda f, **k: dif.ddim_sample(f, sched, (64, 2), steps=10, generator=torch.Generator().manual_seed(0), **k),
        lambda f, **k: dif.edm_heun_sample(f, sched, (64, 2), steps=5, generator=torch.Generator().manual_seed(0), **k),
    ):
        assert sample(wild).abs().max() > 1.5
        assert sample(wild, clip_x0=1.0).abs().max() <= 1.0 + 1e-6
        f = exact_eps(sched)  # data std S_DATA: x0 estimates stay well inside a clip of 10
        torch.testing.assert_close(sample(f, clip_x0=10.0), sample(f))


def test_vlb_per_step_terms_add_up_to_the_total():
    levels = 17
    sched = dif.cosine_schedule(30)
    grid = torch.linspace(-1, 1, levels)
    x0 = grid[torch.randint(0, levels, (50, 2), generator=torch.Generator().manual_seed(0))]
    for k in (0, 4):
        terms = dif.vlb(exact_eps(sched), sched, x0, levels, decoder_step=k, generator=torch.Generator().manual_seed(1))
        assert terms["per_step"].shape == (50, 30)
        assert (terms["per_step"][:, :k] == 0).all()
        torch.testing.assert_close(terms["per_step"].sum(1) + terms["prior"], terms["total"])
        torch.testing.assert_close(terms["per_step"][:, k], terms["decoder"])

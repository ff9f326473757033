"""The variational bound of DDPM on discrete images, in nats per image (Ho et al. 2020, section 3.3 and eq. 5).

| name in code | symbol |
| ------------ | ------ |
| ``x0``       | the image on the model's scale: integer levels 0..K-1 mapped to [-1, 1] |
| ``L_T``      | KL(q(x_T | x_0) || N(0, I)): the prior term |
| ``L_t``      | KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t)), t = 2..T, p's variance fixed (beta_tilde_t or beta_t) |
| ``L_0``      | -log p_theta(x_0 | x_1): a Gaussian integrated over each pixel's bin (the discrete decoder) |

-log p(x_0) <= L_T + sum_t L_t + L_0 (survey eq. 80-81). Every term is computed exactly for every t (no sampling
of t), with one draw of x_t per step. Chapter 6, "A likelihood bound".
"""

from __future__ import annotations

import math

import torch

from genbook.diffusion.samplers import EpsFn, _alpha_bar_at, _randn, _steps_tensor
from genbook.diffusion.schedule import Schedule, _bcast


def gaussian_kl(mean1, var1, mean2, var2) -> torch.Tensor:
    """KL(N(mean1, var1) || N(mean2, var2)) per dimension."""
    return 0.5 * (torch.log(var2 / var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1)


def _std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))


def discretized_gaussian_log_likelihood(x0: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, levels: int) -> torch.Tensor:
    """log P(x0) per dimension when x0 is one of ``levels`` evenly spaced values in [-1, 1] and P integrates
    N(mean, std^2) over its bin (half a level spacing each side; the outer bins extend to +-infinity)."""
    half = 1.0 / (levels - 1)  # half the spacing 2 / (K - 1)
    upper = torch.where(x0 > 1 - half / 2, torch.full_like(x0, math.inf), (x0 + half - mean) / std)
    lower = torch.where(x0 < -1 + half / 2, torch.full_like(x0, -math.inf), (x0 - half - mean) / std)
    prob = _std_normal_cdf(upper) - _std_normal_cdf(lower)
    return torch.log(prob.clamp_min(1e-12))


@torch.no_grad()
def vlb(
    eps_fn: EpsFn,
    sched: Schedule,
    x0: torch.Tensor,
    levels: int,
    y: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    variance: str = "posterior",
    decoder_step: int = 0,
    decoder_std: float | None = None,
) -> dict[str, torch.Tensor]:
    """The terms of DDPM's bound on -log p(x_0) in nats per image: {"prior", "diffusion", "decoder", "total"}, each (B,),
    and "per_step" (B, T): the KL term of each step t (column t; the decoder's column holds the decoder term, the
    columns below it are 0), so where the bound is paid can be plotted.

    p_theta(x_{t-1} | x_t) = N(mu_theta, sigma_t^2 I) with mu_theta from eps_theta (Box 8) and sigma_t^2 the posterior
    variance beta_tilde_t (``variance="posterior"``, the choice under which the bound of an exact denoiser tightens as
    T grows, Kingma et al. 2021) or beta_t (``"beta"``, the sampler's).

    With ``decoder_step = k > 0`` the chain stops at x_k and a discrete decoder reads the image off it directly:
    p(x_0 | x_k) = N(x0_hat(x_k), s^2) integrated over each level's bin, x0_hat from eq. 84 clipped to [-1, 1] and
    s = ``decoder_std`` (default sqrt((1 - alpha_bar_k) / alpha_bar_k)). That is a different, equally valid model
    whose bound skips the smallest noise levels, where a network that does not know the pixels are discrete pays
    most. With k = 0 and no ``decoder_std`` it is Ho et al.'s decoder. T - k network evaluations.
    """
    if variance not in ("posterior", "beta"):
        raise ValueError(f"variance must be 'posterior' or 'beta', got {variance!r}")
    if not 0 <= decoder_step < sched.T:
        raise ValueError(f"decoder_step must be in 0..{sched.T - 1}, got {decoder_step}")
    b = x0.shape[0]
    ab_last = _alpha_bar_at(sched, sched.T - 1, x0)
    prior = gaussian_kl(ab_last.sqrt() * x0, 1 - ab_last, torch.zeros_like(x0), torch.ones_like(x0)).flatten(1).sum(1)
    per_step = x0.new_zeros(b, sched.T)
    for t in range(decoder_step, sched.T):
        tt = _steps_tensor(t, b, x0.device)
        xt = sched.q_sample(x0, tt, _randn(x0.shape, generator, x0.device))
        eps_hat = eps_fn(xt, tt, y)
        beta, ab = _bcast(sched.betas, tt, x0), _bcast(sched.alpha_bar, tt, x0)
        mu = (xt - beta / (1 - ab).sqrt() * eps_hat) / (1 - beta).sqrt()  # Box 8's mean
        if t == decoder_step:
            if t == 0 and decoder_std is None:
                mean, std = mu, beta.sqrt()  # Box 8's last step
            else:
                mean = sched.predict_x0(xt, tt, eps_hat).clamp(-1, 1)
                std = torch.full_like(ab, decoder_std) if decoder_std is not None else ((1 - ab) / ab).sqrt()
            per_step[:, t] = -discretized_gaussian_log_likelihood(x0, mean, std, levels).flatten(1).sum(1)
        else:
            mean_q, var_q = sched.posterior(x0, xt, tt)
            var_p = var_q if variance == "posterior" else beta
            per_step[:, t] = gaussian_kl(mean_q, var_q, mu, var_p).flatten(1).sum(1)
    decoder, diffusion = per_step[:, decoder_step], per_step[:, decoder_step + 1 :].sum(1)
    total = prior + diffusion + decoder
    return {"prior": prior, "diffusion": diffusion, "decoder": decoder, "total": total, "per_step": per_step}

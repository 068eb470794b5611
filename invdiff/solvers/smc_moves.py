r"""Moves of the SMC (AFDPS) sampler below its EDM grid: the noise-aware last level, conditional ESS and adaptive
level search, and the MALA corrector (``invdiff.solvers.smc`` module docstring for the equations).
"""
from __future__ import annotations

import math

import torch

from .particles import F64
from .primitives import inner

def final_level_sigma(sigma_y: float, m: int, var: float = 0.01) -> float:
    r""":math:`\sigma_y\sqrt{v/m}`: the smallest noise level below which the last step :math:`x \to D(x, \sigma_{min})`
    changes the log-weights by a variance of at most v for m measurements, whatever the prior.

    The step removes the noise :math:`\sigma_{min}\varepsilon` from the measured directions; where the prior has no
    spread of its own (low-dimensional data: a low-rank mixture, natural images) the increment
    :math:`\alpha\mu(x) - \mu(D(x))` is a sum of m terms of variance about :math:`\sigma_{min}^2/\sigma_y^2`, so
    :math:`m\sigma_{min}^2/\sigma_y^2 \le v` keeps the ESS of that one step near :math:`e^{-v}`. Measured: EDM's
    :math:`0.004\tau` leaves ESS/N = 0.06 after this step on the 2048-D MRI mixture (1024 measurements).
    """
    return sigma_y * math.sqrt(var / max(m, 1))


MALA_ACCEPT = 0.574   # optimal MALA acceptance rate (Roberts & Rosenthal 1998): the corrector's step adapts to it


def conditional_ess(log_w: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    r"""(G,) conditional ESS of log-weight increments ``delta`` (G, N) given the log-weights ``log_w`` (G, N)
    (Zhou, Johansen & Aston 2016): :math:`(\sum_i W_i e^{\delta_i})^2 / \sum_i W_i e^{2\delta_i}` in (0, 1], W the
    normalised weights; 1 when the increment is constant. Non-finite increments count as weight 0."""
    lw = torch.log_softmax(log_w.to(F64), dim=1)
    d = torch.where(torch.isfinite(delta), delta.to(F64), torch.full_like(delta, float("-inf"), dtype=F64))
    c = torch.exp(2 * torch.logsumexp(lw + d, dim=1) - torch.logsumexp(lw + 2 * d, dim=1))
    return torch.nan_to_num(c, nan=0.0)


def _adaptive_level(state, x, Dx, r, lik, sig: float, sig_g: float, a: float, alpha_of, target: float,
                    rel_tol: float = 0.05, max_iter: int = 40) -> float:
    r"""The next noise level :math:`\sigma' \in [\sigma_g, \sigma)`: :math:`\sigma_g` if the PF-ODE Euler step to it keeps
    the conditional ESS of the weight increments :math:`\alpha_\sigma\mu(x) - \alpha_{\sigma'}\mu(x')` at or above
    ``target``, else (bisection on the step fraction :math:`h = 1 - \sigma'/\sigma`, to ``rel_tol``) the largest such
    step. Costs residual evaluations only (``Dx`` = D(x, sigma) is reused)."""
    mu0 = a * lik.value(r)

    def ok(s_next: float) -> bool:
        xn = x + (1.0 - s_next / sig) * (Dx - x)
        d = mu0 - alpha_of(s_next) * lik.value(lik.residual(xn))
        return bool(conditional_ess(state.log_w, d.reshape(state.G, state.N)).min() >= target)

    if ok(sig_g):
        return sig_g
    lo, hi = 0.0, 1.0 - sig_g / sig            # accepted / rejected step fractions
    for _ in range(max_iter):
        h = 0.5 * (lo + hi)
        if ok(sig * (1.0 - h)):
            lo = h
        else:
            hi = h
        if lo > 0 and hi - lo <= rel_tol * hi:
            break
    return sig * (1.0 - (lo if lo > 0 else hi))


def _mala(x, r, D, lik, log_prior, sig: float, a: float, n_steps: int, eps_frac: torch.Tensor, lam: float,
          sig_y: float, n_particles: int, randn, generator):
    r"""``n_steps`` Metropolis-adjusted Langevin steps leaving :math:`q_\sigma \propto p_\sigma e^{-\alpha\mu}` invariant.

    Proposal :math:`x' = x + \epsilon\nabla\log q_\sigma(x) + \sqrt{2\epsilon}\,\xi`, accepted with probability
    :math:`\min\{1, q_\sigma(x')k(x \mid x')/q_\sigma(x)k(x' \mid x)\}`, :math:`k(b \mid a) = \mathcal N(b; a + \epsilon\nabla\log q_\sigma(a),
    2\epsilon I)` (Roberts & Tweedie 1996); :math:`\log q_\sigma = \log p_\sigma - \alpha\mu` needs the noised prior's log-density
    ``log_prior(x, sigma)``, its score :math:`(D(x,\sigma) - x)/\sigma^2`. Step :math:`\epsilon` = ``eps_frac`` / curvature
    (:math:`\alpha\lambda_{max}/\sigma_y^2 + 1/\sigma^2`), one fraction per measurement, multiplied after every step by
    :math:`e^{\text{acceptance} - 0.574}` (updated in place). One NFE per step plus one for the start; returns
    ``(x, r, D(x, sigma), mean acceptance (G,))`` so that the next predictor reuses D.
    """
    G = eps_frac.shape[0]
    curv = a * lam / sig_y ** 2 + 1.0 / sig ** 2
    shape = (-1,) + (1,) * (x.dim() - 1)

    def evaluate(z, rz):
        Dz = D(z, sig)
        return Dz, log_prior(z, sig).to(F64) - a * lik.value(rz), (Dz - z) / sig ** 2 - a * lik.grad(z, rz)

    Dx, lp, g = evaluate(x, r)
    rates = []
    for _ in range(n_steps):
        eps64 = (eps_frac / curv).repeat_interleave(n_particles)
        eps = eps64.to(x.dtype).reshape(shape)
        xp = x + eps * g + (2 * eps).sqrt() * randn(x)
        rp = lik.residual(xp)
        Dp, lpp, gp = evaluate(xp, rp)
        fwd, bwd = xp - x - eps * g, x - xp - eps * gp
        log_ratio = lpp - lp - (inner(bwd, bwd).to(F64) - inner(fwd, fwd).to(F64)) / (4 * eps64)
        gdev = generator.device if generator is not None else torch.device("cpu")
        u = torch.rand(x.shape[0], generator=generator, device=gdev, dtype=F64).to(x.device)
        acc = (torch.log(u) < log_ratio) & torch.isfinite(log_ratio)
        x, r, Dx, g = (torch.where(acc.reshape(-1, *(1,) * (new.dim() - 1)), new, old)
                       for new, old in ((xp, x), (rp, r), (Dp, Dx), (gp, g)))
        lp = torch.where(acc, lpp, lp)
        rate = acc.reshape(G, n_particles).to(F64).mean(1)
        eps_frac.mul_(torch.exp(rate - MALA_ACCEPT)).clamp_(1e-4, 1.0)
        rates.append(rate)
    return x, r, Dx, torch.stack(rates).mean(0)

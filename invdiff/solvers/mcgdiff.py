r"""MCGdiff: Monte Carlo guided diffusion for Bayesian linear inverse problems (SMC comparator for ``smc``).

Cardoso, Janati, Le Corff & Moulines, "Monte Carlo guided Diffusion for Bayesian linear inverse problems",
ICLR 2024 (arXiv:2308.07983); reference code ``gabrielvc/mcg_diff`` (``particle_filter.py``). Written here in
the VE variables of invdiff priors (the DDPM/DDIM(eta = 1) kernel is the same Markov chain rescaled).

**Why this comparator** (rather than TDS): MCGdiff is built for *linear-Gaussian* likelihoods. In the SVD basis
:math:`\bar x = V^\top x` of :math:`A = U\mathrm{diag}(s)V^\top` the data read :math:`\tilde y_i = \bar y_i/s_i = \bar x_{0,i} +
(\sigma_y/s_i)\epsilon_i`, i.e. coordinate i observed *at noise level* :math:`\sigma^{obs}_i = \sigma_y/s_i` of the forward
diffusion, so the posterior is the diffusion path conditioned on these coordinate values. Its proposals are exact
Gaussian products (no network vector-Jacobian products, one NFE per level like AFDPS) and it is asymptotically
exact in the number of particles; TDS instead needs a VJP through the network and an approximate twist.

**Algorithm** (paper Sec. 3, Alg. 1; a fully adapted auxiliary particle filter on the reverse chain):

- levels :math:`\sigma_0 > \dots > \sigma_{K-1} > 0 = \sigma_K`: the EDM grid plus up to ``max_obs_levels`` of the
  distinct :math:`\sigma^{obs}_i` (the paper's grid augmentation, ``get_optimal_timesteps_from_singular_values``);
- coordinate i is *pinned* at :math:`g_i`, the largest level :math:`\le\sigma^{obs}_i`, by the observation potential
  :math:`\mathcal N(\tilde y_i; \bar x_i, \sigma^{obs\,2}_i - \sigma_{g_i}^2)`. Since the forward kernel adds
  :math:`\sigma_{g_i}^2` of noise, the path measure times this potential has exactly :math:`p(x_0 \mid y)` as its
  :math:`x_0`-marginal (with the paper's choice :math:`\sigma_{g_i} = \sigma^{obs}_i` the potential is a Dirac);
- above :math:`g_i` the twist :math:`\mathcal N(\tilde y_i; \bar x_i, \sigma^2 - \sigma^{obs\,2}_i)` (the paper's
  :math:`g_t`, the forward transition from the observation level), divided out at the next level;
- kernel (DDPM ancestral = DDIM eta = 1): :math:`m = \bar D + (\sigma'/\sigma)^2(\bar x - \bar D)`,
  :math:`c = \sigma'^2(\sigma^2 - \sigma'^2)/\sigma^2` with :math:`\bar D = V^\top D(V\bar x, \sigma)`;
- weight (computed before moving, "fully adapted"): :math:`\prod_i \mathcal N(\tilde y_i; m_i, c + w'_i) / g_\sigma(\bar x)`;
  resample (default every step, ``ess_threshold=1``: the paper resamples every step), then draw each potential
  coordinate from the Gaussian product :math:`\mathcal N(m, c)\mathcal N(\tilde y; \cdot, w')`, the others from
  :math:`\mathcal N(m, c)`;
- initial level: :math:`p_{\sigma_0} \approx \mathcal N(m_0, \tau^2 + \sigma_0^2)` times the level-0 potentials, sampled
  exactly (as AFDPS Stage I).

Needs a cheap real SVD: ``MatrixOperator`` (dense SVD), inpainting, single-coil Cartesian MRI (deepinv
``DecomposablePhysics`` with an orthonormal V); other operators raise a clear TypeError. ``sigma_y > 0`` is
required (the noiseless variant pins at a level with a tuned variance; not implemented).

Outputs as ``smc``: equally weighted draws, weighted mean, weighted ensemble and diagnostics in ``info``.

Example:
    >>> import torch, invdiff
    >>> from invdiff.operators import MatrixOperator
    >>> from invdiff.priors import GaussianMixture
    >>> prior = GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.eye(2)[None])
    >>> op = MatrixOperator(torch.tensor([[1.0, 0.0]]), sigma=0.5)
    >>> rec = invdiff.solve(torch.tensor([[0.8]]), op, prior, solver="mcgdiff", n_samples=8, num_steps=20)
    >>> rec.samples.shape, rec.info["num_levels"]
    (torch.Size([8, 1, 2]), 21)
"""
from __future__ import annotations

import math

import torch

from .._validate import fail
from .base import Option, SolverOutput, chains_batch, chains_unbatch, progress_bar, register
from .particles import ParticleState, spectral_basis
from .primitives import noise_sigma
from .smc import _denoiser, edm_sigmas, noise_range

F64 = torch.float64


def observation_levels(sig_obs: torch.Tensor, grid: list[float], max_obs_levels: int) -> list[float]:
    """The grid augmented with up to ``max_obs_levels`` distinct observation noise levels inside it (descending,
    ending with 0); levels are spread over the distinct values in log scale when there are more."""
    lo, hi = grid[-2], grid[0]
    vals = torch.unique(sig_obs[torch.isfinite(sig_obs)].to(F64))
    vals = vals[(vals > lo) & (vals < hi)]
    if vals.numel() > max_obs_levels:
        pick = torch.linspace(0, vals.numel() - 1, max_obs_levels).round().long()
        vals = vals[pick]
    levels = sorted(set(grid[:-1]) | {float(v) for v in vals}, reverse=True)
    out = [levels[0]]
    for v in levels[1:]:
        if v < out[-1] * (1 - 1e-9):
            out.append(v)
    return out + [0.0]


OPTIONS = (
    Option("num_steps", int, 100, "EDM noise levels (plus up to max_obs_levels observation levels)", lo=1),
    Option("sigma_max", float, None, "largest noise level; None: 80 tau (tau^2 = prior variance)", lo=0.0,
           lo_open=True),
    Option("sigma_min", float, None, "smallest noise level; None: 0.004 tau", lo=0.0, lo_open=True),
    Option("rho", float, 7.0, "EDM grid exponent", lo=0.0, lo_open=True),
    Option("ess_threshold", float, 1.0, "resample when ESS/N falls below it (1: every level, as the paper)", lo=0.0,
           hi=1.0, lo_open=True),
    Option("resample", str, "systematic", "resampling scheme", choices=("systematic", "multinomial")),
    Option("max_obs_levels", int, 32, "observation noise levels added to the grid", lo=0),
    Option("sigma_y", float, None, "measurement noise std (> 0); None: the physics' noise level", lo=0.0),
    Option("chunk", int, None, "at most this many particles per network call (None: all)", lo=1),
)


@register("mcgdiff", options=OPTIONS)
def mcgdiff(y, physics, prior, *, generator, n_samples, progress, num_steps, sigma_max, sigma_min, rho, ess_threshold,
            resample, max_obs_levels, sigma_y, chunk):
    r"""MCGdiff particle filter (see module docstring); ``n_samples`` = particles per measurement.

    Options: ``num_steps`` EDM levels (plus up to ``max_obs_levels`` observation levels; NFE per particle = number
    of levels), ``sigma_max`` / ``sigma_min`` / ``rho`` (defaults as ``smc``), ``ess_threshold`` in (0, 1] (1 =
    resample at every level, as the paper), ``resample`` "systematic" | "multinomial", ``sigma_y`` (default: the
    physics' noise; > 0), ``chunk`` (max particles per network call).
    """
    sig_y = noise_sigma(physics) if sigma_y is None else sigma_y
    if not sig_y > 0:
        fail("sigma_y", "a noise level > 0 for solver 'mcgdiff' (observations are matched to diffusion noise levels "
                        "sigma_y / s_i): give the physics Gaussian noise or pass sigma_y=...", sig_y)
    yy = chains_batch(y, n_samples)
    with torch.no_grad():
        x_like = torch.zeros_like(physics.A_adjoint(yy))
    basis = spectral_basis(physics, x_like, generator)
    if basis is None:
        fail("physics", "an operator with a cheap real SVD for 'mcgdiff' (MatrixOperator, inpainting, single-coil "
                        "Cartesian MRI); use solver='smc' for blur, multi-coil MRI or CT", type(physics).__name__,
             TypeError)
    m0, tau2, s_max, s_min = noise_range(prior, x_like, sigma_max, sigma_min)
    D, calls = _denoiser(prior, chunk)
    gdev = generator.device if generator is not None else torch.device("cpu")

    def randn(like):
        return torch.randn(like.shape, generator=generator, device=gdev, dtype=like.dtype).to(like.device)

    with torch.no_grad():
        # ---- coordinates: y~_i = ybar_i / s_i observed at noise level sigma_y / s_i ----
        c_like = basis.coef(x_like).to(F64)
        s = basis.s.to(device=c_like.device, dtype=F64).expand_as(c_like)
        obs = s > 0
        yt = torch.where(obs, basis.ybar(yy).to(F64) / s.clamp_min(1e-300), torch.zeros_like(c_like))
        sig_obs = torch.where(obs, sig_y / s.clamp_min(1e-300), torch.full_like(c_like, math.inf))
        levels = observation_levels(sig_obs[:1], edm_sigmas(num_steps, s_min, s_max, rho), max_obs_levels)
        lv = torch.tensor(levels, dtype=F64, device=c_like.device)
        # pin level g_i: the largest level <= sigma_obs_i (index into levels; the final level 0 always qualifies)
        # (with the relative tolerance 1e-9 of observation_levels' merging: a coordinate whose sigma_obs sits a rounding
        # error below a merged level is pinned there, not twisted by a potential of variance ~1e-17 one level above)
        g = torch.searchsorted(-lv, -(sig_obs * (1 + 1e-9)).clamp_max(float(lv[0])), right=False)
        pin_var = torch.where(obs, sig_obs.clamp_max(1e300) ** 2 - lv[g.clamp_max(len(levels) - 1)] ** 2,
                              torch.zeros_like(c_like)).clamp_min(0.0)

        def potential(j: int):
            """(active, variance, is_twist) of the coordinate potentials at level j."""
            twist = obs & (g > j)
            pin = obs & (g == j)
            var = torch.where(twist, lv[j] ** 2 - sig_obs.clamp_max(1e300) ** 2, pin_var).clamp_min(0.0)
            return twist | pin, var, twist

        def log_gauss(val, mean, var):
            """log N(val; mean, var) per coordinate, with its normalising constant (shared by the particles: it
            cancels in the normalised weights but not in the evidence)."""
            v = var.clamp_min(1e-300)
            return -(val - mean) ** 2 / (2 * v) - 0.5 * torch.log(2 * math.pi * v)

        # ---- initial level: N(m0, tau^2 + sigma_0^2) x potentials at level 0, sampled exactly ----
        act, w, _ = potential(0)
        c0 = basis.coef(torch.as_tensor(m0, dtype=x_like.dtype, device=x_like.device).expand_as(x_like)).to(F64)
        v0 = tau2 + levels[0] ** 2
        post_var = torch.where(act, 1.0 / (1.0 / v0 + 1.0 / w.clamp_min(1e-300)), torch.full_like(c0, v0))
        post_mean = torch.where(act, post_var * (c0 / v0 + yt / w.clamp_min(1e-300)), c0)
        xb = post_mean + post_var.sqrt() * randn(c0)
        state = ParticleState(xb, n_groups=y.shape[0])
        # evidence of the initial level: prod_i N(y~_i; m0_i, v0 + w_i) over its potentials (one row per measurement)
        log_z_init = torch.where(act, log_gauss(yt, c0, v0 + w), torch.zeros_like(c0)).reshape(xb.shape[0], -1).sum(1)
        log_z_init = log_z_init[::n_samples]
        B = xb.shape[0]
        L = len(levels) - 1
        for j in progress_bar(range(L), progress, "mcgdiff"):
            sig, sig_n = levels[j], levels[j + 1]
            xb = state.x
            Db = basis.coef(D(basis.image(xb.to(x_like.dtype)), sig)).to(F64)
            m = Db + (sig_n / sig) ** 2 * (xb - Db)                              # DDPM ancestral kernel mean
            c = sig_n ** 2 * (sig ** 2 - sig_n ** 2) / sig ** 2                  # and variance (eta = 1)
            act_n, w_n, _ = potential(j + 1)
            _, w_cur, twist_cur = potential(j)
            # ---- fully adapted weight: prod_i N(y~_i; m_i, c + w'_i) / g_sigma(x) (twists only) ----
            num = torch.where(act_n, log_gauss(yt, m, c + w_n), torch.zeros_like(m)).reshape(B, -1).sum(1)
            den = torch.where(twist_cur, log_gauss(yt, xb, w_cur), torch.zeros_like(m)).reshape(B, -1).sum(1)
            state.reweight(num - den)
            state.record()
            rows = state.resample(generator=generator, threshold=ess_threshold, method=resample) if j < L - 1 \
                else None
            if rows is not None:
                m = m.index_select(0, rows)
            # ---- move: Gaussian product on potential coordinates, the kernel elsewhere ----
            tot = (c + w_n).clamp_min(1e-300)
            mean_p = torch.where(act_n, (w_n * m + c * yt) / tot, m)
            var_p = torch.where(act_n, c * w_n / tot, torch.full_like(m, c))
            state.x = mean_p + var_p.sqrt() * randn(m)
            state.quarantine()

    # ---- log p(y): p(y~) from the particle filter, times the Jacobian 1/s_i of y~_i = ybar_i / s_i, times the
    # ---- density N(0, sigma_y^2) of the measurement components outside the range of A
    y_rows = yy[::n_samples]
    yf = (torch.view_as_real(y_rows) if y_rows.is_complex() else y_rows).reshape(y_rows.shape[0], -1).to(F64)
    yb = torch.where(obs, basis.ybar(yy).to(F64), torch.zeros_like(c_like))[::n_samples].reshape(y_rows.shape[0], -1)
    n_obs = int(obs[:1].sum())
    m_y = yf.shape[1]
    e_out = ((yf ** 2).sum(1) - (yb ** 2).sum(1)).clamp_min(0.0)
    log_ev = (log_z_init.to(state.log_evidence.device) + state.log_evidence
              - torch.log(s[:1][obs[:1]]).sum() - 0.5 * (m_y - n_obs) * math.log(2 * math.pi * sig_y ** 2)
              - e_out.to(state.log_evidence.device) / (2 * sig_y ** 2))
    x_img = basis.image(state.x.to(x_like.dtype))
    mean = state.weighted_mean(x_img)
    final = ParticleState(x_img, n_groups=y.shape[0], log_w=state.log_w)
    samples = final.draws(n_samples, generator=generator, method="systematic")
    hist = state.history()
    info = {
        "log_evidence": log_ev.cpu(), "num_steps": num_steps, "num_levels": L, "levels": levels, "sigma_max": s_max, "sigma_min": s_min,
        "sigma_y": sig_y, "ess_threshold": ess_threshold, "resample": resample, "basis": basis.kind,
        "particles": chains_unbatch(x_img, n_samples), "weights": state.weights().T.contiguous(),
        "std": final.weighted_var().sqrt(), "ess": hist["ess"], "resampled": hist["resampled"],
        "n_resample": hist["n_resample"], "unique_ancestors": hist["unique_ancestors"],
        "n_quarantined": hist["n_quarantined"], "nfe_per_particle": calls["calls"],
    }
    return SolverOutput(mean=mean, samples=samples, info=info, std=info["std"].to(mean.dtype))

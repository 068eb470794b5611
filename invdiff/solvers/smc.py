r"""AFDPS: approximation-free ensemble (weighted-particle) diffusion posterior sampling.

Chen, Ren, Min, Ying & Izzo, "Solving Inverse Problems via Diffusion-Based Priors: An Approximation-Free
Ensemble Sampling Approach", arXiv:2506.03979 (2025). Equation numbers follow the paper as quoted by the
reference notes (``smc-ads-conditional-dc.md`` §1); the updates are implemented from the continuous equations.

**Target family (Eq. 3.1).** With the likelihood evaluated *at the noisy state*,
:math:`\mu(x) = \|A(x) - y\|^2 / 2\sigma_y^2`, and the VE prior marginals :math:`p_\sigma = p_0 * \mathcal N(0,\sigma^2 I)`:

.. math::  q_\sigma(x) \propto p_\sigma(x)\, e^{-\alpha_\sigma \mu(x)},  \qquad q_0 = p(x \mid y)\ \ (\alpha_0 = 1).

``tempering`` picks :math:`\alpha_\sigma` (App. B): "none" (:math:`\alpha \equiv 1`, the canonical target), "linear"
(:math:`1 - \sigma/\sigma_{max}`, the reference code), or "noise" (default): :math:`\alpha_\sigma = \sigma_y^2/(\sigma_y^2 +
\lambda_{max}\sigma^2)`, i.e. :math:`\alpha\mu = \|Ax - y\|^2/2(\sigma_y^2 + \lambda_{max}\sigma^2)`, the flat-prior
:math:`p(y \mid x_\sigma)`. All end at the exact posterior; "noise" keeps the target's spread along the measured
directions proportional to :math:`\sigma`, like the probability flow, which cuts the weight variance (measured in
``benchmarks/smc_exactness.py``; with :math:`\alpha \equiv 1` the prior flow contracts the likelihood-pinned spread and the
per-step log-weight fluctuation grows like :math:`\sqrt{m}\,\delta/\sigma` for m measurements).

**Stage I (Sec. 3.1).** :math:`p_{\sigma_{max}} \approx \mathcal N(m_0, \rho^2 I)` with :math:`\rho^2 = \tau^2 + \sigma_{max}^2`
(:math:`m_0, \tau^2` the prior's mean and per-pixel variance, :func:`prior_moments`). For linear A, :math:`q_{\sigma_{max}}` is
Gaussian and is sampled exactly (closed form in an SVD basis, else perturbation-optimisation with conjugate
gradients); log-weights start at 0. Nonlinear A: Gaussian draws with importance weights :math:`e^{-\alpha\mu}`.

**Particle system (Eq. 3.6)**, reverse clock :math:`d\tau = -d\sigma`, prior drift
:math:`H = \tfrac12(g^2 + V^2)\nabla\log p_\sigma` with :math:`g^2 = 2\sigma` (VE, :math:`\sigma(t) = t`),
:math:`\nabla\log p_\sigma(x) = (D(x,\sigma) - x)/\sigma^2`:

.. math::  dx = (H - V^2\alpha\nabla\mu)\,d\tau + V\,dW,\qquad
           d\log w = \big[\tfrac12 V^2(\alpha^2\|\nabla\mu\|^2 - \alpha\Delta\mu) - \alpha H\cdot\nabla\mu - \dot\alpha\mu\big]\,d\tau.

- ``variant="ode"`` (Algs. 3/4, default): :math:`V = 0`. Predictor = the prior probability-flow ODE, Euler:
  :math:`x' = x + (1 - \sigma'/\sigma)(D(x,\sigma) - x)`. The weight rate is :math:`-\tfrac{d}{d\tau}[\alpha\mu(x(\tau))]` along
  the path, so its integral over the step is exact: :math:`\log w \mathrel{+}= \alpha_k\mu(x) - \alpha_{k+1}\mu(x')`.
  Corrector (weights unchanged): ``corrector_steps`` unadjusted Langevin (ULA) steps on :math:`q_{\sigma'}`,
  :math:`x \leftarrow x + \epsilon(\nabla\log p_{\sigma'} - \alpha\nabla\mu) + \sqrt{2\epsilon}\,\xi`, with
  :math:`\epsilon` = ``corrector_step`` / :math:`(\alpha\lambda_{max}/\sigma_y^2 + 1/\sigma'^2)` (a fraction of the stiffest curvature,
  :math:`\lambda_{max}(A^\top A)` by power iteration once). The stiff likelihood part runs
  :math:`n = \lceil(\alpha\lambda_{max}/\sigma_y^2 + 1/\sigma'^2)\sigma'^2\rceil` ULA substeps of that :math:`\epsilon` (at most ``max_substeps``)
  with the prior score frozen: one NFE per corrector step, total Langevin time between ``corrector_step``
  :math:`\sigma'^2` and twice that. Freezing the score is accurate where the likelihood is stiff
  (:math:`\sigma \gg \sigma_y`); at :math:`\sigma \lesssim \sigma_y/\sqrt{\lambda_{max}}` n is 1 or 2.
  ``corrector="mala"``: Metropolis-adjusted Langevin steps instead (:func:`_mala`), which leave :math:`q_{\sigma'}`
  exactly invariant. The acceptance ratio needs the *density* of the intermediate target,
  :math:`\log q_{\sigma'} = \log p_{\sigma'} - \alpha'\mu` up to a constant, i.e. the noised prior's
  :math:`\log p_{\sigma'}` (``prior.log_prob(x, sigma)``: closed form for a
  :class:`~invdiff.priors.GaussianMixture`); a network prior gives only the score, so it has ULA only. No substeps; the
  step starts at ``corrector_step`` / curvature and adapts per measurement to 57 % acceptance; the corrector's last
  denoiser call is reused by the next predictor (same NFE as ULA). ``info["acceptance"]``: (levels - 1, B).
- **Adaptive levels** (``cess_target``, "ode"): before each predictor step the step to the next EDM level is
  shortened, by bisection on :math:`1 - \sigma'/\sigma` (residual evaluations only, D(x, sigma) is reused), until the
  conditional ESS of its weight increments (Zhou, Johansen & Aston 2016; :func:`conditional_ess`) is at least
  ``cess_target``; the grid then resumes. At most ``max_levels`` levels (default 4 ``num_steps``; a RuntimeWarning
  says when the cap was reached). ``info["levels"]`` lists the noise levels used.
- ``variant="sde"`` (Alg. 2): :math:`V = g`.
  ``integrator="exact"`` (linear A, default): the reverse-SDE (DDPM ancestral) kernel
  :math:`K = \mathcal N(D + (\sigma'/\sigma)^2(x - D),\ \sigma'^2(\sigma^2 - \sigma'^2)/\sigma^2)` tilted exactly by
  :math:`e^{-\alpha'\mu}` (a Gaussian product), weighted by its normaliser :math:`Z(x)e^{\alpha\mu(x)}`, whose logarithm
  tends to Eq. 3.6's :math:`R\,\delta\tau` as the step shrinks; stable at any step size.
  ``integrator="euler"``: Euler-Maruyama of Eq. 3.6 with all terms at the old state and the stability guard:
  the likelihood drift runs in substeps (prior score frozen) so that :math:`2\sigma\alpha\lambda_{max}\delta/\sigma_y^2 \le`
  ``stability``, at most ``max_substeps`` (a RuntimeWarning says when that cap makes the step unstable).
  :math:`\Delta\mu` is constant for linear A (it cancels on normalisation) and estimated by Hutchinson probes
  (:func:`hutchinson_laplacian`) otherwise. Both SDE forms have heavy-tailed weights (reference §1.8).
- **Resampling (Alg. 1)**: systematic, when ESS/N < ``ess_threshold`` (not after the last step).
- The last step :math:`\sigma_{min} \to 0` is the probability-flow Euler step :math:`x = D(x, \sigma_{min})` in both variants
  (an Euler-Maruyama step to 0 would reflect the particle about D).

Noise levels: EDM grid (Karras et al. 2022, Eq. 5) from ``sigma_max`` (default :math:`80\tau`) to ``sigma_min``
with :math:`\rho = 7`, then 0: EDM's 80 / 0.002 for data of std 0.5, rescaled to the prior. Default ``sigma_min`` =
:math:`\min(0.004\tau,\ 0.1\,\sigma_y/\sqrt m)` (:func:`final_level_sigma`, m = measurement values): the last step
:math:`x \to D(x, \sigma_{min})` removes the remaining noise from every measured direction at once, and where the prior
has no spread of its own its log-weight increment has variance about :math:`m\sigma_{min}^2/\sigma_y^2`; with EDM's value
alone that one step left ESS/N = 0.06 on the 2048-D MRI mixture (``benchmarks/results/smc_exactness.md``). Variant
"sde" keeps :math:`0.004\tau`: with the smaller level its exact-kernel run failed on that problem (SW/floor 535; cause not
investigated).

**Islands** (``island_size`` n < ``n_samples``): the particles run as K = ``n_samples / n`` independent SMC samplers
of n particles each (one batched network call; the island particle model of Verge, Dubarry, Del Moral & Moulines 2015
without island-level interaction), pooled at the end by :func:`pool_islands` with island weights 1/K ("equal") or
:math:`\hat Z_k / \sum_j \hat Z_j` ("evidence"). An island whose particles descend from one ancestor still adds one
independent lineage, so the pooled ensemble keeps at least K. ``info["log_evidence"]`` is then
:math:`\log\frac1K\sum_k \hat Z_k` and ``info["log_evidence_se"]`` its standard error from the islands' spread.

Outputs: ``samples`` are equally weighted (systematically resampled) draws from the final weighted ensemble,
``mean`` is the weighted mean (``reduce="best"``: the highest-weight particle, a MAP-like statistic, not a
posterior mean). ``info``: the weighted ensemble (``particles`` (N, B, ...), ``weights`` (N, B)), the weighted
per-pixel ``std``, the ESS/N trace ``ess`` (levels, B), ``levels`` (the noise levels used, sigma_max ... 0) and
``n_levels``, ``acceptance`` (MALA), ``n_resample``, ``unique_ancestors``, ``nfe_per_particle``, ``lambda_max``.

**Evidence** ``info["log_evidence"]`` ((B,) float64): the SMC estimate of :math:`\log p(y)` (Del Moral, Doucet & Jasra
2006): :math:`\log Z_I + \sum_k \log\sum_i W_i^{(k)} w_i^{(k)} - \tfrac m2\log 2\pi\sigma_y^2`, with :math:`W^{(k)}` the normalised
weights before level k's increment (1/N after a resampling) and
:math:`Z_I = \int\mathcal N(x; m_0, \rho^2 I)e^{-\alpha_0\mu}dx = (2\pi\sigma_y^2/\alpha_0)^{m/2}\,\mathcal N(y; Am_0, \rho^2AA^\top + \sigma_y^2/\alpha_0 I)`
(from the SVD basis, or the dense A when n m <= ``EVIDENCE_DENSE_MAX``; None otherwise, e.g. 64x64 multi-coil MRI).
The "sde" kernels keep their Gaussian determinants and Laplacian constants for it. It is consistent only as far as
every move leaves its tempered target invariant. Measured (``benchmarks/results/smc_evidence.md``, 64 particles, 4
runs): with the default ULA corrector it is within 0.1 nats on 2-D but its O(step) bias shows on 16-D (-0.7 to -1.1
nats, not shrinking with 800 levels) and on the 256-D low-rank inpainting problem (+22 nats); ``corrector="mala"``
removes it: within 0.1 nats on the 2-D and 16-D problems at 800 levels (and at 200 levels except the 16-D Gaussian,
-0.39 +- 0.31), -0.55 +- 0.29 nats (run sd 0.57) at 256-D.

Known limits (reference §1.8-1.9, and our benchmarks): the weights are exact only as the step size -> 0; the
weight variance grows with the number of measurements, so at image sizes a few lineages carry the ensemble
(see the ESS trace); multimodal posteriors need many particles; ULA correctors carry an O(step) bias.
Measured (``benchmarks/results/smc_exactness.md``, goals SW <= 1.5x the Monte Carlo floor, posterior-mean MSE <= 1.05x
the MMSE, 90 % coverage in [0.85, 0.95]): on 2048-D single-coil MRI (1024 measurements) the smallest-level fix takes
the defaults (N = 64) from SW/floor 3.98 / MSE 1.41 / coverage 0.68 (ESS/N 0.06 after the last step) to 1.92 / 1.09 /
0.82, and 800 levels (``num_steps=800``, 4x the NFE) meet all three goals there: 1.25 / 1.020 / 0.864 at N = 64,
1.34 / 1.020 / 0.881 at N = 128, 1.26 / 1.006 / 0.891 at N = 256. With 800 levels every other problem meets them
too except the 8-D 25-mode mixture (coverage 0.845). At 200 levels the 16-D mixture (SW/floor 1.94) stays
discretisation-limited. ``cess_target=0.9`` is between the two (MRI 1.68 / 1.053 / 0.836 at 561 NFE); the MALA
corrector (exact, but its step shrinks with the dimension to keep 57 % acceptance) mixes too little above 256-D
(MRI SW/floor 7.9, coverage 0.11), so it is the choice for evidence, not for high-dimensional sampling.

Images (64x64, learned priors; ``benchmarks/results/smc_images.md``, ``smc_islands_pilot.md``): one run of 16
particles ends in one lineage (resampling at about half the levels) and its std map is 3-10x too small. With the
linear tempering that gives the best mean there, the weights do not measure the posterior: the targets pin
:math:`Ax_\sigma` to y while :math:`x_\sigma` carries noise :math:`\sigma`, the predictor leaves them and the corrector pulls
back (log-evidence estimates of -1.7e6 nats at 200 levels, -4.8e5 at 800, on 8-view CT). Pooled independent
runs (islands) are what calibrates: on CT / multi-coil MRI, islands of 1 particle (no weights) are as good as
islands of 4 and better than 4 runs of 16, so the measured defaults there (:mod:`invdiff.solvers.defaults`) are
``island_size=1`` with linear tempering: ``n_samples`` independent tempered predictor-corrector chains, pooled
(64 chains, 3 held-out images: 90 % intervals cover 82 % / 85 % of pixels on 8-view CT / 4x 8-coil MRI, posterior
mean +2.1 / +2.0 dB over one run of 16). Elsewhere (Gaussian mixtures, operators without a measured row) the default
stays one weighted run.

Example:
    >>> import torch, invdiff
    >>> from invdiff.operators import MatrixOperator
    >>> from invdiff.priors import GaussianMixture
    >>> prior = GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.eye(2)[None])
    >>> op = MatrixOperator(torch.tensor([[1.0, 0.0]]), sigma=0.5)
    >>> rec = invdiff.solve(torch.tensor([[0.8]]), op, prior, solver="smc", n_samples=8, num_steps=20)
    >>> rec.samples.shape, rec.info["weights"].shape, rec.info["nfe_per_particle"]
    (torch.Size([8, 1, 2]), torch.Size([8, 1]), 39)
"""
from __future__ import annotations

import math
import warnings

import torch

from .._validate import check_positive, fail
from ..schedules import EDMSchedule
from .base import Option, SolverOutput, chains_batch, chains_unbatch, progress_bar, register
from .particles import ParticleState, map_chunked, sample_linear_gaussian, spectral_basis
from .primitives import inner, noise_sigma, op_norm_sq
from .smc_islands import pool_islands
from .smc_likelihood import GaussianLikelihood, _flat_y, gram_spectrum, log_gaussian_evidence
from .smc_moves import _adaptive_level, _mala, final_level_sigma

F64 = torch.float64


# ------------------------------------------------------------------------------------------------
# pieces shared with the other particle solvers
# ------------------------------------------------------------------------------------------------
def prior_moments(prior, x_like: torch.Tensor) -> tuple[torch.Tensor, float]:
    r"""Mean :math:`m_0` (broadcastable to ``x_like``) and mean per-pixel variance :math:`\tau^2` of the prior.

    Exact for a :class:`~invdiff.priors.GaussianMixture`; ``data_shift`` / ``sigma_data`` of an EDM-preconditioned
    neural prior; else the midpoint / (width/4)^2 of ``value_range``; else 0 / 1.
    """
    inner_prior = getattr(prior, "inner", prior)
    mean, var = getattr(inner_prior, "mean", None), getattr(inner_prior, "variance", None)
    if isinstance(mean, torch.Tensor) and isinstance(var, torch.Tensor):
        m = mean.to(device=x_like.device, dtype=x_like.dtype).reshape(1, *x_like.shape[1:])
        return m, float(var.double().mean())
    if hasattr(inner_prior, "sigma_data"):
        return (torch.tensor(float(getattr(inner_prior, "data_shift", 0.0)), device=x_like.device),
                float(inner_prior.sigma_data) ** 2)
    vr = getattr(inner_prior, "value_range", None)
    if vr is not None:
        lo, hi = float(vr[0]), float(vr[1])
        return torch.tensor(0.5 * (lo + hi), device=x_like.device), ((hi - lo) / 4) ** 2
    return torch.tensor(0.0, device=x_like.device), 1.0


def noise_range(prior, x_like: torch.Tensor, sigma_max: float | None, sigma_min: float | None):
    r"""``(m0, tau2, sigma_max, sigma_min)``: the prior's mean and per-pixel variance (:func:`prior_moments`) and the noise
    range, by default EDM's 80 / 0.002 for data of std 0.5 rescaled to the prior (:math:`80\tau`, :math:`0.004\tau`)."""
    m0, tau2 = prior_moments(prior, x_like)
    tau = math.sqrt(tau2)
    s_max = 80.0 * tau if sigma_max is None else sigma_max
    s_min = 0.004 * tau if sigma_min is None else sigma_min
    check_positive("sigma_max", s_max)
    check_positive("sigma_min", s_min)
    if not s_min < s_max:
        fail("sigma_min", f"a value below sigma_max = {s_max:g}", s_min)
    return m0, tau2, s_max, s_min


def edm_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> list[float]:
    """EDM noise levels (Karras et al. 2022, Eq. 5) from sigma_max to sigma_min, then 0 (num_steps + 1 values)."""
    s = EDMSchedule(sigma_min=sigma_min, sigma_max=sigma_max, rho=rho).sigmas(num_steps)
    return [float(v) for v in s] + [0.0]


def _denoiser(prior, chunk):
    counter = {"calls": 0}

    def D(x, sigma: float):
        counter["calls"] += 1
        return map_chunked(lambda xx: prior.denoise(xx, sigma), x, chunk=chunk)

    return D, counter


def tempering_schedule(kind: str, sigmas: list[float], *, s_max: float, sigma_y: float, lam: float) -> list[float]:
    r"""Likelihood weights :math:`\alpha_\sigma` of the target family :math:`q_\sigma \propto p_\sigma e^{-\alpha_\sigma\mu}` (Eq. 3.1, App. B).

    - "none": :math:`\alpha \equiv 1` (the canonical AFDPS target);
    - "linear": :math:`\alpha = 1 - \sigma/\sigma_{max}` (the reference code's linear annealing in t = sigma);
    - "noise": :math:`\alpha = \sigma_y^2/(\sigma_y^2 + \lambda_{max}\sigma^2)`, i.e. :math:`\alpha\mu(x) = \|Ax - y\|^2 / 2(\sigma_y^2 +
      \lambda_{max}\sigma^2)`, the flat-prior likelihood :math:`p(y \mid x_\sigma)`: the target's spread along the measured
      directions then shrinks with the probability flow instead of staying pinned at :math:`\sigma_y`.

    All reach :math:`\alpha = 1` at :math:`\sigma = 0`, so the final target is the posterior in every case.
    """
    if kind == "linear":      # clamped: the grid's first level may round a hair above s_max (alpha -2e-16)
        return [max(0.0, 1.0 - s / s_max) for s in sigmas]
    if kind == "noise":
        return [sigma_y ** 2 / (sigma_y ** 2 + lam * s ** 2) for s in sigmas]
    return [1.0 for _ in sigmas]


def _gauss_newton_norm_sq(physics, x0: torch.Tensor, generator, n_iter: int = 20) -> float:
    r""":math:`\lambda_{max}(J^\top J)` of a nonlinear forward model at ``x0`` by power iteration (autograd JVP/VJP)."""
    gdev = generator.device if generator is not None else torch.device("cpu")
    v = torch.randn(x0.shape, generator=generator, device=gdev).to(x0)
    v = v / v.norm()
    lam = 0.0
    for _ in range(n_iter):
        _, jv = torch.autograd.functional.jvp(physics.A, x0, v)
        _, w = torch.autograd.functional.vjp(physics.A, x0, jv)
        lam = float(inner(v, w).sum())
        v = w / w.norm().clamp_min(1e-30)
    return lam


def _x_like(y, physics, prior, linear: bool) -> torch.Tensor:
    if linear:
        with torch.no_grad():
            return torch.zeros_like(physics.A_adjoint(y))
    shape = getattr(physics, "x_shape", None) or getattr(getattr(prior, "inner", prior), "event_shape", None)
    if not shape:
        fail("physics", "a linear physics, or a nonlinear one with an x_shape attribute (or a prior with an "
                        "event_shape)", type(physics).__name__, TypeError)
    return torch.zeros((y.shape[0], *shape), dtype=y.dtype, device=y.device)


# ------------------------------------------------------------------------------------------------
# the solver
# ------------------------------------------------------------------------------------------------
OPTIONS = (
    Option("variant", str, "ode", "ode: probability-flow predictor + Langevin corrector; sde: Alg. 2",
           choices=("ode", "sde")),
    Option("num_steps", int, 200, "noise levels K (NFE per particle: K for sde, K + corrector_steps (K - 1) for ode)",
           lo=1),
    Option("sigma_max", float, None, "largest noise level; None: 80 tau (tau^2 = prior variance)", lo=0.0,
           lo_open=True),
    Option("sigma_min", float, None,
           "smallest noise level; None: min(0.004 tau, 0.1 sigma_y / sqrt(m)) (sde: 0.004 tau)",
           lo=0.0, lo_open=True),
    Option("rho", float, 7.0, "EDM grid exponent", lo=0.0, lo_open=True),
    Option("ess_threshold", float, None, "resample when ESS/N falls below it; None: 0.5 for ode, 1 for sde",
           lo=0.0, hi=1.0, lo_open=True),
    Option("resample", str, "systematic", "resampling scheme", choices=("systematic", "multinomial")),
    Option("cess_target", float, None, "adaptive levels (ode): shorten a step until the conditional ESS of its "
           "weights is >= this; None: the EDM grid only", lo=0.0, hi=1.0, lo_open=True, hi_open=True),
    Option("max_levels", int, None, "cap on the levels with cess_target; None: 4 num_steps", lo=1),
    Option("corrector_steps", int, 1, "Langevin corrector steps per level (ode)", lo=0),
    Option("corrector", str, "ula", "ula (unadjusted Langevin) or mala (Metropolis-adjusted; needs prior.log_prob)",
           choices=("ula", "mala")),
    Option("corrector_step", float, 0.5, "Langevin step as a fraction of the stiffest curvature (mala: initial)",
           lo=0.0, lo_open=True),
    Option("corrector_substeps", int, None, "likelihood substeps per corrector step; None: automatic", lo=1),
    Option("integrator", str, None, "sde integrator: exact (linear A) or euler; None: exact for linear A",
           choices=("exact", "euler")),
    Option("tempering", str, None, "likelihood tempering alpha_sigma: noise (None), none or linear",
           choices=("none", "linear", "noise")),
    Option("stability", float, 0.5, "Euler stability bound on the likelihood substeps", lo=0.0, lo_open=True),
    Option("max_substeps", int, 20, "cap on likelihood substeps", lo=1),
    Option("hutchinson_probes", int, 1, "Hutchinson probes of the Laplacian (nonlinear A)", lo=1),
    Option("hutchinson_eps", float, 1e-3, "finite-difference step of the Hutchinson probes", lo=0.0, lo_open=True),
    Option("sigma_y", float, None, "measurement noise std (> 0); None: the physics' noise level", lo=0.0),
    Option("cg_iters", int, 100, "CG steps of the Gaussian draws without an SVD", lo=1),
    Option("chunk", int, None, "at most this many particles per network call (None: all)", lo=1),
    Option("reduce", str, "mean", "point estimate: weighted mean, or best (highest-weight particle)",
           choices=("mean", "best")),
    Option("island_size", int, None, "particles per island: n_samples / island_size independent SMC runs pooled at "
           "the end (the largest divisor of n_samples not above it); None: one run of n_samples", lo=1),
    Option("island_weights", str, "equal", "pooling of the islands: equal, or evidence (each island's estimate "
           "of p(y))", choices=("equal", "evidence")),
)


@register("smc", options=OPTIONS)
def smc(y, physics, prior, *, generator, n_samples, progress, variant, num_steps, sigma_max, sigma_min, rho,
        ess_threshold, resample, cess_target, max_levels, corrector_steps, corrector, corrector_step,
        corrector_substeps, integrator, tempering, stability, max_substeps, hutchinson_probes, hutchinson_eps,
        sigma_y, cg_iters, chunk, reduce, island_size, island_weights):
    r"""AFDPS weighted-particle posterior sampler (see module docstring); ``n_samples`` = particles per measurement.

    Options:

    - ``variant``: "ode" (probability-flow predictor + Langevin corrector, default) or "sde";
    - ``num_steps`` K noise levels (NFE per particle: K for "sde", K + corrector_steps (K - 1) for "ode");
      ``sigma_max``, ``sigma_min``, ``rho``: the EDM grid (defaults 80 tau, min(0.004 tau, 0.1 sigma_y / sqrt(m)) for
      "ode" and 0.004 tau for "sde", 7; tau^2 = prior variance, m = measurement values);
    - ``ess_threshold`` in (0, 1]: resample when ESS/N falls below it (default 0.5 for "ode", 1.0 = every step for
      "sde"); ``resample``: "systematic" | "multinomial";
    - ``corrector``: "ula" (default) or "mala" (Metropolis-adjusted: exact, needs ``prior.log_prob(x, sigma)``);
      ``corrector_steps``, ``corrector_step`` (Langevin step as a fraction of the stiffest curvature; MALA: initial),
      ``corrector_substeps`` (ULA likelihood substeps per corrector step; default automatic, at most ``max_substeps``);
    - ``cess_target`` in (0, 1) ("ode"): adaptive levels keeping each step's conditional ESS >= it (default None: the
      EDM grid only), at most ``max_levels`` (default 4 ``num_steps``);
    - ``integrator`` ("sde"): "exact" (linear A, default) or "euler" (Eq. 3.6 Euler-Maruyama with the stability guard
      ``stability`` / ``max_substeps``; Hutchinson Laplacian with ``hutchinson_probes`` / ``hutchinson_eps`` for
      nonlinear A; the only choice for nonlinear A);
    - ``tempering``: "noise" (default) | "none" | "linear";
    - ``sigma_y`` (default: the physics' Gaussian noise level; must be > 0); ``cg_iters`` (Gaussian draws without an
      SVD); ``chunk`` (max particles per network call); ``reduce``: "mean" | "best";
    - ``island_size`` n: ``n_samples / n`` independent runs of n particles each (one batched network call; n is
      lowered to the largest divisor of ``n_samples`` not above it), pooled with ``island_weights`` "equal" or
      "evidence" (:func:`pool_islands`); None: one run.
    """
    given = dict(locals())      # this call's options, for the islands' inner call
    import deepinv as dinv

    size = n_samples if island_size is None else max(d for d in range(1, min(island_size, n_samples) + 1)
                                                     if n_samples % d == 0)
    islands = n_samples // size
    if islands > 1:             # K independent SMC runs in one batch (item-major copies of y), pooled at the end
        if reduce == "best":
            fail("reduce", "'mean' with several islands (the pooled ensemble has no single best particle)",
                 repr(reduce))
        kw = {o.name: given[o.name] for o in OPTIONS} | {"island_size": None}
        kw.update(generator=generator, n_samples=size, progress=progress)
        out = smc(y.repeat_interleave(islands, 0), physics, prior, **kw)
        return pool_islands(out, islands, island_weights, n_samples, generator)

    ess_threshold = (0.5 if variant == "ode" else 1.0) if ess_threshold is None else ess_threshold
    linear = isinstance(physics, dinv.physics.LinearPhysics)
    tempering = "noise" if tempering is None else tempering
    integrator = ("exact" if linear else "euler") if integrator is None else integrator
    if not linear and integrator != "euler":
        fail("integrator", "'euler' for a nonlinear physics ('exact' needs a linear-Gaussian likelihood)",
             repr(integrator))
    if variant == "sde" and cess_target is not None:
        fail("cess_target", "None for variant='sde' (adaptive levels are for the probability-flow predictor)",
             cess_target)
    log_prior = getattr(prior, "log_prob", None)
    if corrector == "mala" and not callable(log_prior):
        fail("corrector", "'ula' for this prior: 'mala' needs the noised prior's log-density prior.log_prob(x, sigma) "
                          f"({type(prior).__name__} has only a score)", repr(corrector))
    max_levels = 4 * num_steps if max_levels is None else max_levels
    sig_y = noise_sigma(physics) if sigma_y is None else sigma_y
    if not sig_y > 0:
        fail("sigma_y", "a noise level > 0 for solver 'smc' (its likelihood exp(-||Ax - y||^2 / 2 sigma_y^2) needs "
                        "Gaussian noise): give the physics Gaussian noise or pass sigma_y=...", sig_y)

    yy = chains_batch(y, n_samples)
    x_like = _x_like(yy, physics, prior, linear)
    if sigma_min is None and variant == "ode":   # the last step must not collapse the weights (final_level_sigma)
        tau = math.sqrt(prior_moments(prior, x_like)[1])
        sigma_min = min(0.004 * tau, final_level_sigma(sig_y, _flat_y(yy[:1]).shape[1]))
    m0, tau2, s_max, s_min = noise_range(prior, x_like, sigma_max, sigma_min)
    sigmas = edm_sigmas(num_steps, s_min, s_max, rho)
    lik = GaussianLikelihood(physics, yy, sig_y, linear=linear, chunk=chunk)
    D, calls = _denoiser(prior, chunk)
    gdev = generator.device if generator is not None else torch.device("cpu")

    def randn(like):
        return torch.randn(like.shape, generator=generator, device=gdev, dtype=like.dtype).to(like.device)

    with torch.no_grad():
        if linear:
            lam = op_norm_sq(physics, x_like[:1], generator=generator)
        else:
            lam = _gauss_newton_norm_sq(physics, (m0 + torch.zeros_like(x_like[:1])), generator)
        basis = spectral_basis(physics, x_like, generator) if linear else None
        cg_res = []
        alphas = tempering_schedule(tempering, sigmas, s_max=s_max, sigma_y=sig_y, lam=lam)

        def alpha_of(s_: float) -> float:
            return tempering_schedule(tempering, [s_], s_max=s_max, sigma_y=sig_y, lam=lam)[0]

        # evidence: the Gaussian normalising constants need the spectrum of A A^T (linear A; None if too costly)
        spec = gram_spectrum(physics, basis, x_like, yy) if linear else None
        m_y = _flat_y(yy[:1]).shape[1]
        evidence_ok = spec is not None or not linear

        def tilted(mean, var, alpha, return_mean=False):
            """Draws from N(mean, var I) exp(-alpha mu): exact Gaussian product (SVD or CG)."""
            out, inf = sample_linear_gaussian(physics, yy, sigma_y=sig_y, alpha=alpha, prior_mean=mean,
                                              prior_var=var, generator=generator, basis=basis, x_like=x_like,
                                              cg_iters=cg_iters, return_mean=return_mean)
            if inf["cg_residual"] is not None:
                cg_res.append(inf["cg_residual"])
            return (out, inf["mean"]) if return_mean else out

        # ---- Stage I (Sec. 3.1): q_{sigma_max} = N(m0, (tau^2 + sigma_max^2) I) e^{-alpha mu}, zero log-weights ----
        if linear:   # exact Gaussian draws
            x = tilted(m0, tau2 + s_max ** 2, alphas[0])
            if cg_res and cg_res[0] > 1e-3:
                warnings.warn(f"smc: Stage I conjugate gradients stopped at relative residual {cg_res[0]:.2g} after "
                              f"{cg_iters} iterations (initial particles are approximate; raise cg_iters)",
                              RuntimeWarning, stacklevel=3)
            state = ParticleState(x, n_groups=y.shape[0])
            r = lik.residual(state.x)
            # log Z_I = log int N(x; m0, rho^2 I) e^{-alpha_0 mu(x)} dx
            #         = (m/2) log(2 pi sigma_y^2 / alpha_0) + log N(y; A m0, rho^2 A A^T + sigma_y^2/alpha_0 I)
            log_z_init = torch.zeros(y.shape[0], dtype=F64, device=yy.device)
            if spec is not None and alphas[0] > 0:
                e0 = (yy - physics.A(m0 + torch.zeros_like(x_like)))[::n_samples]
                v0 = sig_y ** 2 / alphas[0]
                log_z_init = 0.5 * m_y * math.log(2 * math.pi * v0) + log_gaussian_evidence(spec, e0, tau2 + s_max ** 2,
                                                                                           v0).to(log_z_init.device)
        else:        # nonlinear A: Gaussian draws importance-weighted by e^{-alpha mu} (exact as a weighted ensemble)
            state = ParticleState(m0 + math.sqrt(tau2 + s_max ** 2) * randn(x_like), n_groups=y.shape[0])
            r = lik.residual(state.x)
            state.reweight(-alphas[0] * lik.value(r))   # its evidence increment estimates log Z_I
            log_z_init = torch.zeros(y.shape[0], dtype=F64, device=yy.device)
        substeps, warned = [], False
        levels, accept, eps_frac = [s_max], [], None
        D_cur = None                  # D(x, sig) of the current particles when the MALA corrector has it (0 NFE)
        k_grid, sig, a = 1, s_max, alphas[0]
        bar = progress_bar(range(0), progress, f"smc-{variant}", total=num_steps) if progress else None
        cap_hit = False
        while sig > 0.0:
            if bar is not None:
                bar.update(1)
            sig_g = sigmas[k_grid]        # next level of the EDM grid
            x = state.x
            Dx = D(x, sig) if D_cur is None else D_cur
            D_cur = None
            sig_n = sig_g
            can_insert = len(levels) - 1 + len(sigmas) - k_grid < max_levels
            cap_hit = cap_hit or (cess_target is not None and not can_insert)
            if cess_target is not None and can_insert:
                # adaptive level: the largest PF-ODE Euler step towards sig_g whose incremental weights keep the
                # conditional ESS >= cess_target (Zhou, Johansen & Aston 2016); 0 NFE (D(x, sig) is reused)
                sig_n = _adaptive_level(state, x, Dx, r, lik, sig, sig_g, a, alpha_of, cess_target)
            if sig_n == sig_g:
                k_grid += 1
            a_n = alpha_of(sig_n)
            levels.append(sig_n)
            if variant == "ode" or sig_n == 0.0:
                # ---- predictor: PF-ODE Euler (Eq. 3.6, V = 0); weight = exact path integral of -d[alpha mu] ----
                x = x + (1.0 - sig_n / sig) * (Dx - x)
                r_n = lik.residual(x)
                state.reweight(a * lik.value(r) - a_n * lik.value(r_n))
                r = r_n
                n_corr = corrector_steps if sig_n > 0 else 0
                if corrector == "mala" and n_corr:        # ---- MALA corrector at sigma_{k+1}: exact invariance ----
                    if eps_frac is None:
                        eps_frac = torch.full((y.shape[0],), float(corrector_step), dtype=F64, device=x.device)
                    x, r, D_cur, acc = _mala(x, r, D, lik, log_prior, sig_n, a_n, n_corr, eps_frac, lam, sig_y,
                                             n_samples, randn, generator)
                    accept.append(acc)
                for _ in range(n_corr if corrector == "ula" else 0):    # ---- ULA corrector at sigma_{k+1} (Alg 3) --
                    # ULA on q_sigma: x += eps (score - alpha grad mu) + sqrt(2 eps) xi, eps = c / curvature; the
                    # stiff likelihood part runs n_in substeps with the prior score frozen (1 NFE per corrector step)
                    score = (D(x, sig_n) - x) / sig_n ** 2
                    curv = a_n * lam / sig_y ** 2 + 1.0 / sig_n ** 2
                    n_in = min(max_substeps, math.ceil(curv * sig_n ** 2)) if corrector_substeps is None \
                        else corrector_substeps
                    eps = corrector_step / curv
                    for _ in range(n_in):
                        x = x + eps * (score - a_n * lik.grad(x, r)) + math.sqrt(2 * eps) * randn(x)
                        r = lik.residual(x)
                    substeps.append(n_in)
            elif integrator == "exact":
                # ---- SDE, V = g: reverse-SDE (DDPM ancestral) kernel K, tilted exactly by e^{-alpha' mu}; ----
                # ---- weight = its normaliser Z(x) e^{alpha mu(x)} (-> Eq. 3.6's rate as the step -> 0)     ----
                mk = Dx + (sig_n / sig) ** 2 * (x - Dx)
                var = sig_n ** 2 * (sig ** 2 - sig_n ** 2) / sig ** 2
                x, m_post = tilted(mk, var, a_n, return_mean=True)
                log_z = -inner(m_post - mk, m_post - mk).to(F64) / (2 * var) - a_n * lik.value(lik.residual(m_post))
                if spec is not None:    # the Gaussian determinant det(I + var a' A^T A / sigma_y^2)^{-1/2}
                    log_z = log_z - 0.5 * torch.log1p(var * a_n * spec.lam / sig_y ** 2).sum()
                state.reweight(a * lik.value(r) + log_z)
                r = lik.residual(x)
            else:
                # ---- SDE, V = g (Alg. 2): Euler-Maruyama of Eq. 3.6, likelihood drift in substeps, score frozen ----
                score = (Dx - x) / sig ** 2
                delta = sig - sig_n
                rate = 2 * sig * max(a, a_n) * lam * delta / sig_y ** 2
                n_sub = max(1, math.ceil(rate / stability))
                if n_sub > max_substeps:
                    if not warned:
                        warnings.warn(f"smc: the likelihood drift needs {n_sub} substeps at sigma = {sig:.3g} "
                                      f"(2 sigma alpha lambda_max dt / sigma_y^2 = {rate:.3g}); capped at "
                                      f"max_substeps = {max_substeps}, the step may be unstable: use more num_steps, "
                                      "tempering='linear', integrator='exact' or variant='ode'", RuntimeWarning,
                                      stacklevel=3)
                        warned = True
                    n_sub = max_substeps
                substeps.append(n_sub)
                dt = delta / n_sub
                for j in range(n_sub):
                    s_j = sig - j * dt
                    a_j, a_next = a + (a_n - a) * j / n_sub, a + (a_n - a) * (j + 1) / n_sub
                    G = lik.grad(x, r)
                    lap = lik.laplacian(x, generator=generator, probes=hutchinson_probes, eps=hutchinson_eps)
                    rate_w = s_j * a_j ** 2 * inner(G, G).to(F64) - 2 * s_j * a_j * inner(score, G).to(F64)
                    if lap is not None:
                        rate_w = rate_w - s_j * a_j * lap
                    elif spec is not None:      # constant for linear A: cancels in W, not in the evidence
                        rate_w = rate_w - s_j * a_j * float(spec.lam.sum()) / sig_y ** 2
                    state.reweight(dt * rate_w - (a_next - a_j) * lik.value(r))          # R dtau (value term)
                    x = x + dt * 2 * s_j * (score - a_j * G) + math.sqrt(2 * s_j * dt) * randn(x)  # H - V^2 a grad mu
                    r = lik.residual(x)
            state.x = x
            if state.quarantine(r):
                r, D_cur = lik.residual(state.x), None
            state.record()
            if sig_n > 0.0:
                rows = state.resample(generator=generator, threshold=ess_threshold, method=resample)  # Alg. 1
                if rows is not None:
                    r = r.index_select(0, rows)
                    D_cur = D_cur.index_select(0, rows) if D_cur is not None else None
            sig, a = sig_n, a_n

    if bar is not None:
        bar.close()
    if cap_hit:
        warnings.warn(f"smc: the adaptive levels reached max_levels = {max_levels}; the rest followed the EDM grid "
                      "(raise max_levels or num_steps, or lower cess_target)", RuntimeWarning, stacklevel=3)
    # ---- outputs: weighted ensemble, equally weighted draws, weighted moments ----
    mean = state.weighted_mean()
    if reduce == "best":
        best = state.weights().argmax(dim=1)
        mean = state.grouped()[torch.arange(state.G, device=best.device), best]
    samples = state.draws(n_samples, generator=generator, method="systematic")
    hist = state.history()
    # log p(y) = log Z_I + sum of log mean incremental weights - (m/2) log(2 pi sigma_y^2)
    log_ev = (log_z_init.to(state.log_evidence.device) + state.log_evidence
              - 0.5 * m_y * math.log(2 * math.pi * sig_y ** 2)) if evidence_ok else None
    info = {
        "variant": variant, "num_steps": num_steps, "levels": levels, "n_levels": len(levels) - 1,
        "corrector": corrector if variant == "ode" else None, "cess_target": cess_target,
        "acceptance": torch.stack(accept).cpu() if accept else None, "sigma_max": s_max, "sigma_min": s_min, "rho": rho,
        "sigma_y": sig_y, "tempering": tempering, "ess_threshold": ess_threshold, "resample": resample,
        "corrector_steps": corrector_steps if variant == "ode" else 0,
        "integrator": integrator if variant == "sde" else None, "reduce": reduce,
        "particles": chains_unbatch(state.x, n_samples), "weights": state.weights().T.contiguous(),
        "std": state.weighted_var().sqrt(), "ess": hist["ess"], "resampled": hist["resampled"],
        "n_resample": hist["n_resample"], "unique_ancestors": hist["unique_ancestors"],
        "n_quarantined": hist["n_quarantined"], "nfe_per_particle": calls["calls"], "lambda_max": lam,
        "gaussian_steps": basis.kind if basis is not None else ("cg" if linear else None),
        "cg_residual_max": max(cg_res) if cg_res else None, "substeps": substeps,
        "prior_mean_var": (float(torch.as_tensor(m0).double().mean()), tau2),
        "log_evidence": log_ev.cpu() if log_ev is not None else None,
        "log_evidence_ratio": state.log_evidence.cpu(), "islands": 1, "island_size": n_samples,
    }
    return SolverOutput(mean=mean, samples=samples, info=info, std=info["std"].to(mean.dtype))

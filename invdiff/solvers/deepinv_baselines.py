r"""deepinv's diffusion samplers (DPS, DDRM, DiffPIR) under the invdiff contract, taking an invdiff prior.

Wrapping fixes, each with a regression test (``tests/test_baselines.py``):

- deepinv seeds DDRM/DiffPIR with ``if seed:``, so seed=0 silently means "unseeded" (audit §0.8). Here the
  seed is drawn from the solver's own generator and is never 0, and the global RNG state is restored.
- ``prox_l2``/``A_dagger`` overwrite ``physics.max_iter``/``tol``/``solver`` (audit §1.7): restored after the call.
- DiffPIR's data step (Eq. 13) on operators without an SVD: deepinv's ``prox_l2`` runs up to 50 CG iterations
  per step; here :class:`WarmProxL2` solves it exactly where the operator offers an exact solve
  (:func:`~invdiff.solvers.primitives.prox_l2`: sparse-view CT, line-mask multi-coil MRI, within a memory bound),
  else runs :data:`DIFFPIR_CG_ITERS` iterations of the project's CG started at the denoised estimate, with
  :math:`A^\top y` computed once per solve (measured in ``benchmarks/results/overhead.md`` and ``diffpir_cg.md``).
  SVD operators keep deepinv's closed-form prox.
- deepinv samplers assume images in [0, 1]. A prior with another ``value_range`` [lo, hi] (e.g. complex MRI
  priors on [-1, 1]) is used through the exact affine change of variables :math:`u=(x-lo)/w`, :math:`w=hi-lo`:
  :math:`y' = (y - lo\,A\mathbf 1)/w` with noise :math:`\sigma_y/w`, and :math:`D_u(u,s) = (D_x(lo+wu, ws)-lo)/w`.
"""
from __future__ import annotations

import contextlib
import copy

import numpy as np
import torch

from .._validate import fail
from ..priors.base import Prior
from .base import Option, SolverOutput, chains_batch, chains_unbatch, register
from .primitives import noise_sigma, preserve_solver_settings, prox_l2

#: CG iterations of DiffPIR's data step (Eq. 13) from the denoised estimate: within 0.03 dB of deepinv's prox_l2 on
#: CT 8-view and 4x 8-coil MRI at about half its time; 5 loses 0.1 dB on MRI, 3 loses 0.5 (benchmarks/results/diffpir_cg.md)
DIFFPIR_CG_ITERS = 10


class _UnitRangeDenoiser(torch.nn.Module):
    """D_u(u, s) = (D_x(lo + w u, w s) - lo) / w: a prior on [lo, hi] seen as a prior on [0, 1]."""

    def __init__(self, prior: Prior, lo: float, w: float):
        super().__init__()
        self.prior, self.lo, self.w = prior, lo, w

    def forward(self, u, sigma, *args, **kwargs):
        dtype = u.dtype
        if isinstance(sigma, torch.Tensor):
            sigma = sigma.to(dtype)
        out = self.prior.denoise(self.lo + self.w * u, sigma * self.w)
        return ((out - self.lo) / self.w).to(dtype)


def _effective_range(prior) -> tuple[float, float]:
    """The prior's value range; for unbounded priors (Gaussian mixtures) an envelope of mean +- 6 std per pixel.

    deepinv's DPS and DiffPIR clip x0-estimates to the range, so it must contain (practically) all prior mass.
    """
    if prior.value_range is not None:
        return tuple(float(v) for v in prior.value_range)
    inner = getattr(prior, "inner", prior)
    if hasattr(inner, "mean") and hasattr(inner, "std"):
        m, s = torch.as_tensor(inner.mean, dtype=torch.float64), torch.as_tensor(inner.std, dtype=torch.float64)
        return float((m - 6 * s).min()), float((m + 6 * s).max())
    return 0.0, 1.0


def _unit_range_problem(y, physics, prior):
    """Return (y', physics', denoiser, to_x) for the [0,1] change of variables (identity when already [0,1])."""
    lo, hi = _effective_range(prior)
    w = hi - lo
    if (lo, hi) == (0.0, 1.0):
        return y, physics, _UnitRangeDenoiser(prior, 0.0, 1.0), (lambda u: u)
    with torch.no_grad():
        ones = torch.ones_like(physics.A_adjoint(y))
        y_u = (y - lo * physics.A(ones)) / w
    phys_u = copy.deepcopy(physics)
    sig = noise_sigma(physics)
    if hasattr(phys_u, "noise_model") and hasattr(phys_u.noise_model, "update_parameters"):
        phys_u.noise_model.update_parameters(sigma=sig / w)
    return y_u, phys_u, _UnitRangeDenoiser(prior, lo, w), (lambda u: lo + w * u)


def _warm_l2():
    """deepinv's ``L2`` data fidelity with :meth:`WarmProxL2.prox` (built lazily: deepinv imports on first use)."""
    import deepinv as dinv

    class WarmProxL2(dinv.optim.data_fidelity.L2):
        r""":math:`\mathrm{prox}_{\gamma f}(x) = \arg\min_u \tfrac{\gamma}{2\sigma^2}\|Au-y\|^2 + \tfrac12\|u-x\|^2`,
        i.e. :math:`(I + g A^\top A)u = x + g A^\top y`, :math:`g = \gamma/\sigma^2`: exactly when ``exact`` and the
        operator offers it (:func:`~invdiff.solvers.primitives.prox_l2`), else by ``cg_iters`` CG steps from
        :math:`u = x`; SVD operators use deepinv's exact prox."""

        def __init__(self, cg_iters: int, exact: bool = True):
            super().__init__()
            self.cg_iters, self.exact = cg_iters, exact
            self._y, self._ATy = None, None

        def prox(self, x, y, physics, *args, gamma=1.0, **kwargs):
            if isinstance(physics, dinv.physics.DecomposablePhysics):
                return super().prox(x, y, physics, *args, gamma=gamma, **kwargs)
            if self._y is not y:                                   # A^T y: once per solve, not once per step
                self._y, self._ATy = y, physics.A_adjoint(y)
            return prox_l2(physics, x, y, self.norm * gamma, ATy=self._ATy, cg_iters=self.cg_iters,
                           exact=self.exact)

    return WarmProxL2


def _diffpir_class():
    """deepinv's ``DiffPIR`` with its noise schedule computed in one vectorised pass.

    deepinv builds ``rhos``/``sigmas`` with a 1000-step Python loop of tensor operations, at construction and again
    at every call (about 45 ms each on one CPU thread, the time of a 64x64 network call); the elementwise formula
    below gives bit-identical tensors (checked in ``tests/test_speed.py``)."""
    import deepinv as dinv

    class FastScheduleDiffPIR(dinv.sampling.DiffPIR):
        def get_noise_schedule(self, sigma):
            sigmas = self.reduced_alpha_cumprod.flip(0)
            sigma_ks = self.sqrt_1m_alphas_cumprod / self.sqrt_alphas_cumprod
            rhos = self.lambda_ * (sigma ** 2) / (sigma_ks ** 2)
            n = self.num_train_timesteps
            seq = torch.sqrt(torch.linspace(0.0, n ** 2, self.max_iter, device=self.device)).type(torch.int32)
            seq[-1] = seq[-1] - 1
            return rhos.reshape(-1).to(self.device), sigmas.to(self.device), seq

    return FastScheduleDiffPIR


@contextlib.contextmanager
def _seeded(generator: torch.Generator):
    """Seed torch/numpy global RNGs from ``generator`` (never with 0) and restore them afterwards."""
    seed = int(torch.randint(1, 2**31 - 1, (1,), generator=generator))
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    torch.manual_seed(seed)
    np.random.seed(seed)
    try:
        yield seed
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(np_state)


def _run_chains(run, y, physics, prior, n_samples):
    """Run a deepinv sampler on ``n_samples`` chains batched along the batch axis, in [0, 1] variables."""
    y_u, phys_u, den, to_x = _unit_range_problem(chains_batch(y, n_samples), physics, prior)
    with preserve_solver_settings(phys_u):
        u = run(y_u, phys_u, den)
    samples = chains_unbatch(to_x(u.detach()), n_samples)
    return SolverOutput(mean=samples.mean(0), samples=samples)


DPS_OPTIONS = (
    Option("num_steps", int, 1000, "network evaluations (diffusion steps)", lo=1),
    Option("weight", float, 100.0, "guidance weight zeta (100 works with norm guidance; deepinv's 1 fails)", lo=0.0),
    Option("guidance", str, "norm", "guidance of deepinv DPS: norm (paper) or annealed",
           choices=("norm", "annealed")),
    Option("schedule", str, "vp", "noise schedule of deepinv DPS", choices=("vp", "ve")),
    Option("ode_solver", str, "ddpm", "reverse-time solver of deepinv DPS",
           choices=("ddpm", "ancestral", "ddim", "euler")),
)


@register("dps", options=DPS_OPTIONS)
def dps(y, physics, prior, *, generator, n_samples, progress, num_steps, weight, guidance, schedule, ode_solver):
    r"""Diffusion posterior sampling (Chung et al., ICLR 2023), deepinv ``DPS``.

    Guidance :math:`-\zeta\nabla_{x_t}\|y-A\hat x_0(x_t)\|` with ``weight`` :math:`\zeta` (deepinv audit §2.3: 100 works
    with "norm" guidance, the default 1 fails). ``num_steps`` = NFE.
    """
    import deepinv as dinv

    def run(y_u, phys_u, den):
        sampler = dinv.sampling.DPS(den, schedule=schedule, solver=ode_solver, num_steps=num_steps, weight=weight,
                                    guidance=guidance, device=y.device, dtype=y.dtype, rng=generator,
                                    verbose=progress)
        with torch.no_grad():
            x_shape = phys_u.A_adjoint(y_u).shape  # deepinv would call A_dagger just to learn the shape
        return sampler(y_u, phys_u, x_init=x_shape)

    return _run_chains(run, y, physics, prior, n_samples)


DDRM_OPTIONS = (
    Option("num_steps", int, 100, "network evaluations (noise levels linear from 1 to 0)", lo=1),
    Option("eta", float, 0.85, "DDRM eta (paper Sec. 4.3)", lo=0.0, hi=1.0),
    Option("etab", float, 1.0, "DDRM eta_b (paper Sec. 4.3)", lo=0.0, hi=1.0),
)


@register("ddrm", options=DDRM_OPTIONS)
def ddrm(y, physics, prior, *, generator, n_samples, progress, num_steps, eta, etab):
    r"""Denoising diffusion restoration models (Kawar et al., NeurIPS 2022), deepinv ``DDRM``.

    Needs an SVD-decomposable operator (inpainting, single-coil Cartesian MRI, circular FFT blur).
    Noise levels :math:`\sigma_i` linear from 1 to 0 over ``num_steps`` steps; ``eta``, ``etab`` as in the paper (Sec. 4.3).
    """
    import deepinv as dinv

    if not isinstance(physics, dinv.physics.DecomposablePhysics):
        fail("physics", "an SVD-decomposable operator for 'ddrm' (inpainting, single-coil MRI, FFT blur)",
             type(physics).__name__, TypeError)

    def run(y_u, phys_u, den):
        sampler = dinv.sampling.DDRM(den, sigmas=np.linspace(1, 0, num_steps), eta=eta, etab=etab, verbose=progress)
        with _seeded(generator) as seed:
            return sampler(y_u, phys_u, seed=seed)

    return _run_chains(run, y, physics, prior, n_samples)


DIFFPIR_OPTIONS = (
    Option("num_steps", int, 100, "network evaluations (HQS iterations)", lo=1),
    Option("zeta", float, 0.1, "re-injected noise zeta (paper Eq. 15)", lo=0.0, hi=1.0),
    Option("lambda_", float, 7.0, "prior weight lambda in the data sub-problem (paper Eq. 13)", lo=0.0, lo_open=True),
    Option("cg_iters", int, DIFFPIR_CG_ITERS, "CG steps of the data sub-problem (Eq. 13) from the denoised estimate "
                                              "where it is not solved exactly", lo=1),
    Option("prox", str, "auto", "data sub-problem (Eq. 13): auto (exact where the operator offers it: SVD operators, "
                                "sparse-view CT, line-mask multi-coil MRI; else cg_iters CG steps) or cg",
           choices=("auto", "cg")),
)


@register("diffpir", options=DIFFPIR_OPTIONS)
def diffpir(y, physics, prior, *, generator, n_samples, progress, num_steps, zeta, lambda_, cg_iters, prox):
    r"""DiffPIR (Zhu et al., CVPRW 2023), deepinv ``DiffPIR``: HQS with a diffusion denoiser and a data prox.

    ``lambda_`` weighs the prior in the data sub-problem (paper Eq. 13), ``zeta`` the re-injected noise (Eq. 15),
    ``prox="auto"`` solves that sub-problem exactly where the operator offers it (SVD operators; CT with few
    measurements and line-mask multi-coil MRI, :func:`~invdiff.solvers.primitives.prox_l2`), else with ``cg_iters``
    warm-started CG steps (:class:`WarmProxL2`); ``prox="cg"`` always uses CG on operators without an SVD.
    """
    import deepinv as dinv

    def run(y_u, phys_u, den):
        if noise_sigma(phys_u) < 1e-3:
            # DiffPIR reads physics.noise_model.sigma and divides by it (rho_t = lambda sigma^2 / sigma_t^2)
            phys_u = copy.deepcopy(phys_u)
            phys_u.noise_model = dinv.physics.GaussianNoise(1e-3)
        sampler = _diffpir_class()(den, _warm_l2()(cg_iters, prox == "auto"), sigma=max(noise_sigma(phys_u), 1e-3),
                                   max_iter=num_steps, zeta=zeta, lambda_=lambda_, verbose=progress,
                                   device=y.device)
        with _seeded(generator) as seed:
            return sampler(y_u, phys_u, seed=seed)

    return _run_chains(run, y, physics, prior, n_samples)

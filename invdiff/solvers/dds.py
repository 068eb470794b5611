r"""DDS: decomposed diffusion sampling (Chung, Lee & Ye, ICLR 2024), 2D (``dds``) and 3D (``dds3d``).

Each reverse step of a VP diffusion (DDPM linear betas, T = 1000) on :math:`x_t=\sqrt{\bar\alpha_t}x_0+\sqrt{1-\bar\alpha_t}\epsilon`:

1. :math:`\hat\epsilon = \epsilon_\theta(x_t, t)`                                           (paper Eq. 9)
2. Tweedie: :math:`\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\hat\epsilon)/\sqrt{\bar\alpha_t}`   (Eq. 10)
3. Data consistency in the Krylov subspace around :math:`\hat x_0`: M conjugate-gradient steps initialised at
   :math:`\hat x_0` on (Eq. 14-16)

   - ``dc="prox"``: :math:`(I+\gamma A^\top A)x = \hat x_0 + \gamma A^\top y`  (noisy measurements)
   - ``dc="ls"``:   :math:`A^\top A x = A^\top y`                              (noiseless measurements)
   - ``dds3d``: one ADMM iteration of z-direction TV instead (Sec. 4.3; :class:`~invdiff.solvers.ztv.ZTVADMM`)
4. Re-noise with the *original* :math:`\hat\epsilon` (the "decomposition") and DDS's own :math:`\eta` (Eq. 17):
   :math:`x_{t'} = \sqrt{\bar\alpha_{t'}}\tilde x_0 + \sqrt{1-\bar\alpha_{t'}}(\eta z + \sqrt{1-\eta^2}\hat\epsilon)`.
   DDS's :math:`\eta` is not DDIM's :math:`\eta` (reference dossier §3.10-6). The last step returns :math:`\tilde x_0`.

Timestep grid as the released code: ``ts = range(0, T, T // num_steps)`` visited in descending order, with
:math:`\bar\alpha_{-1} = 1` at the end (for num_steps dividing T; :func:`dds_timesteps`). ``num_steps`` network
calls (the paper's "49 NFE" is ``num_steps=50``).

Not reproduced from the released code (dossier §3.10): the complex CG without conjugation, whole-batch inner
products, the broken MRI noiseless/noisy branches (here images are 2 real channels throughout, so
:math:`\hat x_0 + \gamma A^\top y` is formed in one representation, and ``dc="ls"`` works on complex images).
CG here is per-sample and conjugated (:mod:`.primitives`).

Chains: ``n_samples`` independent chains run batched through the prior (one network call per step for all).

**Defaults.** ``dc="auto"`` is "ls" for noiseless physics and "prox" otherwise, with
:math:`\gamma = v\,p^2/\sigma_y^2` (:data:`GAMMA_VARIANCE` :math:`v = 0.005`, :math:`p` the peak of the prior's
``value_range``) unless ``gamma`` is given: the prox problem
:math:`\min_x \tfrac12\|x-\hat x_0\|^2 + \tfrac\gamma2\|Ax-y\|^2` is the MAP step for an :math:`\hat x_0` with error
variance :math:`v` per pixel and noise variance :math:`\sigma_y^2`. Priors without a value range (Gaussian mixtures,
vectors) keep the paper's :math:`\gamma = 1`, whose scale they share; it does not transfer as a number to unit-norm
operators (the released CT code pairs it with the back-projection :math:`\tfrac{\pi}{2N_v}R^\top` on noiseless
data, dossier §3.2). Per-operator values measured on invdiff's tasks (MRI, wide-band blur) live in
:mod:`invdiff.solvers.defaults` with the result file each comes from (``invdiff solvers dds`` prints them); the
sweeps behind them are ``benchmarks/results/dds.md``, ``dds_sweep.md`` and ``defaults.md``. :data:`ETA_PRESETS` are
the paper's.

**3D** (``dds3d``, Sec. 4.3 and the released ``solver_3d.py``): a volume prior (a 2D prior lifted slice by slice,
:mod:`invdiff.priors.lift`, chunked network calls) and one ADMM iteration of z-TV per step with persistent
dual variables (:mod:`.ztv`). ``dds3d`` is its own registered name rather than a flag of ``dds``: a different
step 3 with its own options (rho, lam, boundary, preset) and input checks (a volume, D >= 2, a 3D prior).
``dds`` itself also takes volumes with a lifted prior; that is slice-independent DDS with a whole-volume CG.

Example:
    >>> import torch, invdiff
    >>> from invdiff.operators import MatrixOperator
    >>> from invdiff.priors import GaussianMixture
    >>> prior = GaussianMixture(torch.ones(1), torch.zeros(1, 4), torch.eye(4)[None])
    >>> op = MatrixOperator(torch.eye(4)[:2], sigma=0.1)
    >>> rec = invdiff.solve(op.A(torch.ones(1, 4)), op, prior, solver="dds", num_steps=20)
    >>> rec.nfe
    20
"""
from __future__ import annotations

from typing import Callable

import torch

from ..schedules import VPSchedule
from .base import Option, SolverOutput, chains_batch, chains_unbatch, progress_bar, register
from .primitives import conjugate_gradient, noise_sigma, normal_op
from .ztv import PRESETS as ZTV_PRESETS, ZTVADMM, check_volume_problem, default_preset

#: paper's eta per step budget (Sec. 5, "eta = 0.15 / 0.5 / 0.8 for 19 / 49 / 99 NFE")
ETA_PRESETS = {20: 0.15, 50: 0.5, 100: 0.8}
#: v in the default prox weight gamma = v peak^2 / sigma_y^2: error variance of the Tweedie estimate on images of
#: peak 1 (module docstring; fitted by benchmarks/dds.py on the shipped priors at sigma_y = 0.01 and 0.05)
GAMMA_VARIANCE = 0.005


def dds_timesteps(num_steps: int, schedule: VPSchedule) -> tuple[list[int], list[int]]:
    """Descending (t, t_prev) pairs; t_prev = -1 means alpha_bar = 1.

    ``t_i = floor(i T / num_steps)``, i < num_steps: the released DDS/RED-Diff grid ``range(0, T, T // num_steps)``
    whenever num_steps divides T (20, 50, 100, ...); otherwise the released grid would make more than num_steps
    network calls (38 for 37), this one exactly num_steps.
    """
    T = schedule.num_train_timesteps
    ts = [i * T // num_steps for i in range(num_steps)]
    prev = [-1] + ts[:-1]
    return ts[::-1], prev[::-1]


def dds_data_consistency(x0: torch.Tensor, y: torch.Tensor, physics, *, dc: str, gamma: float, cg_iters: int,
                         ATy: torch.Tensor | None = None):
    """Step 3: M CG steps initialised at x0 (prox: (I + g A^T A) x = x0 + g A^T y; ls: A^T A x = A^T y).

    ``ATy``: :math:`A^\top y` when the caller holds it (it does not change along the chain); computed otherwise.
    """
    ATy = physics.A_adjoint(y) if ATy is None else ATy
    if dc == "prox":
        return conjugate_gradient(lambda v: v + gamma * normal_op(physics, v), x0 + gamma * ATy, x0=x0,
                                  max_iter=cg_iters)
    return conjugate_gradient(lambda v: normal_op(physics, v), ATy, x0=x0, max_iter=cg_iters)


def default_dc(physics) -> str:
    """``dc="auto"``: "ls" for noiseless physics, else "prox" (module docstring)."""
    return "ls" if noise_sigma(physics) == 0 else "prox"


def default_gamma(physics, prior) -> float:
    """gamma = v peak^2 / sigma_y^2 for image priors (v = :data:`GAMMA_VARIANCE`, peak = max |value_range|), else
    the paper's 1.0 (noiseless physics, or priors without a declared value range such as Gaussian mixtures)."""
    s = getattr(physics, "sigma", None)                 # invdiff operators: the decimal value (0.01, not 0.00999..)
    s = s if isinstance(s, float) else noise_sigma(physics)
    vr = getattr(prior, "value_range", None)
    if s > 0 and vr is not None:
        return GAMMA_VARIANCE * max(abs(float(vr[0])), abs(float(vr[1]))) ** 2 / s ** 2
    return 1.0


def _eta(eta, num_steps):
    """``eta=None``: the paper's preset for ``num_steps`` (:data:`ETA_PRESETS`), else 0.5."""
    return ETA_PRESETS.get(num_steps, 0.5) if eta is None else eta


_T = VPSchedule().num_train_timesteps
#: options shared by dds and dds3d
_STEPS = (
    Option("num_steps", int, 50, "network evaluations (timesteps of the released grid; presets 20/50/100)",
           lo=1, hi=_T),
    Option("eta", float, None, "DDS re-noising eta (Eq. 17); None: the paper's preset for num_steps, else 0.5",
           lo=0.0, hi=1.0),
    Option("cg_iters", int, 5, "CG steps M of the data-consistency step (paper: 5)", lo=1),
)
DDS_OPTIONS = _STEPS + (
    Option("gamma", float, None, "prox weight; None: v peak^2 / sigma_y^2 for image priors (default_gamma)",
           lo=0.0, lo_open=True),
    Option("dc", str, "auto", "data consistency: prox (noisy), ls (noiseless), auto (by the physics' noise)",
           choices=("auto", "prox", "ls")),
    Option("data_consistency", object, None, "callable (x0, y, physics) -> x replacing step 3 (e.g. a ZTVADMM)",
           extra=("callable",)),
)
DDS3D_OPTIONS = _STEPS + (
    Option("preset", str, "auto", "z-TV preset; auto: from the operator (sparse-view CT, limited-angle CT, MRI)",
           choices=("auto",) + tuple(ZTV_PRESETS)),
    Option("rho", float, None, "ADMM penalty rho (overrides the preset)", lo=0.0, lo_open=True),
    Option("lam", float, None, "z-TV weight lambda (overrides the preset)", lo=0.0),
    Option("boundary", str, "neumann", "z boundary of the TV difference (circular: released code)",
           choices=("neumann", "circular")),
)


def dds_sample(y: torch.Tensor, physics, prior, data_consistency: Callable, *, generator: torch.Generator,
               num_steps: int, eta: float, progress: bool = False, desc: str = "dds") -> torch.Tensor:
    """The DDS loop (steps 1-4 of the module docstring) from x_T ~ N(0, I); ``y`` already holds one row per chain.

    ``data_consistency(x0_hat, y, physics) -> x0_tilde`` is step 3.
    """
    sched = VPSchedule()
    alpha_bars = sched.alpha_bars()

    def ab(t: int) -> float:
        return 1.0 if t < 0 else float(alpha_bars[t])

    with torch.no_grad():
        shape = physics.A_adjoint(y).shape
    x = torch.randn(shape, generator=generator, device=y.device, dtype=y.dtype)
    ts, prev = dds_timesteps(num_steps, sched)
    with torch.no_grad():
        for t, t_prev in progress_bar(list(zip(ts, prev)), progress, desc):
            a, a_prev = ab(t), ab(t_prev)
            x0_hat = prior.x0_vp(x, a)                                   # Eq. 10 (Tweedie)
            eps_hat = (x - a ** 0.5 * x0_hat) / (1 - a) ** 0.5           # Eq. 9, as the network's epsilon
            x0_dc = data_consistency(x0_hat, y, physics)                 # Eq. 14-16 (3D: Sec. 4.3 ADMM-TV)
            if t_prev < 0:
                return x0_dc
            z = torch.randn(shape, generator=generator, device=y.device, dtype=y.dtype)
            x = a_prev ** 0.5 * x0_dc + (1 - a_prev) ** 0.5 * (eta * z + (1 - eta ** 2) ** 0.5 * eps_hat)  # Eq. 17
    return x


@register("dds", options=DDS_OPTIONS)
def dds(y, physics, prior, *, generator, n_samples, progress, num_steps, eta, cg_iters, gamma, dc,
        data_consistency):
    r"""Decomposed diffusion sampler (see module docstring).

    Options: ``num_steps`` (NFE; presets 20/50/100), ``eta`` (DDS re-noising, default from the paper's preset for
    ``num_steps``, else 0.5), ``cg_iters`` M (paper: 5), ``gamma`` (prox weight; default v peak^2 / sigma_y^2 for
    image priors, :func:`default_gamma`), ``dc`` in {"auto", "prox", "ls"} ("auto": "ls" for noiseless physics, else "prox").
    ``data_consistency(x0, y, physics)``
    overrides step 3 (e.g. a :class:`~invdiff.solvers.ztv.ZTVADMM`; its ``reset()`` is called first).
    """
    gamma = default_gamma(physics, prior) if gamma is None else gamma
    eta = _eta(eta, num_steps)
    if dc == "auto":
        dc = default_dc(physics)
    if data_consistency is None:
        cache = {}

        def data_consistency(x0, yy, ph):
            if cache.get("y") is not yy:                                 # A^T y is loop-invariant: once per solve
                cache.update(y=yy, ATy=ph.A_adjoint(yy))
            return dds_data_consistency(x0, yy, ph, dc=dc, gamma=gamma, cg_iters=cg_iters, ATy=cache["ATy"])
        info_dc = dc
    else:
        if hasattr(data_consistency, "reset"):
            data_consistency.reset()
        info_dc = repr(data_consistency)
    before = _network_counters(prior)
    x = dds_sample(chains_batch(y, n_samples), physics, prior, data_consistency, generator=generator,
                   num_steps=num_steps, eta=eta, progress=progress)
    samples = chains_unbatch(x, n_samples)
    info = {"num_steps": num_steps, "eta": eta, "cg_iters": cg_iters, "gamma": gamma, "dc": info_dc}
    _add_network_counters(info, prior, before)
    return SolverOutput(mean=samples.mean(0), samples=samples, info=info)


def _network_counters(prior) -> tuple[int, int] | None:
    """(network_calls, slice_evaluations) of a lifted prior (:mod:`invdiff.priors.lift`), None for other priors."""
    try:
        return int(prior.network_calls), int(prior.slice_evaluations)
    except AttributeError:
        return None


def _add_network_counters(info: dict, prior, before) -> None:
    after = _network_counters(prior)
    if before is not None and after is not None:
        info.update(network_calls=after[0] - before[0], slice_evaluations=after[1] - before[1],
                    chunk=getattr(prior, "chunk", None))


@register("dds3d", volume=True, options=DDS3D_OPTIONS)
def dds3d(y, physics, prior, *, generator, n_samples, progress, num_steps, eta, cg_iters, preset, rho, lam,
          boundary):
    r"""DDS for volumes with a z-direction TV prior (Chung, Lee & Ye 2024, Sec. 4.3; released ``solver_3d.py``).

    ``prior``: a volume prior, normally a lifted 2D prior (``lift(prior2d, chunk=8)``, :mod:`invdiff.priors.lift`:
    the network sees ``chunk`` slices at a time). ``physics``: a volume operator (``CT3D``, ``SliceWise``, MRI with a
    4-entry ``img_size``). Step 3 is one ADMM iteration of :class:`~invdiff.solvers.ztv.ZTVADMM` (``cg_iters`` CG
    steps on :math:`A^\top A + \rho D_z^\top D_z`) with z, u persistent across steps.

    Options: ``num_steps``, ``eta`` and ``cg_iters`` as ``dds``; ``preset`` in {"auto", "sparse-view-ct",
    "limited-angle-ct", "mri"} ("auto" picks from the operator), converted to this operator's adjoint scale and with
    the empirical lam factor (``ZTVADMM.preset(..., tuned=True)``, :mod:`.ztv`); ``rho``, ``lam`` override the
    preset (``ZTVADMM.preset(name, physics)`` holds the plain converted originals); ``boundary`` "neumann" (default)
    or "circular" (released code).

    NFE = ``num_steps`` calls of the volume prior; ``info`` adds ``network_calls`` (2D network calls,
    ceil(B*D/chunk) per step) and ``slice_evaluations`` (2D images denoised) for lifted priors.
    """
    eta = _eta(eta, num_steps)
    check_volume_problem(y, physics, prior, "dds3d", chunk_hint=8)
    name = default_preset(physics) if preset == "auto" and (rho is None or lam is None) else preset
    if name == "auto":
        admm = ZTVADMM(rho, lam, cg_iters=cg_iters, boundary=boundary)
    else:
        admm = ZTVADMM.preset(name, physics, tuned=True, rho=rho, lam=lam, cg_iters=cg_iters, boundary=boundary)
    before = _network_counters(prior)
    x = dds_sample(chains_batch(y, n_samples), physics, prior, admm, generator=generator, num_steps=num_steps,
                   eta=eta, progress=progress, desc="dds3d")
    samples = chains_unbatch(x, n_samples)
    info = {"num_steps": num_steps, "eta": eta, "preset": name, **admm.options(), "admm_iterations": admm.iterations}
    _add_network_counters(info, prior, before)
    return SolverOutput(mean=samples.mean(0), samples=samples, info=info)

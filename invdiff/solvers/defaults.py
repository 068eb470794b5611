r"""Measured default options per operator kind: what a solver uses when the caller does not say.

A solver's own defaults (its option spec, :class:`~invdiff.solvers.base.Option`) are the paper's values. They are
often far from the best on invdiff's operators and priors (RED-Diff's released lam = 0.25 loses ~6 dB on 4x MRI,
DPS's weight 100 loses 1-6 dB on CT and MRI). This table holds the settings *measured* best for an operator kind,
noise level and prior value range, each with the result file it was measured in; :func:`invdiff.solve` applies the
matching entry to the options the caller left out (explicit options always win; an entry may also step aside for
an explicit option, e.g. RED-Diff's ``preset``). ``rec.info["measured_defaults"]`` says which entry was used.

Operator kinds (:func:`operator_kind`): ``inpainting-holes`` (>= half of the pixels measured, e.g. a missing box),
``inpainting-sparse`` (fewer than half, e.g. 70 % random pixels missing), ``blur``, ``mri-singlecoil``,
``mri-multicoil``, ``ct`` (sparse-view, >= 179 degrees), ``ct-limited`` (limited angle); volumes: ``ct3d``,
``mri3d``. Other operators (dense matrices, custom physics) have no kind and get the solver's own defaults.

An entry applies when the physics' Gaussian noise std is within ``sigma`` (the range around the measured 0.01 in
which the choice is expected to hold; outside it the solver's own, noise-aware rules apply) and the prior's
``value_range`` equals the measured one (a value of the table is in that prior's units). An option value may be a
function ``f(physics, prior, sigma) -> value`` (e.g. DDS's prox weight, which scales with 1 / sigma^2), or
``f(physics, prior, sigma, num_steps) -> value`` for a value that depends on the number of steps the caller asked
for (the solver's own default when not given; e.g. DPS's guidance weight, :func:`dps_weight`).

``benchmarks/defaults.py`` checks every diffusion solver with these defaults against per-task tuned values and the
classical baseline on every 64 x 64 bench task (``benchmarks/results/defaults.md``).

Adding a solver (``ads``, ``conditional-dc``, ...): append :class:`Measured` rows with its name; nothing else.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .primitives import noise_sigma

CT_RANGE, MRI_RANGE = (0.0, 1.0), (-1.0, 1.0)   # shipped priors: ct-phantom-64, mri-brainphantom-64
NEAR_001 = (0.005, 0.02)                        # noise levels around the measured 0.01


@dataclass(frozen=True)
class Measured:
    """One row of the table: ``options`` of ``solver`` measured best on operator ``kind``.

    kinds: operator kinds it applies to; sigma: (lo, hi) noise std it holds for; value_range: the prior's range it
    was measured with (None: any); unless: explicit options that switch the row off; when: an extra condition on
    the physics (e.g. the number of CT views; its docstring says it); source: result file and rows. The first
    matching row of a solver wins.
    """

    solver: str
    kinds: tuple[str, ...]
    options: dict[str, Any]
    source: str
    value_range: tuple[float, float] | None = None
    sigma: tuple[float, float] = NEAR_001
    unless: tuple[str, ...] = field(default_factory=tuple)
    when: Callable | None = None


def _dds_mri_gamma(physics, prior, sigma: float) -> float:
    """DDS prox weight gamma = v peak^2 / sigma_y^2 with v = 0.001 sqrt 3 on MRI (gamma = 17 at sigma_y = 0.01)."""
    lo, hi = prior.value_range
    return 0.001 * 3 ** 0.5 * max(abs(float(lo)), abs(float(hi))) ** 2 / sigma ** 2


def _dds_mri_gamma_dense(physics, prior, sigma: float) -> float:
    """DDS prox weight gamma = v peak^2 / sigma_y^2 with v = 0.001 on multi-coil MRI sampling more than 1/6 of
    k-space (gamma = 10 at sigma_y = 0.01)."""
    lo, hi = prior.value_range
    return 0.001 * max(abs(float(lo)), abs(float(hi))) ** 2 / sigma ** 2


def _ct_views(physics) -> int:
    tomo = _tomography(physics)
    return int(tomo.radon.theta.numel()) if tomo is not None else 0


def few_views(physics) -> bool:
    """at most 12 CT views"""
    return _ct_views(physics) <= 12


def many_views(physics) -> bool:
    """more than 12 CT views"""
    return _ct_views(physics) > 12


def dense_views(physics) -> bool:
    """more than 24 CT views"""
    return _ct_views(physics) > 24


def _dds_ct_gamma_many_views(physics, prior, sigma: float) -> float:
    """DDS prox weight gamma = v peak^2 / sigma_y^2 with v = 0.005 / 3 for CT with > 12 views (17 at sigma_y 0.01)."""
    lo, hi = prior.value_range
    return 0.005 / 3 * max(abs(float(lo)), abs(float(hi))) ** 2 / sigma ** 2


def _dds_ct3d_gamma(physics, prior, sigma: float) -> float:
    """DDS prox weight on volume CT: v = 0.005 / 3 for a native 3D prior (``spatial_dims == 3`` network), the
    automatic v = 0.005 (:func:`invdiff.solvers.dds.default_gamma`) for a lifted 2D prior."""
    from .dds import default_gamma

    if getattr(prior, "prior2d", None) is not None or getattr(prior, "spatial_dims", 3) != 3:
        return default_gamma(physics, prior)
    return _dds_ct_gamma_many_views(physics, prior, sigma)


def sparse_kspace(physics) -> bool:
    """at most 1/6 of k-space measured (8x and beyond)"""
    m = getattr(physics, "mask", None)
    return m is not None and float(m.float().mean()) <= 1 / 6


def dense_kspace(physics) -> bool:
    """more than 1/6 of k-space measured (4x and below)"""
    m = getattr(physics, "mask", None)
    return m is not None and not sparse_kspace(physics)


def wide_band(physics) -> bool:
    """blur keeping >= half of the frequencies (|H| >= 0.1), e.g. camera shake"""
    k = getattr(physics, "filter", None)
    if k is None:
        return False
    import torch

    k = k.detach().reshape(-1, *k.shape[-2:])[0].cpu().double()
    size = tuple(max(int(n), 64) for n in k.shape)       # the kernel's transfer function on a 64 x 64 grid
    return bool((torch.fft.fft2(k, s=size).abs() >= 0.1).double().mean() >= 0.5)


def _dds_blur_gamma(physics, prior, sigma: float) -> float:
    """DDS prox weight gamma = v peak^2 / sigma_y^2 with v = 0.005 / 9 on wide-band blur (5.6 at sigma_y 0.01)."""
    lo, hi = prior.value_range
    return 0.005 / 9 * max(abs(float(lo)), abs(float(hi))) ** 2 / sigma ** 2


def dps_weight(weight: float, per_step: float) -> Callable:
    r"""DPS guidance weight for ``num_steps`` steps: :math:`\min(w, k\,N)`.

    deepinv's DPS adds ``weight`` times the gradient of :math:`\|y - A\hat x_0(x_t)\|` to the score, and its DDPM
    solver takes steps :math:`\Delta t = 1/N`: the push of the data term per step is about ``weight / N``. Past a
    per-step push of ``k`` the explicit step overshoots (the weight best at 1000 steps loses 3-6 dB at 100), so the
    weight is the one measured best with many steps, ``w``, capped at ``k N`` (``k`` measured at 50-200 steps,
    ``benchmarks/results/dps_steps.md``).
    """
    def rule(physics, prior, sigma: float, num_steps: int) -> float:
        return min(float(weight), float(per_step) * int(num_steps))

    rule.__doc__ = f"min({weight:g}, {per_step:g} num_steps): the weight best at 1000 steps, capped per step"
    return rule


_RD = "benchmarks/results/red_diff_tuning.md (2 tuning phantoms, 50 NFE; also benchmarks/red_diff_images.py SETUP)"
_TASKS = "benchmarks/results/priors/NOTES.md (deepinv baselines tuned on 2 tuning phantoms, 1000 / 100 NFE)"
_DDS = "benchmarks/results/dds_sweep.md (mri-4x-8coil, sigma 0.01: gamma 10 beats the v = 0.005 rule by ~1 dB)"
_DEF = "benchmarks/results/defaults.md"
_COND = "benchmarks/results/conditional_dc_sweep.md (2 tuning phantoms per task, 50 NFE, mri-brainphantom-64-cond)"
_DPS = ("benchmarks/results/dps_steps.md (ct-8view and mri-4x-multicoil, tuning image: best weight 250 at 50 steps, "
        "300-500 at 100, 1000 at 200-1000)")
_TUNE = _DEF + " (per-task tuning section: selected on the tuning image, held-out index 1000, current priors)"

TABLE: tuple[Measured, ...] = (
    # ---- RED-Diff: (lr, lam) in the prior's units (the released presets lose 0.2-6.4 dB at 50-100 NFE) ----
    Measured("red-diff", ("inpainting-holes",), {"lr": 0.03, "lam": 0.01}, _RD + ": inpaint-box", CT_RANGE,
             unless=("preset",)),
    Measured("red-diff", ("inpainting-sparse",), {"lr": 0.1, "lam": 0.003}, _TUNE + ": inpainting-random, lr 0.1 "
             "beat the older choice 0.3 (red_diff_tuning.md, step-4000 priors) by 1.3 dB", CT_RANGE,
             unless=("preset",)),
    Measured("red-diff", ("blur",), {"lr": 0.1, "lam": 0.05}, _RD + ": deblur", CT_RANGE, unless=("preset",)),
    Measured("red-diff", ("mri-multicoil",), {"lr": 0.1, "lam": 0.01}, _RD + ": mri-4x (multi-coil)", MRI_RANGE,
             unless=("preset",)),
    Measured("red-diff", ("mri-singlecoil",), {"lr": 0.1, "lam": 0.09}, _TUNE + ": mri-4x/8x-singlecoil, lam 0.09 "
             "beat 0.03 by 0.7 / 1.2 dB on the tuning image (0.03 had beaten 0.01 by 1.3 / 2.2 dB)", MRI_RANGE,
             unless=("preset",)),
    Measured("red-diff", ("ct",), {"lr": 0.1, "lam": 0.25}, _RD + ": ct-8view", CT_RANGE, unless=("preset",),
             when=few_views),
    Measured("red-diff", ("ct", "ct-limited"), {"lr": 0.1, "lam": 0.25 / 3}, _TUNE + ": ct-16view, ct-32view, "
             "ct-limited90, lam 0.083 beat 0.25 by 1.2-3.8 dB (on 8 views it lost 0.9 dB)", CT_RANGE,
             unless=("preset",)),
    # ---- DPS: guidance weight, a rule of num_steps (dps_weight: the weight best at many steps, capped per step) ----
    Measured("dps", ("ct",), {"weight": dps_weight(3000.0, 5.0)}, _TUNE + ": ct-16view / ct-32view at 1000 steps, "
             "weight 3000 beat 1000 by 1.4 / 2.1 dB on the tuning image and 0.9 / 1.2 dB on the images (ct-8view and "
             "ct-limited90: 1000 best, 3000 lost 1.4 / 9.2 dB); the cap 5 / step: " + _DPS, CT_RANGE, when=many_views),
    Measured("dps", ("ct", "ct-limited"), {"weight": dps_weight(1000.0, 5.0)},
             _TASKS + ": ct-8view at 1000 steps, weight in {30..3000}; the cap 5 / step: " + _DPS, CT_RANGE),
    Measured("dps", ("mri-singlecoil",), {"weight": dps_weight(1000.0 / 3, 5.0)}, _TUNE + ": mri-8x-singlecoil at "
             "1000 steps, weight 333 beat 1000 by 3.5 dB on the tuning image and 6.5 dB on the images (1000 fell "
             "below zero-filling; on mri-4x-singlecoil 333 lost 3.8 dB to 1000); the cap 5 / step: " + _DPS,
             MRI_RANGE, when=sparse_kspace),
    Measured("dps", ("mri-multicoil", "mri-singlecoil"), {"weight": dps_weight(1000.0, 5.0)},
             _TASKS + ": mri-4x-multicoil at 1000 steps, weight in {30..3000}; the cap 5 / step: " + _DPS, MRI_RANGE),
    Measured("dps", ("inpainting-holes",), {"weight": dps_weight(100.0, 1.0)}, _RD + ": inpaint-box (DPS at 100 "
             "NFE); at 1000 steps (" + _DEF + ") 300 won by 0.15 dB on the tuning image and 0.33 dB on the images: "
             "kept", CT_RANGE),
    Measured("dps", ("inpainting-sparse",), {"weight": dps_weight(1000.0, 10.0)},
             _RD + ": inpaint-random (DPS at 100 NFE); at 1000 steps (" + _DEF + ") the best of {333, 1000, 3000}",
             CT_RANGE),
    Measured("dps", ("blur",), {"weight": dps_weight(2700.0, 3.0)}, _TUNE + ": deblur-motion (wide band) at 1000 "
             "steps, weight 900 beat 300 by 3.6 dB on the tuning image and 2.9 dB on the images, 2700 beat 900 by 2.9 "
             "/ 2.7 dB; the cap 3 / step (300 at 100 steps): " + _RD + ": deblur (DPS at 100 NFE)", CT_RANGE,
             when=wide_band),
    Measured("dps", ("blur",), {"weight": dps_weight(900.0, 3.0)}, _TUNE + ": deblur-gaussian at 1000 steps, "
             "weight 900 beat 300 by 1.3 dB on the tuning image and 0.9 dB on the images (2700: +0.4 dB on the tuning "
             "image, -0.9 dB on the images); the cap 3 / step (300 at 100 steps): " + _RD + ": deblur (DPS at 100 NFE)",
             CT_RANGE),
    # ---- DiffPIR: (lambda_, zeta) ----
    Measured("diffpir", ("ct",), {"lambda_": 3.0, "zeta": 0.5}, _TUNE + ": ct-32view, lambda_ 3 beat 1 by 0.3 dB "
             "on the tuning image and 0.54 dB on the images (ct-8view / ct-16view / ct-limited90 (32 views over 90 "
             "degrees): 1 best on the tuning image, 3 lost 0.2 / 0.4 / 0.16 dB)", CT_RANGE, when=dense_views),
    Measured("diffpir", ("ct", "ct-limited"), {"lambda_": 1.0, "zeta": 0.5},
             _TASKS + ": ct-8view, lambda_ in {1, 3, 7, 20} x zeta in {0.1, 0.5}", CT_RANGE),
    Measured("diffpir", ("mri-multicoil", "mri-singlecoil"), {"lambda_": 3.0, "zeta": 0.5},
             _TASKS + ": mri-4x-multicoil, lambda_ in {1, 3, 7, 20} x zeta in {0.1, 0.5}", MRI_RANGE),
    Measured("diffpir", ("inpainting-sparse", "blur"), {"lambda_": 7 / 3, "zeta": 0.6},
             _TUNE + ": deblur-gaussian / deblur-motion / inpainting-random, lambda_ 7/3 beat the paper's 7 by 0.58 / "
             "0.47 / 0.07 dB on the tuning image and 0.55 / 0.24 / 0.13 dB on the images (inpainting-box: a tie, 7 "
             "kept); zeta as below", CT_RANGE),
    Measured("diffpir", ("inpainting-holes",), {"zeta": 0.6},
             _TUNE + ": inpainting-box / inpainting-random / deblur-gaussian / deblur-motion, zeta 0.3 beat the "
             "paper's 0.1 by 0.9 / 2.5 / 0.5 / 0.5 dB on the images and 0.6 beat 0.3 by 0.4 / 2.2 / 0.5 / 0.6 dB "
             "(lambda_ 7 kept: 7/3 within 0.5 dB of it on the tuning image, 21 worse)", CT_RANGE),
    # ---- SMC (AFDPS): likelihood tempering ----
    Measured("smc", ("mri-multicoil",), {"tempering": "linear", "island_size": 1}, _TUNE + ": mri-4x-multicoil, "
             "linear tempering beat the noise schedule by 3.8 dB on the images; island_size: smc_images.md and "
             "smc_islands_pilot.md (mri4x-mc8, 64 particles): islands of 1 / 4 particles 29.64 / 29.59 dB, 90 % "
             "coverage 0.81 / 0.77 (one run of 16: 28.40 dB, 0.36)", MRI_RANGE),
    Measured("smc", ("blur", "inpainting-holes"), {"tempering": "linear"}, _TUNE + ": "
             "deblur-gaussian / deblur-motion / inpainting-box / mri-4x-multicoil, linear tempering beat the noise "
             "schedule by 2.2 / 3.9 / 3.6 / 3.8 dB on the images (inpainting-random, mri-8x-singlecoil: the noise "
             "schedule won on the tuning image)", CT_RANGE),
    Measured("smc", ("ct",), {"tempering": "linear", "island_size": 1}, _TUNE + ": ct-8view / ct-16view / "
             "ct-32view / ct-limited90 with the noise-aware last level, linear tempering beat the noise schedule by "
             "5.2 / 4.8 / 6.7 / 3.9 dB on the images and on the tuning image; island_size: smc_images.md and "
             "smc_islands_pilot.md (ct8, 64 particles): islands of 1 / 4 / 16 particles 35.81 / 35.74 / 34.70 dB, "
             "90 % coverage 0.96 / 0.95 / 0.89 (one run of 16: 33.08 dB, 0.74)", CT_RANGE),
    Measured("smc", ("ct-limited",), {"tempering": "linear"}, _TUNE + ": ct-limited90 with the noise-aware last "
             "level, linear tempering beat the noise schedule by 3.9 dB on the images and on the tuning image",
             CT_RANGE),
    # ---- DDRM: eta ----
    Measured("ddrm", ("inpainting-sparse", "mri-singlecoil"), {"eta": 1.0}, _TUNE + ": inpainting-random, "
             "mri-4x-singlecoil, mri-8x-singlecoil: eta 1 beat the paper's 0.85 by 0.75 / 0.94 / 1.43 dB on the images "
             "(on the tuning image by 0.5 / 0.2 / -0.7 dB); inpainting-box keeps 0.85 (1 lost 0.35 dB on the tuning "
             "image)", None),
    # ---- DDS: prox weight on MRI (CT keeps the v = 0.005 rule, best there) ----
    Measured("dds", ("mri-multicoil",), {"gamma": _dds_mri_gamma_dense}, _TUNE + ": mri-4x-multicoil, gamma 10 "
             "beat 17.3 by 0.2 dB on the tuning image (dds_budget/NOTES.md: by 0.2-0.5 dB on six 4x images); on "
             "8x multi-coil and on single-coil MRI 17.3 or more is best (below)", MRI_RANGE, unless=("dc",),
             when=dense_kspace),
    Measured("dds", ("mri-multicoil", "mri-singlecoil"), {"gamma": _dds_mri_gamma}, _TUNE + ": gamma 17 within "
             "0.2 dB of the best of {3.3, 5.8, 10, 17, 30} on the tuning image of all four MRI tasks (10: 0.25 dB "
             "below on 8x multi-coil, 0.6 dB below on the images; 30: 0.7 dB below on 4x multi-coil); " + _DDS,
             MRI_RANGE, unless=("dc",)),
    Measured("dds", ("blur",), {"gamma": _dds_blur_gamma}, _TUNE + ": deblur-motion (camera shake, 96 % of the "
             "frequencies kept), gamma 5.6 beat 50 by 4.4 dB on the tuning image and 5.4 dB on the images; "
             "deblur-gaussian (9 % kept) keeps the v = 0.005 rule (5.6 lost 0.6 dB there)", CT_RANGE, unless=("dc",),
             when=wide_band),
    Measured("dds", ("ct",), {"gamma": _dds_ct_gamma_many_views}, _TUNE + ": ct-16view / ct-32view, gamma 17 beat "
             "50 by 0.4 / 2.1 dB (8 views and limited angle: 50 best)", CT_RANGE, unless=("dc",), when=many_views),
    Measured("dds", ("ct3d",), {"gamma": _dds_ct3d_gamma}, "benchmarks/results/native3d_tuning.md: native 3D prior "
             "ct-ellipsoid3d-patch32, 32x64x64 volumes, 8 / 16 views, two families: gamma x 1/3 of the automatic 50 "
             "best in 3 of 4 cells (x 1/9 in the fourth, 0.08 dB better), x 1 lost 0.2-2.5 dB", CT_RANGE,
             unless=("dc",)),
    # ---- conditional DC: prox weight in the network's units and re-noising (the conditional MRI prior) ----
    Measured("conditional-dc", ("mri-multicoil",), {"gamma": 3.0, "eta": 1.0}, _COND + ": 8-coil 4x / 8x / "
             "Poisson-disc 6x at the default sigma_max (trained range), gamma 3 with eta 1 beat gamma 10 by 1.4 / -0.7 / "
             "3.6 dB and eta 0.85 by 0.7 / -0.2 / 0.8 dB", MRI_RANGE),
    Measured("conditional-dc", ("mri-singlecoil",), {"eta": 1.0}, _COND + ": 1-coil 4x / 8x at the default "
             "sigma_max, hard DC (beat the prox with gamma 10 by 0.2 dB on both), eta 1 beat 0.85 by 0.5 / -0.4 dB",
             MRI_RANGE),
)


def _tomography(physics):
    from .ztv import tomography_of

    return tomography_of(physics)


def operator_kind(physics) -> str | None:
    """The operator kind of ``physics`` for the table (module docstring), or None."""
    import deepinv as dinv

    from .ztv import angular_coverage

    img = getattr(physics, "img_size", None)
    volume = img is not None and len(tuple(img)) == 4
    if _tomography(physics) is not None:
        if volume or type(physics).__name__ == "CT3D":
            return "ct3d"
        return "ct-limited" if angular_coverage(physics) < 179.0 else "ct"
    if isinstance(physics, dinv.physics.MultiCoilMRI):
        return "mri-multicoil"
    if isinstance(physics, dinv.physics.MRI):
        return "mri3d" if volume or getattr(physics, "three_d", False) else "mri-singlecoil"
    if isinstance(physics, dinv.physics.Inpainting):
        m = physics.mask
        frac = float(m.float().mean()) if hasattr(m, "float") else float(m)
        return "inpainting-holes" if frac >= 0.5 else "inpainting-sparse"
    if isinstance(physics, (dinv.physics.Blur, dinv.physics.BlurFFT)):
        return "blur"
    return None


def _sigma(physics) -> float:
    s = getattr(physics, "sigma", None)              # invdiff operators: the decimal value
    return s if isinstance(s, float) else noise_sigma(physics)


def measured(solver: str, physics, prior, explicit: dict) -> dict:
    """The table row for ``solver`` on ``physics`` with ``prior``: ``{"options": {...}, "source": ..., "kind": ...}``
    holding only options not in ``explicit``; ``{}`` when no row applies."""
    rows = [r for r in TABLE if r.solver == solver]
    if not rows or physics is None:
        return {}
    kind = operator_kind(physics)
    if kind is None:
        return {}
    sigma = _sigma(physics)
    vr = getattr(prior, "value_range", None)
    vr = None if vr is None else (float(vr[0]), float(vr[1]))
    for r in rows:
        if kind not in r.kinds or not (r.sigma[0] <= sigma <= r.sigma[1]):
            continue
        if r.value_range is not None and vr != r.value_range:
            continue
        if r.when is not None and not r.when(physics):
            continue
        if any(k in explicit for k in r.unless):
            return {}
        opts = {k: _value(v, solver, physics, prior, sigma, explicit)
                for k, v in r.options.items() if k not in explicit}
        return {"options": opts, "source": r.source, "kind": kind, "sigma": sigma} if opts else {}
    return {}


def _value(v, solver: str, physics, prior, sigma: float, explicit: dict):
    """A table value: a constant, ``v(physics, prior, sigma)``, or ``v(..., num_steps=N)`` with the caller's
    ``num_steps`` (else the solver's own default)."""
    if not callable(v):
        return v
    import inspect

    if "num_steps" in inspect.signature(v).parameters:
        from .base import get

        steps = explicit.get("num_steps", get(solver).option("num_steps").default)
        return v(physics, prior, sigma, num_steps=steps)
    return v(physics, prior, sigma)


def table_for(solver: str) -> list[Measured]:
    """The rows of ``solver`` (``invdiff solvers NAME`` prints them)."""
    return [r for r in TABLE if r.solver == solver]


__all__ = ["Measured", "TABLE", "operator_kind", "measured", "table_for", "dps_weight"]

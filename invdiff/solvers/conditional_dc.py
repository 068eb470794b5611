r"""Conditional diffusion with data consistency in every reverse step (``solver="conditional-dc"``).

CDDM-MRI (Alsubaie et al. 2025, arXiv 2510.06335): a diffusion prior trained on paired (measurement, image)
data, :math:`D_\theta(x, \sigma, c) \approx E[x_0 \mid x_0 + \sigma n = x, c]`, sampled with a data-consistency
(DC) correction inside every reverse step. No code is public; this is the reconstruction of the reference
dossier (§4.2, option 1: DC on :math:`\hat x_0`, then re-noise, DDNM / DDS style), in the EDM (VE) noise
parametrisation of invdiff's priors, :math:`x_i = x_0 + \sigma_i n`:

0. Conditioning, once per measurement (:func:`invdiff.operators.conditioning.measurement_conditioning`, the function
   training used): :math:`c = [A^\dagger y / s, P_A]`, :math:`s` = 99th percentile of :math:`|A^\dagger y|`. The
   chain runs on the normalised image :math:`x/s` with :math:`y/s` and noise level :math:`\sigma_y/s`; the result
   is multiplied by :math:`s`.
1. :math:`\hat x_0 = D_\theta(x_i, \sigma_i, c)`                                      (Tweedie / EDM Eq. 7)
2. DC on :math:`\hat x_0` (``dc``):

   - ``"hard"``: replace the sampled k-space (single-coil Cartesian MRI):
     :math:`\tilde x_0 = F^{-1}[(1-M) F\hat x_0 + M y] = \hat x_0 + A^H(y - A\hat x_0)`   (dossier §4.2-1)
   - ``"cg"``: projection onto :math:`\{x : Ax = y\}`: CG on :math:`A^H A x = A^H y` from :math:`\hat x_0`
     (iterates stay in :math:`\hat x_0 + \mathrm{range}(A^H)`, the minimum-norm correction; DDS "ls")
   - ``"prox"``: noisy prox :math:`\arg\min_x \tfrac12\|x-\hat x_0\|^2 + \tfrac\gamma2\|Ax-y\|^2` by CG on
     :math:`(I+\gamma A^H A)x = \hat x_0 + \gamma A^H y`, :math:`\gamma = v/\sigma_y^2` (DDS's prox and default)
   - ``"soft"``: the same proximal step with a fixed weight :math:`\lambda` (``lam``); single-coil k-space:
     :math:`\hat k \leftarrow (1-M)F\hat x_0 + M(F\hat x_0 + \lambda y)/(1+\lambda)`          (dossier §4.2-2)
   - ``"none"``: no DC (the conditional model alone)
   - ``"auto"``: "hard" for single-coil Cartesian MRI, else "cg" for noiseless and "prox" for noisy data
3. Re-noise to :math:`\sigma_{i+1}` with the network's own noise direction and fresh noise (DDIM / DDS):
   :math:`x_{i+1} = \tilde x_0 + \sigma_{i+1}\big(\eta z + \sqrt{1-\eta^2}\,\hat\epsilon\big)`,
   :math:`\hat\epsilon = (x_i - \hat x_0)/\sigma_i`.
4. After the last step (:math:`\sigma \to 0`) a final DC (``final_dc``): "hard" (single coil), "cg"
   (noiseless: :math:`Ax = y` to round-off on the sampled data) or "prox" (noisy), with ``final_cg_iters``.

Defaults: the option spec (:data:`OPTIONS`) holds the values above (:math:`\gamma = v/(\sigma_y/s)^2`, :math:`\eta` =
0.85); on MRI at :math:`\sigma_y` near 0.01 :func:`invdiff.solve` uses the measured ones of
:mod:`invdiff.solvers.defaults` instead: :math:`\gamma = 3`, :math:`\eta = 1` on multi-coil data, :math:`\eta = 1` on
single-coil data (``benchmarks/results/conditional_dc_sweep.md``, tuning phantoms; evaluation in
``benchmarks/results/conditional_dc.md``).

Noise levels: EDM's (Karras et al. 2022, Eq. 5, :class:`~invdiff.schedules.EDMSchedule`) from :math:`\sigma_{max}`
down to :math:`\sigma_{min}` = 0.002 scaled by :math:`\sigma_d / 0.5`; ``num_steps`` network calls (NFE =
``num_steps``). ``n_samples`` chains run batched -> mean and per-pixel std. :math:`\sigma_{max}` defaults to the
top of the noise range the network was trained on, :func:`trained_sigma_max`:
:math:`\min(80\,\sigma_d/0.5,\ \exp(P_{mean} + 2 P_{std}))` with the prior's training distribution
:math:`\ln\sigma \sim N(P_{mean}, P_{std}^2)` (EDM Eq. 2; from ``prior.info["training_config"]``; 80
:math:`\sigma_d/0.5` when the prior does not record it). Above it the conditional network has seen almost no
training samples: on ``mri-brainphantom-64-cond`` (:math:`P_{mean}=-1.81, P_{std}=1.2`, so 1.8) its one-step
estimate :math:`D(\sigma_{max} n, \sigma_{max}, c)` at EDM's :math:`\sigma_{max} = 43` is worse than the zero-filled
image it is given, and starting there cost 1.5 / 2.2 / 0.8 / 1.2 dB on 4x / 8x single-coil and 4x / 8x 8-coil
tuning phantoms (``benchmarks/results/conditional_dc_sweep.md``,
``benchmarks/tools/conditional_diagnose.py``). The pure-noise start at 1.8 (7 times the data std) is the usual
truncated-schedule approximation; DC in every step pins the measured data from the first step on.

Bad input (one error naming both sides): an unconditional prior; a prior trained for another operator kind
(a CT prior on MRI data), channel count or conditioning width; ``dc="hard"`` on non-single-coil data.

Example:
    >>> import torch, invdiff
    >>> from invdiff.operators import MRI, equispaced_mask
    >>> from invdiff.solvers.conditional_dc import tiny_conditional_prior
    >>> prior = tiny_conditional_prior("mri")
    >>> op = MRI(equispaced_mask((16, 16), 4), sigma=0.0)
    >>> y = op.A(torch.randn(1, 2, 16, 16))
    >>> rec = invdiff.solve(y, op, prior, solver="conditional-dc", num_steps=4)
    >>> rec.nfe, bool(torch.allclose(op.A(rec.mean), y, atol=1e-5))
    (4, True)
"""
from __future__ import annotations

import torch

from .._validate import check_choice, fail
from .. import schedules as S
from ..schedules import EDMSchedule
from .base import Option, SolverOutput, chains_batch, chains_unbatch, progress_bar, register
from .dds import GAMMA_VARIANCE, dds_data_consistency
from .primitives import noise_sigma

DC_MODES = ("auto", "hard", "cg", "prox", "soft", "none")
FINAL_DC_MODES = ("auto", "hard", "cg", "prox", "none")


# ------------------------------------------------------------------------------------------------
# what the prior was trained for, checked against the problem
# ------------------------------------------------------------------------------------------------
def conditional_meta(prior) -> dict | None:
    """``info["conditional"]`` of a conditional prior (kind, cond_channels, normalisation), None if unconditional."""
    inner = getattr(prior, "inner", prior)
    if int(getattr(inner, "cond_channels", 0) or 0) <= 0:
        return None
    meta = dict((getattr(inner, "info", None) or {}).get("conditional") or {})
    meta.setdefault("cond_channels", int(inner.cond_channels))
    return meta


def check_conditional_problem(physics, prior) -> str:
    """The conditional kind of ``physics`` after checking it against what ``prior`` was trained for."""
    from ..operators.conditioning import COND_CHANNELS, IMAGE_CHANNELS, conditional_kind

    name = getattr(prior, "name", type(prior).__name__)
    meta = conditional_meta(prior)
    if meta is None:
        fail("prior", "a conditional prior (trained with 'invdiff train-prior --conditional mri|ct') for solver "
                      "'conditional-dc'", f"the unconditional prior {name!r} (use dds, dps, ... for it)")
    kind = conditional_kind(physics)
    trained = meta.get("kind")
    if trained is None:
        fail("prior", f"a conditional prior whose metadata names its operator kind (info['conditional']['kind'])",
             f"{name!r} without it")
    if trained != kind:
        fail("prior", f"a conditional prior trained for {kind.upper()} operators (the physics is "
                      f"{type(physics).__name__})", f"{name!r}, trained for {trained.upper()}")
    if int(prior.channels) != IMAGE_CHANNELS[kind] or int(physics.x_shape[0]) != int(prior.channels):
        fail("prior", f"{physics.x_shape[0]} image channels (the physics {type(physics).__name__} x_shape "
                      f"{tuple(physics.x_shape)})", f"{name!r} with {prior.channels} channels")
    if int(meta["cond_channels"]) != COND_CHANNELS[kind]:
        fail("prior", f"{COND_CHANNELS[kind]} conditioning channels for {kind.upper()} "
                      "([A^dagger y, sampling pattern])", f"{name!r} with {meta['cond_channels']}")
    return kind


def _single_coil(physics) -> bool:
    from ..operators import MRI

    return isinstance(physics, MRI)


def _denoise(prior, x, sigma, cond):
    """One batched conditional network call, counted like every other solver's (``CountingPrior``)."""
    inner = getattr(prior, "inner", None)
    if inner is not None and hasattr(prior, "nfe"):
        prior.nfe += 1
        prior.nfe_images += int(x.shape[0])
        return inner.denoise(x, sigma, cond)
    return prior.denoise(x, sigma, cond)


# ------------------------------------------------------------------------------------------------
# data consistency on x0 (step 2 / step 4)
# ------------------------------------------------------------------------------------------------
def hard_replace(x0: torch.Tensor, y: torch.Tensor, physics) -> torch.Tensor:
    r"""Single-coil Cartesian: :math:`\hat x_0 + A^H(y - A\hat x_0) = F^{-1}[(1-M)F\hat x_0 + My]` (A^H A = F^{-1}MF)."""
    return x0 + physics.A_adjoint(y - physics.A(x0))


def data_consistency(x0, y, physics, *, mode: str, gamma, cg_iters: int):
    """``mode`` in {"hard", "cg", "prox", "soft", "none"} (module docstring, step 2); ``gamma`` the prox / soft
    weight (a number or a (B,) tensor)."""
    if mode == "none":
        return x0
    if mode == "hard":
        return hard_replace(x0, y, physics)
    if mode == "cg":
        return dds_data_consistency(x0, y, physics, dc="ls", gamma=1.0, cg_iters=cg_iters)
    g = gamma.reshape(-1, *([1] * (x0.dim() - 1))).to(x0) if isinstance(gamma, torch.Tensor) else gamma
    return dds_data_consistency(x0, y, physics, dc="prox", gamma=g, cg_iters=cg_iters)


def trained_sigma_max(prior) -> float:
    r"""The default largest noise level: the top of the noise range the conditional network was trained on,
    :math:`\min(80\,\sigma_d/0.5,\ \exp(P_{mean} + 2 P_{std}))` (:func:`invdiff.schedules.trained_sigma_max`,
    module docstring); EDM's :math:`80\,\sigma_d/0.5` when the prior does not record its training distribution.

    >>> trained_sigma_max(tiny_conditional_prior("mri"))  # sigma_d = 0.3, no training record: 80 sigma_d / 0.5
    48.0
    """
    inner = getattr(prior, "inner", prior)
    cfg = (getattr(inner, "info", None) or {}).get("training_config") or {}
    return S.trained_sigma_max(prior.sigma_data, cfg.get("p_mean"), cfg.get("p_std"))


OPTIONS = (
    Option("num_steps", int, 50, "network evaluations (EDM noise levels, NFE = num_steps)", lo=1),
    Option("dc", str, "auto", "DC on x0 in every step: hard (single-coil k-space replacement), cg (projection), "
           "prox (noisy), soft (weight lam), none; auto: hard for single coil, else cg noiseless / prox noisy",
           choices=DC_MODES),
    Option("final_dc", str, "auto", "DC after the last step: hard, cg, prox, none; auto: hard for single coil, else "
           "cg noiseless / prox noisy (none when dc=none)", choices=FINAL_DC_MODES),
    Option("lam", float, 1.0, "weight of dc=soft", lo=0.0, lo_open=True),
    Option("gamma", float, None, "prox weight in the network's units (None: v / (sigma_y / s)^2, v = DDS's "
           "GAMMA_VARIANCE)", lo=0.0, lo_open=True),
    Option("eta", float, 0.85, "fresh-noise fraction of the re-noising (step 3)", lo=0.0, hi=1.0),
    Option("cg_iters", int, 5, "CG steps of the DC in every reverse step", lo=1),
    Option("final_cg_iters", int, 50, "CG steps of the final DC", lo=1),
    Option("sigma_max", float, None, "largest noise level (None: the top of the prior's training noise range, "
           "trained_sigma_max)", lo=0.0, lo_open=True),
    Option("sigma_min", float, None, "smallest noise level (None: 0.002 sigma_data / 0.5)", lo=0.0, lo_open=True),
    Option("rho", float, 7.0, "EDM schedule exponent (Karras et al. 2022, Eq. 5)", lo=0.0, lo_open=True),
)


@register("conditional-dc", options=OPTIONS)
def conditional_dc(y, physics, prior, *, generator, n_samples, progress, num_steps, dc, final_dc, lam, gamma, eta,
                   cg_iters, final_cg_iters, sigma_max, sigma_min, rho):
    r"""Conditional diffusion with DC in every reverse step (module docstring).

    Options: ``num_steps`` (NFE), ``dc`` in {"auto", "hard", "cg", "prox", "soft", "none"}, ``final_dc`` in
    {"auto", "hard", "cg", "prox", "none"} ("auto": "hard" single coil, else "cg" noiseless / "prox" noisy;
    "none" when ``dc="none"``), ``lam`` (weight of ``dc="soft"``), ``gamma`` (prox weight in the normalised
    units; default :math:`v/(\sigma_y/s)^2`, v = :data:`~invdiff.solvers.dds.GAMMA_VARIANCE`), ``eta``
    (fresh-noise fraction of the re-noising, step 3), ``cg_iters`` (CG steps per reverse step), ``final_cg_iters``,
    ``sigma_max`` / ``sigma_min`` / ``rho`` (EDM schedule; ``sigma_max`` default :func:`trained_sigma_max`,
    ``sigma_min`` 0.002 sigma_data / 0.5).
    """
    from ..operators.conditioning import denormalise, measurement_conditioning, normalise

    kind = check_conditional_problem(physics, prior)   # options: checked by the registry (OPTIONS)
    single = kind == "mri" and _single_coil(physics)
    for opt, mode in (("dc", dc), ("final_dc", final_dc)):
        if mode == "hard" and not single:
            fail(opt, "'cg', 'prox' or 'soft' for this operator ('hard' replaces sampled k-space: single-coil "
                      "Cartesian MRI only)", f"'hard' with {type(physics).__name__}")
    sigma_y = noise_sigma(physics)
    if dc == "auto":
        dc = "hard" if single else ("cg" if sigma_y == 0 else "prox")
    if final_dc == "auto":
        final_dc = "none" if dc == "none" else ("hard" if single else ("cg" if sigma_y == 0 else "prox"))
    if (dc == "prox" or final_dc == "prox") and sigma_y == 0 and gamma is None:
        fail("dc", "'cg' or 'hard' for noiseless physics ('prox' weighs the data by 1/sigma_y^2; or give gamma)",
             "'prox' with sigma_y = 0")

    # step 0: conditioning and the per-slice scale (the function training used), chains batched
    cond, s = measurement_conditioning(y, physics)
    yc = chains_batch(y, n_samples)
    sc = chains_batch(s, n_samples)
    cond = chains_batch(cond, n_samples)
    yn = normalise(yc, sc)                                                  # y / s: DC in the network's units
    if gamma is None:
        gamma_t = GAMMA_VARIANCE / (sigma_y / sc).clamp_min(1e-12) ** 2 if sigma_y > 0 else torch.ones_like(sc)
    else:
        gamma_t = torch.full_like(sc, float(gamma))
    step_gamma = torch.full_like(sc, float(lam)) if dc == "soft" else gamma_t
    step_mode = "prox" if dc == "soft" else dc

    sd = float(prior.sigma_data)
    smax = trained_sigma_max(prior) if sigma_max is None else sigma_max
    smin = 0.002 * sd / 0.5 if sigma_min is None else sigma_min
    sig = EDMSchedule(sigma_min=smin, sigma_max=smax, rho=rho).sigmas(num_steps).tolist()
    shift = float(getattr(prior, "data_shift", 0.0))
    shape = (yn.shape[0], int(prior.channels), *cond.shape[2:])
    x = shift + sig[0] * torch.randn(shape, generator=generator, device=y.device, dtype=torch.float32)
    with torch.no_grad():
        for i in progress_bar(range(num_steps), progress, "conditional-dc"):
            x0_hat = _denoise(prior, x, sig[i], cond)                               # step 1
            x0_dc = data_consistency(x0_hat, yn, physics, mode=step_mode, gamma=step_gamma, cg_iters=cg_iters)  # step 2
            if i == num_steps - 1:
                x = x0_dc
                break
            eps_hat = (x - x0_hat) / sig[i]
            z = torch.randn(shape, generator=generator, device=y.device, dtype=x.dtype)
            x = x0_dc + sig[i + 1] * (eta * z + (1 - eta ** 2) ** 0.5 * eps_hat)    # step 3
        x = data_consistency(x, yn, physics, mode=final_dc, gamma=gamma_t, cg_iters=final_cg_iters)  # step 4
    samples = chains_unbatch(denormalise(x, sc), n_samples)
    info = {"num_steps": num_steps, "dc": dc, "final_dc": final_dc, "eta": eta, "cg_iters": cg_iters,
            "final_cg_iters": final_cg_iters, "lam": lam if dc == "soft" else None,
            "gamma": None if sigma_y == 0 and gamma is None else [float(v) for v in gamma_t[::n_samples]],
            "scale": [float(v) for v in s], "kind": kind, "sigma_max": smax, "sigma_min": smin}
    return SolverOutput(mean=samples.mean(0), samples=samples, info=info)


conditional_dc.accepts_conditional = True  # solve() refuses conditional priors for solvers without this flag


def tiny_conditional_prior(kind: str = "mri", *, seed: int = 0, base_channels: int = 8):
    """A small randomly initialised conditional prior for ``kind`` (tests and examples; not trained).

    Its output layer is perturbed away from the zero initialisation, so the network output depends on the input
    and the conditioning."""
    from ..operators.conditioning import COND_CHANNELS, IMAGE_CHANNELS, NORMALISATION
    from ..priors.networks import CompactUNet
    from ..priors.neural import NeuralPrior

    check_choice("kind", kind, ("mri", "ct"))
    with torch.random.fork_rng(devices=[]):  # leaves the caller's global RNG state alone
        torch.manual_seed(seed)
        net = CompactUNet(IMAGE_CHANNELS[kind], cond_channels=COND_CHANNELS[kind], base_channels=base_channels,
                          channel_mult=(1, 2), emb_dim=32)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.05 * torch.randn(p.shape))
    info = {"conditional": {"kind": kind, "cond_channels": COND_CHANNELS[kind], "normalisation": NORMALISATION}}
    return NeuralPrior(net, sigma_data=0.3, channels=IMAGE_CHANNELS[kind], name=f"tiny-{kind}-cond",
                       value_range=(-1.0, 1.0) if kind == "mri" else (0.0, 1.0), info=info).eval()


__all__ = ["conditional_dc", "conditional_meta", "check_conditional_problem", "data_consistency", "hard_replace",
           "tiny_conditional_prior", "trained_sigma_max", "DC_MODES", "FINAL_DC_MODES"]

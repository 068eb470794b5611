r"""RED-Diff: regularisation by denoising diffusion (Mardani, Song, Kautz & Vahdat, ICLR 2024).

Variational inference (paper Sec. 3): fit :math:`q(x_0|y)=\mathcal N(\mu,\sigma^2 I)` by minimising
:math:`\mathrm{KL}(q\,\|\,p(x_0|y))` (Eq. 5). With the Dirac limit :math:`\sigma\to 0` the objective becomes (Eq. 8)

.. math::  \min_\mu\ \frac{\|y-f(\mu)\|^2}{2\sigma_v^2}
           + \mathbb E_{t,\epsilon}\big[\lambda_t\,\|\epsilon_\theta(x_t;t)-\epsilon\|^2\big],\qquad
           x_t=\sqrt{\bar\alpha_t}\,\mu+\sqrt{1-\bar\alpha_t}\,\epsilon,

and Proposition 2 removes the network Jacobian from the gradient of the regulariser,
:math:`\nabla_\mu = \mathbb E[\lambda_t(\epsilon_\theta(x_t;t)-\epsilon)]`. One step of Algorithm 1, as in the released
code (``NVlabs/RED-diff``, ``algos/reddiff.py``; reference dossier §2.2), is stochastic gradient descent (Adam) on
the surrogate, with a fresh :math:`\epsilon` per step and :math:`t` visited in descending order:

.. math::  \ell_t(\mu) = \tfrac12\,\overline{(f(\mu)-y)^2}
           + \lambda\,w_t\ \overline{\mathrm{sg}[\epsilon_\theta(x_t;t)-\epsilon]\odot\mu},
           \qquad w_t = \frac{\sqrt{1-\bar\alpha_t}}{\sqrt{\bar\alpha_t}} = \frac{1}{\mathrm{SNR}_t}\ \text{(Sec. 4.2)}

(:math:`\overline{\cdot}`: mean over the entries of one sample; ``normalize="sum"`` uses sums). Its gradient is

.. math::  \nabla_\mu\ell_t = \frac{J_f(\mu)^\top(f(\mu)-y)}{N_y}
           + \lambda\,w_t\,\frac{\epsilon_\theta(x_t;t)-\epsilon}{N_x}

(``"sum"``: without :math:`N_y`, :math:`N_x`). There is no backpropagation through the network (the prior is only
called under ``torch.no_grad``); the data term goes through ``physics.A`` with autograd, so any differentiable
forward model works, linear or not. :math:`\sigma_v` is folded into :math:`\lambda` (the data term has weight 1), as
in the released code.

Options (``invdiff.solve(..., solver="red-diff", **options)``):

- ``num_steps`` (NFE; default 50 as ``_configs/exp/default.yaml``; the paper uses 1000): timesteps
  ``range(0, 1000, 1000 // num_steps)`` in descending order (the released grid, shared with DDS).
- ``preset``: named ``(lr, lam)`` for a task, :data:`PRESETS`; ``lr`` / ``lam`` given explicitly override it.
- ``lr``: Adam step size (betas (0.9, 0.99), no weight decay: ``reddiff.py`` l.52); ``lam``: :math:`\lambda` >= 0.
- ``weighting``: :math:`w_t` as a function of :math:`w_0=\sqrt{(1-\bar\alpha_t)/\bar\alpha_t}`, the released
  code's seven ``denoise_term_weight`` options (:data:`WEIGHTINGS`; :math:`\lambda=0.25` presumes ``"linear"``).
- ``normalize``: ``"mean"`` (released code: data term averaged over the :math:`N_y` entries of y, regulariser over
  the :math:`N_x` entries of x, per sample) or ``"sum"`` (plain sums). The two differ by the factor
  :math:`N_y/N_x` on :math:`\lambda`: ``sum`` with :math:`\lambda_s = \lambda_m N_y/N_x` gives the same iterates
  as ``mean`` with :math:`\lambda_m`. Preset values are stated for ``mean`` and converted for ``sum``. Masked
  operators (inpainting, Cartesian MRI) return full-size y with zeros where nothing is measured, so
  :math:`N_y` counts those zeros (as the released ``in2`` inpainting does); complex data count 2 real entries.
- ``sigma_x0``: jitter of the variational sample :math:`x_0=\mu+\sigma_{x_0} z` (released default 0; the
  inpainting script uses 1e-4).
- ``init``: :math:`\mu_0`. ``"pinv"`` (default, ``initialize()`` of the released code): ``physics.A_dagger`` where it
  is exact and cheap (dense matrices, 0/1-mask decomposable operators: inpainting, single-coil MRI), else
  ``init_iters`` CG steps on :math:`A^\top A x = A^\top y` from 0 (a least-squares / minimum-norm estimate; a
  nonlinear physics uses its own ``A_dagger``). ``"adjoint"``: :math:`A^\top y` (SMRD's zero-filled MRI start).
  Or a tensor shaped like x.
- ``chunk``: at most this many 2D images per prior call. A volume ``(B, C, D, H, W)`` with a 2D prior is folded to
  ``(B*D, C, H, W)`` slices (:func:`fold_slices`) and the prior runs in chunks; NFE then counts one per chunk call.

**Range.** :math:`\mu` and :math:`\epsilon` live in the prior's data space (``prior.value_range``: [0, 1] for real
images, [-1, 1] for complex MRI priors). The released hyper-parameters are for images in [-1, 1]. For data
:math:`x = c\,x' + b` with :math:`c=(hi-lo)/2`, the paper's direction of descent is reproduced by
:math:`\lambda = c\,\lambda'` and :math:`\mathrm{lr}=c\,\mathrm{lr}'` (Adam is invariant to the gradient's scale;
the data gradient scales by :math:`1/c`; reference dossier §5: the data *loss* scales by :math:`c^2`). Presets are
therefore stored in the paper's units and multiplied by :math:`c` of the prior (:math:`c=1` for priors without a
``value_range``, e.g. Gaussian mixtures); an explicit ``lam``/``lr`` is used as given, in the prior's units. The
noise level at a given t is not rescaled (:math:`\epsilon` is in the prior's space, as the network was trained), so
a [0, 1] prior sees the schedule slightly noisier than a [-1, 1] one.

**Adam and unmeasured pixels.** Adam divides each pixel's gradient by its own running RMS, so where the data term
is zero (inpainting holes, unsampled directions) neither ``lam`` nor :math:`w_t` sets the step size: those pixels
move by up to about ``lr`` per step until the end, and each run keeps its own residual noise there
(``benchmarks/red_diff_images.py`` measures it). ``lam`` only balances prior and data where both act. Decaying
the step to 0 does not cure it: the holes start at the pseudo-inverse (0) and need the distance; a cosine decay of
``lr`` lost 2-6 dB at 100 NFE on random inpainting (tuning phantoms, lr 0.03-0.3, lam 0.001-0.01).

**Output.** ``mean`` is :math:`\mu` after the last Adam step (the released code returns the iterate before it;
dossier §2.10-8). ``n_samples > 1`` runs independent optimisations batched as chains (one network call per step
for all); ``samples`` are those runs, ``mean`` their average and ``std`` their spread: **not posterior samples**
(RED-Diff is mode-seeking, dossier §2.10-10), which ``info["samples_are"]`` states.

Example:
    >>> import torch, invdiff
    >>> from invdiff.operators import MatrixOperator
    >>> from invdiff.priors import GaussianMixture
    >>> prior = GaussianMixture(torch.ones(1), torch.zeros(1, 4), torch.eye(4)[None])
    >>> op = MatrixOperator(torch.eye(4)[:2], sigma=0.1)
    >>> rec = invdiff.solve(op.A(torch.ones(1, 4)), op, prior, solver="red-diff", num_steps=20)
    >>> rec.nfe, rec.mean.shape
    (20, torch.Size([1, 4]))
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .._validate import check_choice, check_tensor, describe, fail
from ..schedules import VPSchedule
from .base import Option, SolverOutput, chains_batch, chains_unbatch, progress_bar, register
from .dds import dds_timesteps
from .primitives import conjugate_gradient, normal_op, preserve_solver_settings

#: Denoiser weightings w_t = g(w0), w0 = sqrt((1 - alpha_bar) / alpha_bar): the released ``denoise_term_weight``.
WEIGHTINGS: dict[str, Callable[[float], float]] = {
    "linear": lambda w0: w0,                   # default: 1/SNR with SNR = alpha/sigma (paper Sec. 4.2)
    "sqrt": math.sqrt,
    "square": lambda w0: w0 * w0,              # (1 - ab)/ab: 1/SNR in the ab/(1 - ab) convention
    "log": math.log1p,                         # log(1 + w0)
    "trunc_linear": lambda w0: min(w0, 1.0),
    "power2over3": lambda w0: w0 ** (2.0 / 3.0),
    "const": lambda w0: 1.0,
}

#: Task presets in the paper's units (images in [-1, 1], ``normalize="mean"``); scaled by (hi - lo)/2 of the prior.
PRESETS: dict[str, dict[str, float]] = {
    "default": {"lr": 0.1, "lam": 0.25},      # _configs/algo/reddiff.yaml
    "inpainting": {"lr": 0.25, "lam": 0.25},  # sample_test.sh, in2_20ff (dossier §2.4)
    "deblur": {"lr": 0.5, "lam": 0.25},       # sample_test.sh, Gaussian deblur / SR / nonlinear tasks
    "mri": {"lr": 0.1, "lam": 0.25},          # NVlabs/SMRD reddiff-MRI.py (dossier §2.7)
    "ct": {"lr": 0.2, "lam": 0.5},            # no released CT setting: selected here (see below)
    "noisy": {"lr": 0.25, "lam": 1.0},        # sample_test.sh, noisy inpainting (sigma_y = 0.1 on [0, 1])
}
# "ct": best (lr, lam) at 50 and 100 steps for 8-view CT with the ct-phantom-64 prior (step 4000) on tuning phantoms
# (benchmarks/red_diff_images.py --tune, results/red_diff_tuning.md: lr 0.1, lam 0.25 on [0, 1]), in paper units (x 2).
# benchmarks/red_diff_images.py compares every task preset with per-task tuned values (results/red_diff_images.md).

SAMPLES_NOTE = ("independent optimisation runs (fresh noise per run), not posterior samples: RED-Diff is a "
                "mode-seeking optimiser and their spread is not a posterior uncertainty")


def denoiser_weight(alpha_bar: float, weighting: str = "linear") -> float:
    r""":math:`w_t` of option ``weighting`` at :math:`\bar\alpha_t` (see :data:`WEIGHTINGS`)."""
    check_choice("weighting", weighting, list(WEIGHTINGS))
    return WEIGHTINGS[weighting](math.sqrt((1.0 - alpha_bar) / alpha_bar))


# ------------------------------------------------------------------------------------------------
# 2D priors on volumes: fold the slice axis into the batch (reusable by any solver)
# ------------------------------------------------------------------------------------------------
def fold_slices(x: torch.Tensor) -> torch.Tensor:
    """(B, C, D, H, W) -> (B*D, C, H, W): the slices of a volume as a batch of 2D images."""
    B, C, D = x.shape[:3]
    return x.movedim(2, 1).reshape(B * D, C, *x.shape[3:])


def unfold_slices(x: torch.Tensor, depth: int) -> torch.Tensor:
    """Inverse of :func:`fold_slices`: (B*D, C, H, W) -> (B, C, D, H, W)."""
    return x.reshape(x.shape[0] // depth, depth, *x.shape[1:]).movedim(1, 2)


def apply_in_chunks(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, chunk: int | None = None,
                    *, fold: bool = False) -> torch.Tensor:
    """``fn`` on ``x`` in calls of at most ``chunk`` images (all at once for None); with ``fold=True`` a volume
    (B, C, D, H, W) is folded into 2D slices first and the result unfolded back."""
    z = fold_slices(x) if fold else x
    parts = [z] if chunk is None or chunk >= z.shape[0] else z.split(chunk)
    out = torch.cat([fn(p) for p in parts], 0) if len(parts) > 1 else fn(parts[0])
    return unfold_slices(out, x.shape[2]) if fold else out


# ------------------------------------------------------------------------------------------------
# pieces of the loop
# ------------------------------------------------------------------------------------------------
def surrogate_loss(x0: torch.Tensor, y: torch.Tensor, physics, g_reg: torch.Tensor, weight: float,
                   normalize: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    r"""The per-step RED-Diff loss, summed over the batch (each sample is an independent problem).

    ``data + weight * <g_reg, x0>`` per sample, with ``data = 1/2 ||A(x0) - y||^2`` and ``g_reg`` the stopped
    :math:`\epsilon_\theta - \epsilon`; ``normalize="mean"`` divides each term by its entries per sample.
    Returns (loss, data term per sample, detached).
    """
    r = physics.A(x0) - y
    data = 0.5 * r.pow(2).reshape(r.shape[0], -1).sum(1)
    reg = (g_reg * x0).reshape(x0.shape[0], -1).sum(1)
    if normalize == "mean":
        data, reg = data / r[0].numel(), reg / x0[0].numel()
    return (data + weight * reg).sum(), data.detach()


def _binary_singular_values(physics) -> bool:
    """True for decomposable operators whose singular values are all 0 or 1 (masks): A_dagger is then exact."""
    import deepinv as dinv

    if not isinstance(physics, dinv.physics.DecomposablePhysics):
        return False
    m = physics.mask
    if isinstance(m, torch.Tensor):
        return (not m.is_complex()) and bool(((m == 0) | (m == 1)).all())
    return float(m) in (0.0, 1.0)


def initial_estimate(y: torch.Tensor, physics, init="pinv", init_iters: int = 30) -> torch.Tensor:
    r""":math:`\mu_0` (see the module docstring, option ``init``); ``y`` already batched."""
    import deepinv as dinv

    linear = isinstance(physics, dinv.physics.LinearPhysics)
    with torch.no_grad():
        if isinstance(init, torch.Tensor):
            return init.detach().clone()
        if init == "adjoint":
            if not linear:
                fail("init", "'pinv' or a starting tensor for a nonlinear physics (it has no adjoint)", "'adjoint'")
            return physics.A_adjoint(y)
        if not linear:
            try:
                with preserve_solver_settings(physics):
                    return physics.A_dagger(y).detach()
            except Exception as e:  # deepinv's generic nonlinear A_dagger needs an adjoint or x_init
                fail("init", f"a starting tensor for this nonlinear physics (its A_dagger failed: {e})"[:300],
                     "'pinv'")
        from ..operators.matrix import MatrixOperator

        if isinstance(physics, MatrixOperator) or _binary_singular_values(physics):
            with preserve_solver_settings(physics):
                return physics.A_dagger(y)
        return conjugate_gradient(lambda v: normal_op(physics, v), physics.A_adjoint(y),
                                  max_iter=init_iters)


def _check_init(init, y: torch.Tensor, n_samples: int):
    if isinstance(init, torch.Tensor):
        check_tensor("init", init, finite=True)
        if init.shape[0] != y.shape[0]:
            fail("init", f"a tensor shaped like x with batch size {y.shape[0]} (that of y)", init)
        return chains_batch(init.to(y.dtype), n_samples)
    return init  # "pinv" | "adjoint" (the registry checked the choice)


def _eps_predictor(prior, mu0: torch.Tensor, chunk: int | None):
    r"""``eps(x_t, alpha_bar)`` of the prior on tensors shaped like mu0 (volumes through 2D slices); checks shapes."""
    fold = mu0.dim() == 5 and getattr(prior, "spatial_dims", 2) == 2
    probe = fold_slices(mu0[:1]) if fold else mu0[:1]
    try:
        prior.check_input(probe, "x")
    except (ValueError, TypeError) as e:
        what = f"images of shape {tuple(mu0.shape[1:])}" + (" (as 2D slices)" if fold else "")
        fail("prior", f"a prior that takes the physics' {what} [{e}]", f"prior {prior.name!r}")
    return lambda x, ab: apply_in_chunks(lambda z: prior.eps_vp(z, ab), x, chunk, fold=fold)


# ------------------------------------------------------------------------------------------------
# the solver
# ------------------------------------------------------------------------------------------------
OPTIONS = (
    Option("num_steps", int, 50, "network evaluations = Adam steps (timesteps of the released grid)",
           lo=1, hi=VPSchedule().num_train_timesteps),
    Option("preset", str, "default", "named (lr, lam) in the paper's units, scaled to the prior's range (PRESETS)",
           choices=tuple(PRESETS)),
    Option("lr", float, None, "Adam step size in the prior's units (overrides the preset)", lo=0.0, lo_open=True),
    Option("lam", float, None, "regulariser weight lambda in the prior's units (overrides the preset)", lo=0.0),
    Option("weighting", str, "linear", "denoiser weighting w_t (WEIGHTINGS; linear = 1/SNR)",
           choices=tuple(WEIGHTINGS)),
    Option("normalize", str, "mean", "data and regulariser terms averaged (mean, released) or summed",
           choices=("mean", "sum")),
    Option("sigma_x0", float, 0.0, "jitter of the variational sample x0 = mu + sigma_x0 z", lo=0.0),
    Option("init", str, "pinv", "starting mu: pinv (least squares), adjoint (A^T y) or a tensor shaped like x",
           choices=("pinv", "adjoint"), extra=("tensor",)),
    Option("init_iters", int, 30, "CG steps of the least-squares start", lo=1),
    Option("chunk", int, None, "at most this many 2D images per prior call (None: all at once)", lo=1),
)


@register("red-diff", options=OPTIONS)  # sampler=True only so that n_samples > 1 gives independent runs
def red_diff(y, physics, prior, *, generator, n_samples, progress, num_steps, preset, lr, lam, weighting, normalize,
             sigma_x0, init, init_iters, chunk):
    r"""RED-Diff (Mardani et al., ICLR 2024): Adam on :math:`\mu` with the stop-gradient score-matching regulariser.

    Options (:data:`OPTIONS`; ``invdiff solvers red-diff``): ``num_steps``, ``preset``, ``lr``, ``lam``,
    ``weighting``, ``normalize``, ``sigma_x0``, ``init``, ``init_iters``, ``chunk``. Details and equations: module
    docstring of :mod:`invdiff.solvers.red_diff`.
    """
    sched = VPSchedule()
    init = _check_init(init, y, n_samples)

    yy = chains_batch(y, n_samples)
    mu0 = initial_estimate(yy, physics, init, init_iters)
    if not torch.is_floating_point(mu0):
        fail("physics", "a forward model on real floating-point images", describe(mu0), TypeError)
    eps_theta = _eps_predictor(prior, mu0, chunk)
    n_x, n_y = mu0[0].numel(), yy[0].numel()

    # hyper-parameters: a preset is in the paper's units; an explicit value is in the prior's units
    lo, hi = prior.value_range if getattr(prior, "value_range", None) is not None else (-1.0, 1.0)
    c = (float(hi) - float(lo)) / 2.0
    p = PRESETS[preset]
    lr_eff = float(lr) if lr is not None else c * p["lr"]
    lam_eff = float(lam) if lam is not None else c * p["lam"] * (n_y / n_x if normalize == "sum" else 1.0)

    alpha_bars = sched.alpha_bars()
    ts, _ = dds_timesteps(num_steps, sched)
    mu = mu0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([mu], lr=lr_eff, betas=(0.9, 0.99), weight_decay=0.0)  # reddiff.py l.52
    trace = []
    for t in progress_bar(ts, progress, "red-diff"):
        ab = float(alpha_bars[t])
        with torch.no_grad():
            jitter = sigma_x0 * torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype) \
                if sigma_x0 > 0 else None
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)  # fresh every step
            x0 = mu if jitter is None else mu + jitter
            x_t = ab ** 0.5 * x0 + (1.0 - ab) ** 0.5 * eps                   # forward diffusion of mu (Eq. 8)
            g_reg = eps_theta(x_t, ab) - eps                                   # sg[eps_theta(x_t; t) - eps] (Prop. 2)
        with torch.enable_grad():
            x0 = mu if jitter is None else mu + jitter
            loss, data = surrogate_loss(x0, yy, physics, g_reg, lam_eff * denoiser_weight(ab, weighting),
                                        normalize)                              # Eq. 8 surrogate, weight Sec. 4.2
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()                                                             # Adam (Alg. 1)
        trace.append(data)
    samples = chains_unbatch(mu.detach(), n_samples)
    info = {"num_steps": num_steps, "preset": preset, "lr": lr_eff, "lam": lam_eff, "range_scale": c,
            "weighting": weighting, "normalize": normalize, "sigma_x0": sigma_x0,
            "init": init if isinstance(init, str) else "tensor", "n_x": n_x, "n_y": n_y,
            "samples_are": SAMPLES_NOTE if n_samples > 1 else "a single optimisation run",
            "data_loss": torch.stack(trace).mean(1).tolist()}
    return SolverOutput(mean=samples.mean(0), samples=samples, info=info)


__all__ = ["red_diff", "OPTIONS", "PRESETS", "WEIGHTINGS", "denoiser_weight", "surrogate_loss", "initial_estimate",
           "fold_slices", "unfold_slices", "apply_in_chunks"]

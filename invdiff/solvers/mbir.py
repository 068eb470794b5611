r"""DiffusionMBIR (Chung, Ryu, McCann, Klasky & Ye, CVPR 2023): VE predictor-corrector + ADMM-TV along z.

A 2D score prior lifted to volumes (:mod:`invdiff.priors.lift`) and a model-based z-direction TV prior
(:class:`~invdiff.solvers.ztv.ZTVADMM`), as in the released ``get_pc_radon_ADMM_TV_vol`` (CT) and
``get_pc_radon_ADMM_TV_mri`` (dossier §4.1-4.2). VE SDE with :math:`\sigma(t)=\sigma_{min}(\sigma_{max}/\sigma_{min})^t`,
time grid :math:`t_i` = ``linspace(1, eps, N)``, discrete levels :math:`\sigma_k` = geometric from
:math:`\sigma_{min}` to :math:`\sigma_{max}` (N levels, :math:`\sigma_{-1} = 0`), score
:math:`s(x,\sigma) = (D(x,\sigma) - x)/\sigma^2` (Tweedie) from the invdiff denoiser. From
:math:`x \sim \mathcal N(0, \sigma_{max}^2 I)`, for :math:`i = 0..N-1` (:math:`k = N-1-i`):

1. predictor, reverse diffusion (Song et al. 2021, Eq. 47 / ``ReverseDiffusionPredictor``):
   :math:`x \leftarrow x + (\sigma_k^2-\sigma_{k-1}^2)\,s(x,\sigma(t_i)) + \sqrt{\sigma_k^2-\sigma_{k-1}^2}\,z`
2. corrector, one Langevin step with signal-to-noise ratio r (Song et al. 2021, Alg. 5 / ``LangevinCorrector``):
   :math:`\epsilon = 2(r\|z\|/\|s\|)^2`, :math:`x \leftarrow x + \epsilon\,s(x,\sigma(t_i)) + \sqrt{2\epsilon}\,z`
3. one scaled-ADMM iteration of :math:`\min_x \tfrac12\|Ax-y\|^2+\lambda\|D_z x\|_1` started at the noisy x, with
   ``cg_iters`` (released: 1) CG steps and the split/dual variables kept across all N steps (``ZTVADMM.step``).

After the loop (CT only, ``final_consistency``): :math:`x \leftarrow x + A^\top(y-Ax)/A^\top A\mathbf 1`.
NFE = 2N calls of the volume prior (4000 at the faithful N = 2000).

Differences from the released code, on purpose:

- the corrector's norms :math:`\|z\|`, :math:`\|s\|` are per-slice norms averaged over *each volume's* slices (the
  released code averages over the 12/20-slice network chunk, so results depend on the chunk size and on the other
  chains, dossier §4.9-1); here they depend on neither;
- the default z boundary is Neumann (``boundary="circular"`` for the released wrap-around ``_Dz``);
- ``eps`` (the end of the time grid) is 1e-5 as the function signature says; the released samplers shadow it with
  the CG tolerance 1e-10 (§4.1), a negligible difference;
- CT (rho, lam) are converted from the released back-projection scale to invdiff's normalised exact adjoint
  (:mod:`.ztv`, module docstring); CG is per-sample and conjugated.

:math:`\sigma_{max}`: the released 378 for [0, 1] 256 x 256 slices follows Song & Ermon (2020, technique 1: about
the largest distance between two training images, which grows as range x sqrt(pixels)); by default it is scaled
to the prior's data range and the slice size: :math:`378\,(hi-lo)\sqrt{HW}/256` (94.5 for [0, 1] at 64 x 64).

Presets: ``preset="faithful"`` (N = 2000 as released) and ``"fast"`` (N = 300: CI and quick looks; a coarse
discretisation of the same sampler, not a tuned method). Fewer steps can diverge: the persistent z/u of the ADMM
step remember :math:`D_z x` of the previous, noisier state and pull the new state back towards it (in the null
space of A nothing else constrains it), which fine steps tolerate and coarse ones do not. Measured with the shipped
CT prior, 8 views, converted sparse-view preset: on an 8-slice 64 x 64 volume N = 150 diverges (7.9 dB) and N = 300
gives 24.3 dB (DDS 3D at 50 NFE: 25.5 dB); on a 4-slice stack N = 100 gave 10.3 dB and N = 400 28.1 dB. MRI (preset
rho = 0.01) was stable at N = 150 (25.2 dB on the 8-slice volume).
"""
from __future__ import annotations

import math
import warnings

import torch

from .._validate import fail
from .base import Option, SolverOutput, chains_batch, chains_unbatch, progress_bar, register
from .ztv import PRESETS as ZTV_PRESETS, ZTVADMM, check_volume_problem, default_preset, tomography_of

#: step budgets: the released N, and the fewest steps found stable (module docstring)
MBIR_PRESETS = {"faithful": {"num_steps": 2000}, "fast": {"num_steps": 300}}
#: released VE settings (score_sde configs of the AAPM / fastMRI NCSN++ checkpoints; sampling snr of the scripts)
SIGMA_MIN, SIGMA_MAX_256, SNR = 0.01, 378.0, 0.16


def default_sigma_max(prior, x_shape) -> float:
    """378 (released, [0, 1] data at 256 x 256) scaled by the prior's data range and sqrt(H W)/256."""
    lo, hi = prior.value_range if getattr(prior, "value_range", None) is not None else (0.0, 1.0)
    return SIGMA_MAX_256 * (hi - lo) * math.sqrt(x_shape[-2] * x_shape[-1]) / 256


def _slice_norm(v: torch.Tensor) -> torch.Tensor:
    """Per-volume mean over slices of the per-slice 2-norm, (B,) for (B, C, D, H, W)."""
    B, D = v.shape[0], v.shape[2]
    return v.movedim(2, 1).reshape(B, D, -1).norm(dim=-1).mean(1)


def _bc(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def mbir_sample(y, physics, prior, admm: ZTVADMM, *, generator, num_steps: int, sigma_min: float, sigma_max: float,
                snr: float, eps: float, final_consistency: bool, progress: bool = False) -> torch.Tensor:
    """The predictor-corrector + ADMM-TV loop of the module docstring; ``y`` holds one row per chain."""
    def randn(shape):
        return torch.randn(shape, generator=generator, device=y.device, dtype=y.dtype)

    def score(x, s):
        return (prior.denoise(x, s) - x) / s ** 2                               # Tweedie: s = (D - x)/sigma^2

    with torch.no_grad():
        shape = physics.A_adjoint(y).shape
        ts = torch.linspace(1.0, eps, num_steps, dtype=torch.float64)
        levels = torch.exp(torch.linspace(math.log(sigma_min), math.log(sigma_max), num_steps, dtype=torch.float64))
        x = randn(shape) * sigma_max                                            # x_N ~ N(0, sigma_max^2 I)
        for i in progress_bar(range(num_steps), progress, "diffusion-mbir"):
            k = num_steps - 1 - i
            s = float(sigma_min * (sigma_max / sigma_min) ** ts[i])             # sigma(t_i), the score's level
            g2 = float(levels[k] ** 2 - (levels[k - 1] ** 2 if k > 0 else 0.0))
            x = x + g2 * score(x, s) + g2 ** 0.5 * randn(shape)                 # 1. reverse-diffusion predictor
            grad, z = score(x, s), randn(shape)                                 # 2. Langevin corrector
            step = 2 * (snr * _slice_norm(z) / _slice_norm(grad).clamp_min(1e-30)) ** 2
            x = x + _bc(step, x) * grad + _bc((2 * step).sqrt(), x) * z
            x = admm.step(x, y, physics)                                        # 3. ADMM-TV(z), persistent z, u
        if final_consistency:                                                   # x += A^T(y - Ax) / A^T A 1
            norm = physics.A_adjoint(physics.A(torch.ones_like(x)))
            x = x + physics.A_adjoint(y - physics.A(x)) / norm.clamp_min(1e-6 * float(norm.abs().max()))
    return x


OPTIONS = (
    Option("preset", str, "faithful", "step budget: faithful (N = 2000, released) or fast (N = 300)",
           choices=tuple(MBIR_PRESETS)),
    Option("num_steps", int, None, "predictor-corrector steps N (overrides the preset); NFE = 2 N", lo=1),
    Option("snr", float, SNR, "Langevin corrector signal-to-noise ratio r", lo=0.0, hi=10.0, lo_open=True),
    Option("sigma_min", float, SIGMA_MIN, "smallest VE noise level", lo=0.0, lo_open=True),
    Option("sigma_max", float, None, "largest VE noise level; None: 378 scaled to the data range and slice size",
           lo=0.0, lo_open=True),
    Option("eps", float, 1e-5, "end of the time grid linspace(1, eps, N)", lo=0.0, hi=1.0, lo_open=True,
           hi_open=True),
    Option("z_preset", str, "auto", "z-TV preset; auto: from the operator", choices=("auto",) + tuple(ZTV_PRESETS)),
    Option("rho", float, None, "ADMM penalty rho (overrides the z preset)", lo=0.0, lo_open=True),
    Option("lam", float, None, "z-TV weight lambda (overrides the z preset)", lo=0.0),
    Option("cg_iters", int, 1, "CG steps per ADMM iteration (released: 1)", lo=1),
    Option("boundary", str, "neumann", "z boundary of the TV difference (circular: released code)",
           choices=("neumann", "circular")),
    Option("final_consistency", bool, None, "final x += A^T(y - Ax) / A^T A 1 step; None: True for CT"),
)


@register("diffusion-mbir", volume=True, options=OPTIONS)
def diffusion_mbir(y, physics, prior, *, generator, n_samples, progress, preset, num_steps, snr, sigma_min, sigma_max,
                   eps, z_preset, rho, lam, cg_iters, boundary, final_consistency):
    r"""DiffusionMBIR: VE predictor-corrector with a lifted 2D prior + one ADMM-TV(z) iteration per step.

    ``prior``: a volume prior (``lift(prior2d, chunk)``, :mod:`invdiff.priors.lift`); ``physics``: a volume operator.
    Options: ``preset`` "faithful" (N = 2000) or "fast" (N = 300); ``num_steps`` N overrides it; ``snr`` (0.16),
    ``sigma_min`` (0.01), ``sigma_max`` (default scaled to the data range, module docstring), ``eps`` (1e-5);
    z-TV: ``z_preset`` in {"auto", "sparse-view-ct", "limited-angle-ct", "mri"} (converted to this operator's
    adjoint scale), ``rho``/``lam`` override it, ``cg_iters`` (released: 1), ``boundary`` ("neumann"/"circular");
    ``final_consistency`` (default: True for CT, as released). NFE = 2 N.
    """
    num_steps = MBIR_PRESETS[preset]["num_steps"] if num_steps is None else num_steps
    x_shape = check_volume_problem(y, physics, prior, "diffusion-mbir", chunk_hint=12)
    if tomography_of(physics) is not None and num_steps < MBIR_PRESETS["fast"]["num_steps"]:
        warnings.warn(f"diffusion-mbir with num_steps={num_steps} on CT: fewer than "
                      f"{MBIR_PRESETS['fast']['num_steps']} steps diverged in invdiff's measurements (module "
                      "docstring; e.g. 10-30 steps end ~40 dB below FBP); use preset='fast' or more steps, or "
                      "solver='dds3d' for a 50-NFE volume solver", RuntimeWarning, stacklevel=3)
    sigma_max = default_sigma_max(prior, x_shape) if sigma_max is None else sigma_max
    if not sigma_max > sigma_min:
        fail("sigma_max", f"a value > sigma_min = {sigma_min}", sigma_max)
    if final_consistency is None:
        final_consistency = tomography_of(physics) is not None
    name = default_preset(physics) if z_preset == "auto" and (rho is None or lam is None) else z_preset
    if name == "auto":
        admm = ZTVADMM(rho, lam, cg_iters=cg_iters, boundary=boundary)
    else:
        admm = ZTVADMM.preset(name, physics, rho=rho, lam=lam, cg_iters=cg_iters, boundary=boundary)
    calls0 = getattr(prior, "network_calls", None)
    x = mbir_sample(chains_batch(y, n_samples), physics, prior, admm, generator=generator, num_steps=num_steps,
                    sigma_min=sigma_min, sigma_max=sigma_max, snr=snr, eps=eps,
                    final_consistency=bool(final_consistency), progress=progress)
    samples = chains_unbatch(x, n_samples)
    info = {"preset": preset, "num_steps": num_steps, "snr": snr, "sigma_min": sigma_min, "sigma_max": sigma_max,
            "z_preset": name, **admm.options(), "final_consistency": bool(final_consistency)}
    if calls0 is not None:
        info["network_calls"] = int(prior.network_calls) - int(calls0)
    return SolverOutput(mean=samples.mean(0), samples=samples, info=info)

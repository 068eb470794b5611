r"""Total variation along the slice axis by ADMM, the 3D augmentation of DDS and DiffusionMBIR.

A 2D prior applied slice by slice (:mod:`invdiff.priors.lift`) knows nothing about the slice direction z; DDS 3D
(Chung, Lee & Ye, ICLR 2024, Sec. 4.3) and DiffusionMBIR (Chung et al., CVPR 2023, Eq. 12-16) add the
model-based prior :math:`\lambda\|D_z x\|_1` and, at every diffusion step, run one iteration of scaled ADMM on

.. math::  \min_x \tfrac12\|Ax - y\|_2^2 + \lambda\|D_z x\|_1 \quad\text{split as}\quad D_z x = z,

with the dual variable :math:`u` (dossier §3.3, §4.1):

.. math::
    x &\leftarrow \mathrm{CG}_M\big(A^\top A + \rho D_z^\top D_z,\; A^\top y + \rho D_z^\top(z - u);\; x_0\big) \\
    z &\leftarrow \mathcal{S}_{\lambda/\rho}(D_z x + u) \\
    u &\leftarrow u + D_z x - z

:math:`x_0` is the solver's current estimate (DDS: the Tweedie estimate :math:`\hat x_0`; DiffusionMBIR: the noisy
predictor-corrector state). :math:`z` and :math:`u` **persist across diffusion steps** (warm start; resetting them
every step is a different algorithm, dossier §3.10-10), so a :class:`ZTVADMM` object is stateful: one per solve
(:meth:`ZTVADMM.reset` clears it; DDS calls ``reset`` at the start of a solve).

- :math:`D_z` is the forward difference along the slice axis (axis 2 of ``(B, C, D, H, W)``). ``boundary="neumann"``
  (default, recommended by the dossier §3.10-9): no difference across the ends of the volume.
  ``boundary="circular"``: the released code's ``_Dz``, whose last difference wraps to the first slice (couples the
  two ends of the volume).
- :math:`\mathcal{S}_t` is the prox of :math:`t\|\cdot\|_{2,1}` over channels: plain soft thresholding for real
  1-channel images, shrinkage of the magnitude of the complex difference for 2-channel (complex) images.
- CG is per sample and conjugated (:func:`~invdiff.solvers.primitives.conjugate_gradient`), so chains stacked in
  the batch stay independent.

**Adjoint scaling (dossier §3.10-7).** The released DDS / DiffusionMBIR CT code uses the back-projection
:math:`A_o^\top = \tfrac{\pi}{2N_v} R^\top` (:math:`N_v` views, :math:`R` the pixel-unit Radon transform) with
:math:`A_o = R`. invdiff's :class:`~invdiff.operators.CT` (deepinv ``Tomography``) uses the exact adjoint of the
normalised :math:`A = R/\|R\|_2`. Then :math:`A_o^\top A_o = \kappa A^\top A` and :math:`A_o^\top y_o = \kappa A^\top y`
with :math:`y_o = \|R\| y`, where

.. math::  \kappa = \frac{\pi\,\|R\|_2^2}{2 N_v} \quad(\text{normalize=True}), \qquad \kappa = \frac{\pi}{2N_v}\quad(\text{normalize=False}).

Dividing the original x-update by :math:`\kappa` gives exactly the update above with
:math:`\rho = \rho_o/\kappa` and :math:`\lambda = \lambda_o/\kappa` (the shrinkage threshold :math:`\lambda/\rho` is
unchanged), so the same iterates as the original on the same pixel grid. :math:`\|R\|_2^2 \approx 0.97\,N_v N`
for an N x N image, so :math:`\kappa \approx 1.52 N` (97.5 at N = 64, 390 at the original N = 256), nearly
independent of the number of views. :func:`ct_adjoint_scale` computes :math:`\kappa` from the operator and
:meth:`ZTVADMM.preset` applies it. The MRI operators (orthonormal FFT, exact adjoint) need no conversion; the
DiffusionMBIR BraTS operator's :math:`A^\top A` is likewise a unit-scale projection (dossier §4.5).

**Presets** (:data:`PRESETS`), for invdiff's normalised CT at N = 64 (:math:`\kappa` = 97.5 for 8 views):
sparse-view CT :math:`\rho = 10/\kappa = 0.103`, :math:`\lambda = 0.04/\kappa = 4.1\times10^{-4}` (threshold
:math:`\lambda/\rho = 0.004`); limited-angle CT :math:`\lambda = 0.4/\kappa` (threshold 0.04); MRI
:math:`\rho = 0.01`, :math:`\lambda = 0.005` (threshold 0.5). Checked by a sweep of DDS 3D (50 NFE) on 64 x 64 x 16
volumes (``benchmarks/dds3d.py``): the converted CT preset beats no z coupling, but :math:`4\lambda` (threshold 0.016)
is better still (tuning volume 28.7 vs 27.4 dB), and for MRI :math:`\lambda/4` (threshold 0.125) is (28.4 vs
26.2 dB); so ``tuned=True`` (DDS 3D's default) applies those factors (``dds_lam_scale``). On the held-out 32-slice
volumes: CT 29.7 dB (converted original 27.5, no z coupling 27.0), MRI 29.0 dB (27.9, 26.6). Note that a *weak* :math:`\lambda` is worse than none: with :math:`\lambda = 0`
the persistent :math:`z = D_z x_{prev}` anchors each step to the previous, blurrier estimate (CT: 21.7 dB vs 27 dB
without z coupling), and so does a larger :math:`\rho` (:math:`4\rho`: 19.2 dB).

Example:
    >>> import torch
    >>> from invdiff.operators import CT3D
    >>> op = CT3D((1, 4, 16, 16), n_views=6)
    >>> admm = ZTVADMM.preset("sparse-view-ct", op)
    >>> round(admm.rho, 3), admm.boundary
    (0.41, 'neumann')
    >>> x = admm.step(torch.zeros(1, 1, 4, 16, 16), op.A(torch.ones(1, 1, 4, 16, 16)), op)
    >>> x.shape, admm.z.shape
    (torch.Size([1, 1, 4, 16, 16]), torch.Size([1, 1, 4, 16, 16]))
"""
from __future__ import annotations

import math

import torch

from .._validate import check_choice, check_positive, fail
from .primitives import (BOUNDARIES, conjugate_gradient, finite_diff, finite_diff_adjoint, inner, normal_op,
                         soft_threshold)

#: z-TV presets: (rho, lam) in the units of the released code and where they come from; ``units`` says how they
#: convert (``"ct"``: divide by :func:`ct_adjoint_scale`; ``"unit"``: no conversion). ``dds_lam_scale`` is the
#: empirical factor on lam that DDS 3D applies on top (``ZTVADMM.preset(..., tuned=True)``), from the sweep in
#: ``benchmarks/dds3d.py`` (results ``benchmarks/results/dds3d_sweep.md``: DDS 3D, 50 NFE, 64 x 64 volumes, shipped
#: priors); 1 where unchecked. DiffusionMBIR uses the converted originals (``tuned=False``).
PRESETS = {
    "sparse-view-ct": {"rho": 10.0, "lam": 0.04, "units": "ct", "dds_lam_scale": 4.0,
                       "source": "DDS eval_SVCT_3d.sh / main.py defaults; DiffusionMBIR AAPM 3D script (8 views)"},
    "limited-angle-ct": {"rho": 10.0, "lam": 0.4, "units": "ct", "dds_lam_scale": 1.0,
                         "source": "DDS eval_LACT_3d.sh (120 views over 0-119 degrees); not re-checked here"},
    "mri": {"rho": 0.01, "lam": 0.005, "units": "unit", "dds_lam_scale": 0.25,
            "source": "DiffusionMBIR BraTS 3D CS-MRI script (unit-scale A^T A, images in [0, 1]); DDS 3D has no MRI "
                      "preset"},
}


def tomography_of(physics):
    """The 2D deepinv Tomography inside ``physics`` (itself, or the slice operator of a SliceWise stack), or None."""
    import deepinv as dinv

    for cand in (physics, getattr(physics, "op2d", None)):
        if isinstance(cand, dinv.physics.Tomography):
            return cand
    return None


def _is_mri(physics) -> bool:
    import deepinv as dinv

    return any(isinstance(c, (dinv.physics.MRI, dinv.physics.MultiCoilMRI))
               for c in (physics, getattr(physics, "op2d", None)))


def ct_adjoint_scale(physics) -> float:
    r""":math:`\kappa` with :math:`A_o^\top A_o = \kappa A^\top A`: the released code's back-projection
    (:math:`\tfrac{\pi}{2N_v}R^\top`, dossier §3.6) relative to this operator's exact adjoint (module docstring).

    Accepts a deepinv ``Tomography`` (invdiff :class:`~invdiff.operators.CT`) or a slice stack of one
    (:class:`~invdiff.operators.CT3D`).
    """
    tomo = tomography_of(physics)
    if tomo is None:
        fail("physics", "a CT operator (invdiff.operators.CT / CT3D or deepinv Tomography)", type(physics).__name__,
             TypeError)
    if getattr(tomo, "fan_beam", False):
        fail("physics", "a parallel-beam CT operator (the original code's back-projection scale is parallel beam)",
             "a fan-beam operator")
    n_views = int(tomo.radon.theta.numel())
    norm2 = float(tomo.operator_norm) ** 2 if getattr(tomo, "normalize", False) else 1.0
    return math.pi * norm2 / (2 * n_views)


def angular_coverage(physics) -> float:
    """Angular range in degrees covered by a CT operator's views (span of the angles plus one angular step)."""
    tomo = tomography_of(physics)
    if tomo is None:
        fail("physics", "a CT operator", type(physics).__name__, TypeError)
    a = torch.sort(tomo.radon.theta.detach().double().cpu().reshape(-1)).values  # deepinv stores degrees
    if a.numel() < 2:
        return 0.0
    return float(a[-1] - a[0] + torch.diff(a).median())


def default_preset(physics) -> str:
    """The preset for an operator: limited-angle CT (< 179 degrees covered), sparse-view CT, or MRI."""
    if tomography_of(physics) is not None:
        return "limited-angle-ct" if angular_coverage(physics) < 179.0 else "sparse-view-ct"
    if _is_mri(physics):
        return "mri"
    fail("physics", "a CT or MRI operator for a z-TV preset (for other operators give rho and lam explicitly)",
         type(physics).__name__)


class ZTVADMM:
    r"""One scaled-ADMM iteration of z-direction TV per call, with persistent split and dual variables.

    Args:
        rho: ADMM penalty :math:`\rho > 0` (in the units of this operator's exact adjoint, see the module docstring).
        lam: TV weight :math:`\lambda \ge 0`; the shrinkage threshold is :math:`\lambda/\rho`.
        cg_iters: CG steps M of the x-update per iteration (DDS: 5, DiffusionMBIR: 1), at least 1.
        boundary: ``"neumann"`` (no difference across the volume ends) or ``"circular"`` (the released code's wrap).
        axis: the slice axis of the image tensor (2 for ``(B, C, D, H, W)``).

    Use ``admm.step(x0, y, physics)``, or the object itself as a solver's ``data_consistency(x0, y, physics)``
    callable (``invdiff.solve(..., solver="dds", data_consistency=admm)``; DDS resets it at the start of a solve).
    ``admm.z``, ``admm.u`` hold the split and (scaled) dual variables after the first step.
    """

    def __init__(self, rho: float, lam: float, cg_iters: int = 5, boundary: str = "neumann", *, axis: int = 2):
        check_positive("rho", rho)
        check_positive("lam", lam, strict=False)
        check_positive("cg_iters", cg_iters, integer=True)
        check_choice("boundary", boundary, BOUNDARIES)
        check_positive("axis", axis, integer=True)
        self.rho, self.lam, self.cg_iters, self.boundary, self.axis = float(rho), float(lam), cg_iters, boundary, axis
        self.z: torch.Tensor | None = None
        self.u: torch.Tensor | None = None
        self.iterations = 0

    # ---- construction from the released code's numbers -------------------------------------------------------
    @classmethod
    def from_original(cls, rho: float, lam: float, physics, **kwargs) -> "ZTVADMM":
        r"""(rho, lam) given for the released CT code's back-projection, converted for ``physics``:
        :math:`\rho/\kappa`, :math:`\lambda/\kappa` with :math:`\kappa` = :func:`ct_adjoint_scale` (module docstring)."""
        kappa = ct_adjoint_scale(physics)
        return cls(rho / kappa, lam / kappa, **kwargs)

    @classmethod
    def preset(cls, name: str, physics, *, tuned: bool = False, **kwargs) -> "ZTVADMM":
        """A preset of :data:`PRESETS` ("sparse-view-ct", "limited-angle-ct", "mri") converted for ``physics``.

        ``tuned=True`` multiplies lam by the preset's ``dds_lam_scale`` (the values DDS 3D checked best here).
        ``rho``/``lam`` in ``kwargs`` replace the resulting values; other kwargs go to the constructor.
        """
        check_choice("name", name, list(PRESETS))
        p = PRESETS[name]
        kappa = ct_adjoint_scale(physics) if p["units"] == "ct" else 1.0
        rho = kwargs.pop("rho", None)
        lam = kwargs.pop("lam", None)
        lam0 = p["lam"] / kappa * (p["dds_lam_scale"] if tuned else 1.0)
        return cls(p["rho"] / kappa if rho is None else rho, lam0 if lam is None else lam, **kwargs)

    # ---- operators ------------------------------------------------------------------------------------------
    def Dz(self, x: torch.Tensor) -> torch.Tensor:
        """Forward difference along the slice axis."""
        return finite_diff(x, self.axis, self.boundary)

    def DzT(self, v: torch.Tensor) -> torch.Tensor:
        """Exact adjoint of :meth:`Dz`."""
        return finite_diff_adjoint(v, self.axis, self.boundary)

    def reset(self) -> None:
        """Forget z and u (start of a new solve)."""
        self.z = self.u = None
        self._y = self._physics = self._ATy = None
        self.iterations = 0

    def objective(self, x: torch.Tensor, y: torch.Tensor, physics) -> torch.Tensor:
        r"""Per-sample :math:`\tfrac12\|Ax-y\|^2 + \lambda\|D_z x\|_{2,1}` (what the ADMM iterations minimise), shape (B,)."""
        r = physics.A(x) - y
        g = self.Dz(x)
        tv = (g.pow(2).sum(1).sqrt() if g.shape[1] > 1 else g.abs()).reshape(x.shape[0], -1).sum(-1)
        return 0.5 * inner(r, r) + self.lam * tv

    # ---- one ADMM iteration ------------------------------------------------------------------------------
    def _check(self, x0: torch.Tensor):
        if not isinstance(x0, torch.Tensor) or x0.dim() <= self.axis or x0.shape[self.axis] < 2:
            fail("x0", f"a volume with at least 2 slices along axis {self.axis} (B, C, D, H, W) for z-TV",
                 x0 if isinstance(x0, torch.Tensor) else repr(x0))
        if self.z is not None and self.z.shape != x0.shape:
            fail("x0", f"the shape {tuple(self.z.shape)} of the previous steps (call reset() before a new problem)",
                 x0)

    def step(self, x0: torch.Tensor, y: torch.Tensor, physics) -> torch.Tensor:
        """One ADMM iteration started at ``x0``; updates ``self.z``, ``self.u`` and returns the new x."""
        self._check(x0)
        if self.z is None:
            self.z, self.u = torch.zeros_like(x0), torch.zeros_like(x0)
        rho, z, u = self.rho, self.z, self.u
        if getattr(self, "_y", None) is not y or getattr(self, "_physics", None) is not physics:
            self._y, self._physics, self._ATy = y, physics, physics.A_adjoint(y)   # loop-invariant: once per solve
        b = self._ATy + rho * self.DzT(z - u)
        x = conjugate_gradient(lambda v: normal_op(physics, v) + rho * self.DzT(self.Dz(v)), b, x0=x0,
                               max_iter=self.cg_iters)
        dx = self.Dz(x)
        self.z = soft_threshold(dx + u, self.lam / rho)
        self.u = u + dx - self.z
        self.iterations += 1
        return x

    def __call__(self, x0: torch.Tensor, y: torch.Tensor, physics) -> torch.Tensor:
        return self.step(x0, y, physics)

    def options(self) -> dict:
        """The settings, for ``Reconstruction.info``."""
        return {"rho": self.rho, "lam": self.lam, "cg_iters": self.cg_iters, "boundary": self.boundary}

    def __repr__(self) -> str:
        return (f"ZTVADMM(rho={self.rho:.4g}, lam={self.lam:.4g}, cg_iters={self.cg_iters}, "
                f"boundary={self.boundary!r})")


def check_volume_problem(y: torch.Tensor, physics, prior, solver: str, chunk_hint: int = 8) -> tuple:
    """The checks every z-coupled volume solver makes: a volume prior (``spatial_dims == 3``), an operator whose
    images are volumes ``(B, C, D, H, W)``, and D >= 2 slices. Returns the image shape."""
    from .._validate import fail

    if getattr(prior, "spatial_dims", None) != 3:
        fail("prior", "a volume prior (spatial_dims == 3); lift a 2D prior first (from invdiff.priors.lift "
                      f"import lift; lift(prior, chunk={chunk_hint}))",
             f"a prior with spatial_dims={getattr(prior, 'spatial_dims', None)}")
    with torch.no_grad():
        x_shape = tuple(physics.A_adjoint(y).shape)
    if len(x_shape) != 5:
        fail("physics", "a volume operator whose images are (B, C, D, H, W) (CT3D, SliceWise, MRI with a 4-entry "
                        f"img_size) for {solver}", f"images of shape {x_shape}")
    if x_shape[2] < 2:
        fail("y", f"measurements of a volume with D >= 2 slices for {solver} (z-TV couples neighbouring slices; use "
                  "a 2D solver for a single slice)", f"a volume of D = {x_shape[2]} slice")
    return x_shape


__all__ = ["check_volume_problem", "ZTVADMM", "PRESETS", "ct_adjoint_scale", "angular_coverage", "default_preset", "tomography_of"]

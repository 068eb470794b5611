r"""Candidate sets: which measurements of a fully sampled operator can be acquired one unit at a time.

Active acquisition (``solver="ads"``) starts from an operator ``physics`` that describes the *fully sampled*
acquisition and picks units of it: k-space columns, CT views, pixels, patches, matrix rows. A
:class:`CandidateSet` describes these units for one operator, so that solvers stay operator-agnostic.

**The protocol.** Every entry of a measurement ``y`` (one batch item, flattened in C order) belongs to exactly one
candidate, and every candidate owns the same number ``d`` of entries. ``index`` is the ``(n, d)`` table of flat
positions (sorted within a row), from which everything else follows:

- ``n`` (number of candidates), ``unit`` (what one candidate is), ``meas_shape`` (the shape of one candidate's
  measurements, ``d`` entries in increasing flat position: ``y_shape`` without the candidate axes);
- :meth:`~CandidateSet.split` ``(B, *y_shape) -> (B, n, d)`` and :meth:`~CandidateSet.merge` (the inverse on a
  subset, zeros elsewhere): per-candidate measurements, e.g. of the particles' predictions ``physics.A(x)``
  (:meth:`~CandidateSet.predict`) or of ``y_full``;
- :meth:`~CandidateSet.restrict` ``(chosen) ->`` the sub-operator :math:`A_S = M_S A` that measures only the
  chosen candidates (same ``y`` layout, zeros elsewhere; :class:`MeasurementSubset`);
- :meth:`~CandidateSet.to_mask` ``(chosen) ->`` the final mask in the operator's own convention ((H, W) columns
  for MRI, (1, H, W) pixels for inpainting, a bool vector over the views for CT, over the rows for matrices);
- ``fixed``: candidates acquired before any choice (the ACS / centre block of Cartesian MRI; empty elsewhere).

**A new operator** declares its candidates by defining ``candidates(self, **options) -> CandidateSet`` (usually
``CandidateSet.from_labels(self, labels, unit, meas_shape, to_mask)`` with a ``y``-shaped integer tensor of
candidate ids); :func:`candidates` calls it before the built-in adapters below.

Built-in adapters (all noise-free predictions through the operator's own ``A``):

=========================================  ===============  ==================================================
operator (fully sampled)                   unit             meas_shape
=========================================  ===============  ==================================================
``MRI`` 2D / slice-wise 4-entry img_size    column (W axis)  (2, H) / (2, D, H)
``MultiCoilMRI`` (same)                     column           (2, N, H) / (2, N, D, H)
``SliceWise(MRI or MultiCoilMRI)``          column           (2, D, H) / (2, D, N, H)
``CT`` parallel or fan beam, ``CT3D``       view (angle)     (C, n_det) / (C, D, n_det)
``Inpainting``                              pixel or patch   (C,) / (C, p, p)
``MatrixOperator``                          row or group     () / (g,)
=========================================  ===============  ==================================================

Cartesian MRI with ``three_d=True`` (two phase-encoding axes) is refused: its units are (ky, kz) points, not
columns. CT stays untouched: views are the last axis of its sinogram, read through ``angles`` only.

Example:
    >>> import torch
    >>> from invdiff.operators import MRI
    >>> cs = candidates(MRI(None, (2, 8, 8)), center_fraction=0.25)
    >>> cs.n, cs.unit, cs.meas_shape, cs.fixed.tolist()
    (8, 'column', (2, 8), [3, 4])
    >>> cs.to_mask(torch.tensor([3, 4, 0]))[0].tolist()
    [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .._validate import check_choice, check_positive, fail


class MeasurementSubset:
    r""":math:`A_S = M_S A`: the operator ``physics`` with only the entries of ``y`` where ``meas_mask`` is 1.

    ``A(x) = meas_mask * physics.A(x)``, ``A_adjoint(y) = physics.A_adjoint(meas_mask * y)`` (exact adjoint);
    ``sigma`` is the full operator's noise level. Enough for conjugate-gradient data consistency
    (:func:`invdiff.solvers.dds.dds_data_consistency`); ``A_adjoint_A`` uses the operator's fused normal operator
    where the subset is a k-space mask (Cartesian MRI).
    """

    def __init__(self, physics, meas_mask: torch.Tensor):
        self.physics, self.meas_mask = physics, meas_mask
        self.sigma = float(getattr(physics, "sigma", 0.0))
        self.noise_model = getattr(physics, "noise_model", None)
        self._sub = None                                   # the sub-operator of A_adjoint_A (False: none)

    def A(self, x, **kwargs):
        y = self.physics.A(x)
        return self.meas_mask.to(device=y.device, dtype=y.dtype) * y

    def A_adjoint(self, y, **kwargs):
        return self.physics.A_adjoint(self.meas_mask.to(device=y.device, dtype=y.dtype) * y)

    def A_adjoint_A(self, x, **kwargs):
        r""":math:`A_S^\top A_S x`: through the operator's own (fused) normal operator when it can measure the subset
        itself (``physics.with_measurement_mask``: Cartesian MRI, where the subset is a k-space mask), else
        ``A_adjoint(A(x))``."""
        if self._sub is None:
            f = getattr(self.physics, "with_measurement_mask", None)
            sub = f(self.meas_mask) if f is not None else None
            self._sub = sub if sub is not None else False
        if self._sub is False:
            return self.A_adjoint(self.A(x))
        return self._sub.A_adjoint_A(x)


class CandidateSet:
    """The candidates of one fully sampled operator (see the module docstring for the protocol).

    Build with :meth:`from_labels`. Attributes: ``physics``, ``n``, ``d``, ``index`` ((n, d) int64), ``unit``,
    ``meas_shape``, ``fixed`` (int64 candidate ids acquired first), ``info`` (dict: e.g. ``angles`` for CT).
    """

    def __init__(self, physics, index: torch.Tensor, unit: str, meas_shape: tuple[int, ...],
                 to_mask: Callable[[torch.Tensor], torch.Tensor], fixed=None, info: dict | None = None):
        self.physics, self.index, self.unit = physics, index, unit
        self.n, self.d = int(index.shape[0]), int(index.shape[1])
        self.meas_shape = tuple(int(s) for s in meas_shape)
        if math.prod(self.meas_shape) != self.d:
            fail("meas_shape", f"a shape with {self.d} entries (entries per candidate)", self.meas_shape)
        self.y_shape = tuple(physics.y_shape)
        self._to_mask = to_mask
        self.fixed = torch.as_tensor([] if fixed is None else fixed, dtype=torch.long).reshape(-1)
        self.info = dict(info or {})

    @classmethod
    def from_labels(cls, physics, labels: torch.Tensor, unit: str, meas_shape, to_mask, fixed=None, info=None):
        """From a ``y_shape`` integer tensor of candidate ids 0..n-1 (every id owning the same number of entries)."""
        lab = labels.reshape(-1).long()
        n = int(lab.max()) + 1
        counts = torch.bincount(lab, minlength=n)
        if int(counts.min()) != int(counts.max()) or int(counts.min()) == 0:
            fail("labels", "every candidate owning the same positive number of measurement entries",
                 f"counts between {int(counts.min())} and {int(counts.max())}")
        order = torch.sort(lab * lab.numel() + torch.arange(lab.numel()), stable=True).indices
        return cls(physics, order.reshape(n, -1), unit, meas_shape, to_mask, fixed, info)

    # -- per-candidate views of measurements -------------------------------------------------------
    def split(self, y: torch.Tensor) -> torch.Tensor:
        """(B, *y_shape) -> (B, n, d) per-candidate measurements."""
        return y.reshape(y.shape[0], -1)[:, self.index.to(y.device)]

    def merge(self, values: torch.Tensor, chosen: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Write (B, k, d) ``values`` of candidates ``chosen`` (k,) into ``out`` (default zeros (B, *y_shape))."""
        B = values.shape[0]
        out = torch.zeros(B, *self.y_shape, dtype=values.dtype, device=values.device) if out is None else out
        flat = out.reshape(B, -1)
        flat[:, self.index[chosen].reshape(-1).to(flat.device)] = values.reshape(B, -1).to(flat.dtype)
        return flat.reshape(out.shape)

    def measurement_mask(self, chosen: torch.Tensor) -> torch.Tensor:
        """(1, *y_shape) 0/1 float: the entries of ``y`` owned by ``chosen``."""
        m = torch.zeros(math.prod(self.y_shape))
        m[self.index[chosen].reshape(-1)] = 1.0
        return m.reshape(1, *self.y_shape)

    def restrict(self, chosen: torch.Tensor) -> MeasurementSubset:
        """The sub-operator measuring only ``chosen``."""
        return MeasurementSubset(self.physics, self.measurement_mask(chosen))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n, d) noise-free per-candidate predictions ``split(physics.A(x))``."""
        with torch.no_grad():
            return self.split(self.physics.A(x))

    def to_mask(self, chosen: torch.Tensor) -> torch.Tensor:
        """The mask of ``chosen`` in the operator's own convention."""
        return self._to_mask(torch.as_tensor(chosen, dtype=torch.long).reshape(-1))

    def __repr__(self) -> str:
        return f"CandidateSet(n={self.n}, unit={self.unit!r}, meas_shape={self.meas_shape}, fixed={self.fixed.tolist()})"


# ------------------------------------------------------------------------------------------------
# built-in adapters
# ------------------------------------------------------------------------------------------------
def _last_axis_labels(y_shape) -> torch.Tensor:
    n = y_shape[-1]
    return torch.arange(n).expand(*y_shape)


def _vector_mask(n: int) -> Callable:
    def to_mask(chosen):
        m = torch.zeros(n, dtype=torch.bool)
        m[chosen] = True
        return m
    return to_mask


def centre_block(W: int, center_fraction: float) -> list[int]:
    """The ``int(center_fraction * W)`` centred columns (start ``W // 2 - n // 2``: deepinv's / masks.py random and
    Gaussian masks), always containing the DC column ``W // 2`` (n >= 1)."""
    n_c = int(center_fraction * W)
    if n_c < 1:
        n_c = 1
    s = W // 2 - n_c // 2
    return list(range(s, s + n_c))


def _is_full(mask: torch.Tensor) -> bool:
    return bool((mask != 0).all())


def _mri_columns(physics, op2d, center_fraction):
    from .mri import MRI, MultiCoilMRI

    if getattr(op2d, "three_d", False):
        fail("physics", "Cartesian MRI with slice-wise 2D FFTs (three_d=False): with three_d=True the acquisition "
                        "units are (ky, kz) points, which have no candidate adapter yet", "an MRI with three_d=True")
    if not _is_full(op2d.mask):
        fail("physics", "the fully sampled acquisition (mask=None): ADS chooses the mask itself",
             f"an {type(op2d).__name__} with {int((op2d.mask[0, 0] != 0).sum())} of {op2d.mask[0, 0].numel()} "
             "k-space locations sampled")
    assert isinstance(op2d, (MRI, MultiCoilMRI))
    W, H = op2d.x_shape[-1], op2d.x_shape[-2]
    fixed = []
    if center_fraction is not None:
        if not 0 < center_fraction < 1:
            fail("center_fraction", "a fraction of the k-space columns in (0, 1) (the ACS block must be narrower "
                                    "than the image)", center_fraction)
        fixed = centre_block(W, center_fraction)

    def to_mask(chosen):
        m = torch.zeros(H, W)
        m[:, chosen] = 1.0
        return m

    return CandidateSet.from_labels(physics, _last_axis_labels(physics.y_shape), "column", physics.y_shape[:-1],
                                    to_mask, fixed, {"center_fraction": center_fraction})


def _ct_views(physics, op2d):
    angles = op2d.angles.detach().cpu().clone()
    n = angles.numel()
    vec = _vector_mask(n)
    return CandidateSet.from_labels(physics, _last_axis_labels(physics.y_shape), "view", physics.y_shape[:-1],
                                    vec, None, {"angles": angles, "fan_beam": bool(getattr(op2d, "fan_beam", False))})


def _inpainting(physics, unit, patch):
    if not _is_full(physics.mask):
        fail("physics", "the fully sampled acquisition (an all-ones inpainting mask): ADS chooses the pixels",
             f"an Inpainting operator with {int((physics.mask != 0).sum())} of {physics.mask.numel()} mask entries set")
    if len(physics.x_shape) != 3:
        fail("physics", "a 2D Inpainting operator (C, H, W)", f"x_shape {physics.x_shape}")
    C, H, W = physics.x_shape
    if unit == "pixel":
        labels = torch.arange(H * W).reshape(1, H, W).expand(C, H, W)
        meas = (C,)

        def to_mask(chosen):
            m = torch.zeros(H * W)
            m[chosen] = 1.0
            return m.reshape(1, H, W)
    else:
        if patch is None:
            fail("patch", "a patch side p (an int dividing H and W) for unit='patch'", "None")
        check_positive("patch", patch, integer=True)
        if H % patch or W % patch:
            fail("patch", f"a side dividing the image size {H}x{W}", patch)
        nw = W // patch
        hh, ww = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
        labels = ((hh // patch) * nw + ww // patch).expand(C, H, W)
        meas = (C, patch, patch)

        def to_mask(chosen):
            pm = torch.zeros(H // patch * nw)
            pm[chosen] = 1.0
            return pm.reshape(H // patch, nw).repeat_interleave(patch, 0).repeat_interleave(patch, 1)[None]
    return CandidateSet.from_labels(physics, labels, unit, meas, to_mask, None, {"patch": patch})


def _matrix_rows(physics, groups):
    m = physics.y_shape[0]
    if groups is None:
        return CandidateSet.from_labels(physics, torch.arange(m), "row", (), _vector_mask(m))
    g = torch.as_tensor(groups, dtype=torch.long)
    if g.shape != (m,):
        fail("groups", f"a group id per row, shape ({m},)", g)
    n = int(g.max()) + 1

    def to_mask(chosen):
        return torch.isin(g, chosen)
    size = int(torch.bincount(g, minlength=n).max())
    return CandidateSet.from_labels(physics, g, "row group", (size,), to_mask)


def candidates(physics, *, unit: str | None = None, patch: int | None = None, center_fraction: float | None = None,
               groups=None) -> CandidateSet:
    """The :class:`CandidateSet` of a fully sampled operator (see the module docstring).

    Args:
        physics: an operator with a ``candidates(**options)`` method, or one of the built-in kinds.
        unit: inpainting only, "pixel" (default) or "patch".
        patch: patch side for ``unit="patch"``.
        center_fraction: Cartesian MRI only: the fraction of columns acquired first (ACS block), None for none.
        groups: MatrixOperator only: one candidate id per row (rows measured together), default one per row.
    """
    from .ct import CT
    from .inpainting import Inpainting
    from .matrix import MatrixOperator
    from .mri import MRI, MultiCoilMRI
    from .stack import SliceWise

    own = getattr(physics, "candidates", None)
    if callable(own):
        cs = own(unit=unit, patch=patch, center_fraction=center_fraction, groups=groups)
        if not isinstance(cs, CandidateSet):
            fail("physics", "a candidates() method returning an invdiff CandidateSet", type(cs).__name__, TypeError)
        return cs
    inner = physics.op2d if isinstance(physics, SliceWise) else physics
    is_mri = isinstance(inner, (MRI, MultiCoilMRI))
    if center_fraction is not None and not is_mri:
        fail("center_fraction", f"None for {type(physics).__name__} (only Cartesian MRI has a centre block)",
             center_fraction)
    if unit is not None and not isinstance(inner, Inpainting):
        fail("unit", f"None for {type(physics).__name__} (only inpainting has pixel / patch units)", unit)
    if groups is not None and not isinstance(physics, MatrixOperator):
        fail("groups", "None (row groups are for MatrixOperator)", groups)
    if is_mri:
        return _mri_columns(physics, inner, center_fraction)
    if isinstance(inner, CT):
        return _ct_views(physics, inner)
    if isinstance(physics, Inpainting):
        check_choice("unit", unit or "pixel", ["pixel", "patch"])
        return _inpainting(physics, unit or "pixel", patch)
    if isinstance(physics, MatrixOperator):
        return _matrix_rows(physics, groups)
    fail("physics", "an operator with selectable measurements (MRI, MultiCoilMRI, CT, CT3D, SliceWise of those, "
                    "Inpainting, MatrixOperator, or one with a candidates() method returning a CandidateSet)",
         type(physics).__name__, TypeError)


__all__ = ["CandidateSet", "MeasurementSubset", "candidates", "centre_block"]

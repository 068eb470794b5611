r"""Apply any 2D operator to every slice of a volume (slice axis folded into the batch).

For a volume :math:`x \in \mathbb{R}^{C \times D \times H \times W}` and a 2D operator :math:`A_{2D}`,

.. math::  A x = (A_{2D} x_{:, 1}, \dots, A_{2D} x_{:, D}), \qquad A^\top y = (A_{2D}^\top y_{:, 1}, \dots, A_{2D}^\top y_{:, D})

i.e. :math:`A = I_D \otimes A_{2D}` (block diagonal), so the adjoint, ``prox_l2`` and ``A_dagger`` of the
stack are those of the 2D operator applied slice by slice.

Shape rule: the slice axis D sits at axis 2 in both ``x`` and ``y``: ``x`` is ``(B, C, D, H, W)`` and,
if the 2D operator maps ``(B, C, H, W)`` to ``(B, C', *rest)``, ``y`` is ``(B, C', D, *rest)`` (e.g. CT
sinograms ``(B, 1, D, n_det, n_views)``; multi-coil MRI k-space ``(B, 2, D, N, H, W)``).
"""
from __future__ import annotations

import deepinv as dinv
import torch

from .._validate import check_positive, fail
from .base import InvdiffPhysics


class SliceWise(InvdiffPhysics, dinv.physics.LinearPhysics):
    r"""Stack of one 2D operator over the D slices of a volume: :math:`A = I_D \otimes A_{2D}`.

    The noise model is the 2D operator's (masked operators keep adding noise only on measured entries).

    Args:
        op2d: an invdiff 2D operator (anything with ``x_shape``/``y_shape``, e.g. :class:`CT`,
            :class:`Blur`, :class:`MRI`, :class:`Inpainting`); its parameters are shared by all slices
            and must not be per-sample.
        depth: number of slices D.

    Example:
        >>> import torch
        >>> from invdiff.operators import SliceWise, Blur, gaussian_kernel
        >>> op = SliceWise(Blur(gaussian_kernel(3, 1.0), (1, 8, 8)), depth=4)
        >>> op.x_shape, op.A(torch.ones(2, 1, 4, 8, 8)).shape
        ((1, 4, 8, 8), torch.Size([2, 1, 4, 8, 8]))
    """

    def __init__(self, op2d, depth: int):
        if not isinstance(op2d, InvdiffPhysics) or not isinstance(op2d, dinv.physics.LinearPhysics):
            fail("op2d", "an invdiff 2D operator (e.g. invdiff.operators.CT, Blur, MRI)", type(op2d).__name__,
                 TypeError)
        check_positive("depth", depth, integer=True)
        if len(op2d.x_shape) != 3:
            fail("op2d", "a 2D operator with images (C, H, W)", f"an operator with x_shape {op2d.x_shape}")
        if op2d._param_batch() != 1:
            fail("op2d", "an operator whose parameters are shared by all samples (batch 1)",
                 f"per-sample parameters for {op2d._param_batch()} samples")
        super().__init__(noise_model=op2d.noise_model, img_size=None)
        self.op2d = op2d
        self.depth = depth
        xs, ys = op2d.x_shape, op2d.y_shape
        self._setup_shapes((xs[0], depth) + tuple(xs[1:]), (ys[0], depth) + tuple(ys[1:]), op2d.is_complex)

    @property
    def sigma(self) -> float:
        return self.op2d.sigma

    @sigma.setter
    def sigma(self, value):
        self.op2d.sigma = value
        self.noise_model = self.op2d.noise_model

    # ---- folding -----------------------------------------------------------------------------------
    @staticmethod
    def _fold(t: torch.Tensor) -> torch.Tensor:
        """(B, C, D, *s) -> (B*D, C, *s)."""
        B, C, D = t.shape[:3]
        return t.movedim(2, 1).reshape(B * D, C, *t.shape[3:])

    def _unfold(self, t: torch.Tensor, B: int) -> torch.Tensor:
        """(B*D, C, *s) -> (B, C, D, *s)."""
        return t.reshape(B, self.depth, *t.shape[1:]).movedim(1, 2)

    def _slice_mismatch(self, name, t, expected):
        if isinstance(t, torch.Tensor) and t.dim() == len(expected) + 1 and t.dim() >= 3 and t.shape[2] != self.depth \
                and tuple(t.shape[3:]) == tuple(expected[2:]) and t.shape[1] == expected[0]:
            fail(name, f"{self.depth} slices along axis 2 (the operator's depth), shape (B, "
                       f"{', '.join(map(str, expected))})", t)

    def _check_x_shape(self, x, name="x"):
        self._slice_mismatch(name, x, self.x_shape)
        return super()._check_x_shape(x, name)

    def _check_y_shape(self, y, name="y"):
        self._slice_mismatch(name, y, self.y_shape)
        return super()._check_y_shape(y, name)

    def check_x(self, x, name="x"):
        self._slice_mismatch(name, x, self.x_shape)
        return super().check_x(x, name)

    def check_y(self, y, name="y"):
        self._slice_mismatch(name, y, self.y_shape)
        return super().check_y(y, name)

    def apply_to_slices(self, fn, y: torch.Tensor, **kwargs) -> torch.Tensor:
        """Apply a 2D measurement->image map (``fbp``, ``A_dagger``, ...) to every slice of ``y``."""
        self._check_y_shape(y)
        return self._unfold(fn(self._fold(y), **kwargs), y.shape[0])

    def update_parameters(self, **kwargs):
        """Parameters (mask, filter, ...) are the 2D operator's, shared by all slices."""
        self.op2d.update_parameters(**kwargs)

    # ---- operator ----------------------------------------------------------------------------------
    # A 2D operator that maps the trailing axes of any (..., *x_shape[1:]) tensor (``_A_leading`` /
    # ``_A_adjoint_leading``, e.g. CT's sparse matrix) gets the whole volume at once, without folding copies.
    def A(self, x, **kwargs):
        self._check_x_shape(x)
        if not kwargs and hasattr(self.op2d, "_A_leading"):
            return self.op2d._A_leading(x)
        return self._unfold(self.op2d.A(self._fold(x), **kwargs), x.shape[0])

    def A_adjoint(self, y, **kwargs):
        self._check_y_shape(y)
        if not kwargs and hasattr(self.op2d, "_A_adjoint_leading"):
            return self.op2d._A_adjoint_leading(y)
        return self._unfold(self.op2d.A_adjoint(self._fold(y), **kwargs), y.shape[0])

    def noise(self, y, **kwargs):
        return self._unfold(self.op2d.noise(self._fold(y), **kwargs), y.shape[0])

    def A_dagger(self, y, **kwargs):
        return self.apply_to_slices(self.op2d.A_dagger, y, **kwargs)

    def prox_l2(self, z, y, gamma, **kwargs):
        r""":math:`\arg\min_x \tfrac{\gamma}{2}\|Ax-y\|^2 + \tfrac12\|x-z\|^2`, slice by slice (exact: A is block diagonal).

        ``gamma``: a number or a ``(B,)`` tensor.
        """
        self._check_y_shape(y)
        B = y.shape[0]
        if isinstance(gamma, torch.Tensor) and gamma.numel() > 1:
            gamma = gamma.reshape(B, *gamma.shape[1:]).repeat_interleave(self.depth, dim=0)
        zf = z if (z is None or isinstance(z, (int, float))) else self._fold(z)
        return self._unfold(self.op2d.prox_l2(zf, self._fold(y), gamma, **kwargs), B)


__all__ = ["SliceWise"]

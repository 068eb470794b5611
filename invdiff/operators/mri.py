r"""Cartesian MRI forward models (thin subclasses of deepinv ``MRI`` / ``MultiCoilMRI``), 2D and 3D.

Conventions (deepinv's, which are fastMRI's):

- images are complex, stored as **2 real channels** (real, imaginary): ``(B, 2, H, W)``, or
  ``(B, 2, D, H, W)`` for volumes;
- k-space uses the **centred orthonormal FFT** :math:`F = \mathrm{fftshift} \circ \mathrm{FFT}_{\text{ortho}}
  \circ \mathrm{ifftshift}` (fastMRI ``fft2c``), so :math:`\|F x\| = \|x\|`;
- single-coil k-space is ``(B, 2, H, W)``; multi-coil k-space is ``(B, 2, N, H, W)`` (``(B, 2, N, D, H, W)``
  for volumes); coil maps are **complex dtype** ``(N, H, W)`` (or ``(B, N, ...)``);
- masks are 0/1 with 1 = sampled (see :mod:`invdiff.operators.masks`); noise is added only on sampled
  k-space entries, unsampled entries of ``y`` are exactly 0.

Line masks (2D multi-coil, a mask constant along one image axis, e.g. every row of the sampled k-space columns):
the centred FFT along that axis cancels in :math:`A^H A`, which is then block diagonal, one :math:`L \times L`
block per image line (:class:`LineBlocks`). Small images (:data:`LINE_BLOCK_BYTES`) use it for the exact data prox
:meth:`MultiCoilMRI.prox_l2_exact` (an eigendecomposition per line, computed once per mask and coil maps).

Volumes: ``three_d=True`` applies a 3D FFT over (D, H, W) (3D Cartesian acquisition, mask ``(D, H, W)``
over the two phase-encoding axes and readout); ``three_d=False`` with a 4-entry ``img_size`` applies a
2D FFT to every slice (slice-by-slice 2D acquisition, mask ``(H, W)`` shared by all slices or
``(D, H, W)`` one per slice).
"""
from __future__ import annotations

import copy
import hashlib
import threading
from collections import OrderedDict

import deepinv as dinv
import torch

from .._validate import check_tensor, fail
from .base import InvdiffPhysics, format_mask, gaussian_noise, parse_img_size


def _mri_img_size(img_size, mask, coil_maps=None) -> tuple[int, ...]:
    """(2, *spatial) from img_size, or from a 2D (H, W) mask / (N, H, W) coil maps when img_size is None."""
    if img_size is None:
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            return (2,) + tuple(mask.shape)
        if mask is None and isinstance(coil_maps, torch.Tensor) and coil_maps.dim() == 3:
            return (2,) + tuple(coil_maps.shape[-2:])
        fail("img_size", "(2, H, W) or (2, D, H, W) (it can be left out only for an (H, W) mask or, "
                         "without a mask, (N, H, W) coil maps)", "None")
    return parse_img_size(img_size, channels=2, spatial_dims=(2, 3))


def _mri_mask(mask, spatial) -> torch.Tensor:
    """0/1 mask to deepinv's MRI layout ``(B_m, 2, *spatial)`` (same mask for real and imaginary parts)."""
    return format_mask(mask, spatial, channels=(1, 2)).expand(-1, 2, *spatial).contiguous()


def _check_three_d(three_d, x_shape):
    if not isinstance(three_d, bool):
        fail("three_d", "True or False", three_d, TypeError)
    if three_d and len(x_shape) != 4:
        fail("img_size", "(2, D, H, W) for three_d=True", x_shape)


class _Cartesian:
    """What single- and multi-coil Cartesian MRI share."""

    @property
    def acceleration(self) -> float:
        """Realised acceleration: number of k-space locations / number sampled (first mask in the batch)."""
        m = self.mask[0, 0]
        return float(m.numel() / m.sum().clamp_min(1))

    def with_measurement_mask(self, meas_mask: torch.Tensor):
        """A copy that measures only where ``meas_mask`` ``(1, *y_shape)`` is nonzero, when that is a k-space mask (the
        same for both channels and all coils), else None. Used by
        :class:`~invdiff.operators.candidates.MeasurementSubset` for a fused normal operator."""
        kshape = tuple(self.mask.shape[2:])
        mm = meas_mask.reshape(-1, *kshape)                            # channels (and coils) first
        k = mm[:1]
        if tuple(meas_mask.shape[1:]) != tuple(self.y_shape) or not bool((mm == k).all()):
            return None
        sub = copy.deepcopy(self)
        for name in ("_normal_cache", "_blocks_cache", "_prox_y"):
            sub.__dict__.pop(name, None)
        sub.update_parameters(mask=self.mask * (k != 0).to(self.mask.dtype))
        return sub


class MRI(_Cartesian, InvdiffPhysics, dinv.physics.MRI):
    r"""Single-coil Cartesian MRI: :math:`y = M F x + M n`, :math:`n \sim \mathcal{N}(0, \sigma^2 I)`.

    :math:`F` is the centred orthonormal 2D FFT (3D with ``three_d=True``), :math:`M` the 0/1 sampling
    mask. A decomposable operator (:math:`V = F^{-1}`, singular values = mask), so DDRM and exact
    ``prox_l2`` / ``A_dagger`` (zero-filled inverse FFT) apply.

    Args:
        mask: 0/1 tensor ``(H, W)``, ``(1|2, H, W)`` or per-sample ``(B, 1|2, H, W)``; for volumes
            ``(D, H, W)`` or ``(H, W)`` repeated over slices. ``None`` = fully sampled.
        img_size: ``(2, H, W)`` or ``(2, D, H, W)``; may be left out for an ``(H, W)`` mask.
        sigma: noise standard deviation in k-space (per real component).
        three_d: 3D FFT over (D, H, W) instead of slice-wise 2D FFTs (volumes only).
        rng: optional ``torch.Generator`` for the noise.

    Shapes: ``x`` and ``y`` are ``(B, 2, H, W)`` (``(B, 2, D, H, W)`` for volumes).

    Example:
        >>> import torch
        >>> from invdiff.operators import MRI, equispaced_mask
        >>> op = MRI(equispaced_mask((32, 32), acceleration=4), sigma=0.0)
        >>> x = torch.randn(1, 2, 32, 32)
        >>> y = op.A(x); y.shape
        torch.Size([1, 2, 32, 32])
        >>> bool(torch.allclose(MRI(None, (2, 32, 32)).A_dagger(MRI(None, (2, 32, 32)).A(x)), x, atol=1e-5))
        True
    """

    def __init__(self, mask: torch.Tensor | None = None, img_size=None, sigma: float = 0.0, *,
                 three_d: bool = False, rng: torch.Generator | None = None):
        x_shape = _mri_img_size(img_size, mask)
        _check_three_d(three_d, x_shape)
        if mask is None:
            mask = torch.ones(x_shape[1:])
        elif not isinstance(mask, torch.Tensor):
            fail("mask", "a 0/1 torch.Tensor (see invdiff.operators.masks) or None", mask, TypeError)
        m = _mri_mask(mask, x_shape[1:])
        super().__init__(mask=m, img_size=x_shape, three_d=three_d, noise_model=gaussian_noise(sigma, rng))
        self._setup_shapes(x_shape, x_shape, is_complex=True)

    def update_parameters(self, mask=None, **kwargs):
        if mask is not None and getattr(self, "_invdiff_ready", False):
            mask = _mri_mask(mask, self.x_shape[1:])
        super().update_parameters(mask=mask, **kwargs)

    def _param_batch(self) -> int:
        return int(self.mask.shape[0])

    def A(self, x, mask=None, **kwargs):
        self.update_parameters(mask=mask, **kwargs)
        self._check_x_shape(x)
        return super().A(x)

    def A_adjoint(self, y, mask=None, **kwargs):
        self.update_parameters(mask=mask)
        self._check_y_shape(y)
        return super().A_adjoint(y, **kwargs)


class MultiCoilMRI(_Cartesian, InvdiffPhysics, dinv.physics.MultiCoilMRI):
    r"""Multi-coil (parallel imaging / SENSE) Cartesian MRI.

    .. math::  y_n = M F (s_n \odot x) + M n_n, \qquad n = 1..N, \quad n_n \sim \mathcal{N}(0, \sigma^2 I)

    with coil sensitivities :math:`s_n` (complex), centred orthonormal FFT :math:`F` and 0/1 mask
    :math:`M`. The adjoint is :math:`\sum_n \bar s_n \odot F^{-1} M y_n` (exact).

    Args:
        mask: 0/1 tensor as for :class:`MRI`; ``None`` = fully sampled.
        coil_maps: **complex** tensor ``(N, H, W)`` or per-sample ``(B, N, H, W)`` (volumes:
            ``(N, D, H, W)``, or ``(N, H, W)`` repeated over slices), e.g. from :func:`espirit_maps`;
            or an int N to simulate :func:`birdcage_maps` (normalised so :math:`\sum_n |s_n|^2 = 1`).
        img_size: ``(2, H, W)`` or ``(2, D, H, W)``; may be left out when ``mask`` is ``(H, W)``, or
            when ``mask`` is None and ``coil_maps`` is ``(N, H, W)``.
        sigma: noise standard deviation in k-space (per real component, per coil).
        three_d: 3D FFT for volumes (else slice-wise 2D FFTs).
        rng: optional noise generator.

    Shapes: ``x`` is ``(B, 2, H, W)``; ``y`` is ``(B, 2, N, H, W)`` (volumes ``(B, 2, N, D, H, W)``).

    Example:
        >>> import torch
        >>> from invdiff.operators import MultiCoilMRI, random_mask_1d
        >>> op = MultiCoilMRI(random_mask_1d((32, 32), 4, seed=0), coil_maps=4)
        >>> op.A(torch.randn(1, 2, 32, 32)).shape, op.n_coils
        (torch.Size([1, 2, 4, 32, 32]), 4)
    """

    def __init__(self, mask: torch.Tensor | None = None, coil_maps: torch.Tensor | int | None = None, img_size=None,
                 sigma: float = 0.0, *, three_d: bool = False, rng: torch.Generator | None = None):
        x_shape = _mri_img_size(img_size, mask, coil_maps)
        _check_three_d(three_d, x_shape)
        if mask is None:
            mask = torch.ones(x_shape[1:])
        elif not isinstance(mask, torch.Tensor):
            fail("mask", "a 0/1 torch.Tensor (see invdiff.operators.masks) or None", mask, TypeError)
        m = _mri_mask(mask, x_shape[1:])
        if coil_maps is None:
            coil_maps = torch.ones((1,) + x_shape[1:], dtype=torch.complex64)
        elif isinstance(coil_maps, int) and not isinstance(coil_maps, bool):
            from .coils import birdcage_maps

            if coil_maps < 1:
                fail("coil_maps", "a number of coils >= 1, or a complex tensor", coil_maps)
            coil_maps = birdcage_maps(coil_maps, x_shape)
        maps = format_coil_maps(coil_maps, x_shape[1:])
        super().__init__(mask=m, coil_maps=maps, img_size=x_shape, three_d=three_d,
                         noise_model=gaussian_noise(sigma, rng))
        self._setup_shapes(x_shape, (2, int(maps.shape[1])) + x_shape[1:], is_complex=True)

    @property
    def n_coils(self) -> int:
        return int(self.coil_maps.shape[1])

    def update_parameters(self, mask=None, coil_maps=None, **kwargs):
        if getattr(self, "_invdiff_ready", False):
            if mask is not None:
                mask = _mri_mask(mask, self.x_shape[1:])
            if coil_maps is not None:
                coil_maps = format_coil_maps(coil_maps, self.x_shape[1:])
                if coil_maps.shape[1] != self.n_coils:
                    fail("coil_maps", f"{self.n_coils} coils (the operator's measurement shape)", coil_maps)
        super().update_parameters(mask=mask, coil_maps=coil_maps, **kwargs)

    def _param_batch(self) -> int:
        return max(int(self.mask.shape[0]), int(self.coil_maps.shape[0]))

    def A(self, x, mask=None, coil_maps=None, **kwargs):
        self.update_parameters(mask=mask, coil_maps=coil_maps)
        self._check_x_shape(x)
        return super().A(x, **kwargs)

    def A_adjoint(self, y, mask=None, coil_maps=None, **kwargs):
        self.update_parameters(mask=mask, coil_maps=coil_maps)
        self._check_y_shape(y)
        return super().A_adjoint(y, **kwargs)

    def A_dagger(self, y, mask=None, coil_maps=None, **kwargs):
        self.update_parameters(mask=mask, coil_maps=coil_maps)
        self._check_y_shape(y)
        return super().A_dagger(y, **kwargs)

    def A_adjoint_A(self, x, mask=None, coil_maps=None, **kwargs):
        r""":math:`A^H A x = \sum_c \bar S_c F^H M F S_c x` in one pass (the normal operator of CG solves).

        With the centred FFT :math:`F = P\,\mathrm{fft}\,Q` (P = fftshift, Q = ifftshift, :math:`QP = I`; shifts
        are permutations that commute with pointwise products):
        :math:`A^H A x = P \sum_c \overline{Q(S_c)}\,\mathrm{ifft}(Q(M) \odot \mathrm{fft}(Q(S_c)\,Q(x)))`, with
        :math:`Q(S)`, :math:`\overline{Q(S)}`, :math:`Q(M)` computed once per mask / coil maps: two shifts of one image
        instead of four of every coil image, products in place. With a line mask (2D or slice-wise, every mask
        constant along H, e.g. sampled k-space columns; or along W) the FFT along that axis cancels,
        :math:`F_2^H M F_2 = I \otimes F^H \mathrm{diag}(m) F`, and only 1D FFTs along the other axis run (half the
        FFT work; same formula with P, Q, F along that axis). Equals ``A_adjoint(A(x))`` to float32 round-off.
        """
        if kwargs:
            return super().A_adjoint_A(x, mask=mask, coil_maps=coil_maps, **kwargs)
        if mask is not None or coil_maps is not None:
            self.update_parameters(mask=mask, coil_maps=coil_maps)
        self._check_x_shape(x)
        _, qs, qs_conj, qm, dims = self._normal_parts()
        xc = torch.fft.ifftshift(torch.complex(x[:, 0], x[:, 1]), dim=dims)[:, None]
        k = torch.fft.fftn(qs * xc, dim=dims, norm="ortho")
        im = torch.fft.ifftn(k.mul_(qm), dim=dims, norm="ortho")
        out = torch.fft.fftshift(im.mul_(qs_conj).sum(1), dim=dims)
        return torch.view_as_real(out).moveaxis(-1, 1).to(x.dtype)

    def _parameters_key(self) -> tuple:
        return (self.coil_maps.data_ptr(), self.coil_maps._version, self.mask.data_ptr(), self.mask._version,
                self.coil_maps.device, self.coil_maps.dtype, self.mask.dtype)

    def _normal_parts(self):
        """(key, Q(S), conj Q(S), Q(M), FFT axes), recomputed when the mask or coil maps change."""
        key = self._parameters_key()
        cache = getattr(self, "_normal_cache", None)
        if cache is None or cache[0] != key:
            dims = (-3, -2, -1) if self.three_d else (-2, -1)
            m = self.mask[:, 0]
            if not self.three_d and bool((m == m[..., :1, :]).all()):     # line mask: F along H cancels
                dims = (-1,)
            elif not self.three_d and bool((m == m[..., :1]).all()):      # ... or along W
                dims = (-2,)
            qs = torch.fft.ifftshift(self.coil_maps, dim=dims)                      # Q(S)    (B_s, N, ..., H, W)
            qm = torch.fft.ifftshift(self.mask[:, 0], dim=dims)[:, None]            # Q(M)    (B_m, 1, ..., H, W)
            cache = self._normal_cache = (key, qs, qs.conj(), qm, dims)
        return cache

    def prox_l2_exact(self, x, y, gamma):
        r""":math:`\arg\min_u \tfrac\gamma2\|Au - y\|^2 + \tfrac12\|u - x\|^2` exactly (:class:`LineBlocks`), or None
        when this operator has no line blocks (3D, per-sample masks or maps, not a line mask, too large).

        ``gamma`` a number or a one-element tensor. :math:`V^H A^H y` is kept for the next call with the same ``y``.
        """
        key = self._parameters_key()
        cache = getattr(self, "_blocks_cache", None)
        if cache is None or cache[0] != key:
            blocks = None
            if len(self.x_shape) == 3 and self.coil_maps.shape[0] == 1 and self.mask.shape[0] == 1:
                blocks = line_blocks(self.coil_maps[0], self.mask[0, 0])
            cache = self._blocks_cache = (key, blocks)
        blocks = cache[1]
        if blocks is None:
            return None
        cached = getattr(self, "_prox_y", None)
        if cached is None or cached[0] is not y or cached[1] is not blocks:
            cached = self._prox_y = (y, blocks, blocks.coefficients(self.A_adjoint(y)))
        g = gamma.reshape(()).to(x.dtype) if isinstance(gamma, torch.Tensor) else float(gamma)
        return blocks.prox(x, cached[2], g)


#: line blocks (:class:`LineBlocks`) are used while lines x L x L x 8 bytes (one complex64 block matrix) is at most
#: this (64 x 64 images: 2 MiB, 128 x 128: 16 MiB); they hold the complex128 blocks and two complex64 eigenvector
#: matrices, 4x this (64 MiB at the bound), and the eigendecomposition costs O(lines L^3) once per mask and maps
LINE_BLOCK_BYTES = 16 * 2 ** 20

_BLOCKS: "OrderedDict[str, LineBlocks]" = OrderedDict()       # by content digest: operator copies share them
_BLOCKS_KEEP = 8
_BLOCKS_LOCK = threading.Lock()


class LineBlocks:
    r""":math:`A^H A` of 2D multi-coil Cartesian MRI with a line mask, as one :math:`L \times L` block per line.

    With the mask constant along the image axis ``a`` (``a = -2``: every row of the sampled columns is sampled) and
    the centred FFT separable, :math:`F_2^H M F_2 = I_a \otimes P` with :math:`P = F^H \mathrm{diag}(m) F` the
    1D projector of the mask line :math:`m` along the other axis (length :math:`L`), so for every line :math:`h`
    (index along ``a``):

    .. math::  (A^H A x)_h = G_h x_h, \qquad G_h = \sum_c \bar D_{c,h} P D_{c,h}, \quad D_{c,h} = \mathrm{diag}(s_{c,h})

    :math:`G_h` is built in float64 (``normal``: float32 round-off of ``A_adjoint(A(x))``). :meth:`prox` solves
    :math:`(I + g A^H A)u = x + g A^H y` exactly for any :math:`g \ge 0` from the eigendecomposition
    :math:`G_h = V_h \Lambda_h V_h^H` (computed on first use): in eigen coordinates every component is
    :math:`(w + g c) / (1 + g\lambda)`, :math:`w = V^H x`, :math:`c = V^H A^H y`, so no float32
    cancellation between :math:`x` and :math:`g A^H y` however large :math:`g` is.
    """

    def __init__(self, maps: torch.Tensor, line: torch.Tensor, axis: int):
        self.axis = axis                                              # -2: blocks are rows; -1: columns
        S = maps.to(torch.complex128)                                  # (N, H, W)
        if axis == -1:
            S = S.transpose(-1, -2)                                    # (N, W, H): lines are columns
        L = S.shape[-1]
        eye = torch.eye(L, dtype=torch.complex128, device=S.device)
        fc = torch.fft.fftshift(torch.fft.fft(torch.fft.ifftshift(eye, dim=0), dim=0, norm="ortho"), dim=0)
        P = fc.conj().T @ (line.to(torch.complex128)[:, None] * fc)   # F^H diag(m) F, (L, L)
        self.G = torch.einsum("chi,chj->hij", S.conj(), S) * P         # (lines, L, L), complex128
        self._eig = None

    def _to(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 2, H, W) real -> (lines, L, B) complex."""
        xc = torch.view_as_complex(x.moveaxis(1, -1).contiguous())     # (B, H, W)
        return xc.permute(1, 2, 0) if self.axis == -2 else xc.permute(2, 1, 0)

    def _back(self, v: torch.Tensor, dtype) -> torch.Tensor:
        """(lines, L, B) complex -> (B, 2, H, W) real."""
        xc = v.permute(2, 0, 1) if self.axis == -2 else v.permute(2, 1, 0)
        return torch.view_as_real(xc).moveaxis(-1, 1).to(dtype).contiguous()

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`A^H A x` from the blocks (float32 round-off of ``A_adjoint(A(x))``; a check of the blocks)."""
        return self._back(_bmm(self.G.to(torch.complex64), self._to(x)), x.dtype)

    def eig(self):
        """(lambda (lines, L, 1) >= 0, V (lines, L, L), V^H): complex64 eigenvectors, float32 eigenvalues."""
        if self._eig is None:
            lam, V = torch.linalg.eigh(self.G)
            V32 = V.to(torch.complex64)
            self._eig = (lam.clamp_min(0).to(torch.float32)[..., None], V32, V32.conj().transpose(-1, -2).contiguous())
        return self._eig

    def coefficients(self, aty: torch.Tensor) -> torch.Tensor:
        """:math:`c = V^H A^H y` (lines, L, B) from :math:`A^H y` (B, 2, H, W)."""
        return _bmm(self.eig()[2], self._to(aty))

    def prox(self, x: torch.Tensor, c: torch.Tensor, g) -> torch.Tensor:
        lam, V, Vh = self.eig()
        w = _bmm(Vh, self._to(x))
        return self._back(_bmm(V, (w + g * c) / (1 + g * lam)), x.dtype)


def _bmm(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Batched (lines, L, L) @ (lines, L, B); for B = 1 as a product and a sum (about 4x faster than torch's batched
    complex matrix-vector product on one CPU thread, 64 x 64)."""
    if v.shape[-1] == 1:
        return (M * v.transpose(-1, -2)).sum(-1, keepdim=True)
    return M @ v


def _line_axis(mask: torch.Tensor) -> int | None:
    """-2 when the (H, W) mask is constant along H (whole columns), -1 along W (whole rows), else None."""
    if bool((mask == mask[:1]).all()):
        return -2
    if bool((mask == mask[:, :1]).all()):
        return -1
    return None


def line_blocks(maps: torch.Tensor, mask: torch.Tensor) -> LineBlocks | None:
    """The cached :class:`LineBlocks` of one coil-map set (N, H, W) and mask (H, W), or None when the mask is not a
    line mask or the blocks would exceed :data:`LINE_BLOCK_BYTES`."""
    axis = _line_axis(mask)
    if axis is None:
        return None
    H, W = mask.shape
    lines, L = (H, W) if axis == -2 else (W, H)
    if lines * L * L * 8 > LINE_BLOCK_BYTES:
        return None
    line = mask[0] if axis == -2 else mask[:, 0]
    h = hashlib.sha1(repr((axis, tuple(maps.shape), str(maps.dtype), str(maps.device))).encode())
    h.update(maps.detach().cpu().contiguous().numpy().tobytes())
    h.update(line.detach().to(torch.float32).cpu().numpy().tobytes())
    key = h.hexdigest()
    with _BLOCKS_LOCK:
        hit = _BLOCKS.get(key)
        if hit is not None:
            _BLOCKS.move_to_end(key)
            return hit
    blocks = LineBlocks(maps, line, axis)
    with _BLOCKS_LOCK:
        blocks = _BLOCKS.setdefault(key, blocks)
        while len(_BLOCKS) > _BLOCKS_KEEP:
            _BLOCKS.popitem(last=False)
    return blocks


def format_coil_maps(coil_maps, spatial: tuple[int, ...], name: str = "coil_maps") -> torch.Tensor:
    """Complex coil maps to ``(B_m, N, *spatial)``; a 2D ``(N, H, W)`` set is repeated over D slices."""
    if not isinstance(coil_maps, torch.Tensor):
        fail(name, "a complex torch.Tensor (N, H, W) or an int number of coils", coil_maps, TypeError)
    if not coil_maps.is_complex():
        fail(name, "a complex-dtype tensor (N, H, W) (e.g. torch.complex(re, im)); coil maps are not "
                   "stored as 2 real channels", coil_maps, TypeError)
    check_tensor(name, torch.view_as_real(coil_maps), finite=True)
    nsp = len(spatial)
    c = coil_maps
    if c.dim() >= nsp + 1 and tuple(c.shape[-nsp:]) == tuple(spatial):
        lead = tuple(c.shape[:-nsp])
    elif nsp == 3 and c.dim() in (3, 4) and tuple(c.shape[-2:]) == tuple(spatial[-2:]):
        lead = tuple(c.shape[:-2])
        c = c.unsqueeze(-3).expand(*c.shape[:-2], spatial[0], *spatial[-2:])
    else:
        fail(name, f"shape (N, {', '.join(map(str, spatial))}) or (B, N, {', '.join(map(str, spatial))}) "
                   "matching the image size", coil_maps)
    if len(lead) == 1:
        c = c.reshape(1, lead[0], *spatial)
    elif len(lead) != 2:
        fail(name, "shape (N, *spatial) or (B, N, *spatial)", coil_maps)
    return c.to(torch.complex64 if c.dtype != torch.complex128 else c.dtype).contiguous().clone()


__all__ = ["MRI", "MultiCoilMRI", "format_coil_maps", "LineBlocks", "line_blocks", "LINE_BLOCK_BYTES"]

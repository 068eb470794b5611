r"""Computed tomography: 2D parallel/fan-beam Radon transform (deepinv ``Tomography``) and 3D slice stacks.

Conventions:

- images ``(B, C, N, N)`` (square; usually C = 1, attenuation on the [0, 1] image scale);
- sinograms ``(B, C, n_detectors, n_views)`` (deepinv's order: detector bins, then angles);
- angles in **degrees**; ``n_views`` views evenly spread over ``[0, angle_range)``: full view = many
  views over 180°, sparse view = few views over 180°, limited angle = ``angle_range < 180``;
- geometry (measured, see ``tests/test_operators.py``): a point at column/row offsets (u, v) from the
  image centre lands on detector bin :math:`s_0 + u\cos\theta - v\sin\theta` (parallel beam, one bin
  per pixel); deepinv's fan beam is turned by 90°: :math:`s_0 + v\cos\theta + u\sin\theta` (with the
  invdiff default fan geometry, about one bin per pixel);
- :math:`A` is deepinv's forward projector (bilinear ``grid_sample`` along the rays) stored as its sparse
  system matrix, and :math:`A^\top` is that matrix's transpose: the exact adjoint, at the cost of one
  forward projection (:mod:`invdiff.operators.ct_matrix`; the matrix is built once per geometry and cached,
  also per device). Same :math:`A` as deepinv's ``Tomography`` up to float32 round-off;
- ``normalize=True`` (default) scales :math:`A` so that :math:`\|A\|_2 = 1` (power iteration from a fixed
  seeded vector at construction, deterministic and leaving the global random stream alone; cached with the matrix);
- :meth:`CT.fbp` is the ramp-filtered back-projection, an approximate inverse for full-view data.
"""
from __future__ import annotations

import math

import deepinv as dinv
import torch

from .._validate import check_tensor, fail
from .base import InvdiffPhysics, gaussian_noise
from .ct_matrix import csr_matmul, geometry_key, gram_eigh, on_device, system_matrix
from .stack import SliceWise


#: :meth:`CT.prox_l2_exact` is used up to this many measurements M = detector bins x views (and M < N^2): its
#: M x M eigenvector matrix takes 9 MiB in float32 at the bound, its eigendecomposition about 1-2 s on one thread,
#: once per geometry and process (64 px: up to 16 views; 128 px: up to 8 views)
EXACT_PROX_ROWS = 1536


def _ct_img_size(img_size, allow_3d: bool = False) -> tuple[int, ...]:
    forms = "N, (N, N) or (C, N, N)" + (" or (C, D, N, N)" if allow_3d else "")
    if isinstance(img_size, int) and not isinstance(img_size, bool):
        img_size = (1, img_size, img_size)
    if isinstance(img_size, torch.Size):
        img_size = tuple(img_size)
    if not (isinstance(img_size, (tuple, list)) and all(isinstance(s, int) and not isinstance(s, bool)
                                                          for s in img_size)):
        fail("img_size", forms, img_size, TypeError)
    img_size = tuple(img_size)
    ok_lens = (2, 3, 4) if allow_3d else (2, 3)
    if len(img_size) not in ok_lens or any(s < 1 for s in img_size):
        fail("img_size", forms, img_size)
    if len(img_size) == 2:
        img_size = (1,) + img_size
    if img_size[-1] != img_size[-2]:
        fail("img_size", f"a square image (N, N): deepinv's Radon transform needs H == W", img_size)
    if img_size[-1] < 2:
        fail("img_size", "an image of at least 2x2 pixels", img_size)
    return img_size


def _angles(n_views, angles, angle_range, N) -> torch.Tensor:
    if isinstance(angle_range, bool) or not isinstance(angle_range, (int, float)):
        fail("angle_range", "a number of degrees in (0, 360]", angle_range, TypeError)
    if not 0 < angle_range <= 360:
        fail("angle_range", "a number of degrees in (0, 360]", angle_range)
    if angles is not None:
        if n_views is not None:
            fail("n_views", "None when explicit angles are given (n_views = len(angles))", n_views)
        a = torch.as_tensor(angles, dtype=torch.float32) if not isinstance(angles, torch.Tensor) else angles
        check_tensor("angles", a, ndim=1, finite=True)
        if a.numel() < 1:
            fail("angles", "at least one angle (degrees)", angles)
        return a.detach().to(torch.float32).cpu().clone()
    if n_views is None:
        n_views = N
    if isinstance(n_views, bool) or not isinstance(n_views, int):
        fail("n_views", "an int >= 1", n_views, TypeError)
    if n_views < 1:
        fail("n_views", "an int >= 1", n_views)
    return torch.arange(n_views, dtype=torch.float64).mul(angle_range / n_views).to(torch.float32)


def _fan_parameters(fan_parameters, N) -> dict:
    r"""invdiff defaults for fan beam: the detector just covers the image's circumscribed circle.

    deepinv's defaults (258 bins of 0.077 cm, image 0.5 cm wide) leave most bins empty at small N;
    here the detector spacing equals the magnified pixel size :math:`M \cdot` ``pixel_spacing``
    (:math:`M = (R_s + R_d)/R_s`) and the number of bins covers the fan through the circle of radius
    :math:`\sqrt2 N/2` pixels (+1 bin margin on each side). Keys given by the user win.
    """
    fp = dict(fan_parameters or {})
    known = {"pixel_spacing", "source_radius", "detector_radius", "n_detector_pixels", "detector_spacing"}
    bad = set(fp) - known
    if bad:
        fail("fan_parameters", f"keys among {sorted(known)}", f"unknown keys {sorted(bad)}")
    for k, v in fp.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            fail("fan_parameters", f"a positive number for '{k}'", v)
    ps = float(fp.setdefault("pixel_spacing", 0.5 / N))
    rs = float(fp.setdefault("source_radius", 57.5))
    rd = float(fp.setdefault("detector_radius", 57.5))
    R = math.sqrt(2) * N / 2 * ps
    if R >= rs:
        fail("fan_parameters", f"source_radius > image half-diagonal {R:g}", fp)
    mag = (rs + rd) / rs
    ds = float(fp.setdefault("detector_spacing", mag * ps))
    half = (rs + rd) * math.tan(math.asin(R / rs))
    fp.setdefault("n_detector_pixels", 2 * math.ceil(half / ds) + 2)
    if not isinstance(fp["n_detector_pixels"], int):
        fail("fan_parameters", "an int for 'n_detector_pixels'", fp["n_detector_pixels"], TypeError)
    return fp


def _n_detectors(N: int, circle: bool, fan_beam: bool, fp: dict | None) -> int:
    if fan_beam:
        return int(fp["n_detector_pixels"])
    if circle:
        return N
    return int(((2 * torch.ones(1)).sqrt() * N).ceil())  # deepinv Radon: ceil(sqrt(2) N) in float32


def _power_norm(sm, N: int, max_iter: int = 500, rtol: float = 1e-7) -> torch.Tensor:
    r""":math:`\|R\|_2` of the system matrix ``sm`` (0-d float32 tensor): power iteration from a seeded vector."""
    v = torch.randn(N * N, 1, generator=torch.Generator().manual_seed(0))
    v = v / v.norm()
    lam = 0.0
    with torch.no_grad():
        for _ in range(max_iter):
            w = csr_matmul(sm.transpose, sm.forward, csr_matmul(sm.forward, sm.transpose, v))
            new = float((v * w).sum())                               # Rayleigh quotient, ||v|| = 1
            v = w / w.norm().clamp_min(1e-30)
            if abs(new - lam) <= rtol * abs(new):
                lam = new
                break
            lam = new
    return torch.tensor(lam, dtype=torch.float32).sqrt()


class CT(InvdiffPhysics, dinv.physics.Tomography):
    r"""2D X-ray CT: the (normalised) Radon transform plus Gaussian noise.

    .. math::  y = \frac{R_\theta x}{\|R_\theta\|_2} + n, \qquad n \sim \mathcal{N}(0, \sigma^2 I)

    :math:`R_\theta` integrates the image along parallel (or fan-beam) rays at the view angles
    :math:`\theta_j = j \cdot` ``angle_range`` / ``n_views`` degrees, :math:`j = 0..n_{views}-1`.
    Sparse view: small ``n_views`` over 180°; limited angle: ``angle_range < 180``.

    Args:
        img_size: N, ``(N, N)`` or ``(C, N, N)`` (square).
        n_views: number of views (default N when ``angles`` is not given); at most the number of
            detector bins.
        angles: explicit view angles in degrees (then leave ``n_views`` None).
        angle_range: degrees covered by the evenly spaced views, in (0, 360].
        fan_beam: fan-beam geometry instead of parallel beam.
        fan_parameters: deepinv fan-beam keys (``pixel_spacing``, ``source_radius``, ``detector_radius``,
            ``n_detector_pixels``, ``detector_spacing``); missing keys get invdiff defaults that fit the
            detector to the image (see :func:`_fan_parameters`).
        sigma: noise standard deviation on the (normalised) sinogram.
        normalize: divide by :math:`\|R_\theta\|_2` (computed at construction).
        circle: parallel beam only: the image is supported in the inscribed disc; N detector bins
            instead of :math:`\lceil\sqrt2 N\rceil`.
        rng: optional noise generator.

    Shapes: ``x`` is ``(B, C, N, N)``, ``y`` is ``(B, C, n_detectors, n_views)``; float32 (other float dtypes
    and CUDA devices get a copy of the matrix on first use, cached).

    Cost (``benchmarks/results/ct_operators.md``, 1 thread): ``A`` and ``A_adjoint`` are one sparse product
    each, of equal cost, over all ``B * C`` columns at once. At 512 px / 180 views the two CSR matrices hold
    1.6 GB (105 M entries each) and take about a minute to build the first time a geometry is used in a
    process (then shared by every operator of that geometry; see :data:`invdiff.operators.ct_matrix.DISK_CACHE`
    to keep them across processes).

    Example:
        >>> import torch
        >>> from invdiff.operators import CT
        >>> op = CT(16, n_views=8)                          # sparse view, 8 views over 180 degrees
        >>> op.angles.tolist()
        [0.0, 22.5, 45.0, 67.5, 90.0, 112.5, 135.0, 157.5]
        >>> op.A(torch.ones(1, 1, 16, 16)).shape            # 23 = ceil(sqrt(2) * 16) detector bins
        torch.Size([1, 1, 23, 8])
        >>> CT(16, n_views=4, angle_range=90.).angles.tolist()   # limited angle
        [0.0, 22.5, 45.0, 67.5]
    """

    def __init__(self, img_size, n_views: int | None = None, angles=None, angle_range: float = 180.0,
                 fan_beam: bool = False, fan_parameters: dict | None = None, sigma: float = 0.0,
                 normalize: bool = True, circle: bool = False, *, rng: torch.Generator | None = None):
        x_shape = _ct_img_size(img_size)
        N = x_shape[-1]
        for nm, v in (("fan_beam", fan_beam), ("normalize", normalize), ("circle", circle)):
            if not isinstance(v, bool):
                fail(nm, "True or False", v, TypeError)
        if circle and fan_beam:
            fail("circle", "False for fan beam (circle=True is a parallel-beam option)", circle)
        if fan_parameters is not None and not fan_beam:
            fail("fan_parameters", "None for parallel beam (set fan_beam=True)", fan_parameters)
        theta = _angles(n_views, angles, angle_range, N)
        fp = _fan_parameters(fan_parameters, N) if fan_beam else None
        n_det = _n_detectors(N, circle, fan_beam, fp)
        if theta.numel() > n_det:
            fail("angles" if angles is not None else "n_views",
                 f"at most {n_det} views (the number of detector bins at N = {N}); more views than detector "
                 "bins usually means swapped arguments", f"{theta.numel()} views")
        noise = gaussian_noise(sigma, rng)
        super().__init__(angles=theta, img_width=N, circle=circle, adjoint_via_backprop=True,
                         normalize=False, fan_beam=fan_beam, fan_parameters=fp, noise_model=noise)
        self.angle_range = float(angle_range)
        self._geometry = geometry_key(self.radon, N)
        self._system = system_matrix(self.radon, N, self._geometry)     # CPU float32, shared per geometry
        self._systems = {(self._system.device, self._system.dtype): self._system}
        self._grams = {}                                  # (s, U) of A A^T per device / dtype (prox_l2_exact)
        self._drop_deepinv_grids()
        if normalize:
            self._normalise(N)
        self._setup_shapes(x_shape, (x_shape[0], n_det, int(theta.numel())), is_complex=False)

    def _drop_deepinv_grids(self):
        """Free deepinv's sampling grids (~1 GB at 512 px / 180 views): the matrix replaces them.

        ``self.radon`` / ``self.iradon`` stay for their angles and filters; calling them directly is not supported.
        """
        parts = ((self.radon, ("all_grids",)), (getattr(self, "iradon", None), ("all_grids", "xgrid", "ygrid")))
        for mod, names in parts:
            for nm in names if mod is not None else ():
                if getattr(mod, nm, None) is not None:
                    mod.register_buffer(nm, torch.empty(0, dtype=getattr(mod, nm).dtype), persistent=False)

    def _normalise(self, N: int):
        r""":math:`\|R\|_2` by power iteration on :math:`R^\top R` (cached with the matrix).

        Starts from a fixed vector (a local generator seeded 0), so the norm is the same in every process and
        constructing an operator leaves the global random stream alone; iterated until the Rayleigh quotient
        changes by less than 1e-7 relative (at most 500 iterations): deepinv's ``compute_norm`` value to 1e-5.
        """
        if self._system.norm is None:
            self._system.norm = _power_norm(self._system, N)
        self.register_buffer("operator_norm", self._system.norm.clone())
        self.normalize = True

    @property
    def n_views(self) -> int:
        return int(self.angles.numel())

    @property
    def n_detectors(self) -> int:
        return self.y_shape[1]

    def _matrices(self, t: torch.Tensor):
        """The system matrix on ``t``'s device and dtype (copied there once, then cached)."""
        k = (t.device, t.dtype)
        sm = self._systems.get(k)
        if sm is None:
            sm = on_device(self._system, t.device, t.dtype)
            self._systems[k] = sm
        return sm

    def _A_leading(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`A` on the last two axes of ``(..., N, N)``: one sparse product over all leading axes."""
        sm = self._matrices(x)
        lead, n = x.shape[:-2], self.img_width
        y = csr_matmul(sm.forward, sm.transpose, x.reshape(-1, n * n).T)        # (n_det * n_views, K)
        y = y.T.reshape(*lead, self.y_shape[1] if self.y_shape else -1, self.radon.theta.numel())
        return y / self.operator_norm if self.normalize else y

    def _A_adjoint_leading(self, y: torch.Tensor) -> torch.Tensor:
        r""":math:`A^\top` on the last two axes of ``(..., n_det, n_views)``: the transposed matrix, one product."""
        sm = self._matrices(y)
        lead, n = y.shape[:-2], self.img_width
        x = csr_matmul(sm.transpose, sm.forward, y.reshape(-1, y.shape[-2] * y.shape[-1]).T)   # (N^2, K)
        x = x.T.reshape(*lead, n, n)
        return x / self.operator_norm if self.normalize else x

    def A(self, x, **kwargs):
        self._check_x_shape(x)
        return self._A_leading(x)

    def A_adjoint(self, y, **kwargs):
        self._check_y_shape(y)
        return self._A_adjoint_leading(y)

    def prox_l2_exact(self, x, y, gamma):
        r""":math:`\arg\min_u \tfrac\gamma2\|Au - y\|^2 + \tfrac12\|u - x\|^2` exactly when there are few
        measurements (M <= :data:`EXACT_PROX_ROWS`), else None.

        Woodbury (push-through) identity with :math:`AA^\top = U\mathrm{diag}(s)U^\top` (M x M, cached per
        geometry, :func:`~invdiff.operators.ct_matrix.gram_eigh`):

        .. math::  u = x + A^\top U \mathrm{diag}\!\Big(\frac{\gamma}{1 + \gamma s}\Big) U^\top (y - Ax)

        one :math:`A`, one :math:`A^\top` and two M x M products, for any :math:`\gamma \ge 0` (a number or a
        one-element tensor). Written as a correction of :math:`x`, so large :math:`\gamma` loses nothing of
        :math:`x` to float32 cancellation.
        """
        m = self.y_shape[1] * self.y_shape[2]
        if m > EXACT_PROX_ROWS or m >= self.img_width ** 2:
            return None
        s, U = self._gram(x)
        g = gamma.reshape(()).to(x.dtype) if isinstance(gamma, torch.Tensor) else float(gamma)
        r = (y - self.A(x)).reshape(-1, m)                                  # (B C, M)
        z = (r @ U) * (g / (1 + g * s))
        return x + self.A_adjoint((z @ U.T).reshape(y.shape))

    def _gram(self, t: torch.Tensor):
        """(s, U) of :math:`AA^\top` (normalisation included) on ``t``'s device and dtype, cached."""
        k = (t.device, t.dtype)
        grams = self._grams
        if k not in grams:
            s, U = gram_eigh(self._system)
            if self.normalize:
                s = s / float(self.operator_norm) ** 2
            grams[k] = (s.to(device=t.device, dtype=t.dtype), U.to(device=t.device, dtype=t.dtype))
        return grams[k]

    def fbp(self, y, **kwargs):
        """Filtered back-projection (ramp filter), an approximate inverse, ``(B, C, N, N)``."""
        self._check_y_shape(y)
        return super().fbp(y, **kwargs)

    def A_dagger(self, y, fbp: bool = False, **kwargs):
        """Least-squares solution by deepinv's iterative solver, or FBP with ``fbp=True``."""
        self._check_y_shape(y)
        return super().A_dagger(y, fbp=fbp, **kwargs)


class CT3D(SliceWise):
    r"""3D CT as a stack of 2D CT slices (axial slices along D, each reconstructed independently).

    .. math::  y_{:, :, d} = A_{2D}\, x_{:, :, d} + n, \qquad d = 1..D

    Args: as :class:`CT`, with ``img_size = (C, D, N, N)``.

    Shapes: ``x`` is ``(B, C, D, N, N)``, ``y`` is ``(B, C, D, n_detectors, n_views)``. ``A`` and ``A_adjoint``
    are one sparse product with the 2D matrix over all ``B * C * D`` slices.

    Example:
        >>> import torch
        >>> from invdiff.operators import CT3D
        >>> op = CT3D((1, 3, 16, 16), n_views=6)
        >>> y = op.A(torch.ones(2, 1, 3, 16, 16)); y.shape
        torch.Size([2, 1, 3, 23, 6])
        >>> op.fbp(y).shape
        torch.Size([2, 1, 3, 16, 16])
    """

    def __init__(self, img_size, n_views: int | None = None, angles=None, angle_range: float = 180.0,
                 fan_beam: bool = False, fan_parameters: dict | None = None, sigma: float = 0.0,
                 normalize: bool = True, circle: bool = False, *, rng: torch.Generator | None = None):
        shape = _ct_img_size(img_size, allow_3d=True)
        if len(shape) != 4:
            fail("img_size", "(C, D, N, N) for a volume (use CT for 2D images)", img_size)
        C, D, N, _ = shape
        op = CT((C, N, N), n_views=n_views, angles=angles, angle_range=angle_range, fan_beam=fan_beam,
                fan_parameters=fan_parameters, sigma=sigma, normalize=normalize, circle=circle, rng=rng)
        super().__init__(op, D)

    @property
    def angles(self) -> torch.Tensor:
        return self.op2d.angles

    def fbp(self, y, **kwargs):
        """Slice-by-slice filtered back-projection, ``(B, C, D, N, N)``."""
        return self.apply_to_slices(self.op2d.fbp, y, **kwargs)


__all__ = ["CT", "CT3D"]

r"""Cartesian MRI sampling masks (fastMRI-style line masks, 1D and 2D Poisson-disc), deterministic per seed.

Conventions:

- a mask is a float tensor of 0/1 (1 = sampled) of the requested ``shape = (..., H, W)``;
- 1D masks (:func:`equispaced_mask`, :func:`random_mask_1d`, :func:`gaussian_mask_1d`,
  :func:`poisson_disc_mask_1d`) sample whole
  **columns** (the last axis W is the phase-encoding axis, as in fastMRI and deepinv), identical over
  all other axes;
- :func:`poisson_disc_mask` samples points of the (H, W) plane (variable-density Poisson disc, sigpy),
  identical over leading axes — for 3D Cartesian MRI the two phase-encoding axes;
- ``acceleration`` R >= 1 is the nominal ratio (number of locations) / (number sampled);
  ``center_fraction`` is the fraction of the W columns (and, for Poisson-disc, of H rows) that are
  always sampled around the centre (the auto-calibration/ACS region). fastMRI defaults: 0.08 for
  R < 8, 0.04 for R >= 8 (``center_fraction=None``);
- ``seed`` makes masks deterministic; :func:`seed_for_file` gives each data file its own fixed seed.

These are invdiff's families (``MASK_KINDS``). fastMRI's own masks, the same columns as
``fastmri/data/subsample.py`` for the same file name (``round`` centre, per-column random draws, numpy seeding by
``tuple(map(ord, fname))``), are :mod:`invdiff.operators.fastmri_masks` (``FASTMRI_MASK_KINDS``, e.g.
``"fastmri-random"``); :func:`make_mask` accepts both.

The 1D masks reuse deepinv's mask generators (column counts: ``n_center = int(center_fraction * W)``
and ``W // R`` columns in total for random/gaussian; fastMRI's equispaced pattern with a random
offset, whose realised acceleration is slightly below R because its lines may fall in the centre).
The centre block always contains the DC column ``W // 2``; it starts at ``W // 2 - n_center // 2``
(random, gaussian; deepinv) or ``(W - n_center + 1) // 2`` (equispaced; fastMRI), which differ by one
column only for odd W with even ``n_center``.
"""
from __future__ import annotations

import os
import zlib

import torch

from .._validate import check_choice, fail

MASK_KINDS = ("equispaced", "random", "gaussian", "poisson", "poisson-1d")


def seed_for_file(name: str | os.PathLike) -> int:
    """A stable seed for a data file: CRC-32 of its base name (same on every machine and Python run).

    >>> seed_for_file("file1000001.h5") == seed_for_file("/data/knee/file1000001.h5")
    True
    """
    if not isinstance(name, (str, os.PathLike)):
        fail("name", "a file name (str or path)", name, TypeError)
    base = os.path.basename(os.fspath(name))
    if not base:
        fail("name", "a non-empty file name", name)
    return zlib.crc32(base.encode("utf-8"))


def default_center_fraction(acceleration: float) -> float:
    """fastMRI's default centre fraction: 0.08 for acceleration < 8, else 0.04."""
    return 0.08 if acceleration < 8 else 0.04


def _check_args(shape, acceleration, center_fraction, seed):
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    if not (isinstance(shape, (tuple, list)) and len(shape) >= 2
            and all(isinstance(s, int) and not isinstance(s, bool) for s in shape)):
        fail("shape", "a tuple of ints (..., H, W)", shape, TypeError)
    if any(s < 1 for s in shape):
        fail("shape", "positive sizes", shape)
    if isinstance(acceleration, bool) or not isinstance(acceleration, (int, float)):
        fail("acceleration", "a number >= 1", acceleration, TypeError)
    if not acceleration >= 1 or acceleration == float("inf"):
        fail("acceleration", "a finite number >= 1 (R = locations / sampled locations)", acceleration)
    if center_fraction is None:
        center_fraction = default_center_fraction(acceleration)
    if isinstance(center_fraction, bool) or not isinstance(center_fraction, (int, float)):
        fail("center_fraction", "a number in (0, 1) or None", center_fraction, TypeError)
    if not 0 < center_fraction < 1:
        fail("center_fraction", "a value in (0, 1) (fraction of columns sampled at the centre)", center_fraction)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        fail("seed", "a non-negative int or None", seed, TypeError if not isinstance(seed, int) else ValueError)
    return tuple(shape), float(acceleration), float(center_fraction)


def _generator(seed):
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g


def _center_columns(W: int, acc: float, cf: float, center_fraction) -> int:
    """``n_center = int(cf * W)`` centre columns of a line mask, checked: at least 1, at most ``W // acc``."""
    n_center = int(cf * W)
    if n_center > W // acc:
        fail("center_fraction", f"a centre of at most W // acceleration = {int(W // acc)} columns "
                                f"(center_fraction * W = {n_center} columns at W = {W}, acceleration = {acc:g})",
             center_fraction)
    if n_center < 1:
        fail("center_fraction", f"at least 1 centre column (center_fraction * W >= 1 at W = {W})", center_fraction)
    return n_center


def _as_mask(cols: torch.Tensor, shape) -> torch.Tensor:
    """Columns (W,) -> the mask of ``shape`` (..., H, W), identical over every other axis."""
    return cols.reshape(*([1] * (len(shape) - 1)), cols.numel()).expand(*shape).contiguous()


def _columns(kind, shape, acceleration, center_fraction, seed) -> torch.Tensor:
    from deepinv.physics.generator import EquispacedMaskGenerator, GaussianMaskGenerator, RandomMaskGenerator

    shape, acc, cf = _check_args(shape, acceleration, center_fraction, seed)
    H, W = shape[-2:]
    n_center = _center_columns(W, acc, cf, center_fraction)
    if kind == "equispaced" and n_center * acc >= W:  # only the centre fits (deepinv divides by zero here)
        cols = torch.zeros(W)
        pad = (W - n_center + 1) // 2
        cols[pad:pad + n_center] = 1
        return _as_mask(cols, shape)
    cls = {"equispaced": EquispacedMaskGenerator, "random": RandomMaskGenerator,
           "gaussian": GaussianMaskGenerator}[kind]
    import warnings

    with warnings.catch_warnings():  # deepinv warns when no line is left outside the centre
        warnings.simplefilter("ignore")
        gen = cls((1, 1, W), acceleration=acc, center_fraction=cf, rng=_generator(seed))
        cols = gen.step(batch_size=0)["mask"].reshape(-1)[-W:].float()
    return _as_mask(cols, shape)


def equispaced_mask(shape, acceleration: float, center_fraction: float | None = None, seed: int | None = 0):
    """fastMRI equispaced columns with a random offset plus a fully sampled centre.

    >>> m = equispaced_mask((8, 64), 4)
    >>> m.shape, int(m[0].sum()), round(realised_acceleration(m), 2)
    (torch.Size([8, 64]), 15, 4.27)
    """
    return _columns("equispaced", shape, acceleration, center_fraction, seed)


def random_mask_1d(shape, acceleration: float, center_fraction: float | None = None, seed: int | None = 0):
    """Uniformly random columns outside a fully sampled centre, ``W // acceleration`` columns in total.

    >>> m = random_mask_1d((8, 64), 4, seed=1)
    >>> int(m[0].sum())
    16
    """
    return _columns("random", shape, acceleration, center_fraction, seed)


def gaussian_mask_1d(shape, acceleration: float, center_fraction: float | None = None, seed: int | None = 0):
    """Columns drawn from a Gaussian density around the centre (Schlemper et al., 2017) plus the centre.

    >>> int(gaussian_mask_1d((8, 64), 4, seed=1)[0].sum())
    16
    """
    return _columns("gaussian", shape, acceleration, center_fraction, seed)


def poisson_disc_mask_1d(shape, acceleration: float, center_fraction: float | None = None, seed: int | None = 0,
                         *, min_gap: int | None = None):
    r"""1D variable-density Poisson-disc columns: ``W // acceleration`` lines, the centre block, a minimum gap.

    The line analogue of :func:`poisson_disc_mask` (same density law), with the centre block and line count of
    :func:`random_mask_1d` / :func:`gaussian_mask_1d`: ``n_center = int(center_fraction * W)`` columns from
    ``W // 2 - n_center // 2``, and ``n = W // acceleration - n_center`` more. Each column :math:`k` outside the
    centre has the exclusion radius

    .. math:: r(k) = g\,(1 + s\,d(k)), \qquad d(k) = \frac{\mathrm{dist}(k, \text{centre block})}{\max_k \mathrm{dist}},

    so the density falls like :math:`1/(1 + s\,d)` from the centre. Dart throwing: the outside columns are visited
    in a seeded random order and a column is kept when it is at least :math:`\max(r(k), r(j))` away from every
    kept column j and at least :math:`r(k)` from the centre block. The slope :math:`s \ge 0` is bisected until the
    throw keeps exactly n columns (if a jump in the count skips n, the smallest count above n is trimmed by
    dropping the last kept columns, which keeps every gap). Hence: exactly ``W // acceleration`` lines, any two
    lines outside the centre (and each of them and the centre block) at least ``min_gap`` apart.

    ``min_gap`` :math:`g` (int >= 1): None = 2 where a throw with :math:`s = 0` reaches n columns, else 1 (dense
    masks, acceleration near 2 or below). An explicit ``min_gap`` the columns cannot reach is a ``ValueError``.

    >>> m = poisson_disc_mask_1d((8, 64), 4, seed=1)
    >>> cols = m[0].nonzero().flatten().tolist()
    >>> len(cols), all(c in cols for c in range(30, 35))           # 16 lines, the 5 centre columns
    (16, True)
    """
    shape, acc, cf = _check_args(shape, acceleration, center_fraction, seed)
    if min_gap is not None and (isinstance(min_gap, bool) or not isinstance(min_gap, int) or min_gap < 1):
        fail("min_gap", "an int >= 1 or None", min_gap, TypeError if not isinstance(min_gap, int) else ValueError)
    H, W = shape[-2:]
    n_total = int(W // acc)
    n_center = _center_columns(W, acc, cf, center_fraction)
    c0 = W // 2 - n_center // 2                                          # centre block [c0, c1), deepinv's start
    c1 = c0 + n_center
    k = torch.arange(W)
    dist = torch.clamp(torch.maximum(c0 - k, k - (c1 - 1)), min=0).double()   # 0 inside the block
    outside = (dist > 0).nonzero().flatten()
    order = outside[torch.randperm(outside.numel(), generator=_generator(seed))].tolist()
    d_norm = dist / max(float(dist.max()), 1.0)
    n = n_total - n_center

    def throw(gap, slope):
        r = (gap * (1 + slope * d_norm)).tolist()
        kept = []
        for c in order:
            if dist[c] >= r[c] and all(abs(c - j) >= max(r[c], r[j]) for j in kept):
                kept.append(c)
        return kept

    gaps = (min_gap,) if min_gap is not None else (2, 1)
    for gap in gaps:
        kept = throw(gap, 0.0)
        if len(kept) >= n:
            break
    else:
        fail("min_gap" if min_gap is not None else "acceleration",
             f"a value for which {n} columns outside the {n_center}-column centre fit {gaps[-1]} apart "
             f"(W = {W}: at most {len(kept)} found)", min_gap if min_gap is not None else acceleration)
    lo, hi = 0.0, float(W)                                               # count(s) falls from >= n (s = 0)
    best = kept
    for _ in range(60):
        if len(best) == n:
            break
        mid = (lo + hi) / 2
        cand = throw(gap, mid)
        if len(cand) >= n:
            lo, best = mid, cand
        else:
            hi = mid
    cols = torch.zeros(W)
    cols[c0:c1] = 1
    cols[best[:n]] = 1
    return _as_mask(cols, shape)


def poisson_disc_mask(shape, acceleration: float, center_fraction: float | None = None, seed: int | None = 0,
                      *, crop_corner: bool = True):
    r"""2D variable-density Poisson-disc mask (sigpy ``poisson``, density :math:`\propto 1/(1 + s|k|)`).

    A centred ``int(center_fraction * H) x int(center_fraction * W)`` calibration box is fully sampled.
    sigpy searches the density slope until the realised acceleration is within 0.1 of ``acceleration``
    (else a ``ValueError`` naming ``acceleration``). ``seed`` is passed to sigpy (numba's RNG; numpy's
    global state is left untouched).

    >>> m = poisson_disc_mask((32, 32), 3, seed=0)
    >>> abs(32 * 32 / float(m.sum()) - 3) < 0.1
    True
    """
    import numpy as np

    shape, acc, cf = _check_args(shape, acceleration, center_fraction, seed)
    H, W = shape[-2:]
    if acc == 1:
        return torch.ones(shape)
    calib = (int(cf * H), int(cf * W))
    if calib[0] * calib[1] > H * W / acc:
        fail("center_fraction", f"a calibration box of at most H*W/acceleration = {H * W / acc:g} locations",
             f"{center_fraction} ({calib[0]}x{calib[1]} box)")
    s = int(_generator(None).initial_seed() % (2 ** 31)) if seed is None else int(seed) % (2 ** 32)
    m = _poisson_bounded((H, W), acc, calib, crop_corner, s)
    if m is None:
        fail("acceleration", f"an acceleration reachable by a Poisson-disc mask of size {H}x{W} with a "
                             f"{calib[0]}x{calib[1]} calibration box (within 0.1)", acceleration)
    t = torch.from_numpy(np.ascontiguousarray(m)).float()
    return t.reshape(*([1] * (len(shape) - 2)), H, W).expand(*shape).contiguous()


def _poisson_bounded(img_shape, accel, calib, crop_corner, seed, max_attempts=30, tol=0.1, max_bisect=60):
    """sigpy 0.1.27 ``mri.poisson`` with a bounded slope bisection; None if ``accel`` is not reached.

    Same algorithm and random stream as sigpy (same mask for the same seed), but sigpy's
    ``while slope_min < slope_max`` bisection never ends when the acceleration is unreachable (e.g.
    8x8 at R = 60: the floats stop changing and the loop spins forever); here it stops after
    ``max_bisect`` halvings.
    """
    import numpy as np
    from sigpy.mri.samp import _poisson

    ny, nx = img_shape
    y, x = np.mgrid[:ny, :nx]
    x = np.maximum(abs(x - nx / 2) - calib[-1] / 2, 0).astype(float)
    x /= max(x.max(), 1e-12)
    y = np.maximum(abs(y - ny / 2) - calib[-2] / 2, 0).astype(float)
    y /= max(y.max(), 1e-12)
    r = np.sqrt(x ** 2 + y ** 2)
    slope_max, slope_min = float(max(nx, ny)), 0.0
    for _ in range(max_bisect):
        slope = (slope_max + slope_min) / 2
        radius_x = np.clip((1 + r * slope) * nx / max(nx, ny), 1, None)
        radius_y = np.clip((1 + r * slope) * ny / max(nx, ny), 1, None)
        mask = _poisson(nx, ny, max_attempts, radius_x, radius_y, calib, seed)
        if crop_corner:
            mask *= r < 1
        actual = nx * ny / max(float(mask.sum()), 1.0)
        if abs(actual - accel) < tol:
            return mask.reshape(img_shape).astype(np.float32)
        if actual < accel:
            slope_min = slope
        else:
            slope_max = slope
    return None


def make_mask(kind: str, shape, acceleration: float, center_fraction: float | None = None,
              seed: int | tuple[int, ...] | None = 0):
    """Dispatch by name: ``kind`` in ``MASK_KINDS`` (equispaced, random, gaussian, poisson (2D points), poisson-1d
    (lines); invdiff's) or in
    ``FASTMRI_MASK_KINDS`` (fastmri-random, fastmri-equispaced, fastmri-equispaced-fraction, fastmri-magic,
    fastmri-magic-fraction; fastMRI's columns bit for bit, :func:`~invdiff.operators.fastmri_masks.fastmri_mask`,
    which also takes a tuple ``seed`` such as :func:`~invdiff.operators.fastmri_masks.fastmri_seed` of a file).

    >>> make_mask("random", (16, 32), 4).shape
    torch.Size([16, 32])
    """
    from .fastmri_masks import FASTMRI_MASK_KINDS, fastmri_mask

    check_choice("kind", kind, MASK_KINDS + FASTMRI_MASK_KINDS)
    if kind in FASTMRI_MASK_KINDS:
        return fastmri_mask(kind, shape, acceleration, center_fraction, seed)
    fn = {"equispaced": equispaced_mask, "random": random_mask_1d, "gaussian": gaussian_mask_1d,
          "poisson": poisson_disc_mask, "poisson-1d": poisson_disc_mask_1d}[kind]
    return fn(shape, acceleration, center_fraction, seed)


def realised_acceleration(mask: torch.Tensor) -> float:
    """Number of k-space locations / number sampled (over the last two axes of the first mask).

    >>> realised_acceleration(torch.tensor([[1., 0., 0., 0.]]))
    4.0
    """
    if not isinstance(mask, torch.Tensor) or mask.dim() < 2:
        fail("mask", "a tensor (..., H, W)", mask, TypeError)
    m = mask.reshape(-1, *mask.shape[-2:])[0]
    n = float((m != 0).sum())
    if n == 0:
        fail("mask", "at least one sampled location", mask)
    return m.numel() / n


__all__ = ["MASK_KINDS", "seed_for_file", "default_center_fraction", "equispaced_mask", "random_mask_1d",
           "gaussian_mask_1d", "poisson_disc_mask", "poisson_disc_mask_1d", "make_mask", "realised_acceleration"]

r"""fastMRI's own column masks, bit for bit (``fastmri/data/subsample.py``, facebookresearch/fastMRI).

invdiff's line masks (:mod:`invdiff.operators.masks`) follow the same ideas but not the same columns. The masks
here give **the same columns as fastMRI** for the same width W, acceleration R, centre fraction and seed:

==================================  ===============================  ===========================================
name                                fastMRI class                    used by
==================================  ===============================  ===========================================
``"fastmri-random"``                ``RandomMaskFunc``               knee challenge (2019), ``--mask-type random``
``"fastmri-equispaced"``            ``EquiSpacedMaskFunc``           ``--mask-type equispaced``
``"fastmri-equispaced-fraction"``   ``EquispacedMaskFractionFunc``   brain challenge (2020), ``equispaced_fraction``
``"fastmri-magic"``                 ``MagicMaskFunc``                Defazio (2019) offset sampling
``"fastmri-magic-fraction"``        ``MagicMaskFractionFunc``        idem, acceleration matched
==================================  ===============================  ===========================================

Every family samples a centred block of :math:`n_c = \mathrm{round}(c\,W)` columns (Python's ``round``: half to
even) starting at column :math:`(W - n_c + 1) // 2`, plus outer columns:

- random: column :math:`j` is sampled when :math:`u_j < p`, :math:`u = ` ``rng.uniform(size=W)``,
  :math:`p = (W / R - n_c) / (W - n_c)`, so the expected count is :math:`W / R` (it varies per file);
- equispaced: columns :math:`o, o + R, o + 2R, \dots` with offset :math:`o` = ``rng.randint(0, R)``
  (integer R; the realised acceleration is below R because some lines fall in the centre);
- equispaced-fraction: the spacing is raised to :math:`a = R (W - n_c) / (W - n_c R)` so that the outer
  lines plus the centre make :math:`W / R` on average; columns ``np.round(np.arange(o, W - 1, a))`` with
  :math:`o` = ``rng.randint(0, round(a))``;
- magic: with :math:`f = j - W // 2` the frequency of column :math:`j` and :math:`o` = ``rng.randint(0, R)``,
  non-negative frequencies :math:`f = o_+ + kR` and negative ones :math:`f = -(1 + o_- + kR)`, where
  :math:`(o_+, o_-) = (o + 1, o + 2)` for even :math:`o`, :math:`(o + 2, o - 1)` for odd :math:`o`, so the two
  halves are offset against each other (conjugate symmetry);
- magic-fraction: the centre is clipped to :math:`1 \le n_c \le \mathrm{round}(W / R)` and the magic pattern
  uses the integer spacing :math:`\mathrm{round}(W / (\mathrm{round}(W / R) - n_c))`.

The random numbers come from numpy's legacy ``RandomState`` seeded with ``seed``, drawn in fastMRI's order (a
one-choice ``randint(1)`` first, which draws nothing). ``seed`` is an int, a tuple of ints, or None (fresh
entropy). fastMRI's data transforms seed each volume with :func:`fastmri_seed` (``tuple(map(ord, fname))``),
so every slice of a file, on every machine, gets the same mask; :func:`invdiff.datasets.fastmri.column_mask`
does the same. fastMRI's ``VarNetDataTransform`` then zeroes the columns outside
``[padding_left, padding_right)`` (:func:`zero_padding`); its ``UnetDataTransform`` does not.

Combinations fastMRI cannot make (a negative offset range) or makes wrongly without a word (a centre wider than
the W / R column budget for the random family: a centre-only mask) raise one ``ValueError`` naming the argument
instead. One extension: when the centre is exactly the budget (:math:`n_c R = W`), equispaced-fraction returns
the centre alone, as the random family does there (fastMRI divides by zero).

Example:
    >>> m = fastmri_mask("fastmri-random", (640, 368), 4, 0.08, seed=fastmri_seed("file1000001.h5"))
    >>> m.shape, int(m[0, 170:199].sum())                   # round(0.08 * 368) = 29 centre lines from 170
    (torch.Size([640, 368]), 29)
"""
from __future__ import annotations

import os

import numpy as np
import torch

from .._validate import check_choice, fail

FASTMRI_MASK_KINDS = ("fastmri-random", "fastmri-equispaced", "fastmri-equispaced-fraction", "fastmri-magic",
                      "fastmri-magic-fraction")

_INTEGER_R = ("fastmri-equispaced", "fastmri-magic")      # these slice with step R: fastMRI needs an int


def fastmri_seed(fname: str | os.PathLike) -> tuple[int, ...]:
    """fastMRI's per-volume seed: the code points of the file's base name, ``tuple(map(ord, fname))``.

    fastMRI's ``SliceDataset`` passes ``fname.name`` (base name with extension) to its transforms.

    >>> fastmri_seed("/data/knee/file1.h5")
    (102, 105, 108, 101, 49, 46, 104, 53)
    """
    if not isinstance(fname, (str, os.PathLike)):
        fail("fname", "a file name (str or path)", fname, TypeError)
    base = os.path.basename(os.fspath(fname))
    if not base:
        fail("fname", "a non-empty file name", fname)
    return tuple(ord(c) for c in base)


def _check_seed(seed):
    """None, an int in [0, 2**32) or a non-empty tuple/list of such ints (numpy ``RandomState`` seeds)."""
    def ok(s):
        return isinstance(s, (int, np.integer)) and not isinstance(s, bool) and 0 <= int(s) < 2 ** 32

    if seed is None or ok(seed):
        return seed if seed is None else int(seed)
    if isinstance(seed, (tuple, list)) and len(seed) > 0 and all(ok(s) for s in seed):
        return tuple(int(s) for s in seed)
    fail("seed", "None, an int in [0, 2**32) or a tuple of such ints (e.g. fastmri_seed(fname))", seed,
         ValueError if isinstance(seed, (int, tuple, list)) and not isinstance(seed, bool) else TypeError)


def center_lines(num_cols: int, center_fraction: float) -> int:
    """fastMRI's number of fully sampled centre columns, ``round(num_cols * center_fraction)`` (half to even).

    >>> center_lines(368, 0.04), int(368 * 0.04)
    (15, 14)
    """
    return round(num_cols * center_fraction)


def _center(num_cols: int, n_c: int) -> np.ndarray:
    cols = np.zeros(num_cols, dtype=bool)
    start = (num_cols - n_c + 1) // 2
    cols[start:start + n_c] = True
    return cols


def _equispaced(num_cols, R, offset):
    cols = np.zeros(num_cols, dtype=bool)
    cols[offset::R] = True
    return cols


def _magic(num_cols, R, offset):
    """Offset sampling of Defazio (2019): the positive and negative frequency halves shifted against each other."""
    o_pos, o_neg = (offset + 1, offset + 2) if offset % 2 == 0 else (offset + 2, offset - 1)
    f = np.arange(num_cols) - num_cols // 2                 # frequency of each column (DC at W // 2)
    m = -f - 1                                              # distance from -1 for negative frequencies
    pos = (f >= 0) & (f >= o_pos) & ((f - o_pos) % R == 0)
    neg = (f < 0) & (m >= o_neg) & ((m - o_neg) % R == 0)
    return pos | neg


def fastmri_columns(kind: str, num_cols: int, acceleration: float, center_fraction: float | None = None,
                    seed: int | tuple[int, ...] | None = None) -> tuple[np.ndarray, int]:
    """The (W,) boolean column mask of fastMRI's ``kind`` family and its number of centre lines.

    Same columns as fastMRI's ``MaskFunc([center_fraction], [acceleration])(shape, seed=seed)`` for a k-space of
    ``num_cols`` columns. ``center_fraction=None``: fastMRI's pairing (0.08 below 8x, 0.04 from 8x).

    >>> cols, n_c = fastmri_columns("fastmri-equispaced-fraction", 320, 4, 0.08, seed=fastmri_seed("a.h5"))
    >>> n_c, int(cols.sum())
    (26, 80)
    """
    from .masks import _check_args

    check_choice("kind", kind, FASTMRI_MASK_KINDS)
    if isinstance(num_cols, bool) or not isinstance(num_cols, (int, np.integer)) or num_cols < 1:
        fail("num_cols", "a positive int (the k-space width W)", num_cols,
             ValueError if isinstance(num_cols, (int, np.integer)) and not isinstance(num_cols, bool) else TypeError)
    num_cols = int(num_cols)
    _, R, cf = _check_args((1, num_cols), acceleration, center_fraction, None)
    seed = _check_seed(seed)
    W = num_cols
    if kind in _INTEGER_R:
        if not float(R).is_integer():
            fail("acceleration", f"an integer for {kind!r} (fastMRI samples every R-th line)", acceleration)
        R = int(R)
    n_c = center_lines(W, cf)
    if n_c >= W:
        fail("center_fraction", f"fewer than W = {W} centre lines (round(center_fraction * W) = {n_c})",
             center_fraction)
    rng = np.random.RandomState(seed)
    rng.randint(1)                                          # fastMRI's choose_acceleration among one pair

    if kind == "fastmri-random":
        if n_c > W / R:
            fail("center_fraction", f"a centre of at most W / acceleration = {W / R:g} lines (fastMRI's random "
                                    f"mask would sample the {n_c} centre lines only)", center_fraction)
        p = (W / R - n_c) / (W - n_c)
        outer = rng.uniform(size=W) < p
    elif kind == "fastmri-equispaced":
        outer = _equispaced(W, R, rng.randint(0, high=round(R)))
    elif kind == "fastmri-equispaced-fraction":
        if n_c > W / R:
            fail("center_fraction", f"a centre of at most W / acceleration = {W / R:g} lines "
                                    f"(round(center_fraction * W) = {n_c}; fastMRI's spacing is negative)",
                 center_fraction)
        if n_c * R == W:                                    # the centre is the whole budget (fastMRI divides by 0)
            outer = np.zeros(W, dtype=bool)
        else:
            a = (R * (n_c - W)) / (n_c * R - W)             # spacing that makes W / R lines with the centre
            offset = rng.randint(0, high=round(a))
            outer = np.zeros(W, dtype=bool)
            outer[np.round(np.arange(offset, W - 1, a)).astype(np.int64)] = True
    elif kind == "fastmri-magic":
        outer = _magic(W, R, rng.randint(0, high=R))
    else:                                                   # fastmri-magic-fraction
        target = round(W / R)
        n_c = max(min(n_c, target), 1)
        if target - n_c <= 0:                               # fastMRI: randint(0, 0) fails
            if target <= 1:
                fail("acceleration", f"at most W / 1.5 = {W / 1.5:g} for 'fastmri-magic-fraction' at W = {W}",
                     acceleration)
            fail("center_fraction", f"a centre of fewer than round(W / acceleration) = {target} lines for "
                                    f"'fastmri-magic-fraction' (round(center_fraction * W) = {center_lines(W, cf)})",
                 center_fraction)
        spacing = round(W / (target - n_c))
        outer = _magic(W, spacing, rng.randint(0, high=spacing))
    return _center(W, n_c) | outer, n_c


def zero_padding(cols, padding_left: int, padding_right: int):
    """Zero the columns ``[:padding_left]`` and ``[padding_right:]`` of a (W,) mask, as fastMRI's ``apply_mask``
    (``VarNetDataTransform``) does; the columns ``[padding_left, padding_right)`` are kept.

    Values must lie in ``0 <= padding_left <= padding_right``; a ``padding_right`` beyond W zeroes nothing on the
    right (fastMRI's slice). A negative value raises (fastMRI's slice would count it from the end and zero
    almost every column). Works on numpy arrays and tensors, returns a copy.

    >>> zero_padding(np.ones(6), 1, 4)
    array([0., 1., 1., 1., 0., 0.])
    """
    for name, v in (("padding_left", padding_left), ("padding_right", padding_right)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            fail(name, "an int (a column index)", v, TypeError)
        if v < 0:
            fail(name, "a column index >= 0 (fastMRI's slice would count a negative one from the end)", v)
    if padding_right < padding_left:
        fail("padding_right", f">= padding_left = {padding_left}", padding_right)
    out = cols.clone() if isinstance(cols, torch.Tensor) else np.array(cols, copy=True)
    out[:padding_left] = 0
    out[padding_right:] = 0
    return out


def fastmri_mask(kind: str, shape, acceleration: float, center_fraction: float | None = None,
                 seed: int | tuple[int, ...] | None = 0) -> torch.Tensor:
    """fastMRI's ``kind`` column mask as a float 0/1 tensor of ``shape = (..., H, W)`` (columns over the last axis).

    >>> m = fastmri_mask("fastmri-equispaced", (4, 40), 4, 0.08, seed=0)
    >>> m.shape, torch.equal(m[0], m[3])
    (torch.Size([4, 40]), True)
    """
    from .masks import _check_args

    shape, _, _ = _check_args(shape, acceleration, center_fraction, None)
    cols, _ = fastmri_columns(kind, shape[-1], acceleration, center_fraction, seed)
    t = torch.from_numpy(cols.astype(np.float32))
    return t.reshape(*([1] * (len(shape) - 1)), shape[-1]).expand(*shape).contiguous()


__all__ = ["FASTMRI_MASK_KINDS", "fastmri_seed", "center_lines", "fastmri_columns", "fastmri_mask", "zero_padding"]

"""CT sinogram files: parallel-beam sinograms (``.h5`` with ``sinogram``, ``angles`` in degrees, ``image_size``),
their operator, simulation from a volume, and the square padding CT needs (re-exported by
:mod:`invdiff.datasets.volumes`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .._validate import check_positive, fail
from ..io_utils import atomic_write_h5
from .fastmri import DataFileError


# ------------------------------------------------------------------------------------------------
# sinograms
# ------------------------------------------------------------------------------------------------
@dataclass
class Sinogram:
    """Parallel-beam sinograms ``data`` (D, n_detectors, n_views) on the raw Radon scale (deepinv ``Tomography``
    with ``normalize=False``), view ``angles`` in degrees, reconstructed ``image_size`` N, optional affine of the
    image volume."""

    data: np.ndarray
    angles: np.ndarray
    image_size: int
    affine: np.ndarray | None = None
    source: str = ""


def ct_operator(image_size: int, angles, *, sigma: float = 0.0, normalize: bool = False, rng=None):
    """The 2D parallel-beam CT operator of these sinogram files (:class:`invdiff.operators.CT`)."""
    from ..operators import CT

    return CT(int(image_size), angles=np.asarray(angles, dtype=np.float32).tolist(), sigma=sigma, normalize=normalize,
              rng=rng)


def simulate_sinogram(volume, n_views: int = 32, angle_range: float = 180.0, *, sigma: float = 0.0, seed: int = 0,
                      image_size: int | None = None) -> Sinogram:
    """Sparse-view (few views) or limited-angle (``angle_range < 180``) sinograms of a volume, slice by slice.

    ``volume``: a :class:`Volume` or an array (D, H, W) / (H, W); slices that are not square are zero-padded to
    the centred ``image_size`` square (default ``max(H, W)``). ``sigma``: Gaussian noise std relative to the
    largest sinogram value. Returns raw-scale sinograms (see :class:`Sinogram`).
    """
    import torch

    from .volumes import Volume

    vol = volume if isinstance(volume, Volume) else Volume(np.asarray(volume, dtype=np.float32).reshape(
        (-1,) + np.asarray(volume).shape[-2:]))
    check_positive("n_views", n_views, integer=True)
    x = pad_to_square(vol.data, image_size)
    N = x.shape[-1]
    angles = np.arange(n_views, dtype=np.float64) * (angle_range / n_views)
    op = ct_operator(N, angles)
    with torch.no_grad():
        y = op.A(torch.from_numpy(x)[:, None]).numpy()[:, 0]
    if sigma > 0:
        rng = np.random.default_rng([int(seed), 0x51A0])
        y = y + sigma * float(np.abs(y).max()) * rng.standard_normal(y.shape)
    return Sinogram(y.astype(np.float32), angles.astype(np.float32), N, vol.affine, vol.source)


def pad_to_square(data: np.ndarray, size: int | None = None) -> np.ndarray:
    """Zero-pad (D, H, W) slices to the centred (size, size) square (default max(H, W))."""
    D, H, W = data.shape
    N = max(H, W) if size is None else int(size)
    if N < max(H, W):
        fail("image_size", f"at least max(H, W) = {max(H, W)}", N)
    out = np.zeros((D, N, N), np.float32)
    t, l = (N - H) // 2, (N - W) // 2
    out[:, t:t + H, l:l + W] = data
    return out


def crop_from_square(data: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`pad_to_square`: the centred (H, W) part of (D, N, N) slices."""
    H, W = shape
    N = data.shape[-1]
    t, l = (N - H) // 2, (N - W) // 2
    return data[..., t:t + H, l:l + W]


def image_size_for_detectors(n_detectors: int) -> int:
    """The image size N whose parallel-beam CT has ``n_detectors`` bins (ceil(sqrt(2) N), deepinv's Radon)."""
    import torch

    r2 = (2 * torch.ones(1)).sqrt()  # float32, as deepinv's Radon computes it
    cands = [n for n in range(1, n_detectors + 1) if int((r2 * n).ceil()) == n_detectors]
    if not cands:
        fail("sinogram", f"a detector count ceil(sqrt(2) N) of some image size N (got {n_detectors}); pass the "
                         "image size explicitly", n_detectors)
    return cands[-1]


def write_sinogram(path, sino: Sinogram) -> Path:
    """Write a :class:`Sinogram` as h5 (``sinogram`` + attributes ``angles``, ``image_size``, ``affine``), atomically."""
    def fill(f):
        f.create_dataset("sinogram", data=np.asarray(sino.data, dtype=np.float32))
        f.attrs["angles"] = np.asarray(sino.angles, dtype=np.float64)
        f.attrs["image_size"] = int(sino.image_size)
        f.attrs["geometry"] = "parallel"
        if sino.affine is not None:
            f.attrs["affine"] = np.asarray(sino.affine, dtype=np.float64)

    return atomic_write_h5(path, fill)


def read_sinogram(path, *, angles=None, image_size: int | None = None, n_views: int | None = None,
                  angle_range: float = 180.0) -> Sinogram:
    """Read a sinogram file: ``.h5`` written by :func:`write_sinogram`, or a ``.npy`` array (D, n_det, n_views) or
    (n_det, n_views) whose view angles are ``angles`` or ``n_views`` (default: the array's) evenly over
    ``angle_range`` degrees, and whose image size is ``image_size`` (default: inferred from the detector count)."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(path, "no such file")
    affine = None
    if path.suffix.lower() == ".npy":
        try:
            y = np.load(path, allow_pickle=False)
        except Exception as e:
            raise DataFileError(path, f"cannot be read as a .npy array: {type(e).__name__}: {e}") from None
    else:
        from .fastmri import _open_h5

        with _open_h5(path) as f:
            if "sinogram" not in f:
                raise DataFileError(path, f"no 'sinogram' dataset (found keys {sorted(f.keys())})")
            try:
                y = np.asarray(f["sinogram"][()])
            except (OSError, RuntimeError) as e:
                raise DataFileError(path, f"reading 'sinogram' failed (truncated file?): {e}") from None
            if angles is None and "angles" in f.attrs:
                angles = np.asarray(f.attrs["angles"], dtype=np.float64)
            if image_size is None and "image_size" in f.attrs:
                image_size = int(f.attrs["image_size"])
            if "affine" in f.attrs:
                affine = np.asarray(f.attrs["affine"], dtype=np.float64)
    if y.ndim == 2:
        y = y[None]
    if y.ndim != 3 or np.iscomplexobj(y):
        raise DataFileError(path, f"sinogram has shape {y.shape} and dtype {y.dtype}; expected real (D, n_detectors, "
                                  "n_views) or (n_detectors, n_views)")
    if not np.isfinite(y).all():
        raise DataFileError(path, "sinogram contains NaN/Inf values")
    n_det, nv = y.shape[1], y.shape[2]
    if angles is None:
        k = nv if n_views is None else int(n_views)
        angles = np.arange(k, dtype=np.float64) * (angle_range / k)
    angles = np.asarray(angles, dtype=np.float64).reshape(-1)
    if angles.size != nv:
        raise DataFileError(path, f"sinogram has {nv} views but {angles.size} view angles were given")
    N = image_size if image_size is not None else image_size_for_detectors(n_det)
    return Sinogram(y.astype(np.float32), angles.astype(np.float32), int(N), affine, str(path))

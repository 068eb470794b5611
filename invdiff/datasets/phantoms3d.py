r"""Synthetic CT-like volumes, deterministic given a seed (no files, no downloads): training data for native 3D priors.

- :func:`ct_volumes`: random-ellipsoid CT-like volumes, the 3D analogue of
  :func:`invdiff.datasets.phantoms.ct_phantoms`: a body (an ellipsoid elongated along the first, axial
  axis, so a volume looks like a slab of a torso), a thin outer fat layer, many overlapping randomly
  rotated ellipsoids with random additive intensities (the 3D Shepp & Logan 1974 construction), a few
  small bright "bone/contrast" inserts, smooth multiplicative texture and a partial-volume blur;
  1 channel in [0, 1], shape (N, 1, D, H, W) with D = H = W = ``size``.
- :func:`ct_slab`: a second CT-like family (z-aligned ellipsoids in a slab of any depth), for evaluation: no
  shipped prior was trained on it.
- :func:`shepp_logan_3d`: the 3D Shepp-Logan phantom (sigpy) at any size, out of distribution.
- :class:`VolumeStream`: the deterministic training stream (batch ``k`` holds seeds ``k*B .. k*B+B-1``),
  with :meth:`VolumeStream.part` so that data-parallel ranks generate only their rows of a batch.

Each volume is a pure function of ``(seed, size)`` (numpy PCG64 streams are stable across versions; the
seed stream is independent of the 2D phantoms'). Seeds ``[0, HELDOUT_SEED_START)`` are the training split;
:func:`invdiff.datasets.phantoms.split_seeds` hands out held-out seeds ``>= HELDOUT_SEED_START`` that training
streams never reach (the same split as the 2D phantoms).

>>> v = ct_volumes([0, 1], size=16); v.shape, float(v.min()) >= 0, float(v.max()) <= 1
(torch.Size([2, 1, 16, 16, 16]), True, True)
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from .._validate import check_choice, check_positive, fail
from .phantoms import HELDOUT_SEED_START, _seeds, _texture_and_blur, split_seeds

__all__: Sequence[str] = ["ct_volume_np", "ct_volumes", "ct_slab", "shepp_logan_3d", "VolumeStream", "GENERATORS3D",
                          "HELDOUT_SEED_START", "split_seeds"]


# ----------------------------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------------------------
def _centres(size: int) -> np.ndarray:
    return (np.arange(size, dtype=np.float64) + 0.5) / size * 2 - 1  # voxel centres in [-1, 1]


def _rotation(rng) -> np.ndarray:
    """Uniformly random 3D rotation matrix (normalised Gaussian quaternion, Shoemake 1992)."""
    q = rng.standard_normal(4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def _add_ellipsoid(vol: np.ndarray, centre, axes, rot: np.ndarray, value: float, within: np.ndarray | None = None):
    r"""``vol[p] += value`` for voxels p with :math:`\lVert \mathrm{diag}(1/axes) R^T (p - c)\rVert \le 1` (and ``within``).

    Coordinates are (z, y, x) in [-1, 1]; only the ellipsoid's axis-aligned bounding box is evaluated,
    half-width :math:`\sqrt{\sum_j (R_{ij} a_j)^2}` along axis i.
    """
    size = vol.shape[0]
    c = _centres(size)
    half = np.sqrt(((rot * np.asarray(axes)[None, :]) ** 2).sum(1))
    sl = []
    for i in range(3):
        lo = int(np.searchsorted(c, centre[i] - half[i], side="left"))
        hi = int(np.searchsorted(c, centre[i] + half[i], side="right"))
        if hi <= lo:
            return
        sl.append(slice(lo, hi))
    z, y, x = np.meshgrid(c[sl[0]] - centre[0], c[sl[1]] - centre[1], c[sl[2]] - centre[2], indexing="ij")
    p = np.stack([z, y, x], -1) @ rot  # rows of R^T (p - c), i.e. coordinates in the ellipsoid frame
    m = ((p / np.asarray(axes)) ** 2).sum(-1) <= 1
    if within is not None:
        m &= within[tuple(sl)]
    vol[tuple(sl)][m] += value


def _ellipsoid_mask(size: int, centre, axes, rot: np.ndarray) -> np.ndarray:
    m = np.zeros((size, size, size))
    _add_ellipsoid(m, centre, axes, rot, 1.0)
    return m > 0


def _rot_z(theta: float) -> np.ndarray:
    """Rotation in the axial (y, x) plane, about the first (z) axis, in (z, y, x) coordinates."""
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


# ----------------------------------------------------------------------------------------------
# CT-like volumes
# ----------------------------------------------------------------------------------------------
def ct_volume_np(seed: int, size: int = 32) -> np.ndarray:
    """One CT-like volume (size, size, size) float32 in [0, 1], axes (z, y, x)."""
    rng = np.random.default_rng([int(seed), 0xC73D])
    vol = np.zeros((size, size, size))
    # body: elongated along z (often cut by the volume's top and bottom, like a torso slab), turned in the axial plane
    az, ay, ax = rng.uniform(0.9, 1.4), rng.uniform(0.55, 0.90), rng.uniform(0.70, 0.95)
    centre = np.array([rng.uniform(-0.1, 0.1), rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05)])
    r_body = _rot_z(rng.uniform(-0.4, 0.4))
    body = _ellipsoid_mask(size, centre, (az, ay, ax), r_body)
    vol[body] = rng.uniform(0.15, 0.35)
    shrink = rng.uniform(0.02, 0.06, size=3)
    inner = _ellipsoid_mask(size, centre, (az - shrink[0], ay - shrink[1], ax - shrink[2]), r_body)
    vol[body & ~inner] += rng.uniform(-0.1, 0.15)                     # outer fat layer
    # many overlapping internal ellipsoids with additive intensities (Shepp & Logan 1974, in 3D)
    axes_body = np.array([az, ay, ax])
    for _ in range(rng.integers(8, 26)):
        d = rng.standard_normal(3)
        u = d / np.linalg.norm(d) * rng.uniform() ** (1 / 3) * 0.8     # uniform in the 0.8-ball
        _add_ellipsoid(vol, centre + r_body @ (u * axes_body), rng.uniform(0.03, 0.35, size=3), _rotation(rng),
                       rng.uniform(-0.15, 0.30), within=inner)
    # a few small bright inserts (bone / contrast)
    for _ in range(rng.integers(0, 4)):
        d = rng.standard_normal(3)
        u = d / np.linalg.norm(d) * rng.uniform() ** (1 / 3) * 0.75
        _add_ellipsoid(vol, centre + r_body @ (u * axes_body), rng.uniform(0.02, 0.1, size=3), _rotation(rng),
                       rng.uniform(0.3, 0.6), within=inner)
    vol = np.clip(vol, 0, None)
    return _texture_and_blur(vol, body, rng, size)


def ct_volumes(seeds: int | Iterable[int], size: int = 32) -> torch.Tensor:
    """CT-like volumes for the given seeds (or seeds 0..n-1 for an int): tensor (N, 1, size, size, size) in [0, 1]."""
    check_positive("size", size, integer=True)
    return torch.from_numpy(np.stack([ct_volume_np(s, size) for s in _seeds(seeds)])[:, None])


def ct_slab(seed: int, depth: int, size: int = 64) -> torch.Tensor:
    """(1, 1, depth, size, size) CT-like slab in [0, 1], isotropic voxels (z spans depth/size of x), a second family
    next to :func:`ct_volumes` that no shipped prior was trained on: an elliptic cylinder body (turned in the axial
    plane) with a fat layer, 20-40 ellipsoids whose axes are aligned with z (only turned in the axial plane, so
    every axial slice looks like a 2D ``ct_phantoms`` image while structures start and end along z), 2-6 small bright
    inserts, smooth texture and a partial-volume blur."""
    rng = np.random.default_rng([int(seed), 0x3D])
    c = (np.arange(size) + 0.5) / size * 2 - 1
    zc = (np.arange(depth) + 0.5 - depth / 2) * (2 / size)
    z, y, x = np.meshgrid(zc, c, c, indexing="ij")

    def ellipsoid(cx, cy, cz, a, b, h, th):
        xr = (x - cx) * np.cos(th) + (y - cy) * np.sin(th)
        yr = -(x - cx) * np.sin(th) + (y - cy) * np.cos(th)
        return (xr / a) ** 2 + (yr / b) ** 2 + ((z - cz) / h) ** 2 <= 1

    a, b, th0 = rng.uniform(0.7, 0.9), rng.uniform(0.55, 0.8), rng.uniform(-0.3, 0.3)
    vol = np.zeros(z.shape)
    body = ellipsoid(0, 0, 0, a, b, 3.0, th0)
    vol[body] = rng.uniform(0.15, 0.35)
    inner = ellipsoid(0, 0, 0, a - 0.04, b - 0.04, 3.0, th0)
    vol[body & ~inner] += rng.uniform(-0.1, 0.15)
    zmax = depth / size
    for _ in range(rng.integers(20, 40)):
        r, phi = np.sqrt(rng.uniform()) * 0.8, rng.uniform(0, 2 * np.pi)
        m = ellipsoid(r * a * np.cos(phi), r * b * np.sin(phi), rng.uniform(-zmax, zmax), rng.uniform(0.05, 0.35),
                      rng.uniform(0.05, 0.35), rng.uniform(0.05, 0.6), rng.uniform(0, np.pi)) & inner
        vol[m] += rng.uniform(-0.15, 0.3)
    for _ in range(rng.integers(2, 6)):
        r, phi = np.sqrt(rng.uniform()) * 0.75, rng.uniform(0, 2 * np.pi)
        m = ellipsoid(r * a * np.cos(phi), r * b * np.sin(phi), rng.uniform(-zmax, zmax), rng.uniform(0.03, 0.1),
                      rng.uniform(0.03, 0.1), rng.uniform(0.05, 0.3), rng.uniform(0, np.pi)) & inner
        vol[m] += rng.uniform(0.3, 0.6)
    vol = np.clip(vol, 0, None)
    tex = gaussian_filter(rng.standard_normal(vol.shape), sigma=0.06 * size, mode="wrap")
    vol = vol * np.where(body, 1 + 0.06 * tex / (tex.std() + 1e-12), 1.0)
    vol = gaussian_filter(vol, sigma=0.5 * size / 64, mode="nearest")
    return torch.from_numpy(np.clip(vol, 0, 1).astype(np.float32))[None, None]


def shepp_logan_3d(size: int = 32) -> torch.Tensor:
    """3D Shepp-Logan phantom (sigpy's ellipsoid table, Kak & Slaney 1988) at any size, (1, 1, size, size, size) in [0, 1]."""
    check_positive("size", size, integer=True)
    import sigpy

    mag = np.abs(sigpy.shepp_logan((size, size, size), dtype=np.complex128))
    return torch.from_numpy(np.clip(mag / mag.max(), 0, 1).astype(np.float32))[None, None]


GENERATORS3D = {"ct3d": ct_volumes}


class VolumeStream:
    """Deterministic infinite 3D training stream: batch ``k`` holds the volumes with seeds ``k*B .. k*B+B-1``.

    The batch at a step depends only on (kind, size, step, batch_size), so a resumed run sees exactly the
    data an uninterrupted one would; :meth:`part` returns rows ``[start, stop)`` of that batch, generating only
    those volumes (data-parallel ranks each generate their own disjoint slice).
    """

    def __init__(self, kind: str = "ct3d", size: int = 32, seed_offset: int = 0):
        check_choice("kind", kind, tuple(GENERATORS3D))
        check_positive("size", size, integer=True)
        self.kind, self.size, self.seed_offset = kind, size, seed_offset
        self.channels = 1

    def part(self, step: int, batch_size: int, start: int, stop: int) -> torch.Tensor:
        if not 0 <= start < stop <= batch_size:
            fail("start, stop", f"0 <= start < stop <= batch_size={batch_size}", f"{start}, {stop}")
        first = self.seed_offset + step * batch_size
        if first + batch_size > HELDOUT_SEED_START:
            fail("step", f"a step whose seeds stay below HELDOUT_SEED_START={HELDOUT_SEED_START}", step)
        return GENERATORS3D[self.kind](range(first + start, first + stop), self.size)

    def batch(self, step: int, batch_size: int) -> torch.Tensor:
        return self.part(step, batch_size, 0, batch_size)

    def __call__(self, step: int, batch_size: int) -> torch.Tensor:
        return self.batch(step, batch_size)

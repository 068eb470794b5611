r"""Synthetic training and test images, deterministic given a seed (no files, no downloads).

- :func:`ct_phantoms`: CT-like random-ellipse phantoms (body outline, many overlapping ellipses of
  random additive intensity as in Shepp & Logan 1974, a few small bright "bone/contrast" inserts, and
  smooth multiplicative texture so the images are not piecewise constant), 1 channel in [0, 1].
- :func:`mri_phantoms`: MRI-like complex brain phantoms: head outline with scalp, skull, CSF, grey and
  white matter (irregular boundary), ventricles and deep nuclei, a smooth bias field and texture,
  times a smooth random phase; 2 real channels (real, imaginary), scaled so max magnitude = 1.
- :func:`shepp_logan`: the (modified) Shepp-Logan phantom at any size, as an out-of-distribution
  test image (real, or complex with a smooth phase).

Each image is a pure function of ``(seed, size)`` (numpy PCG64 streams are stable across versions).
Seeds ``[0, HELDOUT_SEED_START)`` are the training split; :func:`split_seeds` hands out held-out
seeds ``>= HELDOUT_SEED_START`` that training streams never reach.

>>> x = ct_phantoms([0, 1], size=32); x.shape, float(x.min()) >= 0, float(x.max()) <= 1
(torch.Size([2, 1, 32, 32]), True, True)
>>> z = mri_phantoms([3], size=32); z.shape
torch.Size([1, 2, 32, 32])
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
from scipy import ndimage

from .._validate import check_choice, check_positive, fail

#: first seed of the held-out split; training streams use seeds below it.
HELDOUT_SEED_START = 1_000_000_000


# ----------------------------------------------------------------------------------------------
# small building blocks
# ----------------------------------------------------------------------------------------------
def _grid(size: int):
    c = (np.arange(size, dtype=np.float64) + 0.5) / size * 2 - 1  # pixel centres in [-1, 1]
    y, x = np.meshgrid(c, c, indexing="ij")
    return x, y


def _ellipse_r2(x, y, cx, cy, a, b, theta):
    """Squared normalised radius of the ellipse centred (cx, cy), semi-axes (a, b), rotated by theta."""
    ct, st = np.cos(theta), np.sin(theta)
    xr = (x - cx) * ct + (y - cy) * st
    yr = -(x - cx) * st + (y - cy) * ct
    return (xr / a) ** 2 + (yr / b) ** 2


def _smooth_field(rng, size: int, scale: float, dims: int = 2) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field on a ``size``^dims grid with correlation length ``scale`` (fraction
    of the image)."""
    f = ndimage.gaussian_filter(rng.standard_normal((size,) * dims), sigma=max(scale * size, 0.5), mode="wrap")
    return (f - f.mean()) / (f.std() + 1e-12)


def _texture_and_blur(img: np.ndarray, body: np.ndarray, rng, size: int) -> np.ndarray:
    """The finish of the CT-like phantoms (2D images and 3D volumes): smooth multiplicative texture plus a
    fine-grained one inside the body, partial-volume edge blur, clip to [0, 1]."""
    tex = 1 + rng.uniform(0.03, 0.10) * _smooth_field(rng, size, rng.uniform(0.04, 0.12), img.ndim) \
        + rng.uniform(0.0, 0.04) * _smooth_field(rng, size, 0.015, img.ndim)
    img = img * np.where(body, tex, 1.0)
    img = ndimage.gaussian_filter(img, sigma=0.5 * size / 64, mode="nearest")
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def _seeds(seeds) -> list[int]:
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        check_positive("seeds", int(seeds), integer=True)
        return list(range(int(seeds)))
    try:
        out = [int(s) for s in seeds]
    except TypeError:
        fail("seeds", "an int (number of images, seeds 0..n-1) or an iterable of int seeds", seeds, TypeError)
    if any(s < 0 for s in out):
        fail("seeds", "non-negative seeds", f"{out[:5]}...")
    return out


# ----------------------------------------------------------------------------------------------
# CT-like phantoms
# ----------------------------------------------------------------------------------------------
def ct_phantom_np(seed: int, size: int = 64) -> np.ndarray:
    """One CT-like phantom (size, size) float32 in [0, 1]."""
    rng = np.random.default_rng([int(seed), 0xC7])
    x, y = _grid(size)
    img = np.zeros((size, size))
    # body outline (soft tissue) and a thin outer fat layer
    a, b = rng.uniform(0.70, 0.95), rng.uniform(0.55, 0.90)
    cx, cy, th = rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05), rng.uniform(-0.4, 0.4)
    body = _ellipse_r2(x, y, cx, cy, a, b, th) <= 1
    img[body] = rng.uniform(0.15, 0.35)
    inner = _ellipse_r2(x, y, cx, cy, a - rng.uniform(0.02, 0.06), b - rng.uniform(0.02, 0.06), th) <= 1
    img[body & ~inner] += rng.uniform(-0.1, 0.15)
    # many overlapping internal ellipses with additive intensities (Shepp & Logan 1974 style)
    for _ in range(rng.integers(8, 26)):
        r, phi = np.sqrt(rng.uniform()) * 0.8, rng.uniform(0, 2 * np.pi)
        ex, ey = cx + r * a * np.cos(phi), cy + r * b * np.sin(phi)
        ea, eb = rng.uniform(0.03, 0.35), rng.uniform(0.03, 0.35)
        m = (_ellipse_r2(x, y, ex, ey, ea, eb, rng.uniform(0, np.pi)) <= 1) & inner
        img[m] += rng.uniform(-0.15, 0.30)
    # a few small bright inserts (bone / contrast)
    for _ in range(rng.integers(0, 4)):
        r, phi = np.sqrt(rng.uniform()) * 0.75, rng.uniform(0, 2 * np.pi)
        m = _ellipse_r2(x, y, cx + r * a * np.cos(phi), cy + r * b * np.sin(phi), rng.uniform(0.02, 0.1),
                        rng.uniform(0.02, 0.1), rng.uniform(0, np.pi)) <= 1
        img[m & inner] += rng.uniform(0.3, 0.6)
    img = np.clip(img, 0, None)
    return _texture_and_blur(img, body, rng, size)


def ct_phantoms(seeds: int | Iterable[int], size: int = 64) -> torch.Tensor:
    """CT-like phantoms for the given seeds (or seeds 0..n-1 for an int): tensor (N, 1, size, size) in [0, 1]."""
    check_positive("size", size, integer=True)
    return torch.from_numpy(np.stack([ct_phantom_np(s, size) for s in _seeds(seeds)])[:, None])


# ----------------------------------------------------------------------------------------------
# MRI-like complex brain phantoms
# ----------------------------------------------------------------------------------------------
def mri_phantom_np(seed: int, size: int = 64) -> np.ndarray:
    """One complex brain phantom (size, size) complex64 with max magnitude 1."""
    rng = np.random.default_rng([int(seed), 0x3A1])
    x0, y0 = _grid(size)
    # random pose: rotation, scale, shift
    th, s = rng.uniform(-0.25, 0.25), rng.uniform(0.85, 1.05)
    sx, sy = rng.uniform(-0.06, 0.06, size=2)
    x = ((x0 - sx) * np.cos(th) + (y0 - sy) * np.sin(th)) / s
    y = (-(x0 - sx) * np.sin(th) + (y0 - sy) * np.cos(th)) / s
    a, b = rng.uniform(0.66, 0.80), rng.uniform(0.82, 0.94)
    rr = lambda da, db, cx=0.0, cy=0.0: _ellipse_r2(x, y, cx, cy, a - da, b - db, 0.0)  # noqa: E731
    wobble = 0.04 * _smooth_field(rng, size, 0.15)
    head = rr(0, 0) + wobble <= 1
    t_scalp, t_skull, t_csf = rng.uniform(0.04, 0.08), rng.uniform(0.03, 0.06), rng.uniform(0.01, 0.03)
    in_scalp = rr(t_scalp, t_scalp) + wobble <= 1
    in_skull = rr(t_scalp + t_skull, t_scalp + t_skull) + wobble <= 1
    brain = rr(t_scalp + t_skull + t_csf, t_scalp + t_skull + t_csf) + wobble <= 1
    mag = np.zeros((size, size))
    mag[head] = rng.uniform(0.6, 1.0)                      # scalp / fat
    mag[in_scalp] = rng.uniform(0.03, 0.12)                # skull (dark)
    mag[in_skull] = rng.uniform(0.2, 0.45)                 # CSF rim
    grey = rng.uniform(0.45, 0.65)
    mag[brain] = grey                                      # grey matter
    # white matter: an inner region with an irregular (gyral-like) boundary
    wm = (rr(0.25, 0.28) + 0.35 * _smooth_field(rng, size, 0.05) <= 1) & brain
    mag[wm] = grey + rng.uniform(0.15, 0.3)
    # deep grey nuclei (symmetric pair)
    nx, ny = rng.uniform(0.15, 0.25), rng.uniform(-0.1, 0.1)
    for sgn in (-1, 1):
        m = _ellipse_r2(x, y, sgn * nx, ny, rng.uniform(0.05, 0.09), rng.uniform(0.08, 0.14), sgn * 0.3) <= 1
        mag[m & brain] = grey + rng.uniform(0.0, 0.1)
    # ventricles: a symmetric pair of tilted ellipses near the centre, plus sometimes a small third ventricle
    vx, vy, vt = rng.uniform(0.05, 0.12), rng.uniform(-0.15, 0.05), rng.uniform(0.2, 0.6)
    va, vb = rng.uniform(0.03, 0.07), rng.uniform(0.12, 0.25)
    csf = rng.uniform(0.1, 0.3)
    for sgn in (-1, 1):
        mag[(_ellipse_r2(x, y, sgn * vx, vy, va, vb, sgn * vt) <= 1) & brain] = csf
    if rng.uniform() < 0.5:
        mag[(_ellipse_r2(x, y, 0.0, vy + 0.25, 0.02, 0.05, 0.0) <= 1) & brain] = csf
    # occasional small lesions (bright or dark)
    for _ in range(rng.poisson(1.0)):
        r, phi = np.sqrt(rng.uniform()) * 0.6, rng.uniform(0, 2 * np.pi)
        m = _ellipse_r2(x, y, r * a * np.cos(phi), r * b * np.sin(phi), rng.uniform(0.02, 0.06),
                        rng.uniform(0.02, 0.06), rng.uniform(0, np.pi)) <= 1
        mag[m & brain] *= rng.choice([0.5, 1.4])
    # texture and a smooth bias field (coil sensitivity), then partial-volume blur
    tex = 1 + rng.uniform(0.02, 0.07) * _smooth_field(rng, size, 0.03) + rng.uniform(0.0, 0.03) * _smooth_field(rng, size, 0.012)
    c = rng.normal(0, 0.25, size=6)
    bias = np.exp(c[0] * x0 + c[1] * y0 + 0.5 * (c[2] * x0 ** 2 + c[3] * y0 ** 2 + c[4] * x0 * y0)
                  + 0.15 * _smooth_field(rng, size, 0.3))
    mag = np.clip(mag * tex, 0, None) * bias
    mag = ndimage.gaussian_filter(mag, sigma=0.5 * size / 64, mode="nearest")
    # smooth random phase: constant + low-order polynomial + smooth field
    p = rng.normal(0, 1.0, size=5)
    phase = rng.uniform(-np.pi, np.pi) + p[0] * x0 + p[1] * y0 + 0.5 * (p[2] * x0 ** 2 + p[3] * y0 ** 2 + p[4] * x0 * y0) \
        + rng.uniform(0.2, 0.8) * _smooth_field(rng, size, 0.25)
    z = mag * np.exp(1j * phase)
    return (z / (np.abs(z).max() + 1e-12)).astype(np.complex64)


def complex_to_channels(z: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(..., H, W) complex -> (..., 2, H, W) real (real, imaginary), deepinv's convention."""
    z = torch.as_tensor(z)
    return torch.stack([z.real, z.imag], dim=-3).float()


def mri_phantoms(seeds: int | Iterable[int], size: int = 64) -> torch.Tensor:
    """Complex brain phantoms for the given seeds: tensor (N, 2, size, size) (real, imag), max magnitude 1."""
    check_positive("size", size, integer=True)
    return complex_to_channels(np.stack([mri_phantom_np(s, size) for s in _seeds(seeds)]))


# ----------------------------------------------------------------------------------------------
# Shepp-Logan (out of distribution), splits, streams
# ----------------------------------------------------------------------------------------------
def shepp_logan(size: int = 64, complex: bool = False, seed: int = 0) -> torch.Tensor:
    """Modified Shepp-Logan phantom (Toft 1996) at any size via sigpy, scaled to max 1.

    ``complex=False``: (1, 1, size, size) in [0, 1]. ``complex=True``: (1, 2, size, size), the magnitude times a
    smooth phase (deterministic given ``seed``), max magnitude 1.
    """
    check_positive("size", size, integer=True)
    import sigpy

    mag = np.abs(sigpy.shepp_logan((size, size), dtype=np.complex128))
    mag = np.clip(mag / mag.max(), 0, 1)
    if not complex:
        return torch.from_numpy(mag.astype(np.float32))[None, None]
    rng = np.random.default_rng([int(seed), 0x5E])
    x, y = _grid(size)
    phase = rng.uniform(-np.pi, np.pi) + 0.8 * x - 0.5 * y + 0.3 * x * y
    return complex_to_channels((mag * np.exp(1j * phase))[None].astype(np.complex64))


def split_seeds(split: str, n: int, start: int = 0) -> list[int]:
    """``n`` seeds of a split: "train" -> [start, start+n), "heldout" -> HELDOUT_SEED_START + [start, start+n)."""
    check_choice("split", split, ("train", "heldout"))
    check_positive("n", n, integer=True)
    base = 0 if split == "train" else HELDOUT_SEED_START
    if split == "train" and start + n > HELDOUT_SEED_START:
        fail("n", f"train seeds below {HELDOUT_SEED_START}", start + n)
    return list(range(base + start, base + start + n))


def _ct_anatomy(seeds, size: int = 256) -> torch.Tensor:
    from .anatomy import ct_anatomy

    return ct_anatomy(seeds, size)


def _mri_anatomy(seeds, size: int = 256) -> torch.Tensor:
    from .anatomy import mri_anatomy

    return mri_anatomy(seeds, size)


#: phantom kinds: the 64x64-era ellipse phantoms ("ct", "mri") and the anatomy-like real-size families
#: (:mod:`invdiff.datasets.anatomy`: "ct-anatomy", "mri-anatomy")
GENERATORS = {"ct": ct_phantoms, "mri": mri_phantoms, "ct-anatomy": _ct_anatomy, "mri-anatomy": _mri_anatomy}


class PhantomStream:
    """Deterministic infinite training stream: batch ``k`` holds the images with seeds ``k*B .. k*B+B-1``.

    The batch at a step depends only on (kind, size, step, batch_size), so resuming training at step k
    reproduces exactly the data an uninterrupted run would have seen.
    """

    def __init__(self, kind: str, size: int = 64, seed_offset: int = 0):
        check_choice("kind", kind, tuple(GENERATORS))
        check_positive("size", size, integer=True)
        self.kind, self.size, self.seed_offset = kind, size, seed_offset
        self.channels = 1 if kind.startswith("ct") else 2

    def batch(self, step: int, batch_size: int) -> torch.Tensor:
        start = self.seed_offset + step * batch_size
        if start + batch_size > HELDOUT_SEED_START:
            fail("step", f"a step whose seeds stay below HELDOUT_SEED_START={HELDOUT_SEED_START}", step)
        return GENERATORS[self.kind](range(start, start + batch_size), self.size)

    def __call__(self, step: int, batch_size: int) -> torch.Tensor:
        return self.batch(step, batch_size)


__all__: Sequence[str] = ["ct_phantoms", "mri_phantoms", "shepp_logan", "split_seeds", "PhantomStream",
                          "complex_to_channels", "HELDOUT_SEED_START", "GENERATORS", "ct_phantom_np", "mri_phantom_np"]

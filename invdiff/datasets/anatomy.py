r"""Anatomy-like synthetic images for real-size priors (>= 256 x 256), deterministic given a seed.

The 64 x 64 phantoms of :mod:`invdiff.datasets.phantoms` are random ellipses; at 256-512 pixels a prior also
needs what real slices show at that pixel scale: organ shapes with irregular boundaries, thin layers (fat,
cortical bone, cartilage), small structures (vessels, bowel loops, sulci), textures, several contrasts, lesions,
and for MRI a coil bias field, noise and a smooth phase. Two generators, each a mix of families:

- :func:`ct_anatomy`: 1 channel in [0, 1]; families ``abdomen``, ``chest``, ``head``. Tissues are given in
  Hounsfield units and mapped with the fixed window :data:`HU_WINDOW` (the default ``--hu-window`` of
  ``invdiff train-prior --data nifti:/dicom:``, so real CT and these phantoms share one scale: air -> 0,
  water -> 0.25, cortical bone ~ 0.5-0.7). Per image: tissue HU jitter, contrast phase (none / arterial /
  venous), lesions (liver, lung nodules, haemorrhage / infarct), fine texture, partial-volume blur.
- :func:`mri_anatomy`: complex images as 2 channels, max magnitude 1; families ``brain`` (axial, folded cortex,
  sulci, ventricles, deep nuclei, white-matter lesions, tumour with oedema) and ``knee`` (femur / tibia with
  marrow and cortical rim, cartilage, menisci, joint fluid, muscles with striation, fat, skin; marrow oedema,
  cartilage defect, effusion). Contrast drawn per image from T1 / T2 / PD / FLAIR (brain) and PD / PD-FS / T1 /
  T2-FS (knee) by per-tissue intensity tables; a multiplicative bias field (sum of receive-coil profiles times
  a smooth field), a smooth random phase, and complex Gaussian noise of a random level.

Shapes are defined on the normalised field of view [-1, 1]^2, so an image of size N shows the same anatomy at
pixel size 2/N; every random draw comes from ``numpy.random.default_rng([seed, tag])``.

>>> x = ct_anatomy([0, 1, 2], 64); x.shape, float(x.min()) >= 0, float(x.max()) <= 1
(torch.Size([3, 1, 64, 64]), True, True)
>>> z = mri_anatomy([0], 64); z.shape, round(float(z.norm(dim=1).max()), 4)
(torch.Size([1, 2, 64, 64]), 1.0)
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from scipy import ndimage

#: CT window (HU) mapped linearly onto [0, 1] (shared with the NIfTI / DICOM training data default)
HU_WINDOW = (-1000.0, 3000.0)
CT_FAMILIES = ("abdomen", "chest", "head")
MRI_FAMILIES = ("brain", "knee")


# ----------------------------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------------------------
def _grid(size: int):
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    y, x = np.meshgrid(c, c, indexing="ij")
    return x, y


def _shape(x, y, rng, cx, cy, a, b, theta=0.0, rough=0.08, modes=6):
    """Normalised radius of an organic shape: an ellipse whose boundary radius is modulated by random
    Fourier modes ``1 + sum_k c_k cos(k phi + p_k)`` (c_k ~ rough / k); the shape is ``<= 1``."""
    k = np.arange(1, modes + 1)
    amp = rough * rng.standard_normal(modes) / k
    ph = rng.uniform(0, 2 * np.pi, modes)
    # evaluated only in the bounding box of the shape (values > 1 elsewhere): a shape costs its own area
    n = x.shape[0]
    reach = max(a, b) * (1 + np.abs(amp).sum()) * 1.05 + 2.0 / n
    lo = lambda c: int(np.clip(np.floor((c - reach + 1) * n / 2), 0, n))  # noqa: E731
    hi = lambda c: int(np.clip(np.ceil((c + reach + 1) * n / 2) + 1, 0, n))  # noqa: E731
    out = np.full(x.shape, np.inf, dtype=np.float32)
    rows, cols = slice(lo(cy), hi(cy)), slice(lo(cx), hi(cx))
    xs, ys = x[rows, cols], y[rows, cols]
    if xs.size == 0:
        return out
    ct, st = np.cos(theta), np.sin(theta)
    xr = ((xs - cx) * ct + (ys - cy) * st) / a
    yr = (-(xs - cx) * st + (ys - cy) * ct) / b
    rho = np.hypot(xr, yr)
    phi = np.arctan2(yr, xr)
    bound = 1 + (amp[:, None, None] * np.cos(k[:, None, None] * phi[None] + ph[:, None, None])).sum(0)
    out[rows, cols] = rho / np.maximum(bound, 0.3)
    return out


def _field(rng, size: int, scale: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field with correlation length ``scale`` (fraction of the image)."""
    sigma = max(scale * size, 0.5)                   # periodic Gaussian filter in the Fourier domain: any sigma, one FFT
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None]
    h = np.exp(-2 * (np.pi * sigma) ** 2 * (fx ** 2 + fy ** 2))
    f = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((size, size))) * h, s=(size, size)).astype(np.float32)
    return (f - f.mean()) / (f.std() + 1e-12)


def _hu(v):
    lo, hi = HU_WINDOW
    return (np.asarray(v, dtype=np.float32) - lo) / (hi - lo)


def _seeds(seeds) -> list[int]:
    from .phantoms import _seeds as seeds_of

    return seeds_of(seeds)


# ----------------------------------------------------------------------------------------------
# CT
# ----------------------------------------------------------------------------------------------
def _ct_body(x, y, rng, hu, size):
    """Body outline, skin, subcutaneous fat and a muscle wall; returns (hu, body, inside-wall mask)."""
    a, b = rng.uniform(0.78, 0.95), rng.uniform(0.55, 0.80)
    cy = rng.uniform(-0.05, 0.08)
    r = _shape(x, y, rng, 0.0, cy, a, b, rng.uniform(-0.1, 0.1), rough=0.05)
    body = r <= 1
    hu[body] = rng.uniform(-120, -80)                                     # subcutaneous fat
    fat = rng.uniform(0.04, 0.16)
    wall = r <= 1 - fat
    hu[wall] = rng.uniform(35, 60)                                        # muscle wall
    inner = r <= 1 - fat - rng.uniform(0.03, 0.07)
    hu[inner] = rng.uniform(-110, -70)                                    # intra-abdominal / mediastinal fat
    hu[body & (r > 0.985)] = rng.uniform(20, 50)                          # skin
    return body, inner, (0.0, cy, a, b)


def _vertebra(x, y, rng, hu, cx, cy, s):
    r = _shape(x, y, rng, cx, cy, s, s * rng.uniform(0.8, 1.0), 0, rough=0.04)
    hu[r <= 1] = rng.uniform(800, 1300)                                   # cortical shell
    hu[r <= 0.82] = rng.uniform(180, 320)                                 # trabecular bone
    canal = _shape(x, y, rng, cx, cy + 1.5 * s, 0.45 * s, 0.4 * s, 0, rough=0.03) <= 1
    ring = _shape(x, y, rng, cx, cy + 1.55 * s, 0.75 * s, 0.7 * s, 0, rough=0.03) <= 1
    hu[ring & ~canal] = rng.uniform(600, 1100)                            # posterior arch
    hu[canal] = rng.uniform(10, 40)                                       # spinal canal
    for sgn in (-1, 1):                                                   # transverse processes
        m = _shape(x, y, rng, cx + sgn * 1.3 * s, cy + 1.0 * s, 0.6 * s, 0.22 * s, sgn * 0.3, rough=0.05) <= 1
        hu[m] = rng.uniform(500, 1000)


def _abdomen(x, y, rng, hu, size):
    body, inner, (_, cy, a, b) = _ct_body(x, y, rng, hu, size)
    phase = rng.choice(["none", "arterial", "venous"])
    enh = {"none": 0.0, "arterial": 1.0, "venous": 0.6}[phase]
    s = rng.uniform(0.07, 0.1)
    _vertebra(x, y, rng, hu, rng.uniform(-0.03, 0.03), cy + b * 0.55, s)
    liver_hu = rng.uniform(50, 65) + 50 * enh
    liver = (_shape(x, y, rng, -0.32 * a, cy - 0.05, 0.42 * a, 0.55 * b, rng.uniform(-0.3, 0.3), rough=0.12) <= 1) & inner
    hu[liver] = liver_hu
    spleen = (_shape(x, y, rng, 0.5 * a, cy + 0.15 * b, 0.18 * a, 0.3 * b, 0.5, rough=0.1) <= 1) & inner
    hu[spleen] = rng.uniform(40, 55) + 60 * enh
    for sgn in (-1, 1):                                                   # kidneys: cortex, medulla, sinus fat
        kc = (sgn * rng.uniform(0.28, 0.36) * a, cy + b * rng.uniform(0.3, 0.45))
        k = _shape(x, y, rng, *kc, 0.11, 0.16, sgn * 0.4, rough=0.06)
        hu[(k <= 1) & inner] = rng.uniform(30, 40) + 150 * enh
        hu[(k <= 0.6) & inner] = rng.uniform(25, 35) + 60 * enh
        hu[(_shape(x, y, rng, *kc, 0.03, 0.06, sgn * 0.4, rough=0.1) <= 1) & inner] = rng.uniform(-100, -60)
    vessel = 40 + enh * rng.uniform(150, 300)
    hu[_shape(x, y, rng, -0.02, cy + b * 0.28, 0.045, 0.045, 0, rough=0.02) <= 1] = vessel     # aorta
    hu[_shape(x, y, rng, -0.16 * a, cy + b * 0.25, 0.05, 0.035, 0.2, rough=0.05) <= 1] = 40 + 0.7 * enh * 150  # IVC
    for _ in range(rng.integers(8, 20)):                                  # bowel loops: wall + content
        r, t = np.sqrt(rng.uniform(0.05, 1)) * 0.6, rng.uniform(0, 2 * np.pi)
        bc = (r * a * np.cos(t) + 0.1 * a, cy - 0.1 * b + r * b * 0.6 * np.sin(t))
        ba, bb = rng.uniform(0.03, 0.09), rng.uniform(0.03, 0.09)
        th = rng.uniform(0, np.pi)
        free = inner & ~liver & ~spleen
        hu[(_shape(x, y, rng, *bc, ba, bb, th, rough=0.15) <= 1) & free] = rng.uniform(30, 60)
        content = rng.choice([-1000, 15, 250, 40], p=[0.35, 0.3, 0.15, 0.2])
        hu[(_shape(x, y, rng, *bc, 0.7 * ba, 0.7 * bb, th, rough=0.15) <= 1) & free] = content + rng.normal(0, 10)
    for _ in range(rng.integers(0, 4)):                                   # liver lesions (cysts / metastases / HCC)
        ys, xs = np.nonzero(liver)
        if len(xs) == 0:
            break
        i = rng.integers(len(xs))
        rr = rng.uniform(0.015, 0.07)
        m = (_shape(x, y, rng, x[ys[i], xs[i]], y[ys[i], xs[i]], rr, rr * rng.uniform(0.7, 1), 0, rough=0.1) <= 1) & liver
        hu[m] = rng.choice([rng.uniform(0, 20), liver_hu - rng.uniform(20, 40), liver_hu + rng.uniform(20, 60)])
    return body


def _chest(x, y, rng, hu, size):
    body, inner, (_, cy, a, b) = _ct_body(x, y, rng, hu, size)
    enh = rng.choice([0.0, 1.0, 0.6])
    s = rng.uniform(0.07, 0.09)
    _vertebra(x, y, rng, hu, rng.uniform(-0.03, 0.03), cy + b * 0.6, s)
    lungs = np.zeros_like(body)
    for sgn in (-1, 1):
        m = (_shape(x, y, rng, sgn * 0.38 * a, cy, 0.32 * a, 0.72 * b, sgn * 0.1, rough=0.07) <= 1) & inner
        lungs |= m
    hu[lungs] = rng.uniform(-880, -800)
    heart = (_shape(x, y, rng, 0.1 * a, cy - 0.05 * b, 0.3 * a, 0.38 * b, rng.uniform(0.3, 0.7), rough=0.08) <= 1) & inner
    hu[heart] = rng.uniform(35, 50)
    for _ in range(rng.integers(2, 4)):                                   # chambers (blood pool)
        c = (0.1 * a + rng.uniform(-0.12, 0.12), cy - 0.05 * b + rng.uniform(-0.12, 0.12))
        hu[(_shape(x, y, rng, *c, rng.uniform(0.06, 0.12), rng.uniform(0.06, 0.12), 0, rough=0.1) <= 1) & heart] = \
            40 + enh * rng.uniform(150, 300)
    hu[_shape(x, y, rng, -0.03, cy + b * 0.35, 0.05, 0.05, 0, rough=0.02) <= 1] = 40 + enh * 250   # descending aorta
    # pulmonary vessels: dots and short segments, thinner towards the periphery
    ys, xs = np.nonzero(lungs)
    if len(xs):
        vessels = np.zeros_like(hu)
        for _ in range(rng.integers(60, 160)):
            i = rng.integers(len(xs))
            px, py = x[ys[i], xs[i]], y[ys[i], xs[i]]
            rr = rng.uniform(0.004, 0.018) * (1.3 - min(abs(px) / a, 1.0))
            ln = rng.uniform(1, 5)
            vessels[(_shape(x, y, rng, px, py, rr * ln, rr, rng.uniform(0, np.pi), rough=0.0, modes=1) <= 1)] = 1
        hu[(vessels > 0) & lungs] = rng.uniform(-50, 50)
        for _ in range(rng.integers(0, 3)):                               # nodules
            i = rng.integers(len(xs))
            rr = rng.uniform(0.01, 0.04)
            hu[(_shape(x, y, rng, x[ys[i], xs[i]], y[ys[i], xs[i]], rr, rr, 0, rough=0.2) <= 1) & lungs] = \
                rng.uniform(-20, 60)
    for k in range(rng.integers(6, 12)):                                  # ribs around the chest wall
        t = rng.uniform(0, 2 * np.pi)
        rc = (0.93 * a * np.cos(t), cy + 0.9 * b * np.sin(t))
        hu[_shape(x, y, rng, *rc, rng.uniform(0.02, 0.04), rng.uniform(0.012, 0.02), t + np.pi / 2, rough=0.05) <= 1] = \
            rng.uniform(500, 1100)
    hu[_shape(x, y, rng, 0, cy - 0.92 * b, 0.05, 0.02, 0, rough=0.05) <= 1] = rng.uniform(400, 900)  # sternum
    return body


def _head(x, y, rng, hu, size):
    a, b = rng.uniform(0.62, 0.8), rng.uniform(0.75, 0.92)
    cx, cy = rng.uniform(-0.04, 0.04), rng.uniform(-0.04, 0.04)
    th = rng.uniform(-0.15, 0.15)
    r = _shape(x, y, rng, cx, cy, a, b, th, rough=0.03)
    body = r <= 1
    hu[body] = rng.uniform(20, 50)                                        # scalp
    t = rng.uniform(0.05, 0.09)
    hu[r <= 1 - 0.05] = rng.uniform(1200, 1900)                           # outer table
    hu[(r <= 1 - 0.05 - t / 3) & (r > 1 - 0.05 - 2 * t / 3)] = rng.uniform(400, 800)   # diploe
    brain = r <= 1 - 0.05 - t
    wm_hu, gm_hu = rng.uniform(22, 30), rng.uniform(33, 42)
    hu[brain] = gm_hu
    rb = r / (1 - 0.05 - t)
    phi = np.arctan2(y - cy, x - cx)
    gyri = 0.06 * np.sin(rng.integers(14, 24) * phi + 2 * _field(rng, size, 0.08))
    hu[brain & (rb <= 0.78 + gyri)] = wm_hu
    sulci = brain & (rb > 0.8) & (np.abs(np.sin(rng.integers(20, 34) * phi + 3 * _field(rng, size, 0.1))) < 0.12)
    hu[sulci | (brain & (rb > 0.97))] = rng.uniform(0, 12)                # CSF in sulci and at the surface
    for sgn in (-1, 1):                                                   # lateral ventricles
        m = _shape(x, y, rng, cx + sgn * 0.09, cy - 0.05, rng.uniform(0.04, 0.08), rng.uniform(0.18, 0.28),
                   sgn * 0.25, rough=0.15) <= 1
        hu[m & brain] = rng.uniform(2, 10)
    hu[(np.abs(x - cx) < 0.006 * 256 / size + 0.004) & brain & (np.abs(y - cy) > 0.35 * b)] = rng.uniform(45, 70)  # falx
    for _ in range(rng.integers(0, 3)):                                   # haemorrhage / infarct / calcification
        rr = rng.uniform(0.02, 0.12)
        c = (cx + rng.uniform(-0.4, 0.4) * a, cy + rng.uniform(-0.5, 0.5) * b)
        hu[(_shape(x, y, rng, *c, rr, rr * rng.uniform(0.6, 1), rng.uniform(0, np.pi), rough=0.2) <= 1) & brain] = \
            rng.choice([rng.uniform(55, 85), rng.uniform(8, 18), rng.uniform(150, 400)])
    return body


def ct_anatomy_np(seed: int, size: int = 256, family: str | None = None) -> np.ndarray:
    """One CT-like anatomical slice (size, size) float32 in [0, 1] (HU through :data:`HU_WINDOW`)."""
    rng = np.random.default_rng([int(seed), 0xA7C7])
    family = family or CT_FAMILIES[int(rng.integers(len(CT_FAMILIES)))]
    x, y = _grid(size)
    hu = np.full((size, size), -1000.0, dtype=np.float32)
    body = {"abdomen": _abdomen, "chest": _chest, "head": _head}[family](x, y, rng, hu, size)
    # tissue texture (soft tissue / bone, not air): smooth mottle + fine grain, in HU
    soft = body & (hu > -500)
    hu = hu + soft * (rng.uniform(3, 10) * _field(rng, size, rng.uniform(0.01, 0.04))
                      + rng.uniform(0, 8) * _field(rng, size, 0.004))
    hu = hu * rng.uniform(0.97, 1.03)
    img = _hu(hu)
    img = ndimage.gaussian_filter(img, sigma=rng.uniform(0.4, 0.9) * size / 256, mode="nearest")  # partial volume
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def ct_anatomy(seeds: int | Iterable[int], size: int = 256) -> torch.Tensor:
    """CT-like anatomical slices for the given seeds: (N, 1, size, size) in [0, 1]."""
    return torch.from_numpy(np.stack([ct_anatomy_np(s, size) for s in _seeds(seeds)])[:, None])


# ----------------------------------------------------------------------------------------------
# MRI
# ----------------------------------------------------------------------------------------------
#: per-contrast tissue intensities (relative magnitude; literature-like orderings of T1/T2/PD/FLAIR contrast)
BRAIN_CONTRASTS = {
    "T1": dict(fat=1.0, skull=0.06, csf=0.15, gm=0.55, wm=0.78, nuclei=0.62, lesion=0.45, tumour=0.4, oedema=0.5, muscle=0.45),
    "T2": dict(fat=0.65, skull=0.05, csf=1.0, gm=0.6, wm=0.42, nuclei=0.5, lesion=0.85, tumour=0.8, oedema=0.8, muscle=0.3),
    "PD": dict(fat=0.85, skull=0.06, csf=0.85, gm=0.78, wm=0.64, nuclei=0.72, lesion=0.85, tumour=0.8, oedema=0.82, muscle=0.5),
    "FLAIR": dict(fat=0.6, skull=0.05, csf=0.08, gm=0.62, wm=0.45, nuclei=0.55, lesion=1.0, tumour=0.85, oedema=0.95, muscle=0.3),
}
KNEE_CONTRASTS = {
    "PD": dict(fat=1.0, marrow=0.9, cortex=0.04, cartilage=0.7, fluid=0.8, meniscus=0.06, muscle=0.42, tendon=0.05, oedema=0.9),
    "PD-FS": dict(fat=0.12, marrow=0.15, cortex=0.03, cartilage=0.65, fluid=1.0, meniscus=0.05, muscle=0.4, tendon=0.04, oedema=0.85),
    "T1": dict(fat=1.0, marrow=0.95, cortex=0.04, cartilage=0.45, fluid=0.25, meniscus=0.05, muscle=0.4, tendon=0.04, oedema=0.4),
    "T2-FS": dict(fat=0.1, marrow=0.12, cortex=0.03, cartilage=0.4, fluid=1.0, meniscus=0.04, muscle=0.3, tendon=0.03, oedema=0.9),
}


def _brain(x, y, rng, size, c):
    img = np.zeros((size, size), np.float32)
    a, b = rng.uniform(0.6, 0.78), rng.uniform(0.74, 0.92)
    cx, cy, th = rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05), rng.uniform(-0.15, 0.15)
    r = _shape(x, y, rng, cx, cy, a, b, th, rough=0.03)
    img[r <= 1] = c["fat"]                                                # scalp fat
    img[r <= 0.96] = c["muscle"] * rng.uniform(0.8, 1.1)
    t = rng.uniform(0.05, 0.08)
    img[r <= 0.94] = c["skull"]
    inner = 0.94 - t
    brain = r <= inner
    img[brain] = c["csf"]
    rb = r / inner
    phi = np.arctan2(y - cy, x - cx)
    cortex = brain & (rb <= 0.96)
    img[cortex] = c["gm"]
    gyri = 0.07 * np.sin(rng.integers(16, 28) * phi + 2.5 * _field(rng, size, 0.07)) + 0.03 * _field(rng, size, 0.03)
    wm = cortex & (rb <= 0.8 + gyri)
    img[wm] = c["wm"]
    sulci = cortex & (rb > 0.72 + gyri) & (np.abs(np.sin(rng.integers(22, 36) * phi + 3 * _field(rng, size, 0.1))) < 0.1)
    img[sulci] = c["csf"]
    for sgn in (-1, 1):
        img[(_shape(x, y, rng, cx + sgn * 0.2 * a, cy + 0.02, 0.08, 0.1, sgn * 0.3, rough=0.1) <= 1) & wm] = c["nuclei"]
        m = _shape(x, y, rng, cx + sgn * 0.08, cy - 0.04, rng.uniform(0.035, 0.075), rng.uniform(0.16, 0.28),
                   sgn * 0.25, rough=0.15) <= 1
        img[m & brain] = c["csf"]
    for _ in range(rng.integers(0, 7)):                                   # white-matter lesions
        ys, xs = np.nonzero(wm)
        if len(xs) == 0:
            break
        i = rng.integers(len(xs))
        rr = rng.uniform(0.008, 0.03)
        img[(_shape(x, y, rng, x[ys[i], xs[i]], y[ys[i], xs[i]], rr, rr * rng.uniform(0.5, 1), rng.uniform(0, 3), rough=0.2)
             <= 1) & wm] = c["lesion"]
    if rng.uniform() < 0.25:                                              # tumour with surrounding oedema
        tc = (cx + rng.uniform(-0.4, 0.4) * a, cy + rng.uniform(-0.5, 0.5) * b)
        rr = rng.uniform(0.05, 0.14)
        img[(_shape(x, y, rng, *tc, 1.8 * rr, 1.6 * rr, 0, rough=0.25) <= 1) & cortex] = c["oedema"]
        img[(_shape(x, y, rng, *tc, rr, rr, 0, rough=0.2) <= 1) & brain] = c["tumour"]
    return img, r <= 1


def _knee(x, y, rng, size, c):
    img = np.zeros((size, size), np.float32)
    cx, th = rng.uniform(-0.06, 0.06), rng.uniform(-0.12, 0.12)
    w = rng.uniform(0.62, 0.85)
    leg = _shape(x, y, rng, cx, 0, w, 1.3, th, rough=0.04) <= 1
    img[leg] = c["fat"]
    muscle = _shape(x, y, rng, cx, 0, w - rng.uniform(0.05, 0.12), 1.3, th, rough=0.06) <= 1
    striation = 1 + 0.12 * np.sin(90 * (x * np.cos(th + 1.4) + y * np.sin(th + 1.4)) + 4 * _field(rng, size, 0.05))
    img[muscle] = c["muscle"] * striation[muscle]
    gap = rng.uniform(-0.05, 0.08)                                        # joint line height
    jw = rng.uniform(0.03, 0.06)
    fw = rng.uniform(0.42, 0.58)
    femur = _shape(x, y, rng, cx, gap - 0.55 - jw, fw, 0.55, th, rough=0.05, modes=8)
    tibia = _shape(x, y, rng, cx, gap + 0.6 + jw, fw * rng.uniform(0.9, 1.05), 0.6, th, rough=0.04, modes=8)
    fluid = (np.abs(y - gap) < jw + 0.02 * rng.uniform(0.5, 3)) & (np.abs(x - cx) < fw * 1.05)
    img[fluid & muscle] = c["fluid"] * rng.uniform(0.6, 1.0)              # joint space / effusion
    for bone in (femur, tibia):
        img[bone <= 1.0 + 0.05] = c["cartilage"]                          # articular cartilage (thin band)
        img[bone <= 1.0] = c["cortex"]
        marrow = bone <= 1.0 - rng.uniform(0.02, 0.05)
        img[marrow] = c["marrow"] * (1 + 0.08 * _field(rng, size, 0.02))[marrow]   # trabecular texture
    for sgn in (-1, 1):                                                   # menisci: dark wedges at the joint edges
        mc = (cx + sgn * fw * 0.85, gap)
        img[_shape(x, y, rng, *mc, 0.14, jw + 0.015, 0, rough=0.1) <= 1] = c["meniscus"]
    img[(_shape(x, y, rng, cx + rng.uniform(-0.05, 0.05), gap, 0.02, 0.35, 0.1, rough=0.05) <= 1)
        & ~(femur <= 1) & ~(tibia <= 1)] = c["tendon"]                    # cruciate ligament
    if rng.uniform() < 0.3:                                               # bone-marrow oedema
        bone = femur if rng.uniform() < 0.5 else tibia
        oc = (cx + rng.uniform(-0.3, 0.3), gap + (-0.15 if bone is femur else 0.15))
        img[(_shape(x, y, rng, *oc, rng.uniform(0.06, 0.15), rng.uniform(0.05, 0.1), 0, rough=0.3) <= 1) & (bone <= 0.95)] = \
            c["oedema"]
    if rng.uniform() < 0.25:                                              # focal cartilage defect filled with fluid
        dc = (cx + rng.uniform(-0.3, 0.3), gap - jw - 0.02)
        img[(_shape(x, y, rng, *dc, rng.uniform(0.02, 0.05), 0.03, 0, rough=0.1) <= 1) & (femur > 0.97)] = c["fluid"]
    img[leg & ~(_shape(x, y, rng, cx, 0, w - 0.012, 1.3, th, rough=0.0, modes=1) <= 1)] *= 0.6  # skin
    return img, leg


def _bias_field(x, y, rng, size) -> np.ndarray:
    """Receive-coil shading: sum of |coil|-like profiles 1/(1 + d^2/w^2) around the object, times a smooth field."""
    f = np.zeros((size, size), np.float32)
    for t in rng.uniform(0, 2 * np.pi, rng.integers(4, 10)):
        d2 = (x - 1.2 * np.cos(t)) ** 2 + (y - 1.2 * np.sin(t)) ** 2
        f += 1 / (1 + d2 / rng.uniform(0.5, 1.5) ** 2)
    f /= f.max()
    return f * np.exp(rng.uniform(0.05, 0.25) * _field(rng, size, 0.3))


def mri_anatomy_np(seed: int, size: int = 256, family: str | None = None, thermal_noise: bool = True) -> np.ndarray:
    """One complex MRI-like anatomical slice (size, size) complex64, max magnitude 1.

    ``thermal_noise=False`` leaves out the image-domain complex Gaussian noise (std uniform in [0, 0.02]), the same
    slice otherwise: for simulations that add thermal noise where a scanner has it, in each coil's k-space."""
    rng = np.random.default_rng([int(seed), 0xA7E1])
    family = family or MRI_FAMILIES[int(rng.integers(len(MRI_FAMILIES)))]
    table = BRAIN_CONTRASTS if family == "brain" else KNEE_CONTRASTS
    contrast = list(table)[int(rng.integers(len(table)))]
    c = {k: v * rng.uniform(0.9, 1.1) for k, v in table[contrast].items()}
    x, y = _grid(size)
    mag, obj = (_brain if family == "brain" else _knee)(x, y, rng, size, c)
    mag = mag * (1 + rng.uniform(0.01, 0.05) * _field(rng, size, rng.uniform(0.005, 0.02)) * obj)   # tissue texture
    mag = ndimage.gaussian_filter(mag, sigma=rng.uniform(0.4, 0.8) * size / 256, mode="nearest")
    mag = np.clip(mag, 0, None) * _bias_field(x, y, rng, size)
    phase = (rng.uniform(-1, 1) * x + rng.uniform(-1, 1) * y) * rng.uniform(0, 2) + rng.uniform(0, 2 * np.pi) \
        + rng.uniform(0.2, 1.2) * _field(rng, size, rng.uniform(0.15, 0.4))
    z = mag * np.exp(1j * phase)
    z = z / (np.abs(z).max() + 1e-12)
    sd = rng.uniform(0.0, 0.02)                                           # thermal noise, complex Gaussian
    if thermal_noise:
        z = z + sd / np.sqrt(2) * (rng.standard_normal(z.shape) + 1j * rng.standard_normal(z.shape))
    return (z / np.abs(z).max()).astype(np.complex64)


def mri_anatomy(seeds: int | Iterable[int], size: int = 256) -> torch.Tensor:
    """Complex MRI-like anatomical slices: (N, 2, size, size) (real, imag), max magnitude 1 per image."""
    from .phantoms import complex_to_channels

    return complex_to_channels(np.stack([mri_anatomy_np(s, size) for s in _seeds(seeds)]))


__all__ = ["ct_anatomy", "mri_anatomy", "ct_anatomy_np", "mri_anatomy_np", "HU_WINDOW", "CT_FAMILIES",
           "MRI_FAMILIES", "BRAIN_CONTRASTS", "KNEE_CONTRASTS"]

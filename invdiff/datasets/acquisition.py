"""Inputs of ``invdiff acquire``: each file as fully sampled acquisitions, one per slice, and the files it writes.

Active acquisition (:func:`invdiff.solvers.ads.ads`) needs the *fully sampled* operator and its data; this module
turns one input into a :class:`FullAcquisition`:

- **fastMRI .h5** (training / validation files: fully sampled k-space): per slice, the measured k-space and the
  fully sampled Cartesian operator (``MRI(None)`` single-coil; ``MultiCoilMRI(None, maps)`` multi-coil, ESPIRiT
  maps computed from the centre (ACS) block only: the columns ADS acquires first). Scaled by the maximum of the
  ACS zero-filled image, so that nothing outside the acquired block is read before ADS chooses. Test / challenge
  files (already undersampled: a ``mask`` dataset) are refused.
- **NIfTI / DICOM volumes** and **.npy / .png images**: clean slices scaled to [0, 1] (min-max), measured by the
  fully sampled simulated operator of the task: ``ct`` all ``views`` angles over ``angle_range`` (square-padded as
  ``invdiff reconstruct`` does), ``mri`` every k-space column (single coil, or ``coils`` birdcage coils),
  ``inpainting`` every pixel; noise std ``noise`` on the [0, 1] scale.

:func:`candidate_count` reads only headers / shapes (the budget is checked against it before anything is
written); :func:`write_acquisition` writes the chosen masks, orders and scores.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .fastmri import DataFileError

#: the task each input kind is acquired with by default
NATURAL_TASK = {"fastmri": "mri", "volume": "ct", "image": "inpainting"}


@dataclass
class FullAcquisition:
    """One input as fully sampled acquisitions, slice by slice.

    ``problem(i, generator) -> (y_full (1, *y_shape), physics)`` for slice ``i`` of ``n_slices``;
    ``finish(means) -> (recon, metrics, info)`` turns the per-slice reconstructions ((1, C, H, W) each) into the
    output array on the input's scale, its metrics against the truth (or None) and the writer's ``info``."""

    n_slices: int
    problem: Callable
    finish: Callable
    truth_shape: tuple
    info: dict = field(default_factory=dict)


def parse_slices(spec, n: int, where: str = "slices") -> list[int]:
    """Slice indices from ``None`` (all), an int, or ``"START:STOP[:STEP]"`` (Python slice syntax)."""
    from .._validate import fail

    if spec in (None, "", "all"):
        return list(range(n))
    if isinstance(spec, int) and not isinstance(spec, bool):
        if not -n <= spec < n:
            fail(where, f"a slice index in [{-n}, {n})", spec)
        return [spec % n]
    try:
        parts = [int(p) if p.strip() else None for p in str(spec).split(":")]
        if len(parts) == 1:
            return parse_slices(parts[0], n, where)
        idx = list(range(n))[slice(*parts)]
    except (ValueError, TypeError):
        fail(where, "None (all slices), an index, or START:STOP[:STEP]", spec)
    if not idx:
        fail(where, f"a non-empty selection of the {n} slices", spec)
    return idx


def _magnitude(x: torch.Tensor) -> np.ndarray:
    x = x.float()
    return (x.pow(2).sum(1).sqrt() if x.shape[1] == 2 else x[:, 0]).cpu().numpy()


def candidate_count(kind: str, path, task: str, *, views: int, unit: str = "pixel", patch=None) \
        -> tuple[int, int, int]:
    """(number of candidates, k-space width or 0, number of slices) of one input, from its header / shape only."""
    from .fastmri import inspect_fastmri
    from .volumes import read_image, read_volume

    if kind == "fastmri":
        info = inspect_fastmri(path)
        if info.has_mask:
            raise DataFileError(path, "undersampled k-space (a test/challenge file with a 'mask'); active acquisition "
                                      "needs fully sampled k-space (training or validation files)")
        return info.shape[1], info.shape[1], info.num_slices
    data = read_volume(path).data if kind == "volume" else read_image(path)
    D = 1 if data.ndim == 2 else data.shape[0]
    H, W = data.shape[-2:]
    if task == "ct":
        return int(views), 0, D
    if task == "mri":
        return W, W, D
    if unit == "patch" and patch:
        return (H // int(patch)) * (W // int(patch)), 0, D
    return H * W, 0, D


def fastmri_acquisition(path, *, center_columns: list[int], noise: float, espirit_calib: int = 24,
                        espirit_kernel: int = 6, espirit_cache=None, slices=None) -> FullAcquisition:
    """A fully sampled fastMRI file; ``center_columns`` is the ACS block (scale and ESPIRiT maps come from it)."""
    from ..metrics import center_crop, fastmri_metrics
    from ..operators import MRI, MultiCoilMRI, espirit_maps
    from .fastmri import kspace_to_tensor, read_fastmri, zero_filled

    vol = read_fastmri(path)
    if vol.mask is not None:
        raise DataFileError(path, "undersampled k-space (a test/challenge file); acquisition needs fully sampled data")
    H, W = vol.info.shape
    idx = parse_slices(slices, vol.kspace.shape[0])
    acs = np.zeros(W, dtype=np.float32)
    acs[center_columns] = 1.0
    if not center_columns:
        raise DataFileError(path, "no ACS block to scale by: give center_fraction (the fully sampled centre columns)")
    scale = float(zero_filled(vol.kspace[idx] * acs).max())
    if not scale > 0:
        raise DataFileError(path, "all-zero k-space in the centre block")
    k = (vol.kspace[idx] / scale).astype(np.complex64)
    acs2d = torch.from_numpy(acs)[None].expand(H, W).contiguous()
    single = vol.info.challenge == "singlecoil"

    def problem(i, gen):
        y = kspace_to_tensor(k[i:i + 1]).movedim(0, 1).contiguous()           # (1, 2, [N], H, W)
        if single:
            return y, MRI(None, img_size=(2, H, W), sigma=noise, rng=gen)
        maps = espirit_maps(y * acs2d, calib_width=int(espirit_calib), kernel_width=int(espirit_kernel),
                            mask=acs2d, cache_dir=espirit_cache)               # from the ACS block only
        return y, MultiCoilMRI(None, maps[0], img_size=(2, H, W), sigma=noise, rng=gen)

    def finish(means):
        recon = center_crop(_magnitude(torch.cat(means)) * scale, vol.info.recon_size).astype(np.float32)
        target = vol.target[idx] if vol.target is not None else None
        metrics = fastmri_metrics(recon, target) if target is not None else None
        attrs = {"acquisition": vol.info.attrs.get("acquisition"), "patient_id": vol.info.attrs.get("patient_id"),
                 "max": float(target.max()) if target is not None else None, "challenge": vol.info.challenge,
                 "slices": idx}
        return recon, metrics, {"attrs": attrs}

    return FullAcquisition(len(idx), problem, finish, (len(idx), H, W), {"slices": idx, "scale": scale,
                                                                          "challenge": vol.info.challenge})


def clean_acquisition(kind: str, path, task: str, *, views: int, angle_range: float, noise: float, coils: int = 0,
                      slices=None) -> FullAcquisition:
    """A clean NIfTI/DICOM volume or image measured by the fully sampled operator of ``task`` (module docstring)."""
    from ..metrics import fastmri_metrics
    from ..operators import CT, MRI, Inpainting, MultiCoilMRI, birdcage_maps
    from .volumes import crop_from_square, pad_to_square, read_image, read_volume

    affine = None
    if kind == "volume":
        v = read_volume(path)
        data, affine = v.data, v.affine
    else:
        data = read_image(path)
    data3 = data[None] if data.ndim == 2 else data
    idx = parse_slices(slices, data3.shape[0])
    data3 = data3[idx]
    lo, hi = float(data3.min()), float(data3.max())
    if not hi > lo:
        raise DataFileError(path, f"an image without contrast (constant value {lo:g})")
    truth = ((data3 - lo) / (hi - lo)).astype(np.float32)
    D, H, W = truth.shape
    N = max(H, W)

    def problem(i, gen):
        x = torch.from_numpy(truth[i:i + 1])[:, None]                          # (1, 1, H, W)
        if task == "ct":
            op, x = CT(N, n_views=int(views), angle_range=float(angle_range), sigma=noise, rng=gen), \
                torch.from_numpy(pad_to_square(truth[i:i + 1], N))[:, None]
        elif task == "mri":
            x = torch.cat([x, torch.zeros_like(x)], 1)
            op = MultiCoilMRI(None, birdcage_maps(int(coils), (H, W)), img_size=(2, H, W), sigma=noise, rng=gen) \
                if int(coils) > 0 else MRI(None, img_size=(2, H, W), sigma=noise, rng=gen)
        else:
            op = Inpainting((1, H, W), torch.ones(1, H, W), sigma=noise, rng=gen)
        with torch.no_grad():
            return op(x), op

    def finish(means):
        m = torch.cat(means)
        rec = _magnitude(m) if task == "mri" else m[:, 0].float().cpu().numpy()
        rec = crop_from_square(rec, (H, W)) if rec.shape[-2:] != (H, W) else rec
        metrics = fastmri_metrics(rec, truth, crop=False)
        out = (rec * (hi - lo) + lo).astype(np.float32)
        out = out.reshape(data.shape) if out.size == data.size else out
        return out, metrics, {"affine": affine}

    return FullAcquisition(D, problem, finish, (D, H, W), {"slices": idx})


def write_acquisition(out: Path, name: str, slices: list[dict], meta: dict) -> list[Path]:
    """Write ``NAME_acquisition.json`` (everything, readable) and the arrays ``NAME_masks.npy`` ((S, *mask) 0/1),
    ``NAME_order.npy`` ((S, budget, 2) int64: candidate, reverse step; -1 = fixed block), ``NAME_scores.npy``
    ((S, events, n) float64, -inf at already acquired candidates) and, for CT, ``NAME_angles.npy`` ((S, budget)
    degrees in acquisition order). Each file atomically."""
    from ..io_utils import atomic_path, atomic_write_json

    def save(path, arr):
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, arr, allow_pickle=False)
        return path

    paths = [save(out / f"{name}_masks.npy", np.stack([s["mask"] for s in slices]).astype(np.uint8)),
             save(out / f"{name}_order.npy", np.asarray([s["order"] for s in slices], dtype=np.int64)),
             save(out / f"{name}_scores.npy", np.stack([s["scores"] for s in slices]).astype(np.float64))]
    if all("angles" in s for s in slices):
        paths.append(save(out / f"{name}_angles.npy", np.asarray([s["angles"] for s in slices], dtype=np.float64)))
    doc = dict(meta, slices=[{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in s.items()
                              if k not in ("mask", "scores")} for s in slices])
    atomic_write_json(out / f"{name}_acquisition.json", json.loads(json.dumps(doc, default=str)))
    return paths + [out / f"{name}_acquisition.json"]


__all__ = ["FullAcquisition", "NATURAL_TASK", "parse_slices", "candidate_count", "fastmri_acquisition",
           "clean_acquisition", "write_acquisition"]

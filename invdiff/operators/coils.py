r"""Coil sensitivity maps: simulated birdcage maps and ESPIRiT estimation from the calibration region.

Maps are complex tensors (deepinv convention): ``(N, H, W)`` for one k-space, ``(B, N, H, W)`` for a
batch. ESPIRiT maps are defined up to a spatially varying phase (sigpy normalises them to the phase
of the first coil) and are zero outside the object (eigenvalue crop); the SENSE operator built from
them reproduces the data, so the coil-combined image :math:`\sum_n \bar s_n F^{-1} y_n` has the right
magnitude.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from .._validate import check_in_range, check_positive, check_tensor, fail


def birdcage_maps(n_coils: int, img_size) -> torch.Tensor:
    r"""Simulated birdcage coil sensitivities (sigpy ``birdcage_maps``), normalised to :math:`\sum_n |s_n|^2 = 1`.

    ``img_size`` is ``(H, W)``, ``(2, H, W)`` or ``(2, D, H, W)``; returns complex64 ``(N, H, W)`` or
    ``(N, D, H, W)`` (3D: sigpy's stacked rings of 8 coils).

    >>> s = birdcage_maps(4, (2, 16, 16))
    >>> s.shape, s.dtype, bool(torch.allclose(s.abs().pow(2).sum(0), torch.ones(16, 16), atol=1e-5))
    (torch.Size([4, 16, 16]), torch.complex64, True)
    """
    import sigpy.mri as mr

    check_positive("n_coils", n_coils, integer=True)
    if not isinstance(img_size, (tuple, list, torch.Size)) or len(img_size) not in (2, 3, 4):
        fail("img_size", "(H, W), (2, H, W) or (2, D, H, W)", img_size)
    spatial = tuple(img_size) if len(img_size) == 2 else tuple(img_size[1:])
    if len(img_size) > 2 and img_size[0] != 2:
        fail("img_size", "(H, W), (2, H, W) or (2, D, H, W)", img_size)
    if not all(isinstance(s, int) and s >= 1 for s in spatial):
        fail("img_size", "positive int sizes", img_size)
    maps = mr.birdcage_maps((n_coils,) + spatial)
    maps = maps / np.sqrt((np.abs(maps) ** 2).sum(0, keepdims=True))
    return torch.from_numpy(np.ascontiguousarray(maps)).to(torch.complex64)


def _as_complex_kspace(kspace) -> tuple[torch.Tensor, bool]:
    """(B, N, H, W) complex from (B, 2, N, H, W) / (2, N, H, W) real; returns (k, batched)."""
    if not isinstance(kspace, torch.Tensor):
        fail("kspace", "a real tensor (B, 2, N, H, W) (multi-coil k-space, complex as 2 channels)", kspace, TypeError)
    if kspace.is_complex():
        fail("kspace", "a real tensor (B, 2, N, H, W): complex k-space is stored as 2 real channels "
                       "(torch.view_as_real(k).movedim(-1, 1))", kspace, TypeError)
    check_tensor("kspace", kspace, ndim=(4, 5), finite=True)
    batched = kspace.dim() == 5
    k = kspace if batched else kspace[None]
    if k.shape[1] != 2:
        fail("kspace", "shape (B, 2, N, H, W): real and imaginary parts on axis 1", kspace)
    k = k.detach().to("cpu", torch.float32)
    return torch.complex(k[:, 0], k[:, 1]), batched


def acs_width(sampled: torch.Tensor) -> int:
    """Side of the largest centred square of fully sampled k-space locations.

    ``sampled`` is a boolean ``(H, W)`` map; the square is the region sigpy's ``EspiritCalib`` crops for
    a given ``calib_width`` (rows/cols ``n // 2 - c // 2 ... + c``).

    >>> m = torch.zeros(16, 16, dtype=torch.bool); m[:, 6:10] = True
    >>> acs_width(m)
    4
    """
    H, W = sampled.shape[-2:]
    best = 0
    for c in range(1, min(H, W) + 1):
        r0, c0 = H // 2 - c // 2, W // 2 - c // 2
        if bool(sampled[..., r0:r0 + c, c0:c0 + c].all()):
            best = c
        else:
            break
    return best


def _cache_key(calib: np.ndarray, img_shape, params: dict) -> str:
    import sigpy

    h = hashlib.sha256()
    h.update(np.ascontiguousarray(calib, dtype=np.complex64).tobytes())
    h.update(repr((tuple(calib.shape), tuple(img_shape), sorted(params.items()), sigpy.__version__)).encode())
    return h.hexdigest()


def _atomic_save(path: Path, arr: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, arr, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def espirit_maps(kspace: torch.Tensor, calib_width: int = 24, *, kernel_width: int = 6, thresh: float = 0.02,
                 crop: float = 0.95, max_iter: int = 100, mask: torch.Tensor | None = None,
                 cache_dir: str | os.PathLike | None = None) -> torch.Tensor:
    r"""ESPIRiT coil maps (Uecker et al., MRM 2014) from the fully sampled centre of k-space (sigpy ``EspiritCalib``).

    Args:
        kspace: multi-coil k-space ``(B, 2, N, H, W)`` or ``(2, N, H, W)`` (invdiff/deepinv convention,
            centred FFT); may be undersampled.
        calib_width: side of the square calibration (ACS) region. If the fully sampled centre is
            smaller, the largest fully sampled centred square is used instead.
        kernel_width, thresh, crop, max_iter: sigpy ``EspiritCalib`` parameters.
        mask: optional 0/1 sampling mask ``(H, W)`` (or anything reducing to it); by default the
            sampled locations are the non-zero entries of ``kspace`` (any coil).
        cache_dir: if given, maps are cached there as ``.npy`` files keyed by a SHA-256 of the
            calibration data and parameters (written atomically; loaded without pickle).

    Returns:
        complex64 maps ``(B, N, H, W)`` (or ``(N, H, W)`` for unbatched input).

    Raises:
        ValueError: if the fully sampled centre is narrower than ``2 * kernel_width`` lines. Below
            that sigpy's ESPIRiT silently returns all-zero maps (measured with sigpy 0.1.27 on
            birdcage/Shepp-Logan data: zero maps for calibration widths < 2*kernel_width - 1 for 4-16
            coils, unreliable at 2*kernel_width - 1 with noise; deepinv's ``MRISliceTransform`` passes
            such widths through silently).

    Example:
        >>> import torch
        >>> from invdiff.operators import MultiCoilMRI, birdcage_maps, espirit_maps
        >>> op = MultiCoilMRI(None, birdcage_maps(4, (2, 32, 32)))
        >>> x = torch.zeros(1, 2, 32, 32); x[:, 0, 8:24, 8:24] = 1
        >>> espirit_maps(op.A(x), calib_width=16).shape
        torch.Size([1, 4, 32, 32])
    """
    from sigpy.mri.app import EspiritCalib

    k, batched = _as_complex_kspace(kspace)
    B, N, H, W = k.shape
    check_positive("calib_width", calib_width, integer=True)
    check_positive("kernel_width", kernel_width, integer=True)
    check_positive("thresh", thresh)
    check_in_range("crop", crop, 0.0, 1.0)
    check_positive("max_iter", max_iter, integer=True)
    if mask is not None:
        check_tensor("mask", mask, finite=True)
        sm = mask.detach().to("cpu")
        while sm.dim() > 2:
            sm = sm[0]
        if tuple(sm.shape) != (H, W):
            fail("mask", f"a sampling mask of spatial shape ({H}, {W}) like the k-space", mask)
        sampled = (sm != 0).expand(B, H, W)
    else:
        sampled = (k.abs() > 0).any(1)  # (B, H, W)
    need = 2 * kernel_width
    out = []
    for b in range(B):
        acs = acs_width(sampled[b])
        cw = min(calib_width, acs, H, W)
        if cw < need:
            fail("kspace", f"a fully sampled centre (ACS region) of at least 2 * kernel_width = {need} lines "
                           f"for ESPIRiT calibration (use a mask with a larger center_fraction, or a smaller "
                           f"kernel_width)", f"a fully sampled centre of {acs} lines (batch element {b})")
        kb = k[b].numpy()
        r0, c0 = H // 2 - cw // 2, W // 2 - cw // 2
        calib = kb[:, r0:r0 + cw, c0:c0 + cw]
        params = dict(calib_width=cw, kernel_width=kernel_width, thresh=float(thresh), crop=float(crop),
                      max_iter=max_iter)
        path = None
        if cache_dir is not None:
            path = Path(cache_dir) / f"espirit-{_cache_key(calib, (H, W), params)[:40]}.npy"
            if path.is_file():
                maps = np.load(path, allow_pickle=False)
                if maps.shape == (N, H, W):
                    out.append(torch.from_numpy(maps))
                    continue
        maps = EspiritCalib(kb.astype(np.complex64), calib_width=cw, thresh=thresh, kernel_width=kernel_width,
                            crop=crop, max_iter=max_iter, show_pbar=False).run()
        maps = np.ascontiguousarray(maps, dtype=np.complex64)
        if path is not None:
            _atomic_save(path, maps)
        out.append(torch.from_numpy(maps))
    res = torch.stack(out, 0).to(torch.complex64)
    return res if batched else res[0]


__all__ = ["birdcage_maps", "espirit_maps", "acs_width"]

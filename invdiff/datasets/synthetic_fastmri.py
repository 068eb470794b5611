r"""Synthetic fastMRI-format files, so every fastMRI workflow (read, mask, reconstruct, submit, evaluate) runs offline.

Each slice :math:`s` is a complex image :math:`x_s` (an invdiff held-out brain phantom, a held-out anatomy-like
brain / knee slice of :func:`invdiff.datasets.anatomy.mri_anatomy_np`, or the Shepp-Logan phantom with a per-slice
size and phase), placed in the centre of the ``shape = (H, W)`` field of view (like
fastMRI's 2x readout oversampling when ``H > W``), then

.. math::  k_{s,n} = F(c_n \odot x_s) \ \text{(multi-coil)}, \qquad k_s = F x_s \ \text{(single-coil)},

with sigpy birdcage coil maps :math:`c_n` normalised to :math:`\sum_n |c_n|^2 = 1` and the centred orthonormal
FFT :math:`F` (fastMRI ``fft2c``), times ``scale`` (raw fastMRI k-space is of order 1e-5..1e-3).
Targets are computed from the k-space exactly as fastMRI's: the root-sum-of-squares of the coil images
(``reconstruction_rss``; equal to :math:`|x_s|` because the maps are normalised) and, for single-coil files,
``reconstruction_esc`` :math:`= |F^{-1} k_s|`, both centre-cropped to ``recon_size``.

``kind="test"`` writes a test/challenge-style file: masked k-space (per-file seeded ``mask_kind`` columns,
``* mask + 0.0``), the ``mask`` dataset, attributes ``acceleration`` and ``num_low_frequency``, and no target.

The ISMRMRD header is a minimal valid XML with the sizes fastMRI reads (``encodedSpace``, ``reconSpace``,
``kspace_encoding_step_1`` limits, chosen so that there are no padding columns).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .._validate import check_choice, check_positive, fail

HEADER_TEMPLATE = """<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">
  <acquisitionSystemInformation><systemVendor>invdiff-synthetic</systemVendor>
    <receiverChannels>{coils}</receiverChannels></acquisitionSystemInformation>
  <encoding>
    <encodedSpace><matrixSize><x>{H}</x><y>{W}</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>{H}</x><y>{W}</y><z>3</z></fieldOfView_mm></encodedSpace>
    <reconSpace><matrixSize><x>{rh}</x><y>{rw}</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>{rh}</x><y>{rw}</y><z>3</z></fieldOfView_mm></reconSpace>
    <trajectory>cartesian</trajectory>
    <encodingLimits>
      <kspace_encoding_step_1><minimum>0</minimum><maximum>{emax}</maximum><center>{ecenter}</center></kspace_encoding_step_1>
      <slice><minimum>0</minimum><maximum>{smax}</maximum><center>0</center></slice>
    </encodingLimits>
  </encoding>
</ismrmrdHeader>
"""


def _images(phantom: str, n_slices: int, size: int, seed: int) -> np.ndarray:
    """(S, size, size) complex64 slices with max magnitude 1."""
    from .phantoms import mri_phantom_np, shepp_logan, split_seeds

    if phantom == "brain":
        # held-out seeds (never seen by the shipped priors), one subject-like image per slice
        return np.stack([mri_phantom_np(s, size) for s in split_seeds("heldout", n_slices, start=1000 * seed)])
    if phantom == "anatomy":
        from .anatomy import mri_anatomy_np

        # held-out seeds of the anatomy generator (the real-size priors train on the other split); thermal noise is
        # added per coil in k-space (``noise``), where a scanner has it, not to the object
        return np.stack([mri_anatomy_np(s, size, thermal_noise=False)
                         for s in split_seeds("heldout", n_slices, start=1000 * seed)])
    out = []
    for s in range(n_slices):
        t = s / max(n_slices - 1, 1)
        frac = 0.75 + 0.25 * np.sin(np.pi * t)            # the head gets bigger towards the middle slice
        inner = max(4, int(round(size * frac)))
        z = shepp_logan(inner, complex=True, seed=seed * 1000 + s)[0].numpy()
        z = z[0] + 1j * z[1]
        img = np.zeros((size, size), np.complex64)
        o = (size - inner) // 2
        img[o:o + inner, o:o + inner] = z
        out.append(img)
    return np.stack(out).astype(np.complex64)


def _centre_crop(a: np.ndarray, shape) -> np.ndarray:
    from ..metrics import center_crop

    return center_crop(a, shape)


def write_synthetic_fastmri(path, n_slices: int = 4, coils: int = 8, shape=(64, 64), kind: str = "multicoil",
                            seed: int = 0, *, recon_size=None, phantom: str = "brain", scale: float = 1e-3,
                            noise: float = 0.0, mask_kind: str = "equispaced", acceleration: float = 4,
                            center_fraction: float | None = None, acquisition: str = "AXT2") -> Path:
    """Write a synthetic fastMRI-format h5 file (atomically) and return its path.

    Args:
        path: output file (its base name seeds the test mask, like real fastMRI files).
        n_slices: number of slices S.
        coils: receiver coils N (multi-coil and test files; ``kind="test"`` with ``coils=1`` writes single-coil
            test k-space ``(S, H, W)``).
        shape: k-space size ``(H, W)``; the object fills the centred ``min(H, W)`` square.
        kind: ``"multicoil"`` (``kspace (S, N, H, W)`` + ``reconstruction_rss``), ``"singlecoil"``
            (``kspace (S, H, W)`` + ``reconstruction_esc`` and ``reconstruction_rss``) or ``"test"`` (masked
            k-space, ``mask``, no target).
        seed: picks the phantoms (held-out seeds) and the noise.
        recon_size: target size ``(h, w)`` (default the centred ``min(H, W)`` square).
        phantom: ``"brain"`` (invdiff MRI phantoms), ``"anatomy"`` (anatomy-like brain / knee slices at full
            resolution, without image-domain noise: :func:`~invdiff.datasets.anatomy.mri_anatomy_np`; use ``noise``
            for thermal noise) or ``"shepp-logan"`` (per-slice size and
            phase).
        scale: k-space scale factor.
        noise: complex Gaussian k-space noise std, relative to ``scale``.
        mask_kind, acceleration, center_fraction: the test-file mask, seeded by the file name: a fastMRI family
            (``fastmri-random``, ``fastmri-equispaced-fraction``, ...) gives fastMRI's own columns for that name
            (``tuple(map(ord, name))`` seeding, ``round(cf * W)`` centre lines); invdiff's families their own.
        acquisition: the ``acquisition`` attribute.
    """
    from ..io_utils import atomic_write_h5
    from ..operators import birdcage_maps, make_mask, seed_for_file
    from .fastmri import fft2c, ifft2c

    path = Path(path)
    check_positive("n_slices", n_slices, integer=True)
    check_positive("coils", coils, integer=True)
    check_choice("kind", kind, ("multicoil", "singlecoil", "test"))
    check_choice("phantom", phantom, ("brain", "anatomy", "shepp-logan"))
    check_positive("scale", scale)
    check_positive("noise", noise, strict=False)
    if not (isinstance(shape, (tuple, list)) and len(shape) == 2 and all(isinstance(s, int) and s >= 8 for s in shape)):
        fail("shape", "a pair of ints (H, W), each >= 8", shape)
    H, W = shape
    size = min(H, W)
    rh, rw = tuple(recon_size) if recon_size is not None else (size, size)
    if not (0 < rh <= H and 0 < rw <= W):
        fail("recon_size", f"a size within the k-space shape {tuple(shape)}", recon_size)

    imgs = np.zeros((n_slices, H, W), np.complex64)
    top, left = (H - size) // 2, (W - size) // 2
    imgs[:, top:top + size, left:left + size] = _images(phantom, n_slices, size, seed)
    multicoil = kind == "multicoil" or (kind == "test" and coils > 1)
    if multicoil:
        maps = birdcage_maps(coils, (H, W)).numpy()                       # (N, H, W), sum |c|^2 = 1
        kspace = fft2c(maps[None] * imgs[:, None])                        # (S, N, H, W)
    else:
        kspace = fft2c(imgs)                                              # (S, H, W)
    kspace = (kspace * scale).astype(np.complex64)
    if noise > 0:
        rng = np.random.default_rng([seed, 0xFA57])
        kspace = kspace + (noise * scale / np.sqrt(2)) * (rng.standard_normal(kspace.shape)
                                                          + 1j * rng.standard_normal(kspace.shape)).astype(np.complex64)
    coil_imgs = ifft2c(kspace)
    rss = np.sqrt((np.abs(coil_imgs) ** 2).sum(1)) if multicoil else np.abs(coil_imgs)
    rss = _centre_crop(rss.astype(np.float32), (rh, rw))

    header = HEADER_TEMPLATE.format(H=H, W=W, rh=rh, rw=rw, coils=coils if multicoil else 1, emax=W - 1,
                                    ecenter=W // 2, smax=n_slices - 1)
    attrs = {"acquisition": acquisition, "patient_id": f"synthetic-{seed}", "max": float(rss.max()),
             "norm": float(np.linalg.norm(rss))}
    if kind == "test":
        from ..operators import default_center_fraction
        from ..operators.fastmri_masks import FASTMRI_MASK_KINDS, center_lines, fastmri_seed

        cf = center_fraction if center_fraction is not None else default_center_fraction(acceleration)
        if mask_kind in FASTMRI_MASK_KINDS:   # fastMRI's own family: its per-file seeding and centre rule
            cols = make_mask(mask_kind, (1, W), acceleration, cf, seed=fastmri_seed(path.name))[0].numpy()
            n_low = center_lines(W, cf)
        else:
            cols = make_mask(mask_kind, (1, W), acceleration, cf, seed=seed_for_file(path.name))[0].numpy()
            n_low = int(cf * W)
        kspace = (kspace * cols + 0.0).astype(np.complex64)
        del attrs["max"], attrs["norm"]
        attrs["acceleration"] = int(acceleration) if float(acceleration).is_integer() else float(acceleration)
        attrs["num_low_frequency"] = int(n_low)

    def fill(f):
        f.create_dataset("ismrmrd_header", data=header)
        if kind == "test":
            f.create_dataset("mask", data=cols.astype(bool))
        else:
            f.create_dataset("reconstruction_rss", data=rss)
            if kind == "singlecoil":
                f.create_dataset("reconstruction_esc", data=rss)   # |F^-1 k| cropped (emulated single coil)
        f.create_dataset("kspace", data=kspace)
        for k, v in attrs.items():
            f.attrs[k] = v

    atomic_write_h5(path, fill)
    return path


def write_synthetic_dataset(folder, n_files: int, **kwargs) -> list[Path]:
    """``n_files`` synthetic files ``file_synth_000.h5 ...`` in ``folder`` (seeds 0..n-1); ``kwargs`` as
    :func:`write_synthetic_fastmri`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    check_positive("n_files", n_files, integer=True)
    base_seed = int(kwargs.pop("seed", 0))
    return [write_synthetic_fastmri(folder / f"file_synth_{i:03d}.h5", seed=base_seed + i, **kwargs)
            for i in range(n_files)]


__all__ = ["write_synthetic_fastmri", "write_synthetic_dataset"]

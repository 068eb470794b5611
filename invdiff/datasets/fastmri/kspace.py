"""fastMRI k-space: the per-file masks (fastMRI's own by default, deterministic per file), masking, k-space
tensors and FFTs, coil combination, training images and the slice dataset (see :mod:`invdiff.datasets.fastmri`)."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from ..._validate import check_choice, fail
from .files import MASK_CHOICES, DataFileError, FastMRIInfo, _open_h5, inspect_fastmri, read_fastmri

# ------------------------------------------------------------------------------------------------
# masks, tensors
# ------------------------------------------------------------------------------------------------
#: knee acquisitions in fastMRI (``acquisition`` attribute); brain ones start with "AX" (AXT1, AXT2, AXFLAIR, ...)
KNEE_ACQUISITIONS = ("CORPD_FBK", "CORPDFS_FBK")


def anatomy(info: FastMRIInfo) -> str | None:
    """The file's anatomy, "knee", "brain" or None: from the ``acquisition`` attribute (CORPD* knee, AX* brain),
    else the file name (fastMRI's brain files are named ``file_brain_*``, knee files ``file<digits>.h5``)."""
    acq = str(info.attrs.get("acquisition", "")).upper()
    if acq in KNEE_ACQUISITIONS or acq.startswith("COR"):
        return "knee"
    if acq.startswith("AX") or "brain" in info.fname.lower():
        return "brain"
    if re.fullmatch(r"file\d+\.h5", info.fname):
        return "knee"
    return None


def default_mask_kind(info: FastMRIInfo) -> str:
    """The fastMRI challenge's mask for the file: ``"fastmri-random"`` (``RandomMaskFunc``, the 2019 knee
    challenge) for knee, ``"fastmri-equispaced-fraction"`` (``EquispacedMaskFractionFunc``, the 2020 brain
    challenge and fastMRI's VarNet default) for brain and for files of unknown anatomy."""
    return "fastmri-random" if anatomy(info) == "knee" else "fastmri-equispaced-fraction"


def column_mask(info: FastMRIInfo, kind: str = "auto", acceleration: float = 4,
                center_fraction: float | None = None, seed=None, *,
                file_mask: np.ndarray | None = None, padding: bool = True) -> torch.Tensor:
    """The (W,) 0/1 column mask used for a volume, zeroed outside ``info.padding`` (``padding=False``: not).

    A test file's own ``mask`` (``file_mask``) wins. Otherwise a ``kind`` mask: ``"auto"`` (default) is fastMRI's
    own mask for the file's anatomy (:func:`default_mask_kind`); a name from
    :data:`invdiff.operators.FASTMRI_MASK_KINDS` gives that fastMRI family bit for bit, seeded like fastMRI's
    validation transforms with :func:`~invdiff.operators.fastmri_seed` of the file name; invdiff's own
    "equispaced", "random", "gaussian" (:func:`invdiff.operators.make_mask`) are seeded with
    :func:`~invdiff.operators.seed_for_file`. ``seed`` (an int) replaces the per-file seed. fastMRI pairs 4x
    with 8 % and 8x with 4 % centre (the ``center_fraction=None`` default).

    Padding follows fastMRI's ``VarNetDataTransform``: columns ``[:padding_left]`` and ``[padding_right:]`` are
    zeroed, for test-file masks too (fastMRI's ``UnetDataTransform`` does not zero them: ``padding=False``).
    """
    from ...operators import FASTMRI_MASK_KINDS, fastmri_seed, make_mask, seed_for_file, zero_padding

    check_choice("kind", kind, MASK_CHOICES)
    H, W = info.shape
    if file_mask is not None:
        cols = torch.as_tensor(np.asarray(file_mask, dtype=np.float32).reshape(-1))
    else:
        kind = default_mask_kind(info) if kind == "auto" else kind
        if seed is None:
            seed = fastmri_seed(info.fname) if kind in FASTMRI_MASK_KINDS else seed_for_file(info.fname)
        cols = make_mask(kind, (1, W), acceleration, center_fraction, seed=seed)[0].clone()
    if padding and info.padding is not None:
        left, right = info.padding
        try:
            cols = zero_padding(cols, left, right)
        except (TypeError, ValueError) as e:
            raise DataFileError(info.path, f"unusable padding (padding_left, padding_right) = {info.padding} for "
                                           f"the mask: {e}") from None
    return cols


def apply_mask(kspace, mask):
    """``kspace * mask + 0.0`` (fastMRI's ``apply_mask``: the ``+ 0.0`` turns -0.0 into 0.0) over the last axis."""
    if isinstance(kspace, np.ndarray):
        return kspace * np.asarray(mask, dtype=np.float32) + 0.0
    return kspace * mask + 0.0


def kspace_to_tensor(kspace: np.ndarray) -> torch.Tensor:
    """Complex ``(..., H, W)`` numpy k-space -> real tensor with (real, imag) as a new first axis ``(2, ..., H, W)``."""
    t = torch.from_numpy(np.ascontiguousarray(kspace, dtype=np.complex64))
    return torch.stack([t.real, t.imag], 0).float()


def ifft2c(kspace: np.ndarray) -> np.ndarray:
    """Centred orthonormal inverse 2D FFT over the last two axes (fastMRI ``ifft2c``)."""
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def fft2c(image: np.ndarray) -> np.ndarray:
    """Centred orthonormal 2D FFT over the last two axes (fastMRI ``fft2c``)."""
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def zero_filled(kspace: np.ndarray) -> np.ndarray:
    """Magnitude zero-filled image: ``|ifft2c(k)|`` single-coil, root-sum-of-squares over coils multi-coil."""
    img = ifft2c(kspace)
    if kspace.ndim == 4:
        return np.sqrt((np.abs(img) ** 2).sum(1)).astype(np.float32)
    return np.abs(img).astype(np.float32)


def kspace_scale(kspace: np.ndarray) -> float:
    """invdiff's fastMRI intensity normalisation: the maximum of the zero-filled magnitude (:func:`zero_filled`,
    root-sum-of-squares over coils) over all the slices given. ``invdiff reconstruct`` divides a volume's measured
    k-space by it (so the prior sees images of maximum about 1), and ``train-prior --data fastmri:`` divides every
    training slice by the value of its fully sampled volume (:func:`volume_scale`): one definition for both."""
    return float(zero_filled(kspace).max())


def kspace_noise_std(kspace: np.ndarray, corner: float = 0.15, edge: float = 0.1) -> float:
    r"""Thermal noise std per real component of measured k-space ``(slices, [coils,] H, W)`` (unmeasured samples
    exactly zero). Two robust estimates (1.4826 x median absolute deviation, real and imaginary parts pooled, per
    coil, combined as :math:`\sqrt{\mathrm{mean}_c \sigma_c^2}`, the RSS target's noise power being their sum),
    each biased upwards only by object signal, so the smaller one is returned:

    - the measured samples in the k-space corners (outer ``corner`` fraction of both axes: the highest spatial
      frequencies, where the object's signal is weakest);
    - the zero-filled coil images in the outer ``edge`` fraction of the readout axis H (fastMRI oversamples the
      readout 2x: the field of view's ends are air), whose per-pixel noise variance is sigma^2 times the measured
      fraction of k-space (orthonormal FFT).

    Image-domain coil noise has the k-space std (orthonormal FFT). NaN when neither can be estimated."""
    k = np.asarray(kspace)
    k = k.reshape(-1, 1, *k.shape[-2:]) if k.ndim == 3 else k
    H, W = k.shape[-2:]

    def robust_var(v):
        parts = np.concatenate([v.real.ravel(), v.imag.ravel()])
        return (1.4826 * np.median(np.abs(parts - np.median(parts)))) ** 2

    rh, rw, re = (max(1, int(round(f * n))) for f, n in ((corner, H), (corner, W), (edge, H)))
    rows, cols, ends = np.r_[0:rh, H - rh:H], np.r_[0:rw, W - rw:W], np.r_[0:re, H - re:H]
    var_k, var_i = [], []
    for c in range(k.shape[1]):
        kc = k[:, c]
        v = kc[:, rows][:, :, cols].ravel()
        v = v[v != 0]
        if v.size >= 64:
            var_k.append(robust_var(v))
        frac = np.count_nonzero(kc) / kc.size
        if frac > 0 and 2 * re < H:
            var_i.append(robust_var(ifft2c(kc)[:, ends]) / frac)
    est = [np.sqrt(np.mean(v)) for v in (var_k, var_i) if len(v) == k.shape[1]]
    return float(min(est)) if est else float("nan")


def rss_noise_floor(sigma: float, n_coils: int) -> float:
    r"""The noise floor of a root-sum-of-squares target: :math:`F = \sigma\sqrt 2\,\Gamma(C+\tfrac12)/\Gamma(C)`, the
    mean of :math:`\sqrt{\sum_{c=1}^{C} |n_c|^2}` for complex Gaussian coil noise of std ``sigma`` per real
    component (a chi distribution with 2C degrees of freedom; C = 1 is the Rayleigh floor of a single-coil
    magnitude). Where the noise-free RSS is :math:`\lambda`, :math:`E[\mathrm{RSS}] \approx \sqrt{\lambda^2 + F^2}`
    (exact at 0 and as :math:`\lambda \to \infty`; within 0.02 sigma for 15 coils, 0.09 sigma for 1 coil:
    the noncentral chi mean).

    >>> round(rss_noise_floor(1.0, 1), 4)        # Rayleigh mean sqrt(pi / 2)
    1.2533
    """
    from scipy.special import gammaln

    return float(sigma * np.sqrt(2.0) * np.exp(gammaln(n_coils + 0.5) - gammaln(n_coils)))


def volume_scale(path) -> float:
    """:func:`kspace_scale` of a whole fastMRI volume, read one slice at a time (memory: one slice)."""
    info = inspect_fastmri(path)
    with _open_h5(info.path) as f:
        ks = f["kspace"]
        return max(kspace_scale(np.asarray(ks[s])[None]) for s in range(info.num_slices))


#: coil combinations for training images (:func:`coil_combine`)
COMBINE_CHOICES = ("rss-phase", "espirit")


def coil_combine(kspace: np.ndarray, method: str = "rss-phase", calib: int = 24) -> np.ndarray:
    r"""Complex image (H, W) of one slice's fully sampled k-space: single-coil ``(H, W)`` -> ``ifft2c``;
    multi-coil ``(N, H, W)``:

    - ``"rss-phase"``: magnitude :math:`\sqrt{\sum_n |x_n|^2}` (root-sum-of-squares, fastMRI's target) with the
      phase of the coil combination :math:`\sum_n \bar s_n x_n` whose sensitivities :math:`s_n` are the
      low-resolution coil images (the central ``calib`` x ``calib`` k-space) divided by their RSS and by the phase of
      coil 0's low-resolution image (so the object's own phase is kept, relative to coil 0's: without that
      reference the low-resolution phase of the object would cancel);
    - ``"espirit"``: :math:`\sum_n \bar s_n x_n` with ESPIRiT maps (sigpy, :func:`invdiff.operators.espirit_maps`).
    """
    check_choice("method", method, COMBINE_CHOICES)
    imgs = ifft2c(kspace)
    if kspace.ndim == 2:
        return imgs.astype(np.complex64)
    if method == "espirit":
        from ...operators import espirit_maps

        maps = espirit_maps(kspace_to_tensor(kspace), calib_width=calib).numpy()
        return (np.conj(maps) * imgs).sum(0).astype(np.complex64)
    H, W = kspace.shape[-2:]
    lowk = np.zeros_like(kspace)
    ch, cw = min(calib, H) // 2, min(calib, W) // 2
    lowk[:, H // 2 - ch:H // 2 + ch, W // 2 - cw:W // 2 + cw] = kspace[:, H // 2 - ch:H // 2 + ch, W // 2 - cw:W // 2 + cw]
    low = ifft2c(lowk)
    ref = np.exp(-1j * np.angle(low[0]))                      # coil 0 is the phase reference (keeps the object phase)
    sens = low * ref / (np.sqrt((np.abs(low) ** 2).sum(0)) + 1e-12)
    phase = np.angle((np.conj(sens) * imgs).sum(0))
    rss = np.sqrt((np.abs(imgs) ** 2).sum(0))
    return (rss * np.exp(1j * phase)).astype(np.complex64)


def training_image(path, slice_index: int, *, size: int | None = None, method: str = "rss-phase",
                   scale: float | None = None) -> np.ndarray:
    """One training image of a fastMRI file: :func:`coil_combine` of the slice's k-space, centre-cropped (or
    zero-padded) to ``size`` x ``size`` (default: the file's reconstruction size), divided by ``scale`` (default:
    :func:`volume_scale` of the file). Reads one slice; complex64 (size, size)."""
    info = inspect_fastmri(path)
    with _open_h5(info.path) as f:
        k = np.asarray(f["kspace"][int(slice_index)]).astype(np.complex64, copy=False)
    z = coil_combine(k, method)
    h, w = (size, size) if size else info.recon_size
    H, W = z.shape
    if H < h or W < w:                                        # zero-pad to at least the crop
        ph, pw = max(h - H, 0), max(w - W, 0)
        z = np.pad(z, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))
    from ...metrics import center_crop

    z = center_crop(z, (h, w))
    s = volume_scale(path) if scale is None else scale
    return (z / max(s, 1e-20)).astype(np.complex64)


# ------------------------------------------------------------------------------------------------
# slice dataset
# ------------------------------------------------------------------------------------------------
def find_h5(paths: str | os.PathLike | Iterable) -> list[Path]:
    """Sorted ``*.h5`` files of a folder, or the given files."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix in (".h5", ".hdf5") and not q.name.startswith("."))
        elif p.exists():
            out.append(p)
        else:
            fail("root", "an existing fastMRI file or folder", str(p), FileNotFoundError)
    return out


class FastMRISliceDataset(torch.utils.data.Dataset):
    """Slices of fastMRI volumes: ``(kspace, target, metadata)``.

    - ``kspace``: float32 ``(2, H, W)`` (single-coil) or ``(2, N, H, W)`` (multi-coil), (real, imag) first;
      masked when the file is a test file (its own ``mask``) or ``mask_kind`` is given (per-file seeded
      columns, :func:`column_mask`; ``"auto"``: fastMRI's own mask for the file's anatomy).
    - ``target``: float32 ``(h, w)`` (``reconstruction_esc`` / ``_rss``), or None for test files.
    - ``metadata``: ``fname``, ``slice``, ``challenge``, ``mask`` ((W,) tensor or None), ``acceleration``,
      ``num_low_frequency``, ``padding``, ``recon_size``, ``max`` and the file attributes under ``attrs``.

    Files are checked (structure only) at construction; each item reads one slice.

    Args:
        root: a folder of ``.h5`` files, a file, or a list of files.
        mask_kind: None (k-space as stored), "auto" (fastMRI's mask for the anatomy: "fastmri-random" knee,
            "fastmri-equispaced-fraction" brain), a fastMRI family ("fastmri-random", "fastmri-equispaced",
            "fastmri-equispaced-fraction", "fastmri-magic", "fastmri-magic-fraction") or one of invdiff's
            ("equispaced", "random", "gaussian"); see :data:`MASK_CHOICES`.
        acceleration, center_fraction: mask parameters (fastMRI's pairing 4x / 8 %, 8x / 4 % by default).
        seed: None = per-file seed (fastMRI's ``tuple(map(ord, fname))`` for the fastMRI families, CRC-32 for
            invdiff's), else this int seed for every file.
    """

    def __init__(self, root, *, mask_kind: str | None = None, acceleration: float = 4,
                 center_fraction: float | None = None, seed: int | None = None):
        self.files = find_h5(root)
        self.infos = [inspect_fastmri(p) for p in self.files]
        if mask_kind is not None:
            check_choice("mask_kind", mask_kind, MASK_CHOICES)
        self.mask_kind, self.acceleration, self.center_fraction, self.seed = mask_kind, acceleration, center_fraction, seed
        self.index = [(i, s) for i, info in enumerate(self.infos) for s in range(info.num_slices)]
        self._masks: dict[int, torch.Tensor | None] = {}

    def __len__(self) -> int:
        return len(self.index)

    def _mask(self, i: int, file_mask) -> torch.Tensor | None:
        if i not in self._masks:
            if file_mask is None and self.mask_kind is None:
                self._masks[i] = None
            else:
                self._masks[i] = column_mask(self.infos[i], self.mask_kind or "auto", self.acceleration,
                                             self.center_fraction, self.seed, file_mask=file_mask)
        return self._masks[i]

    def __getitem__(self, idx: int):
        i, s = self.index[idx]
        vol = read_fastmri(self.files[i], slices=[s])
        info = vol.info
        mask = self._mask(i, vol.mask)
        k = kspace_to_tensor(vol.kspace[0])
        if mask is not None and vol.mask is None:
            k = apply_mask(k, mask)
        target = torch.from_numpy(vol.target[0]) if vol.target is not None else None
        meta = {"fname": info.fname, "slice": s, "challenge": info.challenge, "mask": mask,
                "acceleration": info.attrs.get("acceleration", self.acceleration if mask is not None else None),
                "num_low_frequency": info.attrs.get("num_low_frequency"), "padding": info.padding,
                "recon_size": info.recon_size, "max": info.attrs.get("max"), "attrs": info.attrs}
        return k, target, meta



r"""fastMRI HDF5 volumes: read (single-/multi-coil, train/val/test layouts), mask, write reconstructions, evaluate.

File layout (``facebookresearch/fastMRI``, ``fastmri/data/README.md`` and ``mri_data.py``):

==========================  ===========================================================================
key                         content
==========================  ===========================================================================
``kspace``                  complex, ``(slices, H, W)`` single-coil or ``(slices, coils, H, W)`` multi-coil
``reconstruction_esc``      single-coil target, ``(slices, h, w)`` (320 x 320 for knee)
``reconstruction_rss``      root-sum-of-squares target, ``(slices, h, w)``
``mask``                    test/challenge files only: ``(W,)`` sampled columns (k-space already masked)
``ismrmrd_header``          XML: ``encodedSpace/matrixSize``, ``reconSpace/matrixSize``,
                            ``encodingLimits/kspace_encoding_step_1/{center, maximum}``
attributes                  ``acquisition``, ``max``, ``norm``, ``patient_id``; test files also
                            ``acceleration`` and ``num_low_frequency``
==========================  ===========================================================================

Conventions copied from fastMRI:

- the phase-encoding axis is the last one (W): masks are 1-D over columns (see :mod:`invdiff.operators.masks`);
- padding columns ``[0, padding_left)`` and ``[padding_right, W)`` are never sampled (``VarNetDataTransform``:
  the mask is zeroed there, the test files' own masks too), with ``padding_left = enc_y // 2 - center`` and
  ``padding_right = padding_left + maximum + 1`` from the header, unless the file has ``padding_left`` /
  ``padding_right`` attributes: those win, each on its own (``mri_data.py`` merges the file attributes over
  the header values);
- masking is ``kspace * mask + 0.0`` (the ``+ 0.0`` removes the sign of the zeros, through which the 2019
  test set leaked information);
- masks are fastMRI's own by default, bit for bit (:mod:`invdiff.operators.fastmri_masks`): knee files
  get the knee challenge's ``RandomMaskFunc`` (``"fastmri-random"``), brain files the brain challenge's
  ``EquispacedMaskFractionFunc`` (``"fastmri-equispaced-fraction"``), see :func:`default_mask_kind`;
- masks are deterministic per file as in fastMRI's validation/test transforms: numpy's ``RandomState`` seeded
  with ``tuple(map(ord, fname))`` (:func:`invdiff.operators.fastmri_seed`) for the fastMRI families; invdiff's
  own families (``"equispaced"``, ``"random"``, ``"gaussian"``) keep their CRC-32 seed
  (:func:`invdiff.operators.seed_for_file`);
- the target key is ``reconstruction_esc`` for single-coil and ``reconstruction_rss`` for multi-coil files;
- submissions: one h5 file per volume, same file name, one dataset ``reconstruction`` ``(slices, h, w)``
  (``fastmri.save_reconstructions``), scored by ``fastmri/evaluate.py`` (:func:`evaluate`, which uses
  :func:`invdiff.metrics.fastmri_metrics`: volume NMSE / PSNR with ``data_range = target.max()``, SSIM averaged
  over slices, after a centre crop to the target width).

k-space tensors follow invdiff/deepinv: complex as 2 real channels first, ``(2, H, W)`` or ``(2, N, H, W)``,
with the centred orthonormal FFT (fastMRI ``fft2c``).

Bad files (not HDF5, truncated, no ``kspace``, wrong dimensionality, non-complex or NaN k-space) raise one
:class:`DataFileError` naming the file and the problem.

Example:
    >>> import tempfile, pathlib
    >>> from invdiff.datasets.synthetic_fastmri import write_synthetic_fastmri
    >>> p = write_synthetic_fastmri(pathlib.Path(tempfile.mkdtemp()) / "file_demo.h5", n_slices=2, coils=4,
    ...                             shape=(32, 32))
    >>> vol = read_fastmri(p); vol.challenge, vol.kspace.shape, vol.target.shape
    ('multicoil', (2, 4, 32, 32), (2, 32, 32))
"""
from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from .._validate import check_choice, fail

ISMRMRD_NS = "http://www.ismrm.org/ISMRMRD"
TARGET_KEYS = {"singlecoil": "reconstruction_esc", "multicoil": "reconstruction_rss"}
#: column masks for fastMRI files: "auto" (fastMRI's for the anatomy), fastMRI's families, invdiff's 1D families
MASK_CHOICES = ("auto", "fastmri-random", "fastmri-equispaced", "fastmri-equispaced-fraction", "fastmri-magic",
                "fastmri-magic-fraction", "equispaced", "random", "gaussian")


class DataFileError(ValueError):
    """A data file that cannot be used: the message names the file and the problem."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


# ------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------
def _open_h5(path):
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DataFileError(path, "no such file")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DataFileError(path, f"cannot be read as HDF5 (corrupt or truncated file?): {e}") from None


def parse_ismrmrd_header(xml: str | bytes) -> dict:
    """Sizes fastMRI reads from the ISMRMRD XML header (``mri_data.py``).

    Returns ``{"encoding_size": (x, y, z), "recon_size": (x, y, z), "padding_left": int, "padding_right": int}``.
    x is the readout axis (H), y the phase-encoding axis (W).
    """
    if isinstance(xml, bytes):
        xml = xml.decode("utf-8", errors="replace")
    root = ET.fromstring(xml)
    ns = {"i": ISMRMRD_NS}

    def q(path):
        el = root.find("/".join(f"i:{p}" for p in path), ns)
        if el is None or el.text is None:
            raise KeyError("/".join(path))
        return int(float(el.text))

    enc = ("encoding", "encodedSpace", "matrixSize")
    rec = ("encoding", "reconSpace", "matrixSize")
    lim = ("encoding", "encodingLimits", "kspace_encoding_step_1")
    enc_size = tuple(q(enc + (a,)) for a in "xyz")
    recon_size = tuple(q(rec + (a,)) for a in "xyz")
    center, maximum = q(lim + ("center",)), q(lim + ("maximum",)) + 1
    padding_left = enc_size[1] // 2 - center
    return {"encoding_size": enc_size, "recon_size": recon_size, "padding_left": padding_left,
            "padding_right": padding_left + maximum}


def _attrs(h5) -> dict:
    out = {}
    for k, v in h5.attrs.items():
        if isinstance(v, bytes):
            v = v.decode("utf-8", errors="replace")
        elif isinstance(v, np.generic):
            v = v.item()
        elif isinstance(v, np.ndarray):
            v = v.tolist()
        out[k] = v
    return out


@dataclass
class FastMRIInfo:
    """What a fastMRI file holds, read without loading the k-space (see :func:`inspect_fastmri`)."""

    path: Path
    kspace_shape: tuple[int, ...]
    challenge: str                       # "singlecoil" | "multicoil"
    target_key: str | None               # None for test files
    target_shape: tuple[int, ...] | None
    has_mask: bool
    attrs: dict = field(default_factory=dict)
    header: dict = field(default_factory=dict)

    @property
    def fname(self) -> str:
        return self.path.name

    @property
    def num_slices(self) -> int:
        return self.kspace_shape[0]

    @property
    def coils(self) -> int:
        return self.kspace_shape[1] if self.challenge == "multicoil" else 1

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.kspace_shape[-2:])

    @property
    def padding(self) -> tuple[int, int] | None:
        """``(padding_left, padding_right)``: the file attributes where present (each wins on its own, as in
        fastMRI's ``mri_data.py``), else the header's; None when neither has them. A missing side is open
        (0 on the left, W on the right)."""
        left = self.attrs.get("padding_left", self.header.get("padding_left"))
        right = self.attrs.get("padding_right", self.header.get("padding_right"))
        if left is None and right is None:
            return None
        return (0 if left is None else left), (self.shape[1] if right is None else right)

    @property
    def recon_size(self) -> tuple[int, int]:
        """Size of the reconstruction to submit: the target's, else the header's ``reconSpace`` (fastMRI's
        zero-filled baseline rule), else the centred square of the image's width."""
        H, W = self.shape
        if self.target_shape is not None:
            return tuple(self.target_shape[-2:])
        if "recon_size" in self.header:
            crop = tuple(self.header["recon_size"][:2])
            if W < crop[1]:  # fastmri_examples/zero_filled: narrower images crop to a square of their width
                crop = (W, W)
            return (min(crop[0], H), min(crop[1], W))
        s = min(H, W)
        return (s, s)


def inspect_fastmri(path) -> FastMRIInfo:
    """Check a fastMRI file's structure and read its metadata (no k-space values are loaded).

    Raises :class:`DataFileError` for a file that is not HDF5, has no ``kspace`` dataset, or whose k-space is
    not complex ``(slices, [coils], H, W)``.
    """
    path = Path(path)
    with _open_h5(path) as f:
        try:
            keys = sorted(f.keys())
        except Exception as e:  # h5py raises assorted errors on damaged files
            raise DataFileError(path, f"cannot list the HDF5 contents (corrupt file?): {e}") from None
        if "kspace" not in keys:
            raise DataFileError(path, f"no 'kspace' dataset, so not a fastMRI file (found keys {keys})")
        ks = f["kspace"]
        shape = tuple(int(s) for s in ks.shape)
        if len(shape) not in (3, 4):
            raise DataFileError(path, f"'kspace' has shape {shape}; expected (slices, H, W) single-coil or "
                                      "(slices, coils, H, W) multi-coil")
        if min(shape) < 1:
            raise DataFileError(path, f"'kspace' has an empty axis, shape {shape}")
        if ks.dtype.kind != "c":
            raise DataFileError(path, f"'kspace' has dtype {ks.dtype}; expected complex (fastMRI stores "
                                      "complex64)")
        challenge = "multicoil" if len(shape) == 4 else "singlecoil"
        target_key = None
        for key in (TARGET_KEYS[challenge], "reconstruction_rss", "reconstruction_esc"):
            if key in keys:
                target_key = key
                break
        target_shape = None
        if target_key is not None:
            target_shape = tuple(int(s) for s in f[target_key].shape)
            if len(target_shape) != 3 or target_shape[0] != shape[0]:
                raise DataFileError(path, f"'{target_key}' has shape {target_shape}; expected ({shape[0]}, h, w) "
                                          "like the k-space slices")
        has_mask = "mask" in keys
        if has_mask:
            ms = tuple(f["mask"].shape)
            if int(np.prod(ms)) != shape[-1]:
                raise DataFileError(path, f"'mask' has shape {ms}; expected ({shape[-1]},) (one entry per k-space "
                                          "column)")
        header = {}
        if "ismrmrd_header" in keys:
            try:
                header = parse_ismrmrd_header(f["ismrmrd_header"][()])
            except (ET.ParseError, KeyError, ValueError) as e:
                raise DataFileError(path, f"unreadable 'ismrmrd_header' XML ({type(e).__name__}: {e})") from None
        return FastMRIInfo(path, shape, challenge, target_key, target_shape, has_mask, _attrs(f), header)


@dataclass
class FastMRIVolume:
    """A fastMRI volume in memory: numpy k-space (complex64), target, test mask, attributes, header sizes."""

    info: FastMRIInfo
    kspace: np.ndarray                    # complex64 (S, [N], H, W)
    target: np.ndarray | None             # float32 (S, h, w) or None (test files)
    mask: np.ndarray | None               # float32 (W,) for test files, else None

    def __getattr__(self, item):          # path, challenge, fname, attrs, header, recon_size, ...
        if item == "info":
            raise AttributeError(item)
        return getattr(self.info, item)


def read_fastmri(path, slices: slice | Sequence[int] | None = None) -> FastMRIVolume:
    """Read a fastMRI volume (all slices, or ``slices``): k-space, target, test mask, attributes and header.

    Raises :class:`DataFileError` (see :func:`inspect_fastmri`), also for NaN/Inf k-space or a read error in the
    middle of the data (a truncated file).
    """
    info = inspect_fastmri(path)
    sel = slice(None) if slices is None else slices
    if not isinstance(sel, slice):
        sel = sorted(int(s) for s in sel)
    with _open_h5(info.path) as f:
        try:
            k = np.asarray(f["kspace"][sel]).astype(np.complex64, copy=False)
            target = np.asarray(f[info.target_key][sel], dtype=np.float32) if info.target_key else None
            mask = np.asarray(f["mask"][()]).reshape(-1).astype(np.float32) if info.has_mask else None
        except (OSError, RuntimeError, KeyError) as e:
            raise DataFileError(info.path, f"reading the data failed (corrupt or truncated file?): {e}") from None
    bad = int((~np.isfinite(k.view(np.float32))).sum())
    if bad:
        raise DataFileError(info.path, f"'kspace' contains {bad} NaN/Inf values")
    if target is not None and not np.isfinite(target).all():
        raise DataFileError(info.path, f"'{info.target_key}' contains NaN/Inf values")
    if mask is not None and not np.isin(mask, (0.0, 1.0)).all():
        raise DataFileError(info.path, "'mask' is not a 0/1 column mask")
    return FastMRIVolume(info, k, target, mask)


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
    from ..operators import FASTMRI_MASK_KINDS, fastmri_seed, make_mask, seed_for_file, zero_padding

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
        from ..operators import espirit_maps

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
    from ..metrics import center_crop

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


# ------------------------------------------------------------------------------------------------
# writing and evaluation
# ------------------------------------------------------------------------------------------------
def write_reconstruction(path, reconstruction, attrs: dict | None = None, *, extra: dict | None = None) -> Path:
    """Write one volume's reconstruction in the fastMRI submission format, atomically.

    ``reconstruction``: magnitude ``(slices, h, w)`` (numpy or torch), stored as float32 dataset
    ``reconstruction``; ``attrs`` (numbers, strings) become file attributes; ``extra`` maps names to more arrays
    (e.g. ``reconstruction_std``; ``evaluate.py`` reads only ``reconstruction``). The file appears only once
    complete (temporary file + ``os.replace``).
    """
    from ..io_utils import atomic_write_h5

    r = reconstruction.detach().cpu().numpy() if isinstance(reconstruction, torch.Tensor) else np.asarray(reconstruction)
    if r.ndim != 3 or np.iscomplexobj(r):
        fail("reconstruction", "a real magnitude volume (slices, h, w)", f"array of shape {r.shape}, dtype {r.dtype}")
    if not np.isfinite(r).all():
        fail("reconstruction", "finite values", f"array of shape {r.shape} with NaN/Inf")
    def fill(f):
        f.create_dataset("reconstruction", data=r.astype(np.float32))
        for k, v in (extra or {}).items():
            f.create_dataset(k, data=np.asarray(v, dtype=np.float32))
        for k, v in (attrs or {}).items():
            if v is None:
                continue
            f.attrs[k] = v if isinstance(v, (int, float, str, np.number)) else str(v)

    return atomic_write_h5(path, fill)


def save_reconstructions(reconstructions: dict, out_dir) -> list[Path]:
    """``fastmri.save_reconstructions``: ``{fname: (slices, h, w)}`` -> ``out_dir/fname`` h5 files."""
    return [write_reconstruction(Path(out_dir) / fname, r) for fname, r in reconstructions.items()]


def read_reconstruction(path) -> np.ndarray:
    """The ``reconstruction`` dataset of a submission file (raises :class:`DataFileError` if unreadable)."""
    with _open_h5(path) as f:
        if "reconstruction" not in f:
            raise DataFileError(path, f"no 'reconstruction' dataset (found keys {sorted(f.keys())})")
        return np.asarray(f["reconstruction"][()])


def evaluate(targets, predictions_dir, challenge: str | None = None, *, acceleration=None,
             acquisition: str | None = None) -> tuple[dict, dict]:
    """``fastmri/evaluate.py``: score every target file that has a prediction of the same name.

    For each target file (a folder of h5 files or a list): skip it if ``acquisition`` / ``acceleration`` are
    given and differ from its attributes; read the target (``reconstruction_rss`` for ``challenge="multicoil"``,
    ``reconstruction_esc`` for ``"singlecoil"``; by default the file's own challenge), the prediction's
    ``reconstruction``, and compute :func:`invdiff.metrics.fastmri_metrics` (centre crop to the target width).
    Target files without any target (test files) and targets without a prediction are skipped.

    Returns ``(per_volume, summary)``: ``{fname: {"NMSE", "PSNR", "SSIM", "MSE"}}`` and
    :func:`invdiff.metrics.fastmri_summary` (``{metric: (mean, 2 * std, n)}``; fastMRI prints mean +/- 2 std).
    """
    from ..metrics import fastmri_metrics, fastmri_summary

    if challenge is not None:
        check_choice("challenge", challenge, tuple(TARGET_KEYS))
    pred_dir = Path(predictions_dir)
    per_volume = {}
    for tpath in find_h5(targets):
        info = inspect_fastmri(tpath)
        if acquisition is not None and info.attrs.get("acquisition") != acquisition:
            continue
        if acceleration is not None and info.attrs.get("acceleration") != acceleration:
            continue
        key = TARGET_KEYS[challenge or info.challenge]
        if info.target_key is None:      # test/challenge files have no target
            continue
        with _open_h5(tpath) as f:
            if key not in f:
                raise DataFileError(tpath, f"no '{key}' target to evaluate against (challenge {challenge!r})")
            target = np.asarray(f[key][()])
        ppath = pred_dir / tpath.name
        if not ppath.is_file():
            continue
        per_volume[tpath.name] = fastmri_metrics(read_reconstruction(ppath), target)
    summary = fastmri_summary(list(per_volume.values())) if per_volume else {}
    return per_volume, summary


__all__ = ["DataFileError", "FastMRIInfo", "FastMRIVolume", "FastMRISliceDataset", "inspect_fastmri",
           "read_fastmri", "parse_ismrmrd_header", "column_mask", "default_mask_kind", "anatomy", "MASK_CHOICES",
           "KNEE_ACQUISITIONS", "apply_mask", "kspace_to_tensor", "fft2c", "ifft2c", "zero_filled", "find_h5",
           "write_reconstruction", "save_reconstructions", "read_reconstruction", "evaluate", "TARGET_KEYS"]

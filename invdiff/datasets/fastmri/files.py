"""fastMRI files: the HDF5 layout, the ISMRMRD header, :func:`inspect_fastmri` (header only) and
:func:`read_fastmri` (see :mod:`invdiff.datasets.fastmri` for the conventions)."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np


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



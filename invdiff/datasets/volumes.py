r"""Tomography and image data in and out: NIfTI, DICOM series, sinogram files, plain images; geometry kept.

Array convention: a volume is ``data`` float32 ``(D, H, W)`` (slice, row, column) plus a 4 x 4 ``affine`` mapping
voxel indices ``(i, j, k) = (column, row, slice)`` to patient coordinates in millimetres, RAS+ (NIfTI's
convention; DICOM's LPS positions are converted). So ``data[k, j, i]`` is the voxel at
``affine @ (i, j, k, 1)``, NIfTI arrays are ``data.transpose(2, 1, 0)``, and writing with the input's affine puts
the reconstruction exactly where the input was.

- :func:`read_nifti` / :func:`write_nifti` (nibabel; ``.nii`` or ``.nii.gz``);
- :func:`read_dicom_series` (pydicom): slices sorted by their position along the slice normal
  (``ImagePositionPatient`` . normal), else by ``InstanceNumber``; rows, columns, pixel spacing, orientation
  and slice spacing must agree, else one "mismatched DICOM series" error; ``RescaleSlope/Intercept`` applied
  (CT in Hounsfield units); :func:`write_dicom_series` writes a Secondary-Capture series a viewer can open;
- :func:`simulate_sinogram`: sparse-view / limited-angle parallel-beam sinograms of a volume (slice by slice,
  :class:`invdiff.operators.CT`, raw Radon scale); :func:`write_sinogram` / :func:`read_sinogram` for
  ``.h5`` (dataset ``sinogram`` + attributes ``angles`` (degrees), ``image_size``, optional ``affine``) and
  ``.npy`` (the array only: angles and size come from the caller);
- :func:`read_image` / :func:`write_array`: ``.npy`` arrays and 8/16-bit ``.png`` images.

Every writer is atomic (temporary file or folder, then ``os.replace``): an output exists only when complete.
Bad files raise :class:`~invdiff.datasets.fastmri.DataFileError` naming the file and the problem.
"""
from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .._validate import check_positive, fail
from ..io_utils import atomic_path, atomic_write_h5, atomic_write_npy, disk_full_error, is_disk_full
from .fastmri import DataFileError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = (".png", ".npy")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Volume:
    """A volume with its geometry: ``data`` (D, H, W) float32, ``affine`` (4, 4) voxel (i, j, k) -> RAS mm."""

    data: np.ndarray
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    source: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along (D, H, W) = (slice, row, column)."""
        dx, dy, dz = np.linalg.norm(self.affine[:3, :3], axis=0)
        return float(dz), float(dy), float(dx)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)


def is_nifti(path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def stem(path) -> str:
    """File name without its data suffix (``.nii.gz`` counts as one)."""
    name = Path(path).name
    for suf in (".nii.gz",) + NIFTI_SUFFIXES + (".h5", ".hdf5", ".npy", ".png", ".dcm"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


# ------------------------------------------------------------------------------------------------
# NIfTI
# ------------------------------------------------------------------------------------------------
def read_nifti(path) -> Volume:
    """A NIfTI volume: data (D, H, W) = array (i, j, k) transposed, affine from the header (sform/qform)."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise DataFileError(path, "no such file")
    try:
        img = nib.load(str(path))
        arr = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as e:  # nibabel raises ImageFileError, EOFError, zlib errors ... on damaged files
        raise DataFileError(path, f"cannot be read as NIfTI (corrupt or truncated file?): {type(e).__name__}: {e}") from None
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise DataFileError(path, f"NIfTI data has shape {arr.shape}; expected a 2D image or a 3D volume "
                                  "(4D time series are not supported)")
    if not np.isfinite(arr).all():
        raise DataFileError(path, "NIfTI data contains NaN/Inf values")
    return Volume(np.ascontiguousarray(arr.transpose(2, 1, 0)), np.asarray(img.affine, dtype=np.float64), str(path),
                  {"format": "nifti"})


def write_nifti(path, data, affine=None) -> Path:
    """Write ``data`` (D, H, W) (or (H, W)) with ``affine`` as NIfTI (gzipped for ``.nii.gz``), atomically."""
    import nibabel as nib

    path = Path(path)
    if not is_nifti(path):
        fail("path", "a .nii or .nii.gz file name", str(path))
    arr = np.asarray(data, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        fail("data", "a volume (D, H, W) or an image (H, W)", f"array of shape {arr.shape}")
    A = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    if A.shape != (4, 4):
        fail("affine", "a 4 x 4 matrix", f"array of shape {A.shape}")
    img = nib.Nifti1Image(np.ascontiguousarray(arr.transpose(2, 1, 0)), A)
    img.header.set_xyzt_units("mm")
    blob = img.to_bytes()
    if str(path).lower().endswith(".gz"):
        blob = gzip.compress(blob, compresslevel=6, mtime=0)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(blob)
    return path


def nifti_slice_count(path, axis: int = 0) -> int:
    """Number of slices of a NIfTI volume along ``axis`` of its (D, H, W) data (reads the header only)."""
    import nibabel as nib

    shape = tuple(nib.load(str(path)).shape[:3]) + (1,) * max(0, 3 - len(nib.load(str(path)).shape))
    return int(shape[2 - axis])                    # (D, H, W) = array (i, j, k) transposed


def read_nifti_slice(path, index: int, axis: int = 0) -> np.ndarray:
    """Slice ``index`` along ``axis`` of the (D, H, W) data of :func:`read_nifti`, float32 2D, reading only that
    slice through nibabel's array proxy (gzip streams are decompressed up to it, never held whole)."""
    import nibabel as nib

    proxy = nib.load(str(path)).dataobj
    sel = [slice(None)] * 3
    sel[2 - axis] = int(index)
    if len(proxy.shape) == 4:
        sel.append(0)
    arr = np.asarray(proxy[tuple(sel)], dtype=np.float32)
    return np.ascontiguousarray(arr.T)


# ------------------------------------------------------------------------------------------------
# DICOM
# ------------------------------------------------------------------------------------------------
def dicom_files(folder) -> list[Path]:
    """The files of a folder that look like DICOM (``.dcm`` suffix, or a 'DICM' preamble marker)."""
    out = []
    for p in sorted(Path(folder).iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        if p.suffix.lower() == ".dcm":
            out.append(p)
        elif p.suffix == "":
            try:
                with open(p, "rb") as f:
                    f.seek(128)
                    if f.read(4) == b"DICM":
                        out.append(p)
            except OSError:
                pass
    return out


def _mismatch(where, what) -> DataFileError:
    return DataFileError(where, f"mismatched DICOM series: {what}")


def read_dicom_series(path_or_files) -> Volume:
    """Read a DICOM series (a folder or a list of files) into a :class:`Volume` (values after rescale).

    Slices are sorted by position along the slice normal when every file has ``ImagePositionPatient`` and
    ``ImageOrientationPatient``, else by ``InstanceNumber``. All slices must share rows/columns, pixel spacing and
    orientation, belong to one series, and be evenly spaced; otherwise a "mismatched DICOM series" error names the
    first offending file.
    """
    import pydicom

    if isinstance(path_or_files, (str, os.PathLike)) and Path(path_or_files).is_dir():
        where = Path(path_or_files)
        files = dicom_files(where)
    elif isinstance(path_or_files, (str, os.PathLike)):
        where = Path(path_or_files)
        files = [where]
    else:
        files = [Path(p) for p in path_or_files]
        where = files[0].parent if files else Path(".")
    if not files:
        raise DataFileError(where, "no DICOM files (*.dcm) found")
    slices = []
    for f in files:
        try:
            ds = pydicom.dcmread(str(f))
            px = ds.pixel_array.astype(np.float32)
        except Exception as e:
            raise DataFileError(f, f"cannot be read as a DICOM image (corrupt file?): {type(e).__name__}: {e}") from None
        if px.ndim != 2:
            raise DataFileError(f, f"DICOM pixel data has shape {px.shape}; expected one 2D slice per file")
        px = px * float(getattr(ds, "RescaleSlope", 1.0) or 1.0) + float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
        slices.append((f, ds, px))
    f0, d0, p0 = slices[0]
    uid0 = getattr(d0, "SeriesInstanceUID", None)
    sp0 = [float(v) for v in getattr(d0, "PixelSpacing", [1.0, 1.0])]
    iop0 = [float(v) for v in getattr(d0, "ImageOrientationPatient", [1, 0, 0, 0, 1, 0])]
    for f, ds, px in slices[1:]:
        if getattr(ds, "SeriesInstanceUID", None) != uid0:
            raise _mismatch(f, f"SeriesInstanceUID {getattr(ds, 'SeriesInstanceUID', None)} differs from {uid0} "
                               f"({f0.name}); put one series per folder")
        if px.shape != p0.shape:
            raise _mismatch(f, f"slice shape {px.shape} differs from {p0.shape} ({f0.name})")
        sp = [float(v) for v in getattr(ds, "PixelSpacing", [1.0, 1.0])]
        if not np.allclose(sp, sp0, rtol=1e-4, atol=1e-6):
            raise _mismatch(f, f"PixelSpacing {sp} differs from {sp0} ({f0.name})")
        iop = [float(v) for v in getattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 1, 0])]
        if not np.allclose(iop, iop0, atol=1e-4):
            raise _mismatch(f, f"ImageOrientationPatient {iop} differs from {iop0} ({f0.name})")
    row_dir, col_dir = np.array(iop0[:3]), np.array(iop0[3:])
    normal = np.cross(row_dir, col_dir)
    have_pos = all(hasattr(ds, "ImagePositionPatient") for _, ds, _ in slices)
    if have_pos:
        pos = np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds, _ in slices])
        order = np.argsort(pos @ normal, kind="stable")
    else:
        inst = [int(getattr(ds, "InstanceNumber", i)) for i, (_, ds, _) in enumerate(slices)]
        order = np.argsort(inst, kind="stable")
        pos = None
    slices = [slices[i] for i in order]
    dz = float(getattr(d0, "SliceThickness", 1.0) or 1.0)
    step = normal * dz
    if pos is not None:
        pos = pos[order]
        if len(slices) > 1:
            d = np.diff(pos @ normal)
            if (np.abs(d) < 1e-6).any():
                i = int(np.argmin(np.abs(d)))
                raise _mismatch(slices[i + 1][0], f"two slices at the same position ({slices[i][0].name})")
            if not np.allclose(d, d.mean(), rtol=1e-2, atol=1e-3):
                raise _mismatch(where, f"uneven slice spacing (steps {np.round(d, 4).tolist()} mm)")
            step = (pos[-1] - pos[0]) / (len(slices) - 1)
        origin = pos[0]
    else:
        origin = np.zeros(3)
    dy, dx = sp0  # PixelSpacing = (row spacing, column spacing)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * dx     # i: along a row (increasing column)
    lps[:3, 1] = col_dir * dy     # j: down a column (increasing row)
    lps[:3, 2] = step             # k: slice to slice
    lps[:3, 3] = origin
    data = np.stack([px for _, _, px in slices]).astype(np.float32)
    meta = {"format": "dicom", "files": [str(f) for f, _, _ in slices], "SeriesInstanceUID": uid0,
            "Modality": getattr(d0, "Modality", None), "SeriesDescription": getattr(d0, "SeriesDescription", None)}
    return Volume(data, LPS_TO_RAS @ lps, str(where), meta)


def write_dicom_series(folder, data, affine=None, *, series_description: str = "invdiff reconstruction",
                       modality: str = "OT") -> Path:
    """Write ``data`` (D, H, W) as a DICOM series (Secondary Capture, 16-bit with rescale), atomically.

    Geometry (``ImagePositionPatient``, ``ImageOrientationPatient``, ``PixelSpacing``, ``SliceThickness``) comes
    from ``affine`` (RAS, as :class:`Volume`), so :func:`read_dicom_series` reads back the same volume and affine
    (values to within the 16-bit quantisation, ``(max - min) / 65535``). The folder appears only once complete.
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    folder = Path(folder)
    arr = np.asarray(data, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or not np.isfinite(arr).all():
        fail("data", "a finite volume (D, H, W)", f"array of shape {arr.shape}")
    A = LPS_TO_RAS @ (np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64))  # RAS -> LPS
    cols = [A[:3, i] for i in range(3)]
    dx, dy, dz = (float(np.linalg.norm(c)) for c in cols)
    row_dir, col_dir = cols[0] / dx, cols[1] / dy
    lo, hi = float(arr.min()), float(arr.max())
    slope = (hi - lo) / 65535.0 if hi > lo else 1.0
    series_uid, study_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".part", dir=folder.parent))
    try:
        for k in range(arr.shape[0]):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            name = tmp / f"slice_{k:04d}.dcm"
            ds = FileDataset(str(name), {}, file_meta=meta, preamble=b"\0" * 128)
            ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
            ds.Modality, ds.SeriesDescription = modality, series_description
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
            ds.PatientName, ds.PatientID = "invdiff", "invdiff"
            ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
            ds.ImagePositionPatient = [f"{v:.6f}" for v in (A[:3, 3] + k * cols[2])]
            ds.ImageOrientationPatient = [f"{v:.6f}" for v in list(row_dir) + list(col_dir)]
            ds.PixelSpacing = [f"{dy:.6f}", f"{dx:.6f}"]
            ds.SliceThickness = f"{dz:.6f}"
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.Rows, ds.Columns = arr.shape[1], arr.shape[2]
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            ds.RescaleIntercept, ds.RescaleSlope = f"{lo:.10g}", f"{slope:.10g}"
            q = np.clip(np.round((arr[k] - lo) / slope), 0, 65535).astype(np.uint16)
            ds.PixelData = q.tobytes()
            pydicom.dcmwrite(str(name), ds, enforce_file_format=True)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(e):
            raise disk_full_error(folder, e) from None
        raise
    return folder


# ------------------------------------------------------------------------------------------------
# any volume
# ------------------------------------------------------------------------------------------------
def read_volume(path) -> Volume:
    """A NIfTI file, a DICOM file or a folder holding one DICOM series."""
    path = Path(path)
    if path.is_dir():
        return read_dicom_series(path)
    if is_nifti(path):
        return read_nifti(path)
    if path.suffix.lower() == ".dcm":
        return read_dicom_series([path])
    raise DataFileError(path, "not a volume file (expected .nii, .nii.gz, .dcm or a folder of DICOM files)")


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


# ------------------------------------------------------------------------------------------------
# plain images / arrays
# ------------------------------------------------------------------------------------------------
def read_image(path) -> np.ndarray:
    """A ``.npy`` array (H, W) / (C, H, W) / (D, H, W) as float32, or a ``.png`` image as grayscale float32 in
    [0, 1] (H, W) (8- and 16-bit; colour images are converted to luminance)."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(path, "no such file")
    if path.suffix.lower() == ".npy":
        try:
            a = np.load(path, allow_pickle=False)
        except Exception as e:
            raise DataFileError(path, f"cannot be read as a .npy array: {type(e).__name__}: {e}") from None
        if np.iscomplexobj(a) or a.ndim not in (2, 3) or a.dtype.kind not in "fiub":
            raise DataFileError(path, f"array has shape {a.shape} and dtype {a.dtype}; expected a real image (H, W) "
                                      "or (C, H, W)")
        a = a.astype(np.float32)
    else:
        from PIL import Image

        try:
            with Image.open(path) as im:
                im.load()
                if im.mode in ("I;16", "I;16B", "I"):
                    a = np.asarray(im, dtype=np.float32) / 65535.0
                else:
                    a = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
        except Exception as e:
            raise DataFileError(path, f"cannot be read as an image: {type(e).__name__}: {e}") from None
    if not np.isfinite(a).all():
        raise DataFileError(path, "image contains NaN/Inf values")
    return a


def write_array(path, data) -> Path:
    """Write a float32 ``.npy`` array atomically."""
    atomic_write_npy(path, np.asarray(data, dtype=np.float32))
    return Path(path)


def write_png(path, image, vmin: float | None = None, vmax: float | None = None) -> Path:
    """Write a 2D image as an 8-bit grayscale PNG (scaled from [vmin, vmax], default its range), atomically."""
    from PIL import Image

    a = np.asarray(image, dtype=np.float64)
    if a.ndim != 2:
        fail("image", "a 2D array (H, W)", f"array of shape {a.shape}")
    lo = float(a.min()) if vmin is None else vmin
    hi = float(a.max()) if vmax is None else vmax
    q = np.clip((a - lo) / max(hi - lo, 1e-12), 0, 1)
    with atomic_path(path) as tmp:
        Image.fromarray(np.round(q * 255).astype(np.uint8), mode="L").save(tmp, format="PNG")
    return Path(path)


__all__ = ["Volume", "Sinogram", "read_volume", "read_nifti", "write_nifti", "read_dicom_series",
           "write_dicom_series", "dicom_files", "simulate_sinogram", "write_sinogram", "read_sinogram", "ct_operator",
           "pad_to_square", "crop_from_square", "image_size_for_detectors", "read_image", "write_array", "write_png",
           "is_nifti", "stem"]

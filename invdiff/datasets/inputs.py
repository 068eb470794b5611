"""Input files of batch commands (``invdiff reconstruct``): what a file or folder holds, and how its result is written.

Kinds: ``fastmri`` (an .h5 with ``kspace``), ``sinogram`` (an .h5 with ``sinogram``, or .npy with
``npy="sinogram"``), ``volume`` (NIfTI, or a DICOM series: a folder of .dcm files, or one .dcm file given
explicitly), ``image`` (.npy stack of slices, .png). :func:`classify_file` / :func:`is_series_folder` sort the
inputs :func:`invdiff.jobs.discover` walks; :func:`probe_h5` looks inside an .h5; :func:`output_name` and
:func:`write_outputs` give each kind its output format (fastMRI submission h5, NIfTI (+ DICOM), .npy (+ .png)).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .fastmri import DataFileError, _open_h5
from .volumes import dicom_files, is_nifti, stem, write_array, write_dicom_series, write_nifti, write_png

KINDS = ("fastmri", "sinogram", "volume", "image")
DESCRIPTION = "a fastMRI/sinogram .h5, NIfTI, DICOM, .npy or .png file"


def classify_file(path, *, npy: str = "image", explicit: bool = True) -> str | None:
    """The kind of one file: ``h5`` (look inside with :func:`probe_h5`), ``volume``, ``sinogram``, ``image``, or
    None (not an input). A ``.dcm`` file is a ``volume`` (its series) when named explicitly, and None when met
    while walking a folder (the folder is the series, :func:`is_series_folder`)."""
    p = Path(path)
    s = p.name.lower()
    if s.endswith((".h5", ".hdf5")):
        return "h5"
    if is_nifti(p):
        return "volume"
    if s.endswith(".dcm"):
        return "volume" if explicit else None
    if s.endswith(".npy"):
        return "sinogram" if npy == "sinogram" else "image"
    if s.endswith(".png"):
        return "image"
    return None


def is_series_folder(path) -> bool:
    """A folder that holds a DICOM series (one input)."""
    return bool(dicom_files(path))


def probe_h5(path) -> str:
    """``fastmri`` or ``sinogram``: what an .h5 input holds (else :class:`DataFileError`); check a fastMRI file's
    layout with :func:`~invdiff.datasets.fastmri.inspect_fastmri`."""
    with _open_h5(path) as f:
        keys = set(f.keys())
    if "kspace" in keys:
        return "fastmri"
    if "sinogram" in keys:
        return "sinogram"
    raise DataFileError(path, f"neither fastMRI 'kspace' nor a 'sinogram' dataset (found keys {sorted(keys)})")


def input_shape(kind: str, path) -> dict:
    """Sizes of an input read from its header only (no pixel data): ``{"slices": D, "shape": (H, W)}`` for
    images and volumes, plus ``{"coils": N}`` for fastMRI k-space and ``{"n_views": V, "n_det": n,
    "image_size": N | None}`` for sinograms. Raises :class:`DataFileError` for an unreadable file."""
    p = Path(path)
    try:
        if kind == "image" and p.suffix.lower() == ".npy":
            a = np.load(p, mmap_mode="r", allow_pickle=False)
            shp = tuple(int(s) for s in a.shape)
            if len(shp) not in (2, 3) or np.iscomplexobj(a) or a.dtype.kind not in "fiub":
                raise DataFileError(p, f"array has shape {shp} and dtype {a.dtype}; expected a real image (H, W) "
                                       "or a stack of slices (D, H, W)")
            return {"slices": 1 if len(shp) == 2 else shp[0], "shape": shp[-2:]}
        if kind == "image":
            from PIL import Image

            with Image.open(p) as im:
                w, h = im.size
            return {"slices": 1, "shape": (int(h), int(w))}
        if kind == "volume" and is_nifti(p):
            import nibabel as nib

            shp = tuple(int(s) for s in nib.load(str(p)).shape)
            if len(shp) == 2:
                shp = shp + (1,)
            if len(shp) != 3:
                raise DataFileError(p, f"NIfTI data of shape {shp}; expected a 3D volume")
            return {"slices": shp[2], "shape": (shp[1], shp[0])}
        if kind == "volume":
            import pydicom

            files = dicom_files(p) if p.is_dir() else [p]
            ds = pydicom.dcmread(str(files[0]), stop_before_pixels=True)
            return {"slices": len(files), "shape": (int(ds.Rows), int(ds.Columns))}
        if kind == "sinogram" and p.suffix.lower() == ".npy":
            a = np.load(p, mmap_mode="r", allow_pickle=False)
            shp = tuple(int(s) for s in a.shape)
            return {"slices": 1 if len(shp) == 2 else shp[0], "n_det": shp[-2], "n_views": shp[-1],
                    "image_size": None}
        if kind == "sinogram":
            with _open_h5(p) as f:
                shp = tuple(int(s) for s in f["sinogram"].shape)
                n = f.attrs.get("image_size")
            return {"slices": 1 if len(shp) == 2 else shp[0], "n_det": shp[-2], "n_views": shp[-1],
                    "image_size": None if n is None else int(n)}
    except DataFileError:
        raise
    except Exception as e:  # unreadable headers: one message naming the file
        raise DataFileError(p, f"cannot read its header: {type(e).__name__}: {e}") from None
    return {}


def output_name(kind: str, path) -> str:
    """The output file name of an input: the same name for fastMRI (the submission format), NAME.npy for images,
    NAME.nii.gz for volumes and sinograms."""
    p = Path(path)
    if kind in ("fastmri", "h5"):
        return p.name
    if kind == "image":
        return stem(p) + ".npy"
    return stem(p) + ".nii.gz"


def write_outputs(kind: str, src, primary, recon: np.ndarray, extra: dict, info: dict, *,
                  write_dicom: bool = False) -> None:
    """Write one result: secondary files first (``extra["std"]``, a PNG preview, a DICOM series), the primary
    output ``primary`` last, so that its existence marks the input as done. ``info`` carries the fastMRI
    attributes (``attrs``) or the volume ``affine``."""
    primary = Path(primary)
    out = primary.parent
    written = []
    try:
        _write(kind, src, primary, out, recon, extra, info, write_dicom, written)
    except BaseException:  # (a full disk) the secondary files of an input that is not done go too
        import shutil

        for p in written:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        raise


def _write(kind, src, primary, out, recon, extra, info, write_dicom, written):
    if kind == "fastmri":
        from .fastmri import write_reconstruction

        write_reconstruction(primary, recon, info["attrs"], extra=extra)
        return
    name = stem(primary.name)
    if kind == "image":
        for key in ("std", "std_calibrated"):
            if key in extra:
                written.append(write_array(out / f"{name}_{key}.npy", extra[key]))
        if Path(src).suffix.lower() == ".png" and recon.ndim == 2:
            written.append(write_png(out / f"{name}.png", recon, 0.0, 1.0))
        write_array(primary, recon)
        return
    for key in ("std", "std_calibrated"):
        if key in extra:
            written.append(write_nifti(out / f"{name}_{key}.nii.gz", extra[key], info.get("affine")))
    if write_dicom:
        written.append(write_dicom_series(out / f"{name}_dicom", recon, info.get("affine")))
    write_nifti(primary, recon, info.get("affine"))

__all__ = ["KINDS", "DESCRIPTION", "classify_file", "is_series_folder", "probe_h5", "input_shape", "output_name",
           "write_outputs"]

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
    if kind == "fastmri":
        from .fastmri import write_reconstruction

        write_reconstruction(primary, recon, info["attrs"], extra=extra)
        return
    name = stem(primary.name)
    if kind == "image":
        if "std" in extra:
            write_array(out / f"{name}_std.npy", extra["std"])
        if Path(src).suffix.lower() == ".png" and recon.ndim == 2:
            write_png(out / f"{name}.png", recon, 0.0, 1.0)
        write_array(primary, recon)
        return
    if "std" in extra:
        write_nifti(out / f"{name}_std.nii.gz", extra["std"], info.get("affine"))
    if write_dicom:
        write_dicom_series(out / f"{name}_dicom", recon, info.get("affine"))
    write_nifti(primary, recon, info.get("affine"))


__all__ = ["KINDS", "DESCRIPTION", "classify_file", "is_series_folder", "probe_h5", "output_name", "write_outputs"]

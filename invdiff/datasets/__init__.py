"""Data sources and sinks: synthetic phantoms (2D and 3D), fastMRI h5, NIfTI/DICOM volumes, sinograms, images.

:mod:`invdiff.datasets.inputs` says what an input file of a batch command holds and writes its result.
``datasets`` never imports ``solvers``, ``priors`` or ``training``. Readers raise one :class:`DataFileError` (a
``ValueError``) naming the file and the problem. h5py, nibabel and pydicom are imported only when used.
"""
from .evaluation import evaluate   # fastmri.evaluate + one clear error when nothing can be scored
from .fastmri import (DataFileError, FastMRIInfo, FastMRISliceDataset, FastMRIVolume, apply_mask, column_mask,
                      inspect_fastmri, kspace_to_tensor, read_fastmri, read_reconstruction,
                      save_reconstructions, write_reconstruction)
from .phantoms import (HELDOUT_SEED_START, PhantomStream, complex_to_channels, ct_phantoms, mri_phantoms,
                       shepp_logan, split_seeds)
from .synthetic_fastmri import write_synthetic_dataset, write_synthetic_fastmri
from .volumes import (Sinogram, Volume, read_dicom_series, read_image, read_nifti, read_sinogram, read_volume,
                      simulate_sinogram, write_dicom_series, write_nifti, write_sinogram)

__all__ = [
    "ct_phantoms", "mri_phantoms", "shepp_logan", "split_seeds", "PhantomStream", "complex_to_channels",
    "HELDOUT_SEED_START",
    "DataFileError", "FastMRISliceDataset", "FastMRIInfo", "FastMRIVolume", "inspect_fastmri", "read_fastmri",
    "column_mask", "apply_mask", "kspace_to_tensor", "write_reconstruction", "save_reconstructions",
    "read_reconstruction", "evaluate", "write_synthetic_fastmri", "write_synthetic_dataset",
    "Volume", "Sinogram", "read_volume", "read_nifti", "write_nifti", "read_dicom_series", "write_dicom_series",
    "simulate_sinogram", "read_sinogram", "write_sinogram", "read_image",
]

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
from .files import (ISMRMRD_NS, MASK_CHOICES, TARGET_KEYS, DataFileError, FastMRIInfo, FastMRIVolume,  # noqa: F401
                    _attrs, _open_h5, inspect_fastmri, parse_ismrmrd_header, read_fastmri)
from .kspace import (COMBINE_CHOICES, KNEE_ACQUISITIONS, FastMRISliceDataset, anatomy, apply_mask,  # noqa: F401
                     coil_combine, column_mask, default_mask_kind, fft2c, find_h5, ifft2c, kspace_noise_std,
                     kspace_scale, kspace_to_tensor, rss_noise_floor, training_image, volume_scale, zero_filled)
from .submission import evaluate, read_reconstruction, save_reconstructions, write_reconstruction  # noqa: F401

__all__ = ["DataFileError", "FastMRIInfo", "FastMRIVolume", "FastMRISliceDataset", "inspect_fastmri",
           "read_fastmri", "parse_ismrmrd_header", "column_mask", "default_mask_kind", "anatomy", "MASK_CHOICES",
           "KNEE_ACQUISITIONS", "apply_mask", "kspace_to_tensor", "fft2c", "ifft2c", "zero_filled", "find_h5",
           "kspace_noise_std", "rss_noise_floor", "write_reconstruction", "save_reconstructions",
           "read_reconstruction", "evaluate", "TARGET_KEYS"]

r"""Forward models :math:`y = A x + n` for imaging inverse problems, as deepinv ``LinearPhysics``.

Every operator here is a deepinv physics (deepinv's DPS, DDRM, DiffPIR and ``prox_l2`` accept it) with
invdiff's additions (:class:`~invdiff.operators.base.InvdiffPhysics`): ``x_shape``, ``y_shape``,
``is_complex``, ``sigma``, ``check_x`` / ``check_y``.

==================  ===========================  ==============================================
operator            x                            y
==================  ===========================  ==============================================
MatrixOperator      (B, n)                       (B, m)
Inpainting          (B, C, H, W)                 (B, C, H, W), 0 where the mask is 0
Blur / CircularBlur (B, C, H, W)                 (B, C, H, W) ("valid": (B, C, H-h+1, W-w+1))
MRI                 (B, 2, H, W) / (B, 2, D, H, W)  same as x (centred orthonormal FFT)
MultiCoilMRI        (B, 2, H, W) / (B, 2, D, H, W)  (B, 2, N, H, W) / (B, 2, N, D, H, W)
CT                  (B, C, N, N)                 (B, C, n_detectors, n_views), angles in degrees
CT3D, SliceWise     (B, C, D, H, W)              2D measurement with D inserted at axis 2
==================  ===========================  ==============================================

Masks (1 = measured) come from :mod:`invdiff.operators.masks` (MRI; fastMRI's own in
:mod:`invdiff.operators.fastmri_masks`) and the inpainting mask makers;
kernels from :func:`gaussian_kernel`, :func:`motion_kernel`, :func:`uniform_kernel`; coil maps from
:func:`espirit_maps` and :func:`birdcage_maps`.
"""
from .base import InvdiffPhysics
from .blur import Blur, CircularBlur, gaussian_kernel, motion_kernel, uniform_kernel
from .coils import acs_width, birdcage_maps, espirit_maps
from .ct import CT, CT3D
from .fastmri_masks import FASTMRI_MASK_KINDS, fastmri_columns, fastmri_mask, fastmri_seed, zero_padding
from .inpainting import Inpainting, box_mask, brush_mask, half_mask, random_mask
from .masks import (MASK_KINDS, default_center_fraction, equispaced_mask, gaussian_mask_1d, make_mask,
                    poisson_disc_mask, poisson_disc_mask_1d, random_mask_1d, realised_acceleration, seed_for_file)
from .matrix import MatrixOperator
from .mri import MRI, MultiCoilMRI
from .stack import SliceWise

__all__ = [
    "InvdiffPhysics",
    "MatrixOperator",
    "Inpainting", "box_mask", "half_mask", "random_mask", "brush_mask",
    "Blur", "CircularBlur", "gaussian_kernel", "motion_kernel", "uniform_kernel",
    "MRI", "MultiCoilMRI", "birdcage_maps", "espirit_maps", "acs_width",
    "MASK_KINDS", "equispaced_mask", "random_mask_1d", "gaussian_mask_1d", "poisson_disc_mask", "poisson_disc_mask_1d",
    "make_mask",
    "seed_for_file", "default_center_fraction", "realised_acceleration",
    "FASTMRI_MASK_KINDS", "fastmri_mask", "fastmri_columns", "fastmri_seed", "zero_padding",
    "CT", "CT3D",
    "SliceWise",
]

"""Data sources: synthetic phantoms (and, from other modules, fastMRI h5, volumes, image folders)."""
from .phantoms import (HELDOUT_SEED_START, PhantomStream, complex_to_channels, ct_phantoms, mri_phantoms,
                       shepp_logan, split_seeds)

__all__ = ["ct_phantoms", "mri_phantoms", "shepp_logan", "split_seeds", "PhantomStream",
           "complex_to_channels", "HELDOUT_SEED_START"]

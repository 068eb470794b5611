"""Shipped priors and loading by name or path.

- :func:`available` lists the shipped priors whose weights are present in ``invdiff/priors/weights/``.
- :func:`load` takes a shipped name, a local invdiff safetensors checkpoint (self-describing header, see
  :mod:`invdiff.priors.neural`), or another local checkpoint format handled by
  :func:`invdiff.priors.loaders.load_checkpoint` (loaded safely, no pickle code execution).
"""
from __future__ import annotations

from pathlib import Path

from .._validate import fail

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

#: shipped priors: name -> one-line description (listed by available() only when the weights exist)
SHIPPED = {
    "ct-phantom-64": "1-channel CT-like ellipse phantoms in [0, 1], trained at 64x64 (fully convolutional)",
    "mri-brainphantom-64": "2-channel (complex) brain phantoms, max magnitude 1, trained at 64x64 (fully convolutional)",
    "ct-anatomy-patch64": "1-channel CT slices (HU window -1000..3000 -> [0, 1]) at the pixel scale of 256x256 "
                          "anatomy-like slices; trained on 64x64 patches with their coordinates (PaDIS), applied "
                          "to whole images; validated at 256x256",
    "mri-anatomy-patch64": "2-channel (complex) MRI slices, max magnitude 1, at the pixel scale of 320x320 "
                           "anatomy-like brain / knee slices; trained on 64x64 patches with their coordinates (PaDIS), "
                           "applied to whole images; validated on the 640x368 field of view of 15-coil fastMRI knee "
                           "files (DDS with coil_support)",
    "ct-ellipsoid3d-patch32": "native 3D (Conv3d): 1-channel CT-like random-ellipsoid volumes in [0, 1] at the voxel "
                              "scale of 64^3 volumes (that of ct-phantom-64's slices); trained on 32^3 patches, "
                              "applied to whole volumes (dds, dds3d, diffusion-mbir, ...); validated at 32x64x64",
    "mri-brainphantom-64-cond": "conditional (solver 'conditional-dc'): brain phantoms given [zero-filled A^H y, mask] of "
                                "single- / 8-coil Cartesian MRI at 2-10x, trained at 64x64",
}


def available() -> list[str]:
    """Names of the shipped priors whose weights are installed."""
    return [n for n in SHIPPED if (WEIGHTS_DIR / f"{n}.safetensors").is_file()]


def load(name_or_path, *, device="cpu", precision: str = "fp32", **kwargs):
    """A prior by shipped name (see :func:`available`) or from a local checkpoint path, on ``device``.

    ``precision`` ("fp32" | "bf16" | "fp16"): the network's autocast precision (neural priors,
    :meth:`~invdiff.priors.neural.NeuralPrior.set_precision`).
    """
    prior = _load(name_or_path, device=device, **kwargs)
    if precision != "fp32" or hasattr(prior, "set_precision"):
        if not hasattr(prior, "set_precision"):
            fail("precision", "'fp32' for a prior without a network precision setting", precision)
        prior.set_precision(precision)
    return prior


def _load(name_or_path, *, device="cpu", **kwargs):
    from .neural import NeuralPrior, is_invdiff_checkpoint

    if not isinstance(name_or_path, (str, Path)):
        fail("name_or_path", "a shipped prior name or a checkpoint path (str or Path)", name_or_path, TypeError)
    key = str(name_or_path)
    if key in SHIPPED and not isinstance(name_or_path, Path):
        path = WEIGHTS_DIR / f"{key}.safetensors"
        if not path.is_file():
            fail("name_or_path", f"a shipped prior whose weights are installed (available: {available()})",
                 f"{key!r} (missing {path})")
        prior = NeuralPrior.load(path, device=device)
        prior._name = key
        return prior
    path = Path(name_or_path).expanduser()
    if path.exists():
        if is_invdiff_checkpoint(path):
            return NeuralPrior.load(path, device=device)
        from .loaders import load_checkpoint

        return load_checkpoint(path, device=device, **kwargs)
    fail("name_or_path", f"one of the shipped priors {available()} or an existing checkpoint path", key)


__all__ = ["available", "load", "SHIPPED", "WEIGHTS_DIR"]

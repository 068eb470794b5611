r"""The conditioning of a conditional diffusion prior, computed from a measurement and its operator alone.

.. math::
    c(y, A) = \big[\, A^\dagger y / s,\ \ P_A \,\big], \qquad s = q_{0.99}\big(|A^\dagger y|\big),

with :math:`A^\dagger y` the zero-filled coil-combined :math:`A^H y` (MRI, 2 channels) or the filtered
back-projection (parallel-beam CT, 1 channel), :math:`P_A` the k-space sampling pattern (the MRI mask, or the
Fourier-slice lines of the CT views) and :math:`s` one scale per slice. Paired training data
(:mod:`invdiff.datasets.paired`, which documents the choice) and the ``"conditional-dc"`` solver both call
:func:`measurement_conditioning`, so the normalisation is identical in training and inference. It lives with the
operators because it needs nothing else: datasets and solvers both import it, neither imports the other.
"""
from __future__ import annotations

import math

import torch

from .._validate import fail

#: conditional kinds and the number of conditioning channels each adds ([A^dagger y channels, pattern])
COND_KINDS = ("mri", "ct")
COND_CHANNELS = {"mri": 3, "ct": 2}
IMAGE_CHANNELS = {"mri": 2, "ct": 1}
#: the per-slice normalisation, as recorded in the model card / prior metadata
NORMALISATION = ("cond = [A^dagger y / s, sampling pattern], s = 99th percentile of |A^dagger y| per slice "
                 "(MRI: zero-filled coil-combined A^H y; CT: FBP); the network's image is x / s")
SCALE_QUANTILE = 0.99


def conditional_kind(physics) -> str:
    """``"mri"`` for (multi-coil) Cartesian MRI, ``"ct"`` for parallel-beam 2D CT; else one clear error."""
    from .ct import CT
    from .mri import MRI, MultiCoilMRI

    if isinstance(physics, (MRI, MultiCoilMRI)):
        return "mri"
    if isinstance(physics, CT):
        if getattr(physics, "fan_beam", False):
            fail("physics", "a parallel-beam CT operator (the view pattern uses the Fourier slice theorem)",
                 "a fan-beam CT operator")
        return "ct"
    fail("physics", "an invdiff MRI, MultiCoilMRI or (parallel-beam) CT operator for a conditional prior",
         type(physics).__name__, TypeError)


def ct_view_pattern(angles_deg: torch.Tensor, size: int) -> torch.Tensor:
    r"""(size, size) 0/1 image of the k-space lines a parallel-beam CT measures (Fourier slice theorem).

    A point at column/row offsets (u, v) from the centre projects onto detector coordinate
    :math:`u\cos\theta - v\sin\theta` (:mod:`invdiff.operators.ct`), so view :math:`\theta` measures
    k-space on the line :math:`\{t(\cos\theta, -\sin\theta)\}`; a pixel is 1 when its distance to one of
    those lines is below half a pixel.

    >>> p = ct_view_pattern(torch.tensor([0.0, 90.0]), 9); int(p.sum())  # a cross: 9 + 9 - 1 pixels
    17
    """
    c = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    v, u = torch.meshgrid(c, c, indexing="ij")
    th = torch.as_tensor(angles_deg, dtype=torch.float64).reshape(-1, 1, 1) * (math.pi / 180)
    dist = (u[None] * torch.sin(th) + v[None] * torch.cos(th)).abs()  # distance to the line along (cos, -sin)
    return (dist < 0.5 + 1e-9).any(0).float()


def sampling_pattern(physics, batch: int) -> torch.Tensor:
    """(B, 1, H, W) pattern channel of an operator: the MRI mask, or the CT view pattern."""
    kind = conditional_kind(physics)
    if kind == "mri":
        m = physics.mask[:, :1].float()
        if m.dim() != 4:
            fail("physics", "a 2D MRI operator (mask (B, 2, H, W)) for a conditional prior", tuple(physics.mask.shape))
        return m.expand(batch, 1, *m.shape[-2:]) if m.shape[0] == 1 else m
    n = physics.x_shape[-1]
    return ct_view_pattern(physics.angles.detach().cpu(), n).to(torch.float32).expand(batch, 1, n, n)


def measurement_image(y: torch.Tensor, physics) -> torch.Tensor:
    """The measurement-domain-free image :math:`A^\\dagger y`: zero-filled coil-combined :math:`A^H y` for MRI,
    FBP for CT. Shape (B, C, H, W)."""
    kind = conditional_kind(physics)
    with torch.no_grad():
        return physics.A_adjoint(y) if kind == "mri" else physics.fbp(y)


def slice_scale(image: torch.Tensor) -> torch.Tensor:
    """The per-slice scale s (B,): 99th percentile of the pixel magnitude (channels as real/imag parts)."""
    mag = image.float().pow(2).sum(1).sqrt().flatten(1)
    s = torch.quantile(mag, SCALE_QUANTILE, dim=1)
    return s.clamp_min(torch.finfo(torch.float32).tiny ** 0.5)


def measurement_conditioning(y: torch.Tensor, physics) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The conditioning of a conditional prior and the slice scale: ``(cond, s)``.

    ``cond = [A^dagger y / s, P_A]`` (B, C + 1, H, W) with ``s`` (B,) the 99th percentile of
    :math:`|A^\dagger y|` per slice (:mod:`invdiff.datasets.paired` explains the choice). Training
    (:class:`~invdiff.datasets.paired.PairedStream`) and inference
    (``solver="conditional-dc"``) both call this function, so the normalisation is identical.

    >>> import torch
    >>> from invdiff.operators import MRI, equispaced_mask
    >>> op = MRI(equispaced_mask((16, 16), 4), sigma=0.0)
    >>> x = torch.randn(1, 2, 16, 16)
    >>> cond, s = measurement_conditioning(op.A(x), op)
    >>> cond.shape, bool(torch.allclose(cond[:, :2] * s, op.A_adjoint(op.A(x)), atol=1e-5))
    (torch.Size([1, 3, 16, 16]), True)
    """
    img = measurement_image(y, physics).float()
    s = slice_scale(img)
    cond = torch.cat([img / s.reshape(-1, 1, 1, 1), sampling_pattern(physics, img.shape[0]).to(img)], dim=1)
    return cond, s


def normalise(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``x / s`` per slice (the network's units)."""
    return x / s.reshape(-1, *([1] * (x.dim() - 1))).to(x)


def denormalise(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``x * s`` per slice (back to the measurement's units); the inverse of :func:`normalise`."""
    return x * s.reshape(-1, *([1] * (x.dim() - 1))).to(x)


__all__ = ["COND_KINDS", "COND_CHANNELS", "IMAGE_CHANNELS", "NORMALISATION", "SCALE_QUANTILE", "conditional_kind",
           "ct_view_pattern", "sampling_pattern", "measurement_image", "slice_scale", "measurement_conditioning",
           "normalise", "denormalise"]

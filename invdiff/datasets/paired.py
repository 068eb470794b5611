r"""Paired (measurement, image) training data made on the fly, and the conditioning of a conditional prior.

A conditional diffusion prior (CDDM-MRI, Alsubaie et al. 2025, arXiv 2510.06335; SR3-style channel
concatenation) denoises :math:`x_t` given a conditioning image ``cond`` built from the measurement alone:

.. math::
    c(y, A) = \big[\, A^\dagger y / s,\ \ P_A \,\big], \qquad s = q_{0.99}\big(|A^\dagger y|\big),

- :math:`A^\dagger y` is the measurement-domain-free image: for MRI the zero-filled, coil-combined
  :math:`A^H y = \sum_n \bar s_n F^{-1} M y_n` (single coil: :math:`F^{-1} M y`), 2 channels (real,
  imaginary); for CT the filtered back-projection, 1 channel;
- :math:`P_A` is the sampling pattern in k-space, 1 channel: the MRI mask :math:`M` (centred k-space,
  the image grid), or for parallel-beam CT the Fourier-slice lines of the views (Fourier slice theorem:
  the projection at angle :math:`\theta` measures k-space on the line through the centre along the
  detector direction), so sparse-view and limited-angle patterns are pictures of what was measured;
- :math:`s` is **one scale per slice**: the 99th percentile of the pixel magnitudes of
  :math:`A^\dagger y` (a robust maximum, the reference dossier's §4.3), the same in training and inference.

:func:`~invdiff.operators.conditioning.measurement_conditioning` is the one function that computes it; training data
(:class:`PairedStream`) and the ``"conditional-dc"`` solver both call it. The network is trained on the
normalised image :math:`x_0 / s` and the solver works in those units (with :math:`y / s` and noise level
:math:`\sigma / s`), then multiplies the result by :math:`s` (:func:`denormalise`).

Operator distributions (:class:`MRIOperatorDistribution`, :class:`CTOperatorDistribution`) draw, per
training image: MRI mask family in {equispaced, random, gaussian}, acceleration uniform in [2, 10] with
fastMRI centre fractions (0.08 below 8x, 0.04 from 8x), single-coil or 8-coil birdcage maps, k-space
noise; CT: view count log-uniform in [4, 64] over 180 degrees, or limited angle, sinogram noise.

Determinism: the image, operator and noise of row ``i`` of the batch at step ``k`` depend only on
``(seed, k * B + i)`` (:class:`PairedStream`), like the phantom streams, so a resumed run sees exactly
the data of an uninterrupted one, and any data-parallel shard ``part(k, B, start, stop)`` equals the
same rows of the whole batch.

>>> from invdiff.datasets.phantoms import PhantomStream
>>> src = PairedStream(PhantomStream("mri", 32), "mri")
>>> x0, cond = src(0, 2); x0.shape, cond.shape
(torch.Size([2, 2, 32, 32]), torch.Size([2, 3, 32, 32]))
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Callable

import torch

from .._validate import check_choice, check_positive, fail

# the shared conditioning (training and inference) lives with the operators, which the solver may import too
from ..operators.conditioning import (COND_CHANNELS, COND_KINDS, IMAGE_CHANNELS, NORMALISATION, SCALE_QUANTILE,  # noqa: F401
                                      conditional_kind, ct_view_pattern, denormalise, measurement_conditioning,
                                      measurement_image, normalise, sampling_pattern, slice_scale)


# ================================================================================================
# operator distributions
# ================================================================================================
@lru_cache(maxsize=8)
def _birdcage(n_coils: int, size: int) -> torch.Tensor:
    from ..operators import birdcage_maps

    return birdcage_maps(n_coils, (2, size, size))


@dataclass(frozen=True)
class MRIOperatorDistribution:
    """Random Cartesian MRI operators: mask family, acceleration (fastMRI centre fraction), coils, noise.

    ``coils``: the coil counts drawn with equal probability (1 = single coil, N > 1 = N birdcage maps);
    noise std log-uniform in ``[sigma_min, sigma_max]`` per real k-space component (images have max
    magnitude ~1, the FFT is orthonormal)."""

    families: tuple = ("equispaced", "random", "gaussian")
    acceleration: tuple = (2.0, 10.0)
    coils: tuple = (1, 8)
    sigma_min: float = 5e-4
    sigma_max: float = 2e-2

    def sample(self, g: torch.Generator, size: int):
        from ..operators import MRI, MultiCoilMRI, default_center_fraction, make_mask

        u = torch.rand(5, generator=g, dtype=torch.float64).tolist()
        family = self.families[min(int(u[0] * len(self.families)), len(self.families) - 1)]
        acc = self.acceleration[0] + u[1] * (self.acceleration[1] - self.acceleration[0])
        n_coils = self.coils[min(int(u[2] * len(self.coils)), len(self.coils) - 1)]
        sigma = math.exp(math.log(self.sigma_min) + u[3] * math.log(self.sigma_max / self.sigma_min))
        mask_seed = int(torch.randint(0, 2 ** 31 - 1, (1,), generator=g))
        cf = max(default_center_fraction(acc), 1.0 / size)  # at least the DC column on small test images
        mask = make_mask(family, (size, size), acc, cf, seed=mask_seed)
        noise_g = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 62, (1,), generator=g)))
        if n_coils == 1:
            op = MRI(mask, (2, size, size), sigma=sigma, rng=noise_g)
        else:
            op = MultiCoilMRI(mask, _birdcage(n_coils, size), (2, size, size), sigma=sigma, rng=noise_g)
        return op, {"family": family, "acceleration": acc, "coils": n_coils, "sigma": sigma}


@lru_cache(maxsize=512)
def _ct_operator(size: int, n_views: int, angle_range: float):
    from ..operators import CT

    return CT(size, n_views=n_views, angle_range=angle_range)


@dataclass(frozen=True)
class CTOperatorDistribution:
    """Random parallel-beam CT operators: view count log-uniform in ``views`` over 180 degrees, or (with
    probability ``p_limited``) a limited angle range drawn from ``limited_ranges``; sinogram noise std
    log-uniform in ``[sigma_min, sigma_max]`` (the operator is normalised, ||A|| = 1)."""

    views: tuple = (4, 64)
    p_limited: float = 0.25
    limited_ranges: tuple = (60.0, 90.0, 120.0, 150.0)
    sigma_min: float = 1e-4
    sigma_max: float = 5e-3

    def sample(self, g: torch.Generator, size: int):
        u = torch.rand(4, generator=g, dtype=torch.float64).tolist()
        lo, hi = self.views
        n_views = min(int(round(math.exp(math.log(lo) + u[0] * math.log(hi / lo)))), size)  # <= detector bins
        rng = 180.0
        if u[1] < self.p_limited:
            rng = self.limited_ranges[min(int(u[2] * len(self.limited_ranges)), len(self.limited_ranges) - 1)]
        sigma = math.exp(math.log(self.sigma_min) + u[3] * math.log(self.sigma_max / self.sigma_min))
        op = _ct_operator(size, n_views, rng)
        noise_g = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 62, (1,), generator=g)))
        return op, {"views": n_views, "angle_range": rng, "sigma": sigma, "noise_generator": noise_g}


def simulate(x: torch.Tensor, op, info: dict) -> torch.Tensor:
    """y = A x + n for one image (1, C, H, W) with the drawn operator (noise from the operator's own generator,
    or for the cached CT operators from ``info["noise_generator"]``)."""
    with torch.no_grad():
        if "noise_generator" in info:
            y = op.A(x)
            return y + info["sigma"] * torch.randn(y.shape, generator=info["noise_generator"])
        return op(x)


# ================================================================================================
# the paired training stream
# ================================================================================================
class PairedStream:
    r"""Training source ``(step, B) -> (x0 / s, cond)`` of paired data for a conditional prior.

    Row ``i`` of the batch at step ``k``: the clean image is row ``i`` of ``base(k, B)`` (the phantom
    stream or any image source of ``train-prior``); an operator is drawn from ``distribution`` and the
    noise from a generator seeded by ``(seed, k * B + i)``; ``y = A x0 + n``;
    ``cond, s = measurement_conditioning(y, A)`` and the target is ``x0 / s``.

    Parameters
    ----------
    base : callable ``(step, B) -> x0`` (B, C, H, W) (may offer ``part(step, B, start, stop)``).
    kind : ``"mri"`` (base images 2-channel complex) or ``"ct"`` (1 channel).
    distribution : an :class:`MRIOperatorDistribution` / :class:`CTOperatorDistribution` (default for ``kind``).
    seed : seed of the operator / noise draws.
    """

    def __init__(self, base: Callable, kind: str, distribution=None, seed: int = 0):
        check_choice("kind", kind, COND_KINDS)
        if not callable(base):
            fail("base", "a data source callable (step, batch_size) -> images", base, TypeError)
        check_positive("seed", seed, strict=False, integer=True)
        self.base, self.kind, self.seed = base, kind, int(seed)
        self.distribution = distribution if distribution is not None else (
            MRIOperatorDistribution() if kind == "mri" else CTOperatorDistribution())
        self.channels = IMAGE_CHANNELS[kind]
        self.cond_channels = COND_CHANNELS[kind]

    def describe(self) -> dict:
        """What the prior is trained for (written into the prior's metadata and model card)."""
        return {"kind": self.kind, "cond_channels": self.cond_channels, "normalisation": NORMALISATION,
                "scale_quantile": SCALE_QUANTILE,
                "operator_distribution": {"type": type(self.distribution).__name__, **asdict(self.distribution)}}

    def _base_rows(self, step: int, batch_size: int, start: int, stop: int) -> torch.Tensor:
        from .phantoms import PhantomStream

        if start == 0 and stop == batch_size:
            return self.base(step, batch_size)
        if hasattr(self.base, "part"):
            return self.base.part(step, batch_size, start, stop)
        if type(self.base) is PhantomStream:
            b = self.base
            return PhantomStream(b.kind, b.size, b.seed_offset + step * batch_size + start)(0, stop - start)
        return self.base(step, batch_size)[start:stop]

    def item(self, x: torch.Tensor, index: int):
        """(x0 / s, cond, operator info) for one clean image ``x`` (C, H, W) at global row ``index``."""
        if x.dim() != 3 or x.shape[0] != self.channels or x.shape[-1] != x.shape[-2]:
            fail("images", f"square {self.channels}-channel images (B, {self.channels}, N, N) for a {self.kind} "
                           f"conditional prior", tuple(x.shape))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + 7_777_777 + index)
        op, info = self.distribution.sample(g, x.shape[-1])
        y = simulate(x[None].float(), op, info)
        cond, s = measurement_conditioning(y, op)
        return normalise(x[None].float(), s)[0], cond[0], info

    def part(self, step: int, batch_size: int, start: int, stop: int):
        """Rows ``[start, stop)`` of ``self(step, batch_size)``, generated alone."""
        x = self._base_rows(step, batch_size, start, stop)
        rows = [self.item(x[i], step * batch_size + start + i)[:2] for i in range(x.shape[0])]
        return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])

    def __call__(self, step: int, batch_size: int):
        return self.part(step, batch_size, 0, batch_size)


__all__ = ["COND_KINDS", "COND_CHANNELS", "IMAGE_CHANNELS", "NORMALISATION", "SCALE_QUANTILE", "conditional_kind",
           "ct_view_pattern", "sampling_pattern", "measurement_image", "slice_scale", "measurement_conditioning",
           "normalise", "denormalise", "MRIOperatorDistribution", "CTOperatorDistribution", "simulate", "PairedStream"]

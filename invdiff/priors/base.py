r"""The prior interface every solver uses.

A prior is a denoiser in the EDM / variance-exploding parameterisation

.. math::  D_\theta(x, \sigma) \approx \mathbb{E}[x_0 \mid x_0 + \sigma n = x],

where :math:`x_0` lives in the prior's *data space*: real images (B, 1, H, W) in [0, 1], complex MRI
images as 2 real channels (B, 2, H, W), volumes (B, C, D, H, W) for 3D priors. This is also deepinv's
``Denoiser`` contract (``forward(x, sigma)``, sigma on the data scale), so any invdiff prior can be handed
to deepinv's DPS / DDRM / DiffPIR unchanged. Score, epsilon and v predictions follow by exact
conversion (:mod:`invdiff.schedules`).

>>> import torch
>>> from invdiff.priors import GaussianMixture
>>> p = GaussianMixture(torch.ones(1), torch.zeros(1, 4), torch.eye(4)[None])
>>> p.denoise(torch.ones(2, 4), 1.0).shape
torch.Size([2, 4])
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import torch
from torch import nn

from .._validate import fail, check_tensor
from .. import schedules as S


class PriorSizeWarning(UserWarning):
    """A prior is applied to an image whose size or pixel scale it was not trained or validated for."""


class PriorSizeError(ValueError):
    """:class:`PriorSizeWarning`'s condition under strict mode (``invdiff.solve(..., strict=True)``)."""


class Prior(nn.Module):
    """Base class: subclasses implement :meth:`denoise`. Metadata used for input validation:

    - ``channels``: number of image channels (1 real, 2 complex), or None for vector priors;
    - ``resolution``: spatial size the network takes, or None when any size works;
    - ``value_range``: the data range of training images (for documentation and checks);
    - ``spatial_dims``: 2 for images, 3 for native volume priors, 0 for flat vectors.

    Size and scale metadata, checked once per solve by :func:`check_prior_fits` (None = unknown, no check):

    - ``trained_resolution``: spatial size of the training images (whole images) or crops;
    - ``patch_size``: None when the prior learnt *whole* images of ``trained_resolution`` (then one pixel is
      1/``trained_resolution`` of the field of view, and any other image size is another pixel scale), else the
      spatial size of the random crops it learnt (then any image at least that large is fine at the same scale);
    - ``validated_sizes``: image sizes it was validated at (default: ``trained_resolution`` for whole-image priors);
    - ``pixel_spacing``: physical size of one training pixel in mm (per spatial axis), None for synthetic data.
    """

    channels: int | None = None
    resolution: tuple[int, ...] | None = None
    value_range: tuple[float, float] | None = (0.0, 1.0)
    spatial_dims: int = 2
    trained_resolution: tuple[int, ...] | None = None
    patch_size: tuple[int, ...] | None = None
    validated_sizes: tuple[tuple[int, ...], ...] | None = None
    pixel_spacing: tuple[float, ...] | None = None

    # -- the one method a prior must provide -------------------------------------------------------
    def denoise(self, x: torch.Tensor, sigma) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- deepinv Denoiser contract -------------------------------------------------------------------
    def forward(self, x: torch.Tensor, sigma, *args, **kwargs) -> torch.Tensor:
        return self.denoise(x, sigma)

    # -- exact conversions ----------------------------------------------------------------------------
    def eps(self, x: torch.Tensor, sigma) -> torch.Tensor:
        return S.x0_to_eps(x, self.denoise(x, sigma), sigma)

    def score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        return S.x0_to_score(x, self.denoise(x, sigma), sigma)

    def x0_vp(self, x_vp: torch.Tensor, alpha_bar) -> torch.Tensor:
        """x0 estimate from a VP state x_vp = sqrt(ab) x0 + sqrt(1-ab) eps."""
        ab = torch.as_tensor(alpha_bar, dtype=x_vp.dtype, device=x_vp.device)
        scale = S._bcast(ab.sqrt(), x_vp)
        return self.denoise(x_vp / scale, S.alpha_bar_to_sigma(ab).to(x_vp.dtype))

    def eps_vp(self, x_vp: torch.Tensor, alpha_bar) -> torch.Tensor:
        ab = S._bcast(torch.as_tensor(alpha_bar, dtype=x_vp.dtype, device=x_vp.device), x_vp)
        return (x_vp - ab.sqrt() * self.x0_vp(x_vp, alpha_bar)) / (1 - ab).sqrt()

    # -- validation -------------------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        """Refuse inputs this prior cannot take, with one clear message."""
        check_tensor(name, x, finite=False)
        if self.spatial_dims == 0:
            return x
        want_dim = 2 + self.spatial_dims
        if x.dim() != want_dim:
            fail(name, f"a {want_dim}-D tensor (B, C, {'D, ' if self.spatial_dims == 3 else ''}H, W) for this "
                       f"{self.spatial_dims}D prior", x)
        if self.channels is not None and x.shape[1] != self.channels:
            fail(name, f"{self.channels} channel(s) for prior {self.name!r} "
                       f"({'complex as 2 real channels' if self.channels == 2 else 'real images'})", x)
        if self.resolution is not None and tuple(x.shape[-len(self.resolution):]) != tuple(self.resolution):
            fail(name, f"spatial size {tuple(self.resolution)} (the resolution prior {self.name!r} was trained at)", x)
        return x

    @property
    def name(self) -> str:
        return getattr(self, "_name", type(self).__name__)


class CountingPrior(Prior):
    """Wraps a prior and counts denoiser evaluations (NFE), so NFE is measured, not reported by solvers.

    ``nfe`` counts calls (one batched network evaluation = 1); ``nfe_images`` counts images evaluated.
    """

    def __init__(self, prior: Prior):
        super().__init__()
        self.inner = prior
        self.nfe = 0
        self.nfe_images = 0
        for attr in ("channels", "resolution", "value_range", "spatial_dims", "trained_resolution", "patch_size",
                     "validated_sizes", "pixel_spacing"):
            setattr(self, attr, getattr(prior, attr, None))

    @property
    def name(self) -> str:
        return self.inner.name

    def denoise(self, x, sigma):
        self.nfe += 1
        self.nfe_images += int(x.shape[0])
        return self.inner.denoise(x, sigma)

    def check_input(self, x, name="x"):
        return self.inner.check_input(x, name)

    def __getattr__(self, item):
        try:
            return super().__getattr__(item)
        except AttributeError:
            return getattr(self._modules["inner"], item)


def as_sigma_tensor(sigma, x: torch.Tensor) -> torch.Tensor:
    """sigma as a (B,) tensor on x's device and dtype."""
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.dim() == 0:
        s = s.expand(x.shape[0])
    return s.reshape(-1)


def check_sigma(sigma, x: torch.Tensor, name: str = "sigma") -> None:
    """One clear error for a negative or NaN noise level, and for NaN/Inf in ``x``, without a GPU sync.

    A number is checked in Python (free). A tensor ``sigma`` and the values of ``x`` are checked when they live
    on the CPU (a reduction over the image: 0.1-0.3 % of a 64x64 network call, measured in
    ``benchmarks/results/prior_checks.md``); on a GPU the value checks are skipped, because reading a result back
    would stall the sampling loop on every call (shapes and dtypes are still checked).
    """
    if isinstance(sigma, bool):
        fail(name, "a noise level >= 0 (number or tensor)", sigma, TypeError)
    if isinstance(sigma, (int, float)):
        if not sigma >= 0 or math.isinf(sigma):        # also catches NaN
            fail(name, "a finite noise level >= 0", sigma)
    elif isinstance(sigma, torch.Tensor):
        if sigma.is_complex() or sigma.dtype == torch.bool:
            fail(name, "a real noise level >= 0", sigma, TypeError)
        if sigma.device.type == "cpu" and not bool(((sigma >= 0) & torch.isfinite(sigma)).all()):
            fail(name, "finite noise levels >= 0",
                 f"{sigma.reshape(-1)[:8].tolist()}{'...' if sigma.numel() > 8 else ''}")
    else:
        fail(name, "a noise level >= 0 (number or tensor)", sigma, TypeError)
    if x.device.type == "cpu" and not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        fail("x", "finite values (the noisy image to denoise)",
             f"tensor of shape {tuple(x.shape)} with {n_bad} NaN/Inf entries")


# ------------------------------------------------------------------------------------------------
# the size guard (issue 11 item 4)
# ------------------------------------------------------------------------------------------------
def _fmt(size) -> str:
    return "x".join(str(int(s)) for s in size)


def check_prior_fits(prior: Prior, image_size, *, pixel_spacing=None, strict: bool = False,
                     stacklevel: int = 2) -> str | None:
    r"""Warn (:class:`PriorSizeWarning`) or, if ``strict``, raise :class:`PriorSizeError` when ``prior`` is applied to
    an image whose size or pixel scale it was not trained or validated for. Returns the message (None if it fits).

    Args:
        prior: an invdiff prior; a lifted 2D prior (:class:`~invdiff.priors.lift.Lifted2DPrior`) is checked slice
            by slice (its 2D prior against the last two axes).
        image_size: the image the prior will denoise: ``x_shape`` without batch, ``(C, H, W)`` / ``(C, D, H, W)``,
            or just the spatial sizes; the last ``spatial_dims`` entries are compared.
        pixel_spacing: physical pixel size of the image in mm (a number or one per axis), when known (DICOM /
            NIfTI headers); compared with the prior's ``pixel_spacing`` (more than 10 % apart: mismatch).

    Rules: a whole-image prior (``patch_size`` None) fits only the sizes it was validated at (default: its
    ``trained_resolution``): an image of another size that shows the same field of view has another pixel scale
    (a 64x64-trained prior at 320x320 sees structures 5x larger, in pixels, than it learnt). A patch-trained prior
    fits any image at least one patch large (and within ``validated_sizes`` when those are stated). Priors without
    size metadata (Gaussian mixtures, empirical priors) are not checked.

    Example:
        >>> import warnings, invdiff
        >>> p = invdiff.priors.load("ct-phantom-64")
        >>> check_prior_fits(p, (1, 64, 64)) is None
        True
        >>> with warnings.catch_warnings(record=True) as w:
        ...     warnings.simplefilter("always")
        ...     _ = check_prior_fits(p, (1, 320, 320))
        >>> w[0].category.__name__
        'PriorSizeWarning'
    """
    if not isinstance(strict, bool):
        fail("strict", "True or False", strict, TypeError)
    inner = getattr(prior, "prior2d", None)      # Lifted2DPrior: a 2D prior applied slice by slice
    base = inner if isinstance(inner, Prior) else prior
    inner_cp = getattr(base, "inner", None)      # CountingPrior
    base = inner_cp if isinstance(inner_cp, Prior) else base
    k = int(getattr(base, "spatial_dims", 2) or 0)
    trained = getattr(base, "trained_resolution", None) or getattr(base, "resolution", None)
    patch = getattr(base, "patch_size", None)
    if k == 0 or (trained is None and patch is None):
        return None
    size = tuple(int(s) for s in tuple(image_size)[-k:])
    if len(size) != k:
        return None
    validated = getattr(base, "validated_sizes", None)
    validated = [tuple(int(s) for s in v) for v in validated] if validated else None
    where = " (each slice of the volume)" if base is not prior and inner is not None else ""
    name = getattr(base, "name", type(base).__name__)
    problems = []
    if patch is None:
        ok_sizes = validated or [tuple(trained)]
        if size not in ok_sizes:
            ratios = [s / t for s, t in zip(size, trained)]
            ratio = max(ratios) if max(ratios) > 1 else min(ratios)
            scale = f"{ratio:.3g}x larger" if ratio > 1 else f"{1 / ratio:.3g}x smaller"
            problems.append(
                f"prior {name!r} was trained on whole {_fmt(trained)} images (one pixel = 1/{trained[-1]} of the "
                f"field-of-view width) and validated at {', '.join(map(_fmt, ok_sizes))}; the image{where} is "
                f"{_fmt(size)}: "
                f"if it shows a whole field of view, its structures are {scale} in pixels than the prior "
                f"learnt")
    else:
        patch = tuple(int(s) for s in patch)
        if any(s < p for s, p in zip(size, patch)):
            problems.append(f"prior {name!r} was trained on {_fmt(patch)} patches; the image{where} is {_fmt(size)}, "
                            f"smaller than one patch")
        elif validated and size not in validated:
            problems.append(f"prior {name!r} (trained on {_fmt(patch)} patches) was validated at "
                            f"{', '.join(map(_fmt, validated))}; the image{where} is {_fmt(size)}")
    spacing = getattr(base, "pixel_spacing", None)
    if pixel_spacing is not None and spacing is not None:
        a = [float(v) for v in (pixel_spacing if isinstance(pixel_spacing, (tuple, list)) else [pixel_spacing] * k)]
        b = [float(v) for v in (spacing if isinstance(spacing, (tuple, list)) else [spacing] * k)]
        if any(abs(u - v) > 0.1 * v for u, v in zip(a[-k:], b[-k:])):
            problems.append(f"prior {name!r} learnt pixels of {' x '.join(f'{v:g}' for v in b[-k:])} mm; the image's "
                            f"pixels are {' x '.join(f'{v:g}' for v in a[-k:])} mm")
    if not problems:
        return None
    msg = ("; ".join(problems) + ". Results outside the trained size / scale can be far worse than a classical "
           "solver: use a prior trained for this size and scale, or resample the image.")
    if strict:
        raise PriorSizeError(msg + " (strict mode: refused)")
    warnings.warn(msg + " (strict=True makes this an error)", PriorSizeWarning, stacklevel=stacklevel + 1)
    return msg


__all__: Sequence[str] = ["Prior", "CountingPrior", "as_sigma_tensor", "check_sigma", "check_prior_fits",
                          "PriorSizeWarning", "PriorSizeError"]

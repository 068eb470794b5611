r"""What every invdiff forward model shares: shapes, noise level, and input checks.

Every operator in :mod:`invdiff.operators` is a deepinv ``LinearPhysics`` (so deepinv's DPS, DDRM,
DiffPIR and ``prox_l2`` accept it) mixed with :class:`InvdiffPhysics`, which adds

- ``x_shape`` / ``y_shape``: the shape of one image / one measurement, without the batch axis;
- ``is_complex``: True when x is a complex image stored as 2 real channels (real, imaginary);
- ``sigma``: the standard deviation of the additive Gaussian noise on the measurements;
- :meth:`~InvdiffPhysics.check_x` / :meth:`~InvdiffPhysics.check_y`: one clear ``ValueError`` /
  ``TypeError`` naming the argument for a wrong shape, channel count, complex or integer dtype, or NaN/Inf.

The measurement model is always

.. math::  y = A x + n, \qquad n \sim \mathcal{N}(0, \sigma^2 I) \text{ on the measured entries},

with deepinv's ``GaussianNoise``. Masked operators (inpainting, Cartesian MRI) add noise only where
the mask is 1, so unmeasured entries of ``y`` are exactly 0 (deepinv does this in their ``noise``).

Checks: ``A`` and ``A_adjoint`` check shapes and dtype (floating point, real) on every call (no device sync,
cheap); the full check including NaN/Inf runs in :meth:`check_x` / :meth:`check_y` and when simulating data with
``physics(x)``.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .._validate import check_tensor, describe, fail


def _shape_str(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("B" if s is None else str(s) for s in shape) + ")"


def gaussian_noise(sigma, rng: torch.Generator | None = None):
    """deepinv ``GaussianNoise`` with standard deviation ``sigma`` (a number >= 0)."""
    import deepinv as dinv

    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
        fail("sigma", "a number >= 0 (noise standard deviation)", sigma, TypeError)
    if not sigma >= 0 or sigma != sigma or sigma == float("inf"):
        fail("sigma", "a finite number >= 0 (noise standard deviation)", sigma)
    if rng is not None and not isinstance(rng, torch.Generator):
        fail("rng", "a torch.Generator or None", rng, TypeError)
    return dinv.physics.GaussianNoise(sigma=float(sigma), rng=rng)


class InvdiffPhysics:
    """Mixin for invdiff operators (use before the deepinv base class in the MRO).

    Subclasses call :meth:`_setup_shapes` at the end of ``__init__``; shape checks in ``A`` and
    ``A_adjoint`` start from then on (deepinv's constructors may call ``A`` before that, e.g. for the
    operator norm of CT).

    Example:
        >>> import torch
        >>> from invdiff.operators import MRI
        >>> op = MRI(None, (2, 8, 8), sigma=0.01)
        >>> op.x_shape, op.y_shape, op.is_complex, op.sigma
        ((2, 8, 8), (2, 8, 8), True, 0.01)
        >>> op.check_x(torch.zeros(1, 1, 8, 8))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: argument 'x': expected an image of shape (B, 2, 8, 8): a complex image as 2 real channels ...
    """

    x_shape: tuple[int, ...] = ()
    y_shape: tuple[int, ...] = ()
    is_complex: bool = False

    # ---- set-up ------------------------------------------------------------------------------------
    def _setup_shapes(self, x_shape, y_shape, is_complex: bool = False):
        self.x_shape = tuple(int(s) for s in x_shape)
        self.y_shape = tuple(int(s) for s in y_shape)
        self.is_complex = bool(is_complex)
        self._invdiff_ready = True

    # ---- noise level -------------------------------------------------------------------------------
    @property
    def sigma(self) -> float:
        """Standard deviation of the Gaussian measurement noise (0 for noiseless)."""
        s = getattr(self.noise_model, "sigma", 0.0)
        if isinstance(s, torch.Tensor):
            if s.numel() == 0:
                return 0.0
            v = s.reshape(-1)[0].detach().cpu()
            # shortest decimal that round-trips the stored float32 (0.01, not 0.009999999776)
            return float(str(v.numpy())) if v.dtype == torch.float32 else float(v)
        return float(s)

    @sigma.setter
    def sigma(self, value):
        new = gaussian_noise(value, getattr(self.noise_model, "rng", None))
        self.noise_model = new.to(self._device_holder.device if hasattr(self, "_device_holder") else "cpu")

    # ---- parameter batch (per-sample masks, kernels, coil maps) ----------------------------------
    def _param_batch(self) -> int:
        """Batch size of per-sample operator parameters (1 if shared by all samples)."""
        return 1

    # ---- checks ----------------------------------------------------------------------------------
    def _channel_hint(self) -> str:
        if self.is_complex:
            return " (a complex image as 2 real channels: real, imaginary)"
        return ""

    def _check_shape(self, name: str, t, expected: tuple[int, ...], what: str):
        if not isinstance(t, torch.Tensor):
            fail(name, "a torch.Tensor", t, TypeError)
        if t.is_complex():
            fail(name, f"a real tensor of shape {_shape_str((None,) + expected)}: complex data is stored as "
                       "2 real channels (use torch.view_as_real(z).movedim(-1, 1))", t, TypeError)
        if not t.is_floating_point():
            fail(name, f"a floating-point tensor (torch.float32 or float64) of shape "
                       f"{_shape_str((None,) + expected)}; convert integer images first, e.g. {name}.float()", t,
                 TypeError)
        full = (None,) + tuple(expected)
        ok = t.dim() == len(full) and all(e is None or e == s for e, s in zip(full, t.shape))
        if not ok:
            hint = self._channel_hint() if what == "an image" else ""
            if self.is_complex and t.dim() == len(full) and t.shape[1] != expected[0]:
                hint = (f": {'a complex image' if what == 'an image' else 'complex data'} as {expected[0]} real "
                        f"channels{' (real, imaginary)' if expected[0] == 2 else ''}, not {t.shape[1]} "
                        f"channel{'s' if t.shape[1] != 1 else ''}")
            elif t.dim() == len(full) - 1:
                hint += "; the batch axis is missing (add one with t[None])"
            fail(name, f"{what} of shape {_shape_str(full)}{hint}", t)
        pb = self._param_batch()
        if pb > 1 and t.shape[0] != pb:
            fail(name, f"batch size {pb} (the operator holds per-sample parameters for {pb} samples)", t)
        return t

    def _check_x_shape(self, x, name: str = "x"):
        if getattr(self, "_invdiff_ready", False):
            self._check_shape(name, x, self.x_shape, "an image")
        return x

    def _check_y_shape(self, y, name: str = "y"):
        if getattr(self, "_invdiff_ready", False):
            self._check_shape(name, y, self.y_shape, "a measurement")
        return y

    def check_x(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        """Raise one clear error unless ``x`` is a finite real image of shape ``(B, *x_shape)``."""
        self._check_shape(name, x, self.x_shape, "an image")
        check_tensor(name, x, finite=True)
        return x

    def check_y(self, y: torch.Tensor, name: str = "y") -> torch.Tensor:
        """Raise one clear error unless ``y`` is a finite real measurement of shape ``(B, *y_shape)``."""
        self._check_shape(name, y, self.y_shape, "a measurement")
        check_tensor(name, y, finite=True)
        return y

    # ---- simulation: y = noise(A x), with the full input check ------------------------------------
    def forward(self, x, **kwargs):
        if kwargs:  # per-call parameters (physics(x, mask=m)) first, so the batch check sees them
            self.update_parameters(**kwargs)
        self.check_x(x)
        return super().forward(x, **kwargs)

    def extra_repr(self) -> str:
        return f"x_shape={self.x_shape}, y_shape={self.y_shape}, sigma={self.sigma:g}"


def parse_img_size(img_size, *, name: str = "img_size", channels: int | None = None,
                   spatial_dims: Sequence[int] = (2,), default_channels: int = 1) -> tuple[int, ...]:
    """Normalise ``img_size`` to ``(C, *spatial)``.

    ``img_size`` may be ``(H, W)`` (then C = ``default_channels``), ``(C, H, W)`` or ``(C, D, H, W)``
    (only if 3 is in ``spatial_dims``). ``channels``, if given, is the only accepted C.
    """
    if isinstance(img_size, torch.Size):
        img_size = tuple(img_size)
    if not isinstance(img_size, (tuple, list)) or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in img_size):
        fail(name, "a tuple of ints such as (C, H, W)", img_size, TypeError)
    img_size = tuple(img_size)
    if any(s < 1 for s in img_size):
        fail(name, "positive sizes", img_size)
    allowed = sorted({d + 1 for d in spatial_dims} | ({2} if 2 in spatial_dims else set()))
    if len(img_size) not in allowed:
        forms = []
        if 2 in spatial_dims:
            forms += ["(H, W)", "(C, H, W)"]
        if 3 in spatial_dims:
            forms += ["(C, D, H, W)"]
        fail(name, " or ".join(forms), img_size)
    if len(img_size) == 2:
        img_size = (default_channels if channels is None else channels,) + img_size
    if channels is not None and img_size[0] != channels:
        fail(name, f"{channels} channels first, e.g. ({channels}, H, W)"
                   f"{' (complex images are 2 real channels)' if channels == 2 else ''}", img_size)
    return img_size


def format_mask(mask, spatial: tuple[int, ...], channels: Sequence[int], *, name: str = "mask",
                binary: bool = True) -> torch.Tensor:
    """Normalise a mask to ``(B_m, c, *spatial)`` with ``c`` in ``channels``.

    Accepted: ``spatial``, ``(c, *spatial)``, ``(B_m, c, *spatial)``; for 3D ``spatial = (D, H, W)`` also
    the 2D forms with ``(H, W)`` only, repeated over the D slices.
    """
    if isinstance(mask, torch.Tensor) and mask.dtype == torch.bool:
        mask = mask.float()
    check_tensor(name, mask, finite=True)
    m = mask if mask.is_floating_point() else mask.float()
    nsp = len(spatial)
    forms = ", ".join(_shape_str(f) for f in [spatial, (channels[-1],) + spatial])
    if m.dim() >= nsp and tuple(m.shape[-nsp:]) == tuple(spatial):
        lead = tuple(m.shape[:-nsp])
    elif nsp == 3 and m.dim() >= 2 and tuple(m.shape[-2:]) == tuple(spatial[-2:]) and m.dim() <= 4:
        lead = tuple(m.shape[:-2])
        m = m.unsqueeze(-3).expand(*m.shape[:-2], spatial[0], *spatial[-2:])
    else:
        fail(name, f"a mask whose last dimensions match the image size {tuple(spatial)} "
                   f"(shapes {forms} or with a batch axis)", mask)
    if len(lead) == 0:
        m = m.reshape(1, 1, *spatial)
    elif len(lead) == 1:
        m = m.reshape(1, lead[0], *spatial)
    elif len(lead) == 2:
        m = m.reshape(lead[0], lead[1], *spatial)
    else:
        fail(name, f"at most 2 leading axes (batch, channel) before the image size {tuple(spatial)}", mask)
    if m.shape[1] not in tuple(channels):
        fail(name, f"{' or '.join(map(str, sorted(set(channels))))} channel(s) before the image size "
                   f"{tuple(spatial)}", mask)
    if binary and not bool(((m == 0) | (m == 1)).all()):
        fail(name, "a binary mask with values 0 (not measured) and 1 (measured)",
             f"{describe(mask)} with values in [{float(m.min()):g}, {float(m.max()):g}]")
    return m.contiguous().clone()


__all__ = ["InvdiffPhysics", "gaussian_noise", "parse_img_size", "format_mask"]

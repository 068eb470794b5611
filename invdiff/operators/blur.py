r"""Convolution blur (deepinv ``Blur`` / ``BlurFFT``) and blur kernels that sum to 1.

Kernel convention: a true convolution (not a correlation), kernel centre at index ``(h // 2, w // 2)``
for odd sizes (deepinv's convention), kernels returned by :func:`gaussian_kernel`,
:func:`motion_kernel` and :func:`uniform_kernel` have shape ``(1, 1, h, w)``, are >= 0 and sum to 1.
"""
from __future__ import annotations

import deepinv as dinv
import torch

from .._validate import check_choice, check_positive, check_tensor, fail
from .base import InvdiffPhysics, gaussian_noise, parse_img_size

PADDINGS = ("valid", "circular", "reflect", "replicate", "zeros")


def _format_kernel(kernel, n_spatial: int, channels: int, name: str = "kernel") -> torch.Tensor:
    """Kernel to ``(b, 1|C, *k)``; accepted: ``k``, ``(c, *k)``, ``(b, c, *k)``."""
    if not isinstance(kernel, torch.Tensor):
        fail(name, "a torch.Tensor kernel such as gaussian_kernel(9, 2.0)", kernel, TypeError)
    check_tensor(name, kernel, ndim=(n_spatial, n_spatial + 1, n_spatial + 2), finite=True)
    k = kernel if kernel.is_floating_point() else kernel.float()
    while k.dim() < n_spatial + 2:
        k = k.unsqueeze(0)
    if k.shape[1] not in (1, channels):
        fail(name, f"1 or {channels} channel(s) (shape (b, c, {'d, ' if n_spatial == 3 else ''}h, w))", kernel)
    return k.contiguous()


def _pad_small_kernel(k: torch.Tensor) -> torch.Tensor:
    """Zero-pad kernel axes of size 1 or 2 to size 3 without changing the convolution.

    Works around deepinv 0.5 ``conv_transpose2d/3d`` (``_apply_transpose_padding``): with padding
    ``circular`` a kernel axis of size <= 2, and with ``reflect`` / ``replicate`` an axis of size 1, makes
    ``A_adjoint`` raise (circular, reflect) or silently return a wrong adjoint (replicate: relative
    error 1-40 %). deepinv puts the kernel centre at index ``n // 2`` (for odd and even n), so size 1 is
    padded on both sides and size 2 gets one trailing zero (the centre index stays 1).
    """
    pads = []
    for n in reversed(k.shape[2:]):
        pads += [1, 1] if n == 1 else [0, 1] if n == 2 else [0, 0]
    return torch.nn.functional.pad(k, pads) if any(pads) else k


class Blur(InvdiffPhysics, dinv.physics.Blur):
    r"""Blur forward model: convolution with a kernel :math:`k`, then Gaussian noise.

    .. math::  y = P(k * x) + n, \qquad n \sim \mathcal{N}(0, \sigma^2 I)

    where :math:`P` is the boundary model: ``"circular"`` (periodic), ``"reflect"``, ``"replicate"``,
    ``"zeros"`` (output the size of the image) or ``"valid"`` (no padding: the output shrinks to
    :math:`(H - h + 1) \times (W - w + 1)`). The adjoint is the exact transpose convolution including the
    boundary folding (deepinv). ``use_fft=True`` computes the same operator with FFTs (faster for large
    kernels). For a decomposable (closed-form prox / DDRM-compatible) circular blur see
    :class:`CircularBlur`.

    Args:
        kernel: ``(h, w)``, ``(1|C, h, w)`` or per-sample ``(B, 1|C, h, w)``; volumes: one more axis
            (``(d, h, w)``...). See :func:`gaussian_kernel`, :func:`motion_kernel`, :func:`uniform_kernel`.
        img_size: ``(C, H, W)``, ``(H, W)`` or ``(C, D, H, W)`` (3D: only ``valid`` and ``circular``).
        padding: one of ``"circular"`` (default), ``"valid"``, ``"reflect"``, ``"replicate"``, ``"zeros"``.
        use_fft: FFT-based convolution.
        sigma: noise standard deviation.
        rng: optional ``torch.Generator`` for the noise.

    Example:
        >>> import torch
        >>> from invdiff.operators import Blur, gaussian_kernel
        >>> op = Blur(gaussian_kernel(5, 1.0), (1, 16, 16), padding="valid")
        >>> op.A(torch.ones(2, 1, 16, 16)).shape, op.y_shape
        (torch.Size([2, 1, 12, 12]), (1, 12, 12))
    """

    def __init__(self, kernel: torch.Tensor, img_size, padding: str = "circular", use_fft: bool = False,
                 sigma: float = 0.0, *, rng: torch.Generator | None = None):
        x_shape = parse_img_size(img_size, spatial_dims=(2, 3))
        check_choice("padding", padding, PADDINGS)
        if not isinstance(use_fft, bool):
            fail("use_fft", "True or False", use_fft, TypeError)
        nsp = len(x_shape) - 1
        if nsp == 3 and padding not in ("valid", "circular"):
            fail("padding", "'valid' or 'circular' for 3D volumes (deepinv implements only these in 3D)", padding)
        k = _format_kernel(kernel, nsp, x_shape[0])
        self._check_kernel_fits(k, x_shape, padding)
        if padding != "valid":
            k = _pad_small_kernel(k)
        super().__init__(filter=k, padding="constant" if padding == "zeros" else padding, use_fft=use_fft,
                         noise_model=gaussian_noise(sigma, rng))
        self.padding_mode = padding
        self._setup_shapes(x_shape, self._y_shape_for(k, x_shape, padding), is_complex=False)

    @staticmethod
    def _check_kernel_fits(k, x_shape, padding):
        ks, sp = tuple(k.shape[2:]), tuple(x_shape[1:])
        if any(a > b for a, b in zip(ks, sp)):
            fail("kernel", f"a kernel no larger than the image {sp}", f"kernel of size {ks}")
        if padding == "reflect" and any(a // 2 >= b for a, b in zip(ks, sp)):
            fail("kernel", f"half-size smaller than the image {sp} for reflect padding", f"kernel of size {ks}")

    @staticmethod
    def _y_shape_for(k, x_shape, padding):
        if padding == "valid":
            return (x_shape[0],) + tuple(s - a + 1 for s, a in zip(x_shape[1:], k.shape[2:]))
        return x_shape

    @property
    def kernel(self) -> torch.Tensor:
        """The kernel, ``(b, 1|C, h, w)`` (axes of size 1-2 zero-padded to 3 unless padding is 'valid')."""
        return self.filter

    def _param_batch(self) -> int:
        return int(self.filter.shape[0]) if self.filter is not None else 1

    def update_parameters(self, filter=None, **kwargs):
        if filter is not None and getattr(self, "_invdiff_ready", False):
            filter = _format_kernel(filter, len(self.x_shape) - 1, self.x_shape[0], name="filter")
            if tuple(filter.shape[2:]) != tuple(self.filter.shape[2:]) and self.padding_mode == "valid":
                fail("filter", f"a kernel of size {tuple(self.filter.shape[2:])} (it sets the 'valid' output size)",
                     filter)
            self._check_kernel_fits(filter, self.x_shape, self.padding_mode)
            if self.padding_mode != "valid":
                filter = _pad_small_kernel(filter)
        super().update_parameters(filter=filter, **kwargs)

    def A(self, x, filter=None, **kwargs):
        self.update_parameters(filter=filter, **kwargs)
        self._check_x_shape(x)
        return super().A(x)

    def A_adjoint(self, y, filter=None, **kwargs):
        self.update_parameters(filter=filter, **kwargs)
        self._check_y_shape(y)
        return super().A_adjoint(y)


class CircularBlur(InvdiffPhysics, dinv.physics.BlurFFT):
    r"""Circular blur as a decomposable operator (deepinv ``BlurFFT``): closed-form ``prox_l2`` and ``A_dagger``.

    .. math::  y = k \circledast x + n = F^{-1} \mathrm{diag}(\hat k) F x + n

    Same operator as ``Blur(kernel, img_size, padding="circular")`` (agrees to float32 precision), but
    ``prox_l2`` / ``A_dagger`` are exact Fourier-domain divisions instead of CG. Caveat (deepinv 0.5):
    the "SVD" uses the real FFT, whose :math:`V` is not orthonormal, so DDRM's noise model on this
    operator is only approximate; ``A``, ``A_adjoint``, ``prox_l2`` and ``A_dagger`` are exact.

    Args:
        kernel: ``(h, w)``, ``(1|C, h, w)`` or ``(1, 1|C, h, w)``.
        img_size: ``(C, H, W)`` or ``(H, W)``.
        sigma: noise standard deviation; rng: optional noise generator.

    Example:
        >>> import torch
        >>> from invdiff.operators import CircularBlur, uniform_kernel
        >>> op = CircularBlur(uniform_kernel(3), (1, 8, 8))
        >>> x = torch.rand(1, 1, 8, 8)
        >>> bool(torch.allclose(op.A_dagger(op.A(x)), x, atol=1e-4))
        True
    """

    def __init__(self, kernel: torch.Tensor, img_size, sigma: float = 0.0, *, rng: torch.Generator | None = None):
        x_shape = parse_img_size(img_size)
        k = _format_kernel(kernel, 2, x_shape[0])
        if k.shape[0] != 1:
            fail("kernel", "one kernel for all samples (shape (1, c, h, w)); use Blur for per-sample kernels", kernel)
        Blur._check_kernel_fits(k, x_shape, "circular")
        super().__init__(img_size=x_shape, filter=k, noise_model=gaussian_noise(sigma, rng))
        self._setup_shapes(x_shape, x_shape, is_complex=False)

    @property
    def kernel(self) -> torch.Tensor:
        return self.filter

    def A(self, x, filter=None, **kwargs):
        self._check_x_shape(x)
        return super().A(x, filter=filter, **kwargs)

    def A_adjoint(self, y, filter=None, **kwargs):
        self._check_y_shape(y)
        return super().A_adjoint(y, filter=filter, **kwargs)


# ---------------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------------
def _size2(size, name="size") -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if not (isinstance(size, (tuple, list)) and len(size) == 2
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size)):
        fail(name, "a positive int or a pair of positive ints (h, w)", size)
    return tuple(size)


def gaussian_kernel(size, std, angle: float = 0.0) -> torch.Tensor:
    r"""Gaussian kernel :math:`\propto \exp(-\tfrac12 u^\top R \Sigma^{-1} R^\top u)`, shape ``(1, 1, h, w)``, sum 1.

    ``std`` in pixels: a number (isotropic) or a pair (along the two axes before rotation by ``angle``
    degrees). Built with deepinv ``gaussian_blur`` and renormalised to sum exactly to 1.

    >>> k = gaussian_kernel(7, 1.5); k.shape, round(float(k.sum()), 6)
    (torch.Size([1, 1, 7, 7]), 1.0)
    """
    h, w = _size2(size)
    stds = std if isinstance(std, (tuple, list)) else (std, std)
    if len(stds) != 2:
        fail("std", "a positive number or a pair of positive numbers", std)
    for s in stds:
        check_positive("std", s)
    from deepinv.physics.functional import gaussian_blur

    k = gaussian_blur((h, w), sigma=tuple(float(s) for s in stds), angle=float(angle))
    k = k.reshape(1, 1, h, w).float()
    return k / k.sum()


def uniform_kernel(size) -> torch.Tensor:
    """Box (moving-average) kernel of ones, shape ``(1, 1, h, w)``, sum 1.

    >>> uniform_kernel(2)
    tensor([[[[0.2500, 0.2500],
              [0.2500, 0.2500]]]])
    """
    h, w = _size2(size)
    return torch.full((1, 1, h, w), 1.0 / (h * w))


def motion_kernel(size, generator: torch.Generator | None = None, intensity: float = 0.25, *,
                  length_scale: float = 0.3, n_steps: int = 1000) -> torch.Tensor:
    r"""Random camera-shake kernel (deepinv ``MotionBlurGenerator``), shape ``(1, 1, h, w)``, sum 1.

    The trajectory's x and y coordinates are independent Gaussian processes with a Matérn covariance
    (Schuler et al., "Learning to deblur", TPAMI 2016); ``intensity`` is the process standard deviation
    relative to the kernel half-width (deepinv's ``sigma``; 0.25 is deepinv's default, 0.5 gives long
    streaks), ``length_scale`` its correlation length (deepinv's ``l``). The trajectory is rasterised
    as a 2D histogram; ``generator`` seeds it.

    >>> k = motion_kernel(15, torch.Generator().manual_seed(0))
    >>> k.shape, round(float(k.sum()), 6), bool((k >= 0).all())
    (torch.Size([1, 1, 15, 15]), 1.0, True)
    """
    h, w = _size2(size)
    check_positive("intensity", intensity)
    check_positive("length_scale", length_scale)
    check_positive("n_steps", n_steps, integer=True)
    if generator is not None and not isinstance(generator, torch.Generator):
        fail("generator", "a torch.Generator or None", generator, TypeError)
    gen = dinv.physics.generator.MotionBlurGenerator((h, w), rng=generator, l=float(length_scale),
                                                     sigma=float(intensity), n_steps=n_steps)
    k = gen.step(batch_size=1)["filter"].float()
    s = k.sum()
    if not s > 0:
        fail("intensity", "a value small enough for the trajectory to stay inside the kernel", intensity)
    return (k / s).reshape(1, 1, h, w)


__all__ = ["Blur", "CircularBlur", "gaussian_kernel", "uniform_kernel", "motion_kernel", "PADDINGS"]

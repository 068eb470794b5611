r"""Classical baselines under the solver contract (no prior needed).

- ``adjoint``: :math:`\hat x = A^\top y` (zero-filled MRI, back-projection for CT, masked image for inpainting).
- ``fbp``: filtered back-projection for CT operators (ramp filter, deepinv ``Tomography.A_dagger(fbp=True)``).
- ``cg``: Tikhonov least squares :math:`\min_x \tfrac12\|Ax-y\|^2 + \tfrac{\lambda}{2}\|x\|^2` by CG on
  :math:`(A^\top A+\lambda I)x = A^\top y`.
- ``tv``: :math:`\min_x \tfrac12\|Ax-y\|^2 + \lambda\,\mathrm{TV}(x)` (isotropic, channels coupled) by the
  primal-dual algorithm of Chambolle & Pock (2011, Alg. 1).
- ``l1-wavelet``: compressed-sensing MRI :math:`\min_x \tfrac12\|MFSx-y\|^2+\lambda\|\Psi x\|_1` by sigpy's
  ``L1WaveletRecon`` (Lustig et al. 2007).
"""
from __future__ import annotations

import numpy as np
import torch

from .._validate import fail
from .base import Option, SolverOutput, progress_bar, register
from .primitives import conjugate_gradient, grad_adjoint, grad_op, normal_op, op_norm_sq


@register("adjoint", needs_prior=False, sampler=False, options=())
def adjoint(y, physics, prior, *, generator, n_samples, progress):
    """Zero-filled / back-projected estimate A^T y."""
    with torch.no_grad():
        return SolverOutput(mean=physics.A_adjoint(y))


@register("fbp", needs_prior=False, sampler=False, options=())
def fbp(y, physics, prior, *, generator, n_samples, progress):
    """Filtered back-projection (CT operators only)."""
    if hasattr(physics, "fbp"):
        with torch.no_grad():
            return SolverOutput(mean=physics.fbp(y))
    import deepinv as dinv

    if not isinstance(physics, dinv.physics.Tomography):
        fail("physics", "a CT operator (invdiff.operators.CT or deepinv Tomography) for solver 'fbp'", type(physics).__name__)
    with torch.no_grad():
        return SolverOutput(mean=physics.A_dagger(y, fbp=True))


CG_OPTIONS = (
    Option("lam", float, 1e-3, "Tikhonov weight lambda", lo=0.0),
    Option("max_iter", int, 50, "CG steps", lo=1),
    Option("tol", float, 1e-6, "relative residual tolerance of CG", lo=0.0),
)


@register("cg", needs_prior=False, sampler=False, options=CG_OPTIONS)
def cg(y, physics, prior, *, generator, n_samples, progress, lam, max_iter, tol):
    """Tikhonov-regularised least squares by conjugate gradients (lam >= 0, max_iter CG steps)."""
    with torch.no_grad():
        b = physics.A_adjoint(y)
        x = conjugate_gradient(lambda v: normal_op(physics, v) + lam * v, b, max_iter=max_iter, tol=tol)
    return SolverOutput(mean=x, info={"lam": lam, "cg_iters": max_iter})


TV_OPTIONS = (
    Option("lam", float, 1e-3, "TV weight lambda", lo=0.0),
    Option("n_iter", int, 300, "Chambolle-Pock iterations", lo=1),
    Option("nonneg", bool, None, "constrain x >= 0; None: True for 1-channel, False for complex images"),
)


@register("tv", needs_prior=False, sampler=False, options=TV_OPTIONS)
def tv(y, physics, prior, *, generator, n_samples, progress, lam, n_iter, nonneg):
    r"""Total-variation regularised least squares by Chambolle-Pock primal-dual iterations.

    K = [A; grad], F(Kx) = 1/2||Ax - y||^2 + lam ||grad x||_{2,1}, G = indicator(x >= 0) if nonneg.
    Steps tau = sigma = 0.99 / ||K|| (Chambolle & Pock 2011, Thm. 1 needs tau*sigma*||K||^2 < 1).
    ``nonneg`` defaults to True for 1-channel images and False for complex (2-channel) images.
    """
    with torch.no_grad():
        x = physics.A_adjoint(y)
        if nonneg is None:
            nonneg = x.shape[1] == 1
        dims = list(range(2, x.dim()))  # all spatial axes (2D or 3D)
        L2 = op_norm_sq(physics, x, generator=generator) + 4.0 * len(dims)
        tau = sigma = 0.99 / L2 ** 0.5
        x_bar = x.clone()
        p = torch.zeros_like(y)                   # dual of the data term
        q = torch.zeros_like(grad_op(x, dims))    # dual of the TV term
        for _ in progress_bar(range(n_iter), progress, "tv"):
            # dual ascent, prox of F* (Alg. 1, line 1)
            p = (p + sigma * (physics.A(x_bar) - y)) / (1 + sigma)
            q = q + sigma * grad_op(x_bar, dims)
            mag = q.pow(2).sum(dim=(1, -1), keepdim=True).sqrt()  # couple channels and directions
            q = q / torch.clamp(mag / max(lam, 1e-30), min=1.0) if lam > 0 else torch.zeros_like(q)
            # primal descent, prox of G (line 2), extrapolation (line 3)
            x_new = x - tau * (physics.A_adjoint(p) + grad_adjoint(q, dims))
            if nonneg:
                x_new = x_new.clamp_min(0)
            x_bar = 2 * x_new - x
            x = x_new
    return SolverOutput(mean=x, info={"lam": lam, "n_iter": n_iter})


def _mri_parts(physics, y):
    """Extract (kspace complex (B,N,H,W), mask (H,W) or (B,H,W), maps complex (B,N,H,W)) from an MRI physics."""
    import deepinv as dinv

    if not isinstance(physics, (dinv.physics.MRI, dinv.physics.MultiCoilMRI)):
        fail("physics", "a Cartesian MRI operator (invdiff.operators.MRI / MultiCoilMRI) for solver 'l1-wavelet'",
             type(physics).__name__)
    if y.dim() == 4:   # single coil (B, 2, H, W)
        ksp = torch.complex(y[:, 0], y[:, 1])[:, None]
        maps = torch.ones_like(ksp)
    elif y.dim() == 5:  # multi-coil (B, 2, N, H, W)
        ksp = torch.complex(y[:, 0], y[:, 1])
        maps = physics.coil_maps
        if maps is None:
            maps = torch.ones_like(ksp)
        maps = maps.expand(ksp.shape) if maps.dim() == 4 else maps.expand(ksp.shape[0], *maps.shape[-3:])
    else:
        fail("y", "MRI k-space (B, 2, H, W) or (B, 2, N, H, W)", y)
    mask = physics.mask
    while mask.dim() > 3:
        mask = mask[:, 0]
    mask = mask.expand(ksp.shape[0], *ksp.shape[-2:])
    return ksp, mask, maps


L1W_OPTIONS = (
    Option("lam", float, 0.005, "l1 weight relative to max |A^H y|", lo=0.0),
    Option("max_iter", int, 100, "FISTA iterations", lo=1),
    Option("wave_name", str, "db4", "pywt wavelet name"),
)


@register("l1-wavelet", needs_prior=False, sampler=False, options=L1W_OPTIONS)
def l1_wavelet(y, physics, prior, *, generator, n_samples, progress, lam, max_iter, wave_name):
    r"""Compressed-sensing MRI with a Daubechies wavelet l1 penalty (sigpy ``L1WaveletRecon``, FISTA).

    ``lam`` is relative to max|A^H y| (so it does not depend on the k-space scale).
    """
    import sigpy.mri as mr

    ksp, mask, maps = _mri_parts(physics, y)
    outs = []
    for b in range(ksp.shape[0]):
        k = ksp[b].detach().cpu().numpy().astype(np.complex64)
        m = mask[b].detach().cpu().numpy().astype(np.float32)
        s = maps[b].detach().cpu().numpy().astype(np.complex64)
        scale = float(np.abs(np.sum(np.conj(s) * np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k * m, axes=(-2, -1)),
                                                                            norm="ortho"), axes=(-2, -1)), 0)).max())
        scale = max(scale, 1e-12)
        x = mr.app.L1WaveletRecon(k * m / scale, s, lamda=lam, weights=m, wave_name=wave_name, max_iter=max_iter,
                                  show_pbar=False).run()
        x = np.asarray(x) * scale
        outs.append(torch.from_numpy(np.stack([x.real, x.imag], 0).astype(np.float32)))
    return SolverOutput(mean=torch.stack(outs, 0).to(y.device), info={"lam": lam, "max_iter": max_iter})

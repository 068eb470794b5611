r"""The Gaussian likelihood of the SMC (AFDPS) sampler and the closed-form pieces of its evidence estimate.

:math:`\mu(x) = \|A x - y\|^2 / 2\sigma_y^2` batched over particles (chunked), the spectrum of :math:`A A^T` for
the Gaussian normalising constants of :math:`\log p(y)`, and Hutchinson's Laplacian estimate (``invdiff.solvers.smc``
module docstring for the equations).
"""
from __future__ import annotations

import math

import torch

from .particles import F64, map_chunked
from .primitives import inner

class GaussianLikelihood:
    r""":math:`\mu(x) = \|A(x) - y\|^2 / 2\sigma_y^2` with its gradient and Laplacian, per particle.

    Linear physics: :math:`\nabla\mu = A^\top(Ax - y)/\sigma_y^2` (no autograd), :math:`\Delta\mu = \|A\|_F^2/\sigma_y^2`
    constant (returned as None: it cancels on normalisation). Nonlinear physics: :math:`\nabla\mu` by a
    vector-Jacobian product, :math:`\Delta\mu` by Hutchinson's estimator with Rademacher probes v,
    :math:`v^\top(\nabla\mu(x + \epsilon v) - \nabla\mu(x - \epsilon v))/2\epsilon` (central differences).
    """

    def __init__(self, physics, y: torch.Tensor, sigma_y: float, *, linear: bool, chunk: int | None = None):
        self.physics, self.y, self.s2, self.linear, self.chunk = physics, y, float(sigma_y) ** 2, linear, chunk

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return map_chunked(lambda xx, yy: self.physics.A(xx) - yy, x, self.y, chunk=self.chunk)

    def value(self, r: torch.Tensor) -> torch.Tensor:
        """(B,) float64 mu from residuals."""
        return 0.5 * r.reshape(r.shape[0], -1).to(F64).pow(2).sum(1) / self.s2

    def grad(self, x: torch.Tensor, r: torch.Tensor | None = None) -> torch.Tensor:
        if self.linear:
            r = self.residual(x) if r is None else r
            with torch.no_grad():
                return map_chunked(self.physics.A_adjoint, r, chunk=self.chunk) / self.s2
        return map_chunked(self._vjp_grad, x, self.y, chunk=self.chunk)

    def _vjp_grad(self, x, y):
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            out = self.physics.A(xg)
            (g,) = torch.autograd.grad(out, xg, grad_outputs=(out - y).detach() / self.s2)
        return g.detach()

    def laplacian(self, x: torch.Tensor, *, generator, probes: int, eps: float) -> torch.Tensor | None:
        if self.linear:
            return None
        return hutchinson_laplacian(self.grad, x, generator=generator, probes=probes, eps=eps)


EVIDENCE_DENSE_MAX = 1 << 23   # n * m above which an operator without a cheap SVD is not materialised for the evidence


class GramSpectrum:
    r"""The nonzero eigenvalues :math:`\lambda_k` of :math:`AA^\top` and the projections :math:`u_k^\top e` of
    measurement-space vectors on their eigenvectors: what the Gaussian normalising constants of the evidence need.

    From a :class:`~invdiff.solvers.particles.SpectralBasis` (exact, free), else from the dense matrix of A when
    :math:`n m \le` ``EVIDENCE_DENSE_MAX`` (n applications of A, one m x m eigendecomposition), else unavailable
    (:func:`gram_spectrum` returns None).
    """

    def __init__(self, lam: torch.Tensor, proj, m: int):
        self.lam, self.proj, self.m = lam, proj, m


def _flat_y(e: torch.Tensor) -> torch.Tensor:
    if e.is_complex():
        e = torch.view_as_real(e)
    return e.reshape(e.shape[0], -1).to(F64)


def gram_spectrum(physics, basis, x_like: torch.Tensor, y: torch.Tensor) -> GramSpectrum | None:
    """See :class:`GramSpectrum`; ``y`` fixes the measurement layout (m = values per measurement)."""
    m = _flat_y(y[:1]).shape[1]
    if basis is not None:
        s = basis.s.to(device=x_like.device, dtype=F64).expand(x_like[:1].shape).reshape(-1)
        keep = s > 0

        def proj(e):
            return basis.ybar(e).to(F64).reshape(e.shape[0], -1)[:, keep]

        return GramSpectrum(s[keep] ** 2, proj, m)
    n = x_like[0].numel()
    if n * m > EVIDENCE_DENSE_MAX:
        return None
    with torch.no_grad():
        cols = []
        for i in range(0, n, 256):
            E = torch.eye(n, dtype=x_like.dtype, device=x_like.device)[i:i + 256]
            cols.append(_flat_y(physics.A(E.reshape(E.shape[0], *x_like.shape[1:]))))
        M = torch.cat(cols, 0).T                                                      # (m, n)
        lam, U = torch.linalg.eigh(M @ M.T)
        keep = lam > lam.max().clamp_min(1e-300) * max(M.shape) * 1e-12
    Uk = U[:, keep]
    return GramSpectrum(lam[keep], lambda e: _flat_y(e) @ Uk, m)


def log_gaussian_evidence(spec: GramSpectrum, e: torch.Tensor, rho2: float, v: float) -> torch.Tensor:
    r"""(B,) :math:`\log\mathcal N(e; 0, \rho^2 AA^\top + vI_m)` for residuals :math:`e = y - Am_0` ((B, *y_shape)):
    :math:`-\tfrac12[m\log 2\pi + \sum_k\log(\rho^2\lambda_k + v) + (m - r)\log v + \sum_k \hat e_k^2/(\rho^2\lambda_k + v)
    + (\|e\|^2 - \sum_k\hat e_k^2)/v]`, :math:`\hat e_k = u_k^\top e`, r the rank."""
    ef, eh = _flat_y(e), spec.proj(e)
    d = rho2 * spec.lam + v
    r = spec.lam.numel()
    quad = (eh ** 2 / d).sum(1) + ((ef ** 2).sum(1) - (eh ** 2).sum(1)).clamp_min(0) / v
    return -0.5 * (spec.m * math.log(2 * math.pi) + torch.log(d).sum() + (spec.m - r) * math.log(v) + quad)


def hutchinson_laplacian(grad_fn, x: torch.Tensor, *, generator, probes: int = 1, eps: float = 1e-3) -> torch.Tensor:
    r"""(B,) Hutchinson (1989) estimate of :math:`\mathrm{tr}\,\nabla^2 f` per sample from the gradient ``grad_fn``:
    :math:`\frac1M\sum_m v_m^\top(\nabla f(x + \epsilon v_m) - \nabla f(x - \epsilon v_m))/2\epsilon` with Rademacher
    :math:`v_m`; unbiased for quadratic f, O(eps^2) bias otherwise."""
    gdev = generator.device if generator is not None else torch.device("cpu")
    total = torch.zeros(x.shape[0], dtype=F64, device=x.device)
    for _ in range(probes):
        v = (torch.randint(0, 2, x.shape, generator=generator, device=gdev) * 2 - 1).to(x)
        total += inner(v, grad_fn(x + eps * v) - grad_fn(x - eps * v)).to(F64) / (2 * eps)
    return total / probes

r"""Numerical primitives shared by all solvers, written once.

- :func:`inner` / :func:`conjugate_gradient`: per-sample, conjugated (complex-safe) inner products and
  batched CG with warm start, for Hermitian positive (semi-)definite systems :math:`Hx=b`.
- :func:`grad_op` / :func:`grad_adjoint`: forward finite differences along chosen axes (Neumann
  boundary: the last difference is 0) and their exact adjoint (negative divergence); z-only TV reuses them.
- :func:`finite_diff` / :func:`finite_diff_adjoint`: one-axis forward difference with a Neumann or circular
  boundary and its exact adjoint; :func:`soft_threshold`: prox of the (channel-coupled) l1 norm.
- :func:`prox_l2`: :math:`\arg\min_u \tfrac g2\|Au-y\|^2 + \tfrac12\|u-x\|^2`, exact where the operator offers
  ``prox_l2_exact`` (low-rank CT, line-mask multi-coil MRI), else warm-started CG.
- :func:`op_norm_sq`: :math:`\|A\|_2^2` by power iteration on :math:`A^\top A`.
- :func:`preserve_solver_settings`: context manager undoing deepinv's ``prox_l2``/``A_dagger`` side effects
  (they overwrite ``physics.max_iter``, ``tol`` and ``solver``; deepinv audit §1.7).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch

from .._validate import check_choice, check_positive


def inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    r"""Per-sample :math:`\mathrm{Re}\langle a, b\rangle = \mathrm{Re}\sum_i \bar a_i b_i` over all but dim 0, shape (B,).

    For real 2-channel complex images this equals the real part of the complex inner product.
    """
    prod = a.conj() * b if a.is_complex() else a * b
    return prod.reshape(a.shape[0], -1).sum(-1).real


def _bc(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype if not like.is_complex() else v.dtype)


def conjugate_gradient(H: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, x0: torch.Tensor | None = None,
                       max_iter: int = 20, tol: float = 0.0, eps: float = 1e-30,
                       callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
    r"""Solve :math:`Hx=b` by conjugate gradients (Hestenes & Stiefel 1952), independently per sample.

    ``H`` must be Hermitian positive semi-definite and act sample-wise on batches. Each sample has its own
    step sizes (alpha, beta per sample), so two problems stacked in a batch give the same answers as solved
    separately. Samples whose relative residual ``||r||/||b||`` fell below ``tol`` are frozen. ``callback(k, x, r)``
    is called after every iteration.

    >>> import torch
    >>> M = torch.tensor([[4., 1.], [1., 3.]])
    >>> b = torch.tensor([[1., 2.]])
    >>> x = conjugate_gradient(lambda v: v @ M, b, max_iter=2)
    >>> torch.allclose(x @ M, b, atol=1e-5)
    True
    """
    check_positive("max_iter", max_iter, integer=True)
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - H(x) if x0 is not None else b.clone()
    p = r.clone()
    rs = inner(r, r)
    b_norm = inner(b, b).sqrt().clamp_min(eps)
    # a sample is frozen once its residual is at round-off level: stepping on would divide round-off by
    # round-off (pHp ~ 0) and blow up (seen on single-coil MRI, where CG converges in 1-2 steps)
    floor = torch.finfo(b.real.dtype if b.is_complex() else b.dtype).eps * 10
    active = rs.sqrt() > floor * b_norm
    # early exit when every sample is frozen: reading the flag back stalls an accelerator once per iteration, so
    # it is checked on the CPU only (elsewhere frozen samples take zero steps, with the same result)
    early_exit = b.device.type == "cpu"
    zero = torch.zeros_like(rs)
    stop = max(tol, floor) * b_norm
    for k in range(max_iter):
        if early_exit and not bool(active.any()):
            break
        Hp = H(p)
        pHp = inner(p, Hp)
        alpha = _bc(torch.where(active & (pHp > eps), rs / pHp.clamp_min(eps), zero), x)
        x = x + alpha * p
        r = r - alpha * Hp
        rs_new = inner(r, r)
        if callback is not None:
            callback(k, x, r)
        active = active & (rs_new.sqrt() > stop)
        beta = torch.where(active, rs_new / rs.clamp_min(eps), zero)
        p = r + _bc(beta, p) * p
        rs = rs_new
    return x


def normal_op(physics, v: torch.Tensor) -> torch.Tensor:
    r""":math:`A^\top A v`: the operator's fused ``A_adjoint_A`` when it has one (deepinv ``LinearPhysics``;
    invdiff's multi-coil MRI fuses the FFTs), else ``A_adjoint(A(v))`` (any object with ``A`` / ``A_adjoint``)."""
    f = getattr(physics, "A_adjoint_A", None)
    return f(v) if f is not None else physics.A_adjoint(physics.A(v))


def prox_l2(physics, x: torch.Tensor, y: torch.Tensor, gamma, *, ATy: torch.Tensor | None = None,
            cg_iters: int = 10, exact: bool = True) -> torch.Tensor:
    r""":math:`\mathrm{prox}(x) = \arg\min_u \tfrac\gamma2\|Au - y\|^2 + \tfrac12\|u - x\|^2`, i.e.
    :math:`(I + \gamma A^\top A)u = x + \gamma A^\top y`.

    Exact when ``exact`` and the operator has a ``prox_l2_exact(x, y, gamma)`` that returns a tensor: invdiff's CT
    (Woodbury identity on the cached eigendecomposition of :math:`AA^\top` when there are few measurements,
    :meth:`invdiff.operators.CT.prox_l2_exact`) and multi-coil MRI with a line mask (one eigendecomposition per image
    line, :class:`invdiff.operators.mri.LineBlocks`), each within a memory bound. Otherwise ``cg_iters`` CG steps
    started at ``x`` (``ATy``: :math:`A^\top y` when the caller keeps it). ``gamma``: a number or one-element tensor.

    >>> import torch
    >>> from invdiff.operators import MatrixOperator
    >>> op = MatrixOperator(torch.tensor([[1., 0.], [0., 2.]]))
    >>> prox_l2(op, torch.zeros(1, 2), torch.tensor([[1., 2.]]), 1.0, cg_iters=2)   # (I + A^T A) u = A^T y
    tensor([[0.5000, 0.8000]])
    """
    if exact:
        f = getattr(physics, "prox_l2_exact", None)
        u = f(x, y, gamma) if f is not None else None
        if u is not None:
            return u
    ATy = physics.A_adjoint(y) if ATy is None else ATy
    return conjugate_gradient(lambda v: v + gamma * normal_op(physics, v), x + gamma * ATy, x0=x, max_iter=cg_iters)


def grad_op(x: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """Forward differences of ``x`` along ``dims`` (Neumann boundary), stacked on a new last axis."""
    out = []
    for d in dims:
        g = torch.zeros_like(x)
        n = x.shape[d]
        g.narrow(d, 0, n - 1).copy_(x.narrow(d, 1, n - 1) - x.narrow(d, 0, n - 1))
        out.append(g)
    return torch.stack(out, dim=-1)


def grad_adjoint(g: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """Exact adjoint of :func:`grad_op` (the negative divergence)."""
    x = torch.zeros_like(g[..., 0])
    for i, d in enumerate(dims):
        gi = g[..., i]
        n = gi.shape[d]
        x.narrow(d, 1, n - 1).add_(gi.narrow(d, 0, n - 1))
        x.narrow(d, 0, n - 1).sub_(gi.narrow(d, 0, n - 1))
    return x


def op_norm_sq(physics, x_like: torch.Tensor, n_iter: int = 30, generator: torch.Generator | None = None) -> float:
    r""":math:`\|A\|_2^2` (largest eigenvalue of :math:`A^\top A`) by power iteration, starting from a seeded random vector."""
    v = torch.randn(x_like.shape, generator=generator, dtype=x_like.dtype, device=x_like.device)
    v = v / v.norm()
    lam = 0.0
    with torch.no_grad():
        for _ in range(n_iter):
            w = normal_op(physics, v)
            lam = float(inner(v, w).sum())
            v = w / w.norm().clamp_min(1e-30)
    return lam


@contextlib.contextmanager
def preserve_solver_settings(physics):
    """Restore ``physics.max_iter``, ``tol``, ``solver`` after deepinv calls that overwrite them."""
    saved = {k: getattr(physics, k) for k in ("max_iter", "tol", "solver") if hasattr(physics, k)}
    try:
        yield physics
    finally:
        for k, v in saved.items():
            setattr(physics, k, v)


def noise_sigma(physics, default: float = 0.0) -> float:
    """Gaussian noise std of a deepinv physics (0 when it has no Gaussian noise model)."""
    nm = getattr(physics, "noise_model", None)
    s = getattr(nm, "sigma", None)
    if s is None:
        return default
    return float(torch.as_tensor(s).reshape(-1)[0])


def x_template(y: torch.Tensor, physics) -> torch.Tensor:
    """A zero tensor with the shape/dtype of x, found through the adjoint (no pseudo-inverse solve)."""
    with torch.no_grad():
        return torch.zeros_like(physics.A_adjoint(y))


# ------------------------------------------------------------------------------------------------
# one-axis finite differences with a chosen boundary, and the (channel-coupled) soft threshold;
# used by the z-direction TV of the 3D solvers (:mod:`invdiff.solvers.ztv`)
# ------------------------------------------------------------------------------------------------
BOUNDARIES = ("neumann", "circular")


def finite_diff(x: torch.Tensor, dim: int, boundary: str = "neumann") -> torch.Tensor:
    r"""Forward difference :math:`(Dx)_k = x_{k+1} - x_k` along ``dim``, same shape as ``x``.

    ``boundary="neumann"``: the last difference is 0 (equals ``grad_op(x, [dim])[..., 0]``);
    ``"circular"``: the last one wraps, :math:`x_0 - x_{n-1}` (the released DDS / DiffusionMBIR ``_Dz``).
    """
    check_choice("boundary", boundary, BOUNDARIES)
    if boundary == "circular":
        return torch.roll(x, -1, dims=dim) - x
    return grad_op(x, [dim])[..., 0]


def finite_diff_adjoint(v: torch.Tensor, dim: int, boundary: str = "neumann") -> torch.Tensor:
    r"""Exact adjoint of :func:`finite_diff`: circular :math:`(D^\top v)_k = v_{k-1} - v_k` (indices mod n);
    Neumann the negative divergence of :func:`grad_adjoint` (the last entry of ``v`` is ignored)."""
    check_choice("boundary", boundary, BOUNDARIES)
    if boundary == "circular":
        return torch.roll(v, 1, dims=dim) - v
    return grad_adjoint(v[..., None], [dim])


def soft_threshold(v: torch.Tensor, thresh: float, channel_dim: int | None = 1) -> torch.Tensor:
    r"""Proximal map of :math:`t\|\cdot\|_{2,1}`: :math:`v \max(1 - t/|v|, 0)` with :math:`|v|` the 2-norm over
    ``channel_dim`` (the magnitude of a complex 2-channel value; plain soft thresholding for 1 channel or
    ``channel_dim=None``)."""
    if channel_dim is None or v.shape[channel_dim] == 1:
        return torch.sign(v) * (v.abs() - thresh).clamp_min(0)
    mag = v.pow(2).sum(channel_dim, keepdim=True).sqrt()
    return v * (1 - thresh / mag.clamp_min(1e-30)).clamp_min(0)

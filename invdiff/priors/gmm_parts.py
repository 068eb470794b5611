r"""The building blocks of the exact Gaussian-mixture algebra (:mod:`invdiff.priors.gmm`): the low-rank-plus-floor
covariance form, argument checks, rank padding, and the matrix form of a linear forward operator (materialised
column by column up to :data:`MATRIX_MAX`).
"""
from __future__ import annotations

import copy
import math
import warnings
from typing import NamedTuple

import torch

from .._validate import check_positive, check_tensor, describe, fail

F64 = torch.float64
#: Largest n (or m) for which a matrix-free operator is materialised column by column.
MATRIX_MAX = 4096
_CHUNK = 256  # columns pushed through a matrix-free operator at once

class LowRankCov(NamedTuple):
    r"""Covariances :math:`C_k = U_k\,\mathrm{diag}(s_k)\,U_k^\top + d_k I` with orthonormal :math:`U_k`.

    The fields are the arguments of :meth:`GaussianMixture.low_rank`, so a mixture round-trips through it.
    ``variances`` may be negative (a posterior shrinks the variance below the floor) but ``s + d >= 0``.
    """

    factors: torch.Tensor    # (K, n, r), orthonormal columns
    variances: torch.Tensor  # (K, r)
    floor: torch.Tensor      # (K,)

    def dense(self) -> torch.Tensor:
        """The (K, n, n) matrices (only for small n)."""
        U, s, d = self.factors, self.variances, self.floor
        eye = torch.eye(U.shape[1], dtype=U.dtype, device=U.device)
        return (U * s[:, None, :]) @ U.transpose(1, 2) + d[:, None, None] * eye


# ------------------------------------------------------------------------------------------------
# argument checks
# ------------------------------------------------------------------------------------------------
def _eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype if dtype.is_floating_point else F64).eps


def _check_event(means: torch.Tensor, img_shape) -> tuple[int, int, tuple[int, ...]]:
    """K, n and event shape from ``means`` (K, n) or (K, *img_shape)."""
    check_tensor("means", means)
    if img_shape is None:
        if means.dim() != 2:
            fail("means", "a (K, n) tensor (pass img_shape=(C, H, W) for image priors)", means)
        return means.shape[0], means.shape[1], (means.shape[1],)
    if isinstance(img_shape, torch.Size):
        img_shape = tuple(img_shape)
    if (not isinstance(img_shape, (tuple, list)) or len(img_shape) not in (3, 4)
            or not all(isinstance(s, int) and s > 0 for s in img_shape)):
        fail("img_shape", "(C, H, W) or (C, D, H, W) with positive integers", describe(img_shape))
    img_shape = tuple(int(s) for s in img_shape)
    n = math.prod(img_shape)
    if means.dim() == 2 and means.shape[1] == n:
        return means.shape[0], n, img_shape
    if tuple(means.shape[1:]) == img_shape:
        return means.shape[0], n, img_shape
    fail("means", f"shape (K, {n}) or (K, {', '.join(map(str, img_shape))}) for img_shape={img_shape}", means)


def _check_weights(weights, K: int, device) -> torch.Tensor:
    """Validated log-weights (K,) in float64."""
    check_tensor("weights", weights, ndim=1)
    if weights.shape[0] != K:
        fail("weights", f"{K} values (one per component of 'means')", weights)
    w = weights.to(device=device, dtype=F64)
    if (w < 0).any():
        fail("weights", "non-negative values", f"minimum {float(w.min()):.3g}")
    total = float(w.sum())
    if abs(total - 1.0) > max(1e-5, 100 * _eps(weights.dtype)):
        fail("weights", "values summing to 1", f"sum {total:.8g}")
    return torch.log(w / w.sum())


def _check_floor(floor, K: int, device, name: str = "floor") -> torch.Tensor:
    if isinstance(floor, (int, float)) and not isinstance(floor, bool):
        d = torch.full((K,), float(floor), dtype=F64, device=device)
    elif isinstance(floor, torch.Tensor):
        check_tensor(name, floor, ndim=(0, 1))
        d = floor.to(device=device, dtype=F64).reshape(-1)
        if d.numel() == 1:
            d = d.expand(K).clone()
        elif d.numel() != K:
            fail(name, f"a number or {K} values (one per component)", floor)
    else:
        fail(name, "a number or a (K,) tensor", floor, TypeError)
    if (d < 0).any() or not torch.isfinite(d).all():
        fail(name, "finite values >= 0", floor if isinstance(floor, torch.Tensor) else describe(floor))
    return d


def _sigma_vector(sigma, B: int, device, name: str = "sigma") -> torch.Tensor:
    """sigma as a (B,) float64 tensor (scalar or one value per sample), checked >= 0."""
    if isinstance(sigma, torch.Tensor):
        s = sigma.detach().to(device=device, dtype=F64).reshape(-1)
    elif isinstance(sigma, (int, float)) and not isinstance(sigma, bool):
        s = torch.tensor([float(sigma)], dtype=F64, device=device)
    else:
        fail(name, "a number or a tensor with one value per sample", sigma, TypeError)
    if s.numel() == 1:
        s = s.expand(B)
    elif s.numel() != B:
        fail(name, f"a scalar or {B} values (one per sample)", sigma)
    if not torch.isfinite(s).all() or (s < 0).any():
        fail(name, "finite values >= 0", sigma if isinstance(sigma, torch.Tensor) else describe(sigma))
    return s


def _complement_basis(Q: torch.Tensor, extra: int, generator: torch.Generator) -> torch.Tensor:
    """``extra`` orthonormal columns orthogonal to the orthonormal columns of Q (n, r)."""
    n = Q.shape[0]
    R = torch.randn(n, extra, dtype=F64, generator=generator).to(Q.device)
    for _ in range(2):  # re-orthogonalise once: Gram-Schmidt twice is enough
        R = R - Q @ (Q.T @ R)
        R = torch.linalg.qr(R).Q
    return R


def _pad_rank(Qs, lams, ds, r: int):
    """Pad per-component bases to a common rank r with complement directions of variance d_k."""
    g = torch.Generator().manual_seed(0)
    Q_out, lam_out = [], []
    for Q, lam, d in zip(Qs, lams, ds):
        extra = r - Q.shape[1]
        if extra > 0:
            Q = torch.cat([Q, _complement_basis(Q, extra, g)], dim=1)
            lam = torch.cat([lam, d.reshape(1).expand(extra)])
        Q_out.append(Q)
        lam_out.append(lam)
    return torch.stack(Q_out), torch.stack(lam_out)


# ------------------------------------------------------------------------------------------------
# linear operators: explicit matrix or matrix-free deepinv physics
# ------------------------------------------------------------------------------------------------
class _LinearOp:
    """y = A x on flattened vectors, for a ``.matrix`` physics or any deepinv LinearPhysics."""

    def __init__(self, physics, event_shape: tuple[int, ...], n: int, device):
        self.event_shape, self.n, self.device = event_shape, n, device
        mat = getattr(physics, "matrix", None)
        if isinstance(mat, torch.Tensor):
            if mat.dim() != 2 or mat.shape[1] != n:
                fail("physics", f"a .matrix of shape (m, {n}) acting on the prior's {n}-dimensional vectors",
                     mat)
            check_tensor("physics.matrix", mat)
            self.matrix = mat.to(device=device, dtype=F64)
            self.m = mat.shape[0]
            return
        if not callable(getattr(physics, "A", None)):
            fail("physics", "a linear physics (deepinv LinearPhysics, or an object with a .matrix)", physics,
                 TypeError)
        self.matrix = None
        self.physics, self.dtype = physics, F64
        self._choose_dtype()
        zero = self._raw(torch.zeros(1, n, dtype=F64, device=device))
        if zero.abs().max() > 0:
            fail("physics", "a linear operator (A(0) = 0)", f"A(0) with max |value| {float(zero.abs().max()):.3g}")
        self.m = zero.shape[1]

    def _raw(self, X: torch.Tensor) -> torch.Tensor:
        out = self.physics.A(X.reshape(X.shape[0], *self.event_shape).to(self.dtype))
        if out.is_complex():
            out = torch.view_as_real(out)
        return out.reshape(X.shape[0], -1).to(F64)

    def _choose_dtype(self):
        probe = torch.zeros(1, self.n, dtype=F64, device=self.device)
        try:
            self._raw(probe)
            return
        except (RuntimeError, TypeError):
            pass
        original = self.physics
        try:  # operators with float32 buffers (blur kernels, masks): run a float64 copy
            self.physics = copy.deepcopy(original).to(F64)
            self._raw(probe)
            return
        except Exception:  # noqa: BLE001 - fall back to float32 below
            self.physics = original
        self.dtype = torch.float32
        warnings.warn("physics.A does not run in float64; the exact posterior is computed from float32 "
                      "operator columns (relative error ~1e-7)", stacklevel=3)

    def apply(self, X: torch.Tensor) -> torch.Tensor:
        """(N, n) float64 -> (N, m) float64."""
        if self.matrix is not None:
            return X @ self.matrix.T
        return torch.cat([self._raw(X[i:i + _CHUNK]) for i in range(0, X.shape[0], _CHUNK)], dim=0)

    def transpose_matrix(self) -> torch.Tensor:
        """A^T as an (n, m) float64 matrix."""
        if self.matrix is not None:
            return self.matrix.T
        if self.n <= MATRIX_MAX:
            return self.apply(torch.eye(self.n, dtype=F64, device=self.device))
        adj = getattr(self.physics, "A_adjoint", None)
        if self.m <= MATRIX_MAX and callable(adj):
            y_shape = self.physics.A(torch.zeros(1, *self.event_shape, dtype=self.dtype, device=self.device)).shape
            rows = []
            for i in range(0, self.m, _CHUNK):
                E = torch.eye(self.m, dtype=F64, device=self.device)[i:i + _CHUNK]
                rows.append(adj(E.reshape(E.shape[0], *y_shape[1:]).to(self.dtype)).reshape(E.shape[0], -1).to(F64))
            return torch.cat(rows, dim=0).T
        fail("physics", f"an operator small enough to materialise (n or m <= {MATRIX_MAX}) when the prior has a "
                        "floor d_k > 0; use a floor-free prior (d_k = 0, e.g. GaussianMixture.fit(..., floor=0)) "
                        "or an approximate solver",
             f"n = {self.n}, m = {self.m}")


def _noise_std(physics, sigma_y) -> float:
    """Gaussian noise std: explicit ``sigma_y`` > ``physics.noise_model.sigma`` > ``physics.sigma`` > 0 (ZeroNoise)."""
    if sigma_y is not None:
        if isinstance(sigma_y, torch.Tensor) and sigma_y.numel() == 1:
            sigma_y = float(sigma_y)
        check_positive("sigma_y", sigma_y, strict=False)
        return float(sigma_y)
    nm = getattr(physics, "noise_model", None)
    kind = type(nm).__name__ if nm is not None else None
    if kind == "GaussianNoise":
        s = torch.as_tensor(nm.sigma)
        if s.numel() != 1:
            fail("physics", "a GaussianNoise with one sigma for the whole batch (or pass sigma_y=)", s)
        return float(s)
    own = getattr(physics, "sigma", None)
    if isinstance(own, (int, float, torch.Tensor)) and not isinstance(own, bool):
        if torch.as_tensor(own).numel() != 1:
            fail("physics", "a scalar .sigma (or pass sigma_y=)", own)
        return float(own)
    if nm is None or kind == "ZeroNoise":
        return 0.0
    fail("physics", "Gaussian noise (deepinv GaussianNoise / ZeroNoise) or an explicit sigma_y=", f"noise model {kind}")


# ------------------------------------------------------------------------------------------------
# the mixture
# ------------------------------------------------------------------------------------------------


def _flat_measurement(y, m: int) -> torch.Tensor:
    if isinstance(y, torch.Tensor) and y.is_complex():
        y = torch.view_as_real(y)
    check_tensor("y", y)
    if y.dim() >= 2 and y.shape[0] != 1:
        fail("y", "a single measurement (batch size 1); call posterior once per measurement", y)
    if y.numel() != m:
        fail("y", f"{m} values (the operator's output size, e.g. shape (1, {m}))", y)
    return y.reshape(-1).to(F64)


def _check_common_range(ranges, log_lik):
    """sigma_y = 0: evidences are densities on range(G_k); they are comparable only if the ranges agree."""
    ref = None
    for U, ll in zip(ranges, log_lik):
        if U is None or not torch.isfinite(ll):
            continue
        if ref is None:
            ref = U
            continue
        same = U.shape[1] == ref.shape[1] and float((ref.T @ U).pow(2).sum()) > U.shape[1] - 1e-6
        if not same:
            fail("sigma_y", "a noise level > 0 for this problem: without noise the components' predicted "
                            "measurements lie on different subspaces, so the posterior weights are undefined",
                 "sigma_y = 0")


r"""Exact Gaussian-mixture priors: denoiser, score, noised marginals and closed-form posteriors.

.. math::  p(x_0) = \sum_{k=1}^K \pi_k\, \mathcal N(x_0;\, m_k,\, C_k).

Everything a diffusion solver asks of a prior is exact for a mixture (reference notes
``smc-ads-conditional-dc.md`` §5.1-5.2):

- noised marginal of :math:`x = s\,(x_0 + \sigma n)`: :math:`\sum_k \pi_k \mathcal N(x; s m_k, s^2(C_k + \sigma^2 I))`
  (:meth:`GaussianMixture.marginal`; VP is :math:`s=\sqrt{\bar\alpha}`,
  :math:`\sigma=\sqrt{(1-\bar\alpha)/\bar\alpha}`);
- responsibilities :math:`r_k(x) = \mathrm{softmax}_k[\log\pi_k + \log\mathcal N(x; m_k, C_k + \sigma^2 I)]`;
- denoiser (Tweedie) :math:`D(x,\sigma) = \sum_k r_k(x)\,[m_k + C_k (C_k+\sigma^2 I)^{-1}(x - m_k)]`;
- posterior for :math:`y = A x + \sigma_y \epsilon`: again a mixture, with
  :math:`S_k = A C_k A^\top + \sigma_y^2 I`, :math:`\tilde m_k = m_k + C_k A^\top S_k^{-1}(y - A m_k)`,
  :math:`\tilde C_k = C_k - C_k A^\top S_k^{-1} A C_k`, :math:`\tilde\pi_k \propto \pi_k\,\mathcal N(y; A m_k, S_k)`.

**Representation.** Every covariance is stored in *eigen form*

.. math::  C_k = Q_k\,\mathrm{diag}(\lambda_k)\,Q_k^\top + d_k\,(I - Q_k Q_k^\top),
           \qquad Q_k\in\mathbb R^{n\times r},\ Q_k^\top Q_k = I_r,

in float64. A dense covariance is the case r = n (eigendecomposition at construction); a low-rank one
(:meth:`GaussianMixture.low_rank`, :math:`C_k = U_k\,\mathrm{diag}(s_k)\,U_k^\top + d_k I`) has r << n and is
never formed as an n x n matrix: noising, denoising, log-densities and sampling cost O(B K n r).

**Posterior algebra.** Write :math:`x = m_k + B_k L_k u + \sqrt{d_k}(I - B_k B_k^\top) w` with
:math:`u\sim\mathcal N(0, I_{r'})`, where the basis :math:`B_k` is :math:`Q_k` when :math:`d_k = 0` or r = n,
and otherwise :math:`Q_k` extended by the part of :math:`\mathrm{range}(A^\top)` orthogonal to it (so that A
does not see the complement). Then :math:`y - A m_k = G_k u + \sigma_y\epsilon` with :math:`G_k = A B_k L_k`
(m x r'), and the thin SVD of :math:`G_k` gives the exact latent posterior and the evidence
:math:`\mathcal N(y; A m_k, G_k G_k^\top + \sigma_y^2 I)` with r' x r' algebra only; it also covers the noiseless
case :math:`\sigma_y = 0` (pseudo-inverse conditioning on a common range). ``A`` is only applied to the r basis
columns of each component, plus, when :math:`d_k > 0`, materialised once as :math:`A^\top`.

>>> import torch
>>> from invdiff.priors.gmm import GaussianMixture
>>> p = GaussianMixture(torch.tensor([0.3, 0.7]), torch.tensor([[-2., 0.], [2., 1.]]), torch.eye(2).repeat(2, 1, 1))
>>> p.denoise(torch.zeros(5, 2), 0.5).shape
torch.Size([5, 2])
>>> p.sample(3, generator=torch.Generator().manual_seed(0)).shape
torch.Size([3, 2])
"""
from __future__ import annotations

import copy
import math
import warnings
from typing import NamedTuple, Sequence

import torch

from .._validate import check_positive, check_shape, check_tensor, describe, fail
from .base import Prior

F64 = torch.float64
_LOG_2PI = math.log(2 * math.pi)

#: Largest dimension n for which ``.covs`` / ``.cov`` are returned as dense matrices.
DENSE_MAX = 1024
#: Largest n (or m) for which a matrix-free operator is materialised column by column.
MATRIX_MAX = 4096
#: Largest latent dimension r + rank(A) of the exact posterior when a component has a floor d_k > 0.
LATENT_MAX = 2048
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
class GaussianMixture(Prior):
    r"""Gaussian-mixture prior :math:`\sum_k \pi_k \mathcal N(m_k, C_k)` with exact denoiser and posteriors.

    :param weights: (K,) non-negative, summing to 1.
    :param means: (K, n), or (K, *img_shape).
    :param covs: (K, n, n) symmetric positive semi-definite (see :meth:`low_rank` for large n).
    :param img_shape: optional (C, H, W) or (C, D, H, W): the prior then acts on image batches
        (B, *img_shape) (``spatial_dims`` 2 or 3); without it, on flat vectors (B, n) (``spatial_dims = 0``).

    All math runs in float64 on the module's device; results come back in the input's dtype (``denoise``,
    ``log_prob``) or in the dtype of ``means`` at construction (``sample``, ``mean``, ...; follows
    ``.to(dtype)``). Flat quantities (``means``, ``covs``, ``cov``) use the flattened n-vector; image-shaped
    ones (``mean``, ``std``, ``sample``) use the event shape.
    """

    value_range = None

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, covs: torch.Tensor, *,
                 img_shape: Sequence[int] | None = None):
        super().__init__()
        K, n, event_shape = _check_event(means, img_shape)
        device = means.device
        log_w = _check_weights(weights, K, device)
        check_tensor("covs", covs, ndim=3)
        check_shape("covs", covs, (K, n, n))
        C = covs.to(device=device, dtype=F64)
        scale = C.abs().amax(dim=(1, 2)).clamp_min(torch.finfo(F64).tiny)
        asym = (C - C.transpose(1, 2)).abs().amax(dim=(1, 2)) / scale
        if (asym > 100 * _eps(covs.dtype)).any():
            k = int(asym.argmax())
            fail("covs", "symmetric matrices", f"component {k} with max |C - C^T| / max |C| = {float(asym[k]):.3g}")
        lam, Q = torch.linalg.eigh(0.5 * (C + C.transpose(1, 2)))
        tol = 10 * n * _eps(covs.dtype) * scale
        if (lam < -tol[:, None]).any():
            k = int((lam.min(dim=1).values / scale).argmin())
            fail("covs", "positive semi-definite matrices",
                 f"component {k} with smallest eigenvalue {float(lam[k].min()):.4g}")
        out_dtype = means.dtype if means.is_floating_point() else torch.get_default_dtype()
        self._setup(log_w, means.to(device=device, dtype=F64).reshape(K, n), Q, lam.clamp_min(0.0),
                    torch.zeros(K, dtype=F64, device=device), event_shape, out_dtype)

    # -- alternative constructors -----------------------------------------------------------------
    @classmethod
    def low_rank(cls, weights: torch.Tensor, means: torch.Tensor, factors: torch.Tensor,
                 variances: torch.Tensor | None = None, floor: float | torch.Tensor = 0.0, *,
                 img_shape: Sequence[int] | None = None) -> "GaussianMixture":
        r"""Mixture with :math:`C_k = U_k\,\mathrm{diag}(s_k)\,U_k^\top + d_k I`, never forming n x n matrices.

        :param factors: U (K, n, r) (any full-rank or rank-deficient columns; orthonormalised internally).
        :param variances: s (K, r), or None for ones (:math:`C_k = U_k U_k^\top + d_k I`). Entries may be
            negative as long as every :math:`C_k` stays positive semi-definite.
        :param floor: d, a number or (K,) >= 0. ``d_k = 0`` gives an exactly rank-r component, whose posterior
            under any linear operator costs only r applications of A.
        """
        K, n, event_shape = _check_event(means, img_shape)
        device = means.device
        log_w = _check_weights(weights, K, device)
        check_tensor("factors", factors, ndim=3)
        check_shape("factors", factors, (K, n, None))
        r = factors.shape[2]
        if r == 0:
            fail("factors", "at least one column (use floor only via an identity-like factor)", factors)
        if variances is None:
            s = torch.ones(K, r, dtype=F64, device=device)
        else:
            check_tensor("variances", variances, ndim=2)
            check_shape("variances", variances, (K, r))
            s = variances.to(device=device, dtype=F64)
        d = _check_floor(floor, K, device)
        Qr, R = torch.linalg.qr(factors.to(device=device, dtype=F64))     # U = Q R, Q (n, min(n, r))
        M = (R * s[:, None, :]) @ R.transpose(1, 2)                        # U diag(s) U^T = Q M Q^T
        e, W = torch.linalg.eigh(0.5 * (M + M.transpose(1, 2)))
        lam = e + d[:, None]
        scale = lam.abs().amax(dim=1).clamp_min(torch.finfo(F64).tiny)
        tol = 10 * max(r, 1) * _eps(factors.dtype) * scale
        if (lam < -tol[:, None]).any():
            k = int((lam.min(dim=1).values / scale).argmin())
            fail("variances", "values making every covariance U diag(s) U^T + d I positive semi-definite",
                 f"component {k} with smallest eigenvalue {float(lam[k].min()):.4g}")
        out_dtype = means.dtype if means.is_floating_point() else torch.get_default_dtype()
        return cls._from_eigen(log_w, means.to(device=device, dtype=F64).reshape(K, n), Qr @ W,
                               lam.clamp_min(0.0), d, event_shape, out_dtype)

    @classmethod
    def fit(cls, images: torch.Tensor, n_components: int, rank: int, *,
            generator: torch.Generator | None = None, floor: float | None = None,
            n_iter: int = 100, n_init: int = 3) -> "GaussianMixture":
        r"""Fit a low-rank mixture to data: k-means++ / Lloyd on the flattened images, then per-cluster PCA.

        Each cluster k keeps its ``rank`` leading principal directions with their sample variances; the
        complement gets the probabilistic-PCA maximum-likelihood variance, i.e. the mean discarded eigenvalue
        (Tipping & Bishop 1999, Eq. 8), or ``floor`` when given (``floor=0`` gives an exactly rank-``rank``
        prior, whose posterior under any linear operator is exact and cheap). A cluster with at most ``rank + 1``
        members has no discarded direction to estimate it from and borrows the mean over the other clusters.
        Weights are cluster fractions.

        :param images: (N, n) vectors, (N, C, H, W) images or (N, C, D, H, W) volumes.
        """
        check_tensor("images", images)
        if images.dim() == 2:
            img_shape = None
        elif images.dim() in (4, 5):
            img_shape = tuple(images.shape[1:])
        else:
            fail("images", "(N, n) vectors, (N, C, H, W) images or (N, C, D, H, W) volumes", images)
        check_positive("n_components", n_components, integer=True)
        check_positive("rank", rank, integer=True, strict=False)
        check_positive("n_iter", n_iter, integer=True)
        check_positive("n_init", n_init, integer=True)
        if floor is not None:
            check_positive("floor", floor, strict=False)
        N = images.shape[0]
        if N < n_components:
            fail("images", f"at least n_components = {n_components} samples", images)
        X = images.reshape(N, -1).to(F64)
        n = X.shape[1]
        K, r = n_components, min(rank, n)
        labels = _kmeans(X, K, generator, n_iter, n_init)
        Qs, lams, resid, counts, mus = [], [], [], [], []
        for k in range(K):
            Xk = X[labels == k]
            counts.append(Xk.shape[0])
            mu = Xk.mean(0)
            mus.append(mu)
            if Xk.shape[0] < 2:
                Qs.append(X.new_zeros(n, 0))
                lams.append(X.new_zeros(0))
                resid.append(float("nan"))
                continue
            Xc = Xk - mu
            _, S, Vh = torch.linalg.svd(Xc, full_matrices=False)
            var = S ** 2 / (Xk.shape[0] - 1)
            rk = min(r, Xk.shape[0] - 1, var.numel())  # centred data have rank <= N_k - 1
            total = float((Xc ** 2).sum()) / (Xk.shape[0] - 1)
            if n == rk:
                resid.append(0.0)
            elif min(Xk.shape[0] - 1, n) <= rk:  # the sample spans no discarded direction: not identifiable
                resid.append(float("nan"))
            else:
                resid.append(max(total - float(var[:rk].sum()), 0.0) / (n - rk))
            Qs.append(Vh[:rk].T)
            lams.append(var[:rk])
        finite = [v for v in resid if not math.isnan(v)]
        fallback = sum(finite) / len(finite) if finite else 0.0
        d = torch.tensor([floor if floor is not None else (fallback if math.isnan(v) else v) for v in resid],
                         dtype=F64, device=X.device)
        if r == 0:  # isotropic clusters: one dummy direction with variance d
            r = 1
        Q, lam = _pad_rank(Qs, lams, d, r)
        w = torch.tensor(counts, dtype=F64, device=X.device) / N
        out_dtype = images.dtype
        obj = cls._from_eigen(w.log(), torch.stack(mus), Q, lam, d, img_shape or (n,), out_dtype)
        obj.value_range = (float(images.min()), float(images.max()))
        return obj

    @classmethod
    def _from_eigen(cls, log_w, mu, Q, lam, d, event_shape, out_dtype) -> "GaussianMixture":
        obj = cls.__new__(cls)
        Prior.__init__(obj)
        obj._setup(log_w, mu, Q, lam, d, tuple(event_shape), out_dtype)
        return obj

    def _setup(self, log_w, mu, Q, lam, d, event_shape, out_dtype):
        K, n = mu.shape
        self.event_shape = tuple(event_shape)
        if len(self.event_shape) == 1:
            self.spatial_dims, self.channels, self.resolution = 0, None, None
        else:
            self.spatial_dims = len(self.event_shape) - 1
            self.channels, self.resolution = self.event_shape[0], tuple(self.event_shape[1:])
        self.register_buffer("_log_w", log_w.to(F64))
        self.register_buffer("_mu", mu.to(F64))
        self.register_buffer("_Q", Q.to(F64))
        self.register_buffer("_lam", lam.to(F64))
        self.register_buffer("_d", d.to(F64))
        self.register_buffer("_probe", torch.zeros(0, dtype=out_dtype, device=mu.device))

    _MATH_BUFFERS = ("_log_w", "_mu", "_Q", "_lam", "_d")

    def _apply(self, fn, *args, **kwargs):
        # .to(dtype) / .float() change the output dtype (tracked by _probe) but the math stays float64
        # (except on devices without float64 support).
        saved = {k: self._buffers[k] for k in self._MATH_BUFFERS}
        super()._apply(fn, *args, **kwargs)
        dev = self._probe.device
        for k, b in saved.items():
            self._buffers[k] = b.to(dev, dtype=torch.float32 if dev.type == "mps" else F64)
        return self

    # -- sizes and parameters ---------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self._probe.dtype

    @property
    def device(self) -> torch.device:
        return self._probe.device

    @property
    def n_components(self) -> int:
        return self._mu.shape[0]

    @property
    def dim(self) -> int:
        return self._mu.shape[1]

    @property
    def rank(self) -> int:
        """r: number of stored eigen-directions per component (r = n for dense covariances)."""
        return self._Q.shape[2]

    @property
    def weights(self) -> torch.Tensor:
        """(K,) mixture weights."""
        return self._log_w.exp().to(self.dtype)

    @property
    def log_weights(self) -> torch.Tensor:
        return self._log_w.to(self.dtype)

    @property
    def means(self) -> torch.Tensor:
        """(K, n) component means (flattened)."""
        return self._mu.to(self.dtype)

    @property
    def covs(self):
        """(K, n, n) component covariances when n <= DENSE_MAX, else a :class:`LowRankCov`."""
        if self.dim <= DENSE_MAX:
            return self._dense_covs().to(self.dtype)
        return self.covs_low_rank

    @property
    def covs_low_rank(self) -> LowRankCov:
        return LowRankCov(self._Q.to(self.dtype), (self._lam - self._d[:, None]).to(self.dtype),
                          self._d.to(self.dtype))

    def _dense_covs(self) -> torch.Tensor:
        Q, lam, d = self._Q, self._lam, self._d
        C = (Q * lam[:, None, :]) @ Q.transpose(1, 2)
        if self.rank < self.dim:
            eye = torch.eye(self.dim, dtype=F64, device=Q.device)
            C = C + d[:, None, None] * (eye - Q @ Q.transpose(1, 2))
        return 0.5 * (C + C.transpose(1, 2))

    def _mixture_mean(self) -> torch.Tensor:
        return (self._log_w.exp()[:, None] * self._mu).sum(0)

    @property
    def mean(self) -> torch.Tensor:
        """(1, *event_shape) mixture mean (a batch of one, like a reconstruction)."""
        return self._mixture_mean().reshape(1, *self.event_shape).to(self.dtype)

    @property
    def cov(self) -> torch.Tensor:
        r"""(n, n) mixture covariance :math:`\sum_k \pi_k (C_k + m_k m_k^\top) - \mu\mu^\top` (n <= DENSE_MAX)."""
        if self.dim > DENSE_MAX:
            fail("cov", f"a mixture of dimension <= {DENSE_MAX} for a dense covariance (use .std or .covs)",
                 f"dimension {self.dim}")
        w = self._log_w.exp()
        dm = self._mu - self._mixture_mean()
        C = (w[:, None, None] * self._dense_covs()).sum(0) + (w[:, None] * dm).T @ dm
        return (0.5 * (C + C.T)).to(self.dtype)

    @property
    def variance(self) -> torch.Tensor:
        """(1, *event_shape) per-pixel mixture variance."""
        w = self._log_w.exp()
        diag = (self._Q ** 2 * (self._lam - self._d[:, None])[:, None, :]).sum(-1) + self._d[:, None]  # (K, n)
        dm = self._mu - self._mixture_mean()
        var = (w[:, None] * (diag + dm ** 2)).sum(0)
        return var.clamp_min(0).reshape(1, *self.event_shape).to(self.dtype)

    @property
    def std(self) -> torch.Tensor:
        """(1, *event_shape) per-pixel standard deviation."""
        return self.variance.sqrt()

    def extra_repr(self) -> str:
        return (f"n_components={self.n_components}, event_shape={self.event_shape}, rank={self.rank}"
                f"{' (dense)' if self.rank == self.dim else ''}, dtype={self.dtype}")

    # -- input handling -----------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        check_tensor(name, x, finite=False)
        if tuple(x.shape[1:]) != self.event_shape or x.dim() != 1 + len(self.event_shape):
            fail(name, f"shape (B, {', '.join(map(str, self.event_shape))}) for this Gaussian-mixture prior", x)
        return x

    def _flat(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        self.check_input(x, name)
        return x.reshape(x.shape[0], self.dim).to(device=self._mu.device, dtype=self._mu.dtype)

    def _components(self, xf: torch.Tensor, sig2: torch.Tensor):
        """Per-component Gaussian terms at noise variance sig2 (B,).

        Returns log N(x; m_k, C_k + sig2 I) (B, K), the residual projection p = Q^T (x - m) (B, K, r),
        the complement residual (B, K, n) or None, and the per-direction variances (B, K, r), (B, K).
        """
        n, r = self.dim, self.rank
        res = xf[:, None, :] - self._mu[None]                              # (B, K, n)
        p = torch.einsum("bkn,knr->bkr", res, self._Q)                    # (B, K, r)
        lam_t = self._lam[None] + sig2[:, None, None]                     # (B, K, r)
        quad = (p ** 2 / lam_t).sum(-1)
        logdet = lam_t.log().sum(-1)
        perp, d_t = None, None
        if r < n:
            perp = res - torch.einsum("bkr,knr->bkn", p, self._Q)
            d_t = self._d[None] + sig2[:, None]                           # (B, K)
            quad = quad + (perp ** 2).sum(-1) / d_t
            logdet = logdet + (n - r) * d_t.log()
        logN = -0.5 * (n * _LOG_2PI + logdet + quad)
        return logN, p, perp, lam_t, d_t

    def _check_nondegenerate(self, sig2: torch.Tensor):
        lam_min = self._lam.min() + sig2.min()
        d_min = self._d.min() + sig2.min() if self.rank < self.dim else torch.tensor(1.0)
        if lam_min <= 0 or d_min <= 0:
            fail("sigma", "a noise level > 0 for this mixture (a component covariance is singular, so its density "
                          "at sigma = 0 does not exist)", "sigma = 0")

    # -- densities ---------------------------------------------------------------------------------------
    def log_prob(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        r"""(B,) log-density of the noised marginal :math:`p_\sigma = p * \mathcal N(0, \sigma^2 I)` at x
        (differentiable in x)."""
        xf = self._flat(x)
        sig2 = _sigma_vector(sigma, xf.shape[0], xf.device) ** 2
        self._check_nondegenerate(sig2)
        logN = self._components(xf, sig2)[0]
        return torch.logsumexp(self._log_w[None] + logN, dim=1).to(x.dtype)

    def responsibilities(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """(B, K) posterior component probabilities of x under the noised marginal."""
        xf = self._flat(x)
        sig2 = _sigma_vector(sigma, xf.shape[0], xf.device) ** 2
        self._check_nondegenerate(sig2)
        return torch.softmax(self._log_w[None] + self._components(xf, sig2)[0], dim=1).to(x.dtype)

    def denoise(self, x: torch.Tensor, sigma) -> torch.Tensor:
        r"""Exact :math:`\mathbb E[x_0 \mid x_0 + \sigma n = x]`; sigma a scalar or one value per sample."""
        xf = self._flat(x)
        sig = _sigma_vector(sigma, xf.shape[0], xf.device)
        zero = sig == 0
        sig2 = torch.where(zero, torch.ones_like(sig), sig ** 2)  # rows with sigma = 0 are returned as x
        logN, p, perp, lam_t, d_t = self._components(xf, sig2)
        resp = torch.softmax(self._log_w[None] + logN, dim=1)             # (B, K)
        # m_k + Q diag(lam/(lam+s2)) p + d/(d+s2) perp: the stable form for large sigma
        shrunk = torch.einsum("bkr,knr->bkn", p * (self._lam[None] / lam_t), self._Q)
        if perp is not None:
            shrunk = shrunk + perp * (self._d[None] / d_t)[..., None]
        out = torch.einsum("bk,bkn->bn", resp, self._mu[None] + shrunk)
        out = torch.where(zero[:, None], xf, out)
        return out.reshape(x.shape).to(x.dtype)

    # -- transformations -------------------------------------------------------------------------------
    def marginal(self, sigma, scale=1.0) -> "GaussianMixture":
        r"""The mixture of :math:`s\,(x_0 + \sigma n)`: means :math:`s m_k`, covariances :math:`s^2(C_k+\sigma^2 I)`.

        VE: ``scale=1``; VP/DDPM: ``scale = sqrt(alpha_bar)``, ``sigma = sqrt((1 - alpha_bar) / alpha_bar)``;
        EDM: ``scale = s(t)``, ``sigma = sigma(t)``.
        """
        if isinstance(sigma, torch.Tensor) and sigma.numel() == 1:
            sigma = float(sigma)
        if isinstance(scale, torch.Tensor) and scale.numel() == 1:
            scale = float(scale)
        check_positive("sigma", sigma, strict=False)
        check_positive("scale", scale)
        s2, v = float(scale) ** 2, float(sigma) ** 2
        return type(self)._from_eigen(self._log_w, scale * self._mu, self._Q, s2 * (self._lam + v),
                                      s2 * (self._d + v), self.event_shape, self.dtype)

    # -- sampling --------------------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, *event_shape) independent draws (component by categorical draw, then Gaussian)."""
        check_positive("n", n, integer=True)
        gdev = generator.device if generator is not None else torch.device("cpu")
        w = self._log_w.exp().to(gdev)
        k = torch.multinomial(w, n, replacement=True, generator=generator).to(self._mu.device)
        z = torch.randn(n, self.rank, dtype=F64, generator=generator, device=gdev).to(self._mu.device)
        need_perp = self.rank < self.dim and bool((self._d > 0).any())
        if need_perp:
            e = torch.randn(n, self.dim, dtype=F64, generator=generator, device=gdev).to(self._mu.device)
        out = torch.empty(n, self.dim, dtype=F64, device=self._mu.device)
        for j in range(self.n_components):
            idx = (k == j).nonzero().reshape(-1)
            if idx.numel() == 0:
                continue
            Q = self._Q[j]
            xj = self._mu[j] + (z[idx] * self._lam[j].sqrt()) @ Q.T
            if need_perp and self._d[j] > 0:
                ej = e[idx]
                xj = xj + self._d[j].sqrt() * (ej - (ej @ Q) @ Q.T)
            out[idx] = xj
        return out.reshape(n, *self.event_shape).to(self.dtype)

    # -- exact posterior ---------------------------------------------------------------------------------
    def log_evidence(self, y: torch.Tensor, physics, *, sigma_y: float | None = None) -> torch.Tensor:
        r"""Exact log marginal likelihood :math:`\log p(y) = \log\sum_k w_k\,\mathcal N(y; A\mu_k, AC_kA^\top + \sigma_y^2 I_m)`
        of each measurement under the mixture prior and the linear-Gaussian model :math:`y = Ax + \sigma_y\epsilon`.

        :param y: measurements (B, *y_shape) (or (m,) for one); m = the operator's output size (complex values
            count as two reals), so for masked operators the unmeasured zeros count as observed at noise sigma_y.
        :param physics, sigma_y: as in :meth:`posterior` (``sigma_y > 0`` required: without noise p(y) is a density
            on a subspace).
        :returns: (B,) float64.

        Example:
            >>> import torch
            >>> from invdiff.operators import MatrixOperator
            >>> gm = GaussianMixture(torch.ones(1), torch.zeros(1, 1), torch.eye(1)[None])
            >>> float(gm.log_evidence(torch.tensor([[0.0]]), MatrixOperator(torch.eye(1), sigma=1.0)))  # N(0; 0, 2)
            -1.2655...
        """
        if not _noise_std(physics, sigma_y) > 0:
            fail("sigma_y", "a noise level > 0 (p(y) is a density on a subspace without noise)", 0.0)
        if isinstance(y, torch.Tensor) and y.dim() >= 2 and y.shape[0] > 1:
            return torch.stack([self._condition(y[i:i + 1], physics, sigma_y, True) for i in range(y.shape[0])])
        return self._condition(y, physics, sigma_y, True).reshape(1)

    def posterior(self, y: torch.Tensor, physics, *, sigma_y: float | None = None) -> "GaussianMixture":
        r"""Exact posterior mixture of x given one measurement :math:`y = A x + \sigma_y \epsilon`.

        :param y: one measurement: shape (1, *y_shape) or (m,) (m = number of measured values).
        :param physics: an object with a ``.matrix`` (m, n) (``invdiff.operators.MatrixOperator``), or any
            deepinv ``LinearPhysics`` (applied to basis columns; float64 when it allows).
        :param sigma_y: noise std; by default ``physics.noise_model.sigma`` (GaussianNoise), else
            ``physics.sigma``, else 0 for ``ZeroNoise``. ``sigma_y = 0`` conditions exactly on the affine
            set ``A x = y`` (pseudo-inverse); it raises a ValueError when that is ill-defined (components
            whose predicted measurements span different subspaces) or y is impossible.
        :returns: a :class:`GaussianMixture` with the same event shape (low rank when the prior is).
        """
        return self._condition(y, physics, sigma_y, False)

    def _condition(self, y, physics, sigma_y, evidence_only: bool):
        """Body of :meth:`posterior`; with ``evidence_only`` it returns log p(y) (0-d float64) instead."""
        sig = _noise_std(physics, sigma_y)
        op = _LinearOp(physics, self.event_shape, self.dim, self._mu.device)
        yv = _flat_measurement(y, op.m)
        K, n, r = self.n_components, self.dim, self.rank
        AM = op.apply(self._mu)                                                       # (K, m)
        AQ = op.apply(self._Q.transpose(1, 2).reshape(K * r, n)).reshape(K, r, op.m).transpose(1, 2)
        extend = [r < n and float(self._d[k]) > 0 for k in range(K)]
        At = op.transpose_matrix() if any(extend) else None                         # (n, m)

        log_lik, means, bases, lams, ranges = [], [], [], [], []
        for k in range(K):
            Qk, lamk, dk = self._Q[k], self._lam[k], self._d[k]
            if extend[k]:  # basis span(Q_k) + the part of range(A^T) orthogonal to it
                Rk = At - Qk @ (Qk.T @ At)
                U_, s_, _ = torch.linalg.svd(Rk, full_matrices=False)
                P = U_[:, s_ > max(Rk.shape) * _eps(F64) * s_.max().clamp_min(1e-300)] if s_.numel() else U_[:, :0]
                if r + P.shape[1] > LATENT_MAX:
                    fail("physics", f"an operator whose range adds at most {LATENT_MAX - r} directions to the "
                                    "prior's rank (exact posterior with a floor d_k > 0); use floor=0",
                         f"{P.shape[1]} extra directions")
                B = torch.cat([Qk, P], dim=1)
                ell = torch.cat([lamk, dk.expand(P.shape[1])]).sqrt()
                H = torch.cat([AQ[k], At.T @ P], dim=1)
            else:
                B, ell, H = Qk, lamk.sqrt(), AQ[k]
            G = H * ell[None, :]                                                     # (m, r') = A B L
            e = yv - AM[k]
            U, g, Vh = torch.linalg.svd(G, full_matrices=False)
            V = Vh.T
            if sig > 0:
                s2 = sig ** 2
                ue = U.T @ e
                e_out = e - U @ ue
                ll = -0.5 * (op.m * _LOG_2PI + torch.log(g ** 2 + s2).sum() + (op.m - g.numel()) * math.log(s2)
                             + (ue ** 2 / (g ** 2 + s2)).sum() + (e_out ** 2).sum() / s2)
                mean_u = V @ (g / (g ** 2 + s2) * ue)
                cov_u = torch.eye(V.shape[0], dtype=F64, device=V.device) - (V * (g ** 2 / (g ** 2 + s2))) @ V.T
                ranges.append(None)
            else:
                keep = g > max(G.shape) * _eps(F64) * 10 * g.max().clamp_min(1e-300) if g.numel() else g > 0
                Uk, gk, Vk = U[:, keep], g[keep], V[:, keep]
                ue = Uk.T @ e
                e_out = e - Uk @ ue
                tol = max(1e-6, 100 * _eps(y.dtype)) * (float(yv.norm()) + float(AM[k].norm()) + 1e-300)
                if float(e_out.norm()) > tol:
                    ll = torch.tensor(-math.inf, dtype=F64, device=e.device)
                    ranges.append(None)
                else:
                    ll = -0.5 * (gk.numel() * _LOG_2PI + torch.log(gk ** 2).sum() + ((ue / gk) ** 2).sum())
                    ranges.append(Uk)
                mean_u = Vk @ (ue / gk)
                cov_u = torch.eye(V.shape[0], dtype=F64, device=V.device) - Vk @ Vk.T
            z_mean = ell * mean_u
            z_cov = ell[:, None] * cov_u * ell[None, :]
            mu_z, W = torch.linalg.eigh(0.5 * (z_cov + z_cov.T))
            log_lik.append(ll)
            means.append(self._mu[k] + B @ z_mean)
            bases.append(B @ W)
            lams.append(mu_z.clamp_min(0.0))

        log_lik = torch.stack(log_lik)
        if evidence_only:
            return torch.logsumexp(self._log_w + log_lik, dim=0)
        if sig == 0:
            _check_common_range(ranges, log_lik)
        if not torch.isfinite(log_lik).any():
            fail("y", "a measurement consistent with the noiseless model A x = y (sigma_y = 0) for some component",
                 y)
        log_post = self._log_w + log_lik
        log_post = log_post - torch.logsumexp(log_post, dim=0)
        r_new = max(b.shape[1] for b in bases)
        Q, lam = _pad_rank(bases, lams, self._d, r_new)
        return type(self)._from_eigen(log_post, torch.stack(means), Q, lam, self._d.clone(), self.event_shape,
                                      self.dtype)


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


def _kmeans(X: torch.Tensor, K: int, generator, n_iter: int, n_init: int) -> torch.Tensor:
    """Cluster labels (N,) by k-means++ seeding (Arthur & Vassilvitskii 2007) + Lloyd, best of n_init."""
    N = X.shape[0]
    gdev = generator.device if generator is not None else torch.device("cpu")
    x2 = (X ** 2).sum(1)
    best, best_inertia = None, math.inf
    for _ in range(n_init):
        idx = [int(torch.randint(N, (1,), generator=generator, device=gdev))]
        d2 = ((X - X[idx[0]]) ** 2).sum(1)
        for _ in range(1, K):
            if float(d2.sum()) <= 0:
                j = int(torch.randint(N, (1,), generator=generator, device=gdev))
            else:
                j = int(torch.multinomial((d2 / d2.sum()).to(gdev), 1, generator=generator))
            idx.append(j)
            d2 = torch.minimum(d2, ((X - X[j]) ** 2).sum(1))
        C = X[idx].clone()
        labels = None
        for _ in range(n_iter):
            D = (x2[:, None] - 2 * X @ C.T + (C ** 2).sum(1)[None]).clamp_min(0)
            new = D.argmin(1)
            counts = torch.bincount(new, minlength=K)
            for k in (counts == 0).nonzero().reshape(-1).tolist():  # re-seed an empty cluster at the worst point
                j = int(D.gather(1, new[:, None]).reshape(-1).argmax())
                new[j] = k
                D[j] = 0
                counts = torch.bincount(new, minlength=K)
            if labels is not None and bool((new == labels).all()):
                break
            labels = new
            C = torch.zeros_like(C).index_add_(0, labels, X) / counts.clamp_min(1)[:, None].to(X.dtype)
        D = (x2[:, None] - 2 * X @ C.T + (C ** 2).sum(1)[None]).clamp_min(0)
        inertia = float(D.gather(1, labels[:, None]).sum())
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    return best


__all__ = ["GaussianMixture", "LowRankCov", "DENSE_MAX"]

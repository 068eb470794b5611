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

import math
from typing import Sequence

import torch

from .._validate import check_positive, check_shape, check_tensor, fail
from .base import Prior
from .gmm_parts import (LowRankCov, _check_common_range, _check_event, _check_floor, _check_weights, _eps,
                        _flat_measurement, _LinearOp, _noise_std, _pad_rank, _sigma_vector)

F64 = torch.float64
_LOG_2PI = math.log(2 * math.pi)

#: Largest dimension n for which ``.covs`` / ``.cov`` are returned as dense matrices.
DENSE_MAX = 1024
#: Largest latent dimension r + rank(A) of the exact posterior when a component has a floor d_k > 0.
LATENT_MAX = 2048


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
        from .gmm_fit import fit_eigen

        log_w, mus, Q, lam, d, event_shape = fit_eigen(images, n_components, rank, generator=generator, floor=floor,
                                                       n_iter=n_iter, n_init=n_init)
        obj = cls._from_eigen(log_w, mus, Q, lam, d, event_shape, images.dtype)
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


__all__ = ["GaussianMixture", "LowRankCov", "DENSE_MAX"]

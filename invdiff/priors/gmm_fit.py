r"""Fitting a low-rank Gaussian mixture to data (:meth:`invdiff.priors.gmm.GaussianMixture.fit`): k-means++ /
Lloyd clustering, then per-cluster PCA with the probabilistic-PCA complement variance (Tipping & Bishop 1999).
The mixture algebra itself (densities, denoiser, marginals, sampling, posteriors) is :mod:`invdiff.priors.gmm`."""
from __future__ import annotations

import math

import torch

from .._validate import check_positive, check_tensor, fail

F64 = torch.float64


def fit_eigen(images: torch.Tensor, n_components: int, rank: int, *, generator: torch.Generator | None = None,
              floor: float | None = None, n_iter: int = 100, n_init: int = 3):
    """The eigen form ``(log_w, means, Q, lam, d, event_shape)`` of the mixture fitted to ``images`` (see
    :meth:`invdiff.priors.gmm.GaussianMixture.fit` for the method and the arguments)."""
    from .gmm_parts import _pad_rank

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
    return w.log(), torch.stack(mus), Q, lam, d, img_shape or (n,)


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

r"""Islands of the SMC (AFDPS) sampler: K independent runs of one measurement pooled into one weighted ensemble
(``invdiff.solvers.smc`` module docstring, "Islands").
"""
from __future__ import annotations

import math

import torch

from .base import SolverOutput, chains_unbatch
from .particles import F64, ParticleState


def pool_islands(out: SolverOutput, K: int, how: str, n_samples: int, generator) -> SolverOutput:
    r"""Pool K independent SMC runs per measurement (the island particle model, Verge, Dubarry, Del Moral &
    Moulines 2015) into one weighted ensemble: particle weights :math:`\omega_k W^{(k)}_i`, island weights
    :math:`\omega_k = 1/K` ("equal") or :math:`\propto \hat Z_k` ("evidence", each island's unbiased estimate of
    :math:`p(y)`, so that :math:`\sum_k \hat Z_k \hat\pi_k / \sum_k \hat Z_k` is consistent in K at fixed N). Both are
    consistent as the particles per island and the levels grow. The pooled evidence
    :math:`\log\frac1K\sum_k\hat Z_k` is unbiased in :math:`Z` whatever the pooling.

    ``out`` is the output for the measurements repeated item-major (B K groups of n particles); returns the B
    measurements' output with ``info["island_weights"]`` (B, K), ``info["island_ess"]`` (B,) = ESS/K of the island
    weights, ``info["island_log_evidence"]`` (B, K) (None without the closed-form Stage I constant),
    ``info["log_evidence_se"]`` (B,) the standard error of the pooled log-evidence from the islands' spread,
    ``ess`` (levels, B) the mean over islands and ``ess_islands`` (levels, B, K); ``n_resample``,
    ``unique_ancestors``: sums.
    """
    info = dict(out.info)
    P, W = info["particles"], info["weights"].to(F64)        # (n, B K, ...), (n, B K)
    n, BK = W.shape
    B = BK // K
    lr = info["log_evidence_ratio"].to(F64).reshape(B, K)    # log Z_k / Z_I: Z_I is the same for every island
    omega = torch.softmax(lr, dim=1) if how == "evidence" else torch.full((B, K), 1.0 / K, dtype=F64)
    # (n, B, K, ...) -> (B, K n, ...) group-major, island-major inside a group
    x = P.reshape(n, B, K, *P.shape[2:]).permute(1, 2, 0, *range(3, P.dim() + 1)).reshape(B * K * n, *P.shape[2:])
    w = (W.reshape(n, B, K).permute(1, 2, 0) * omega.to(W.device)[..., None]).reshape(B, K * n)
    state = ParticleState(x, n_groups=B, log_w=torch.log(w))
    mean = state.weighted_mean()
    std = state.weighted_var().sqrt()
    samples = state.draws(n_samples, generator=generator, method="systematic")

    def per_measurement(t, reduce):
        return None if t is None else getattr(t.reshape(*t.shape[:-1], B, K), reduce)(-1)

    ev = info.get("log_evidence")
    ess_k = info["ess"].reshape(-1, B, K)
    # delta-method standard error of log(mean_k Z_k): sd(Z_k) / (sqrt(K) mean Z), with Z_k / mean Z = K softmax_k
    r = K * torch.softmax(lr, dim=1)
    se = (r - 1).pow(2).sum(1).div(K * (K - 1)).sqrt()
    info.update({
        "islands": K, "island_size": n, "island_weights_mode": how, "island_weights": omega,
        "island_ess": 1.0 / omega.pow(2).sum(1) / K,
        "island_log_evidence": ev.reshape(B, K) if ev is not None else None,
        "log_evidence": (torch.logsumexp(ev.reshape(B, K).to(F64), 1) - math.log(K)) if ev is not None else None,
        "log_evidence_ratio": torch.logsumexp(lr, 1) - math.log(K), "log_evidence_se": se,
        "particles": chains_unbatch(x, K * n), "weights": w.T.contiguous(), "std": std,
        "ess": ess_k.mean(-1), "ess_islands": ess_k, "resampled": info["resampled"].reshape(-1, B, K).any(-1),
        "n_resample": per_measurement(info["n_resample"], "sum"),
        "unique_ancestors": per_measurement(info["unique_ancestors"], "sum"),
        "acceptance": per_measurement(info["acceptance"].to(F64), "mean") if info["acceptance"] is not None else None,
    })
    return SolverOutput(mean=mean, samples=samples, info=info, std=std.to(mean.dtype))

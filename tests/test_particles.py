"""Particle utilities: weights, ESS, resampling, the ParticleState, exact Gaussian initialisation."""
import math

import pytest
import torch

from invdiff.operators import CircularBlur, Inpainting, MatrixOperator, gaussian_kernel, random_mask
from invdiff.solvers.particles import (ParticleState, ess, flat_indices, map_chunked, multinomial_resample,
                                       normalize_log_weights, sample_linear_gaussian, spectral_basis,
                                       systematic_resample)

F64 = torch.float64


# ---- weights and ESS --------------------------------------------------------------------------
def test_ess_matches_formula(gen):
    lw = torch.randn(5, 40, generator=gen, dtype=F64) * 2
    w = lw.exp()
    expected = w.sum(1) ** 2 / (40 * (w ** 2).sum(1))
    assert torch.allclose(ess(lw), expected, rtol=1e-12)
    assert float(ess(torch.zeros(7))) == pytest.approx(1.0)
    one_hot = torch.full((8,), float("-inf"), dtype=F64)
    one_hot[3] = 0.0
    assert float(ess(one_hot)) == pytest.approx(1 / 8)


def test_log_weights_stable_with_huge_magnitudes():
    lw = torch.tensor([1e300, 1e300 - 1e285, -1e300, 1e300, float("-inf")], dtype=F64)
    w = normalize_log_weights(lw)
    assert torch.isfinite(w).all() and float(w.sum()) == pytest.approx(1.0)
    assert w[2] == 0 and w[4] == 0 and w[1] == 0 and float(w[0]) == pytest.approx(0.5)
    # shifts by a constant change nothing, even far beyond exp's range (exp(1e6) overflows)
    lw2 = torch.tensor([-3.0, 0.0, 2.5], dtype=F64)
    for c in (1e6, -1e6, 1e15):
        assert torch.allclose(normalize_log_weights(lw2 + c), normalize_log_weights(lw2), atol=1e-9)
    assert float(ess(torch.tensor([5e4, 5e4 - math.log(3.0)], dtype=F64))) == pytest.approx(16 / 20)
    with pytest.raises(ValueError, match="argument 'log_w'"):
        normalize_log_weights(torch.full((3,), float("-inf")))
    with pytest.raises(ValueError, match="argument 'log_w'"):
        ess(torch.tensor([0.0, float("nan")]))


# ---- resampling ---------------------------------------------------------------------------------
W = torch.tensor([0.05, 0.3, 0.0, 0.125, 0.025, 0.2, 0.3], dtype=F64)


def _counts(idx: torch.Tensor, n: int) -> torch.Tensor:
    return torch.zeros(idx.shape[0], n, dtype=F64).scatter_add_(1, idx, torch.ones_like(idx, dtype=F64))


@pytest.mark.parametrize("resampler", [systematic_resample, multinomial_resample])
def test_resampling_is_unbiased(resampler):
    G, N = 20000, W.numel()
    idx = resampler(W.expand(G, N), generator=torch.Generator().manual_seed(1))
    assert idx.shape == (G, N) and idx.dtype == torch.long
    counts = _counts(idx, N)
    se = (counts.var(0) / G).sqrt().max()
    assert torch.allclose(counts.mean(0), N * W, atol=float(4 * se) + 1e-3)
    assert (counts[:, 2] == 0).all()  # zero weight: never drawn


def test_systematic_has_lower_variance_than_multinomial():
    G, N = 5000, W.numel()
    sys_c = _counts(systematic_resample(W.expand(G, N), generator=torch.Generator().manual_seed(2)), N)
    mul_c = _counts(multinomial_resample(W.expand(G, N), generator=torch.Generator().manual_seed(2)), N)
    # every systematic count is floor(N w) or ceil(N w) ...
    nw = N * W
    assert ((sys_c >= nw.floor() - 1e-9) & (sys_c <= nw.ceil() + 1e-9)).all()
    # ... so its variance is far below the multinomial N w (1 - w)
    assert float(sys_c.var(0).sum()) < 0.35 * float(mul_c.var(0).sum())
    assert torch.allclose(mul_c.var(0), N * W * (1 - W), rtol=0.15, atol=0.02)


def test_resampling_is_deterministic_under_a_seed():
    a = systematic_resample(W, 50, generator=torch.Generator().manual_seed(3))
    b = systematic_resample(W, 50, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (50,)
    assert torch.equal(systematic_resample(torch.ones(6), generator=torch.Generator().manual_seed(0)), torch.arange(6))


def test_resampling_rejects_bad_weights():
    with pytest.raises(ValueError, match="argument 'weights'"):
        systematic_resample(torch.tensor([0.5, -0.1, 0.6]))
    with pytest.raises(ValueError, match="argument 'weights'"):
        multinomial_resample(torch.zeros(4))
    with pytest.raises(ValueError, match="argument 'n'"):
        systematic_resample(W, 0)


# ---- the particle state ---------------------------------------------------------------------------
def test_state_resamples_only_degenerate_groups(gen):
    x = torch.arange(12, dtype=torch.float32)[:, None].repeat(1, 3)
    st = ParticleState(x, n_groups=3)
    st.reweight(torch.tensor([[0, 0, 0, 0], [0, -40, -40, -40], [0, 0.1, 0, 0.1]], dtype=F64))
    st.record()
    rows = st.resample(generator=gen, threshold=0.5)
    assert st.n_resample.tolist() == [0, 1, 0]
    assert torch.equal(rows[:4], torch.arange(4)) and torch.equal(rows[8:], torch.arange(8, 12))
    assert (st.grouped()[1] == 4).all()          # group 1 kept only its dominant particle (row 4)
    assert st.log_w[1].abs().max() == 0 and st.log_w[2].abs().max() > 0
    assert st.unique_ancestors().tolist() == [4, 1, 4]
    h = st.history()
    assert h["ess"].shape == (1, 3) and h["resampled"].tolist() == [[False, True, False]]
    with pytest.raises(ValueError, match="argument 'threshold'"):
        st.resample(generator=gen, threshold=0.0)


def test_state_quarantines_nonfinite_particles():
    x = torch.randn(6, 2)
    x[1, 0] = float("nan")
    st = ParticleState(x, n_groups=2)
    assert st.n_quarantined == 1 and st.log_w[0, 1] == float("-inf") and torch.isfinite(st.x).all()
    st.reweight(torch.tensor([0.0, 0.0, float("inf"), 0.0, float("nan"), 1.0], dtype=F64))
    assert st.n_quarantined == 3 and float(st.weights()[0, 0]) == pytest.approx(1.0)
    with pytest.raises(RuntimeError, match="measurement"):
        st.reweight(torch.tensor([float("nan")] * 3 + [0.0] * 3, dtype=F64))


def test_state_moments_and_draws(gen):
    x = torch.randn(2 * 5, 3, generator=gen, dtype=F64)
    lw = torch.randn(2, 5, generator=gen, dtype=F64)
    st = ParticleState(x, n_groups=2, log_w=lw)
    w = torch.softmax(lw, 1)
    xg = x.reshape(2, 5, 3)
    m = (w[..., None] * xg).sum(1)
    assert torch.allclose(st.weighted_mean(), m)
    assert torch.allclose(st.weighted_var(), (w[..., None] * (xg - m[:, None]) ** 2).sum(1))
    d = st.draws(7, generator=gen)
    assert d.shape == (7, 2, 3)
    assert all(any(torch.equal(d[i, g], xg[g, j]) for j in range(5)) for i in range(7) for g in range(2))
    uni = ParticleState(x, n_groups=2)
    assert torch.equal(uni.draws(generator=gen), xg.transpose(0, 1))   # uniform weights: every particle once
    assert torch.equal(flat_indices(torch.tensor([[1, 1], [0, 2]]), 3), torch.tensor([1, 1, 3, 5]))


def test_map_chunked_matches_one_call():
    calls = []

    def fn(x, s):
        calls.append(x.shape[0])
        return x * s

    x, s = torch.randn(10, 2), torch.rand(10, 1)
    out = map_chunked(fn, x, s, chunk=4)
    assert torch.equal(out, x * s) and calls == [4, 4, 2]
    assert torch.equal(map_chunked(fn, x, 3.0, chunk=None), 3 * x)


# ---- exact Gaussian initialisation -------------------------------------------------------------------
def _dense_posterior(A, y, sigma_y, alpha, m0, rho2):
    A64, y64 = A.double(), y.double().reshape(-1)
    n = A64.shape[1]
    prec = alpha * A64.T @ A64 / sigma_y ** 2 + torch.eye(n, dtype=F64) / rho2
    cov = torch.linalg.inv(prec)
    return cov @ (alpha * A64.T @ y64 / sigma_y ** 2 + m0.double().reshape(-1) / rho2), cov


def test_linear_gaussian_draws_match_the_exact_gaussian(gen):
    A = torch.randn(3, 5, generator=gen, dtype=F64)
    op = MatrixOperator(A, sigma=0.3)
    y = torch.randn(1, 3, generator=gen, dtype=F64)
    m0 = torch.linspace(-1, 1, 5, dtype=F64)[None]
    mean, cov = _dense_posterior(A, y, 0.3, 0.7, m0, 2.0)
    basis = spectral_basis(op, torch.zeros(1, 5, dtype=F64))
    assert basis is not None and basis.kind == "matrix-svd"
    n = 40000
    for b in (basis, None):  # closed form in the SVD basis, and perturbation-optimisation by CG
        x, info = sample_linear_gaussian(op, y.expand(n, 3), sigma_y=0.3, alpha=0.7, prior_mean=m0, prior_var=2.0,
                                         generator=torch.Generator().manual_seed(4), basis=b, return_mean=True,
                                         cg_iters=50)
        assert info["method"] == ("spectral" if b is not None else "cg")
        assert torch.allclose(info["mean"][0], mean, atol=1e-8)
        assert torch.allclose(x.mean(0), mean, atol=0.03)
        assert torch.allclose(torch.cov(x.T), cov, atol=0.04)


def test_spectral_basis_detection(gen):
    ip = Inpainting((1, 6, 6), random_mask((1, 6, 6), keep=0.5, generator=gen), sigma=0.1)
    b = spectral_basis(ip, torch.zeros(1, 1, 6, 6))
    assert b is not None and b.kind == "decomposable"
    blur = CircularBlur(gaussian_kernel(3, 1.0), (1, 6, 6), sigma=0.1)
    assert spectral_basis(blur, torch.zeros(1, 1, 6, 6)) is None     # rfft coefficients: not an orthonormal basis
    # the CG fallback agrees with the closed form on inpainting
    y = ip(torch.rand(2, 1, 6, 6, generator=gen))
    kw = dict(sigma_y=0.1, alpha=1.0, prior_mean=0.5, prior_var=4.0, return_mean=True)
    _, i1 = sample_linear_gaussian(ip, y, generator=gen, basis=b, **kw)
    _, i2 = sample_linear_gaussian(ip, y, generator=gen, basis=None, **kw)
    assert torch.allclose(i1["mean"], i2["mean"], atol=1e-4)

"""Exactness of the Gaussian-mixture prior: score, denoiser, marginals, posteriors, low-rank path, fit.

Every reference here is computed independently of invdiff/priors/gmm.py: dense Gaussian conditioning with
explicit matrix inverses (reference notes smc-ads-conditional-dc.md §5.1), scipy densities, brute-force
importance sampling from the prior, and a separate sampler for two-sample tests.
"""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from invdiff.priors.gmm import GaussianMixture, LowRankCov
from invdiff import metrics

F64 = torch.float64


def matrix_physics(A, sigma):
    """invdiff's MatrixOperator when importable, else a stand-in with the same attributes."""
    try:
        from invdiff.operators import MatrixOperator
    except ImportError:
        try:
            from invdiff.operators.matrix import MatrixOperator
        except ImportError:
            MatrixOperator = None
    if MatrixOperator is not None:
        return MatrixOperator(A, sigma)

    class _StandIn:
        def __init__(self, A, sigma):
            self.matrix, self.sigma = A, sigma

        def A(self, x):
            return x.reshape(x.shape[0], -1) @ self.matrix.T.to(x.dtype)

    return _StandIn(A, sigma)


def random_spd(n, g, scale=1.0, rank=None):
    r = n if rank is None else rank
    M = torch.randn(n, r, generator=g, dtype=F64)
    C = scale * M @ M.T / r
    return C + (0.05 * scale * torch.eye(n, dtype=F64) if rank is None else 0)


def random_mixture(n, K, g, *, sep=2.0):
    w = torch.rand(K, generator=g, dtype=F64) + 0.2
    w = w / w.sum()
    means = sep * torch.randn(K, n, generator=g, dtype=F64)
    covs = torch.stack([random_spd(n, g, scale=0.3 + 0.5 * k) for k in range(K)])
    return w, means, covs


def dense_posterior(w, means, covs, A, y, s):
    """Reference: closed-form Gaussian conditioning with explicit inverses (§5.1)."""
    m = A.shape[0]
    logs, mus, Cs = [], [], []
    for k in range(len(w)):
        C, mu = covs[k], means[k]
        S = A @ C @ A.T + s ** 2 * torch.eye(m, dtype=F64)
        Kg = C @ A.T @ torch.linalg.inv(S)
        mus.append(mu + Kg @ (y - A @ mu))
        Cs.append(C - Kg @ A @ C)
        logs.append(math.log(w[k]) + stats.multivariate_normal(mean=(A @ mu).numpy(), cov=S.numpy()).logpdf(y.numpy()))
    lw = torch.tensor(logs, dtype=F64)
    return (lw - torch.logsumexp(lw, 0)).exp(), torch.stack(mus), torch.stack(Cs)


def reference_sample(w, means, covs, n, seed):
    """Independent sampler (numpy): categorical, then Cholesky."""
    rng = np.random.default_rng(seed)
    k = rng.choice(len(w), size=n, p=w.numpy() / w.numpy().sum())
    out = np.empty((n, means.shape[1]))
    for j in range(len(w)):
        idx = np.nonzero(k == j)[0]
        L = np.linalg.cholesky(covs[j].numpy() + 1e-12 * np.eye(means.shape[1]))
        out[idx] = means[j].numpy() + rng.standard_normal((idx.size, means.shape[1])) @ L.T
    return torch.from_numpy(out)


# ------------------------------------------------------------------------------------------------
# score, denoiser, marginals
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 16])
@pytest.mark.parametrize("sigma", [0.05, 0.3, 1.0, 5.0])
def test_score_matches_autograd_of_log_prob(n, sigma, gen):
    w, means, covs = random_mixture(n, 3, gen)
    p = GaussianMixture(w, means, covs)
    x = (means[0] + 1.5 * torch.randn(6, n, generator=gen, dtype=F64)).requires_grad_(True)
    (grad,) = torch.autograd.grad(p.log_prob(x, sigma).sum(), x)
    score = p.score(x.detach(), sigma)  # inherited (D - x) / sigma^2
    assert torch.allclose(score, grad, rtol=1e-7, atol=1e-8 / sigma ** 2)


def test_denoiser_is_differentiable(gen):
    """Solvers such as DPS backpropagate through D(x, sigma): gradients must be exact."""
    n, r = 4, 2
    p = GaussianMixture.low_rank(torch.tensor([0.5, 0.5], dtype=F64), torch.randn(2, n, generator=gen, dtype=F64),
                                 torch.randn(2, n, r, generator=gen, dtype=F64), None, 0.1)
    x = torch.randn(3, n, generator=gen, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: p.denoise(t, 0.7), (x,))


def test_score_per_sample_sigma_and_low_rank(gen):
    n, r = 16, 3
    U = torch.randn(2, n, r, generator=gen, dtype=F64)
    p = GaussianMixture.low_rank(torch.tensor([0.4, 0.6], dtype=F64), torch.randn(2, n, generator=gen, dtype=F64),
                                 U, torch.rand(2, r, generator=gen, dtype=F64) + 0.5, torch.tensor([0.1, 0.02]))
    x = torch.randn(4, n, generator=gen, dtype=F64).requires_grad_(True)
    sig = torch.tensor([0.05, 0.2, 1.0, 3.0], dtype=F64)
    (grad,) = torch.autograd.grad(p.log_prob(x, sig).sum(), x)
    assert torch.allclose(p.score(x.detach(), sig), grad, rtol=1e-7, atol=1e-6)
    # each row equals the scalar-sigma evaluation
    for b in range(4):
        assert torch.allclose(p.denoise(x[b:b + 1].detach(), float(sig[b])), p.denoise(x.detach(), sig)[b:b + 1])


def test_log_prob_matches_scipy(gen):
    w, means, covs = random_mixture(5, 3, gen)
    p = GaussianMixture(w, means, covs)
    x = torch.randn(7, 5, generator=gen, dtype=F64)
    for sigma in [0.0, 0.7]:
        I = torch.eye(5, dtype=F64)
        ref = np.log(sum(float(w[k]) * stats.multivariate_normal(means[k].numpy(), (covs[k] + sigma ** 2 * I).numpy())
                         .pdf(x.numpy()) for k in range(3)))
        assert np.allclose(p.log_prob(x, sigma).numpy(), ref, rtol=1e-10)


def test_denoiser_matches_dense_formula(gen):
    n = 6
    w, means, covs = random_mixture(n, 3, gen)
    p = GaussianMixture(w, means, covs)
    x = torch.randn(5, n, generator=gen, dtype=F64) * 2
    for sigma in [0.1, 1.0, 10.0]:
        I = torch.eye(n, dtype=F64)
        logr = torch.stack([math.log(w[k]) + torch.tensor(stats.multivariate_normal(
            means[k].numpy(), (covs[k] + sigma ** 2 * I).numpy()).logpdf(x.numpy())) for k in range(3)], 1)
        r = torch.softmax(logr, 1)
        Ek = torch.stack([means[k] + (x - means[k]) @ torch.linalg.inv(covs[k] + sigma ** 2 * I) @ covs[k]
                          for k in range(3)], 1)
        ref = (r[..., None] * Ek).sum(1)
        assert torch.allclose(p.denoise(x, sigma), ref, atol=1e-10)
    assert torch.equal(p.denoise(x, 0.0), x)


def test_denoiser_matches_monte_carlo_2d():
    g = torch.Generator().manual_seed(1)
    w = torch.tensor([0.3, 0.7], dtype=F64)
    means = torch.tensor([[-1.5, 0.0], [1.0, 1.0]], dtype=F64)
    covs = torch.stack([torch.tensor([[0.3, 0.1], [0.1, 0.2]]), torch.tensor([[0.2, -0.05], [-0.05, 0.4]])]).to(F64)
    p = GaussianMixture(w, means, covs)
    x0 = p.sample(200_000, generator=g)
    sigma = 0.8
    for x in torch.tensor([[0.0, 0.5], [-1.0, -0.5]], dtype=F64):
        lw = -((x - x0) ** 2).sum(1) / (2 * sigma ** 2)
        wt = torch.softmax(lw, 0)
        est = (wt[:, None] * x0).sum(0)
        se = ((wt[:, None] ** 2 * (x0 - est) ** 2).sum(0)).sqrt()  # self-normalised IS standard error
        assert ((p.denoise(x[None], sigma)[0] - est).abs() < 5 * se + 1e-3).all()


def test_marginal_vp_and_ve_consistency(gen):
    n = 4
    w, means, covs = random_mixture(n, 2, gen)
    p = GaussianMixture(w, means, covs)
    x = torch.randn(3, n, generator=gen, dtype=F64)
    # VE: noising twice adds variances
    assert torch.allclose(p.marginal(0.3).marginal(0.4).log_prob(x), p.log_prob(x, 0.5), atol=1e-12)
    # VP state x_t = s (x0 + sigma n): change of variables
    ab = 0.6
    s, sigma = math.sqrt(ab), math.sqrt((1 - ab) / ab)
    pt = p.marginal(sigma, s)
    assert torch.allclose(pt.log_prob(x), p.log_prob(x / s, sigma) - n * math.log(s), atol=1e-12)
    # Tweedie on the VP state (reference notes §5.2): E[x0 | x_t] = (x + b^2 grad log p_t(x)) / a, b = s sigma
    xt = x.clone().requires_grad_(True)
    (gl,) = torch.autograd.grad(pt.log_prob(xt).sum(), xt)
    tweedie = (x + (1 - ab) * gl) / s
    assert torch.allclose(p.x0_vp(x, ab), tweedie, atol=1e-10)


def test_sample_moments(gen):
    n = 3
    w, means, covs = random_mixture(n, 3, gen)
    p = GaussianMixture(w, means, covs)
    X = p.sample(40_000, generator=gen)
    assert X.shape == (40_000, n)
    assert ((X.mean(0) - p.mean[0]).abs() < 5 * p.std[0] / math.sqrt(40_000)).all()
    emp = torch.cov(X.T)
    assert torch.allclose(emp, p.cov, atol=0.08 * float(p.cov.abs().max()))


# ------------------------------------------------------------------------------------------------
# posteriors
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma_y", [0.5, 0.05])
def test_posterior_matches_dense_conditioning(sigma_y, gen):
    n, m, K = 6, 3, 3
    w, means, covs = random_mixture(n, K, gen)
    A = torch.randn(m, n, generator=gen, dtype=F64)
    phys = matrix_physics(A, sigma_y)
    s = float(phys.sigma)
    x = means[1] + torch.randn(n, generator=gen, dtype=F64)
    y = (A @ x + s * torch.randn(m, generator=gen, dtype=F64))[None]
    post = GaussianMixture(w, means, covs).posterior(y, phys)
    rw, rm, rC = dense_posterior(w, means, covs, A, y[0], s)
    assert torch.allclose(post.weights, rw, atol=1e-10)
    assert torch.allclose(post.means, rm, atol=1e-9)
    assert torch.allclose(post.covs, rC, atol=1e-9)
    mix_mean = (rw[:, None] * rm).sum(0)
    assert torch.allclose(post.mean, mix_mean[None], atol=1e-9)
    dm = rm - mix_mean
    mix_cov = (rw[:, None, None] * (rC + dm[:, :, None] * dm[:, None, :])).sum(0)
    assert torch.allclose(post.cov, mix_cov, atol=1e-9)
    assert torch.allclose(post.std[0], mix_cov.diagonal().sqrt(), atol=1e-9)


def test_posterior_noiseless_and_rank_deficient(gen):
    n = 5
    w, means, covs = random_mixture(n, 2, gen)
    a = torch.randn(2, n, generator=gen, dtype=F64)
    A = torch.cat([a, a[:1]], 0)  # 3 x 5 of rank 2: a duplicated row
    y = (A @ torch.randn(n, generator=gen, dtype=F64))[None]
    post = GaussianMixture(w, means, covs).posterior(y, matrix_physics(A, 0.0))
    # reference: the duplicated row carries no information, condition on the full-row-rank part exactly
    rw, rm, rC = dense_posterior(w, means, covs, a, y[0, :2], 0.0)
    assert torch.allclose(post.weights, rw, atol=1e-9)
    assert torch.allclose(post.means, rm, atol=1e-9)
    assert torch.allclose(post.covs, rC, atol=1e-9)
    assert torch.allclose(post.sample(50, generator=gen) @ A.T, y.expand(50, -1), atol=1e-8)  # A x = y exactly
    # y outside range(A): impossible without noise
    with pytest.raises(ValueError, match="'y'"):
        GaussianMixture(w, means, covs).posterior(torch.tensor([[1.0, 2.0, 3.0]], dtype=F64),
                                                  matrix_physics(A, 0.0))


def test_posterior_noiseless_ill_defined_raises():
    # two rank-1 components along different axes, observed fully without noise: no common reference measure
    p = GaussianMixture.low_rank(torch.tensor([0.5, 0.5], dtype=F64), torch.zeros(2, 2, dtype=F64),
                                 torch.eye(2, dtype=F64)[:, :, None], None, 0.0)
    with pytest.raises(ValueError, match="'sigma_y'"):
        p.posterior(torch.tensor([[0.0, 0.0]], dtype=F64), matrix_physics(torch.eye(2, dtype=F64), 0.0))


def test_posterior_importance_sampling_2d():
    g = torch.Generator().manual_seed(3)
    w = torch.tensor([0.5, 0.5], dtype=F64)
    means = torch.tensor([[-2.0, 0.0], [2.0, 0.5]], dtype=F64)
    covs = torch.stack([0.6 * torch.eye(2), torch.tensor([[0.5, 0.2], [0.2, 0.3]])]).to(F64)
    A = torch.tensor([[1.0, 0.4], [-0.2, 0.7]], dtype=F64)  # reference notes §5.3 2-D linear problem
    y = torch.tensor([[0.8, -0.4]], dtype=F64)
    post = GaussianMixture(w, means, covs).posterior(y, matrix_physics(A, 1.0))
    # brute force: prior samples weighted by the likelihood
    prior = GaussianMixture(w, means, covs)
    N = 400_000
    X = prior.sample(N, generator=g)
    lw = -((y - X @ A.T) ** 2).sum(1) / 2
    wt = torch.softmax(lw, 0)
    ess = 1 / (wt ** 2).sum()
    est_mean = (wt[:, None] * X).sum(0)
    est_cov = (wt[:, None, None] * (X - est_mean)[:, :, None] * (X - est_mean)[:, None, :]).sum(0)
    tol = 5 * post.std[0] / ess.sqrt()
    assert ((post.mean[0] - est_mean).abs() < tol).all()
    assert torch.allclose(post.cov, est_cov, atol=0.03)
    # component posterior probability: prior labels of the samples, reweighted
    lab = prior.responsibilities(X).argmax(1)  # well separated: label by responsibility
    assert abs(float(wt[lab == 1].sum()) - float(post.weights[1])) < 0.02


def test_posterior_samples_two_sample_tests(gen):
    n, m, K = 4, 1, 3
    w, means, covs = random_mixture(n, K, gen, sep=3.0)
    A = torch.randn(m, n, generator=gen, dtype=F64)
    y = (A @ (means[0] + means[1]) / 2)[None]  # one measurement between two modes: a multimodal posterior
    phys = matrix_physics(A, 0.3)
    post = GaussianMixture(w, means, covs).posterior(y, phys)
    rw, rm, rC = dense_posterior(w, means, covs, A, y[0], float(phys.sigma))
    assert rw.min() > 0.15
    N = 3000
    ours = post.sample(N, generator=torch.Generator().manual_seed(11))
    ref = reference_sample(rw, rm, rC, N, seed=12)
    pvals = [stats.ks_2samp(ours[:, i].numpy(), ref[:, i].numpy()).pvalue for i in range(n)]
    assert min(pvals) > 1e-3 / n  # Bonferroni over coordinates
    exact = lambda k, g: reference_sample(rw, rm, rC, k, int(torch.randint(1 << 30, (1,), generator=g)))  # noqa: E731
    floor = metrics.sw_monte_carlo_floor(exact, N, n_repeats=8, n_projections=200,
                                         generator=torch.Generator().manual_seed(5))
    sw = metrics.sliced_wasserstein(ours, ref, 200, generator=torch.Generator().manual_seed(6))
    assert sw < floor.mean + 4 * floor.std + 0.01, (sw, floor)
    # a sampler with the wrong mode weights (reversed) is visibly worse than the floor
    wrong = reference_sample(rw.flip(0), rm, rC, N, seed=13)
    assert metrics.sliced_wasserstein(wrong, ref, 200, generator=torch.Generator().manual_seed(6)) > \
        floor.mean + 5 * floor.std
    assert torch.allclose(metrics.mode_weights(ours, post), rw, atol=0.03)


def test_posterior_calibration_coverage():
    """Simulation-based check: truth ~ prior, y ~ likelihood, credible intervals cover ~ level."""
    g = torch.Generator().manual_seed(7)
    w = torch.tensor([0.4, 0.6], dtype=F64)
    means = torch.tensor([[-1.0, 1.0, 0.0], [1.5, -0.5, 0.5]], dtype=F64)
    covs = torch.stack([0.5 * torch.eye(3), 0.3 * torch.eye(3) + 0.1]).to(F64)
    p = GaussianMixture(w, means, covs)
    A = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, -1.0]], dtype=F64)
    phys = matrix_physics(A, 0.5)
    hits, overconfident = [], []
    for truth in p.sample(800, generator=g):
        y = (A @ truth + float(phys.sigma) * torch.randn(2, generator=g, dtype=F64))[None]
        hits.append(metrics.coverage(p.posterior(y, phys).sample(200, generator=g), truth, 0.8))
        overconfident.append(metrics.coverage(p.posterior(y, phys, sigma_y=0.1).sample(200, generator=g), truth, 0.8))
    assert abs(np.mean(hits) - 0.8) < 0.04  # standard error ~0.011; deterministic seeds
    assert np.mean(overconfident) < 0.7  # a posterior that trusts the data too much under-covers


# ------------------------------------------------------------------------------------------------
# low rank == dense, matrix-free operators, image priors
# ------------------------------------------------------------------------------------------------
def _low_rank_and_dense(n, r, floor, gen, img_shape=None):
    K = 3
    w = torch.tensor([0.2, 0.5, 0.3], dtype=F64)
    means = torch.randn(K, n, generator=gen, dtype=F64)
    U = torch.randn(K, n, r, generator=gen, dtype=F64)
    s = torch.rand(K, r, generator=gen, dtype=F64) + 0.3
    d = torch.tensor(floor, dtype=F64)
    lr = GaussianMixture.low_rank(w, means, U, s, d, img_shape=img_shape)
    covs = U @ torch.diag_embed(s) @ U.transpose(1, 2) + d[:, None, None] * torch.eye(n, dtype=F64)
    return lr, GaussianMixture(w, means, covs, img_shape=img_shape), (w, means, covs)


@pytest.mark.parametrize("floor", [[0.1, 0.05, 0.2], [0.0, 0.0, 0.0]])
def test_low_rank_equals_dense(floor, gen):
    n, r, m = 12, 3, 5
    lr, dense, (w, means, covs) = _low_rank_and_dense(n, r, floor, gen)
    assert lr.rank == r and dense.rank == n
    x = torch.randn(8, n, generator=gen, dtype=F64)
    for sigma in [0.1, 1.0]:
        assert torch.allclose(lr.denoise(x, sigma), dense.denoise(x, sigma), atol=1e-10)
        assert torch.allclose(lr.log_prob(x, sigma), dense.log_prob(x, sigma), atol=1e-9)
    assert torch.allclose(lr.covs, covs, atol=1e-12)
    A = torch.randn(m, n, generator=gen, dtype=F64)
    y = torch.randn(1, m, generator=gen, dtype=F64)
    phys = matrix_physics(A, 0.2)
    pl, pd = lr.posterior(y, phys), dense.posterior(y, phys)
    rw, rm, rC = dense_posterior(w, means, covs, A, y[0], float(phys.sigma))
    for post in (pl, pd):
        assert torch.allclose(post.weights, rw, atol=1e-10)
        assert torch.allclose(post.means, rm, atol=1e-9)
        assert torch.allclose(post.covs, rC, atol=1e-9)
    if floor[0] == 0:
        assert pl.rank == r  # floor-free: the posterior stays rank r
    # LowRankCov round trip
    lrc = pl.covs_low_rank
    assert isinstance(lrc, LowRankCov) and torch.allclose(lrc.dense(), rC, atol=1e-9)
    again = GaussianMixture.low_rank(pl.weights, pl.means, *lrc)
    assert torch.allclose(again.denoise(x, 0.5), pl.denoise(x, 0.5), atol=1e-10)


def test_matrix_free_deepinv_physics_on_images(gen):
    """Image-shaped prior (1, 4, 4) with deepinv Inpainting: matches dense conditioning with the mask matrix."""
    import deepinv as dinv

    img = (1, 4, 4)
    n = 16
    for floor in ([0.05, 0.1, 0.02], [0.0, 0.0, 0.0]):
        lr, _, (w, means, covs) = _low_rank_and_dense(n, 3, floor, gen, img_shape=img)
        assert lr.spatial_dims == 2 and lr.channels == 1 and lr.resolution == (4, 4)
        mask = (torch.rand(img, generator=gen) > 0.4).float()
        phys = dinv.physics.Inpainting(img_size=img, mask=mask, noise_model=dinv.physics.GaussianNoise(0.1))
        y = phys.A(torch.randn(1, *img, generator=gen)).to(F64)
        post = lr.posterior(y, phys)
        A = torch.diag(mask.reshape(-1).to(F64))
        rw, rm, rC = dense_posterior(w, means, covs, A, y.reshape(-1), float(phys.noise_model.sigma))
        assert torch.allclose(post.weights, rw, atol=1e-8)
        assert torch.allclose(post.means, rm, atol=1e-7)
        assert torch.allclose(post.covs, rC, atol=1e-7)
        assert post.mean.shape == (1, *img) and post.std.shape == (1, *img)
        assert post.sample(3, generator=gen).shape == (3, *img)
        assert lr.denoise(torch.randn(2, *img, dtype=F64), 0.3).shape == (2, *img)


def test_float32_deepinv_operator_blur(gen):
    """A blur with a float32 kernel: the posterior still matches dense conditioning with its matrix."""
    import deepinv as dinv

    img, n = (1, 6, 6), 36
    w, means, covs = random_mixture(n, 2, gen)
    p = GaussianMixture(w, means, covs, img_shape=img)
    phys = dinv.physics.Blur(filter=dinv.physics.blur.gaussian_blur(sigma=1.0), padding="circular",
                             noise_model=dinv.physics.GaussianNoise(0.05))
    A = torch.stack([phys.A(e.reshape(1, *img).float()).reshape(-1) for e in torch.eye(n)], 1).to(F64)
    y = phys.A(torch.rand(1, *img, generator=gen))
    post = p.posterior(y, phys)
    rw, rm, rC = dense_posterior(w, means, covs, A, y.reshape(-1).to(F64), float(phys.noise_model.sigma))
    assert torch.allclose(post.weights, rw, atol=1e-5)
    assert torch.allclose(post.means, rm, atol=1e-5)
    assert torch.allclose(post.covs, rC, atol=1e-5)


def test_large_low_rank_posterior_mri(gen):
    """n = 2 x 64 x 64: posterior through a matrix-free MRI operator, only A U_k is ever formed."""
    import deepinv as dinv

    img, r, K = (2, 64, 64), 8, 2
    n = math.prod(img)
    U = torch.randn(K, n, r, generator=gen, dtype=F64) / math.sqrt(n)
    means = 0.1 * torch.randn(K, n, generator=gen, dtype=F64)
    s = torch.rand(K, r, generator=gen, dtype=F64) + 0.5
    w = torch.tensor([0.5, 0.5], dtype=F64)
    p = GaussianMixture.low_rank(w, means, U, s, 0.0, img_shape=img)
    mask = torch.zeros(64, 64)
    mask[:, ::4] = 1
    phys = dinv.physics.MRI(mask=mask, img_size=img, noise_model=dinv.physics.GaussianNoise(0.01))
    x = p.sample(1, generator=gen)
    y = phys(x.float()).to(F64)
    post = p.posterior(y, phys)
    assert post.rank == r and post.covs_low_rank.factors.shape == (K, n, r)
    assert post.mean.shape == (1, *img)
    # independent latent-space check: x = m + U z, z ~ N(0, diag s); y = A m + (A U) z + noise
    sig = float(phys.noise_model.sigma)
    for k in range(K):
        AU = torch.stack([phys.A(U[k, :, j].reshape(1, *img)).reshape(-1) for j in range(r)], 1)  # float64
        Am = phys.A(means[k].reshape(1, *img)).reshape(-1)
        P = torch.diag(1 / s[k]) + AU.T @ AU / sig ** 2
        z = torch.linalg.solve(P, AU.T @ (y.reshape(-1) - Am) / sig ** 2)
        assert torch.allclose(post.means[k], means[k] + U[k] @ z, atol=1e-9)
    # the posterior is more concentrated than the prior and its samples fit the data
    assert float(post.std.mean()) < float(p.std.mean())


# ------------------------------------------------------------------------------------------------
# fit
# ------------------------------------------------------------------------------------------------
def test_fit_recovers_two_cluster_mixture():
    g = torch.Generator().manual_seed(4)
    n, r = 5, 2
    w = torch.tensor([0.3, 0.7], dtype=F64)
    means = torch.zeros(2, n, dtype=F64)
    means[0, 0], means[1, 0] = -5.0, 5.0
    U = 0.5 * torch.randn(2, n, r, generator=g, dtype=F64)
    truth = GaussianMixture.low_rank(w, means, U, None, torch.tensor([0.05, 0.1]))
    X = truth.sample(6000, generator=g)
    fitted = GaussianMixture.fit(X, 2, r, generator=g)
    order = fitted.means[:, 0].argsort()
    assert torch.allclose(fitted.weights[order], w, atol=0.03)
    assert torch.allclose(fitted.means[order], means, atol=0.15)
    rel = (fitted.covs[order] - truth.covs).norm(dim=(1, 2)) / truth.covs.norm(dim=(1, 2))
    assert (rel < 0.1).all(), rel
    assert torch.allclose(fitted._d[order], torch.tensor([0.05, 0.1], dtype=F64), rtol=0.2)
    # an image prior fitted on (N, 1, 4, 4) data acts on image batches; floor=0 gives an exactly low-rank prior
    imgs = GaussianMixture.fit(X[:, :4].repeat(1, 4).reshape(-1, 1, 4, 4).float(), 2, 3, generator=g, floor=0.0)
    assert imgs.spatial_dims == 2 and imgs.dtype == torch.float32 and float(imgs._d.max()) == 0.0
    assert imgs.denoise(torch.zeros(2, 1, 4, 4), 0.5).shape == (2, 1, 4, 4)


# ------------------------------------------------------------------------------------------------
# dtype, device, bad input
# ------------------------------------------------------------------------------------------------
def test_dtype_moves_keep_float64_math(gen):
    w, means, covs = random_mixture(3, 2, gen)
    p = GaussianMixture(w.float(), means.float(), covs.float())
    assert p.dtype == torch.float32 and p._Q.dtype == F64
    assert p.sample(4, generator=gen).dtype == torch.float32
    x = torch.randn(2, 3)
    assert p.denoise(x, 0.5).dtype == torch.float32
    assert p.denoise(x.double(), 0.5).dtype == F64
    pd = p.double()
    assert pd.mean.dtype == F64
    pf = pd.to(torch.float32)
    assert pf._mu.dtype == F64 and pf.mean.dtype == torch.float32
    q = GaussianMixture(w, means, covs)
    q.load_state_dict(p.state_dict())
    assert torch.allclose(q.denoise(x.double(), 0.3), p.denoise(x.double(), 0.3))


def test_bad_input_errors(gen):
    w, means, covs = random_mixture(3, 2, gen)
    with pytest.raises(ValueError, match="'weights'.*sum"):
        GaussianMixture(torch.tensor([0.5, 0.6]), means, covs)
    with pytest.raises(ValueError, match="'weights'.*non-negative"):
        GaussianMixture(torch.tensor([1.5, -0.5]), means, covs)
    with pytest.raises(ValueError, match="'weights'"):
        GaussianMixture(torch.tensor([1.0]), means, covs)
    bad = covs.clone()
    bad[0] = torch.diag(torch.tensor([1.0, -0.5, 1.0], dtype=F64))
    with pytest.raises(ValueError, match="'covs'.*semi-definite"):
        GaussianMixture(w, means, bad)
    asym = covs.clone()
    asym[1, 0, 1] += 0.3
    with pytest.raises(ValueError, match="'covs'.*symmetric"):
        GaussianMixture(w, means, asym)
    with pytest.raises(ValueError, match="'covs'"):
        GaussianMixture(w, means, covs[:, :2, :2])
    with pytest.raises(ValueError, match="'means'"):
        GaussianMixture(w, means, covs, img_shape=(1, 2, 2))
    with pytest.raises(ValueError, match="'variances'"):
        GaussianMixture.low_rank(w, means, torch.randn(2, 3, 1, dtype=F64), -torch.ones(2, 1, dtype=F64), 0.0)
    with pytest.raises(ValueError, match="'floor'"):
        GaussianMixture.low_rank(w, means, torch.randn(2, 3, 1, dtype=F64), None, -1.0)
    p = GaussianMixture(w, means, covs)
    with pytest.raises(ValueError, match="'x'"):
        p.denoise(torch.zeros(2, 4, dtype=F64), 0.1)
    with pytest.raises(ValueError, match="'sigma'"):
        p.denoise(torch.zeros(2, 3, dtype=F64), -0.1)
    with pytest.raises(ValueError, match="'sigma'"):
        p.denoise(torch.zeros(2, 3, dtype=F64), torch.ones(3))
    phys = matrix_physics(torch.randn(2, 3, dtype=F64), 0.1)
    with pytest.raises(ValueError, match="'y'"):
        p.posterior(torch.zeros(1, 3, dtype=F64), phys)
    with pytest.raises(ValueError, match="'y'"):
        p.posterior(torch.zeros(2, 2, dtype=F64), phys)
    with pytest.raises(ValueError, match="'physics'"):
        p.posterior(torch.zeros(1, 2, dtype=F64), matrix_physics(torch.randn(2, 4, dtype=F64), 0.1))
    with pytest.raises(ValueError, match="'sigma_y'"):
        p.posterior(torch.zeros(1, 2, dtype=F64), phys, sigma_y=-1.0)
    singular = GaussianMixture.low_rank(w, means, torch.randn(2, 3, 1, dtype=F64), None, 0.0)
    with pytest.raises(ValueError, match="'sigma'"):
        singular.log_prob(torch.zeros(1, 3, dtype=F64))
    with pytest.raises(ValueError, match="'n_components'"):
        GaussianMixture.fit(torch.randn(10, 3), 0, 1)

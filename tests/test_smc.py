"""The particle samplers ``smc`` (AFDPS) and ``mcgdiff`` against exact posteriors, their contract and bad input."""
import math
import warnings

import deepinv as dinv
import pytest
import torch

import invdiff
from invdiff.metrics import sliced_wasserstein, sw_monte_carlo_floor
from invdiff.operators import (CT, MRI, CircularBlur, Inpainting, MatrixOperator, MultiCoilMRI, gaussian_kernel,
                               random_mask, random_mask_1d)
from invdiff.priors import GaussianMixture
from invdiff.solvers import available
from invdiff.solvers.smc import tempering_schedule
from invdiff.solvers.smc_likelihood import hutchinson_laplacian
from invdiff.solvers.smc_moves import conditional_ess, final_level_sigma

F64 = torch.float64


def gauss2d():
    """x ~ N(0, I_2), y = x_1 + 0.5 n: posterior N((0.8 y, 0), diag(0.2, 1))."""
    prior = GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.eye(2)[None])
    return prior, MatrixOperator(torch.tensor([[1.0, 0.0]]), sigma=0.5)


def gmm2d():
    """Three modes, one noisy measurement of (x1 - x2)/sqrt 2 (benchmarks/exactness.py)."""
    w = torch.tensor([0.3, 0.3, 0.4])
    means = torch.tensor([[-2.0, 2.0], [2.0, -2.0], [1.5, 1.5]])
    covs = torch.stack([0.3 * torch.eye(2), 0.3 * torch.eye(2), torch.tensor([[0.4, 0.2], [0.2, 0.4]])])
    return GaussianMixture(w, means, covs), MatrixOperator(torch.tensor([[1.0, -1.0]]) / math.sqrt(2), sigma=0.5)


def weighted_moments(rec):
    P = rec.info["particles"][:, 0].double()
    W = rec.info["weights"][:, 0]
    m = (W[:, None] * P).sum(0)
    return m, (W[:, None] * (P - m) ** 2).sum(0)


def test_registered():
    assert {"smc", "mcgdiff"} <= set(available())


@pytest.mark.parametrize("opts", [{}, {"tempering": "none"}, {"variant": "sde", "ess_threshold": 0.5},
                                  {"corrector": "mala", "corrector_steps": 2}, {"cess_target": 0.95}])
def test_gaussian_posterior_moments(opts):
    prior, op = gauss2d()
    y = torch.tensor([[0.8]])
    rec = invdiff.solve(y, op, prior, solver="smc", n_samples=1024, num_steps=60, seed=0, **opts)
    m, v = weighted_moments(rec)
    tol_m, tol_v = (0.06, 0.05) if opts.get("variant") != "sde" else (0.15, 0.12)  # SDE weights are heavy-tailed
    assert m[0] == pytest.approx(0.64, abs=tol_m) and m[1] == pytest.approx(0.0, abs=tol_m + 0.04)
    assert v[0] == pytest.approx(0.2, abs=tol_v) and v[1] == pytest.approx(1.0, abs=4 * tol_v)


@pytest.mark.parametrize("solver", ["smc", "mcgdiff"])
def test_gmm2d_matches_the_exact_posterior(solver):
    prior, op = gmm2d()
    y = torch.tensor([[0.4]])            # between modes: posterior weights about (0.01, 0.36, 0.63)
    post = prior.posterior(y, op)
    N = 256
    rec = invdiff.solve(y, op, prior, solver=solver, n_samples=N, num_steps=60, seed=1)
    g = torch.Generator().manual_seed(0)
    exact = post.sample(2048, generator=g)
    floor = sw_monte_carlo_floor(post, N, m=2048, n_repeats=3, n_projections=200, generator=g)
    P, W = rec.info["particles"][:, 0], rec.info["weights"][:, 0]
    sw = sliced_wasserstein(P, exact, 200, generator=g, weights_a=W)
    assert sw < 3 * floor.mean, (sw, floor.mean)
    lab = post.responsibilities(P.double()).argmax(1)
    modes = torch.zeros(3, dtype=F64).index_add_(0, lab, W.double())
    assert torch.allclose(modes, post.weights.double(), atol=0.08), (modes, post.weights)
    assert (rec.samples[:, 0] == P[:, None]).all(-1).any(0).all()   # draws are particles


def test_deterministic_under_seed():
    prior, op = gmm2d()
    y = torch.tensor([[0.4]])
    kw = dict(solver="smc", n_samples=16, num_steps=15)
    a = invdiff.solve(y, op, prior, seed=3, **kw)
    b = invdiff.solve(y, op, prior, seed=3, **kw)
    c = invdiff.solve(y, op, prior, seed=4, **kw)
    assert torch.equal(a.samples, b.samples) and torch.equal(a.info["weights"], b.info["weights"])
    assert not torch.equal(a.samples, c.samples)


def test_contract_batched_measurements_chunking_and_nfe():
    prior, op = gmm2d()
    y = torch.tensor([[0.4], [-2.0]])
    K, N = 12, 6
    rec = invdiff.solve(y, op, prior, solver="smc", n_samples=N, num_steps=K, seed=0, chunk=4)
    assert rec.samples.shape == (N, 2, 2) and rec.mean.shape == (2, 2) and rec.std.shape == (2, 2)
    assert rec.info["particles"].shape == (N, 2, 2) and rec.info["weights"].shape == (N, 2)
    assert torch.allclose(rec.info["weights"].sum(0), torch.ones(2, dtype=F64))
    assert rec.info["ess"].shape == (K, 2) and rec.info["n_resample"].shape == (2,)
    assert rec.info["std"].shape == (2, 2)
    calls = rec.info["nfe_per_particle"]
    assert calls == K + (K - 1)                            # one predictor + one corrector evaluation per level
    assert rec.info["nfe_images"] == calls * 2 * N         # every particle of both measurements, every call
    assert rec.nfe == calls * math.ceil(2 * N / 4)         # network calls of at most `chunk` particles
    # the weighted mean of each measurement is its own
    W, P = rec.info["weights"].double(), rec.info["particles"].double()
    assert torch.allclose(rec.mean.double(), (W[..., None] * P).sum(0), atol=1e-6)
    best = invdiff.solve(y, op, prior, solver="smc", n_samples=N, num_steps=K, seed=0, reduce="best")
    idx = best.info["weights"].argmax(0)
    assert torch.equal(best.mean, best.info["particles"][idx, torch.arange(2)])


def test_bad_input_names_the_argument():
    prior, op = gmm2d()
    y = torch.tensor([[0.4]])
    with pytest.raises(ValueError, match="argument 'n_samples'"):
        invdiff.solve(y, op, prior, solver="smc", n_samples=0)
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(ValueError, match="argument 'ess_threshold'"):
            invdiff.solve(y, op, prior, solver="smc", n_samples=4, ess_threshold=bad)
    noiseless = MatrixOperator(op.matrix, sigma=0.0)
    for solver in ("smc", "mcgdiff"):
        with pytest.raises(ValueError, match="argument 'sigma_y'.*> 0"):
            invdiff.solve(y, noiseless, prior, solver=solver, n_samples=4)
    with pytest.raises(ValueError, match="argument 'variant'"):
        invdiff.solve(y, op, prior, solver="smc", n_samples=4, variant="langevin")
    with pytest.raises(TypeError, match="argument 'physics'.*mcgdiff"):
        blur = CircularBlur(gaussian_kernel(3, 1.0), (1, 8, 8), sigma=0.1)
        invdiff.solve(torch.zeros(1, 1, 8, 8), blur, _iso_prior(1, 8), solver="mcgdiff", n_samples=2)


def test_stability_guard_warns_and_substeps():
    prior, op = gauss2d()
    y = torch.tensor([[0.8]])
    with pytest.warns(RuntimeWarning, match="substeps"):
        rec = invdiff.solve(y, op, prior, solver="smc", variant="sde", integrator="euler", n_samples=8,
                            num_steps=10, max_substeps=2, sigma_max=1.0, tempering="none", seed=0)
    assert max(rec.info["substeps"]) == 2 and torch.isfinite(rec.samples).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rec = invdiff.solve(y, op, prior, solver="smc", variant="sde", integrator="euler", n_samples=8,
                            num_steps=30, max_substeps=5000, sigma_max=5.0, tempering="none", seed=0)
    assert rec.info["lambda_max"] == pytest.approx(1.0, rel=1e-4) and max(rec.info["substeps"]) > 10


def test_tempering_schedules_end_at_the_posterior():
    sig = [10.0, 1.0, 0.1, 0.0]
    for kind in ("none", "linear", "noise"):
        a = tempering_schedule(kind, sig, s_max=10.0, sigma_y=0.1, lam=2.0)
        assert a[-1] == 1.0 and all(0 <= v <= 1 for v in a) and a == sorted(a)
    assert tempering_schedule("noise", sig, s_max=10.0, sigma_y=0.1, lam=2.0)[1] == pytest.approx(0.01 / 2.01)


def test_linear_tempering_is_never_negative_at_the_first_level():
    """Regression: the EDM grid's first level can round a hair above sigma_max, and 1 - sigma / sigma_max was then
    -2e-16; the CG path of the Gaussian Stage I took its square root (a complex tensor, a TypeError in A^T)."""
    assert tempering_schedule("linear", [1.0000001, 0.5, 0.0], s_max=1.0, sigma_y=0.1, lam=1.0) == [0.0, 0.5, 1.0]
    prior = GaussianMixture(torch.ones(1), torch.zeros(1, 64), torch.eye(64)[None], img_shape=(1, 8, 8))
    op = CircularBlur(gaussian_kernel(5, 1.0), img_size=(1, 8, 8), sigma=0.05)
    y = op(torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    for s_max in (0.3, 0.7, 1.3, 80.0 * 0.7071):
        rec = invdiff.solve(y, op, prior, solver="smc", n_samples=4, num_steps=5, tempering="linear",
                            sigma_max=s_max)
        assert torch.isfinite(rec.mean).all()


def test_hutchinson_laplacian_is_unbiased_for_quadratics(gen):
    H = torch.randn(6, 6, generator=gen, dtype=F64)
    H = H @ H.T
    x = torch.randn(1000, 6, generator=gen, dtype=F64)
    est = hutchinson_laplacian(lambda z: z @ H, x, generator=gen, probes=4)
    assert float(est.mean()) == pytest.approx(float(torch.trace(H)), rel=0.03)


def test_nonlinear_forward_model():
    """y = x1 + tanh(2 x1) + n, x ~ N(0, I_2): the exact posterior of x1 by quadrature."""
    prior, _ = gauss2d()
    phys = dinv.physics.Physics(A=lambda x: x[:, :1] + torch.tanh(2 * x[:, :1]),
                                noise_model=dinv.physics.GaussianNoise(0.3))
    phys.x_shape = (2,)
    y = torch.tensor([[1.2]])
    t = torch.linspace(-4, 4, 4001, dtype=F64)
    logp = -0.5 * t ** 2 - (t + torch.tanh(2 * t) - 1.2) ** 2 / (2 * 0.09)
    p = torch.softmax(logp, 0)
    mean, var = float((p * t).sum()), float((p * t ** 2).sum() - (p * t).sum() ** 2)
    rec = invdiff.solve(y, phys, prior, solver="smc", n_samples=512, num_steps=40, seed=0)
    m, v = weighted_moments(rec)
    assert rec.info["tempering"] == "noise" and rec.info["lambda_max"] == pytest.approx(9.0, rel=1e-3)  # (1 + 2)^2
    assert float(m[0]) == pytest.approx(mean, abs=0.08) and float(v[0]) == pytest.approx(var, abs=0.05)
    sde = invdiff.solve(y, phys, prior, solver="smc", variant="sde", n_samples=64, num_steps=10, seed=0,
                        max_substeps=500)
    assert torch.isfinite(sde.mean).all() and sde.info["integrator"] == "euler"


# ---- every operator: shapes and finiteness with a tiny exact prior ---------------------------------------
class _IsoGaussian(invdiff.priors.base.Prior):
    """x0 ~ N(0.5, 0.04 I): exact denoiser."""

    def __init__(self, channels):
        super().__init__()
        self.channels, self.value_range = channels, (0.0, 1.0)

    def denoise(self, x, sigma):
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return 0.5 + 0.04 / (0.04 + s ** 2) * (x - 0.5)


def _iso_prior(channels, n):
    return _IsoGaussian(channels)


def _operators(gen):
    n = 16
    return {
        "inpainting": (1, Inpainting((1, n, n), random_mask((1, n, n), keep=0.5, generator=gen), sigma=0.05)),
        "blur": (1, CircularBlur(gaussian_kernel(5, 1.0), (1, n, n), sigma=0.05)),
        "mri": (2, MRI(random_mask_1d((n, n), 4, center_fraction=0.125, seed=0), (2, n, n), sigma=0.05)),
        "mri-multicoil": (2, MultiCoilMRI(random_mask_1d((n, n), 4, center_fraction=0.125, seed=0), coil_maps=4,
                                          img_size=(2, n, n), sigma=0.05)),
        "ct": (1, CT(n, n_views=8, sigma=0.05)),
    }


@pytest.mark.parametrize("name", ["inpainting", "blur", "mri", "mri-multicoil", "ct"])
def test_runs_on_every_operator(name, gen):
    channels, op = _operators(gen)[name]
    x = 0.5 + 0.2 * torch.randn(1, channels, 16, 16, generator=gen)
    y = op(x)
    prior = _iso_prior(channels, 16)
    rec = invdiff.solve(y, op, prior, solver="smc", n_samples=4, num_steps=20, seed=0, chunk=3, cg_iters=30)
    assert rec.samples.shape == (4, 1, channels, 16, 16) and rec.mean.shape == x.shape
    assert torch.isfinite(rec.samples).all() and rec.info["n_quarantined"] == 0
    assert rec.info["gaussian_steps"] == ("decomposable" if name in ("inpainting", "mri") else "cg")
    # the particles fit the data (with 4 particles the weighted mean is about one posterior draw, not the MMSE)
    fit = ((op.A(rec.mean) - y) ** 2).mean()
    prior_fit = ((op.A(torch.full_like(x, 0.5)) - y) ** 2).mean()
    assert fit < (0.5 if name in ("inpainting", "mri", "mri-multicoil") else 1.1) * prior_fit
    if name in ("inpainting", "mri"):
        mc = invdiff.solve(y, op, prior, solver="mcgdiff", n_samples=4, num_steps=8, seed=0)
        assert mc.samples.shape == (4, 1, channels, 16, 16) and torch.isfinite(mc.samples).all()


def test_reconstruction_std_is_the_weighted_particle_std():
    """rec.std is the weighted std of the particle ensemble (not the spread of the resampled draws)."""
    prior, op = gmm2d()
    rec = invdiff.solve(torch.tensor([[0.4]]), op, prior, solver="smc", n_samples=32, num_steps=20, seed=1)
    P, W = rec.info["particles"].double(), rec.info["weights"].double()
    m = (W[..., None] * P).sum(0)
    want = ((W[..., None] * (P - m) ** 2).sum(0)).sqrt()
    assert torch.allclose(rec.std.double(), want, atol=1e-5) and rec.std.dtype == rec.mean.dtype


def test_conditional_ess():
    g = torch.Generator().manual_seed(0)
    lw = torch.randn(3, 50, generator=g, dtype=F64)
    assert torch.allclose(conditional_ess(lw, torch.full((3, 50), 2.0, dtype=F64)), torch.ones(3, dtype=F64))
    d = torch.randn(3, 50, generator=g, dtype=F64)        # with uniform weights it is the ESS of the increments
    w = torch.softmax(d, 1)
    assert torch.allclose(conditional_ess(torch.zeros(3, 50, dtype=F64), d), 1 / (50 * (w ** 2).sum(1)))
    d[0, :49] = float("-inf")                              # one particle keeps all the weight
    assert float(conditional_ess(torch.zeros(3, 50, dtype=F64), d)[0]) == pytest.approx(1 / 50)


def test_adaptive_levels_and_the_default_smallest_level():
    prior, op = gauss2d()
    y = torch.tensor([[0.8]])
    rec = invdiff.solve(y, op, prior, solver="smc", n_samples=64, num_steps=10, seed=0, cess_target=0.99)
    lv, ess = rec.info["levels"], rec.info["ess"][:, 0]
    assert rec.info["n_levels"] == len(lv) - 1 == ess.shape[0] > 10        # levels were inserted
    assert lv[-1] == 0.0 and all(a > b for a, b in zip(lv, lv[1:]))
    assert rec.info["nfe_per_particle"] == 2 * rec.info["n_levels"] - 1
    with pytest.warns(RuntimeWarning, match="max_levels"):
        capped = invdiff.solve(y, op, prior, solver="smc", n_samples=64, num_steps=10, seed=0, cess_target=0.999,
                               max_levels=12)
    assert capped.info["n_levels"] == 12
    # default sigma_min: EDM's 0.004 tau unless the last step would shake the weights (many precise measurements)
    assert rec.info["sigma_min"] == pytest.approx(0.004)
    assert final_level_sigma(0.02, 400) == pytest.approx(1e-4)
    mri = MRI(random_mask_1d((16, 16), 4, center_fraction=0.125, seed=0), (2, 16, 16), sigma=0.02)
    ym = mri(torch.zeros(1, 2, 16, 16))
    out = invdiff.solve(ym, mri, _iso_prior(2, 16), solver="smc", n_samples=2, num_steps=3, seed=0)
    m = ym[0].numel() * (2 if ym.is_complex() else 1)
    assert out.info["sigma_min"] == pytest.approx(final_level_sigma(0.02, m), rel=1e-6)
    assert out.info["sigma_min"] < 0.004 * 0.25


def test_mala_corrector_needs_a_density_and_reports_acceptance():
    prior, op = gauss2d()
    y = torch.tensor([[0.8]])
    rec = invdiff.solve(y, op, prior, solver="smc", n_samples=32, num_steps=20, seed=0, corrector="mala")
    acc = rec.info["acceptance"]
    assert acc.shape == (19, 1) and 0.2 < float(acc.mean()) <= 1.0
    assert rec.info["nfe_per_particle"] == 39          # as ULA: the next predictor reuses the corrector's D

    blur = CircularBlur(gaussian_kernel(3, 1.0), (1, 8, 8), sigma=0.1)
    with pytest.raises(ValueError, match="argument 'corrector'.*log_prob"):
        invdiff.solve(torch.zeros(1, 1, 8, 8), blur, _iso_prior(1, 8), solver="smc", n_samples=2,
                      corrector="mala")
    with pytest.raises(ValueError, match="argument 'cess_target'"):
        invdiff.solve(y, op, prior, solver="smc", n_samples=4, variant="sde", cess_target=0.5)



def test_islands_are_independent_runs_pooled_with_their_weights():
    prior, op = gauss2d()
    y = torch.tensor([[0.8], [-0.4]])
    K, n = 4, 16
    rec = invdiff.solve(y, op, prior, solver="smc", n_samples=K * n, num_steps=30, seed=3, island_size=n)
    one = invdiff.solve(y.repeat_interleave(K, 0), op, prior, solver="smc", n_samples=n, num_steps=30, seed=3)
    i = rec.info
    assert i["islands"] == K and i["particles"].shape == (K * n, 2, 2) and i["weights"].shape == (K * n, 2)
    assert rec.samples.shape == (K * n, 2, 2) and i["ess"].shape == (30, 2) and i["ess_islands"].shape == (30, 2, K)
    # the pooled ensemble is the K runs' particles, each island weighted 1/K ("equal")
    runs = one.info["particles"].reshape(n, 2, K, 2)
    for b in range(2):
        for k in range(K):
            assert torch.equal(i["particles"][k * n:(k + 1) * n, b], runs[:, b, k])
            assert float(i["weights"][k * n:(k + 1) * n, b].sum()) == pytest.approx(1 / K, abs=1e-12)
    # pooled evidence = log mean of the islands' evidence; its standard error from their spread
    ev = one.info["log_evidence"].reshape(2, K)
    assert torch.allclose(i["log_evidence"], torch.logsumexp(ev, 1) - math.log(K))
    assert bool((i["log_evidence_se"] > 0).all())
    exact = torch.stack([prior.log_evidence(y[b:b + 1], op).reshape(()) for b in range(2)])
    assert bool(((i["log_evidence"] - exact).abs() < 0.1).all())
    ev_rec = invdiff.solve(y, op, prior, solver="smc", n_samples=K * n, num_steps=30, seed=3, island_size=n,
                           island_weights="evidence")
    assert torch.allclose(ev_rec.info["island_weights"], torch.softmax(one.info["log_evidence_ratio"].reshape(2, K), 1))


def test_islands_posterior_moments_and_bad_input():
    prior, op = gauss2d()
    y = torch.tensor([[0.8]])
    rec = invdiff.solve(y, op, prior, solver="smc", n_samples=1024, num_steps=60, seed=0, island_size=128)
    assert rec.info["islands"] == 8
    m, v = weighted_moments(rec)
    assert m[0] == pytest.approx(0.64, abs=0.06) and v[0] == pytest.approx(0.2, abs=0.05)
    assert v[1] == pytest.approx(1.0, abs=0.2)
    # island_size is lowered to a divisor of n_samples: 10 particles in islands of at most 4 -> 5 islands of 2
    small = invdiff.solve(y, op, prior, solver="smc", n_samples=10, num_steps=5, island_size=4)
    assert small.info["islands"] == 5 and small.info["particles"].shape == (10, 1, 2)
    assert invdiff.solve(y, op, prior, solver="smc", n_samples=10, num_steps=5, island_size=64).info["islands"] == 1
    with pytest.raises(ValueError, match="'reduce'"):
        invdiff.solve(y, op, prior, solver="smc", n_samples=8, island_size=2, reduce="best")
    with pytest.raises(ValueError, match="'island_size'"):
        invdiff.solve(y, op, prior, solver="smc", n_samples=8, island_size=0)

"""SMC log-evidence (info["log_evidence"]) and GaussianMixture.log_evidence against closed forms (small, fast)."""
import math

import pytest
import torch

import invdiff
from invdiff.operators import MatrixOperator
from invdiff.priors import GaussianMixture
from invdiff.solvers.particles import spectral_basis
from invdiff.solvers.smc_likelihood import gram_spectrum, log_gaussian_evidence


def _mixture_2d():
    w = torch.tensor([0.3, 0.7])
    means = torch.tensor([[-1.5, 1.0], [1.5, -0.5]], dtype=torch.float64)
    covs = torch.stack([0.3 * torch.eye(2), torch.tensor([[0.4, 0.1], [0.1, 0.2]])]).double()
    return GaussianMixture(w.double(), means, covs)


def test_gmm_log_evidence_matches_mixture_of_gaussians():
    prior = _mixture_2d()
    A = torch.tensor([[1.0, -1.0], [0.5, 2.0], [0.0, 1.0]], dtype=torch.float64)
    op = MatrixOperator(A, sigma=0.3)
    y = torch.tensor([[0.4, -1.0, 0.2], [2.0, 0.1, -0.3]], dtype=torch.float64)
    got = prior.log_evidence(y, op)
    assert got.shape == (2,)
    for b in range(2):
        comps = [math.log(float(prior.weights[k])) + float(torch.distributions.MultivariateNormal(
            A @ prior.means[k], A @ prior.covs[k] @ A.T + 0.09 * torch.eye(3)).log_prob(y[b])) for k in range(2)]
        assert float(got[b]) == pytest.approx(float(torch.logsumexp(torch.tensor(comps, dtype=torch.float64), 0)), abs=1e-6)
    with pytest.raises(ValueError, match="sigma_y"):
        prior.log_evidence(y, MatrixOperator(A, sigma=0.0))


def test_gaussian_normaliser_dense_and_spectral_paths_agree():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(5, 8, generator=g, dtype=torch.float64)
    op = MatrixOperator(A, sigma=0.1)
    x_like = torch.zeros(2, 8, dtype=torch.float64)
    y = torch.randn(2, 5, generator=g, dtype=torch.float64)
    basis = spectral_basis(op, x_like, g)
    want = torch.distributions.MultivariateNormal(torch.zeros(5, dtype=torch.float64),
                                                  4.0 * A @ A.T + 0.5 * torch.eye(5)).log_prob(y)
    for spec in (gram_spectrum(op, basis, x_like, y), gram_spectrum(op, None, x_like, y)):
        assert torch.allclose(log_gaussian_evidence(spec, y, 4.0, 0.5), want, atol=1e-8)


def test_smc_log_evidence_gaussian_1d_and_batch():
    """Without the ULA corrector the ODE variant's only error is the Euler step: within 0.1 nats at 512 particles."""
    prior = GaussianMixture(torch.ones(1), torch.zeros(1, 1), torch.eye(1)[None])
    op = MatrixOperator(torch.eye(1), sigma=0.5)
    y = torch.tensor([[0.8], [-1.7]])
    exact = prior.log_evidence(y, op)
    rec = invdiff.solve(y, op, prior, solver="smc", seed=0, n_samples=512, num_steps=40, corrector_steps=0)
    ev = rec.info["log_evidence"]
    assert ev.shape == (2,) and ev.dtype == torch.float64
    assert torch.allclose(ev, exact, atol=0.1)


def test_smc_log_evidence_bimodal_mixture():
    """A bimodal 2-D posterior (one measurement): the default ODE variant, 256 particles."""
    prior = _mixture_2d()
    op = MatrixOperator(torch.tensor([[1.0, -1.0]]) / math.sqrt(2), sigma=0.5)
    y = torch.tensor([[0.3]])
    exact = float(prior.log_evidence(y, op))
    rec = invdiff.solve(y, op, prior, solver="smc", seed=1, n_samples=256, num_steps=60)
    assert float(rec.info["log_evidence"][0]) == pytest.approx(exact, abs=0.15)


def test_mcgdiff_log_evidence_and_equal_singular_values():
    """Singular values equal up to rounding (sigma_obs a few ulp apart) must share one pin level: before the fix the
    second coordinate was twisted by a potential of variance ~1e-17 and the ESS collapsed to ~0.005."""
    prior = GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.eye(2)[None])
    op = MatrixOperator(torch.tensor([[1.0, 1.0], [1.0, -1.0], [0.0, 0.0]]), sigma=0.3)
    y = torch.tensor([[0.5, 0.9, 0.1]])
    exact = float(prior.log_evidence(y, op))
    rec = invdiff.solve(y, op, prior, solver="mcgdiff", seed=0, n_samples=1024, num_steps=50)
    assert float(rec.info["ess"].min()) > 0.3
    assert float(rec.info["log_evidence"][0]) == pytest.approx(exact, abs=0.35)


@pytest.mark.slow
def test_mala_corrector_removes_the_ula_evidence_bias():
    """16-D Gaussian prior, 8 measurements: the ULA corrector's O(step) bias shifts log p(y) by about -1 nat at 400
    levels (it grows with the number of corrector steps); the Metropolis-adjusted corrector leaves each tempered
    target invariant and stays within 0.35 nats."""
    gen = torch.Generator().manual_seed(0)
    n = 16
    L = 0.4 * torch.randn(n, n, generator=gen) / math.sqrt(n)
    prior = GaussianMixture(torch.ones(1), 2 * torch.randn(1, n, generator=gen), (L @ L.T + 0.05 * torch.eye(n))[None])
    op = MatrixOperator(torch.randn(8, n, generator=gen) / math.sqrt(n), sigma=0.1)
    y = op.A(prior.sample(4, generator=gen)) + 0.1 * torch.randn(4, 8, generator=gen)
    exact = prior.log_evidence(y, op)
    err = {c: invdiff.solve(y, op, prior, solver="smc", seed=0, n_samples=128, num_steps=400,
                            corrector=c).info["log_evidence"] - exact for c in ("ula", "mala")}
    assert abs(float(err["mala"].mean())) < 0.3, err             # 4 measurements: Monte Carlo sd of the mean ~0.15
    assert float(err["ula"].mean()) < float(err["mala"].mean()) - 0.3, err

"""Calibration metrics (coverage, interval score, CRPS, Spearman) against closed forms on Gaussians."""
import math

import pytest
import torch

from invdiff.metrics import coverage, crps, interval_score, spearman


def _gauss_crps(mu, sigma, x):
    """Closed form (Gneiting & Raftery 2007, Eq. 5): sigma [z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi)]."""
    z = (x - mu) / sigma
    Phi = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    phi = torch.exp(-0.5 * z ** 2) / math.sqrt(2 * math.pi)
    return sigma * (z * (2 * Phi - 1) + 2 * phi - 1 / math.sqrt(math.pi))


def test_crps_matches_gaussian_closed_form():
    g = torch.Generator().manual_seed(0)
    truth = torch.linspace(-3, 3, 13, dtype=torch.float64)
    sigma = 0.7
    samples = 0.2 + sigma * torch.randn(20000, 13, generator=g, dtype=torch.float64)
    got = crps(samples, truth, reduce=False)
    want = _gauss_crps(0.2, sigma, truth)
    # Monte Carlo error of the estimator ~ sigma / sqrt(S) ~ 0.005
    assert torch.allclose(got, want, atol=0.02)
    assert crps(samples, truth) == pytest.approx(float(want.mean()), abs=0.01)


def test_crps_unbiased_with_few_samples():
    """The fair estimator is unbiased for any S: average of S = 4 estimates -> closed form."""
    g = torch.Generator().manual_seed(1)
    samples = torch.randn(4, 20000, generator=g, dtype=torch.float64)
    est = crps(samples, torch.zeros(20000, dtype=torch.float64))
    assert est == pytest.approx(float(_gauss_crps(0.0, 1.0, torch.tensor(0.0))), abs=0.01)


def test_coverage_of_exact_samples_is_nominal_and_interval_score_is_proper():
    g = torch.Generator().manual_seed(2)
    n = 4000
    sigma = torch.linspace(0.5, 2.0, n, dtype=torch.float64)
    samples = sigma * torch.randn(200, n, generator=g, dtype=torch.float64)
    truth = sigma * torch.randn(n, generator=g, dtype=torch.float64)
    for level in (0.5, 0.9):
        assert coverage(samples, truth, level) == pytest.approx(level, abs=0.03)
    # proper: the calibrated sampler beats an under- and an over-dispersed one
    good = interval_score(samples, truth, 0.9)
    assert good < interval_score(0.5 * samples, truth, 0.9)
    assert good < interval_score(2.0 * samples, truth, 0.9)
    # closed form of the expected score at the true quantiles: 2 z sigma + (4/alpha) sigma [phi(z) - z (1 - Phi(z))]
    z = 1.6448536269514722
    phi, tail = math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi), 0.05
    expected = float(sigma.mean()) * (2 * z + (2 / 0.1) * 2 * (phi - z * tail))
    assert good == pytest.approx(expected, rel=0.05)


def test_spearman_and_bad_input():
    a = torch.arange(10.0)
    assert spearman(a, a ** 3) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="truth"):
        crps(torch.zeros(3, 4), torch.zeros(5))
    with pytest.raises(ValueError, match="samples"):
        interval_score(torch.zeros(1, 4), torch.zeros(4))

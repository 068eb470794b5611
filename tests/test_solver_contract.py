"""The solver contract: registry, Reconstruction, NFE counting, seeding, bad input."""
import pytest
import torch
import deepinv as dinv

import invdiff
from invdiff.priors.base import Prior
from invdiff.solvers import available

CONTRACT_SOLVERS = ["red-diff", "smc", "dds", "ads", "conditional-dc", "dps", "ddrm", "diffpir", "adjoint", "cg", "tv",
                    "l1-wavelet"]
IMPLEMENTED = ["dps", "ddrm", "diffpir", "adjoint", "cg", "tv", "l1-wavelet", "fbp"]


class IsoGaussian(Prior):
    """x0 ~ N(m, v I): exact denoiser D(x, s) = m + v/(v+s^2) (x - m)."""

    def __init__(self, m=0.5, v=0.04, channels=1):
        super().__init__()
        self.m, self.v, self.channels = m, v, channels

    def denoise(self, x, sigma):
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1))) if torch.is_tensor(sigma) and sigma.dim() > 0 else sigma
        return self.m + self.v / (self.v + s**2) * (x - self.m)


@pytest.mark.parametrize("name", IMPLEMENTED)
def test_registered(name):
    assert name in available()


def test_unknown_solver_names_argument():
    y = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ValueError, match=r"argument 'solver'.*one of.*received 'nope'"):
        invdiff.solve(y, dinv.physics.Inpainting((1, 8, 8), mask=0.5), solver="nope")


def test_nan_in_y_rejected():
    y = torch.zeros(1, 1, 8, 8)
    y[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="argument 'y'.*finite.*1 NaN/Inf"):
        invdiff.solve(y, dinv.physics.Inpainting((1, 8, 8), mask=0.5), solver="adjoint")


def test_prior_required_and_typed():
    y = torch.zeros(1, 1, 8, 8)
    ph = dinv.physics.Inpainting((1, 8, 8), mask=0.5)
    with pytest.raises(ValueError, match="argument 'prior'"):
        invdiff.solve(y, ph, None, solver="ddrm")
    with pytest.raises(TypeError, match="argument 'prior'"):
        invdiff.solve(y, ph, object(), solver="ddrm")


def test_n_samples_validated():
    y = torch.zeros(1, 1, 8, 8)
    ph = dinv.physics.Inpainting((1, 8, 8), mask=0.5)
    with pytest.raises(ValueError, match="argument 'n_samples'"):
        invdiff.solve(y, ph, solver="adjoint", n_samples=0)
    with pytest.raises(ValueError, match="argument 'n_samples'.*deterministic"):
        invdiff.solve(y, ph, solver="cg", n_samples=3)


def test_nfe_is_counted_by_wrapping_the_prior():
    torch.manual_seed(0)
    x = torch.rand(1, 1, 8, 8)
    ph = dinv.physics.Inpainting((1, 8, 8), mask=0.5, noise_model=dinv.physics.GaussianNoise(0.01))
    y = ph(x)
    rec = invdiff.solve(y, ph, IsoGaussian(), solver="ddrm", num_steps=17, n_samples=2)
    # deepinv DDRM evaluates the denoiser once per noise level; the 2 chains run batched in the same calls
    assert rec.nfe in (16, 17)
    assert rec.info["nfe_images"] == 2 * rec.nfe
    assert rec.samples.shape == (2, 1, 1, 8, 8)
    assert rec.std is not None and rec.std.shape == x.shape
    assert rec.info["solver"] == "ddrm" and rec.info["options"]["num_steps"] == 17

"""DDS (2D): exactness of the data-consistency step, chains, determinism, NFE, and the released-code MRI bugs.

CG itself is tested in test_primitives.py; here only what DDS adds on top of it.
"""
import math

import pytest
import torch

import invdiff
from invdiff.operators import CT, MRI, MatrixOperator, MultiCoilMRI, equispaced_mask
from invdiff.priors import GaussianMixture
from invdiff.priors.base import Prior
from invdiff.solvers.primitives import conjugate_gradient
from invdiff.solvers.dds import ETA_PRESETS, dds_data_consistency, dds_timesteps, default_dc
from invdiff.schedules import VPSchedule


class FixedPrior(Prior):
    """A 'denoiser' that always returns the same image: isolates DDS's step 3 (x0_hat is known)."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0
        self.channels = x0.shape[1] if x0.dim() > 2 else None
        self.spatial_dims = x0.dim() - 2 if x0.dim() > 2 else 0
        self.value_range = None

    def denoise(self, x, sigma):
        return self.x0.expand(x.shape[0], *self.x0.shape[1:]).to(x.dtype)


def _gmm(n, gen):
    means = torch.randn(2, n, generator=gen, dtype=torch.float64)
    return GaussianMixture(torch.tensor([0.4, 0.6]), means, torch.eye(n, dtype=torch.float64).repeat(2, 1, 1) * 0.5)


def _k(x):
    """2-channel image -> complex (B, H, W)."""
    return torch.complex(x[:, 0], x[:, 1])


def test_ls_mode_recovers_x_exactly_when_A_is_invertible(gen):
    # noiseless, square invertible A: A^T A x = A^T y has the unique solution x, and M >= n CG steps reach it
    n = 6
    A = torch.randn(n, n, generator=gen, dtype=torch.float64) + 3 * torch.eye(n, dtype=torch.float64)
    op = MatrixOperator(A, sigma=0.0)
    x = torch.randn(2, n, generator=gen, dtype=torch.float64)
    rec = invdiff.solve(op.A(x), op, _gmm(n, gen), solver="dds", num_steps=10, cg_iters=2 * n, seed=3)
    assert rec.info["dc"] == "ls"
    torch.testing.assert_close(rec.mean, x, atol=1e-8, rtol=0)


def test_chains_are_independent_of_each_other_and_of_other_measurements(gen):
    n = 5
    prior = _gmm(n, gen)
    op = MatrixOperator(torch.randn(3, n, generator=gen, dtype=torch.float64), sigma=0.1)
    y = op.A(torch.randn(2, n, generator=gen, dtype=torch.float64))
    y_other = y.clone()
    y_other[1] += 5.0
    r1 = invdiff.solve(y, op, prior, solver="dds", num_steps=20, n_samples=3, seed=1)
    r2 = invdiff.solve(y_other, op, prior, solver="dds", num_steps=20, n_samples=3, seed=1)
    assert r1.samples.shape == (3, 2, n)
    # item 0's chains see the same noise and must not depend on item 1's measurement (per-sample CG and prior)
    torch.testing.assert_close(r1.samples[:, 0], r2.samples[:, 0], atol=1e-12, rtol=0)
    assert not torch.allclose(r1.samples[:, 1], r2.samples[:, 1])
    # and the chains of one item differ from each other (independent noise)
    assert (r1.samples[0, 0] - r1.samples[1, 0]).abs().max() > 1e-3


def test_deterministic_under_seed(gen):
    n = 4
    prior = _gmm(n, gen)
    op = MatrixOperator(torch.randn(2, n, generator=gen, dtype=torch.float64), sigma=0.05)
    y = op.A(torch.randn(1, n, generator=gen, dtype=torch.float64))
    torch.manual_seed(123)
    a = invdiff.solve(y, op, prior, solver="dds", num_steps=20, seed=7).mean
    torch.manual_seed(999)  # the global RNG must not matter
    b = invdiff.solve(y, op, prior, solver="dds", num_steps=20, seed=7).mean
    c = invdiff.solve(y, op, prior, solver="dds", num_steps=20, seed=8).mean
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("steps", [20, 50, 100, 37])
def test_nfe_equals_num_steps(steps, gen):
    prior = _gmm(3, gen)
    op = MatrixOperator(torch.eye(3, dtype=torch.float64)[:2], sigma=0.1)
    rec = invdiff.solve(op.A(torch.ones(1, 3, dtype=torch.float64)), op, prior, solver="dds", num_steps=steps,
                        n_samples=2)
    assert rec.nfe == steps
    assert rec.info["nfe_images"] == 2 * steps
    assert rec.info["eta"] == ETA_PRESETS.get(steps, 0.5)


def test_timestep_grid_is_the_released_one():
    ts, prev = dds_timesteps(50, VPSchedule())
    assert ts[:3] == [980, 960, 940] and ts[-1] == 0 and prev[-1] == -1 and len(ts) == 50
    assert prev[:-1] == ts[1:]


def test_mri_noisy_branch_is_x0_plus_gamma_AHy_exactly(gen):
    # released bug (dossier 3.10-1): b = x0 + gamma*(1+j) A^H y. Single-coil Cartesian A^H A = F^H M F has
    # eigenvalues {0, 1}, so (I + g A^H A) has {1, 1+g} and CG is exact after 2 steps: compare in k-space.
    H = W = 16
    mask = equispaced_mask((H, W), acceleration=4)
    op = MRI(mask, sigma=0.05, rng=torch.Generator().manual_seed(0))
    x = torch.randn(1, 2, H, W, generator=gen)
    y = op(x)
    x0 = torch.randn(1, 2, H, W, generator=gen)
    g = 0.7
    F = lambda z: torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(z, dim=(-2, -1)), norm="ortho"), dim=(-2, -1))  # noqa: E731
    Fi = lambda k: torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(k, dim=(-2, -1)), norm="ortho"), dim=(-2, -1))  # noqa: E731
    m = mask.to(torch.complex64)
    ref = Fi((F(_k(x0)) + g * m * _k(y)) / (1 + g * m))
    out = dds_data_consistency(x0, y, op, dc="prox", gamma=g, cg_iters=2)
    torch.testing.assert_close(_k(out), ref, atol=1e-5, rtol=0)
    # the same through the solver: a prior whose x0-estimate is x0, one step (t=0 -> t'=-1 returns x0_tilde)
    rec = invdiff.solve(y, op, FixedPrior(x0), solver="dds", num_steps=1, dc="prox", gamma=g, cg_iters=2)
    torch.testing.assert_close(_k(rec.mean), ref, atol=1e-5, rtol=0)
    # the released right-hand side x0 + g (1+j) A^H y gives a visibly different answer (so the check can fail)
    ahy = _k(op.A_adjoint(y)) * (1 + 1j)
    b_bug = x0 + g * torch.stack([ahy.real, ahy.imag], 1)
    bug = conjugate_gradient(lambda v: v + g * op.A_adjoint(op.A(v)), b_bug, x0=x0, max_iter=2)
    assert (_k(bug) - ref).abs().max() > 1e-2


def test_mri_noiseless_branch_works_on_two_channel_images(gen):
    # released bug (dossier 3.10-2): real_to_nchw_comp(AT(y)) on a complex tensor is EMPTY. Here "ls" works on the
    # 2-channel image: single coil, one CG step from x0 is exact k-space replacement (A^H A is a projection).
    H = W = 16
    mask = equispaced_mask((H, W), acceleration=4)
    op = MRI(mask)
    x, x0 = torch.randn(2, 1, 2, H, W, generator=gen)
    y = op.A(x)
    out = dds_data_consistency(x0, y, op, dc="ls", gamma=1.0, cg_iters=1)
    assert out.shape == x0.shape and torch.isfinite(out).all()
    F = lambda z: torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(z, dim=(-2, -1)), norm="ortho"), dim=(-2, -1))  # noqa: E731
    m = mask.bool()
    k_out, k_x, k_x0 = F(_k(out)), F(_k(x)), F(_k(x0))
    torch.testing.assert_close(k_out[:, m], k_x[:, m], atol=1e-5, rtol=0)      # measured lines = data
    torch.testing.assert_close(k_out[:, ~m], k_x0[:, ~m], atol=1e-5, rtol=0)   # unmeasured lines = x0's
    # multi-coil (8 coils): the normal-equation residual falls by orders of magnitude, null-space part of x0 kept
    mc = MultiCoilMRI(mask, coil_maps=8)
    y = mc.A(x)
    res = lambda v: (mc.A_adjoint(mc.A(v)) - mc.A_adjoint(y)).norm()  # noqa: E731
    out = dds_data_consistency(x0, y, mc, dc="ls", gamma=1.0, cg_iters=30)
    assert out.shape == (1, 2, H, W) and res(out) < 1e-2 * res(x0)
    rec = invdiff.solve(y, mc, FixedPrior(x0), solver="dds", num_steps=1, dc="ls", cg_iters=30)
    assert rec.mean.shape == (1, 2, H, W) and res(rec.mean) < 1e-2 * res(x0)


def test_default_dc_and_gamma_follow_the_noise_level(gen):
    from invdiff.solvers.dds import GAMMA_VARIANCE, default_gamma

    ct = CT(16, n_views=4, sigma=0.01)
    assert default_dc(ct) == "prox" and default_dc(CT(16, n_views=4)) == "ls"
    assert default_dc(MRI(equispaced_mask((16, 16), 4), sigma=0.0)) == "ls"
    img = FixedPrior(torch.zeros(1, 1, 16, 16))
    img.value_range = (-1.0, 1.0)
    assert default_gamma(ct, img) == pytest.approx(GAMMA_VARIANCE / 0.01 ** 2)       # MAP weight v / sigma^2
    assert default_gamma(CT(16, n_views=4, sigma=0.05), img) == pytest.approx(2.0)
    assert default_gamma(ct, _gmm(3, gen)) == 1.0                                    # no value range: paper's 1
    rec = invdiff.solve(ct(torch.rand(1, 1, 16, 16)), ct, img, solver="dds", num_steps=2)
    assert rec.info["dc"] == "prox" and rec.info["gamma"] == pytest.approx(50.0)


def test_bad_options_name_the_argument(gen):
    prior = _gmm(3, gen)
    op = MatrixOperator(torch.eye(3, dtype=torch.float64)[:2], sigma=0.1)
    y = op.A(torch.ones(1, 3, dtype=torch.float64))
    for kw, arg in [({"cg_iters": 0}, "cg_iters"), ({"num_steps": 0}, "num_steps"), ({"eta": 1.5}, "eta"),
                    ({"dc": "exact"}, "dc"), ({"gamma": -1.0}, "gamma"), ({"num_steps": 2000}, "num_steps"),
                    ({"data_consistency": 3}, "data_consistency")]:
        with pytest.raises((ValueError, TypeError), match=f"argument '{arg}'"):
            invdiff.solve(y, op, prior, solver="dds", **kw)


def test_custom_data_consistency_is_reset_and_used(gen):
    calls = []

    class DC:
        def reset(self):
            calls.append("reset")

        def __call__(self, x0, y, physics):
            calls.append("step")
            return x0

    prior = _gmm(3, gen)
    op = MatrixOperator(torch.eye(3, dtype=torch.float64)[:2], sigma=0.1)
    invdiff.solve(op.A(torch.ones(1, 3, dtype=torch.float64)), op, prior, solver="dds", num_steps=5,
                  data_consistency=DC())
    assert calls == ["reset"] + ["step"] * 5


def test_dds_beats_adjoint_on_ct_with_an_exact_gaussian_prior(gen):
    # smooth Gaussian prior on 16x16 images, 8-view CT: DDS's posterior-mean-like estimate must beat A^T y by far
    n = 16
    u = torch.linspace(0, 1, n)
    yy, xx = torch.meshgrid(u, u, indexing="ij")
    basis = torch.stack([torch.cos(math.pi * (i * xx + j * yy)).reshape(-1) for i in range(4) for j in range(4)], 1)
    basis = basis / basis.norm(dim=0)
    prior = GaussianMixture.low_rank(torch.ones(1), torch.full((1, n * n), 0.5), basis[None], torch.full((1, 16), 4.0),
                                     1e-4, img_shape=(1, n, n))
    x = prior.sample(1, generator=gen).float()
    op = CT(n, n_views=8, sigma=0.01, rng=torch.Generator().manual_seed(0))
    y = op(x)
    rec = invdiff.solve(y, op, prior, solver="dds", num_steps=20, dc="ls")   # a mixture has no value range: say "ls"
    err = (rec.mean - x).norm() / x.norm()
    err_adj = (invdiff.solve(y, op, solver="adjoint").mean - x).norm() / x.norm()
    assert err < 0.1 and err < err_adj / 5, (err, err_adj)

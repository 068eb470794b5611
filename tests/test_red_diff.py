"""RED-Diff (invdiff.solvers.red_diff): gradient, loop vs a hand-written reference, weightings, no network backprop,
seeding, volumes, nonlinear physics, bad input."""
import math

import deepinv as dinv
import pytest
import torch

import invdiff
from invdiff.operators import (CT, Inpainting, MatrixOperator, MultiCoilMRI, SliceWise, birdcage_maps, make_mask,
                               random_mask)
from invdiff.priors import GaussianMixture
from invdiff.priors.base import Prior
from invdiff.schedules import VPSchedule
from invdiff.solvers import available
from invdiff.solvers.red_diff import (PRESETS, WEIGHTINGS, denoiser_weight, fold_slices, initial_estimate,
                                      surrogate_loss, unfold_slices)

F64 = torch.float64


class IsoGaussian(Prior):
    """x0 ~ N(m, v I) per pixel: exact denoiser m + v/(v + s^2) (x - m); records batch sizes of its calls."""

    def __init__(self, m=0.5, v=0.04, channels=1):
        super().__init__()
        self.m, self.v, self.channels = m, v, channels
        self.calls = []

    def denoise(self, x, sigma):
        self.calls.append(x.shape[0])
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return self.m + self.v / (self.v + s ** 2) * (x - self.m)


class GradPhobicPrior(IsoGaussian):
    """A prior with a trainable parameter whose forward refuses to run with autograd enabled."""

    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(1.0))

    def denoise(self, x, sigma):
        if torch.is_grad_enabled():
            raise RuntimeError("the network was called with autograd enabled")
        return self.gain * super().denoise(x, sigma)


def _gmm2d():
    w = torch.tensor([0.3, 0.3, 0.4])
    means = torch.tensor([[-2.0, 2.0], [2.0, -2.0], [1.5, 1.5]])
    covs = torch.stack([0.3 * torch.eye(2), 0.3 * torch.eye(2), torch.tensor([[0.4, 0.2], [0.2, 0.4]])])
    return GaussianMixture(w, means, covs), MatrixOperator(torch.tensor([[1.0, -1.0]]) / math.sqrt(2), sigma=0.5)


def _gmm(n=6, m=3, K=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    L = 0.5 * torch.randn(K, n, n, generator=g) / math.sqrt(n)
    prior = GaussianMixture(torch.full((K,), 1.0 / K), 2 * torch.randn(K, n, generator=g),
                            L @ L.mT + 0.1 * torch.eye(n))
    return prior, MatrixOperator(torch.randn(m, n, generator=g) / math.sqrt(n), sigma=0.1)


# ------------------------------------------------------------------------------------------------
# gradient of the per-step loss
# ------------------------------------------------------------------------------------------------
def _ops():
    g = torch.Generator().manual_seed(1)
    n = 16
    return {
        "matrix": (MatrixOperator(torch.randn(5, 8, generator=g), sigma=0.0), (8,)),
        "inpainting": (Inpainting((1, n, n), random_mask((1, n, n), keep=0.3, generator=g)), (1, n, n)),
        "multicoil-mri": (MultiCoilMRI(make_mask("equispaced", (n, n), 4, seed=0), birdcage_maps(4, (n, n)),
                                       img_size=(n, n)), (2, n, n)),
        "ct": (CT(n, n_views=6), (1, n, n)),
    }


@pytest.mark.parametrize("normalize", ["mean", "sum"])
@pytest.mark.parametrize("name", ["matrix", "inpainting", "multicoil-mri", "ct"])
def test_gradient_is_data_residual_plus_weighted_eps_difference(name, normalize):
    op, x_shape = _ops()[name]
    g = torch.Generator().manual_seed(2)
    mu = torch.randn(2, *x_shape, generator=g).requires_grad_(True)
    y = op.A(torch.randn(2, *x_shape, generator=g))
    g_reg = torch.randn(2, *x_shape, generator=g)          # stands for sg(eps_hat - eps)
    weight = 0.25 * 3.44                                    # lambda * w_t at t = 500
    loss, data = surrogate_loss(mu, y, op, g_reg, weight, normalize)
    (grad,) = torch.autograd.grad(loss, mu)
    with torch.no_grad():
        data_grad = op.A_adjoint(op.A(mu) - y)
    n_x, n_y = mu[0].numel(), y[0].numel()
    if normalize == "mean":
        expected = data_grad / n_y + weight * g_reg / n_x
    else:
        expected = data_grad + weight * g_reg
    err = float((grad - expected).norm() / expected.norm())
    assert err < 1e-5, err
    assert data.shape == (2,)


def test_gradient_of_a_nonlinear_forward_model_goes_through_autograd():
    f = lambda x: x + 0.5 * x ** 3  # noqa: E731
    ph = dinv.physics.Physics(A=f)
    mu = torch.linspace(-1, 1, 10, dtype=F64).reshape(2, 5).requires_grad_(True)
    y = torch.zeros(2, 5, dtype=F64)
    g_reg = torch.ones(2, 5, dtype=F64)
    loss, _ = surrogate_loss(mu, y, ph, g_reg, 0.3, "mean")
    (grad,) = torch.autograd.grad(loss, mu)
    m = mu.detach()
    expected = (f(m) - y) * (1 + 1.5 * m ** 2) / 5 + 0.3 * g_reg / 5
    assert torch.allclose(grad, expected, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# the loop against a hand-written reference (float64, exact GMM prior)
# ------------------------------------------------------------------------------------------------
HAND_WEIGHTS = {
    "linear": lambda ab: math.sqrt((1 - ab) / ab),
    "sqrt": lambda ab: ((1 - ab) / ab) ** 0.25,
    "square": lambda ab: (1 - ab) / ab,
    "log": lambda ab: math.log(1 + math.sqrt((1 - ab) / ab)),
    "trunc_linear": lambda ab: min(math.sqrt((1 - ab) / ab), 1.0),
    "power2over3": lambda ab: ((1 - ab) / ab) ** (1 / 3),
    "const": lambda ab: 1.0,
}


def _reference(y, op, prior, *, seed, num_steps, lr, lam, weighting, normalize):
    """Algorithm 1 written out: pinv start, descending t, fresh eps, gradient by formula, Adam(0.9, 0.99)."""
    gen = torch.Generator().manual_seed(seed)
    ab_all = VPSchedule().alpha_bars()
    ts = list(range(0, 1000, 1000 // num_steps))[::-1]
    p = torch.nn.Parameter(y @ torch.linalg.pinv(op.matrix.to(y.dtype)).T)
    opt = torch.optim.Adam([p], lr=lr, betas=(0.9, 0.99))
    n_x, n_y = p.shape[1], y.shape[1]
    for t in ts:
        ab = float(ab_all[t])
        mu = p.detach()
        eps = torch.randn(mu.shape, generator=gen, dtype=mu.dtype)
        x_t = math.sqrt(ab) * mu + math.sqrt(1 - ab) * eps
        x0_hat = prior.denoise(x_t / math.sqrt(ab), math.sqrt((1 - ab) / ab))  # Tweedie at the VE level
        eps_hat = (x_t - math.sqrt(ab) * x0_hat) / math.sqrt(1 - ab)
        resid = (mu @ op.matrix.to(mu.dtype).T - y) @ op.matrix.to(mu.dtype)
        w = lam * HAND_WEIGHTS[weighting](ab)
        p.grad = resid / n_y + w * (eps_hat - eps) / n_x if normalize == "mean" else resid + w * (eps_hat - eps)
        opt.step()
    return p.detach()


@pytest.mark.parametrize("weighting", sorted(WEIGHTINGS))
def test_loop_matches_hand_written_algorithm(weighting):
    prior, op = _gmm()
    y = op.A(prior.sample(2, generator=torch.Generator().manual_seed(3)).to(F64))
    rec = invdiff.solve(y, op, prior, solver="red-diff", seed=7, num_steps=20, lr=0.05, lam=0.7,
                        weighting=weighting)
    ref = _reference(y, op, prior, seed=7, num_steps=20, lr=0.05, lam=0.7, weighting=weighting, normalize="mean")
    assert rec.mean.dtype == F64
    assert torch.allclose(rec.mean, ref, atol=1e-10, rtol=0), float((rec.mean - ref).abs().max())
    assert rec.nfe == 20


def test_loop_matches_hand_written_algorithm_sum_normalisation():
    prior, op = _gmm()
    y = op.A(prior.sample(1, generator=torch.Generator().manual_seed(3)).to(F64))
    rec = invdiff.solve(y, op, prior, solver="red-diff", seed=1, num_steps=25, lr=0.05, lam=0.02, normalize="sum")
    ref = _reference(y, op, prior, seed=1, num_steps=25, lr=0.05, lam=0.02, weighting="linear", normalize="sum")
    assert torch.allclose(rec.mean, ref, atol=1e-10, rtol=0)


def test_sum_with_rescaled_lambda_gives_the_mean_iterates():
    """Documented equivalence: normalize='sum' with lam * N_y / N_x == normalize='mean' with lam (Adam is
    invariant to a global gradient scale, up to its eps)."""
    prior, op = _gmm(n=6, m=3)
    y = op.A(prior.sample(1, generator=torch.Generator().manual_seed(3)).to(F64))
    a = invdiff.solve(y, op, prior, solver="red-diff", seed=4, num_steps=30, lr=0.05, lam=0.5, normalize="mean")
    b = invdiff.solve(y, op, prior, solver="red-diff", seed=4, num_steps=30, lr=0.05, lam=0.5 * 3 / 6,
                      normalize="sum")
    assert torch.allclose(a.mean, b.mean, atol=1e-6)
    # presets are converted the same way
    c = invdiff.solve(y, op, prior, solver="red-diff", seed=4, num_steps=30, normalize="mean")
    d = invdiff.solve(y, op, prior, solver="red-diff", seed=4, num_steps=30, normalize="sum")
    assert torch.allclose(c.mean, d.mean, atol=1e-6)
    assert d.info["lam"] == pytest.approx(c.info["lam"] * 3 / 6)


# ------------------------------------------------------------------------------------------------
# weightings, presets, range
# ------------------------------------------------------------------------------------------------
def test_weightings_as_defined_on_the_vp_schedule():
    ab = VPSchedule().alpha_bars()
    for t in (0, 20, 100, 500, 900, 980, 999):
        a = float(ab[t])
        for name, hand in HAND_WEIGHTS.items():
            assert denoiser_weight(a, name) == pytest.approx(hand(a), rel=1e-12), (name, t)
    # anchors of the reference dossier §2.3 (w0 = sigma_t / alpha_t)
    for t, w0 in [(0, 0.010), (100, 0.342), (500, 3.44), (900, 60.8), (999, 157.4)]:
        assert denoiser_weight(float(ab[t])) == pytest.approx(w0, rel=2e-3)
    assert set(WEIGHTINGS) == {"linear", "sqrt", "square", "log", "trunc_linear", "power2over3", "const"}


def test_presets_are_scaled_to_the_prior_range():
    x = torch.full((1, 1, 8, 8), 0.5)
    op = Inpainting((1, 8, 8), random_mask((1, 8, 8), keep=0.5, generator=torch.Generator().manual_seed(0)))
    prior = IsoGaussian()  # value_range (0, 1): half the paper's [-1, 1]
    rec = invdiff.solve(op.A(x), op, prior, solver="red-diff", num_steps=5, preset="inpainting")
    assert rec.info["lr"] == pytest.approx(0.5 * PRESETS["inpainting"]["lr"])
    assert rec.info["lam"] == pytest.approx(0.5 * PRESETS["inpainting"]["lam"])
    rec = invdiff.solve(op.A(x), op, prior, solver="red-diff", num_steps=5, preset="inpainting", lr=0.3, lam=2.0)
    assert (rec.info["lr"], rec.info["lam"]) == (0.3, 2.0)  # explicit values are taken as given


# ------------------------------------------------------------------------------------------------
# the network is never differentiated
# ------------------------------------------------------------------------------------------------
def test_no_gradient_reaches_the_network():
    prior = GradPhobicPrior()
    op = Inpainting((1, 8, 8), random_mask((1, 8, 8), keep=0.5, generator=torch.Generator().manual_seed(0)))
    y = op.A(torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(1)))
    rec = invdiff.solve(y, op, prior, solver="red-diff", num_steps=10)
    assert prior.gain.grad is None
    assert torch.isfinite(rec.mean).all() and rec.nfe == 10


def test_works_inside_no_grad():
    prior, op = _gmm2d()
    y = op.A(torch.tensor([[1.0, 1.0]]))
    with torch.no_grad():
        rec = invdiff.solve(y, op, prior, solver="red-diff", num_steps=10)
    assert torch.isfinite(rec.mean).all()


# ------------------------------------------------------------------------------------------------
# seeding, chains, volumes, nonlinear physics
# ------------------------------------------------------------------------------------------------
def test_same_seed_same_output_and_seed_matters():
    prior, op = _gmm2d()
    y = op.A(torch.tensor([[1.0, 1.0]]))
    a = invdiff.solve(y, op, prior, solver="red-diff", seed=3, num_steps=30)
    b = invdiff.solve(y, op, prior, solver="red-diff", seed=3, num_steps=30)
    c = invdiff.solve(y, op, prior, solver="red-diff", seed=4, num_steps=30)
    assert torch.equal(a.mean, b.mean)
    assert not torch.equal(a.mean, c.mean)


def test_n_samples_are_independent_runs_not_posterior_samples():
    prior, op = _gmm2d()
    y = op.A(torch.tensor([[1.0, 1.0], [-1.0, 2.0]]))
    rec = invdiff.solve(y, op, prior, solver="red-diff", n_samples=5, num_steps=20)
    assert rec.samples.shape == (5, 2, 2) and rec.std.shape == (2, 2)
    assert rec.nfe == 20 and rec.info["nfe_images"] == 20 * 10  # chains batched in one call per step
    assert "not posterior samples" in rec.info["samples_are"]
    assert float(rec.std.min()) > 0  # different noise draws per run


def test_volume_with_a_2d_prior_is_folded_into_slices_in_chunks():
    D, n = 5, 8
    mask = random_mask((1, n, n), keep=0.5, generator=torch.Generator().manual_seed(0))
    op = SliceWise(Inpainting((1, n, n), mask), depth=D)
    x = torch.rand(2, 1, D, n, n, generator=torch.Generator().manual_seed(1))
    y = op.A(x)
    p_all, p_chunk = IsoGaussian(), IsoGaussian()
    a = invdiff.solve(y, op, p_all, solver="red-diff", num_steps=4, seed=0)
    b = invdiff.solve(y, op, p_chunk, solver="red-diff", num_steps=4, seed=0, chunk=3)
    assert a.mean.shape == x.shape
    assert p_all.calls == [2 * D] * 4 and a.nfe == 4
    assert p_chunk.calls == [3, 3, 3, 1] * 4 and b.nfe == 16   # 10 slices in chunks of 3
    assert torch.allclose(a.mean, b.mean, atol=1e-6)
    v = torch.arange(2 * 3 * 4 * 5 * 6.0).reshape(2, 3, 4, 5, 6)
    assert fold_slices(v).shape == (8, 3, 5, 6) and torch.equal(fold_slices(v)[1], v[0, :, 1])
    assert torch.equal(unfold_slices(fold_slices(v), 4), v)


def test_nonlinear_physics_reduces_the_data_misfit():
    f = lambda x: torch.tanh(2 * x)  # noqa: E731
    ph = dinv.physics.Physics(A=f)
    x = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.6 + 0.2
    y = f(x)
    init = torch.full_like(x, 0.5)
    rec = invdiff.solve(y, ph, IsoGaussian(), solver="red-diff", num_steps=60, init=init, lam=0.01, lr=0.02)
    assert float((f(rec.mean) - y).norm()) < 0.3 * float((f(init) - y).norm())
    with pytest.raises(ValueError, match="argument 'init'.*nonlinear"):
        invdiff.solve(y, ph, IsoGaussian(), solver="red-diff", num_steps=5, init="adjoint")


def test_initial_estimate_pinv_is_exact_for_masks_and_cg_otherwise():
    n = 8
    mask = random_mask((1, n, n), keep=0.5, generator=torch.Generator().manual_seed(0))
    op = Inpainting((1, n, n), mask)
    y = op.A(torch.rand(1, 1, n, n))
    assert torch.allclose(initial_estimate(y, op), y)  # A_dagger of a 0/1 mask
    m = 16
    mri = MultiCoilMRI(make_mask("equispaced", (m, m), 2, seed=0), birdcage_maps(4, (m, m)), img_size=(m, m))
    before = (mri.max_iter, mri.tol)
    x = torch.randn(1, 2, m, m, generator=torch.Generator().manual_seed(1))
    x0 = initial_estimate(mri.A(x), mri, init_iters=50)
    assert (mri.max_iter, mri.tol) == before
    assert float((mri.A(x0) - mri.A(x)).norm() / mri.A(x).norm()) < 1e-3   # least squares: fits the data


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("opts, arg", [
    ({"lr": 0.0}, "lr"), ({"lr": -0.1}, "lr"), ({"num_steps": 0}, "num_steps"), ({"num_steps": 1001}, "num_steps"),
    ({"lam": -0.25}, "lam"), ({"weighting": "cubic"}, "weighting"), ({"normalize": "median"}, "normalize"),
    ({"preset": "sr4"}, "preset"), ({"sigma_x0": -1.0}, "sigma_x0"), ({"chunk": 0}, "chunk"),
    ({"init": "zeros"}, "init"), ({"init": torch.zeros(3, 2)}, "init"),
])
def test_bad_options_name_the_argument(opts, arg):
    prior, op = _gmm2d()
    y = op.A(torch.tensor([[1.0, 1.0]]))
    with pytest.raises(ValueError, match=f"argument '{arg}'"):
        invdiff.solve(y, op, prior, solver="red-diff", **opts)


def test_operator_prior_mismatch_names_the_prior():
    op = Inpainting((1, 8, 8), random_mask((1, 8, 8), keep=0.5, generator=torch.Generator().manual_seed(0)))
    y = op.A(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"argument 'prior'.*\(1, 8, 8\).*2 channel"):
        invdiff.solve(y, op, IsoGaussian(channels=2), solver="red-diff", num_steps=3)
    prior, _ = _gmm(n=6)
    op3 = MatrixOperator(torch.randn(2, 5), sigma=0.1)
    with pytest.raises(ValueError, match="argument 'prior'"):
        invdiff.solve(op3.A(torch.randn(1, 5)), op3, prior, solver="red-diff", num_steps=3)


def test_registered():
    assert "red-diff" in available()
    assert invdiff.solvers.get("red-diff").needs_prior

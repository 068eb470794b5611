"""3D augmentation: lifted 2D prior, z-TV ADMM (adjointness, objective, persistent duals, CT scale conversion),
DDS 3D and DiffusionMBIR (NFE, network-call accounting, clear errors)."""
import math

import pytest
import torch

import invdiff
from invdiff.operators import CT, CT3D, MRI, MultiCoilMRI, SliceWise, birdcage_maps, equispaced_mask
from invdiff.priors.base import Prior
from invdiff.priors.lift import Lifted2DPrior, lift
from invdiff.solvers.mbir import MBIR_PRESETS, default_sigma_max
from invdiff.solvers.primitives import finite_diff, finite_diff_adjoint, soft_threshold
from invdiff.solvers.ztv import PRESETS, ZTVADMM, ct_adjoint_scale, default_preset


class IsoGaussian(Prior):
    """x0 ~ N(m, v I) per pixel, exact denoiser; records the batch sizes and sigmas it was called with."""

    def __init__(self, m=0.5, v=0.04, channels=1):
        super().__init__()
        self.m, self.v, self.channels = m, v, channels
        self.batches, self.sigmas = [], []

    def denoise(self, x, sigma):
        self.check_input(x)
        s = torch.as_tensor(sigma, dtype=x.dtype)
        s = s.reshape(-1, 1, 1, 1) if s.dim() > 0 else s
        self.batches.append(x.shape[0])
        self.sigmas.append(torch.as_tensor(sigma).reshape(-1).clone())
        return self.m + self.v / (self.v + s ** 2) * (x - self.m)


class Nonlinear2D(Prior):
    """A 2D 'denoiser' with cross-pixel, per-sample-sigma dependence (for exact lifting checks)."""

    channels = 1

    def denoise(self, x, sigma):
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1, 1)
        return torch.tanh(x) * s + x.mean(dim=(1, 2, 3), keepdim=True) / (1 + s)


# ------------------------------------------------------------------------------------------------
# lifted prior
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [1, 3, 8, 100])
def test_lifted_prior_equals_slice_by_slice_and_broadcasts_per_volume_sigma(chunk, gen):
    B, D = 2, 5
    x = torch.randn(B, 1, D, 6, 6, generator=gen)
    sigma = torch.tensor([0.3, 2.0])
    p2 = Nonlinear2D()
    p3 = Lifted2DPrior(p2, chunk=chunk)
    out = p3.denoise(x, sigma)
    ref = torch.stack([torch.stack([p2.denoise(x[b:b + 1, :, d], sigma[b:b + 1])[0] for d in range(D)], 1)
                       for b in range(B)])
    torch.testing.assert_close(out, ref)
    assert p3.network_calls == math.ceil(B * D / chunk) == p3.calls_per_evaluation(B, D)
    assert p3.slice_evaluations == B * D
    # a scalar sigma is shared by all volumes
    torch.testing.assert_close(p3.denoise(x, 0.7), p3.denoise(x, torch.tensor([0.7, 0.7])))


def test_lifted_prior_network_batch_is_bounded_by_chunk(gen):
    p2 = IsoGaussian()
    p3 = lift(p2, chunk=4)
    p3.denoise(torch.rand(2, 1, 7, 8, 8, generator=gen), torch.tensor([0.1, 0.9]))
    assert p2.batches == [4, 4, 4, 2]
    assert torch.equal(torch.cat(p2.sigmas), torch.tensor([0.1] * 7 + [0.9] * 7))
    assert lift(p3, chunk=2).chunk == 2 and lift(p3, chunk=2).prior2d is p2


def test_lifted_prior_is_differentiable_and_validates(gen):
    p3 = lift(Nonlinear2D(), chunk=2)
    x = torch.randn(1, 1, 3, 4, 4, generator=gen, requires_grad=True)
    p3.denoise(x, 0.5).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="argument 'x'.*5-D"):
        p3.denoise(torch.zeros(1, 1, 4, 4), 0.5)
    with pytest.raises(ValueError, match="argument 'sigma'"):
        p3.denoise(torch.zeros(2, 1, 3, 4, 4), torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="argument 'chunk'"):
        lift(Nonlinear2D(), chunk=0)
    with pytest.raises(ValueError, match="argument 'prior2d'"):
        Lifted2DPrior(p3)


# ------------------------------------------------------------------------------------------------
# D_z and the prox
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("boundary", ["neumann", "circular"])
@pytest.mark.parametrize("shape", [(2, 1, 5, 3, 4), (1, 2, 2, 3, 3), (1, 1, 7, 1, 1)])
def test_dz_adjointness(boundary, shape, gen):
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    v = torch.randn(shape, generator=gen, dtype=torch.float64)
    lhs = (finite_diff(x, 2, boundary) * v).sum()
    rhs = (x * finite_diff_adjoint(v, 2, boundary)).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)
    assert finite_diff(torch.ones(shape), 2, boundary).abs().max() == 0   # constants along z have no TV


def test_dz_boundaries_differ_only_at_the_last_slice(gen):
    x = torch.randn(1, 1, 4, 2, 2, generator=gen)
    n, c = finite_diff(x, 2, "neumann"), finite_diff(x, 2, "circular")
    torch.testing.assert_close(n[:, :, :3], c[:, :, :3])
    assert n[:, :, 3].abs().max() == 0
    torch.testing.assert_close(c[:, :, 3], x[:, :, 0] - x[:, :, 3])       # the released code's wrap
    with pytest.raises(ValueError, match="argument 'boundary'"):
        finite_diff(x, 2, "periodic")


def test_soft_threshold_is_the_l21_prox(gen):
    v = torch.tensor([[[3.0]], [[-0.5]]]).reshape(2, 1, 1)
    torch.testing.assert_close(soft_threshold(v, 1.0), torch.tensor([2.0, 0.0]).reshape(2, 1, 1))
    c = torch.tensor([[3.0, 4.0]]).reshape(1, 2, 1)                          # complex 3+4j, |.| = 5
    torch.testing.assert_close(soft_threshold(c, 1.0), c * 0.8)              # magnitude shrunk, phase kept


# ------------------------------------------------------------------------------------------------
# z-TV ADMM
# ------------------------------------------------------------------------------------------------
def _z_problem(gen, D=5, n=12, views=4):
    op = CT3D((1, D, n, n), n_views=views)
    base = torch.rand(1, 1, 1, n, n, generator=gen)
    x = base * torch.linspace(0.8, 1.2, D).reshape(1, 1, D, 1, 1)          # smooth along z
    y = op.A(x) + 0.01 * torch.randn(op.A(x).shape, generator=gen)
    return op, x, y


@pytest.mark.parametrize("boundary", ["neumann", "circular"])
def test_admm_steps_decrease_and_minimise_the_tv_objective(boundary, gen):
    op, x, y = _z_problem(gen)
    admm = ZTVADMM(rho=0.05, lam=0.002, cg_iters=5, boundary=boundary)
    xk = torch.full_like(x, 0.5)                                            # a poor start
    f = [float(admm.objective(xk, y, op))]
    for _ in range(30):
        xk = admm.step(xk, y, op)
        f.append(float(admm.objective(xk, y, op)))
    assert all(b < a for a, b in zip(f[:10], f[1:11])), f                  # the steps decrease it ...
    assert all(b <= a * (1 + 1e-3) for a, b in zip(f, f[1:])), f           # ... up to ADMM's wiggle at the minimum
    assert f[-1] < 0.05 * f[0]
    # a long run from another start reaches the same minimum: the iterations minimise the objective
    ref = ZTVADMM(rho=0.05, lam=0.002, cg_iters=10, boundary=boundary)
    xr = torch.zeros_like(xk)
    for _ in range(100):
        xr = ref.step(xr, y, op)
    f_min = float(ref.objective(xr, y, op))
    assert f[-1] == pytest.approx(f_min, rel=0.02)


def test_admm_dual_variables_persist_across_steps(gen):
    op, x, y = _z_problem(gen)
    x0 = op.A_adjoint(y)
    admm = ZTVADMM(rho=0.05, lam=0.01, cg_iters=3)
    assert admm.z is None and admm.u is None
    x1 = admm.step(x0, y, op)
    z1, u1 = admm.z.clone(), admm.u.clone()
    torch.testing.assert_close(z1, soft_threshold(admm.Dz(x1), 0.01 / 0.05))        # z = S(Dz x + 0)
    torch.testing.assert_close(u1, admm.Dz(x1) - z1)                                # u = 0 + Dz x - z
    x2 = admm.step(x1, y, op)                                                       # uses z1, u1
    fresh = ZTVADMM(rho=0.05, lam=0.01, cg_iters=3)
    x2_reset = fresh.step(x1, y, op)                                                # z = u = 0 instead
    assert (x2 - x2_reset).abs().max() > 1e-4
    torch.testing.assert_close(admm.u, u1 + admm.Dz(x2) - admm.z)
    assert admm.iterations == 2
    admm.reset()
    assert admm.z is None and admm.iterations == 0
    admm.step(x0, y, op)
    with pytest.raises(ValueError, match="argument 'x0'.*reset"):
        admm.step(x0[:, :, :4], y[:, :, :4], CT3D((1, 4, 16, 16), n_views=6))


def test_admm_states_its_boundary_and_validates():
    a = ZTVADMM(1.0, 0.1)
    assert a.boundary == "neumann" and a.options()["boundary"] == "neumann" and "neumann" in repr(a)
    assert ZTVADMM(1.0, 0.1, boundary="circular").options()["boundary"] == "circular"
    for kw, arg in [({"rho": 0.0}, "rho"), ({"lam": -1.0}, "lam"), ({"cg_iters": 0}, "cg_iters"),
                    ({"boundary": "wrap"}, "boundary")]:
        args = {"rho": 1.0, "lam": 0.1, **kw}
        with pytest.raises((ValueError, TypeError), match=f"argument '{arg}'"):
            ZTVADMM(**args)
    with pytest.raises(ValueError, match="argument 'x0'.*2 slices"):
        ZTVADMM(1.0, 0.1).step(torch.zeros(1, 1, 1, 8, 8), torch.zeros(1, 1, 1, 12, 4), CT3D((1, 1, 8, 8), n_views=4))


class BackProjectedCT:
    """The released code's CT scale: A_o = R (unnormalised Radon), A_o^T = pi/(2 N_v) R^T (dossier 3.6)."""

    def __init__(self, op_unnormalised: CT3D):
        self.op = op_unnormalised
        self.scale = math.pi / (2 * op_unnormalised.op2d.n_views)

    def A(self, x):
        return self.op.A(x)

    def A_adjoint(self, y):
        return self.scale * self.op.A_adjoint(y)


def test_ct_conversion_reproduces_the_original_iterates(gen):
    # same problem on the released scale with (rho, lam) and on invdiff's normalised exact adjoint with
    # (rho, lam)/kappa: identical ADMM iterates (module docstring of invdiff.solvers.ztv)
    D, n = 4, 16
    op = CT3D((1, D, n, n), n_views=6)
    raw = CT3D((1, D, n, n), n_views=6, normalize=False)
    R = float(op.op2d.operator_norm)
    kappa = ct_adjoint_scale(op)
    assert kappa == pytest.approx(math.pi * R ** 2 / 12)
    assert ct_adjoint_scale(raw) == pytest.approx(math.pi / 12)
    x = torch.rand(1, 1, D, n, n, generator=gen)
    y = op.A(x)
    orig, ours = ZTVADMM(10.0, 0.04, cg_iters=3), ZTVADMM.from_original(10.0, 0.04, op, cg_iters=3)
    assert ours.rho == pytest.approx(10.0 / kappa) and ours.lam / ours.rho == pytest.approx(0.004)
    xo = xi = torch.zeros_like(x)
    for _ in range(5):
        xo = orig.step(xo, y * R, BackProjectedCT(raw))
        xi = ours.step(xi, y, op)
    torch.testing.assert_close(xi, xo, rtol=1e-3, atol=1e-4)
    # kappa ~ 1.52 N, nearly independent of the number of views
    assert ct_adjoint_scale(CT(64, n_views=8)) == pytest.approx(ct_adjoint_scale(CT(64, n_views=60)), rel=0.01)


def test_presets_follow_the_operator():
    sv = CT3D((1, 3, 16, 16), n_views=4)
    la = CT3D((1, 3, 16, 16), angles=torch.arange(0, 120, 20.0))
    mri = MultiCoilMRI(equispaced_mask((16, 16), 4), coil_maps=birdcage_maps(2, (16, 16)), img_size=(2, 3, 16, 16))
    assert default_preset(sv) == "sparse-view-ct" and default_preset(la) == "limited-angle-ct"
    assert default_preset(mri) == "mri"
    assert ZTVADMM.preset("mri", mri).rho == PRESETS["mri"]["rho"]
    assert ZTVADMM.preset("mri", mri, tuned=True).lam == PRESETS["mri"]["lam"] * PRESETS["mri"]["dds_lam_scale"]
    sv_plain, sv_tuned = ZTVADMM.preset("sparse-view-ct", sv), ZTVADMM.preset("sparse-view-ct", sv, tuned=True)
    assert sv_plain.rho == sv_tuned.rho and sv_tuned.lam == pytest.approx(4 * sv_plain.lam)
    a = ZTVADMM.preset("limited-angle-ct", la)
    assert a.lam / a.rho == pytest.approx(PRESETS["limited-angle-ct"]["lam"] / PRESETS["limited-angle-ct"]["rho"])
    with pytest.raises(TypeError, match="argument 'physics'"):
        ct_adjoint_scale(mri)


# ------------------------------------------------------------------------------------------------
# DDS 3D
# ------------------------------------------------------------------------------------------------
def _volume_ct(gen, D=5, n=16, views=6, sigma=0.01):
    op = CT3D((1, D, n, n), n_views=views, sigma=sigma, rng=torch.Generator().manual_seed(1))
    u = torch.linspace(-1, 1, n)
    img = ((u[:, None] ** 2 + u[None, :] ** 2) < 0.5).float() * 0.6 + 0.2
    x = img.reshape(1, 1, 1, n, n) * torch.linspace(0.9, 1.1, D).reshape(1, 1, D, 1, 1)
    return op, x, op(x)


def test_dds3d_nfe_network_calls_and_info(gen):
    op, x, y = _volume_ct(gen)
    p2 = IsoGaussian()
    rec = invdiff.solve(y, op, lift(p2, chunk=2), solver="dds3d", num_steps=12, n_samples=2)
    assert rec.nfe == 12                                       # calls of the lifted prior, 1 per step
    assert rec.info["nfe_images"] == 2 * 12                    # volumes (2 chains)
    assert rec.info["network_calls"] == 12 * math.ceil(2 * 5 / 2) == len(p2.batches)
    assert rec.info["slice_evaluations"] == 12 * 2 * 5
    assert max(p2.batches) <= 2
    assert rec.info["preset"] == "sparse-view-ct" and rec.info["boundary"] == "neumann"
    assert rec.info["admm_iterations"] == 12
    assert rec.samples.shape == (2, 1, 1, 5, 16, 16) and torch.isfinite(rec.mean).all()


def test_dds3d_is_deterministic_and_z_tv_makes_slices_consistent(gen):
    op, x, y = _volume_ct(gen, D=6)
    prior = lift(IsoGaussian(m=0.5, v=0.05), chunk=3)
    a = invdiff.solve(y, op, prior, solver="dds3d", num_steps=20, seed=4, rho=0.05, lam=0.005)
    b = invdiff.solve(y, op, prior, solver="dds3d", num_steps=20, seed=4, rho=0.05, lam=0.005)
    assert torch.equal(a.mean, b.mean)
    plain = invdiff.solve(y, op, prior, solver="dds", num_steps=20, seed=4)   # slice-independent
    dz = lambda v: finite_diff(v, 2).abs().mean()  # noqa: E731
    assert dz(a.mean) < 0.7 * dz(plain.mean)
    assert (a.mean - x).norm() < (plain.mean - x).norm()


def test_dds3d_clear_errors(gen):
    op, x, y = _volume_ct(gen)
    prior = lift(IsoGaussian(), chunk=2)
    with pytest.raises(ValueError, match="argument 'cg_iters'"):
        invdiff.solve(y, op, prior, solver="dds3d", cg_iters=0)
    with pytest.raises(ValueError, match="argument 'prior'.*lift"):
        invdiff.solve(y, op, IsoGaussian(), solver="dds3d")
    op1 = CT3D((1, 1, 16, 16), n_views=6)
    with pytest.raises(ValueError, match="argument 'y'.*D >= 2"):
        invdiff.solve(op1.A(x[:, :, :1]), op1, prior, solver="dds3d")
    with pytest.raises(ValueError, match="argument 'y'.*5 slices"):                 # y of 4 slices, operator of 5
        invdiff.solve(y[:, :, :4], op, prior, solver="dds3d")
    mri = MultiCoilMRI(equispaced_mask((16, 16), 4), coil_maps=birdcage_maps(2, (16, 16)), img_size=(2, 5, 16, 16))
    ym = mri.A(torch.zeros(1, 2, 5, 16, 16))
    with pytest.raises(ValueError, match="argument 'y'"):
        invdiff.solve(ym[:, :, :, :4], mri, lift(IsoGaussian(channels=2)), solver="dds3d")
    with pytest.raises(ValueError, match="argument 'physics'"):
        invdiff.solve(op.op2d.A(x[:, :, 0]), op.op2d, prior, solver="dds3d")
    with pytest.raises(ValueError, match="argument 'preset'"):
        invdiff.solve(y, op, prior, solver="dds3d", preset="knee")


def test_ztv_is_usable_as_any_solvers_data_consistency(gen):
    op, x, y = _volume_ct(gen)
    admm = ZTVADMM.preset("sparse-view-ct", op, tuned=True)
    prior = lift(IsoGaussian(), chunk=5)
    rec = invdiff.solve(y, op, prior, solver="dds", num_steps=10, data_consistency=admm, seed=2)
    ref = invdiff.solve(y, op, prior, solver="dds3d", num_steps=10, seed=2)
    torch.testing.assert_close(rec.mean, ref.mean)
    assert admm.iterations == 10


def test_dds3d_on_slicewise_mri(gen):
    mri = SliceWise(MRI(equispaced_mask((16, 16), 4), sigma=0.01), depth=4)
    x = torch.randn(1, 2, 4, 16, 16, generator=gen) * 0.3
    rec = invdiff.solve(mri(x), mri, lift(IsoGaussian(m=0.0, v=0.1, channels=2), chunk=3), solver="dds3d",
                        num_steps=8)
    assert rec.info["preset"] == "mri" and rec.mean.shape == x.shape and torch.isfinite(rec.mean).all()


# ------------------------------------------------------------------------------------------------
# DiffusionMBIR
# ------------------------------------------------------------------------------------------------
def test_diffusion_mbir_fast_runs_with_nfe_twice_the_steps(gen):
    op, x, y = _volume_ct(gen, D=3)
    p2 = IsoGaussian()
    rec = invdiff.solve(y, op, lift(p2, chunk=2), solver="diffusion-mbir", num_steps=15, seed=0)
    assert rec.nfe == 30 and rec.info["network_calls"] == 30 * 2
    assert rec.info["final_consistency"] is True and rec.info["cg_iters"] == 1
    assert rec.info["sigma_max"] == pytest.approx(378 * 16 / 256)
    assert torch.isfinite(rec.mean).all()
    fast = invdiff.solve(y, op, lift(p2, chunk=3), solver="diffusion-mbir", preset="fast", seed=0)
    assert fast.info["num_steps"] == MBIR_PRESETS["fast"]["num_steps"] and fast.nfe == 2 * fast.info["num_steps"]
    a = invdiff.solve(y, op, lift(p2, chunk=2), solver="diffusion-mbir", num_steps=15, seed=0)
    torch.testing.assert_close(a.mean, rec.mean)                             # deterministic under seed
    b = invdiff.solve(y, op, lift(p2, chunk=3), solver="diffusion-mbir", num_steps=15, seed=0)
    torch.testing.assert_close(b.mean, rec.mean)                             # independent of the chunk size


def test_diffusion_mbir_defaults_and_errors(gen):
    assert default_sigma_max(IsoGaussian(), (1, 1, 4, 256, 256)) == pytest.approx(378.0)
    mri_prior = lift(IsoGaussian(channels=2))
    mri_prior.value_range = (-1.0, 1.0)
    assert default_sigma_max(mri_prior, (1, 2, 4, 64, 64)) == pytest.approx(378.0 * 2 * 64 / 256)
    op, x, y = _volume_ct(gen, D=3)
    with pytest.raises(ValueError, match="argument 'prior'.*lift"):
        invdiff.solve(y, op, IsoGaussian(), solver="diffusion-mbir", num_steps=2)
    with pytest.raises(ValueError, match="argument 'preset'"):
        invdiff.solve(y, op, lift(IsoGaussian()), solver="diffusion-mbir", preset="slow")
    with pytest.raises(ValueError, match="argument 'sigma_max'"):
        invdiff.solve(y, op, lift(IsoGaussian()), solver="diffusion-mbir", num_steps=2, sigma_max=0.001)
    mri = MultiCoilMRI(equispaced_mask((16, 16), 4), coil_maps=birdcage_maps(2, (16, 16)), img_size=(2, 3, 16, 16),
                       sigma=0.01)
    ym = mri(torch.randn(1, 2, 3, 16, 16, generator=gen) * 0.3)
    rec = invdiff.solve(ym, mri, lift(IsoGaussian(m=0.0, channels=2)), solver="diffusion-mbir", num_steps=4)
    assert rec.info["final_consistency"] is False and rec.info["z_preset"] == "mri"

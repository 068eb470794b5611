"""Forward models: one generic adjoint test over every operator, property tests, and physics checks.

Adjoint ("dot") test: for x random and y = A x + r (r random, so <Ax, y> is far from 0),
|<Ax, y> - <x, A^T y>| / |<Ax, y>| <= 1e-5 with A, A^T evaluated in float32.
"""
import os
import doctest
import math

import numpy as np
import pytest
import torch
import deepinv as dinv
from hypothesis import given, settings, strategies as st, HealthCheck

import invdiff.operators as O
from invdiff.operators import (CT, CT3D, MRI, Blur, CircularBlur, Inpainting, MatrixOperator, MultiCoilMRI, SliceWise,
                               birdcage_maps, box_mask, brush_mask, equispaced_mask, espirit_maps, gaussian_kernel,
                               motion_kernel, poisson_disc_mask, random_mask, random_mask_1d, uniform_kernel)

# INVDIFF_HYPOTHESIS_EXAMPLES=500 for a deeper search than the fast default
HYP = settings(max_examples=int(os.environ.get("INVDIFF_HYPOTHESIS_EXAMPLES", "15")), deadline=None,
               suppress_health_check=[HealthCheck.too_slow])


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def inner(a, b):
    return float((a.double() * b.double()).sum())


def dot_test_error(op, batch=2, seed=0):
    g = _g(seed)
    x = torch.randn(batch, *op.x_shape, generator=g)
    Ax = op.A(x)
    assert tuple(Ax.shape) == (batch, *op.y_shape)
    y = Ax + torch.randn(Ax.shape, generator=g)
    ATy = op.A_adjoint(y)
    assert ATy.shape == x.shape
    lhs, rhs = inner(Ax, y), inner(x, ATy)
    return abs(lhs - rhs) / (abs(lhs) if lhs != 0 else 1.0)   # lhs = 0 only for A = 0 (empty mask)


# ------------------------------------------------------------------------------------------------
# every operator, 2D and 3D, real and complex, parallel and fan beam, every padding
# ------------------------------------------------------------------------------------------------
def _mc_maps(n, shape):
    return birdcage_maps(n, shape)


OPERATORS = {
    "matrix": lambda: MatrixOperator(torch.randn(7, 11, generator=_g(1)), sigma=0.1),
    "inpaint-box-rgb": lambda: Inpainting((3, 16, 16), box_mask((16, 16), 0.4)),
    "inpaint-brush": lambda: Inpainting((1, 32, 32), brush_mask((32, 32), _g(2)), sigma=0.05),
    "inpaint-per-channel": lambda: Inpainting((3, 8, 8), (torch.rand(3, 8, 8, generator=_g(3)) > 0.5).float()),
    "inpaint-per-sample": lambda: Inpainting((1, 8, 8),
                                             torch.stack([random_mask((8, 8), 0.5, _g(i)) for i in range(2)])),
    "inpaint-3d": lambda: Inpainting((1, 4, 8, 8), random_mask((8, 8), 0.5, _g(4))[:, None].expand(1, 4, 8, 8)),
    **{f"blur-{p}{'-fft' if f else ''}": (lambda p=p, f=f: Blur(gaussian_kernel(5, 1.2), (2, 16, 12), padding=p,
                                                                   use_fft=f))
       for p in O.blur.PADDINGS for f in (False, True)},
    "blur-even-kernel-reflect": lambda: Blur(uniform_kernel((4, 2)), (1, 12, 12), padding="reflect"),
    "blur-motion-circular": lambda: Blur(motion_kernel(9, _g(5), 0.4), (1, 16, 16), padding="circular"),
    "blur-per-sample": lambda: Blur(torch.cat([gaussian_kernel(5, 1.0), gaussian_kernel(5, 2.0)]), (1, 12, 12),
                                    padding="replicate"),
    "blur-3d-valid": lambda: Blur(torch.ones(3, 3, 3) / 27, (1, 6, 8, 8), padding="valid"),
    "blur-3d-circular": lambda: Blur(torch.ones(3, 3, 3) / 27, (1, 6, 8, 8), padding="circular"),
    "circular-blur-fft": lambda: CircularBlur(gaussian_kernel(5, 1.5), (3, 16, 16)),
    "mri": lambda: MRI(equispaced_mask((16, 20), 4, center_fraction=0.2), sigma=0.01),
    "mri-odd-poisson": lambda: MRI(poisson_disc_mask((17, 15), 2, center_fraction=0.2), (2, 17, 15)),
    "mri-per-sample-mask": lambda: MRI(torch.stack([random_mask_1d((16, 16), 4, 0.25, seed=s)
                                                    for s in (0, 1)])[:, None], (2, 16, 16)),
    "mri-3d-fft": lambda: MRI(poisson_disc_mask((6, 8, 8), 2, 0.25), (2, 6, 8, 8), three_d=True),
    "mri-3d-slicewise": lambda: MRI(random_mask_1d((8, 8), 2, 0.25), (2, 5, 8, 8)),
    "mri-3d-slicewise-per-slice-mask": lambda: MRI(torch.stack([random_mask_1d((8, 8), 2, 0.25, seed=s)
                                                                for s in range(5)]), (2, 5, 8, 8)),
    "multicoil": lambda: MultiCoilMRI(random_mask_1d((16, 16), 4, 0.25), _mc_maps(4, (16, 16)), sigma=0.01),
    "multicoil-int-maps": lambda: MultiCoilMRI(None, 3, (2, 12, 10)),
    "multicoil-3d-fft": lambda: MultiCoilMRI(poisson_disc_mask((4, 8, 8), 2, 0.25), _mc_maps(3, (2, 4, 8, 8)),
                                             (2, 4, 8, 8), three_d=True),
    "multicoil-3d-slicewise": lambda: MultiCoilMRI(random_mask_1d((8, 8), 2, 0.25), _mc_maps(3, (2, 8, 8)),
                                                   (2, 4, 8, 8)),
    "ct-parallel": lambda: CT(16, n_views=10, sigma=0.01),
    "ct-parallel-circle": lambda: CT((1, 16, 16), n_views=7, circle=True),
    "ct-parallel-unnormalised-2ch": lambda: CT((2, 12, 12), n_views=5, normalize=False),
    "ct-limited-angle": lambda: CT(16, n_views=6, angle_range=90.0),
    "ct-explicit-angles": lambda: CT(16, angles=[0.0, 13.0, 101.5]),
    "ct-fan": lambda: CT(16, n_views=12, angle_range=360.0, fan_beam=True),
    "ct3d": lambda: CT3D((1, 3, 12, 12), n_views=6),
    "ct3d-fan": lambda: CT3D((1, 2, 12, 12), n_views=6, fan_beam=True, angle_range=360.0),
    "slicewise-blur-valid": lambda: SliceWise(Blur(gaussian_kernel(3, 1.0), (1, 10, 10), padding="valid"), 3),
    "slicewise-mri": lambda: SliceWise(MRI(random_mask_1d((8, 8), 2, 0.25)), 4),
    "slicewise-multicoil": lambda: SliceWise(MultiCoilMRI(None, _mc_maps(2, (8, 8))), 3),
    "slicewise-inpainting": lambda: SliceWise(Inpainting((2, 8, 8), box_mask((8, 8))), 2),
    "slicewise-ct-fan": lambda: SliceWise(CT(8, n_views=3, fan_beam=True), 2),
}


@pytest.fixture(scope="module", params=sorted(OPERATORS))
def named_op(request):
    torch.manual_seed(0)
    return request.param, OPERATORS[request.param]()


def test_adjoint_every_operator(named_op):
    name, op = named_op
    assert isinstance(op, dinv.physics.LinearPhysics) and isinstance(op, O.InvdiffPhysics)
    err = dot_test_error(op)
    assert err < 1e-5, f"{name}: relative adjoint error {err:.2e}"


def test_conventions_every_operator(named_op):
    """is_complex <-> 2 channels, sigma readable, check_x accepts a valid input, noise keeps shapes."""
    name, op = named_op
    x = torch.rand(2, *op.x_shape)
    assert op.check_x(x) is x
    if name.startswith(("mri", "multicoil", "slicewise-mri", "slicewise-multicoil")):
        assert op.is_complex and op.x_shape[0] == 2
    else:
        assert not op.is_complex
    assert op.sigma >= 0
    y = op(x)
    assert y.shape == (2, *op.y_shape) and torch.isfinite(y).all()
    assert op.check_y(y) is y


def test_doc_examples_run():
    """Every docstring example in invdiff.operators runs and prints what it says."""
    mods = [O.base, O.matrix, O.inpainting, O.blur, O.mri, O.coils, O.masks, O.ct, O.stack]
    for m in mods:
        res = doctest.testmod(m, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        assert res.failed == 0, m.__name__


# ------------------------------------------------------------------------------------------------
# hypothesis property tests (small sizes)
# ------------------------------------------------------------------------------------------------
@HYP
@given(H=st.integers(4, 24), W=st.integers(4, 24), C=st.integers(1, 3), keep=st.floats(0.05, 0.95),
       seed=st.integers(0, 2**16))
def test_inpainting_properties(H, W, C, keep, seed):
    m = random_mask((H, W), keep, _g(seed))
    op = Inpainting((C, H, W), m, sigma=0.1, rng=_g(seed + 1))
    x = torch.rand(2, C, H, W, generator=_g(seed))
    assert dot_test_error(op) < 1e-6
    assert torch.equal(op.A(op.A(x)), op.A(x))            # a projection
    y = op(x)
    assert torch.all(y[:, :, m[0] == 0] == 0)               # noise only on observed pixels


@HYP
@given(H=st.integers(6, 20), W=st.integers(6, 20), kh=st.integers(1, 6), kw=st.integers(1, 6),
       padding=st.sampled_from(O.blur.PADDINGS), use_fft=st.booleans(), seed=st.integers(0, 2**16))
def test_blur_adjoint_property(H, W, kh, kw, padding, use_fft, seed):
    k = torch.rand(1, 1, kh, kw, generator=_g(seed))
    op = Blur(k / k.sum(), (1, H, W), padding=padding, use_fft=use_fft)
    assert dot_test_error(op, seed=seed) < 1e-5


@HYP
@given(H=st.integers(4, 32), W=st.integers(8, 32), acc=st.floats(1.0, 4.0), seed=st.integers(0, 2**16),
       kind=st.sampled_from(["equispaced", "random", "gaussian"]))
def test_mri_adjoint_and_unitary_property(H, W, acc, seed, kind):
    mask = O.make_mask(kind, (H, W), acc, center_fraction=1.0 / W, seed=seed)
    op = MRI(mask, (2, H, W))
    assert dot_test_error(op, seed=seed) < 1e-5
    full = MRI(None, (2, H, W))
    x = torch.randn(1, 2, H, W, generator=_g(seed))
    assert torch.allclose(full.A_adjoint(full.A(x)), x, atol=1e-5)       # F is unitary
    assert math.isclose(full.A(x).norm().item(), x.norm().item(), rel_tol=1e-5)


@pytest.mark.filterwarnings("ignore:Power iteration")   # deepinv's 100-step norm estimate on 1-view problems
@HYP
@given(N=st.integers(6, 24), frac=st.floats(0.0, 1.0), angle_range=st.floats(1.0, 360.0),
       fan=st.booleans(), normalize=st.booleans(), seed=st.integers(0, 2**16))
def test_ct_adjoint_and_angles_property(N, frac, angle_range, fan, normalize, seed):
    op0 = CT(N, n_views=1, fan_beam=fan, normalize=False)
    n_views = 1 + int(frac * (min(op0.n_detectors, 24) - 1))
    op = CT(N, n_views=n_views, angle_range=angle_range, fan_beam=fan, normalize=normalize)
    expected = torch.arange(n_views, dtype=torch.float64) * angle_range / n_views
    assert torch.allclose(op.angles.double(), expected, atol=1e-4)
    assert op.y_shape == (1, op.n_detectors, n_views)
    assert dot_test_error(op, seed=seed) < 1e-5


@HYP
@given(depth=st.integers(1, 8), H=st.integers(4, 12), which=st.sampled_from(["blur", "mri", "ct", "inpaint"]),
       seed=st.integers(0, 2**16))
def test_slicewise_property(depth, H, which, seed):
    if which == "blur":
        op2 = Blur(gaussian_kernel(3, 1.0), (1, H, H), padding="valid")
    elif which == "mri":
        op2 = MRI(random_mask_1d((H, H), 2, 0.3, seed=seed), (2, H, H))
    elif which == "ct":
        op2 = CT(H, n_views=3, normalize=False)
    else:
        op2 = Inpainting((1, H, H), random_mask((H, H), 0.5, _g(seed)))
    op = SliceWise(op2, depth)
    assert dot_test_error(op, seed=seed) < 1e-5
    x = torch.randn(2, *op.x_shape, generator=_g(seed))
    y = op.A(x)
    d = depth // 2
    assert torch.allclose(y[:, :, d], op2.A(x[:, :, d]), atol=1e-6)       # slice d = 2D operator on slice d


def _conv_reference(x, k, padding):
    """Direct loop convolution y[i] = sum_a k[a] x[i - a + a0], kernel centre a0 = n // 2 (deepinv)."""
    mode = {"circular": "wrap", "reflect": "reflect", "replicate": "edge", "zeros": "constant"}[padding]
    h, w = k.shape
    P = max(h, w)
    xp = np.pad(x, P, mode=mode)
    out = np.zeros_like(x)
    for a in range(h):
        for b in range(w):
            r0, c0 = P - a + h // 2, P - b + w // 2
            out += k[a, b] * xp[r0: r0 + x.shape[0], c0: c0 + x.shape[1]]
    return out


@pytest.mark.parametrize("padding", ["circular", "reflect", "replicate", "zeros"])
@pytest.mark.parametrize("ks", [(1, 1), (1, 3), (2, 1), (2, 2), (3, 4), (5, 3)])
@pytest.mark.parametrize("use_fft", [False, True])
def test_blur_small_kernels_regression(padding, ks, use_fft):
    """deepinv 0.5 Blur.A_adjoint raises (circular: kernel axis <= 2; reflect: axis 1) or is silently wrong
    (replicate: axis 1, 1-40 % error); invdiff zero-pads such kernels. The operator must stay the same
    convolution (independent loop reference) and get an exact adjoint."""
    k = torch.rand(*ks, generator=_g(0)) + 0.1
    op = Blur(k / k.sum(), (1, 9, 8), padding=padding, use_fft=use_fft)
    x = torch.randn(1, 1, 9, 8, generator=_g(1))
    ref = _conv_reference(x[0, 0].double().numpy(), (k / k.sum()).double().numpy(), padding)
    assert np.allclose(op.A(x)[0, 0].double().numpy(), ref, atol=1e-5)
    assert dot_test_error(op) < 1e-5


# ------------------------------------------------------------------------------------------------
# MRI physics: fastMRI fft2c convention, 3D, multi-coil, noise on sampled entries only
# ------------------------------------------------------------------------------------------------
def _fft2c_np(x, axes=(-2, -1)):
    return np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(x, axes=axes), axes=axes, norm="ortho"), axes=axes)


def _cplx(t):
    return t[:, 0].double().numpy() + 1j * t[:, 1].double().numpy()


@pytest.mark.parametrize("H,W", [(16, 16), (15, 18)])
def test_mri_matches_fastmri_fft2c(H, W):
    x = torch.randn(2, 2, H, W, generator=_g(0))
    m = random_mask_1d((H, W), 2, 0.3, seed=1)
    y = MRI(m).A(x)
    ref = _fft2c_np(_cplx(x)) * m.numpy()
    assert np.allclose(_cplx(y), ref, atol=1e-5)


def test_mri_3d_full_fft_and_slicewise():
    x = torch.randn(1, 2, 4, 8, 6, generator=_g(0))
    full = MRI(None, (2, 4, 8, 6), three_d=True).A(x)
    assert np.allclose(_cplx(full), _fft2c_np(_cplx(x), axes=(-3, -2, -1)), atol=1e-5)
    m = torch.stack([random_mask_1d((8, 6), 2, 0.3, seed=s) for s in range(4)])        # one mask per slice
    sw = MRI(m, (2, 4, 8, 6)).A(x)
    for d in range(4):
        assert torch.allclose(sw[:, :, d], MRI(m[d]).A(x[:, :, d]), atol=1e-6)


def test_multicoil_fully_sampled_is_isometry_and_matches_sense():
    maps = birdcage_maps(6, (2, 16, 16))
    op = MultiCoilMRI(None, maps)
    x = torch.randn(1, 2, 16, 16, generator=_g(0))
    y = op.A(x)
    assert y.shape == (1, 2, 6, 16, 16)
    assert torch.allclose(op.A_adjoint(y), x, atol=1e-5)         # sum_n |s_n|^2 = 1
    ref = _fft2c_np(maps.numpy()[None] * _cplx(x)[:, None])
    assert np.allclose(y[:, 0].double().numpy() + 1j * y[:, 1].double().numpy(), ref, atol=1e-5)


def test_multicoil_slicewise_volume_equals_per_slice_operator():
    maps = birdcage_maps(3, (2, 3, 8, 8))       # 3D maps, one set per slice
    m = random_mask_1d((8, 8), 2, 0.3)
    op = MultiCoilMRI(m, maps, (2, 3, 8, 8))
    x = torch.randn(2, 2, 3, 8, 8, generator=_g(0))
    y = op.A(x)
    assert y.shape == (2, 2, 3, 3, 8, 8)        # (B, 2, N, D, H, W)
    for d in range(3):
        assert torch.allclose(y[:, :, :, d], MultiCoilMRI(m, maps[:, d]).A(x[:, :, d]), atol=1e-6)


@pytest.mark.parametrize("make", [
    lambda m: MRI(m, sigma=0.2, rng=_g(1)),
    lambda m: MultiCoilMRI(m, 2, (2, 32, 32), sigma=0.2, rng=_g(1)),
])
def test_mri_noise_only_on_sampled_entries(make):
    m = random_mask_1d((32, 32), 4, 0.125, seed=0)
    op = make(m)
    x = torch.zeros(4, 2, 32, 32)
    y = op(x)                                            # (B, 2, [N,] H, W): pure noise
    sampled = m != 0
    assert torch.all(y[..., ~sampled] == 0)
    assert abs(y[..., sampled].std().item() - 0.2) < 0.02


def test_inpainting_and_matrix_noise_level():
    op = MatrixOperator(torch.eye(50), sigma=0.3, rng=_g(0))
    y = op(torch.zeros(200, 50))
    assert abs(y.std().item() - 0.3) < 0.01
    op.sigma = 0.0
    assert op.sigma == 0.0 and torch.all(op(torch.zeros(2, 50)) == 0)


# ------------------------------------------------------------------------------------------------
# CT: angles are what they claim, fbp, 3D stack
# ------------------------------------------------------------------------------------------------
def _point_sinogram_track(op, N, r, c):
    x = torch.zeros(1, 1, N, N)
    x[0, 0, r, c] = 1.0
    sino = op.A(x)[0, 0]                              # (n_det, n_views)
    pos = torch.arange(sino.shape[0], dtype=torch.float64)
    w = sino.double().clamp_min(0)
    return (w * pos[:, None]).sum(0) / w.sum(0)     # detector position of the point, per view


@pytest.mark.parametrize("kw", [dict(n_views=12), dict(n_views=5, angle_range=60.0),
                                dict(angles=[0.0, 37.0, 90.0, 150.0]), dict(n_views=9, angle_range=360.0, fan_beam=True),
                                dict(n_views=4, angle_range=100.0, fan_beam=True)])
def test_ct_angles_are_degrees_as_claimed(kw):
    """A point at row/column offsets (v, u) from the centre projects, at view angle theta (degrees), to
    detector position s = s0 + u cos(theta) - v sin(theta) (parallel beam); deepinv's fan beam is turned by
    90 degrees: s ~ s0 + v cos(theta) + u sin(theta) (up to ~2 % fan magnification). Predicting the track
    from the angles the operator claims (no fitting) must be sub-pixel; radians, a [0, 360) spread, or an
    off-by-one view would be several pixels off.
    """
    N = 32
    op = CT(N, normalize=False, **kw)
    if "angles" not in kw:
        rng = kw.get("angle_range", 180.0)
        assert torch.allclose(op.angles.double(), torch.arange(op.n_views).double() * rng / op.n_views, atol=1e-4)
        assert float(op.angles.max()) < rng
    else:
        assert op.angles.tolist() == kw["angles"]
    theta = torch.deg2rad(op.angles.double())
    s0 = (op.n_detectors - 1) / 2
    for (r, c) in [(8, 20), (22, 9), (16, 5)]:
        v, u = r - (N - 1) / 2, c - (N - 1) / 2
        track = _point_sinogram_track(op, N, r, c)
        if kw.get("fan_beam"):
            pred = s0 + v * theta.cos() + u * theta.sin()
        else:
            pred = s0 + u * theta.cos() - v * theta.sin()
        assert (track - pred).abs().max() < 0.5, (track, pred)


def test_ct_sparse_and_limited_angle_fbp():
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    N = 32
    x = torch.from_numpy(resize(shepp_logan_phantom(), (N, N), anti_aliasing=True)).float()[None, None]
    def err(op):
        return ((op.fbp(op.A(x)) - x).norm() / x.norm()).item()
    full, sparse, limited = CT(N, n_views=45), CT(N, n_views=6), CT(N, n_views=45, angle_range=90.0)
    e_full, e_sparse, e_limited = err(full), err(sparse), err(limited)
    assert e_full < 0.25 and e_sparse > e_full + 0.1 and e_limited > e_full + 0.1
    assert abs(full.compute_sqnorm(torch.randn(1, 1, N, N), max_iter=50, tol=1e-6, verbose=False).item() - 1) < 1e-2


def test_ct3d_is_stack_of_ct_slices():
    op = CT3D((1, 4, 12, 12), n_views=5)
    x = torch.randn(2, 1, 4, 12, 12, generator=_g(0))
    y = op.A(x)
    assert y.shape == (2, 1, 4, op.op2d.n_detectors, 5)
    for d in range(4):
        assert torch.allclose(y[:, :, d], op.op2d.A(x[:, :, d]), atol=1e-6)
        assert torch.allclose(op.fbp(y)[:, :, d], op.op2d.fbp(y[:, :, d]), atol=1e-5)


# ------------------------------------------------------------------------------------------------
# exact prox / pseudo-inverse where offered; deepinv solvers accept invdiff operators
# ------------------------------------------------------------------------------------------------
def test_matrix_operator_exact_prox_and_pinv():
    A = torch.randn(5, 8, generator=_g(0), dtype=torch.float64)
    op = MatrixOperator(A, sigma=0.1)
    assert op.matrix.shape == (5, 8)
    z, y = torch.randn(3, 8, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    for gamma in (0.7, torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)):
        x = op.prox_l2(z, y, gamma)
        g = torch.as_tensor(gamma, dtype=torch.float64).reshape(-1, 1)
        grad = g * (y - x @ A.T) @ A - (x - z)      # optimality: gamma A^T (y - Ax) = x - z
        assert grad.abs().max() < 1e-10
    x = op.A_dagger(y)
    assert torch.allclose(x, y @ torch.linalg.pinv(A).T)
    assert torch.allclose(op.A_adjoint(y), y @ A)


@pytest.mark.parametrize("make", [
    lambda: MRI(random_mask_1d((16, 16), 4, 0.25)),
    lambda: Inpainting((1, 16, 16), box_mask((16, 16))),
    lambda: CircularBlur(gaussian_kernel(5, 1.0), (1, 16, 16)),
    lambda: SliceWise(MRI(random_mask_1d((8, 8), 2, 0.25)), 3),
])
def test_closed_form_prox_matches_definition(make):
    op = make()
    x0 = torch.randn(2, *op.x_shape, generator=_g(0))
    y, z = op.A(x0), torch.randn(2, *op.x_shape, generator=_g(1))
    x = op.prox_l2(z, y, 2.0)
    grad = 2.0 * op.A_adjoint(y - op.A(x)) - (x - z)
    assert grad.abs().max() < 1e-4


def test_circular_blur_equals_blur_circular():
    k = motion_kernel(7, _g(0))
    x = torch.randn(2, 3, 16, 16, generator=_g(1))
    a, b = CircularBlur(k, (3, 16, 16)), Blur(k, (3, 16, 16), padding="circular")
    assert torch.allclose(a.A(x), b.A(x), atol=1e-5)
    assert torch.allclose(a.A_adjoint(x), b.A_adjoint(x), atol=1e-5)


def test_mri_mask_update_per_sample_is_validated_and_used():
    """ADS-style: swap in one mask per sample; the new masks are used and the batch is checked."""
    op = MRI(random_mask_1d((8, 8), 2, 0.25), sigma=0.0)
    masks = torch.stack([random_mask_1d((8, 8), 2, 0.25, seed=s) for s in range(3)])      # (3, H, W)
    op.update(mask=masks[:, None])
    x = torch.randn(3, 2, 8, 8, generator=_g(0))
    y = op.A(x)
    for b in range(3):
        assert torch.allclose(y[b:b + 1], MRI(masks[b]).A(x[b:b + 1]), atol=1e-6)
    with pytest.raises(ValueError, match="argument 'x'.*batch size 3"):
        op.A(x[:2])


def test_deepinv_ddrm_runs_on_invdiff_mri():
    op = MRI(random_mask_1d((16, 16), 2, 0.25), sigma=0.01)
    den = lambda x, s: x * 0 + 0.5     # noqa: E731  (constant denoiser: only checks plumbing)
    out = dinv.sampling.DDRM(den, sigmas=np.linspace(1, 0, 5))(op(torch.rand(1, 2, 16, 16)), op, seed=1)
    assert out.shape == (1, 2, 16, 16)


# ------------------------------------------------------------------------------------------------
# coil maps: ESPIRiT recovers birdcage maps (up to phase), too-small ACS error, cache
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sim_multicoil():
    import sigpy as sp

    N, nc = 64, 8
    img = sp.shepp_logan((N, N)).astype(np.complex64)
    yy, xx = np.mgrid[:N, :N]
    img = img * np.exp(1j * (1.5 * xx / N + 0.5 * yy / N))      # smooth phase
    x = torch.from_numpy(np.stack([img.real, img.imag]))[None].float()
    maps = birdcage_maps(nc, (2, N, N))
    return x, maps, torch.from_numpy(np.abs(img) > 1e-3)


def _sense_magnitude(y, maps):
    return MultiCoilMRI(None, maps).A_adjoint(y).pow(2).sum(1).sqrt()[0]


def test_espirit_recovers_birdcage_maps(sim_multicoil):
    x, maps, support = sim_multicoil
    mask = random_mask_1d((64, 64), 3, center_fraction=0.25, seed=0)          # 16 ACS lines
    y = MultiCoilMRI(mask, maps).A(x)
    est = espirit_maps(y, calib_width=24)                                     # uses the 16 fully sampled lines
    assert est.shape == (1, 8, 64, 64) and est.dtype == torch.complex64
    num = (est[0].conj() * maps).sum(0).abs()
    den = est[0].abs().pow(2).sum(0).sqrt() * maps.abs().pow(2).sum(0).sqrt()
    align = (num / den.clamp_min(1e-12))[support]
    assert align.min() > 0.98 and align.median() > 0.999                     # same subspace up to phase
    yfull = MultiCoilMRI(None, maps).A(x)
    mag, true = _sense_magnitude(yfull, est[0]), x.pow(2).sum(1).sqrt()[0]
    rel = ((mag - true)[support].norm() / true[support].norm()).item()
    assert rel < 0.01


def test_espirit_too_small_acs_is_an_error(sim_multicoil):
    x, maps, _ = sim_multicoil
    mask = random_mask_1d((64, 64), 4, seed=0)      # fastMRI default: int(0.08 * 64) = 5 centre lines
    y = MultiCoilMRI(mask, maps).A(x)
    with pytest.raises(ValueError, match=r"argument 'kspace'.*at least 2 \* kernel_width = 12 lines.*5 lines"):
        espirit_maps(y)


def test_espirit_cache_hit(sim_multicoil, tmp_path, monkeypatch):
    import sigpy.mri.app

    x, maps, _ = sim_multicoil
    y = MultiCoilMRI(None, maps).A(x)[..., 16:48, 16:48]      # smaller problem: 32x32 crop of k-space
    first = espirit_maps(y, calib_width=16, cache_dir=tmp_path)
    files = list(tmp_path.glob("espirit-*.npy"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp"))
    np.load(files[0], allow_pickle=False)                    # plain array, no pickle

    def boom(*a, **k):
        raise AssertionError("cache miss: EspiritCalib called again")

    monkeypatch.setattr(sigpy.mri.app, "EspiritCalib", boom)
    second = espirit_maps(y, calib_width=16, cache_dir=tmp_path)
    assert torch.equal(first, second)
    with pytest.raises(AssertionError, match="cache miss"):  # different data -> different key
        espirit_maps(2 * y, calib_width=16, cache_dir=tmp_path)

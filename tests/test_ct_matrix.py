"""CT as a cached sparse system matrix (invdiff.operators.ct_matrix): exact adjoint, same forward model as
deepinv's Tomography, cache reuse, batched / 3D single products, autograd, CUDA."""
import copy

import deepinv as dinv
import pytest
import torch

from invdiff.operators import CT, CT3D, SliceWise
from invdiff.operators import ct_matrix
from invdiff.operators.ct import _fan_parameters


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _adjoint_error(op, batch=2, seed=0):
    g = _g(seed)
    x = torch.randn(batch, *op.x_shape, generator=g)
    y = torch.randn(batch, *op.y_shape, generator=g)
    lhs = (op.A(x).double() * y.double()).sum()
    rhs = (x.double() * op.A_adjoint(y).double()).sum()
    return float((lhs - rhs).abs() / lhs.abs())


@pytest.mark.parametrize("make", [
    lambda: CT(16, n_views=10),
    lambda: CT(31, n_views=5, sigma=0.01),                                   # odd size, sparse view
    lambda: CT(24, n_views=7, angle_range=90.0),                             # limited angle
    lambda: CT(20, n_views=9, circle=True),
    lambda: CT((2, 18, 18), n_views=6, normalize=False),
    lambda: CT(32, n_views=12, angle_range=360.0, fan_beam=True),
    lambda: CT(27, n_views=8, angle_range=150.0, fan_beam=True),             # fan, limited angle
    lambda: CT3D((1, 3, 20, 20), n_views=6, angle_range=120.0),
    lambda: CT3D((1, 4, 16, 16), n_views=5, fan_beam=True, angle_range=360.0),
], ids=["parallel", "odd-sparse", "limited", "circle", "2ch-raw", "fan", "fan-limited", "3d-limited", "3d-fan"])
def test_adjoint_exact(make):
    op = make()
    assert _adjoint_error(op) < 1e-5


@pytest.mark.parametrize("fan", [False, True])
def test_same_forward_model_as_deepinv_tomography(fan):
    """Same A, A^T, FBP and operator norm as deepinv's Tomography (autograd adjoint) at 64 px, up to float32."""
    N = 64
    op = CT(N, n_views=16, angle_range=360.0 if fan else 180.0, fan_beam=fan)
    torch.manual_seed(0)
    old = dinv.physics.Tomography(angles=op.angles.clone(), img_width=N, adjoint_via_backprop=True, normalize=True,
                                  fan_beam=fan, fan_parameters=_fan_parameters(None, N) if fan else None)
    assert abs(op.operator_norm.item() / old.operator_norm.item() - 1) < 1e-5
    x = torch.rand(2, 1, N, N, generator=_g(1))
    y = torch.randn(2, *op.y_shape, generator=_g(2))

    def rel(a, b):
        return ((a - b).abs().max() / b.abs().max()).item()

    with torch.no_grad():
        assert rel(op.A(x), old.A(x)) < 1e-5
        assert rel(op.fbp(op.A(x)), old.fbp(old.A(x))) < 1e-5
    assert rel(op.A_adjoint(y), old.A_adjoint(y).detach()) < 1e-5


def test_matrix_cached_per_geometry():
    a, b = CT(20, n_views=6), CT(20, n_views=6, sigma=0.1)
    assert a._system is b._system                                          # same geometry -> same matrix object
    assert a.operator_norm.item() == b.operator_norm.item()
    for other in (CT(20, n_views=7), CT(20, n_views=6, angle_range=90.0), CT(20, n_views=6, fan_beam=True),
                  CT(20, n_views=6, circle=True), CT(22, n_views=6)):
        assert other._system is not a._system
    assert CT3D((1, 2, 20, 20), n_views=6).op2d._system is a._system
    assert copy.deepcopy(a)._system is a._system                           # copies share it too
    assert any(r["key"] == a._geometry[:12] for r in ct_matrix.cache_info())
    ct_matrix.clear_cache()
    c = CT(20, n_views=6)
    assert c._system is not a._system and torch.equal(c._system.forward.values(), a._system.forward.values())
    assert c.operator_norm.item() == a.operator_norm.item()             # a fresh build: the same norm (fixed start)


def test_construction_leaves_the_global_random_stream_alone():
    """The norm's power iteration uses its own seeded generator: seeded code after CT(...) sees the stream it would
    see without it, whether the matrix is built or cached."""
    torch.manual_seed(3)
    expected = torch.randn(3)
    ct_matrix.clear_cache()
    for _ in range(2):                                     # a fresh build, then the cached matrix
        torch.manual_seed(3)
        CT(20, n_views=6)
        assert torch.equal(torch.randn(3), expected)


def test_batched_and_stacked_are_one_product_and_match_slices():
    op, one = CT((2, 16, 16), n_views=5), CT(16, n_views=5)                # one: the same geometry, 1 channel
    x = torch.randn(3, 2, 16, 16, generator=_g(0))
    y = op.A(x)
    for b in range(3):
        for c in range(2):
            assert torch.allclose(y[b, c], one.A(x[b:b + 1, c:c + 1].contiguous())[0, 0], atol=1e-6)
    op3 = CT3D((1, 4, 16, 16), n_views=5)
    x3 = torch.randn(2, 1, 4, 16, 16, generator=_g(1))
    y3 = op3.A(x3)
    ref = SliceWise(op3.op2d, 4)._unfold(op3.op2d.A(SliceWise._fold(x3)), 2)   # the folded slice-by-slice route
    assert torch.allclose(y3, ref, atol=1e-6)
    assert torch.allclose(op3.A_adjoint(y3), SliceWise(op3.op2d, 4)._unfold(op3.op2d.A_adjoint(SliceWise._fold(y3)), 2),
                          atol=1e-5)


def test_autograd_through_A_uses_the_transpose():
    op = CT(16, n_views=6)
    x = torch.randn(2, 1, 16, 16, generator=_g(0), requires_grad=True)
    w = torch.randn(2, *op.y_shape, generator=_g(1))
    g, = torch.autograd.grad((op.A(x) * w).sum(), x, create_graph=True)
    assert torch.allclose(g, op.A_adjoint(w), atol=1e-6)                     # d<Ax, w>/dx = A^T w
    v = torch.randn(1, 1, 16, 16, generator=_g(2))
    _, jv = torch.autograd.functional.jvp(op.A, v, v)                       # double backward: linear, so J v = A v
    assert torch.allclose(jv, op.A(v), atol=1e-6)


def test_float64_copy():
    op = CT(16, n_views=4)
    x = torch.randn(1, 1, 16, 16, generator=_g(0))
    op64 = copy.deepcopy(op).to(torch.float64)
    y64 = op64.A(x.double())
    assert y64.dtype == torch.float64 and torch.allclose(y64.float(), op.A(x), atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_and_caches_per_device():
    op = CT(32, n_views=8, fan_beam=True, angle_range=360.0).to("cuda")
    x = torch.randn(2, 1, 32, 32, generator=_g(0))
    y = op.A(x.cuda())
    assert y.is_cuda and torch.allclose(y.cpu(), op.A(x), atol=1e-5)
    sm = op._matrices(y)
    assert sm.forward.is_cuda and sm.transpose.is_cuda
    assert CT(32, n_views=8, fan_beam=True, angle_range=360.0)._matrices(y) is sm     # one copy per device
    ATy = op.A_adjoint(y)
    assert ATy.is_cuda and torch.allclose(ATy.cpu(), op.A_adjoint(y.cpu()), atol=1e-4)
    assert _adjoint_error_cuda(op) < 1e-5
    op3 = CT3D((1, 3, 32, 32), n_views=8).to("cuda")
    x3 = torch.randn(1, 1, 3, 32, 32, device="cuda")
    assert op3.A_adjoint(op3.A(x3)).is_cuda


def _adjoint_error_cuda(op):
    x = torch.randn(2, *op.x_shape, device="cuda")
    y = torch.randn(2, *op.y_shape, device="cuda")
    lhs = (op.A(x).double() * y.double()).sum()
    return float(((lhs - (x.double() * op.A_adjoint(y).double()).sum()).abs() / lhs.abs()).cpu())


def test_disk_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setattr(ct_matrix, "DISK_CACHE", str(tmp_path))
    ct_matrix.clear_cache()
    a = CT(18, n_views=5, fan_beam=True)
    files = list(tmp_path.glob("ct-*.npz"))
    assert [f.name for f in files] == [f"ct-{a._geometry}.npz"]
    ct_matrix.clear_cache()
    b = CT(18, n_views=5, fan_beam=True)                                   # loaded from the file
    assert b._system is not a._system
    for t in ("forward", "transpose"):
        sa, sb = getattr(a._system, t), getattr(b._system, t)
        assert torch.equal(sa.crow_indices(), sb.crow_indices()) and torch.equal(sa.col_indices(), sb.col_indices())
        assert torch.equal(sa.values(), sb.values())
    files[0].write_bytes(b"not a matrix")                                  # a damaged file is rebuilt
    ct_matrix.clear_cache()
    c = CT(18, n_views=5, fan_beam=True)
    assert torch.equal(c._system.forward.values(), a._system.forward.values())

"""Shared numerical primitives: CG (complex-safe, per-sample), finite differences, op norms."""
import pytest
import torch

from invdiff.solvers.primitives import conjugate_gradient, grad_adjoint, grad_op, inner, op_norm_sq


def _spd(n, gen, dtype=torch.float64, cond=50.0):
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=dtype))
    ev = torch.logspace(0, torch.log10(torch.tensor(cond)).item(), n, dtype=torch.float64).to(dtype)
    return (q * ev) @ q.mH


def test_cg_error_energy_norm_decreases_monotonically(gen):
    # CG minimises the H-norm of the error over growing Krylov spaces, so it must decrease at every step
    H = _spd(30, gen)
    b = torch.randn(1, 30, generator=gen, dtype=torch.float64)
    x_star = torch.linalg.solve(H, b[0])[None]
    errs = []
    conjugate_gradient(lambda v: v @ H, b, max_iter=30,
                       callback=lambda k, x, r: errs.append(float(((x - x_star) @ H * (x - x_star)).sum())))
    assert all(e2 <= e1 * (1 + 1e-9) for e1, e2 in zip(errs, errs[1:]))
    assert errs[-1] < 1e-10 * errs[0]  # exact solve after n steps, up to round-off


def test_cg_complex_hermitian_matches_dense_solve(gen):
    # complex multi-coil-like normal operator I + g A^H A with A = M F S (dense, complex)
    n, coils = 16, 4
    S = torch.randn(coils, n, generator=gen, dtype=torch.complex128)
    F = torch.fft.fft(torch.eye(n, dtype=torch.complex128), norm="ortho")
    M = torch.zeros(n, dtype=torch.float64)
    M[::2] = 1
    A = torch.cat([(M[:, None] * F) @ torch.diag(S[c]) for c in range(coils)], 0)
    H = torch.eye(n, dtype=torch.complex128) + 0.7 * A.mH @ A
    b = torch.randn(2, n, generator=gen, dtype=torch.complex128)
    x = conjugate_gradient(lambda v: v @ H.T, b, max_iter=n)
    ref = torch.linalg.solve(H, b.T).T
    assert torch.allclose(x, ref, atol=1e-9)
    # the unconjugated bilinear form r^T r (released DDS code) does not give this: check our inner is conjugated
    r = torch.tensor([[1 + 1j]], dtype=torch.complex128)
    assert float(inner(r, r)) == pytest.approx(2.0)


def test_cg_per_sample_independence(gen):
    # two different problems stacked in one batch give the same answers as solved separately
    H1, H2 = _spd(12, gen), _spd(12, gen, cond=1000.0)
    Hs = torch.stack([H1, H2])
    b = torch.randn(2, 12, generator=gen, dtype=torch.float64)
    apply = lambda v: torch.einsum("bij,bj->bi", Hs[: v.shape[0]], v)  # noqa: E731
    joint = conjugate_gradient(apply, b, max_iter=5)
    first = conjugate_gradient(lambda v: v @ H1, b[:1], max_iter=5)
    second = conjugate_gradient(lambda v: v @ H2, b[1:], max_iter=5)
    assert torch.allclose(joint, torch.cat([first, second]), atol=1e-12)


def test_cg_warm_start_and_validation(gen):
    H = _spd(8, gen)
    b = torch.randn(1, 8, generator=gen, dtype=torch.float64)
    x_star = torch.linalg.solve(H, b[0])[None]
    x = conjugate_gradient(lambda v: v @ H, b, x0=x_star, max_iter=3)
    assert torch.allclose(x, x_star, atol=1e-10)
    with pytest.raises(ValueError, match="argument 'max_iter'"):
        conjugate_gradient(lambda v: v @ H, b, max_iter=0)


@pytest.mark.parametrize("shape,dims", [((2, 1, 5, 6), [2, 3]), ((1, 2, 4, 5, 6), [2, 3, 4]), ((1, 1, 7, 3, 3), [2])])
def test_finite_difference_adjoint(shape, dims, gen):
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    g = torch.randn(*shape, len(dims), generator=gen, dtype=torch.float64)
    lhs = (grad_op(x, dims) * g).sum()
    rhs = (x * grad_adjoint(g, dims)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-12)
    # Neumann boundary: a constant image has zero gradient
    assert grad_op(torch.ones(shape), dims).abs().max() == 0


def test_op_norm_sq_power_iteration(gen):
    class Diag:
        def A(self, x):
            return x * torch.tensor([3.0, 1.0, 0.5])

        A_adjoint = A

    assert op_norm_sq(Diag(), torch.zeros(1, 3), n_iter=50, generator=gen) == pytest.approx(9.0, rel=1e-4)

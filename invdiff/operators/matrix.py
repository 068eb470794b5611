r"""Dense matrix forward model for small exact tests (**contract**: ``MatrixOperator(A, sigma)``)."""
from __future__ import annotations

import deepinv as dinv
import torch

from .._validate import check_tensor, fail
from .base import InvdiffPhysics, gaussian_noise


class MatrixOperator(InvdiffPhysics, dinv.physics.LinearPhysics):
    r"""Dense linear forward model on flat vectors.

    .. math::  y = A x + n, \qquad A \in \mathbb{R}^{m \times n}, \quad n \sim \mathcal{N}(0, \sigma^2 I_m)

    The adjoint is the exact transpose, :math:`A^\top y`; :meth:`A_dagger` and :meth:`prox_l2` are exact
    (dense pseudo-inverse and linear solve), which makes this the operator of choice for closed-form
    posteriors (Gaussian mixtures) in tests.

    Args:
        A: real matrix of shape ``(m, n)`` (any float dtype; it is cast to the dtype of ``x`` on use).
        sigma: noise standard deviation (>= 0).
        rng: optional ``torch.Generator`` for the noise.

    Shapes: ``x`` is ``(B, n)``, ``y`` is ``(B, m)``. The matrix is ``.matrix``.

    Example:
        >>> import torch
        >>> from invdiff.operators import MatrixOperator
        >>> op = MatrixOperator(torch.tensor([[1., 0., 0.], [0., 2., 0.]]), sigma=0.0)
        >>> op.A(torch.ones(1, 3))
        tensor([[1., 2.]])
        >>> op.A_adjoint(torch.ones(1, 2))
        tensor([[1., 2., 0.]])
    """

    def __init__(self, A: torch.Tensor, sigma: float = 0.0, *, rng: torch.Generator | None = None):
        if not isinstance(A, torch.Tensor):
            fail("A", "a torch.Tensor matrix of shape (m, n)", A, TypeError)
        check_tensor("A", A, ndim=2, finite=True)
        if not A.is_floating_point():
            A = A.to(torch.get_default_dtype())
        if A.shape[0] < 1 or A.shape[1] < 1:
            fail("A", "a non-empty matrix of shape (m, n)", A)
        m, n = A.shape
        super().__init__(img_size=(n,), noise_model=gaussian_noise(sigma, rng), max_iter=100)
        self.register_buffer("matrix", A.detach().clone())
        self._setup_shapes((n,), (m,), is_complex=False)

    def _mat(self, t: torch.Tensor) -> torch.Tensor:
        return self.matrix.to(device=t.device, dtype=t.dtype)

    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        self._check_x_shape(x)
        return x @ self._mat(x).T

    def A_adjoint(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        self._check_y_shape(y)
        return y @ self._mat(y)

    def A_dagger(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        """Minimum-norm least-squares solution :math:`A^+ y` (dense pseudo-inverse)."""
        self._check_y_shape(y)
        return y @ torch.linalg.pinv(self._mat(y)).T

    def prox_l2(self, z, y: torch.Tensor, gamma, **kwargs) -> torch.Tensor:
        r"""Exact :math:`\arg\min_x \tfrac{\gamma}{2}\|Ax - y\|^2 + \tfrac12\|x - z\|^2`.

        ``gamma`` is a number or a ``(B,)`` tensor (one weight per sample); ``z`` is ``(B, n)`` or 0/None.
        """
        self._check_y_shape(y)
        M = self._mat(y)
        n = M.shape[1]
        g = torch.as_tensor(gamma, dtype=y.dtype, device=y.device).reshape(-1)
        if z is None or (isinstance(z, (int, float)) and z == 0):
            z = torch.zeros(y.shape[0], n, dtype=y.dtype, device=y.device)
        rhs = g[:, None] * (y @ M) + z  # (B or 1, n)
        H = g[:, None, None] * (M.T @ M)[None] + torch.eye(n, dtype=y.dtype, device=y.device)[None]
        if H.shape[0] == 1:
            return torch.linalg.solve(H[0], rhs.T).T
        return torch.linalg.solve(H, rhs[..., None])[..., 0]


__all__ = ["MatrixOperator"]

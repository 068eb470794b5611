r"""Empirical (Dirac-mixture) prior: the exact denoiser of a finite image set, via deepinv's ``MMSE``.

.. math:: p(x) = \frac1N\sum_k \delta(x - x_k),\qquad
          D(x,\sigma) = \sum_k x_k\,\mathrm{softmax}_k\!\Big(-\frac{\|x-x_k\|^2}{2\sigma^2}\Big).

A training-free test oracle: a correct sampler given y = A x_k + n recovers the atom x_k. Wrapped deepinv
bugs (audit §3, regression tests in ``tests/test_empirical_prior.py``): ``MMSE(device="cpu")`` with a string
device crashes (we always pass a ``torch.device``); ``MMSE`` crashes on non-contiguous inputs, which MRI code
produces (we make inputs contiguous).

>>> import torch
>>> atoms = torch.rand(5, 1, 4, 4)
>>> prior = EmpiricalPrior(atoms)
>>> torch.allclose(prior.denoise(atoms[:1] + 1e-4, 1e-3), atoms[:1], atol=1e-3)
True
"""
from __future__ import annotations

import torch

from .._validate import check_tensor, fail
from .base import Prior


class EmpiricalPrior(Prior):
    """Exact denoiser for the uniform distribution over ``atoms`` (N, C, H, W)."""

    def __init__(self, atoms: torch.Tensor, value_range: tuple[float, float] | None = (0.0, 1.0)):
        super().__init__()
        check_tensor("atoms", atoms, ndim=(4, 5))
        if atoms.shape[0] < 1:
            fail("atoms", "at least one image", atoms)
        self.register_buffer("atoms", atoms.contiguous())
        self.channels = atoms.shape[1]
        self.resolution = tuple(atoms.shape[2:])
        self.spatial_dims = atoms.dim() - 2
        self.value_range = value_range

    def denoise(self, x, sigma):
        import deepinv as dinv

        self.check_input(x)
        mmse = dinv.models.MMSE(dataloader=self.atoms.to(x.dtype), device=torch.device(x.device), dtype=x.dtype)
        return mmse(x.contiguous(), sigma)

r"""A 2D prior applied to volumes slice by slice: the "lifting" used by DDS 3D and DiffusionMBIR.

For a volume :math:`x \in \mathbb{R}^{B \times C \times D \times H \times W}` and a 2D denoiser :math:`D_{2D}`,

.. math::  D(x, \sigma)_{:, :, d} = D_{2D}(x_{:, :, d}, \sigma), \qquad d = 1..D,

i.e. the prior :math:`p(x) = \prod_d p_{2D}(x_{:, :, d})` (slices independent a priori; the 3D solvers couple
them through a z-direction regulariser, :mod:`invdiff.solvers.ztv`). The D slices of every volume are folded
into the batch axis and sent through the 2D network in chunks of ``chunk`` slices, so the network's working
memory is O(chunk), not O(D) (the released DDS code calls its U-Net on 20-slice chunks, DiffusionMBIR on 12
or 20; dossier §3.3, §4.2). A per-volume noise level ``sigma`` of shape (B,) is repeated over that volume's
slices.

NFE convention: a solver sees one prior call per denoiser evaluation of the whole volume, so
``Reconstruction.nfe`` counts calls to the lifted prior (DDS 3D: 1 per step) and
``Reconstruction.info["nfe_images"]`` counts volumes. The lifted prior keeps its own counters of the actual
network work: ``network_calls`` (batched 2D calls, :math:`\lceil B D / \text{chunk}\rceil` per lifted call) and
``slice_evaluations`` (2D images denoised, :math:`B D` per lifted call); the 3D solvers report both in ``info``.

Example:
    >>> import torch
    >>> from invdiff.priors.base import Prior
    >>> from invdiff.priors.lift import lift
    >>> class Half(Prior):  # any 2D prior, e.g. invdiff.priors.load("ct-phantom-64"); a stand-in here
    ...     channels = 1
    ...     def denoise(self, x, sigma):
    ...         return 0.5 * x
    >>> p3 = lift(Half(), chunk=4)
    >>> p3.denoise(torch.ones(2, 1, 5, 8, 8), 1.0).shape, p3.network_calls
    (torch.Size([2, 1, 5, 8, 8]), 3)
"""
from __future__ import annotations

import math

import torch

from .._validate import check_positive, fail
from .base import Prior, as_sigma_tensor


class Lifted2DPrior(Prior):
    r"""A 2D :class:`Prior` acting on volumes ``(B, C, D, H, W)`` slice by slice, ``chunk`` slices per network call.

    Args:
        prior2d: a 2D prior (``spatial_dims == 2``), e.g. ``invdiff.priors.load("ct-phantom-64")``.
        chunk: number of slices per network call (memory O(chunk)); the last call of a volume batch may be smaller.

    Attributes:
        network_calls: 2D network calls made so far (:math:`\lceil B D/\text{chunk}\rceil` per call of this prior).
        slice_evaluations: 2D images denoised so far (:math:`B D` per call).
    """

    spatial_dims = 3

    def __init__(self, prior2d: Prior, chunk: int = 8):
        super().__init__()
        if not isinstance(prior2d, Prior):
            fail("prior2d", "an invdiff 2D Prior (e.g. invdiff.priors.load('ct-phantom-64'))", prior2d, TypeError)
        if getattr(prior2d, "spatial_dims", None) != 2:
            fail("prior2d", "a 2D image prior (spatial_dims == 2)",
                 f"a prior with spatial_dims={getattr(prior2d, 'spatial_dims', None)}")
        check_positive("chunk", chunk, integer=True)
        self.prior2d = prior2d
        self.chunk = int(chunk)
        self.channels = prior2d.channels
        self.resolution = prior2d.resolution
        self.value_range = prior2d.value_range
        self.network_calls = 0
        self.slice_evaluations = 0
        self._name = f"lift({prior2d.name}, chunk={self.chunk})"

    def calls_per_evaluation(self, batch: int, depth: int) -> int:
        r""":math:`\lceil B D / \text{chunk}\rceil`: 2D network calls made by one call of this prior."""
        return math.ceil(batch * depth / self.chunk)

    def denoise(self, x: torch.Tensor, sigma) -> torch.Tensor:
        self.check_input(x)
        B, C, D = x.shape[:3]
        s = as_sigma_tensor(sigma, x)
        if s.numel() != B:
            fail("sigma", f"a number or one noise level per volume ({B} values)", s)
        xf = x.movedim(2, 1).reshape(B * D, C, *x.shape[3:])   # (B, C, D, H, W) -> (B*D, C, H, W)
        sf = s.repeat_interleave(D)                             # volume b's sigma on each of its slices
        out = torch.empty_like(xf)
        for i in range(0, B * D, self.chunk):
            out[i:i + self.chunk] = self.prior2d.denoise(xf[i:i + self.chunk], sf[i:i + self.chunk])
            self.network_calls += 1
        self.slice_evaluations += B * D
        return out.reshape(B, D, C, *x.shape[3:]).movedim(1, 2)


def lift(prior: Prior, chunk: int = 8) -> Lifted2DPrior:
    """Lift a 2D prior to volumes (see :class:`Lifted2DPrior`); a lifted prior is re-lifted with the new ``chunk``."""
    if isinstance(prior, Lifted2DPrior):
        prior = prior.prior2d
    return Lifted2DPrior(prior, chunk=chunk)


__all__ = ["Lifted2DPrior", "lift"]

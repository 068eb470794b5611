r"""The prior interface every solver uses.

A prior is a denoiser in the EDM / variance-exploding parameterisation

.. math::  D_\theta(x, \sigma) \approx \mathbb{E}[x_0 \mid x_0 + \sigma n = x],

where :math:`x_0` lives in the prior's *data space*: real images (B, 1, H, W) in [0, 1], complex MRI
images as 2 real channels (B, 2, H, W), volumes (B, C, D, H, W) for 3D priors. This is also deepinv's
``Denoiser`` contract (``forward(x, sigma)``, sigma on the data scale), so any invdiff prior can be handed
to deepinv's DPS / DDRM / DiffPIR unchanged. Score, epsilon and v predictions follow by exact
conversion (:mod:`invdiff.schedules`).

>>> import torch
>>> from invdiff.priors import GaussianMixture
>>> p = GaussianMixture(torch.ones(1), torch.zeros(1, 4), torch.eye(4)[None])
>>> p.denoise(torch.ones(2, 4), 1.0).shape
torch.Size([2, 4])
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .._validate import fail, check_tensor
from .. import schedules as S


class Prior(nn.Module):
    """Base class: subclasses implement :meth:`denoise`. Metadata used for input validation:

    - ``channels``: number of image channels (1 real, 2 complex), or None for vector priors;
    - ``resolution``: spatial size the network takes, or None when any size works;
    - ``value_range``: the data range of training images (for documentation and checks);
    - ``spatial_dims``: 2 for images, 3 for native volume priors, 0 for flat vectors.
    """

    channels: int | None = None
    resolution: tuple[int, ...] | None = None
    value_range: tuple[float, float] | None = (0.0, 1.0)
    spatial_dims: int = 2

    # -- the one method a prior must provide -------------------------------------------------------
    def denoise(self, x: torch.Tensor, sigma) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- deepinv Denoiser contract -------------------------------------------------------------------
    def forward(self, x: torch.Tensor, sigma, *args, **kwargs) -> torch.Tensor:
        return self.denoise(x, sigma)

    # -- exact conversions ----------------------------------------------------------------------------
    def eps(self, x: torch.Tensor, sigma) -> torch.Tensor:
        return S.x0_to_eps(x, self.denoise(x, sigma), sigma)

    def score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        return S.x0_to_score(x, self.denoise(x, sigma), sigma)

    def x0_vp(self, x_vp: torch.Tensor, alpha_bar) -> torch.Tensor:
        """x0 estimate from a VP state x_vp = sqrt(ab) x0 + sqrt(1-ab) eps."""
        ab = torch.as_tensor(alpha_bar, dtype=x_vp.dtype, device=x_vp.device)
        scale = S._bcast(ab.sqrt(), x_vp)
        return self.denoise(x_vp / scale, S.alpha_bar_to_sigma(ab).to(x_vp.dtype))

    def eps_vp(self, x_vp: torch.Tensor, alpha_bar) -> torch.Tensor:
        ab = S._bcast(torch.as_tensor(alpha_bar, dtype=x_vp.dtype, device=x_vp.device), x_vp)
        return (x_vp - ab.sqrt() * self.x0_vp(x_vp, alpha_bar)) / (1 - ab).sqrt()

    # -- validation -------------------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        """Refuse inputs this prior cannot take, with one clear message."""
        check_tensor(name, x, finite=False)
        if self.spatial_dims == 0:
            return x
        want_dim = 2 + self.spatial_dims
        if x.dim() != want_dim:
            fail(name, f"a {want_dim}-D tensor (B, C, {'D, ' if self.spatial_dims == 3 else ''}H, W) for this "
                       f"{self.spatial_dims}D prior", x)
        if self.channels is not None and x.shape[1] != self.channels:
            fail(name, f"{self.channels} channel(s) for prior {self.name!r} "
                       f"({'complex as 2 real channels' if self.channels == 2 else 'real images'})", x)
        if self.resolution is not None and tuple(x.shape[-len(self.resolution):]) != tuple(self.resolution):
            fail(name, f"spatial size {tuple(self.resolution)} (the resolution prior {self.name!r} was trained at)", x)
        return x

    @property
    def name(self) -> str:
        return getattr(self, "_name", type(self).__name__)


class CountingPrior(Prior):
    """Wraps a prior and counts denoiser evaluations (NFE), so NFE is measured, not reported by solvers.

    ``nfe`` counts calls (one batched network evaluation = 1); ``nfe_images`` counts images evaluated.
    """

    def __init__(self, prior: Prior):
        super().__init__()
        self.inner = prior
        self.nfe = 0
        self.nfe_images = 0
        for attr in ("channels", "resolution", "value_range", "spatial_dims"):
            setattr(self, attr, getattr(prior, attr, None))

    @property
    def name(self) -> str:
        return self.inner.name

    def denoise(self, x, sigma):
        self.nfe += 1
        self.nfe_images += int(x.shape[0])
        return self.inner.denoise(x, sigma)

    def check_input(self, x, name="x"):
        return self.inner.check_input(x, name)

    def __getattr__(self, item):
        try:
            return super().__getattr__(item)
        except AttributeError:
            return getattr(self._modules["inner"], item)


def as_sigma_tensor(sigma, x: torch.Tensor) -> torch.Tensor:
    """sigma as a (B,) tensor on x's device and dtype."""
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.dim() == 0:
        s = s.expand(x.shape[0])
    return s.reshape(-1)


__all__: Sequence[str] = ["Prior", "CountingPrior", "as_sigma_tensor"]

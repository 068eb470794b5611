"""Diffusion priors: the :class:`Prior` interface, exact Gaussian mixtures, shipped neural priors, loaders.

- :func:`available` lists the priors shipped inside the package;
- :func:`load` returns a shipped prior by name or loads a local checkpoint (safe formats only).
"""
from .base import CountingPrior, Prior
from .gmm import GaussianMixture
from .empirical import EmpiricalPrior
from .neural import NeuralPrior
from .registry import available, load

__all__ = ["Prior", "CountingPrior", "GaussianMixture", "EmpiricalPrior", "NeuralPrior", "available", "load"]

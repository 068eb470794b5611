"""Diffusion priors: the :class:`Prior` interface, exact Gaussian mixtures, shipped neural priors, loaders.

- :func:`available` lists the priors shipped inside the package;
- :func:`load` returns a shipped prior by name or loads a local checkpoint (safe formats only; published
  checkpoints through :mod:`invdiff.priors.loaders`, one module per format).

Training priors is :mod:`invdiff.training` (it imports this package; ``priors`` never imports ``datasets``,
``solvers`` or ``training``).
"""
from .base import CountingPrior, Prior
from .gmm import GaussianMixture
from .empirical import EmpiricalPrior
from .neural import NeuralPrior
from .registry import available, load

__all__ = ["Prior", "CountingPrior", "GaussianMixture", "EmpiricalPrior", "NeuralPrior", "available", "load"]

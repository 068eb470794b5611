"""Diffusion priors: the :class:`Prior` interface, exact Gaussian mixtures, shipped neural priors, loaders.

- :func:`available` lists the priors shipped inside the package;
- :func:`load` returns a shipped prior by name or loads a local checkpoint (safe formats only; published
  checkpoints through :mod:`invdiff.priors.loaders`, one module per format);
- :func:`check_prior_fits` warns (:class:`PriorSizeWarning`) or refuses (:class:`PriorSizeError`, strict) a prior
  applied to an image size / pixel scale it was not trained or validated for (``invdiff.solve`` calls it).

Training priors is :mod:`invdiff.training` (it imports this package; ``priors`` never imports ``datasets``,
``solvers`` or ``training``).
"""
from .base import CountingPrior, Prior, PriorSizeError, PriorSizeWarning, check_prior_fits
from .gmm import GaussianMixture
from .empirical import EmpiricalPrior
from .neural import NeuralPrior
from .registry import available, load

__all__ = ["Prior", "CountingPrior", "PriorSizeWarning", "PriorSizeError", "check_prior_fits", "GaussianMixture",
           "EmpiricalPrior", "NeuralPrior", "available", "load"]

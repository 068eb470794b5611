"""Posterior samplers and baselines behind one contract (:func:`invdiff.solve`).

``available()`` lists registered solvers; each solver lives in its own module.
"""
from .base import Option, Reconstruction, SolverOutput, available, get, register, solve

__all__ = ["Option", "Reconstruction", "SolverOutput", "available", "get", "register", "solve"]

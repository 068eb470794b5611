"""invdiff: inverse problems in imaging and medicine with diffusion priors.

The package reads in one direction (``A -> B``: B imports A, never the reverse; ``tests/test_import_graph.py``)::

    operators -> priors -> solvers -> jobs -> bench -> reconstruct, demo -> cli
    datasets, priors, jobs -> training -> cli          datasets -> bench, reconstruct, demo

``import invdiff`` is cheap: the subpackages (``invdiff.operators``, ``invdiff.priors``, ``invdiff.solvers``,
``invdiff.metrics``, ``invdiff.datasets``, ``invdiff.training``, ...) and :func:`invdiff.solve` are imported on
first use (module ``__getattr__``, PEP 562), so ``invdiff.operators.MultiCoilMRI`` works without importing
``invdiff.operators`` first.

>>> import invdiff
>>> "dds" in invdiff.solvers.available()
True
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"
__all__ = ["solve", "Reconstruction", "__version__"]

#: subpackages and modules reachable as ``invdiff.NAME`` (imported on first access)
_SUBMODULES = ("bench", "cli", "config", "datasets", "demo", "io_utils", "jobs", "metrics", "operators", "priors",
               "reconstruct", "schedules", "solvers", "training")
#: names re-exported from a submodule (imported on first access)
_LAZY = {"solve": "solvers.base", "Reconstruction": "solvers.base"}


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_SUBMODULES) | set(_LAZY))

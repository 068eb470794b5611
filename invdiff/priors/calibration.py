r"""Std-map calibration table: per (shipped prior, solver) the factor c that makes :math:`c\cdot\mathrm{std}` a calibrated scale.

A solver's per-pixel std (the weighted particle std of ``smc``, the sample spread of the chain samplers) is not, in
general, the posterior std: on held-out phantoms drawn from each prior's own generator the Gaussian 90 % interval
:math:`|\hat x - x| \le z_{0.9}\,\mathrm{std}` covers far fewer than 90 % of the pixels for most samplers. The table
``weights/calibration.json`` (written by ``benchmarks/calibration.py --write-table``; results and held-out checks in
``benchmarks/results/calibration.md``) stores, per prior and solver, the factor

.. math::  c = q_{0.9}\big(|\hat x - x| / \mathrm{std}\big) / z_{0.9}

(:math:`z_{0.9}` = 1.645 for real pixels, :math:`\sqrt{\ln 10}` for complex magnitudes), fitted on 4 held-out phantoms
with the solver options and sample count recorded next to it. It is valid for those settings and that data
distribution only; ``invdiff reconstruct --calibration`` writes :math:`c\cdot\mathrm{std}` as
``reconstruction_std_calibrated`` next to the raw ``reconstruction_std``, labelled as such.

Example:
    >>> from invdiff.priors.calibration import std_scale
    >>> entry = std_scale("ct-phantom-64", "dds")
    >>> entry is None or entry["std_scale"] > 0
    True
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

TABLE = Path(__file__).resolve().parent / "weights" / "calibration.json"


@lru_cache(maxsize=1)
def load_table() -> dict:
    """The whole table (``{"level": 0.9, "priors": {prior: {solver: {"std_scale", "options", "K", ...}}}}``)."""
    if not TABLE.exists():
        return {"priors": {}}
    return json.loads(TABLE.read_text())


def std_scale(prior: str | None, solver: str) -> dict | None:
    """The table entry of (``prior``, ``solver``) (a dict with ``std_scale``, the fit's ``options``, ``K``, ``task``),
    or None where no scale was fitted (an unshipped prior or checkpoint path, or a solver not in the benchmark)."""
    if prior is None:
        return None
    return load_table().get("priors", {}).get(Path(str(prior)).name if "/" in str(prior) else str(prior), {}).get(
        solver)


def known_pairs() -> list[str]:
    """``"prior/solver"`` for every fitted scale (for error messages)."""
    return [f"{p}/{s}" for p, d in sorted(load_table().get("priors", {}).items()) for s in sorted(d)]


__all__ = ["TABLE", "load_table", "std_scale", "known_pairs"]

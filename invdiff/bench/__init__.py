"""Benchmark helpers: measurement (time, peak memory), result tables, and the shared harness of the experiment
scripts (:mod:`invdiff.bench.harness`). Benchmarks compose these; scripts live in ``benchmarks/``."""
from .measure import PeakMemory, measure
from .tables import write_results

__all__ = ["PeakMemory", "measure", "write_results"]

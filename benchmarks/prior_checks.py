"""Cost of the prior's input checks (negative / NaN sigma, NaN input; issue 16 item 6) on a 64x64 prior call.

For the shipped ``ct-phantom-64`` prior on CPU: the time of one checked call ``prior.denoise(x, sigma)``, of the
unchecked network path ``prior.precond(x, sigma)``, and of :func:`invdiff.priors.base.check_sigma` alone, for a
number and a (B,) tensor sigma, batch 1 and 8. Medians over interleaved repetitions (so load changes hit both
sides alike). On CUDA the value checks are skipped by design (no device sync), so only the CPU is measured.

Writes ``benchmarks/results/prior_checks.{json,md,csv}``.

    python benchmarks/prior_checks.py [--reps 30]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from invdiff.bench.tables import write_results
from invdiff.priors import load
from invdiff.priors.base import as_sigma_tensor, check_sigma

RESULTS = Path(__file__).resolve().parent / "results"


def _time(fn, reps_inner: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps_inner):
        fn()
    return (time.perf_counter() - t0) / reps_inner


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=30)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    prior = load("ct-phantom-64")
    rows = []
    with torch.no_grad():
        for batch in (1, 8):
            x = torch.rand(batch, 1, 64, 64)
            for kind, sigma in (("number", 0.3), ("tensor", torch.full((batch,), 0.3))):
                s = as_sigma_tensor(sigma, x)
                checked, bare, alone = [], [], []
                for _ in range(a.reps):
                    checked.append(_time(lambda: prior.denoise(x, sigma), 3))
                    bare.append(_time(lambda: prior.precond(x, s), 3))
                    alone.append(_time(lambda: check_sigma(sigma, x), 200))
                c, b, k = (statistics.median(v) for v in (checked, bare, alone))
                rows.append({"batch": batch, "sigma": kind, "call_ms": 1e3 * c, "network_ms": 1e3 * b,
                             "check_us": 1e6 * k, "check_pct": 100 * k / b,
                             "all_checks_pct": 100 * (c - b) / b})
    notes = (__doc__.split("Writes")[0] + "\nColumns: `call_ms` checked `denoise`, `network_ms` unchecked `precond`, "
             "`check_us` `check_sigma` alone, `check_pct` its share of a network call, `all_checks_pct` checked minus "
             f"unchecked (shape checks included; can be negative from timing noise). {torch.get_num_threads()} "
             "torch thread(s), medians of interleaved repetitions.")
    md = write_results(RESULTS, "prior_checks", rows, ["batch", "sigma", "call_ms", "network_ms", "check_us",
                                                      "check_pct", "all_checks_pct"],
                       title="Prior input checks: overhead on a 64x64 call", notes=notes)
    print(Path(md).read_text())


if __name__ == "__main__":
    main()

"""CT operators before / after the sparse system matrix: A and A^T time, adjoint error, build time, memory.

Before: deepinv ``Tomography(adjoint_via_backprop=True)``, as ``invdiff.operators.CT`` built it until 2026-12
(A = ``grid_sample`` along the rays, A^T = a ``torch.func`` vector-Jacobian product of A).
After: ``invdiff.operators.CT`` (A and A^T = one CSR product each with deepinv's projector as a sparse matrix and
its transpose, :mod:`invdiff.operators.ct_matrix`).

Both without normalisation (the raw Radon transform; normalising is one scalar division). Per case (image size
N, views, geometry): parallel beam over 180 degrees, fan beam (invdiff's default fan geometry) over 360 degrees;
views = min(N, 180), plus the 8-view sparse-view task at 64 px. Columns:

- ``A_ms`` / ``AT_ms``: median wall time of one call on a (1, 1, N, N) image / sinogram, torch threads = 1,
  after one warm-up call (which, before, builds the autograd adjoint); ``AT/A`` their ratio;
- ``adj_err``: |<Ax, y> - <x, A^T y>| / |<Ax, y>| for standard normal x, y (float32 operators, float64 dot);
- ``A_diff``: max |A_new x - A_old x| / max |A_old x| (same forward model up to float32 round-off);
  ``fbp_diff``: the same for ``fbp`` (deepinv's ramp filter, then A^T);
- ``build_s``: constructing the operator (before: deepinv's sampling grids; after: grids, the sparse matrix and
  its transpose, cold cache); ``cached_build_s``: a second operator of the same geometry (matrix from the cache);
- ``op_MiB``: memory the operator holds (before: deepinv's grids; after: both CSR matrices, values float32,
  indices int32), ``nnz``: stored entries of A; ``build_peak_MiB``: peak RSS growth while building.

Every case runs in its own process (clean peak memory). Usage:
    python benchmarks/ct_operators.py [--out benchmarks/results] [--sizes 64 128 256 512] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402


def _median_time(fn, reps: int) -> float:
    fn()                                                               # warm-up (builds lazily built state)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _adjoint_error(A, AT, x, y) -> float:
    lhs = (A(x).double() * y.double()).sum()
    rhs = (x.double() * AT(y).double()).sum()
    return float((lhs - rhs).abs() / lhs.abs())


def run_case(n: int, views: int, geometry: str, reps: int) -> dict:
    import warnings

    import deepinv as dinv

    from invdiff.bench import measure
    from invdiff.operators import CT
    from invdiff.operators.ct import _fan_parameters
    from invdiff.operators.ct_matrix import clear_cache

    warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
    torch.set_num_threads(1)
    fan = geometry == "fan"
    angle_range = 360.0 if fan else 180.0
    row = dict(N=n, views=views, geometry=geometry)

    clear_cache()
    new = measure(lambda: CT(n, n_views=views, angle_range=angle_range, fan_beam=fan, normalize=False))
    op = new.value
    sm = op._system
    row.update(build_s_after=new.seconds, matrix_s=sm.build_seconds, build_peak_MiB_after=new.peak_mb,
               nnz=sm.nnz, op_MiB_after=sm.nbytes / 2 ** 20)
    t0 = time.perf_counter()
    CT(n, n_views=views, angle_range=angle_range, fan_beam=fan, normalize=False)
    row["cached_build_s"] = time.perf_counter() - t0

    fp = _fan_parameters(None, n) if fan else None
    old_m = measure(lambda: dinv.physics.Tomography(angles=op.angles.clone(), img_width=n, adjoint_via_backprop=True,
                                                    normalize=False, fan_beam=fan, fan_parameters=fp))
    old = old_m.value
    grids = [old.radon.all_grids] + ([old.iradon.all_grids] if not fan else [])
    row.update(build_s_before=old_m.seconds, build_peak_MiB_before=old_m.peak_mb,
               op_MiB_before=sum(g.numel() * g.element_size() for g in grids) / 2 ** 20)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, n, n, generator=g)
    y = torch.randn(1, *op.y_shape, generator=g)
    with torch.no_grad():
        ya, yb = op.A(x), old.A(x)
        row["A_diff"] = float((ya - yb).abs().max() / yb.abs().max())
        fa, fb = op.fbp(ya), old.fbp(yb)
        row["fbp_diff"] = float((fa - fb).abs().max() / fb.abs().max())
        row["A_ms_after"] = 1e3 * _median_time(lambda: op.A(x), reps)
        row["AT_ms_after"] = 1e3 * _median_time(lambda: op.A_adjoint(y), reps)
    row["adj_err_after"] = _adjoint_error(op.A, op.A_adjoint, x, y)
    row["A_ms_before"] = 1e3 * _median_time(lambda: old.A(x).detach(), reps)
    row["AT_ms_before"] = 1e3 * _median_time(lambda: old.A_adjoint(y).detach(), reps)
    row["adj_err_before"] = _adjoint_error(lambda t: old.A(t).detach(), lambda t: old.A_adjoint(t).detach(), x, y)
    for w in ("before", "after"):
        row[f"AT/A_{w}"] = row[f"AT_ms_{w}"] / row[f"A_ms_{w}"]
    row["A_speedup"] = row["A_ms_before"] / row["A_ms_after"]
    row["AT_speedup"] = row["AT_ms_before"] / row["AT_ms_after"]
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--quick", action="store_true", help="3 repetitions everywhere (smoke run)")
    ap.add_argument("--case", nargs=4, metavar=("N", "VIEWS", "GEOMETRY", "REPS"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.case:
        print("RESULT " + json.dumps(run_case(int(a.case[0]), int(a.case[1]), a.case[2], int(a.case[3]))))
        return

    from invdiff.bench import write_results

    cases = []
    for n in a.sizes:
        reps = 3 if a.quick else {64: 20, 128: 10, 256: 5}.get(n, 2)
        if n == 64:
            cases.append((n, 8, "parallel", reps))
        for geom in ("parallel", "fan"):
            cases.append((n, min(n, 180), geom, reps))
    rows = []
    for n, views, geom, reps in cases:
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--case", str(n), str(views), geom, str(reps)],
                             capture_output=True, text=True, env=os.environ.copy())
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if out.returncode != 0 or not line:
            sys.stderr.write(out.stderr[-3000:])
            raise SystemExit(f"case N={n} views={views} {geom} failed")
        rows.append(json.loads(line[0][7:]))
        print(f"N={n} views={views} {geom}: {time.perf_counter() - t0:.0f} s", rows[-1], flush=True)

    cols = ["N", "views", "geometry", "A_ms_before", "A_ms_after", "AT_ms_before", "AT_ms_after", "AT/A_before",
            "AT/A_after", "A_speedup", "AT_speedup", "adj_err_before", "adj_err_after", "A_diff", "fbp_diff",
            "build_s_before", "build_s_after", "matrix_s", "cached_build_s", "op_MiB_before", "op_MiB_after", "nnz",
            "build_peak_MiB_before", "build_peak_MiB_after"]
    notes = __doc__.split("\n\n", 1)[1].split("Every case runs")[0]
    notes += ("\nChoice: the sparse system matrix of deepinv's own projector (same A as before up to float32 "
              "round-off, see A_diff), A^T its transposed CSR, both cached per geometry and device. Timings are on "
              "a shared 2-core machine (other jobs running): compare the before/after columns of one row, which "
              "ran side by side in one process.\n")
    write_results(a.out, "ct_operators", rows, cols, title="CT operators: deepinv autograd adjoint vs sparse matrix",
                  notes=notes, meta={"torch_threads": 1, "cases": cases})


if __name__ == "__main__":
    main()

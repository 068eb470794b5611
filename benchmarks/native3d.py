"""Native 3D CT prior vs the lifted 2D prior + z-TV on held-out volumes, sparse-view CT (issue 11, item 5).

Volumes: 64 x 64 in-plane, D = 32 slices, isotropic voxels, in [0, 1]; two families, never seen in training:
- ``ct3d``: held-out seeds of the native prior's own generator (``invdiff.datasets.phantoms3d.ct_volumes`` at
  64^3, the central 32 slices): randomly rotated ellipsoids, so structures cross slices at every angle;
- ``ellipsoid-z``: ``invdiff.datasets.phantoms3d.ct_slab``, the volumes of ``benchmarks/dds3d.py`` (a different
  generator: ellipsoids aligned with z, more and smaller inserts): neither prior was trained on it.
Measurements: parallel-beam CT of every slice (``CT3D``), 8 or 16 views over 180 degrees, noise 0.01.

Methods (diffusion: 50 NFE, one chain, seed 0):
- ``fbp``; ``tv 3D``: isotropic 3D TV (300 iterations), lam tuned per family and view count;
- ``lifted 2D + z-TV (dds3d)``: ``solver="dds3d"`` with ``lift(ct-phantom-64)``: the 2D prior on every slice and
  a z-TV ADMM in every step (DDS with DiffusionMBIR's 3D augmentation), its z-TV weight tuned;
- ``native 3D (dds)``: ``solver="dds"`` with the native prior (Conv3d network on the whole volume: its z
  coupling is learnt, no z-TV), its gamma tuned; ``native 3D + z-TV (dds3d)``: the native prior in ``dds3d``,
  z-TV weight tuned.
Tuning: each method's option on a separate tuning volume of the same family and view count (TV lam in
{0.5, 1, 2, 4, 8} x 1e-3; DDS gamma in {1/9, 1/3, 1, 3} x its automatic value 0.005 / sigma^2 and the z-TV weight lam
in {1/4, 1, 4} x the default a user gets), best volume PSNR (the DDS gamma found here is now the measured default for
native 3D priors on volume CT, ``invdiff.solvers.defaults``); the tuned values are in the ``*_tuning`` table.
Metrics: volume PSNR (peak 1), mean slice SSIM, ``zgrad_err`` = ||D_z(x_hat - x)|| / ||D_z x|| (inter-slice
consistency), ``seconds`` wall, ``cpu_s`` process CPU
time (1 thread), ``peak_mb`` peak resident memory of the process during the solve (loaded priors included). Rows
are cached per (prior weights, family, views, method, option, seed) in ``--cache`` so runs resume and families can
run in separate processes (``--family``); a last run without ``--family`` reads the cache and writes the tables.

Usage: python benchmarks/native3d.py [--prior3d ct-ellipsoid3d-patch32] [--volumes 3] [--family ct3d]
       [--cache DIR] [--out benchmarks/results] [--threads 1] [--smoke]
"""
from __future__ import annotations

import sys
import warnings

import numpy as np
import torch

import invdiff
from invdiff.bench.harness import (PinnedPriors, RowCache, experiment_args, mean_rows, measured, start,
                                   weights_sha, write_experiment)
from invdiff.datasets import split_seeds
from invdiff.datasets.phantoms3d import ct_slab, ct_volume_np
from invdiff.metrics import psnr, ssim
from invdiff.operators import CT3D
from invdiff.priors import load
from invdiff.priors.lift import lift
from invdiff.solvers.dds import default_gamma
from invdiff.solvers.primitives import finite_diff
from invdiff.solvers.ztv import ZTVADMM, default_preset

N, DEPTH, NOISE, STEPS = 64, 32, 0.01, 50
FAMILIES = ("ct3d", "ellipsoid-z")
VIEWS = (8, 16)
TV_LAMS = (5e-4, 1e-3, 2e-3, 4e-3, 8e-3)
PRIOR2D = "ct-phantom-64"
PRIORS = PinnedPriors()


def volume(family: str, seed: int, depth: int = DEPTH) -> torch.Tensor:
    """(1, 1, depth, N, N) held-out volume of a family."""
    if family == "ct3d":
        v = ct_volume_np(seed, N)
        z0 = (N - depth) // 2
        return torch.from_numpy(np.ascontiguousarray(v[z0:z0 + depth]))[None, None]
    return ct_slab(seed, depth, N)


def metrics(est: torch.Tensor, x: torch.Tensor) -> dict:
    e2, x2 = est[0].movedim(1, 0), x[0].movedim(1, 0)                       # (D, 1, H, W) slices
    dz = finite_diff(est - x, 2).norm() / finite_diff(x, 2).norm()
    return {"PSNR": float(psnr(est, x, data_range=1.0)), "SSIM": float(ssim(e2, x2, data_range=1.0).mean()),
            "zgrad_err": float(dz)}


def methods(prior3d, views_op) -> dict:
    """name -> (solver, prior, tuned option, its default, tuning factors)."""
    lifted = lift(PRIORS(PRIOR2D), 8)
    lam_lift = ZTVADMM.preset(default_preset(views_op), views_op, tuned=True).lam
    return {
        "tv 3D": ("tv", None, "lam", None, TV_LAMS),
        "lifted 2D + z-TV (dds3d)": ("dds3d", lifted, "lam", lam_lift, (0.25, 1.0, 4.0)),
        "native 3D (dds)": ("dds", prior3d, "gamma", default_gamma(views_op, prior3d),
                            (1 / 9, 1 / 3, 1.0, 3.0)),
        "native 3D + z-TV (dds3d)": ("dds3d", prior3d, "lam", lam_lift, (0.25, 1.0, 4.0)),
    }


def solve_row(y, op, x, solver, prior, opts) -> dict:
    kw = {"num_steps": STEPS, "seed": 0} if prior is not None else {"n_iter": 300}
    if solver == "fbp":
        kw = {}
    rec, cost = measured(invdiff.solve, y, op, prior, solver=solver, **kw, **opts)
    return {**metrics(rec.mean, x), **cost, "nfe": rec.nfe}


def run_cell(a, cache, tag, prior3d, family, views, quick) -> tuple[list[dict], list[dict]]:
    """Tune every method on the tuning volume of (family, views), then evaluate on ``a.volumes`` held-out ones."""
    tune_seed = split_seeds("heldout", 1, start=900)[0]
    eval_seeds = split_seeds("heldout", a.volumes, start=910)
    depth = 8 if quick else DEPTH

    def data(seed):
        x = volume(family, seed, depth)
        op = CT3D((1, depth, N, N), n_views=views, sigma=NOISE, rng=torch.Generator().manual_seed(seed))
        return x, op, op(x)

    x_t, op_t, y_t = data(tune_seed)
    tune_rows, chosen = [], {}
    for name, (solver, prior, opt, default, grid) in methods(prior3d, op_t).items():
        best = None
        for f in (grid[len(grid) // 2],) if quick else grid:
            val = f if default is None else default * f
            key = f"{tag}|{family}|{views}|{depth}|tune|{name}|{opt}={val:.6g}|{tune_seed}"
            row = cache.get(key, lambda: solve_row(y_t, op_t, x_t, solver, prior, {opt: val}))
            tune_rows.append({"family": family, "views": views, "method": name, "option": opt, "value": val,
                              "x_default": None if default is None else f, **row})
            print(tune_rows[-1], file=sys.stderr)
            if best is None or row["PSNR"] > best[1]:
                best = (val, row["PSNR"])
        chosen[name] = best[0]
    rows = []
    for seed in eval_seeds:
        x, op, y = data(seed)
        plan = [("fbp", "fbp", None, {})] + [(name, s, p, {o: chosen[name]})
                                              for name, (s, p, o, _, _) in methods(prior3d, op).items()]
        for name, solver, prior, opts in plan:
            key = f"{tag}|{family}|{views}|{depth}|eval|{name}|{opts}|{seed}"
            row = cache.get(key, lambda: solve_row(y, op, x, solver, prior, opts))
            rows.append({"family": family, "views": views, "volume": seed, "method": name,
                         "option": ", ".join(f"{k}={v:.4g}" for k, v in opts.items()), **row})
            print(rows[-1], file=sys.stderr)
    return rows, tune_rows


def paired(rows: list[dict]) -> list[dict]:
    """Per (family, views): native 3D (dds) minus lifted 2D + z-TV and minus TV, mean +- sd over volumes."""
    out = []
    cells = dict.fromkeys((r["family"], r["views"]) for r in rows)
    for fam, v in cells:
        by = {}
        for r in rows:
            if (r["family"], r["views"]) == (fam, v):
                by.setdefault(r["method"], {})[r["volume"]] = r["PSNR"]
        for best in ("native 3D (dds)", "native 3D + z-TV (dds3d)"):
            for ref in ("lifted 2D + z-TV (dds3d)", "tv 3D"):
                d = np.array([by[best][s] - by[ref][s] for s in by[best]])
                out.append({"family": fam, "views": v, "comparison": f"{best} - {ref}", "dPSNR_mean": float(d.mean()),
                            "dPSNR_sd": float(d.std(ddof=1)) if len(d) > 1 else 0.0, "wins": int((d > 0).sum()),
                            "volumes": len(d)})
    return out


def main():
    ap = experiment_args(__doc__)
    ap.add_argument("--prior3d", default="ct-ellipsoid3d-patch32", help="native 3D prior: shipped name or file")
    ap.add_argument("--volumes", type=int, default=3, help="held-out volumes per family and view count")
    ap.add_argument("--family", choices=FAMILIES, help="only this family (fills the cache; tables from a run without)")
    ap.add_argument("--cache", default=None, help="row cache folder (default: none)")
    a = start(ap.parse_args())
    warnings.filterwarnings("ignore", category=UserWarning)
    quick = a.smoke
    if quick:
        a.volumes = 1
    prior3d = load(a.prior3d)
    tag = weights_sha(a.prior3d) + "-" + weights_sha(PRIOR2D)
    cache = RowCache(a.cache)
    rows, tune_rows = [], []
    for family in [a.family] if a.family else FAMILIES:
        for views in VIEWS[:1] if quick else VIEWS:
            r, t = run_cell(a, cache, tag, prior3d, family, views, quick)
            rows += r
            tune_rows += t
    if a.family:
        return
    cols = ["family", "views", "method", "option", "PSNR", "SSIM", "zgrad_err", "nfe", "seconds", "cpu_s", "peak_mb"]
    meta = {"depth": DEPTH, "steps": STEPS, "noise": NOISE, "prior3d": a.prior3d, "weights": tag,
            "priors_used": PRIORS.versions(), "prior3d_info": {"step": (prior3d.info or {}).get("step")}}
    means = mean_rows(rows, ["family", "views", "method"], label={"volume": "mean"})
    for m in means:
        m["option"] = next(r["option"] for r in rows if (r["family"], r["views"], r["method"]) ==
                           (m["family"], m["views"], m["method"]))
    write_experiment(a, "native3d", means, cols, title=f"Native 3D CT prior vs lifted 2D prior + z-TV, 64x64x{DEPTH} "
                     f"volumes, mean of {a.volumes} held-out volumes per row", notes=__doc__, meta=meta)
    write_experiment(a, "native3d_paired", paired(rows), ["family", "views", "comparison", "dPSNR_mean", "dPSNR_sd",
                                                          "wins", "volumes"],
                     title="Paired PSNR differences per volume (dB)", notes=__doc__, meta=meta)
    write_experiment(a, "native3d_volumes", rows, ["family", "views", "volume"] + cols[2:],
                     title="Per volume", notes=__doc__, meta=meta)
    write_experiment(a, "native3d_tuning", tune_rows, ["family", "views", "method", "option", "value", "x_default",
                                                       "PSNR", "SSIM", "seconds"],
                     title="Tuning volume (one per family and view count)", notes=__doc__, meta=meta)


if __name__ == "__main__":
    main()

"""SMC (AFDPS) on images with the shipped priors: posterior-mean quality and calibration of the std map.

Tasks (held-out phantoms, ``invdiff.datasets.split_seeds("heldout", n)``, never seen in training):

- ``mri4x-mc8``: complex brain phantoms (2 x 64 x 64, max magnitude 1), multi-coil Cartesian MRI with 8 birdcage
  coils, 4x random lines (``random_mask_1d``, 8 % centre), k-space noise sigma 0.01; prior ``mri-brainphantom-64``.
- ``ct8``: CT-like phantoms (1 x 64 x 64 in [0, 1]), 8 parallel-beam views over 180 degrees, sinogram noise sigma
  0.01; prior ``ct-phantom-64``.

For each image the weighted ensemble of ``smc`` gives the posterior mean and the per-pixel weighted std. Reported:

- PSNR / SSIM of the mean (data range 1; magnitude images for MRI);
- calibration of the std map against the error |mean - x| (complex magnitude for MRI): Pearson correlation over
  pixels, ``cov90`` = fraction of pixels with |error| <= z * std where z gives 90 % for a calibrated Gaussian
  posterior (1.645 for real pixels; sqrt(ln 10) = 1.517 for complex ones, whose |error|^2 / std^2 is chi^2_2 / 2),
  and ``err/std`` = RMS error / RMS std (1 when calibrated);
- ESS/N at the end and its minimum along the path, resampling events, ``resample_frac`` (fraction of levels that
  resampled), ``low_ess_run`` (the longest run of consecutive levels whose ESS/N fell below the resampling
  threshold, per island), unique time-0 ancestors summed over islands (path degeneracy), ``island_ess`` (ESS/K of
  the island weights), NFE per particle, seconds, peak memory growth (1 thread).

Variants (``--variants``, labels of ``VARIANTS``): ``one run N=16`` is one SMC run of 16 particles (the default
before islands); ``default N=64`` is the solver's measured defaults with 64 particles (``invdiff.solvers.defaults``:
linear tempering and islands of 1 particle on both tasks); ``islands=K`` rows pool K independent runs of 64 / K
particles (``island_size``), with the tempering named.

Context rows with the same data: ``cg`` (Tikhonov least squares) and ``fbp`` (CT) and ``dds`` (one sample).

Usage: python benchmarks/smc_images.py [--images 3] [--variants smc "islands=16 noise"] [--num-steps 200]
       [--cess-target 0.9] [--cache DIR] [--out benchmarks/results] [--threads 1] [--smoke]
"""
from __future__ import annotations

import math
import sys
import time

import torch

import invdiff
from invdiff.bench.harness import (RowCache, experiment_args, heldout, mean_rows, measured, prior_versions, quality,
                                   start, weights_sha, write_experiment)
from invdiff.metrics import psnr
from invdiff.operators import CT, MultiCoilMRI, random_mask_1d
from invdiff.priors import available, load

Z90 = {1: 1.6448536269514722, 2: math.sqrt(math.log(10.0))}


def task_mri(n):
    x = heldout("mri", n)
    op = MultiCoilMRI(random_mask_1d((64, 64), 4, seed=0), coil_maps=8, img_size=(2, 64, 64), sigma=0.01,
                      rng=torch.Generator().manual_seed(0))
    return x, op, "mri-brainphantom-64", ["cg", "dds"]


def task_ct(n):
    x = heldout("ct", n)
    op = CT(64, n_views=8, sigma=0.01, rng=torch.Generator().manual_seed(0))
    return x, op, "ct-phantom-64", ["fbp", "cg", "dds"]


TASKS = {"mri4x-mc8": task_mri, "ct8": task_ct}

# label -> (particles, smc options); the solver's measured defaults fill in everything not named
VARIANTS = {
    "one run N=16": (16, {"island_size": 16}),
    "default N=64": (64, {}),
    "islands=4 linear": (64, {"island_size": 16, "tempering": "linear"}),
    "islands=4 noise": (64, {"island_size": 16, "tempering": "noise"}),
    "islands=16 linear": (64, {"island_size": 4, "tempering": "linear"}),
    "islands=16 noise": (64, {"island_size": 4, "tempering": "noise"}),
    "islands=64 linear": (64, {"island_size": 1, "tempering": "linear"}),
}


def low_ess_run(ess: torch.Tensor, threshold: float) -> int:
    """Longest run of consecutive levels with ESS/N < threshold in any column of ``ess`` (levels, ...)."""
    below = (ess.reshape(ess.shape[0], -1) < threshold).long()
    run = best = torch.zeros(below.shape[1], dtype=torch.long)
    for row in below:
        run = (run + 1) * row
        best = torch.maximum(best, run)
    return int(best.max()) if best.numel() else 0


def magnitude(t: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W): |value| over the channels (complex magnitude for 2 channels)."""
    return t.double().pow(2).sum(1).sqrt()


def calibration(mean, std, x) -> dict:
    C = x.shape[1]
    err = magnitude(mean - x).reshape(-1)
    s = magnitude(std).reshape(-1)
    corr = float(torch.corrcoef(torch.stack([err, s]))[0, 1]) if float(s.std()) > 0 else float("nan")
    return {"std_err_corr": corr, "cov90": float((err <= Z90[C] * s).double().mean()),
            "err/std": float(err.pow(2).mean().sqrt() / s.pow(2).mean().sqrt().clamp_min(1e-30))}


def smc_row(tname, i, label, n_part, opts, y, op, prior, x) -> dict:
    rec, cost = measured(invdiff.solve, y, op, prior, solver="smc", seed=i, n_samples=n_part, **opts)
    info = rec.info
    return {"task": tname, "image": i, "solver": label, "N": n_part, "islands": info["islands"],
            "tempering": info["tempering"], **quality(rec.mean, x),
            "PSNR_one_draw": float(psnr(rec.samples[0], x, 1.0, complex=x.shape[1] == 2).mean()),
            **calibration(rec.mean, info["std"], x),
            "ess_end": float(info["ess"][-1].mean()), "ess_min": float(info["ess"].min()),
            "n_resample": int(info["n_resample"].sum()), "resample_frac": float(info["resampled"].double().mean()),
            "low_ess_run": low_ess_run(info.get("ess_islands", info["ess"]), info["ess_threshold"]),
            "unique_ancestors": int(info["unique_ancestors"][0]),
            "island_ess": float(info["island_ess"][0]) if "island_ess" in info else 1.0,
            "n_levels": info["n_levels"], "sigma_min": info["sigma_min"],
            "nfe_per_particle": info["nfe_per_particle"], "seconds": cost["seconds"], "peak_mb": cost["peak_mb"]}


def run(args):
    rows, t_all, priors = [], time.perf_counter(), {}
    cache = RowCache(args.cache)
    installed = available()
    for tname, make in TASKS.items():
        if args.tasks and tname not in args.tasks:
            continue
        x_all, op, prior_name, baselines = make(args.images)
        if prior_name not in installed:
            rows.append({"task": tname, "solver": "smc", "note": f"prior {prior_name} not installed"})
            continue
        prior = priors[prior_name] = load(prior_name)
        for i in range(x_all.shape[0]):
            x = x_all[i:i + 1]
            y = op(x)
            for name in baselines:
                opts = {"num_steps": 50} if name == "dds" else {}
                rec, cost = measured(invdiff.solve, y, op, prior if name == "dds" else None, solver=name, seed=i,
                                     **opts)
                rows.append({"task": tname, "image": i, "solver": name, "N": 1, **quality(rec.mean, x),
                             "nfe_per_particle": cost["nfe"], "seconds": cost["seconds"], "peak_mb": cost["peak_mb"]})
            for label in args.variants:
                n_part, opts = VARIANTS[label]
                if args.smoke:
                    n_part = 4
                opts = {**opts, "num_steps": args.num_steps, "chunk": args.chunk, "cess_target": args.cess_target}
                key = f"{tname}-{i}-{label}-{n_part}-{sorted(opts.items())}-{weights_sha(prior_name)}"
                row = cache.get(key, lambda: smc_row(tname, i, label, n_part, opts, y, op, prior, x))
                rows.append(row)
                print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, file=sys.stderr,
                      flush=True)
    order = {s: k for k, s in enumerate((*VARIANTS, "dds", "cg", "fbp"))}
    measured_rows = sorted((r for r in rows if "PSNR" in r), key=lambda r: (list(TASKS).index(r["task"]),
                                                                           order[r["solver"]]))
    summary = mean_rows(measured_rows, ["task", "solver", "N"], label={"image": "mean"})
    cols = ["task", "image", "solver", "N", "islands", "tempering", "PSNR", "SSIM", "PSNR_one_draw", "std_err_corr",
            "cov90", "err/std", "ess_end", "ess_min", "n_resample", "resample_frac", "low_ess_run",
            "unique_ancestors", "island_ess", "n_levels", "sigma_min", "nfe_per_particle", "seconds", "peak_mb", "note"]
    versions = prior_versions(priors)
    notes = (__doc__.split("Usage:")[0] + f"\nSettings: variants {args.variants} "
             f"({ {v: VARIANTS[v] for v in args.variants} }), {args.num_steps} noise levels "
             "(smc defaults otherwise, the measured per-operator ones included (invdiff.solvers.defaults): variant "
             "'ode', ULA corrector, sigma_min = min(0.004 tau, 0.1 sigma_y / sqrt(m))), "
             f"cess_target={args.cess_target}, {args.images} held-out images per task, chunk={args.chunk}. "
             f"Total {time.perf_counter() - t_all:.0f} s (rows from the row cache cost nothing here).")
    path = write_experiment(args, "smc_images", summary + rows, cols, title="SMC (AFDPS) on phantom images",
                            notes=notes, priors=versions,
                            meta={"prior_steps": {k: v["step"] for k, v in versions.items()}})
    print(path)


if __name__ == "__main__":
    ap = experiment_args(__doc__, images=3)
    ap.add_argument("--variants", nargs="*", default=["one run N=16", "default N=64"], choices=list(VARIANTS),
                    help="smc settings to run (labels of VARIANTS)")
    ap.add_argument("--cache", default=None, help="row cache folder (rows measured before are reused)")
    ap.add_argument("--num-steps", type=int, default=200)
    ap.add_argument("--chunk", type=int, default=None, help="max particles per network call")
    ap.add_argument("--cess-target", type=float, default=None, help="smc adaptive levels (None: the EDM grid)")
    ap.add_argument("--tasks", nargs="*", default=None, choices=list(TASKS))
    a = start(ap.parse_args())
    if a.smoke:
        a.images, a.num_steps = 1, 5
    run(a)

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
- ESS/N at the end and its minimum along the path, resampling events, unique time-0 ancestors (path degeneracy),
  NFE per particle, seconds, peak memory growth (1 thread).

Context rows with the same data: ``cg`` (Tikhonov least squares) and ``fbp`` (CT) and ``dds`` (one sample).

Usage: python benchmarks/smc_images.py [--images 3] [--particles 16] [--num-steps 200] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import torch

import invdiff
from invdiff.bench import measure, write_results
from invdiff.datasets import ct_phantoms, mri_phantoms, split_seeds
from invdiff.metrics import psnr, ssim
from invdiff.operators import CT, MultiCoilMRI, random_mask_1d
from invdiff.priors import available, load

Z90 = {1: 1.6448536269514722, 2: math.sqrt(math.log(10.0))}


def task_mri(n):
    x = mri_phantoms(split_seeds("heldout", n))
    op = MultiCoilMRI(random_mask_1d((64, 64), 4, seed=0), coil_maps=8, img_size=(2, 64, 64), sigma=0.01,
                      rng=torch.Generator().manual_seed(0))
    return x, op, "mri-brainphantom-64", ["cg", "dds"]


def task_ct(n):
    x = ct_phantoms(split_seeds("heldout", n))
    op = CT(64, n_views=8, sigma=0.01, rng=torch.Generator().manual_seed(0))
    return x, op, "ct-phantom-64", ["fbp", "cg", "dds"]


TASKS = {"mri4x-mc8": task_mri, "ct8": task_ct}


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


def quality(est, x) -> dict:
    cplx = x.shape[1] == 2
    return {"PSNR": float(psnr(est, x, 1.0, complex=cplx).mean()),
            "SSIM": float(ssim(est, x, 1.0, complex=cplx).mean())}


def run(args):
    torch.set_num_threads(1)
    rows, t_all, steps_used = [], time.perf_counter(), {}
    installed = available()
    for tname, make in TASKS.items():
        if args.tasks and tname not in args.tasks:
            continue
        x_all, op, prior_name, baselines = make(args.images)
        if prior_name not in installed:
            rows.append({"task": tname, "solver": "smc", "note": f"prior {prior_name} not installed"})
            continue
        prior = load(prior_name)
        step = (getattr(prior, "info", None) or {}).get("step")   # shipped priors are re-exported as they train
        steps_used[prior_name] = step
        for i in range(x_all.shape[0]):
            x = x_all[i:i + 1]
            y = op(x)
            for name in baselines:
                opts = {"num_steps": 50} if name == "dds" else {}
                m = measure(invdiff.solve, y, op, prior if name == "dds" else None, solver=name, seed=i, **opts)
                rows.append({"task": tname, "image": i, "solver": name, "N": 1, **quality(m.value.mean, x),
                             "nfe_per_particle": m.value.nfe, "seconds": m.seconds, "peak_mb": m.peak_mb})
            m = measure(invdiff.solve, y, op, prior, solver="smc", seed=i, n_samples=args.particles,
                        num_steps=args.num_steps, chunk=args.chunk)
            rec = m.value
            info = rec.info
            row = {"task": tname, "image": i, "solver": "smc", "N": args.particles, **quality(rec.mean, x),
                   "PSNR_one_draw": float(psnr(rec.samples[0], x, 1.0, complex=x.shape[1] == 2).mean()),
                   **calibration(rec.mean, info["std"], x),
                   "ess_end": float(info["ess"][-1].mean()), "ess_min": float(info["ess"].min()),
                   "n_resample": int(info["n_resample"].sum()), "unique_ancestors": int(info["unique_ancestors"][0]),
                   "nfe_per_particle": info["nfe_per_particle"], "seconds": m.seconds, "peak_mb": m.peak_mb}
            rows.append(row)
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, file=sys.stderr,
                  flush=True)
    # per-task means
    summary = []
    for tname in TASKS:
        for solver in ("smc", "dds", "cg", "fbp"):
            rs = [r for r in rows if r.get("task") == tname and r.get("solver") == solver and "PSNR" in r]
            if not rs:
                continue
            keys = [k for k in rs[0] if isinstance(rs[0][k], (int, float)) and k not in ("image", "N")]
            summary.append({"task": tname, "image": "mean", "solver": solver, "N": rs[0]["N"],
                            **{k: sum(r[k] for r in rs if r.get(k) is not None) / len(rs) for k in keys}})
    cols = ["task", "image", "solver", "N", "PSNR", "SSIM", "PSNR_one_draw", "std_err_corr", "cov90", "err/std",
            "ess_end", "ess_min", "n_resample", "unique_ancestors", "nfe_per_particle", "seconds", "peak_mb", "note"]
    notes = (__doc__.split("Usage:")[0] + f"\nSettings: {args.particles} particles, {args.num_steps} noise levels "
             f"(smc defaults otherwise: variant 'ode', tempering 'noise'), {args.images} held-out images per task, "
             f"chunk={args.chunk}. Priors (training step): {steps_used}. Total {time.perf_counter() - t_all:.0f} s.")
    path = write_results(args.out, "smc_images", summary + rows, cols, title="SMC (AFDPS) on phantom images",
                         notes=notes, meta={**vars(args), "prior_steps": steps_used})
    print(path)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--particles", type=int, default=16)
    ap.add_argument("--num-steps", type=int, default=200)
    ap.add_argument("--chunk", type=int, default=None, help="max particles per network call")
    ap.add_argument("--tasks", nargs="*", default=None, choices=list(TASKS))
    ap.add_argument("--out", default="benchmarks/results")
    run(ap.parse_args())

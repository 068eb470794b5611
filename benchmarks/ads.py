"""ADS on images with the shipped priors: the ADS-chosen mask / views / pixels against fixed ones, each then
reconstructed with the same sampler and budget (DDS, mean of K chains).

Tasks (held-out phantoms, ``invdiff.datasets.split_seeds("heldout", n)``, never seen in training; noise 0.01):

- ``mri``: complex brain phantoms (2 x 64 x 64, max magnitude 1), single-coil Cartesian MRI; ADS picks k-space
  columns of the fully sampled operator at 4x (16 lines) and 8x (8 lines), after the fastMRI centre block (8 % =
  5 columns at 4x, 4 % = 2 at 8x). Fixed masks with the same acceleration and centre fraction: equispaced, random,
  Gaussian (``invdiff.operators.masks``: W // R lines, centre included; equispaced's realised count can differ by
  one) and 2D Poisson-disc. Poisson-disc is not a line mask on equal terms: it has the same number of k-space
  samples (1022 / 515 points vs 16 / 8 lines x 64 = 1024 / 512) but its centre block is a cf H x cf W square
  (5 x 5 = 25 points at 4x), not cf W full columns (5 x 64 = 320), and it samples points of the (ky, kx) plane,
  which a 2D Cartesian scan (one phase-encode line per readout) cannot acquire separately: a reference for 3D
  scans with two phase-encode directions, not a competitor of the line masks ADS chooses among (ADS has no
  k-space-point candidate set). Prior ``mri-brainphantom-64``.
- ``ct``: CT-like phantoms (1 x 64 x 64), parallel beam; ADS picks 8 or 16 of 64 candidate views over 180 degrees
  vs 8 / 16 uniformly spaced views (every 8th / 4th candidate). Prior ``ct-phantom-64``.
- ``inpainting``: the CT phantoms, ADS picks 25 % of the pixels (4x) vs uniformly random pixels. Prior
  ``ct-phantom-64``. About 43 pixels per acquisition event: ``ads`` chooses them greedily on the conditioned
  particles (``select="conditional"``, the default), ``ads-topk`` takes the 43 best marginal scores (official).

ADS runs with the given preset (default "fast": 8 particles x 50 steps, window (0.5, 1), DDS data consistency,
"gmm" score); its measurements are read from the fully sampled data. Each mask is then used to simulate the
undersampled measurement (same noise level) and reconstructed with ``dds`` (50 NFE, ``n_samples`` = K chains,
mean), seed = image index, identical for every mask. Reported per task/acceleration/mask: PSNR, SSIM, NMSE (on the
magnitude for MRI, data range 1), measured lines/views/pixels, and the cost of choosing the mask (ADS: NFE =
network calls, NFE_images = images denoised, seconds; 0 for fixed masks) next to the cost of the reconstruction.
``ads-own`` is the ADS particle mean itself (no second reconstruction). The official ADS fastMRI setting costs
1.6e5 images denoised per slice (16 particles x 10 000 steps) plus as many VJPs.

Usage: python benchmarks/ads.py [--images 2] [--chains 2] [--preset fast] [--tasks mri ct inpainting] [--threads 1]
       [--smoke]
"""
from __future__ import annotations

import sys
import time

import torch

import invdiff
from invdiff.bench.harness import experiment_args, heldout, measured, prior_versions, quality, start, write_experiment
from invdiff.metrics import nmse
from invdiff.operators import CT, MRI, Inpainting, default_center_fraction, make_mask
from invdiff.priors import available, load

SIGMA = 0.01


def scores(est, x) -> dict:
    """PSNR / SSIM (peak 1) and NMSE, magnitude images for MRI."""
    return {**quality(est, x), "NMSE": float(nmse(est, x, complex=x.shape[1] == 2).mean())}


def reconstruct(op, x, prior, seed, args):
    y = op(x)
    rec, cost = measured(invdiff.solve, y, op, prior, solver="dds", seed=seed, n_samples=args.chains, num_steps=50)
    return {**scores(rec.mean, x), "rec_nfe": rec.nfe, "rec_nfe_images": rec.info["nfe_images"],
            "rec_seconds": cost["seconds"]}


def run_ads(full, x, prior, seed, args, **opts):
    g = torch.Generator().manual_seed(10_000 + seed)
    full.noise_model.rng = g
    y_full = full(x)
    rec, cost = measured(invdiff.solve, y_full, full, prior, solver="ads", seed=seed, preset=args.preset, **opts)
    return rec, {"sel_nfe": rec.nfe, "sel_nfe_images": rec.info["nfe_images"], "sel_seconds": cost["seconds"],
                 **{f"own_{k}": v for k, v in scores(rec.mean, x).items()}}


def task_mri(prior, args, rows):
    x_all = heldout("mri", args.images)
    full = MRI(None, (2, 64, 64), sigma=SIGMA)
    for R in (4, 8):
        cf = default_center_fraction(R)
        for i in range(x_all.shape[0]):
            x = x_all[i:i + 1]
            rec, sel = run_ads(full, x, prior, i, args, acceleration=R)
            masks = {"ads": rec.info["mask"]}
            for kind in ("equispaced", "random", "gaussian", "poisson"):
                for attempt in range(10):          # sigpy's Poisson-disc search misses some (seed, R) pairs
                    try:
                        masks[kind] = make_mask(kind, (64, 64), R, cf, seed=i + 1000 * attempt)
                        break
                    except ValueError:
                        continue
            rows.append({"task": "mri", "setting": f"{R}x", "image": i, "mask": "ads-own",
                         "measured": int(rec.info["mask"][0].sum()), **{k[4:]: v for k, v in sel.items()
                                                                         if k.startswith("own_")},
                         **{k: v for k, v in sel.items() if not k.startswith("own_")}})
            for name, mk in masks.items():
                op = MRI(mk, (2, 64, 64), sigma=SIGMA, rng=torch.Generator().manual_seed(i))
                r = reconstruct(op, x, prior, i, args)
                measured = int(mk.sum()) if name == "poisson" else int(mk[0].sum())
                rows.append({"task": "mri", "setting": f"{R}x", "image": i, "mask": name,
                             "measured": measured if name != "poisson" else f"{measured} pts",
                             **(({k: v for k, v in sel.items() if not k.startswith("own_")}) if name == "ads" else
                                {"sel_nfe": 0, "sel_nfe_images": 0, "sel_seconds": 0.0}), **r})
                print(rows[-1], file=sys.stderr, flush=True)


def task_ct(prior, args, rows):
    x_all = heldout("ct", args.images)
    full = CT(64, n_views=64, sigma=SIGMA)
    for V in (8, 16):
        for i in range(x_all.shape[0]):
            x = x_all[i:i + 1]
            rec, sel = run_ads(full, x, prior, i, args, budget=V)
            rows.append({"task": "ct", "setting": f"{V} views", "image": i, "mask": "ads-own", "measured": V,
                         **{k[4:]: v for k, v in sel.items() if k.startswith("own_")},
                         **{k: v for k, v in sel.items() if not k.startswith("own_")}})
            angle_sets = {"ads": rec.info["angles"], "uniform": full.angles[:: 64 // V]}
            for name, ang in angle_sets.items():
                op = CT(64, angles=ang.sort().values, sigma=SIGMA, rng=torch.Generator().manual_seed(i))
                r = reconstruct(op, x, prior, i, args)
                rows.append({"task": "ct", "setting": f"{V} views", "image": i, "mask": name, "measured": V,
                             "angles": [round(float(a), 2) for a in ang.sort().values],
                             **({k: v for k, v in sel.items() if not k.startswith("own_")} if name == "ads" else
                                {"sel_nfe": 0, "sel_nfe_images": 0, "sel_seconds": 0.0}), **r})
                print(rows[-1], file=sys.stderr, flush=True)


def task_inpainting(prior, args, rows):
    x_all = heldout("ct", args.images)
    full = Inpainting((1, 64, 64), torch.ones(1, 64, 64), sigma=SIGMA)
    R = 4
    for i in range(x_all.shape[0]):
        x = x_all[i:i + 1]
        n = 64 * 64 // R
        perm = torch.randperm(64 * 64, generator=torch.Generator().manual_seed(i))[:n]
        rnd = torch.zeros(64 * 64)
        rnd[perm] = 1
        masks = {"random": (rnd.reshape(1, 64, 64), None)}
        for rule in ("conditional", "topk"):                  # several pixels per event: greedy vs official top-k
            name = "ads" if rule == "conditional" else "ads-topk"
            rec, sel = run_ads(full, x, prior, i, args, acceleration=R, select=rule)
            rows.append({"task": "inpainting", "setting": f"{R}x pixels", "image": i, "mask": f"{name}-own",
                         "measured": int(rec.info["mask"].sum()),
                         **{k[4:]: v for k, v in sel.items() if k.startswith("own_")},
                         **{k: v for k, v in sel.items() if not k.startswith("own_")}})
            masks[name] = (rec.info["mask"], sel)
        for name in ("ads", "ads-topk", "random"):
            mk, sel = masks[name]
            op = Inpainting((1, 64, 64), mk, sigma=SIGMA, rng=torch.Generator().manual_seed(i))
            r = reconstruct(op, x, prior, i, args)
            rows.append({"task": "inpainting", "setting": f"{R}x pixels", "image": i, "mask": name,
                         "measured": int(mk.sum()),
                         **({k: v for k, v in sel.items() if not k.startswith("own_")} if sel is not None else
                            {"sel_nfe": 0, "sel_nfe_images": 0, "sel_seconds": 0.0}), **r})
            print(rows[-1], file=sys.stderr, flush=True)


TASKS = {"mri": ("mri-brainphantom-64", task_mri), "ct": ("ct-phantom-64", task_ct),
         "inpainting": ("ct-phantom-64", task_inpainting)}


def run(args):
    t_all = time.perf_counter()
    rows, priors = [], {}
    for t in args.tasks:
        pname, fn = TASKS[t]
        if pname not in available():
            rows.append({"task": t, "note": f"prior {pname} not installed"})
            continue
        prior = priors[pname] = priors.get(pname) or load(pname)
        fn(prior, args, rows)
    versions = prior_versions(priors)
    steps = {k: v["step"] for k, v in versions.items()}
    summary = []
    keys = []
    for r in rows:
        k = (r.get("task"), r.get("setting"), r.get("mask"))
        if r.get("mask") and k not in keys:
            keys.append(k)
    for k in keys:
        rs = [r for r in rows if (r.get("task"), r.get("setting"), r.get("mask")) == k and "PSNR" in r]
        if not rs:
            continue
        avg = {m: sum(r[m] for r in rs) / len(rs) for m in ("PSNR", "SSIM", "NMSE", "sel_nfe", "sel_nfe_images",
                                                             "sel_seconds") if all(m in r for r in rs)}
        for m in ("rec_nfe", "rec_nfe_images", "rec_seconds"):
            if all(m in r for r in rs):
                avg[m] = sum(r[m] for r in rs) / len(rs)
        summary.append({"task": k[0], "setting": k[1], "mask": k[2], "image": "mean", "measured": rs[0]["measured"],
                        **avg})
    cols = ["task", "setting", "mask", "image", "measured", "PSNR", "SSIM", "NMSE", "sel_nfe", "sel_nfe_images",
            "sel_seconds", "rec_nfe", "rec_nfe_images", "rec_seconds", "note"]
    notes = (__doc__.split("Usage:")[0] + f"\nSettings: ADS preset {args.preset!r}, {args.images} held-out images per "
             f"task, DDS mean of K = {args.chains} chains x 50 NFE. Priors (training step): {steps}. seconds: wall "
             f"time per image on a shared 2-core machine, 1 thread. Total {time.perf_counter() - t_all:.0f} s.")
    path = write_experiment(args, "ads_images", summary + rows, cols, title="ADS masks vs fixed masks (phantoms)",
                            notes=notes, priors=versions, meta={"prior_steps": steps})
    print(path)


if __name__ == "__main__":
    ap = experiment_args(__doc__, images=2)
    ap.add_argument("--chains", type=int, default=2)
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS))
    a = start(ap.parse_args())
    if a.smoke:
        a.images, a.chains = 1, 1
    run(a)

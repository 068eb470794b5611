"""ADS on images with the shipped priors: the ADS-chosen mask / views / pixels against fixed ones, each then
reconstructed with the same sampler and budget (DDS, mean of K chains).

Tasks (held-out phantoms, ``invdiff.datasets.split_seeds("heldout", n)``, never seen in training; noise 0.01):

- ``mri``: complex brain phantoms (2 x 64 x 64, max magnitude 1), single-coil Cartesian MRI; ADS picks k-space
  columns of the fully sampled operator at 4x (16 lines) and 8x (8 lines), after the fastMRI centre block (8 % =
  5 columns at 4x, 4 % = 2 at 8x). Fixed line masks with the same acceleration and the same centre block
  (``invdiff.operators.masks``, seed = image index): equispaced (fastMRI's, random offset; its realised count can
  differ by one), random, Gaussian and ``poisson`` = 1D variable-density Poisson-disc columns
  (``poisson_disc_mask_1d``: W // R lines, density 1/(1 + s d) from the centre block, at least 2 columns apart).
  ``poisson-2d-pts (ref)`` is the 2D Poisson-disc *point* mask (sigpy), kept as a reference only: the same number
  of k-space samples (about 1024 / 512 points) but a cf H x cf W calibration square (5 x 5 points at 4x) instead of
  cf W full columns, and points of the (ky, kx) plane that a 2D Cartesian scan (one phase-encode line per readout)
  cannot acquire separately: a 3D-acquisition reference, not a competitor of the line masks ADS chooses among.
  Prior ``mri-brainphantom-64``.
- ``ct``: CT-like phantoms (1 x 64 x 64), parallel beam; ADS picks 8 or 16 of 64 candidate views over 180 degrees
  vs 8 / 16 uniformly spaced views (every 8th / 4th candidate). Prior ``ct-phantom-64``.
- ``inpainting``: the CT phantoms, ADS picks 25 % of the pixels (4x) vs uniformly random pixels. Prior
  ``ct-phantom-64``. About 43 pixels per acquisition event: ``ads`` chooses them greedily on the conditioned
  particles (``select="conditional"``, the default), ``ads-topk`` takes the 43 best marginal scores (official).

``ads`` runs with ``--preset`` (default "restart": 8 particles x 50 steps, ``predictive="restart"`` (each
acquisition scores the particles at the end of a reverse pass, then a new pass over the last 15 steps),
``score="diag"``; chosen on separate tuning phantoms, ``ads_tune.md``); ``ads-fast`` with ``--baseline-preset``
(default "fast": 8 particles x 50 steps, window (0.5, 1), "gmm" score, Tweedie predictive: the previous table);
DDS data consistency; its measurements are read from the fully sampled data. Inpainting uses
``--inpainting-preset`` (default "fast"). Each mask is then used to simulate the
undersampled measurement (same noise level) and reconstructed with ``dds`` (50 NFE, ``n_samples`` = K chains,
mean), seed = image index, identical for every mask. Reported per task/acceleration/mask: PSNR, SSIM, NMSE (on the
magnitude for MRI, data range 1), measured lines/views/pixels, and the cost of choosing the mask (ADS: NFE =
network calls, NFE_images = images denoised, seconds; 0 for fixed masks) next to the cost of the reconstruction.
``ads-own`` is the ADS particle mean itself (no second reconstruction). Mean rows of the
other masks: ``ads_minus`` = mean over images of PSNR(ads) - PSNR(this mask) (paired, same image and noise), ``se``
its standard error, ``ads_wins`` = images where ADS is higher. CT: ``max_gap`` = the largest angular gap between
the views (degrees, cyclic over 180; uniform: 180 / views). The official ADS fastMRI setting costs
1.6e5 images denoised per slice (16 particles x 10 000 steps) plus as many VJPs.

Reading the committed table (6 images; differences are paired, +- one standard error):

- MRI 4x: the "restart" ADS mask beats every fixed line mask on all 6 images (vs Gaussian, the best: +1.8 +- 0.5
  dB) at 215 network calls / 1 720 images denoised (1.1 % of the official 1.6e5); preset "fast" (400 images) also
  beats them on average (28.3 dB vs 27.8). MRI 8x: ADS 23.4 dB vs Gaussian 23.1 (+0.3 +- 0.5, 3 of 6): a tie with
  the Gaussian mask, above equispaced, random and 1D Poisson-disc lines on 6 of 6 (140 calls / 1 120 images). The
  2D point mask is higher at both (a 3D-acquisition reference, see above), and so is ADS's own particle mean
  (``ads-own``, more network calls than the 50-NFE DDS reconstruction).
- CT: ADS loses to uniform views (8 views -0.34 +- 0.17 dB, 16 views -0.37 +- 0.22, 1 of 6 images each). The
  information a parallel-beam view adds depends mainly on its angular distance to the views already taken (Fourier
  slice theorem: each view fills one radial line of the spectrum; for roughly isotropic objects no direction is
  special), so greedy maximum entropy can at best fill the largest gap each time, which reproduces uniform spacing
  only when the particle spread is exact. ADS's largest gap (``max_gap``) is 30.9 degrees at 8 views (uniform 22.5)
  and 15.9 at 16 (uniform 11.25), while it never takes a near-duplicate (smallest gap in the committed angle lists:
  11.2 degrees at 8 views, 5.6 at 16, never adjacent candidates), so closing the neighbours of acquired views
  would not change its choices: what it loses to is the uneven large gaps. On the tuning phantoms (``ads_tune.md``) moving each uniform view by one
  candidate (2.8 degrees) cost 0.01 dB at 8 views and 1.1 dB at 16, random views 3.2 / 1.5 dB, and no ADS setting
  (score, particles, restart) beat uniform: uniform views are near-optimal here and ADS has nothing to find.
- Inpainting 25 % of the pixels (preset "fast"): ADS +2.9 +- 1.2 dB over random pixels (5 of 6); the official top-k
  (clusters of neighbouring pixels) is below random.

Usage: python benchmarks/ads.py [--images 6] [--chains 2] [--preset restart] [--baseline-preset fast]
       [--inpainting-preset fast] [--tasks mri ct inpainting] [--threads 1] [--smoke] [--resummarise]
"""
from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import torch

import invdiff
from invdiff.bench.harness import experiment_args, heldout, measured, prior_versions, quality, start, write_experiment
from invdiff.metrics import nmse
from invdiff.operators import CT, MRI, Inpainting, default_center_fraction, make_mask
from invdiff.priors import available, load

SIGMA = 0.01
_ZERO = {"sel_nfe": 0, "sel_nfe_images": 0, "sel_seconds": 0.0}


def scores(est, x) -> dict:
    """PSNR / SSIM (peak 1) and NMSE, magnitude images for MRI."""
    return {**quality(est, x), "NMSE": float(nmse(est, x, complex=x.shape[1] == 2).mean())}


def reconstruct(op, x, prior, seed, args):
    y = op(x)
    rec, cost = measured(invdiff.solve, y, op, prior, solver="dds", seed=seed, n_samples=args.chains, num_steps=50)
    return {**scores(rec.mean, x), "rec_nfe": rec.nfe, "rec_nfe_images": rec.info["nfe_images"],
            "rec_seconds": cost["seconds"]}


def run_ads(full, x, prior, seed, args, preset=None, **opts):
    g = torch.Generator().manual_seed(10_000 + seed)
    full.noise_model.rng = g
    y_full = full(x)
    rec, cost = measured(invdiff.solve, y_full, full, prior, solver="ads", seed=seed,
                          preset=preset or args.preset, **opts)
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
            rec_b, sel_b = run_ads(full, x, prior, i, args, preset=args.baseline_preset, acceleration=R)
            masks = {"ads": rec.info["mask"], "ads-fast": rec_b.info["mask"]}
            for kind in ("equispaced", "random", "gaussian", "poisson-1d", "poisson"):
                for attempt in range(10):          # sigpy's Poisson-disc search misses some (seed, R) pairs
                    try:
                        name = {"poisson-1d": "poisson", "poisson": "poisson-2d-pts (ref)"}.get(kind, kind)
                        masks[name] = make_mask(kind, (64, 64), R, cf, seed=i + 1000 * attempt)
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
                points = name.startswith("poisson-2d")
                measured = int(mk.sum()) if points else int(mk[0].sum())
                rows.append({"task": "mri", "setting": f"{R}x", "image": i, "mask": name,
                             "measured": measured if not points else f"{measured} pts",
                             **({k: v for k, v in {"ads": sel, "ads-fast": sel_b}.get(name, _ZERO).items()
                                 if not k.startswith("own_")}), **r})
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
            rec_b, sel_b = run_ads(full, x, prior, i, args, preset=args.baseline_preset, budget=V)
            angle_sets = {"ads": rec.info["angles"], "ads-fast": rec_b.info["angles"],
                          "uniform": full.angles[:: 64 // V]}
            for name, ang in angle_sets.items():
                op = CT(64, angles=ang.sort().values, sigma=SIGMA, rng=torch.Generator().manual_seed(i))
                r = reconstruct(op, x, prior, i, args)
                rows.append({"task": "ct", "setting": f"{V} views", "image": i, "mask": name, "measured": V,
                             "angles": [round(float(a), 2) for a in ang.sort().values],
                             **({k: v for k, v in {"ads": sel, "ads-fast": sel_b}.get(name, _ZERO).items()
                                 if not k.startswith("own_")}), **r})
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
            rec, sel = run_ads(full, x, prior, i, args, preset=args.inpainting_preset, acceleration=R, select=rule)
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


def max_gap(angles) -> float:
    """Largest angular gap (degrees) between the views, cyclic over 180 degrees (parallel beam)."""
    a = sorted(float(v) % 180 for v in angles)
    return max([b - c for c, b in zip(a, a[1:])] + [a[0] + 180 - a[-1]])


def run(args):
    t_all = time.perf_counter()
    rows, priors, total = [], {}, None
    if args.resummarise:                    # tables again from the per-image rows of an earlier run (no solver)
        old = json.loads((Path(args.out) / "ads_images.json").read_text())
        rows = [r for r in old["rows"] if r.get("image") != "mean"]
        meta = old["meta"]
        for k in ("images", "chains", "preset", "baseline_preset", "inpainting_preset", "tasks", "command"):
            if k in meta:
                setattr(args, k, meta[k])
        versions, total = meta["priors"], meta.get("total_seconds")
        md = Path(args.out) / "ads_images.md"
        found = re.search(r"Total (\d+) s\.", md.read_text()) if total is None and md.exists() else None
        total = float(found.group(1)) if found else total
    else:
        for t in args.tasks:
            pname, fn = TASKS[t]
            if pname not in available():
                rows.append({"task": t, "note": f"prior {pname} not installed"})
                continue
            prior = priors[pname] = priors.get(pname) or load(pname)
            fn(prior, args, rows)
        versions = prior_versions(priors)
        total = time.perf_counter() - t_all
    steps = {k: v["step"] for k, v in versions.items()}
    for r in rows:
        if "angles" in r:
            r["max_gap"] = max_gap(r["angles"])
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
                                                             "sel_seconds", "max_gap") if all(m in r for r in rs)}
        for m in ("rec_nfe", "rec_nfe_images", "rec_seconds"):
            if all(m in r for r in rs):
                avg[m] = sum(r[m] for r in rs) / len(rs)
        row = {"task": k[0], "setting": k[1], "mask": k[2], "image": "mean", "measured": rs[0]["measured"], **avg}
        if k[2] not in ("ads", "ads-own") and not k[2].endswith("-own"):       # ADS minus this mask, paired
            ads = {r["image"]: r["PSNR"] for r in rows if (r.get("task"), r.get("setting"), r.get("mask")) ==
                   (k[0], k[1], "ads") and "PSNR" in r}
            d = [ads[r["image"]] - r["PSNR"] for r in rs if r["image"] in ads]
            if d and k[2] != "ads-topk":
                m = sum(d) / len(d)
                se = (sum((v - m) ** 2 for v in d) / (len(d) - 1) / len(d)) ** 0.5 if len(d) > 1 else float("nan")
                row.update({"ads_minus": m, "se": se, "ads_wins": f"{sum(v > 0 for v in d)}/{len(d)}"})
        summary.append(row)
    cols = ["task", "setting", "mask", "image", "measured", "PSNR", "SSIM", "NMSE", "ads_minus", "se", "ads_wins",
            "max_gap", "sel_nfe", "sel_nfe_images", "sel_seconds", "rec_nfe", "rec_nfe_images", "rec_seconds", "note"]
    notes = (__doc__.split("Usage:")[0] + f"\nSettings: ADS preset {args.preset!r} (ads), {args.baseline_preset!r} "
             f"(ads-fast), {args.inpainting_preset!r} (inpainting), {args.images} held-out images per "
             f"task, DDS mean of K = {args.chains} chains x 50 NFE. Priors (training step): {steps}. seconds: wall "
             f"time per image on a shared 2-core machine, 1 thread." + (f" Total {total:.0f} s." if total else ""))
    path = write_experiment(args, "ads_images", summary + rows, cols, title="ADS masks vs fixed masks (phantoms)",
                            notes=notes, priors=versions, meta={"prior_steps": steps, "total_seconds": total})
    print(path)


if __name__ == "__main__":
    ap = experiment_args(__doc__, images=6)
    ap.add_argument("--chains", type=int, default=2)
    ap.add_argument("--preset", default="restart")
    ap.add_argument("--baseline-preset", default="fast")
    ap.add_argument("--inpainting-preset", default="fast")
    ap.add_argument("--resummarise", action="store_true",
                    help="rewrite the tables from the per-image rows of --out/ads_images.json (runs no solver)")
    ap.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS))
    a = start(ap.parse_args())
    if a.smoke:
        a.images, a.chains = 1, 1
    run(a)

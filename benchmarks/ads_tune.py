"""ADS settings chosen on tuning phantoms (not the evaluation images of ``benchmarks/ads.py``).

Tuning images: held-out phantoms ``invdiff.datasets.split_seeds("heldout", n, start=100)`` (never seen in
training, disjoint from the evaluation images ``start=0..`` of ``ads_images.md``). Same tasks, noise, fixed masks
and reconstruction as ``benchmarks/ads.py``: each mask is reconstructed with ``dds`` (50 NFE, mean of K = 2
chains, seed = image index).

Configurations (``CONFIGS``): the preset "fast" (8 particles x 50 steps, window (0.5, 1), "gmm" score,
``predictive="tweedie"``) and changes to it: the score ("variance", "gauss", "diag"; ``entropy_sigma``), 16
particles, 100 steps, earlier / later windows, all picks in one or two events (``select="conditional"``),
``predictive="restart"`` (particles scored at the end of a reverse pass, next pass from ``restart`` x 50 steps;
the ``per_step=2`` cap of these configs never binds here: at most 24 picks over the 24 steps of the window, one
per event). Per (task, setting, config): mean PSNR of the ADS mask's reconstruction, the paired difference
against the best fixed family (highest mean over these images) and against the best fixed mask of each image
(MRI) or the uniform views (CT), with standard error and wins.

Findings of the committed run (3 tuning phantoms; the table below): at MRI 8x no Tweedie-scored setting beats the
Gaussian line mask (23.7 dB): "fast" 22.6, "variance" 22.5, 16 particles 22.4, 100 steps 21.9, a later or earlier
window or all picks in one or two events lower still. "fast" spends 4 of its 6 free lines on the columns next to
the 2-column centre (+1, +-2, +-3: the largest particle variance), where the Gaussian mask spreads lines to +-5 ...
+-12 (columns printed for these 3 phantoms).
Two changes together do beat it: ``predictive="restart"`` (the particles' spread at t = 0, not the shrunken
mid-chain estimates) and the ``"diag"`` score (sum of per-entry log variances: a column of many moderately
uncertain entries is no longer outranked by the few huge low-frequency ones): 24.3 dB, 2 of 3 images; restart
alone 22.8, diag alone 22.6. Its 8x picks on the 3 phantoms, columns from DC in acquisition order (printed from
``invdiff.solve(..., preset="restart")``): [2, -7, 9, -4, 10, 5], [3, 9, -8, 5, -4, 2], [4, 8, -3, -11, -6, 2]:
spread like the Gaussian mask's, no longer stacked next to the centre. At 4x the same setting gives 30.2 dB vs
27.8 for the best fixed family (3 of 3). Hence the preset "restart" (``invdiff.solvers.ads``). CT: no setting beats uniform views (8 views: restart
-0.12 +- 0.23 dB, diag-restart -0.15; 16 views: restart -0.14, variance -0.17; "fast" -0.47 / -0.64).

CT extra rows (what uniform views are worth): ``jitter`` = the uniform views each moved by a random -1/0/+1
candidate (2.8 degrees), ``random`` = uniformly random views, to measure how much an uneven spread costs.

Usage: python benchmarks/ads_tune.py [--images 3] [--tasks mri ct] [--configs fast variance ...]
       [--settings 8x 4x 8 16] [--threads 1] [--smoke]
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ads import SIGMA, reconstruct, run_ads  # noqa: E402

from invdiff.bench.harness import experiment_args, heldout, prior_versions, start, write_experiment  # noqa: E402
from invdiff.operators import CT, MRI, default_center_fraction, make_mask  # noqa: E402
from invdiff.priors import load  # noqa: E402

FIRST = 100
CONFIGS = {
    "fast": {},
    "variance": {"score": "variance"},
    "gauss": {"score": "gauss"},
    "p16": {"particles": 16},
    "p16-variance": {"particles": 16, "score": "variance"},
    "w25": {"window": (0.25, 1.0)},
    "restart": {"predictive": "restart", "restart": 0.7, "per_step": 2},
    "restart-variance": {"predictive": "restart", "restart": 0.7, "per_step": 2, "score": "variance"},
    "one-event": {"window": (0.7, 0.72)},                       # all picks at step 35, greedy conditional
    "one-event-variance": {"window": (0.7, 0.72), "score": "variance"},
    "two-events": {"window": (0.6, 0.64)},
    "one-event-late": {"window": (0.84, 0.86)},
    "gauss-s1e-3": {"score": "gauss", "entropy_sigma": 1e-3},
    "late": {"window": (0.8, 1.0)},
    "restart3": {"predictive": "restart", "restart": 0.3, "per_step": 2},
    "p16-s100": {"particles": 16, "num_steps": 100},
    "diag": {"score": "diag"},
    "diag-p16": {"score": "diag", "particles": 16},
    "diag-restart": {"score": "diag", "predictive": "restart", "restart": 0.7, "per_step": 2},
    "diag-s1e-3": {"score": "diag", "entropy_sigma": 1e-3},
}


def _paired(a, b):
    d = [x - y for x, y in zip(a, b)]
    m = sum(d) / len(d)
    se = math.sqrt(sum((x - m) ** 2 for x in d) / (len(d) - 1) / len(d)) if len(d) > 1 else float("nan")
    return m, se, sum(x > 0 for x in d)


def run(args):
    t0 = time.perf_counter()
    cache = Path(args.out) / "ads_tune_rows.json"
    rows = json.loads(cache.read_text()) if cache.exists() and not args.smoke else []
    done = {(r["task"], r["setting"], r["image"], r["mask"]) for r in rows}
    priors = {}

    def keep(r):
        rows.append(r)
        print(r, file=sys.stderr, flush=True)
        if not args.smoke:
            cache.write_text(json.dumps(rows))

    for task in args.tasks:
        pname = "mri-brainphantom-64" if task == "mri" else "ct-phantom-64"
        prior = priors[pname] = priors.get(pname) or load(pname)
        x_all = heldout(task, args.images, first=FIRST)
        settings = [s for s in args.settings if (s.endswith("x") if task == "mri" else not s.endswith("x"))]
        full = MRI(None, (2, 64, 64), sigma=SIGMA) if task == "mri" else CT(64, n_views=64, sigma=SIGMA)
        for s in settings:
            for i in range(args.images):
                x = x_all[i:i + 1]
                seed = FIRST + i
                fixed = {}
                if task == "mri":
                    R = int(s[:-1])
                    for kind in ("gaussian", "poisson-1d", "equispaced"):
                        fixed[kind] = make_mask(kind, (64, 64), R, default_center_fraction(R), seed=seed)
                else:
                    V = int(s)
                    g = torch.Generator().manual_seed(seed)
                    uni = torch.arange(0, 64, 64 // V)
                    fixed["uniform"] = uni
                    fixed["jitter"] = (uni + torch.randint(-1, 2, (V,), generator=g)) % 64
                    fixed["random"] = torch.randperm(64, generator=g)[:V]
                for name, m in fixed.items():
                    if (task, s, i, name) in done:
                        continue
                    op = (MRI(m, (2, 64, 64), sigma=SIGMA, rng=torch.Generator().manual_seed(seed)) if task == "mri"
                          else CT(64, angles=full.angles[m].sort().values, sigma=SIGMA,
                                  rng=torch.Generator().manual_seed(seed)))
                    keep({"task": task, "setting": s, "image": i, "mask": name, "fixed": True,
                          **reconstruct(op, x, prior, seed, args)})
                for c in args.configs:
                    if (task, s, i, c) in done:
                        continue
                    opts = {"acceleration": int(s[:-1])} if task == "mri" else {"budget": int(s)}
                    rec, sel = run_ads(full, x, prior, seed, args, **opts, **CONFIGS[c])
                    if task == "mri":
                        op = MRI(rec.info["mask"], (2, 64, 64), sigma=SIGMA, rng=torch.Generator().manual_seed(seed))
                    else:
                        op = CT(64, angles=rec.info["angles"].sort().values, sigma=SIGMA,
                                rng=torch.Generator().manual_seed(seed))
                    keep({"task": task, "setting": s, "image": i, "mask": c, "fixed": False,
                          **{k: v for k, v in sel.items() if not k.startswith("own_")},
                          "own_PSNR": sel["own_PSNR"], **reconstruct(op, x, prior, seed, args)})
    for task in {r["task"] for r in rows}:                 # versions of every prior the cached rows used
        pname = "mri-brainphantom-64" if task == "mri" else "ct-phantom-64"
        priors[pname] = priors.get(pname) or load(pname)
    # summary: per (task, setting, mask) mean PSNR; ADS configs paired against the best fixed mask of each image
    summary = []
    keys = sorted({(r["task"], r["setting"]) for r in rows})
    for task, s in keys:
        rs = [r for r in rows if r["task"] == task and r["setting"] == s]
        imgs = sorted({r["image"] for r in rs})
        fixed_names = sorted({r["mask"] for r in rs if r["fixed"]})
        ref = "uniform" if task == "ct" else None
        by = {(r["mask"], r["image"]): r for r in rs}
        mean_of = {f: sum(by[f, i]["PSNR"] for i in imgs if (f, i) in by) / max(1, sum((f, i) in by for i in imgs))
                   for f in fixed_names}
        fam = "uniform" if ref else max(fixed_names, key=mean_of.get)
        for name in fixed_names + sorted({r["mask"] for r in rs if not r["fixed"]}):
            ii = [i for i in imgs if (name, i) in by and all((f, i) in by for f in fixed_names)]
            if not ii:
                continue
            p = [by[name, i]["PSNR"] for i in ii]
            others = [f for f in fixed_names if f != name and (ref is None or f == ref)]
            best = [max(by[f, i]["PSNR"] for f in others) for i in ii] if others else p
            m, se, wins = _paired(p, best)
            mf, sef, winsf = _paired(p, [by[fam, i]["PSNR"] for i in ii])
            row = {"task": task, "setting": s, "mask": name, "images": len(ii), "PSNR": sum(p) / len(p),
                   "SSIM": sum(by[name, i]["SSIM"] for i in ii) / len(ii), "family": fam, "diff_family": mf,
                   "se_family": sef, "wins_family": winsf,
                   "vs": "uniform" if ref else "best other fixed", "diff": m, "se": se, "wins": wins}
            if not by[name, ii[0]]["fixed"]:
                row.update({k: sum(by[name, i][k] for i in ii) / len(ii) for k in ("sel_nfe", "sel_nfe_images",
                                                                                    "sel_seconds", "own_PSNR")})
            summary.append(row)
    cols = ["task", "setting", "mask", "images", "PSNR", "SSIM", "family", "diff_family", "se_family", "wins_family",
            "vs", "diff", "se", "wins", "own_PSNR", "sel_nfe",
            "sel_nfe_images", "sel_seconds"]
    notes = (__doc__.split("Usage:")[0] + "\n``diff_family``: mean paired PSNR difference (dB) against the fixed "
             "family named in ``family``; ``diff``: the same against, per image, the best "
             "of the other fixed masks (MRI) or the uniform views (CT); ``se`` its standard error; ``wins`` images "
             "where it is positive. ``own_PSNR``: the ADS particle mean. ``sel_*``: cost of the choice (network "
             "calls, images denoised, seconds on a shared 2-core machine, 1 thread). "
             f"Configurations: {json.dumps({k: v for k, v in CONFIGS.items()})}. "
             "Rows are cached per (task, setting, image, mask) in ads_tune_rows.json and were gathered over several "
             "invocations (one per group of configurations); the command below rewrote the table. "
             f"This invocation: {time.perf_counter() - t0:.0f} s.")
    path = write_experiment(args, "ads_tune", summary, cols, title="ADS settings on tuning phantoms",
                            notes=notes, priors=prior_versions(priors))
    print(path)


if __name__ == "__main__":
    ap = experiment_args(__doc__, images=3)
    ap.add_argument("--chains", type=int, default=2)
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--tasks", nargs="*", default=["mri", "ct"], choices=["mri", "ct"])
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--settings", nargs="*", default=["8x", "4x", "8", "16"])
    a = start(ap.parse_args())
    if a.smoke:
        a.images, a.chains, a.configs = 2, 1, ["fast"]
    run(a)

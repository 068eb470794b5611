"""Real-size CT (issue 11): diffusion solvers with a patch prior vs TV and FBP on 256 x 256 (and 512 x 512)
sparse-view CT of held-out anatomy-like slices.

Task: ``--images`` held-out ``ct-anatomy`` slices (seeds >= 1e9 + 9000, never seen in training), parallel-beam CT
with ``--views`` views over 180 degrees, normalised Radon (||A|| = 1), noise 0.01, the same measurement for every
method (noise seed per image). Every method is tuned on ``--tune-images`` other held-out slices (seeds 1e9 + 9500..)
per (size, views), then run on the evaluation slices:

- FBP (deepinv's filtered back-projection);
- TV (Chambolle-Pock, ``n_iter`` 300): lambda from ``TV_LAMS`` (a 1-2-5 grid from 1e-4 to 2e-2);
- the diffusion solvers of ``--solvers`` with the prior: DDS (50 NFE) with ``gamma`` and DiffPIR (100 NFE) with
  ``lambda_`` from ``{1/3, 1, 3} x`` the value the solver would use (measured table / automatic), posterior mean of
  ``--chains`` chains;
- DDS with the shipped whole-image ``ct-phantom-64`` (defaults, same chains): what users got before.

PSNR / SSIM with peak 1 on the [0, 1] image (reconstructions clipped to [0, 1]), per image and averaged; the
paired difference best diffusion solver - TV with its standard error over images; NFE, seconds per image (1 torch
thread; wall time on a shared 2-core machine: a row taken from the cache keeps the seconds of the invocation that
measured it, under that invocation's load), peak memory growth. Rows are cached per (size, views, method, options,
prior, image) in ``--cache`` so an interrupted run resumes and a newer prior only re-runs its own rows.

Usage: python benchmarks/realsize_ct.py --prior ct-anatomy-patch64 [--sizes 256] [--views 8 16 32] [--images 4]
"""
from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import torch

import invdiff
from invdiff.bench import measure, write_results
from invdiff.bench.harness import RowCache, option_default, weights_sha
from invdiff.datasets.anatomy import ct_anatomy
from invdiff.datasets.phantoms import split_seeds
from invdiff.metrics import psnr, ssim
from invdiff.operators import CT
from invdiff.priors import load

NOISE = 0.01
TV_LAMS = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2)
#: per diffusion solver: the option tuned on the tuning slices, its factors around the solver's default, steps
TUNED_OPTION = {"dds": "gamma", "diffpir": "lambda_"}
FACTORS = {"dds": (1 / 3, 1.0, 3.0), "diffpir": (1 / 3, 1.0, 3.0)}
STEPS = {"dds": 50, "diffpir": 100}


def one(x, i: int, size: int, views: int, solver: str, prior, options: dict) -> dict:
    """Reconstruct image ``x`` (1, 1, N, N) with the measurement of seed ``i``; metrics, NFE, seconds, memory."""
    op = CT(size, n_views=views, sigma=NOISE, rng=torch.Generator().manual_seed(100 + i))
    with torch.no_grad():
        y = op(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = measure(lambda: invdiff.solve(y, op, prior, solver=solver, seed=i, progress=False, **options))
    r = m.value.mean.detach().clamp(0, 1)
    return {"PSNR": float(psnr(r, x, data_range=1.0)), "SSIM": float(ssim(r, x, data_range=1.0)),
            "nfe": int(m.value.nfe), "seconds": m.seconds, "peak_mb": m.peak_mb}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", required=True, help="the real-size prior: a shipped name or a .safetensors file")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256])
    ap.add_argument("--views", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--tune-images", type=int, default=1)
    ap.add_argument("--chains", type=int, default=2)
    ap.add_argument("--solvers", type=lambda v: v.split(","), default=["dds", "diffpir"])
    ap.add_argument("--inference", default="conv", help="patch prior inference: conv or tiled")
    ap.add_argument("--no-shipped", action="store_true", help="skip the ct-phantom-64 rows")
    ap.add_argument("--cache", default=None, help="folder of per-row JSON files (resume)")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--name", default="realsize_ct")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    cache = RowCache(a.cache)
    prior = load(a.prior)
    if getattr(prior, "patch_size", None):
        prior = prior.set_inference(a.inference, seed=0)
    shipped = None if a.no_shipped else load("ct-phantom-64")
    tags = {"patch": f"{Path(a.prior).stem}@{weights_sha(a.prior)}/{a.inference}", "shipped": f"ct-phantom-64@{weights_sha('ct-phantom-64')}"}
    step = (prior.info or {}).get("step")
    rows, per_image, t0 = [], [], time.time()

    def row(size, views, method, which, solver, options, xs, first, kind):
        p = {"patch": prior, "shipped": shipped, None: None}[which]
        out = []
        for j in range(len(xs)):
            key = f"{size}_{views}_{solver}_{sorted(options.items())}_{tags.get(which, '-')}_{kind}{first + j}"
            r = cache.get(key, lambda: one(xs[j:j + 1], first + j, size, views, solver, p, options))
            out.append(r)
        return out

    for size in a.sizes:
        x = ct_anatomy(split_seeds("heldout", a.images, start=9000), size)
        xt = ct_anatomy(split_seeds("heldout", a.tune_images, start=9500), size)
        for views in a.views:
            def mean(rs, k="PSNR"):
                return sum(r[k] for r in rs) / len(rs)

            tv_tune = {lam: mean(row(size, views, "TV", None, "tv", {"lam": lam}, xt, 0, "t")) for lam in TV_LAMS}
            lam = max(tv_tune, key=tv_tune.get)
            methods = [("FBP", "-", None, "fbp", {}),
                       (f"TV (lam {lam:g}, tuned)", "-", None, "tv", {"lam": lam})]
            tuning = {"TV": tv_tune}
            op0 = CT(size, n_views=views, sigma=NOISE)
            for solver in a.solvers:
                opt, g0 = TUNED_OPTION[solver], option_default(solver, TUNED_OPTION[solver], op0, prior)
                tune = {f * g0: mean(row(size, views, solver, "patch", solver,
                                         {opt: f * g0, "num_steps": STEPS[solver]}, xt, 0, "t"))
                        for f in FACTORS[solver]}
                best = max(tune, key=tune.get)
                tuning[solver] = tune
                methods.append((f"{solver} ({opt} {best:.3g}, tuned; {STEPS[solver]} steps, mean of {a.chains})",
                                tags["patch"], "patch", solver,
                                {opt: best, "num_steps": STEPS[solver], "n_samples": a.chains}))
            if shipped is not None:
                methods.append((f"dds (defaults, 50 steps, mean of {a.chains})", tags["shipped"], "shipped", "dds",
                                {"num_steps": 50, "n_samples": a.chains}))
            results = {}
            for method, ptag, which, solver, options in methods:
                rs = row(size, views, method, which, solver, options, x, 0, "e")
                results[method] = rs
                for j, r in enumerate(rs):
                    per_image.append({"size": size, "views": views, "method": method, "image": j, **r})
                rows.append({"size": size, "views": views, "method": method, "prior": ptag,
                             "PSNR": mean(rs), "SSIM": mean(rs, "SSIM"), "nfe": rs[0]["nfe"],
                             "seconds": mean(rs, "seconds"), "peak_mb": max(r["peak_mb"] for r in rs), "n": len(rs)})
            tv = results[methods[1][0]]
            diff = [m[0] for m in methods[2:] if m[2] == "patch"]
            best_method = max(diff, key=lambda m: mean(results[m]))
            dd = results[best_method]
            d = [b["PSNR"] - t["PSNR"] for b, t in zip(dd, tv)]
            mu = sum(d) / len(d)
            se = (sum((v - mu) ** 2 for v in d) / max(len(d) - 1, 1) / len(d)) ** 0.5
            rows.append({"size": size, "views": views, "method": f"best diffusion - TV, paired ({best_method})",
                         "prior": "", "PSNR": mu, "SSIM": mean(dd, "SSIM") - mean(tv, "SSIM"), "nfe": None,
                         "seconds": se, "peak_mb": None, "n": len(d),
                         "note": f"PSNR +- {se:.2f} (standard error); tuning-slice PSNR: "
                                 + "; ".join(f"{k} {{" + ", ".join(f"{g:.3g}: {v:.2f}" for g, v in t.items()) + "}"
                                             for k, t in tuning.items())})
            print(rows[-4:], flush=True)
            notes = (__doc__.split("\n\n", 1)[1].rsplit("Usage:", 1)[0] +
                     f"\nPrior: `{tags['patch']}` (training step {step}); {a.images} evaluation and {a.tune_images} "
                     f"tuning slices; wall {time.time() - t0:.0f} s in this invocation (rows from the cache cost "
                     "nothing). In the paired row, `seconds` holds the standard error of the PSNR difference.\n")
            write_results(a.out, a.name, rows, ["size", "views", "method", "prior", "PSNR", "SSIM", "nfe", "seconds",
                                                "peak_mb", "n", "note"],
                          title="Real-size CT: diffusion with a patch prior vs tuned TV (held-out anatomy slices)",
                          notes=notes, meta={"prior": tags["patch"], "step": step, "per_image": per_image})
    return rows


if __name__ == "__main__":
    main()

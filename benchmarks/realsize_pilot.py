"""SHORT PILOT (not a shipped prior): DDS with a patch prior trained briefly on 256 x 256 anatomy-like CT phantoms vs
the shipped 64 x 64 whole-image prior, TV and FBP, sparse-view CT at 256 x 256.

Validates the real-size pipeline end to end (anatomy generator -> patch training with coordinate channels, warm
started from ``ct-phantom-64`` -> export -> DDS at 256); the pilot prior was trained for a few hundred steps on a
shared CPU, far from converged, so its numbers say whether the pipeline works, not what a real-size prior can do
(``scripts/train_realsize.sh`` has the full runs).

Task: 2 held-out ``ct-anatomy`` slices (seeds never seen in training), parallel-beam CT with 16 and 32 views over
180 degrees, normalised Radon (||A|| = 1), noise 0.01. DDS: invdiff defaults, ``--steps`` steps (NFE = steps), the
patch prior in ``conv`` and ``tiled`` inference; TV: lambda tuned per view count on 1 other held-out slice over a
grid; FBP. PSNR / SSIM (peak 1) averaged over the 2 slices; seconds per image (1 torch thread, shared machine);
peak_mb = RSS growth.

Usage: python benchmarks/realsize_pilot.py --prior RUN/NAME.safetensors [--steps 50] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch

import invdiff
from invdiff.bench import measure, write_results
from invdiff.datasets.anatomy import ct_anatomy
from invdiff.datasets.phantoms import split_seeds
from invdiff.metrics import psnr, ssim
from invdiff.operators import CT
from invdiff.priors import load

N, NOISE, VIEWS = 256, 0.01, (16, 32)
TV_LAMS = (3e-4, 1e-3, 3e-3)


def run(x, views, solver, prior=None, **options):
    recs, secs, peak = [], 0.0, 0.0
    for i in range(len(x)):
        op = CT(N, n_views=views, sigma=NOISE, rng=torch.Generator().manual_seed(100 + i))   # same y for every method
        with torch.no_grad():
            y = op(x[i:i + 1])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = measure(lambda: invdiff.solve(y, op, prior, solver=solver, seed=i, **options))
        recs.append(m.value.mean.detach())
        secs += m.seconds
        peak = max(peak, m.peak_mb)
        nfe = m.value.nfe
    r = torch.cat(recs).clamp(0, 1)
    return {"PSNR": float(psnr(r, x, data_range=1.0).mean()), "SSIM": float(ssim(r, x, data_range=1.0).mean()),
            "nfe": nfe, "seconds": secs / len(x), "peak_mb": peak}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", required=True)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--name", default="realsize_pilot")
    ap.add_argument("--modes", nargs="+", default=["conv", "tiled"], help="inference modes of the pilot prior")
    ap.add_argument("--views", type=int, nargs="+", default=list(VIEWS))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    x = ct_anatomy(split_seeds("heldout", 2, start=9000), N)
    x_tune = ct_anatomy(split_seeds("heldout", 1, start=9500), N)
    pilot, shipped = load(a.prior), load("ct-phantom-64")
    rows = []
    step = (pilot.info or {}).get("step")
    notes = (__doc__.split("\n\n", 1)[1].rsplit("Usage:", 1)[0] +
             f"\nPilot prior: `{Path(a.prior).name}` at training step {step} (warm start from ct-phantom-64 at step "
             f"{(pilot.info or {}).get('training_config', {}).get('init_step')}), patch {pilot.patch_size}, trained on "
             f"{pilot.trained_resolution} images, positional channels {pilot.pos_channels}; pilot inference modes "
             f"measured: {a.modes}.\n")

    def save():  # after every row: a partial table survives an interrupted run
        write_results(a.out, a.name, rows, ["views", "method", "prior", "PSNR", "SSIM", "nfe", "seconds", "peak_mb"],
                      title="SHORT PILOT: real-size patch prior (not shipped) - DDS vs TV at 256x256 sparse-view CT",
                      notes=notes, meta={"prior": Path(a.prior).name, "steps": a.steps, "step": step})

    for v in a.views:
        op = v
        best = max(TV_LAMS, key=lambda lam: run(x_tune, op, "tv", lam=lam)["PSNR"])
        jobs = [("FBP", "-", lambda: run(x, op, "fbp")),
                (f"TV (lam {best}, tuned)", "-", lambda: run(x, op, "tv", lam=best)),
                ("DDS", "ct-phantom-64 (shipped, whole 64x64)", lambda: run(x, op, "dds", shipped, num_steps=a.steps))]
        for mode in a.modes:
            jobs.append(("DDS", f"pilot patch prior ({mode})",
                         lambda mode=mode: run(x, op, "dds", pilot.set_inference(mode, seed=0), num_steps=a.steps)))
        for method, prior, job in jobs:
            rows.append({"views": v, "method": method, "prior": prior, **job()})
            print(rows[-1], flush=True)
            save()


if __name__ == "__main__":
    main()

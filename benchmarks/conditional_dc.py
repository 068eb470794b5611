"""Conditional diffusion with DC in every reverse step (``solver="conditional-dc"``) against the same conditional model
without DC, unconditional DDS and DPS with the shipped unconditional prior, and l1-wavelet; robustness to unseen
operators; calibration of the 90 % per-pixel intervals.

Tasks: 64 x 64 held-out brain phantoms (seeds >= 1e9 + 900000: never in training, not the model card's), complex
images as 2 channels, k-space noise std ``--noise`` (0.01) per real component, one fixed mask per task (seed 0):

- in distribution (mask family and accelerations seen in training): ``mri-4x-1coil``, ``mri-4x-8coil``,
  ``mri-8x-1coil``, ``mri-8x-8coil``: fastMRI "random" column masks with fastMRI centre fractions (0.08 at 4x,
  0.04 at 8x), single coil or 8 birdcage coils;
- shifted (not seen in training): ``mri-12x-8coil`` (random columns at 12x, outside the trained 2-10x) and
  ``mri-poisson6x-8coil`` (2D variable-density Poisson-disc mask at 6x, a family never seen); the robustness
  table reports each method's drop from ``mri-8x-8coil``.

Methods (all on the same images; each method is run once on the batch of images, ``seconds`` = wall time / images;
every solver with its defaults, the measured per-operator defaults of ``invdiff.solvers.defaults`` included: column
``options`` = what the script set, ``measured`` = what the defaults table added):
``conditional-dc`` (hard k-space replacement for single coil, noisy prox for 8 coils; 20/50/100 NFE, one sample),
``conditional-dc`` mean of K samples (50 NFE), the same conditional model without DC (``dc="none"``, 50 NFE), DDS
(defaults, 50/100 NFE) and DPS (``--dps-steps`` NFE, weight ``--dps-weight``, first ``--dps`` images) with the
shipped unconditional ``mri-brainphantom-64``, l1-wavelet (lambda tuned on 2 other held-out phantoms per task), the
adjoint (zero-filled, coil-combined).

Metrics (fastMRI protocol on our slices): magnitude images, PSNR and SSIM with data_range = the target's max
magnitude (each phantom is its own "volume"), NMSE; ``coverage90``: fraction of pixels whose ground-truth magnitude
lies in the central 90 % interval of the K samples' magnitudes (over all pixels of all images; calibrated = 0.90).

Usage: python benchmarks/conditional_dc.py --prior mri-brainphantom-64-cond [--eval 4] [--samples 8] [--dps 2]
       [--dps-steps 1000] [--name conditional_dc] [--note "..."] [--quick] [--sweep] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

import invdiff
from invdiff.bench import measure, write_results
from invdiff.datasets import mri_phantoms, split_seeds
from invdiff.metrics import coverage, nmse, psnr, ssim
from invdiff.operators import MRI, MultiCoilMRI, birdcage_maps, default_center_fraction, make_mask
from invdiff.priors import load

N = 64
TASKS = {  # name: (mask family, acceleration, coils, shifted?)
    "mri-4x-1coil": ("random", 4, 1, False),
    "mri-4x-8coil": ("random", 4, 8, False),
    "mri-8x-1coil": ("random", 8, 1, False),
    "mri-8x-8coil": ("random", 8, 8, False),
    "mri-12x-8coil": ("random", 12, 8, True),
    "mri-poisson6x-8coil": ("poisson", 6, 8, True),
}
REFERENCE_TASK = "mri-8x-8coil"
L1_LAMS = (1e-3, 3e-3, 1e-2, 3e-2)
SEED_START = 900_000


def make_operator(task: str, noise: float):
    family, acc, coils, _ = TASKS[task]
    mask = make_mask(family, (N, N), acc, default_center_fraction(acc), seed=0)
    g = torch.Generator().manual_seed(0)
    if coils == 1:
        return MRI(mask, (2, N, N), sigma=noise, rng=g)
    return MultiCoilMRI(mask, birdcage_maps(coils, (N, N)), (2, N, N), sigma=noise, rng=g)


def mag(x):
    return x.pow(2).sum(1, keepdim=True).sqrt()


def scores(est, x) -> dict:
    return {"PSNR": float(psnr(est, x, complex=True).mean()), "SSIM": float(ssim(est, x, complex=True).mean()),
            "NMSE": float(nmse(est, x, complex=True).mean())}


def tune_l1(task: str, noise: float) -> float:
    x = mri_phantoms(split_seeds("heldout", 2, start=SEED_START + 500), N)
    op = make_operator(task, noise)
    y = op(x)
    return max(L1_LAMS, key=lambda lam: scores(invdiff.solve(y, op, solver="l1-wavelet", lam=lam).mean, x)["PSNR"])


def run_task(task: str, a, cond_prior, uncond_prior) -> list[dict]:
    x = mri_phantoms(split_seeds("heldout", a.eval, start=SEED_START), N)
    op = make_operator(task, a.noise)
    y = op(x)
    nfes = (20, 50) if a.quick else (20, 50, 100)
    runs = [("adjoint", "adjoint", None, {}, a.eval, 1),
            ("l1-wavelet", "l1-wavelet", None, {"lam": tune_l1(task, a.noise)}, a.eval, 1)]
    runs += [(f"conditional-dc {n}", "conditional-dc", cond_prior, {"num_steps": n}, a.eval, 1) for n in nfes]
    runs += [(f"conditional-dc {50} mean of K", "conditional-dc", cond_prior, {"num_steps": 50}, a.eval, a.samples),
             ("conditional, no DC", "conditional-dc", cond_prior, {"num_steps": 50, "dc": "none"}, a.eval, 1)]
    runs += [(f"dds {n}", "dds", uncond_prior, {"num_steps": n}, a.eval, 1) for n in (50,) + (() if a.quick else (100,))]
    runs += [(f"dds {50} mean of K", "dds", uncond_prior, {"num_steps": 50}, a.eval, a.samples)]
    if a.dps > 0:
        runs.append(("dps", "dps", uncond_prior, {"num_steps": a.dps_steps, "weight": a.dps_weight}, min(a.dps, a.eval), 1))
    rows = []
    for label, solver, prior, opts, n_img, k in runs:
        c0 = time.process_time()
        m = measure(invdiff.solve, y[:n_img], op, prior, solver=solver, seed=0, n_samples=k, **opts)
        rec = m.value
        row = {"task": task, "shifted": TASKS[task][3], "method": label, "nfe": rec.nfe, "n_samples": k,
               "options": json.dumps(opts), "measured": json.dumps(rec.info.get("measured_defaults", {}).get("options", {})),
               "n_images": n_img, **scores(rec.mean, x[:n_img]),
               "seconds": m.seconds / n_img, "cpu_s": (time.process_time() - c0) / n_img, "peak_mb": m.peak_mb}
        if k > 1:  # samples (K, B, 2, H, W) -> magnitudes (K, B*H*W)
            smag = rec.samples.pow(2).sum(2).sqrt().flatten(1)
            row["coverage90"] = coverage(smag, mag(x[:n_img]).flatten(), 0.9)
            row["mean_std"] = float(smag.std(0).mean())
        if solver == "conditional-dc":
            row["dc"] = rec.info["dc"]
            row["final_dc"] = rec.info["final_dc"]
        rows.append(row)
        print(f"[conditional-dc bench] {task:22s} {label:32s} NFE {rec.nfe:5d}  PSNR {row['PSNR']:.2f}  "
              f"SSIM {row['SSIM']:.4f}  {row['seconds']:.2f} s/img" + (f"  cov90 {row['coverage90']:.3f}" if k > 1 else ""),
              file=sys.stderr, flush=True)
    return rows


def sweep(a, cond_prior) -> list[dict]:
    """conditional-dc settings at 50 NFE on 2 tuning phantoms per task (held-out seeds + 500, not the evaluation
    images): prox weight gamma and re-noising eta on the 8-coil tasks; eta alone on the single-coil tasks (their
    default DC is hard replacement, which has no weight)."""
    x = mri_phantoms(split_seeds("heldout", 2, start=SEED_START + 500), N)
    rows = []
    grid = {"mri-4x-8coil": (None, 10.0, 3.0), "mri-8x-8coil": (None, 10.0, 3.0), "mri-poisson6x-8coil": (None, 10.0, 3.0),
            "mri-4x-1coil": (None,), "mri-8x-1coil": (None,)}
    for task, gammas in grid.items():
        op = make_operator(task, a.noise)
        y = op(x)
        for gamma in gammas:
            for eta in (0.85, 1.0):
                opts = {"num_steps": 50, "eta": eta, "gamma": gamma}
                m = measure(invdiff.solve, y, op, cond_prior, solver="conditional-dc", seed=0, **opts)
                used = m.value.info.get("gamma")
                rows.append({"task": task, "dc": m.value.info["dc"],
                             "gamma": ("variance rule" if gamma is None else gamma) if m.value.info["dc"] == "prox" else "-",
                             "gamma_used": (sum(used) / len(used)) if used and m.value.info["dc"] == "prox" else None,
                             "eta": eta, "nfe": m.value.nfe, **scores(m.value.mean, x), "seconds": m.seconds / len(x)})
                print(f"[conditional-dc sweep] {task} {opts} PSNR {rows[-1]['PSNR']:.2f}", file=sys.stderr, flush=True)
    return rows


def robustness(rows: list[dict]) -> list[dict]:
    """PSNR drop of every method from the in-distribution reference task to each shifted task."""
    ref = {r["method"]: r["PSNR"] for r in rows if r["task"] == REFERENCE_TASK}
    out = []
    for r in rows:
        if r["shifted"] and r["method"] in ref:
            out.append({"task": r["task"], "method": r["method"], "PSNR": r["PSNR"], f"PSNR {REFERENCE_TASK}": ref[r["method"]],
                        "drop_dB": ref[r["method"]] - r["PSNR"]})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", default="mri-brainphantom-64-cond", help="conditional MRI prior (name or file)")
    ap.add_argument("--uncond", default="mri-brainphantom-64", help="unconditional prior for DDS / DPS")
    ap.add_argument("--eval", type=int, default=4, help="held-out images per task")
    ap.add_argument("--samples", type=int, default=8, help="K samples for the mean-of-K rows and coverage")
    ap.add_argument("--dps", type=int, default=2, help="images DPS runs on (0: no DPS)")
    ap.add_argument("--dps-steps", type=int, default=1000)
    ap.add_argument("--dps-weight", type=float, default=100.0,
                    help="DPS guidance weight (its measured default 1000 is for 1000 steps; at 200 steps it gave 13.4 dB "
                         "against 21.2 dB with 100 on one 8x 8-coil image)")
    ap.add_argument("--noise", type=float, default=0.01)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--sweep", action="store_true", help="only the gamma / eta sweep on tuning phantoms")
    ap.add_argument("--quick", action="store_true", help="fewer NFE settings (a smoke run)")
    ap.add_argument("--name", default="conditional_dc", help="results file stem")
    ap.add_argument("--note", default="", help="a line put at the top of the markdown (e.g. which checkpoint)")
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    cond_prior, uncond_prior = load(a.prior), load(a.uncond)
    meta = {"prior": str(a.prior), "prior_step": (cond_prior.info or {}).get("step"), "noise": a.noise, "size": N}
    if a.sweep:
        write_results(a.out, a.name + "_sweep", sweep(a, cond_prior), ["task", "dc", "gamma", "gamma_used", "eta", "nfe",
                      "PSNR", "SSIM", "NMSE", "seconds"], title="conditional-dc settings sweep (MRI, 50 NFE, tuning phantoms)",
                      notes=(a.note + "\n\n" if a.note else "") + (sweep.__doc__ or "") + "\n\ngamma 'variance rule' = "
                      "GAMMA_VARIANCE / (sigma_y / s)^2 per image (gamma=None; gamma_used = its mean over the images); "
                      "eta = fresh-noise fraction of the re-noising.", meta=meta)
        return 0
    rows = []
    for task in a.tasks.split(","):
        rows += run_task(task, a, cond_prior, uncond_prior)
    meta = {"prior": str(a.prior), "prior_step": (cond_prior.info or {}).get("step"), "uncond": a.uncond,
            "eval_images": a.eval, "samples": a.samples, "dps_images": a.dps, "dps_steps": a.dps_steps,
            "dps_weight": a.dps_weight,
            "noise": a.noise, "size": N, "quick": a.quick, "torch_threads": 1}
    notes = (a.note + "\n\n" if a.note else "") + __doc__.split("\n\nUsage:")[0]
    cols = ["task", "method", "nfe", "n_samples", "PSNR", "SSIM", "NMSE", "coverage90", "mean_std", "n_images",
            "seconds", "cpu_s", "peak_mb", "dc", "final_dc", "options", "measured"]
    write_results(a.out, a.name, rows, cols, title="Conditional diffusion with DC in every reverse step (MRI, held-out phantoms)",
                  notes=notes, meta=meta)
    rob = robustness(rows)
    if rob:
        write_results(a.out, a.name + "_robustness", rob, ["task", "method", "PSNR", f"PSNR {REFERENCE_TASK}", "drop_dB"],
                      title="Robustness: PSNR drop from the in-distribution 8x 8-coil task to unseen operators",
                      notes=(a.note + "\n\n" if a.note else "") + "Same methods, images and noise as `" + a.name +
                      ".md`; drop_dB = PSNR(mri-8x-8coil) - PSNR(shifted task).", meta=meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())

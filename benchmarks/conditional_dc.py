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
magnitude, 1 (each phantom is its own "volume"; ``invdiff.bench.harness.quality``), NMSE; ``coverage90``: fraction
of pixels whose ground-truth magnitude lies in the central 90 % interval of the K samples' magnitudes (over all
pixels of all images); ``cov90_calibrated``: what a calibrated sampler gets with the same K (the interval of K
samples is narrower than the true 90 % interval: 0.56 at K = 4, 0.72 at 8, 0.81 at 16; simulated with Gaussian
samples); ``tau90``: the factor by which the intervals must be widened around the samples' median to cover 90 %.

``--sweep``: conditional-dc settings on 2 tuning phantoms per task (held-out seeds + 500): sigma_max (EDM's 43 or the
trained-range default), eta, and the DC weight (``conditional_dc_sweep.md``). ``--coverage``: interval coverage
against K and eta (``conditional_dc_coverage.md``).

Usage: python benchmarks/conditional_dc.py --prior mri-brainphantom-64-cond [--images 3] [--samples 8] [--dps 1]
       [--dps-steps 1000] [--name conditional_dc] [--note "..."] [--quick] [--sweep] [--coverage] [--cache DIR]
       [--out benchmarks/results] [--smoke]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

import invdiff
from invdiff.bench.harness import (PinnedPriors, RowCache, experiment_args, heldout, measured, prior_versions, quality,
                                   start, write_experiment)
from invdiff.metrics import coverage, nmse
from invdiff.operators import MRI, MultiCoilMRI, birdcage_maps, default_center_fraction, make_mask
from invdiff.priors import load
from invdiff.solvers.conditional_dc import trained_sigma_max

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
TAUS = tuple(round(1.25 ** k, 3) for k in range(0, 25))  # interval widening factors tried for tau90


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
    return {**quality(est, x), "NMSE": float(nmse(est, x, complex=True).mean())}


def calibrated_coverage(k: int, level: float = 0.9, n: int = 200_000) -> float:
    """Coverage of the central ``level`` interval of ``k`` samples for a calibrated sampler (Gaussian simulation)."""
    g = torch.Generator().manual_seed(0)
    return coverage(torch.randn(k, n, generator=g), torch.randn(n, generator=g), level)


def interval_stats(samples, x) -> dict:
    """coverage90, its calibrated value at this K, tau90 (widening factor around the median to reach 0.9), mean_std."""
    smag = samples.pow(2).sum(2).sqrt().flatten(1)                  # (K, B*H*W)
    t = mag(x).flatten()
    med = smag.median(0).values
    tau = next((s for s in TAUS if coverage(med + s * (smag - med), t, 0.9) >= 0.9), None)
    return {"coverage90": coverage(smag, t, 0.9), "cov90_calibrated": calibrated_coverage(smag.shape[0]),
            "tau90": tau, "mean_std": float(smag.std(0).mean())}


def tune_l1(task: str, noise: float) -> float:
    x = heldout("mri", 2, first=SEED_START + 500)
    op = make_operator(task, noise)
    y = op(x)
    return max(L1_LAMS, key=lambda lam: scores(invdiff.solve(y, op, solver="l1-wavelet", lam=lam).mean, x)["PSNR"])


def solve_row(key: str, cache, y, x, op, prior, solver: str, opts: dict, k: int = 1) -> dict:
    """One measured solve (cached by ``key``): scores, cost, the options the script and the defaults table set."""
    def compute():
        rec, cost = measured(invdiff.solve, y, op, prior, solver=solver, seed=0, n_samples=k, **opts)
        row = {**scores(rec.mean, x), **cost, "seconds": cost["seconds"] / len(x), "cpu_s": cost["cpu_s"] / len(x),
               "n_images": len(x), "n_samples": k, "options": json.dumps(opts),
               "measured": json.dumps(rec.info.get("measured_defaults", {}).get("options", {}))}
        if k > 1:
            row.update(interval_stats(rec.samples, x))
        if solver == "conditional-dc":
            row.update({"dc": rec.info["dc"], "final_dc": rec.info["final_dc"], "eta": rec.info["eta"],
                        "sigma_max": rec.info["sigma_max"]})
        return row
    return cache.get(key, compute)


def run_task(task: str, a, cond_prior, uncond_prior, cache) -> list[dict]:
    x = heldout("mri", a.images, first=SEED_START)
    op = make_operator(task, a.noise)
    y = op(x)
    nfes = (20, 50) if a.quick else (20, 50, 100)
    runs = [("adjoint", "adjoint", None, {}, a.images, 1),
            ("l1-wavelet", "l1-wavelet", None, {"lam": tune_l1(task, a.noise)}, a.images, 1)]
    runs += [(f"conditional-dc {n}", "conditional-dc", cond_prior, {"num_steps": n}, a.images, 1) for n in nfes]
    runs += [("conditional-dc 50 mean of K", "conditional-dc", cond_prior, {"num_steps": 50}, a.images, a.samples),
             ("conditional, no DC", "conditional-dc", cond_prior, {"num_steps": 50, "dc": "none"}, a.images, 1),
             ("conditional, no DC, mean of K", "conditional-dc", cond_prior, {"num_steps": 50, "dc": "none"}, a.images,
              a.samples)]
    runs += [(f"dds {n}", "dds", uncond_prior, {"num_steps": n}, a.images, 1) for n in (50,) + (() if a.quick else (100,))]
    runs += [("dds 50 mean of K", "dds", uncond_prior, {"num_steps": 50}, a.images, a.samples)]
    if a.dps > 0:
        dps_opts = {"num_steps": a.dps_steps, **({"weight": a.dps_weight} if a.dps_weight is not None else {})}
        runs.append(("dps", "dps", uncond_prior, dps_opts, min(a.dps, a.images), 1))
    rows = []
    for label, solver, prior, opts, n_img, k in runs:
        key = f"{task}|{label}|{json.dumps(opts, sort_keys=True)}|{n_img}|{k}|{a.noise}"
        r = solve_row(key, cache, y[:n_img], x[:n_img], op, prior, solver, opts, k)
        row = {"task": task, "shifted": TASKS[task][3], "method": label, **r}
        rows.append(row)
        print(f"[conditional-dc bench] {task:22s} {label:32s} NFE {row['nfe']}  PSNR {row['PSNR']:.2f}  "
              f"SSIM {row['SSIM']:.4f}  {row['seconds']:.2f} s/img" + (f"  cov90 {row['coverage90']:.3f}" if k > 1 else ""),
              file=sys.stderr, flush=True)
    return rows


def sweep(a, cond_prior, cache) -> list[dict]:
    """conditional-dc at 50 NFE on 2 tuning phantoms per task (held-out seeds + 500, not the evaluation images):
    sigma_max (EDM's 80 sigma_d / 0.5 = 43, or the default: the top of the prior's training noise range,
    ``trained_sigma_max``) x re-noising eta x the DC: hard replacement or the prox with gamma 10 on single coil, the
    prox weight gamma on 8 coils."""
    x = heldout("mri", 2, first=SEED_START + 500)
    edm = 80.0 * cond_prior.sigma_data / 0.5
    rows = []
    grid = {"mri-4x-1coil": (("hard", None), ("prox", 10.0)), "mri-8x-1coil": (("hard", None), ("prox", 10.0)),
            "mri-4x-8coil": (("prox", 10.0), ("prox", 3.0)), "mri-8x-8coil": (("prox", 10.0), ("prox", 3.0)),
            "mri-poisson6x-8coil": (("prox", 10.0), ("prox", 3.0))}
    for task, dcs in grid.items():
        op = make_operator(task, a.noise)
        y = op(x)
        for smax in (edm, None):
            for dc, gamma in dcs:
                for eta in (0.85, 1.0):
                    opts = {"num_steps": 50, "eta": eta, "dc": dc, "final_dc": dc, "gamma": gamma, "sigma_max": smax}
                    r = solve_row(f"sweep|{task}|{json.dumps(opts, sort_keys=True)}|{a.noise}", cache, y, x, op,
                                  cond_prior, "conditional-dc", opts)
                    rows.append({"task": task, "sigma_max": r["sigma_max"], "dc": dc, "gamma": "-" if gamma is None else gamma,
                                 "eta": eta, **{k: r[k] for k in ("nfe", "PSNR", "SSIM", "NMSE", "seconds")}})
                    print(f"[conditional-dc sweep] {task} {opts} PSNR {r['PSNR']:.2f}", file=sys.stderr, flush=True)
    return rows


def coverage_study(a, cond_prior, cache) -> list[dict]:
    """Interval coverage of conditional-dc (50 NFE, its defaults) against the number of samples K and the fresh-noise
    fraction eta, on the first ``--images`` evaluation images of two tasks."""
    x = heldout("mri", a.images, first=SEED_START)
    rows = []
    for task in ("mri-4x-1coil", "mri-8x-8coil"):
        op = make_operator(task, a.noise)
        y = op(x)
        for eta in (0.85, 1.0):
            for k in (4, 8, 16):
                opts = {"num_steps": 50, "eta": eta}
                r = solve_row(f"coverage|{task}|{json.dumps(opts, sort_keys=True)}|{a.images}|{k}|{a.noise}", cache, y, x,
                              op, cond_prior, "conditional-dc", opts, k)
                rows.append({"task": task, "eta": eta, "K": k, **{c: r[c] for c in ("PSNR", "coverage90",
                             "cov90_calibrated", "tau90", "mean_std", "nfe", "seconds")}})
                print(f"[conditional-dc coverage] {task} eta {eta} K {k} cov90 {r['coverage90']:.3f}", file=sys.stderr,
                      flush=True)
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
    ap = experiment_args(__doc__, images=3)
    ap.add_argument("--prior", default="mri-brainphantom-64-cond", help="conditional MRI prior (shipped name or file)")
    ap.add_argument("--uncond", default="mri-brainphantom-64", help="unconditional prior for DDS / DPS")
    ap.add_argument("--samples", type=int, default=8, help="K samples for the mean-of-K rows and coverage")
    ap.add_argument("--dps", type=int, default=1, help="images DPS runs on (0: no DPS)")
    ap.add_argument("--dps-steps", type=int, default=1000)
    ap.add_argument("--dps-weight", type=float, default=None, help="DPS guidance weight (default: its measured default)")
    ap.add_argument("--noise", type=float, default=0.01)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--sweep", action="store_true", help="only the settings sweep on tuning phantoms")
    ap.add_argument("--coverage", action="store_true", help="only the coverage study (K, eta)")
    ap.add_argument("--quick", action="store_true", help="fewer NFE settings")
    ap.add_argument("--cache", default=None, help="folder of per-row JSON files: a rerun skips rows already measured")
    ap.add_argument("--name", default="conditional_dc", help="results file stem")
    ap.add_argument("--note", default="", help="a line put at the top of the markdown (e.g. which checkpoint)")
    a = start(ap.parse_args(argv))
    if a.smoke:
        a.images, a.samples, a.dps, a.dps_steps, a.quick, a.tasks = 1, 2, 0, 20, True, "mri-4x-1coil"
    pinned = PinnedPriors()
    shipped = not Path(a.prior).suffix
    cond_prior = pinned(a.prior) if shipped else load(a.prior)
    uncond_prior = pinned(a.uncond)
    versions = {**pinned.versions(), **({} if shipped else {a.prior: prior_versions({a.prior: cond_prior})[a.prior]})}
    cache = RowCache(a.cache)
    smax = trained_sigma_max(cond_prior)
    meta = {"prior_step": (cond_prior.info or {}).get("step"), "size": N, "sigma_max_default": smax}
    note = (a.note + "\n\n" if a.note else "")
    if a.sweep:
        write_experiment(a, a.name + "_sweep", sweep(a, cond_prior, cache),
                         ["task", "sigma_max", "dc", "gamma", "eta", "nfe", "PSNR", "SSIM", "NMSE", "seconds"],
                         title="conditional-dc settings sweep (MRI, 50 NFE, tuning phantoms)",
                         notes=note + (sweep.__doc__ or "") + "\n\neta = fresh-noise fraction of the re-noising.",
                         meta=meta, priors=versions)
        return 0
    if a.coverage:
        write_experiment(a, a.name + "_coverage", coverage_study(a, cond_prior, cache),
                         ["task", "eta", "K", "PSNR", "coverage90", "cov90_calibrated", "tau90", "mean_std", "nfe",
                          "seconds"], title="conditional-dc: coverage of the 90 % per-pixel intervals against K and eta",
                         notes=note + (coverage_study.__doc__ or "") + "\n\n" + __doc__.split("Metrics")[1].split("``--sweep``")[0],
                         meta=meta, priors=versions)
        return 0
    rows = []
    for task in a.tasks.split(","):
        rows += run_task(task, a, cond_prior, uncond_prior, cache)
    cols = ["task", "method", "nfe", "n_samples", "PSNR", "SSIM", "NMSE", "coverage90", "cov90_calibrated", "tau90",
            "mean_std", "n_images", "seconds", "cpu_s", "peak_mb", "dc", "final_dc", "eta", "sigma_max", "options",
            "measured"]
    write_experiment(a, a.name, rows, cols, title="Conditional diffusion with DC in every reverse step (MRI, held-out phantoms)",
                     notes=note + __doc__, meta=meta, priors=versions)
    rob = robustness(rows)
    if rob:
        write_experiment(a, a.name + "_robustness", rob, ["task", "method", "PSNR", f"PSNR {REFERENCE_TASK}", "drop_dB"],
                         title="Robustness: PSNR drop from the in-distribution 8x 8-coil task to unseen operators",
                         notes=note + "Same methods, images and noise as `" + a.name + ".md`; drop_dB = PSNR(mri-8x-8coil) "
                         "- PSNR(shifted task).", meta=meta, priors=versions)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""DDS quality per NFE with the shipped priors, against DPS and classical baselines, plus a DDS settings sweep.

Tasks (as ``invdiff demo``): 64 x 64 held-out phantoms (never seen in training),
- ``mri-4x-8coil``: multi-coil MRI, 8 birdcage coils, 4x equispaced Cartesian mask (8 % ACS), k-space noise 0.01,
  prior ``mri-brainphantom-64`` (complex images as 2 channels; metrics on the magnitude, peak 1);
- ``ct-8view``: parallel-beam CT, 8 views over 180 degrees, normalised Radon (||A|| = 1), noise 0.01,
  prior ``ct-phantom-64`` (images in [0, 1], peak 1).

1. Sweep (``dds_sweep.*``), on separate tuning phantoms (seeds held-out + 100..), mean PSNR over them, for each
   NFE in {20, 50, 100}: first DDS's data-consistency rule at the paper's eta (``dc`` "ls", or "prox" with gamma in
   {1 (paper), 3, 10, v/sigma^2 (invdiff's default, 50 here)} and for CT gamma = kappa, the paper's gamma = 1
   converted to the normalised exact adjoint, see ``invdiff.solvers.ztv``), then eta in {0.15, 0.5, 0.85} with the
   best rule; and the same dc grid at 50 NFE with noise 0.05 (default gamma 2), to see gamma follow sigma_y. The
   same phantoms (noise 0.01) tune the classical baselines' lambda. Then, for the posterior mean of ``--chains`` K
   chains (``chains`` column): at 50 and 100 NFE with the best single-chain rule, eta in {0.5, 0.85, 1} and a
   larger gamma (less weight on the prior's estimate), scored on the mean of the K chains.
2. Evaluation (``dds.*``): DDS at 20/50/100 NFE with invdiff's defaults (``dc="auto"``, measured gamma, paper eta
   presets) and with the sweep's best settings, one chain and mean of K chains; DPS at 1000 NFE with its current
   defaults (deepinv, "norm" guidance, the measured weight of ``invdiff.solvers.defaults``) as K chains on the first
   ``--dps`` images only (about K x 30 s per image on an idle core); TV, l1-wavelet (MRI), FBP (CT), adjoint;
   every method on every image separately (no batching of images; K chains run batched, so seconds are per image
   for all K). ``PSNR`` is the PSNR of the reconstruction (the mean of the K chains for K > 1); ``PSNR_chain``
   the mean PSNR of the single chains of the same run (a one-chain figure for DPS without a second 1000-NFE run);
   PSNR/SSIM averaged over the images; ``PSNR_dps_imgs`` averages ``PSNR`` over the DPS images only, for a
   like-for-like comparison; ``seconds`` = wall time per image, ``cpu_s`` = process CPU time per image (1 thread:
   the wall time on an idle machine; the machine running this was shared); ``peak_mb`` = the process's peak resident
   memory during the calls (``invdiff.bench.measure``: counted from zero, so it includes the loaded priors).

Usage: python benchmarks/dds.py [--eval 4] [--dps 2] [--tune 3] [--chains 4] [--out benchmarks/results] [--quick]
       [--threads 1] [--smoke]
"""
from __future__ import annotations

import sys
import time
import warnings

import torch

import invdiff
from invdiff.bench.harness import (PinnedPriors, experiment_args, heldout, installed_versions, measured, quality,
                                   start, write_experiment)
from invdiff.operators import CT, MultiCoilMRI, birdcage_maps, make_mask
from invdiff.priors import available
from invdiff.solvers.dds import ETA_PRESETS, GAMMA_VARIANCE
from invdiff.solvers.ztv import ct_adjoint_scale

N = 64
NOISE = 0.01
NFES = (20, 50, 100)
ETAS = (0.15, 0.5, 0.85)


def make_task(name: str, n: int, first: int = 0, noise: float = NOISE):
    """(x: ``n`` held-out phantoms from seed offset ``first``, physics, prior name, complex?, classical runs
    [(solver, {lam grid})])."""
    if name == "mri-4x-8coil":
        x = heldout("mri", n, first=first, size=N)
        op = MultiCoilMRI(make_mask("equispaced", (N, N), acceleration=4, seed=0), birdcage_maps(8, (N, N)),
                          img_size=(N, N), sigma=noise, rng=torch.Generator().manual_seed(0))
        return x, op, "mri-brainphantom-64", True, [("tv", {"lam": [1e-3, 3e-3, 1e-2]}),
                                                       ("l1-wavelet", {"lam": [1e-3, 3e-3, 1e-2]})]
    x = heldout("ct", n, first=first, size=N)
    op = CT(N, n_views=8, sigma=noise, rng=torch.Generator().manual_seed(0))
    return x, op, "ct-phantom-64", False, [("tv", {"lam": [5e-4, 1e-3, 2e-3, 5e-3]}), ("fbp", {})]


def dc_grid(name: str, op, noise: float) -> list[dict]:
    """"ls" and "prox" with the paper's gamma = 1, invdiff's default v/sigma^2 and neighbours (+ kappa for CT)."""
    auto = round(GAMMA_VARIANCE / noise ** 2, 3)
    gammas = sorted({1.0, 3.0, 10.0, auto} | ({round(ct_adjoint_scale(op), 2)} if name.startswith("ct") else set()))
    return [{"dc": "ls"}] + [{"dc": "prox", "gamma": g} for g in gammas]


def chain_sweep(task, x, y, op, prior, noise, nfes, best, chains, rows) -> dict:
    """Settings for the mean of ``chains`` chains: eta in {0.5, 0.85, 1} x (best gamma, 3 x best gamma) with the best
    single-chain rule, per NFE; appends rows, returns {nfe: options}."""
    found = {}
    for nfe in nfes:
        dc = {k: v for k, v in best[nfe].items() if k != "eta"}
        grid = [dc] + ([{**dc, "gamma": round(3 * dc["gamma"], 3)}] if dc.get("dc") == "prox" else [])
        for d in grid:
            for eta in (0.5, 0.85, 1.0):
                rec = invdiff.solve(y, op, prior, solver="dds", seed=0, n_samples=chains, num_steps=nfe, eta=eta, **d)
                p = quality(rec.mean, x)["PSNR"]
                rows.append({"task": task, "noise": noise, "solver": "dds", "chains": chains, "nfe": nfe, "eta": eta,
                             **d, "PSNR": p})
                print(rows[-1], file=sys.stderr)
                if p > found.get(nfe, ({}, -1e9))[1]:
                    found[nfe] = ({"eta": eta, **d}, p)
    return {k: v[0] for k, v in found.items()}


def sweep(task: str, n_tune: int, nfes, etas, noises, chains: int = 1) -> tuple[list[dict], dict, dict]:
    """Batched DDS grid on tuning phantoms; returns (rows, best DDS options per NFE at NOISE, best classical options).

    At ``NOISE``: per NFE, the dc grid at the paper's eta, then eta with the best rule. At the other noise levels:
    the dc grid at 50 NFE (how the best gamma moves with sigma_y).
    """
    rows, best, best_cls = [], {}, {}
    for noise in noises:
        x, op, prior_name, cplx, classical = make_task(task, n_tune, 100, noise)
        y = op(x)
        if prior_name not in available():
            break
        prior = PRIORS(prior_name)
        found = {}

        def one(nfe, eta, dc):
            rec = invdiff.solve(y, op, prior, solver="dds", seed=0, num_steps=nfe, eta=eta, **dc)
            p = quality(rec.mean, x)["PSNR"]
            rows.append({"task": task, "noise": noise, "solver": "dds", "chains": 1, "nfe": nfe, "eta": eta, **dc,
                         "PSNR": p})
            print(rows[-1], file=sys.stderr)
            if p > found.get(nfe, ({}, -1e9))[1]:
                found[nfe] = ({"eta": eta, **dc}, p)

        for nfe in (nfes if noise == NOISE else [n for n in nfes if n == 50] or nfes[:1]):
            eta0 = ETA_PRESETS.get(nfe, 0.5)
            for dc in dc_grid(task, op, noise):
                one(nfe, eta0, dc)
            if noise != NOISE:
                continue
            dc_best = {k: v for k, v in found[nfe][0].items() if k != "eta"}
            for eta in etas:
                if eta != eta0:
                    one(nfe, eta, dc_best)
        if noise == NOISE:
            best = {k: v[0] for k, v in found.items()}
            if chains > 1:
                best_k = chain_sweep(task, x, y, op, prior, noise, [n for n in nfes if n in (50, 100)] or nfes[-1:], best,
                                     chains, rows)
                best.update({("chains", n): o for n, o in best_k.items()})
    x, op, prior_name, cplx, classical = make_task(task, n_tune, 100)
    y = op(x)
    for solver, grid in classical:
        for lam in grid.get("lam", [None]):
            opts = {} if lam is None else {"lam": lam}
            rec = invdiff.solve(y, op, None, solver=solver, **opts)
            p = quality(rec.mean, x)["PSNR"]
            rows.append({"task": task, "noise": NOISE, "solver": solver, **opts, "PSNR": p})
            if p > best_cls.get(solver, ({}, -1e9))[1]:
                best_cls[solver] = (opts, p)
    return rows, best, {k: v[0] for k, v in best_cls.items()}


def evaluate(task: str, n_eval: int, n_dps: int, best: dict, best_cls: dict, nfes, dps_steps: int,
             chains: int = 1) -> list[dict]:
    x, op, prior_name, cplx, _ = make_task(task, n_eval)
    ys = [op(x[i:i + 1]) for i in range(n_eval)]
    runs = [("adjoint", {}, None, n_eval, 1)] + [(s, o, None, n_eval, 1) for s, o in best_cls.items()]
    if prior_name in available():
        for nfe in nfes:
            runs.append(("dds", {"num_steps": nfe}, "defaults", n_eval, 1))
            if nfe in best:
                runs.append(("dds", {"num_steps": nfe, **best[nfe]}, "sweep-best", n_eval, 1))
        if chains > 1:
            for nfe in nfes:
                if ("chains", nfe) in best:  # 50 and 100 NFE (quick: 20)
                    runs.append(("dds", {"num_steps": nfe}, "defaults", n_eval, chains))
                    runs.append(("dds", {"num_steps": nfe, **best[("chains", nfe)]}, f"sweep-best K={chains}",
                                 n_eval, chains))
        if n_dps > 0:
            runs.append(("dps", {"num_steps": dps_steps}, "defaults", n_dps, chains))
    else:
        print(f"[dds bench] prior {prior_name!r} not installed: no diffusion rows for {task}", file=sys.stderr)
    prior = PRIORS(prior_name) if prior_name in available() else None
    rows = []
    for solver, opts, tag, n_img, k in runs:
        ps, pcs, ss, secs, cpus, peaks, nfe = [], [], [], [], [], [], 0
        for i in range(n_img):
            rec, cost = measured(invdiff.solve, ys[i], op, prior if solver in ("dds", "dps") else None,
                                 solver=solver, seed=i, **({"n_samples": k} if k > 1 else {}), **opts)
            q = quality(rec.mean, x[i:i + 1])
            ps.append(q["PSNR"])
            pcs.append(sum(quality(s, x[i:i + 1])["PSNR"] for s in rec.samples) / len(rec.samples)
                       if k > 1 else q["PSNR"])
            ss.append(q["SSIM"])
            secs.append(cost["seconds"])
            cpus.append(cost["cpu_s"])
            peaks.append(cost["peak_mb"] or 0.0)
            nfe, info = rec.nfe, rec.info
        used = {**info.get("measured_defaults", {}).get("options", {}), **opts, **info}
        row = {"task": task, "solver": solver + (f" ({tag})" if tag else ""), "chains": k, "nfe": nfe,
               "options": {kk: v for kk, v in used.items()
                           if kk in ("num_steps", "eta", "dc", "gamma", "lam", "weight")
                           and not (kk == "gamma" and info.get("dc") == "ls")},
               "PSNR": sum(ps) / len(ps), "PSNR_chain": sum(pcs) / len(pcs), "SSIM": sum(ss) / len(ss),
               "PSNR_dps_imgs": sum(ps[:n_dps]) / max(min(n_dps, len(ps)), 1),
               "n_images": n_img, "seconds": sum(secs) / len(secs), "cpu_s": sum(cpus) / len(cpus), "peak_mb": max(peaks)}
        rows.append(row)
        print(row, file=sys.stderr)
    return rows


PRIORS = PinnedPriors()   # one version of each shipped prior per run, recorded in the tables' meta
SHIPPED = ("ct-phantom-64", "mri-brainphantom-64")


def run(a):
    warnings.filterwarnings("ignore", category=UserWarning)
    nfes = (20,) if a.quick else NFES
    etas = (0.5,) if a.quick else ETAS
    sweep_rows, eval_rows, chosen = [], [], {}
    priors_at_start = installed_versions(SHIPPED)
    t_start, c_start = time.perf_counter(), time.process_time()
    for task in ("ct-8view", "mri-4x-8coil"):
        t0 = time.perf_counter()
        rows, best, best_cls = sweep(task, a.tune, nfes, etas, (NOISE,) if a.quick else (NOISE, 0.05), a.chains)
        sweep_rows += rows
        chosen[task] = {"dds": {str(k): v for k, v in best.items()}, "classical": best_cls}
        print(f"[{task}] sweep {time.perf_counter() - t0:.0f} s; best {best} {best_cls}", file=sys.stderr)
        if not a.sweep_only:
            eval_rows += evaluate(task, a.eval, a.dps, best, best_cls, nfes, 50 if a.quick else 1000, a.chains)
    meta = {"eval_images": a.eval, "dps_images": a.dps, "tune_images": a.tune, "quick": a.quick, "size": N,
            "noise": NOISE, "eta_presets": ETA_PRESETS, "gamma_variance": GAMMA_VARIANCE, "chosen": chosen,
            "priors_used": PRIORS.versions(), "priors_installed_at_start": priors_at_start,
            "priors_installed_at_end": installed_versions(SHIPPED), "seconds_total": time.perf_counter() - t_start,
            "cpu_s_total": time.process_time() - c_start}
    notes = __doc__
    write_experiment(a, "dds_sweep", sweep_rows, ["task", "noise", "solver", "chains", "nfe", "eta", "dc", "gamma", "lam",
                                                    "PSNR"],
                  title="DDS settings sweep (tuning phantoms)", notes=notes, meta=meta)
    if a.sweep_only:
        return
    write_experiment(a, "dds", eval_rows, ["task", "solver", "chains", "nfe", "options", "PSNR", "PSNR_chain", "SSIM",
                                            "PSNR_dps_imgs",
                                            "n_images", "seconds", "cpu_s", "peak_mb"],
                  title="DDS vs DPS and classical baselines (held-out phantoms, shipped priors)", notes=notes, meta=meta)


if __name__ == "__main__":
    ap = experiment_args(__doc__)
    ap.add_argument("--eval", type=int, default=4, help="held-out evaluation phantoms per task")
    ap.add_argument("--dps", type=int, default=2, help="of which DPS (1000 NFE) runs on the first DPS")
    ap.add_argument("--tune", type=int, default=3, help="tuning phantoms per task for the sweeps")
    ap.add_argument("--chains", type=int, default=4, help="K: chains averaged for the posterior-mean rows (1: none)")
    ap.add_argument("--quick", action="store_true", help="20 NFE, one eta, DPS at 50 steps")
    ap.add_argument("--sweep-only", action="store_true", help="only the settings sweep (writes dds_sweep.*)")
    args = start(ap.parse_args())
    if args.smoke:
        args.quick, args.eval, args.dps, args.tune, args.chains = True, 1, 1, 1, 2
    run(args)

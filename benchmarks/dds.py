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
   same phantoms (noise 0.01) tune the classical baselines' lambda.
2. Evaluation (``dds.*``): DDS at 20/50/100 NFE with invdiff's defaults (``dc="auto"``, paper eta presets) and with
   the sweep's best settings, DPS at 1000 NFE (deepinv, "norm" guidance, weight 100; on the first ``--dps``
   images only: about a minute per image here), TV, l1-wavelet (MRI), FBP (CT), adjoint; every method on every
   image separately (no batching, so seconds are per image). PSNR/SSIM averaged over the images; ``PSNR_dps_imgs``
   averages over the DPS images only, for a like-for-like comparison; ``seconds`` = wall time per image,
   ``cpu_s`` = process CPU time per image (1 thread: the wall time on an idle machine; the machine running this
   was shared); peak MB = max RSS growth over the calls.

Usage: python benchmarks/dds.py [--eval 4] [--dps 2] [--tune 3] [--out benchmarks/results] [--quick]
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import time
import warnings
from pathlib import Path

import torch

import invdiff
from invdiff.bench import measure, write_results
from invdiff.datasets import ct_phantoms, mri_phantoms, split_seeds
from invdiff.metrics import psnr, ssim
from invdiff.operators import CT, MultiCoilMRI, birdcage_maps, make_mask
from invdiff.priors import available, load
from invdiff.priors.registry import WEIGHTS_DIR
from invdiff.solvers.dds import ETA_PRESETS, GAMMA_VARIANCE
from invdiff.solvers.ztv import ct_adjoint_scale

N = 64
NOISE = 0.01
NFES = (20, 50, 100)
ETAS = (0.15, 0.5, 0.85)


def make_task(name: str, seeds, noise: float = NOISE):
    """(x, physics, prior name, complex?, classical runs [(solver, {lam grid})])."""
    if name == "mri-4x-8coil":
        x = mri_phantoms(seeds, N)
        op = MultiCoilMRI(make_mask("equispaced", (N, N), acceleration=4, seed=0), birdcage_maps(8, (N, N)),
                          img_size=(N, N), sigma=noise, rng=torch.Generator().manual_seed(0))
        return x, op, "mri-brainphantom-64", True, [("tv", {"lam": [1e-3, 3e-3, 1e-2]}),
                                                       ("l1-wavelet", {"lam": [1e-3, 3e-3, 1e-2]})]
    x = ct_phantoms(seeds, N)
    op = CT(N, n_views=8, sigma=noise, rng=torch.Generator().manual_seed(0))
    return x, op, "ct-phantom-64", False, [("tv", {"lam": [5e-4, 1e-3, 2e-3, 5e-3]}), ("fbp", {})]


def dc_grid(name: str, op, noise: float) -> list[dict]:
    """"ls" and "prox" with the paper's gamma = 1, invdiff's default v/sigma^2 and neighbours (+ kappa for CT)."""
    auto = round(GAMMA_VARIANCE / noise ** 2, 3)
    gammas = sorted({1.0, 3.0, 10.0, auto} | ({round(ct_adjoint_scale(op), 2)} if name.startswith("ct") else set()))
    return [{"dc": "ls"}] + [{"dc": "prox", "gamma": g} for g in gammas]


def scores(est, x, cplx):
    return psnr(est, x, data_range=1.0, complex=cplx), ssim(est, x, data_range=1.0, complex=cplx)


def sweep(task: str, n_tune: int, nfes, etas, noises) -> tuple[list[dict], dict, dict]:
    """Batched DDS grid on tuning phantoms; returns (rows, best DDS options per NFE at NOISE, best classical options).

    At ``NOISE``: per NFE, the dc grid at the paper's eta, then eta with the best rule. At the other noise levels:
    the dc grid at 50 NFE (how the best gamma moves with sigma_y).
    """
    seeds = split_seeds("heldout", n_tune, start=100)
    rows, best, best_cls = [], {}, {}
    for noise in noises:
        x, op, prior_name, cplx, classical = make_task(task, seeds, noise)
        y = op(x)
        if prior_name not in available():
            break
        prior = get_prior(prior_name)
        found = {}

        def one(nfe, eta, dc):
            rec = invdiff.solve(y, op, prior, solver="dds", seed=0, num_steps=nfe, eta=eta, **dc)
            p = float(scores(rec.mean, x, cplx)[0].mean())
            rows.append({"task": task, "noise": noise, "solver": "dds", "nfe": nfe, "eta": eta, **dc, "PSNR": p})
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
    x, op, prior_name, cplx, classical = make_task(task, seeds)
    y = op(x)
    for solver, grid in classical:
        for lam in grid.get("lam", [None]):
            opts = {} if lam is None else {"lam": lam}
            rec = invdiff.solve(y, op, None, solver=solver, **opts)
            p = float(scores(rec.mean, x, cplx)[0].mean())
            rows.append({"task": task, "noise": NOISE, "solver": solver, **opts, "PSNR": p})
            if p > best_cls.get(solver, ({}, -1e9))[1]:
                best_cls[solver] = (opts, p)
    return rows, best, {k: v[0] for k, v in best_cls.items()}


def evaluate(task: str, n_eval: int, n_dps: int, best: dict, best_cls: dict, nfes, dps_steps: int) -> list[dict]:
    x, op, prior_name, cplx, _ = make_task(task, split_seeds("heldout", n_eval))
    ys = [op(x[i:i + 1]) for i in range(n_eval)]
    runs = [("adjoint", {}, None, n_eval)] + [(s, o, None, n_eval) for s, o in best_cls.items()]
    if prior_name in available():
        for nfe in nfes:
            runs.append(("dds", {"num_steps": nfe}, "defaults", n_eval))
            if nfe in best:
                runs.append(("dds", {"num_steps": nfe, **best[nfe]}, "sweep-best", n_eval))
        if n_dps > 0:
            runs.append(("dps", {"num_steps": dps_steps, "weight": 100.0}, None, n_dps))
    else:
        print(f"[dds bench] prior {prior_name!r} not installed: no diffusion rows for {task}", file=sys.stderr)
    prior = get_prior(prior_name) if prior_name in available() else None
    rows = []
    for solver, opts, tag, n_img in runs:
        ps, ss, secs, cpus, peaks, nfe = [], [], [], [], [], 0
        for i in range(n_img):
            c0 = time.process_time()
            m = measure(invdiff.solve, ys[i], op, prior if solver in ("dds", "dps") else None, solver=solver, seed=i,
                        **opts)
            p, s = scores(m.value.mean, x[i:i + 1], cplx)
            ps.append(float(p))
            ss.append(float(s))
            secs.append(m.seconds)
            cpus.append(time.process_time() - c0)
            peaks.append(m.peak_mb or 0.0)
            nfe, info = m.value.nfe, m.value.info
        row = {"task": task, "solver": solver + (f" ({tag})" if tag else ""), "nfe": nfe,
               "options": {k: v for k, v in {**opts, **info}.items()
                           if k in ("num_steps", "eta", "dc", "gamma", "lam", "weight")
                           and not (k == "gamma" and info.get("dc") == "ls")},
               "PSNR": sum(ps) / len(ps), "SSIM": sum(ss) / len(ss), "PSNR_dps_imgs": sum(ps[:n_dps]) / max(min(n_dps, len(ps)), 1),
               "n_images": n_img, "seconds": sum(secs) / len(secs), "cpu_s": sum(cpus) / len(cpus), "peak_mb": max(peaks)}
        rows.append(row)
        print(row, file=sys.stderr)
    return rows


_PRIORS: dict = {}


def get_prior(name: str):
    """The shipped prior ``name``, loaded once per process from a private copy (the shipped weights are re-exported
    while training runs: one benchmark run must use one version). Records the copy's sha256 in ``_PRIORS``."""
    if name not in _PRIORS:
        import shutil
        import tempfile

        src = WEIGHTS_DIR / f"{name}.safetensors"
        tmp = Path(tempfile.mkdtemp()) / src.name
        shutil.copyfile(src, tmp)
        data = tmp.read_bytes()
        prior = load(tmp)
        shutil.rmtree(tmp.parent, ignore_errors=True)
        card = WEIGHTS_DIR / f"{name}.md"
        steps = next((ln.strip("- ").strip() for ln in card.read_text().splitlines() if ln.startswith("- steps")), "") \
            if card.is_file() else ""
        _PRIORS[name] = (prior, {"sha256_12": hashlib.sha256(data).hexdigest()[:12],
                                 "mtime": time.ctime(src.stat().st_mtime), "model_card": steps})
    return _PRIORS[name][0]


def prior_meta() -> dict:
    out = {}
    for name in ("ct-phantom-64", "mri-brainphantom-64"):
        f = WEIGHTS_DIR / f"{name}.safetensors"
        if f.is_file():
            steps = ""
            card = WEIGHTS_DIR / f"{name}.md"
            if card.is_file():
                steps = next((ln.strip("- ").strip() for ln in card.read_text().splitlines() if ln.startswith("- steps")), "")
            out[name] = {"sha256_12": hashlib.sha256(f.read_bytes()).hexdigest()[:12], "mtime": time.ctime(f.stat().st_mtime),
                         "training": steps}
    return out


def run(a):
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)
    nfes = (20,) if a.quick else NFES
    etas = (0.5,) if a.quick else ETAS
    sweep_rows, eval_rows, chosen = [], [], {}
    priors_at_start = prior_meta()
    t_start, c_start = time.perf_counter(), time.process_time()
    for task in ("ct-8view", "mri-4x-8coil"):
        t0 = time.perf_counter()
        rows, best, best_cls = sweep(task, a.tune, nfes, etas, (NOISE,) if a.quick else (NOISE, 0.05))
        sweep_rows += rows
        chosen[task] = {"dds": best, "classical": best_cls}
        print(f"[{task}] sweep {time.perf_counter() - t0:.0f} s; best {best} {best_cls}", file=sys.stderr)
        if not a.sweep_only:
            eval_rows += evaluate(task, a.eval, a.dps, best, best_cls, nfes, 50 if a.quick else 1000)
    meta = {"eval_images": a.eval, "dps_images": a.dps, "tune_images": a.tune, "quick": a.quick, "size": N,
            "noise": NOISE, "eta_presets": ETA_PRESETS, "gamma_variance": GAMMA_VARIANCE, "chosen": chosen,
            "priors_used": {k: v[1] for k, v in _PRIORS.items()}, "priors_installed_at_start": priors_at_start,
            "priors_installed_at_end": prior_meta(), "seconds_total": time.perf_counter() - t_start,
            "cpu_s_total": time.process_time() - c_start}
    notes = __doc__.split("Usage:")[0]
    write_results(a.out, "dds_sweep", sweep_rows, ["task", "noise", "solver", "nfe", "eta", "dc", "gamma", "lam",
                                                    "PSNR"],
                  title="DDS settings sweep (tuning phantoms)", notes=notes, meta=meta)
    if a.sweep_only:
        return
    write_results(a.out, "dds", eval_rows, ["task", "solver", "nfe", "options", "PSNR", "SSIM", "PSNR_dps_imgs",
                                            "n_images", "seconds", "cpu_s", "peak_mb"],
                  title="DDS vs DPS and classical baselines (held-out phantoms, shipped priors)", notes=notes, meta=meta)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eval", type=int, default=4, help="held-out evaluation phantoms per task")
    ap.add_argument("--dps", type=int, default=2, help="of which DPS (1000 NFE) runs on the first DPS")
    ap.add_argument("--tune", type=int, default=3, help="tuning phantoms per task for the sweeps")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--quick", action="store_true", help="smoke run: 20 NFE, one eta, DPS at 50 steps")
    ap.add_argument("--sweep-only", action="store_true", help="only the settings sweep (writes dds_sweep.*)")
    run(ap.parse_args())

"""RED-Diff on images (shipped priors, held-out phantoms) and on exact Gaussian-mixture posteriors (mode-seeking).

Part "images": 64x64 held-out phantoms (``split_seeds("heldout", n)``, never seen in training), the shipped priors
as installed (``ct-phantom-64``, 1 channel in [0, 1]; ``mri-brainphantom-64``, complex as 2 channels in [-1, 1];
both still training: rerun after a re-export). Tasks, all with Gaussian noise sigma = 0.01:

- inpaint-box: one missing 26x26 box (40 % of each side) at a random place;
- inpaint-random: 70 % of the pixels missing at random;
- deblur: circular Gaussian blur, std 2 px (13x13 kernel);
- mri-4x: multi-coil MRI, 8 birdcage coils, 4x equispaced Cartesian mask (8 % ACS); metrics on the magnitude;
- ct-8view: parallel-beam CT, 8 views over 180 degrees.

Methods at matched NFE budgets (50 / 100 network evaluations): RED-Diff with its task preset
(``invdiff.solvers.red_diff.PRESETS``: the released code's values where there is one) and with (lr, lam) tuned per
task and budget; DPS (deepinv, "norm" guidance, weight tuned per task); DiffPIR (deepinv defaults); DDRM
(SVD-decomposable operators only: inpainting and the FFT blur); the classical baselines TV, FBP (CT) and
l1-wavelet (MRI), their weight tuned per task. On the two inpainting tasks the first ``--nfe1000-images`` images
also get DPS and RED-Diff (preset, i.e. the paper's 1000-step setting) at 1000 NFE. All tuning used two *other*
held-out phantoms (seeds HELDOUT_SEED_START + 1000, 1001), never the evaluated ones; ``--tune`` reruns it
(results/red_diff_tuning.md). PSNR / SSIM (``invdiff.metrics``, peak = max of the reference; MRI on the
magnitude); seconds and peak memory growth per image (``invdiff.bench.measure``); mean and std over images.

Part "gmm": linear-Gaussian problems with Gaussian-mixture priors, where the exact posterior is known: a 2-D
problem with two equal posterior modes (the 2-D mixture of ``benchmarks/exactness.py`` measured along x1 + x2, at
y = 0) and the three problems of ``benchmarks/exactness.py`` (same draws; the measurement noise seeded here).
RED-Diff is run 64 times (independent runs, ``n_samples=64``) and each final mu is compared with the exact
posterior mean, the nearest posterior component mean, the nearest local mode of the posterior density and the
global MAP (modes: L-BFGS on the exact posterior log-density from every component mean). Distances are medians
over runs divided by sqrt(tr Cov_post), the posterior's spread (exact posterior draws sit at about 1 from the
posterior mean); "spread" is the runs' own spread in the same unit; "occupancy" is the fraction of runs nearest
to each posterior component, next to the posterior component weights. Reference rows: exact posterior draws, the MAP, the posterior mean, and RED-Diff's
starting point (the pseudo-inverse).

Usage: python benchmarks/red_diff_images.py [--images 4] [--nfe1000-images 2] [--parts images,gmm]
       [--tasks inpaint-box,...] [--out benchmarks/results] [--tune] [--quick]
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

import invdiff
from invdiff.bench import measure, write_results
from invdiff.datasets import ct_phantoms, mri_phantoms, split_seeds
from invdiff.metrics import psnr, ssim
from invdiff.priors import GaussianMixture
from invdiff.operators import (CT, CircularBlur, Inpainting, MultiCoilMRI, birdcage_maps, box_mask, gaussian_kernel,
                               make_mask, random_mask)

SIZE, NOISE = 64, 0.01
TUNE_START = 1000  # held-out seeds HELDOUT_SEED_START + 1000.. for tuning; evaluation uses + 0..n-1


# ------------------------------------------------------------------------------------------------
# tasks
# ------------------------------------------------------------------------------------------------
def make_task(name: str, seed: int):
    """(x, physics, prior name) for one held-out phantom ``seed``; operator randomness is seeded by ``seed``."""
    g, rng = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    n = SIZE
    if name == "mri-4x":
        op = MultiCoilMRI(make_mask("equispaced", (n, n), 4, seed=0), birdcage_maps(8, (n, n)), img_size=(n, n),
                          sigma=NOISE, rng=rng)
        return mri_phantoms([seed], n), op, "mri-brainphantom-64"
    x = ct_phantoms([seed], n)
    if name == "inpaint-box":
        op = Inpainting((1, n, n), box_mask((1, n, n), 0.4, generator=g), sigma=NOISE, rng=rng)
    elif name == "inpaint-random":
        op = Inpainting((1, n, n), random_mask((1, n, n), keep=0.3, generator=g), sigma=NOISE, rng=rng)
    elif name == "deblur":
        op = CircularBlur(gaussian_kernel(13, 2.0), (1, n, n), sigma=NOISE, rng=rng)
    elif name == "ct-8view":
        op = CT(n, n_views=8, sigma=NOISE, rng=rng)
    else:
        raise ValueError(f"unknown task {name!r}")
    return x, op, "ct-phantom-64"


#: per task: RED-Diff preset; RED-Diff (lr, lam) in the prior's units selected by --tune per NFE budget (1000 NFE
#: reuses the 100-NFE choice); classical baselines with the weight selected by --tune
SETUP = {
    "inpaint-box": {"preset": "inpainting", "tuned": {50: {"lr": 0.03, "lam": 0.01}, 100: {"lr": 0.1, "lam": 0.01}},
                    "dps": {"weight": 100.0}, "classical": [("tv", {"lam": 0.1})]},
    "inpaint-random": {"preset": "inpainting",
                       "tuned": {50: {"lr": 0.3, "lam": 0.003}, 100: {"lr": 0.1, "lam": 0.001}},
                       "dps": {"weight": 1000.0}, "classical": [("tv", {"lam": 0.03})]},
    "deblur": {"preset": "deblur", "tuned": {50: {"lr": 0.1, "lam": 0.05}, 100: {"lr": 0.1, "lam": 0.05}},
               "dps": {"weight": 300.0}, "classical": [("tv", {"lam": 0.001})]},
    "mri-4x": {"preset": "mri", "tuned": {50: {"lr": 0.1, "lam": 0.01}, 100: {"lr": 0.1, "lam": 0.01}},
               "dps": {"weight": 300.0}, "classical": [("tv", {"lam": 0.003}), ("l1-wavelet", {"lam": 0.001})]},
    "ct-8view": {"preset": "ct", "tuned": {50: {"lr": 0.1, "lam": 0.25}, 100: {"lr": 0.1, "lam": 0.25}},
                 "dps": {"weight": 300.0}, "classical": [("tv", {"lam": 0.001}), ("fbp", {})]},
}
TUNE_BUDGETS = (50, 100)
TUNE_GRID = {
    "red-diff": [{"lr": lr, "lam": lam} for lr in (0.03, 0.1, 0.3) for lam in (0.001, 0.003, 0.01, 0.05, 0.25)],
    "dps": [{"weight": w} for w in (100.0, 300.0, 1000.0)],
    "tv": [{"lam": v} for v in (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1)],
    "l1-wavelet": [{"lam": v} for v in (0.0003, 0.001, 0.003, 0.01)],
}


def _tuned(task: str, nfe: int) -> dict:
    """RED-Diff (lr, lam) selected for the nearest tuned budget at or below ``nfe`` (50 below 50)."""
    tuned = SETUP[task]["tuned"]
    return tuned[max([b for b in tuned if b <= nfe] or [min(tuned)])]


def _metrics(est: torch.Tensor, x: torch.Tensor) -> tuple[float, float]:
    cplx = x.shape[1] == 2
    return float(psnr(est, x, complex=cplx)), float(ssim(est, x, complex=cplx))


def _methods(task: str, budgets, decomposable: bool):
    """(label, solver, options) of the methods compared on ``task``."""
    s = SETUP[task]
    out = []
    for nfe in budgets:
        out.append((f"red-diff preset={s['preset']}", "red-diff", {"num_steps": nfe, "preset": s["preset"]}))
        out.append(("red-diff tuned", "red-diff", {"num_steps": nfe, **_tuned(task, nfe)}))
        out.append(("dps", "dps", {"num_steps": nfe, **s["dps"]}))
        out.append(("diffpir", "diffpir", {"num_steps": nfe}))
        if decomposable:
            out.append(("ddrm", "ddrm", {"num_steps": nfe}))
    for solver, opts in s["classical"]:
        out.append((solver, solver, opts))
    return out


def load_priors(tasks) -> dict:
    """The shipped priors the tasks need, loaded once: a re-export during the run cannot mix prior versions."""
    return {p: invdiff.priors.load(p) for p in sorted({make_task(t, 0)[2] for t in tasks})}


def prior_steps(priors: dict) -> dict:
    return {name: p.metadata().get("info", {}).get("step") for name, p in priors.items()}


def run_images(n_images: int, n1000: int, tasks, budgets, priors: dict, log=print) -> list[dict]:
    import deepinv as dinv

    rows = []
    seeds = split_seeds("heldout", n_images)
    for task in tasks:
        per = {}  # (label, nfe) -> list of per-image results
        for i, seed in enumerate(seeds):
            x, op, pname = make_task(task, seed)
            prior = priors[pname]
            y = op(x)
            runs = _methods(task, budgets, isinstance(op, dinv.physics.DecomposablePhysics))
            if task.startswith("inpaint") and i < n1000:
                runs += [(f"red-diff preset={SETUP[task]['preset']}", "red-diff",   # the paper's 1000-step setting
                          {"num_steps": 1000, "preset": SETUP[task]["preset"]}),
                         ("dps", "dps", {"num_steps": 1000, **SETUP[task]["dps"]})]
            for label, solver, opts in runs:
                m = measure(invdiff.solve, y, op, prior if solver not in ("tv", "fbp", "l1-wavelet") else None,
                            solver=solver, seed=0, **opts)
                p, s = _metrics(m.value.mean, x)
                per.setdefault((label, m.value.nfe, str(opts)), []).append(
                    {"seed": seed, "PSNR": p, "SSIM": s, "seconds": m.seconds, "peak_mb": m.peak_mb})
                log(f"[{task} img {i}] {label:24s} NFE {m.value.nfe:4d}  PSNR {p:6.2f}  SSIM {s:.3f}  "
                    f"{m.seconds:6.1f} s")
        for (label, nfe, opts), res in per.items():
            P, S = [r["PSNR"] for r in res], [r["SSIM"] for r in res]
            rows.append({"task": task, "method": label, "NFE": nfe, "options": opts, "images": len(res),
                         "PSNR": statistics.fmean(P), "PSNR_std": statistics.pstdev(P),
                         "SSIM": statistics.fmean(S), "SSIM_std": statistics.pstdev(S),
                         "seconds": statistics.fmean(r["seconds"] for r in res),
                         "peak_mb": max((r["peak_mb"] or 0.0) for r in res), "per_image": res})
    return rows


def run_tuning(tasks, priors: dict, log=print) -> list[dict]:
    """Grid search of RED-Diff (lr, lam) per NFE budget, DPS's weight and the classical weights, on 2 tuning
    phantoms."""
    rows = []
    seeds = split_seeds("heldout", 2, start=TUNE_START)
    for task in tasks:
        data = [make_task(task, s) for s in seeds]
        prior = priors[data[0][2]]
        ys = [op(x) for x, op, _ in data]
        cands = [("red-diff", {"num_steps": b, **o}) for b in TUNE_BUDGETS for o in TUNE_GRID["red-diff"]]
        cands += [("dps", {"num_steps": 100, **o}) for o in TUNE_GRID["dps"]]
        for solver, _ in SETUP[task]["classical"]:
            cands += [(solver, o) for o in TUNE_GRID.get(solver, [{}])]
        for solver, opts in cands:
            P = [_metrics(invdiff.solve(y, op, prior if solver in ("red-diff", "dps") else None, solver=solver, seed=0,
                                        **opts).mean, x)[0] for (x, op, _), y in zip(data, ys)]
            rows.append({"task": task, "solver": solver, "options": str(opts), "PSNR": statistics.fmean(P)})
            log(f"[tune {task}] {solver:10s} {str(opts):45s} PSNR {rows[-1]['PSNR']:6.2f}")
        for solver, nfe in {(r_s, eval(r_o).get("num_steps")) for r_s, r_o in
                            ((r["solver"], r["options"]) for r in rows if r["task"] == task)}:
            cand = [r for r in rows if r["task"] == task and r["solver"] == solver
                    and eval(r["options"]).get("num_steps") == nfe]
            best = max(cand, key=lambda r: r["PSNR"])
            best["best"] = "<- best"
            log(f"[tune {task}] best {solver} at NFE {nfe}: {best['options']} ({best['PSNR']:.2f} dB)")
    return rows


# ------------------------------------------------------------------------------------------------
# Gaussian mixtures: what does RED-Diff converge to?
# ------------------------------------------------------------------------------------------------
def posterior_modes(post) -> tuple[torch.Tensor, torch.Tensor]:
    """Local maxima of the exact posterior mixture density, found by L-BFGS from every component mean with
    posterior weight > 1e-6 (duplicates merged), as (modes (M, n), log-densities (M,)); the first is the MAP."""
    found, lps = [], []
    for k in range(post.n_components):
        if float(post.weights[k]) < 1e-6:
            continue
        z = post.means[k].detach().double().reshape(1, *post.event_shape).clone().requires_grad_(True)
        opt = torch.optim.LBFGS([z], lr=1.0, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = -post.log_prob(z).sum()
            loss.backward()
            return loss

        opt.step(closure)
        zf = z.detach().reshape(-1)
        if all(float((zf - f).norm()) > 1e-6 * (1 + float(f.norm())) for f in found):
            found.append(zf)
            lps.append(float(post.log_prob(z.detach())))
    order = sorted(range(len(found)), key=lambda i: -lps[i])
    return torch.stack([found[i] for i in order]), torch.tensor([lps[i] for i in order])


def _problem_bimodal(gen):
    """The 2-D mixture of the exactness benchmark measured along x1 + x2: y = 0 is equally explained by the modes at
    (-2, 2) and (2, -2), so the posterior has two equal modes and its mean lies between them."""
    from invdiff.operators import MatrixOperator

    w = torch.tensor([0.3, 0.3, 0.4])
    means = torch.tensor([[-2.0, 2.0], [2.0, -2.0], [1.5, 1.5]])
    covs = torch.stack([0.3 * torch.eye(2), 0.3 * torch.eye(2), torch.tensor([[0.4, 0.2], [0.2, 0.4]])])
    return GaussianMixture(w, means, covs), MatrixOperator(torch.tensor([[1.0, 1.0]]) / math.sqrt(2), sigma=0.5)


#: RED-Diff settings of the mode-seeking study: the default preset at two budgets, and a small step size
GMM_SETTINGS = [(100, {}), (1000, {}), (1000, {"lr": 0.01})]


def run_gmm(n_runs: int, settings, log=print) -> list[dict]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from exactness import PROBLEMS  # the same problems as the exactness benchmark

    problems = {"gmm2d-bimodal (y=0)": _problem_bimodal, **PROBLEMS}
    rows = []
    for pname, make in problems.items():
        gen = torch.Generator().manual_seed(0)
        prior, op = make(gen)
        x = prior.sample(1, generator=gen)
        op.noise_model.rng = torch.Generator().manual_seed(0)  # reproducible measurement noise
        y = torch.zeros(1, 1) if pname.startswith("gmm2d-bimodal") else op(x)
        post = prior.posterior(y, op)
        K = post.n_components
        pm = post.mean.reshape(-1).double()
        comp = post.means.reshape(K, -1).double()
        scale = float(post.std.pow(2).sum().sqrt())
        modes, _ = posterior_modes(post)
        x_map = modes[0]
        w_post = post.weights.double()

        def summary(name, pts, nfe=None, seconds=None, opts=""):
            d_mean = (pts - pm).norm(dim=1) / scale
            d_comp = torch.cdist(pts, comp) / scale
            occ = torch.bincount(d_comp.argmin(1), minlength=K).double() / pts.shape[0]
            rows.append({
                "problem": pname, "method": name, "options": opts, "runs": pts.shape[0],
                "d_post_mean": float(d_mean.median()),
                "d_nearest_comp_mean": float(d_comp.min(1).values.median()),
                "d_nearest_mode": float((torch.cdist(pts, modes) / scale).min(1).values.median()),
                "d_map": float(((pts - x_map).norm(dim=1) / scale).median()),
                "modes": modes.shape[0],
                "spread": float(pts.std(0).norm() / scale) if pts.shape[0] > 1 else 0.0,
                "d_avg_to_post_mean": float((pts.mean(0) - pm).norm() / scale),
                "occupancy": "/".join(f"{v:.2f}" for v in occ.tolist()),
                "post_weights": "/".join(f"{v:.2f}" for v in w_post.tolist()),
                "nfe": nfe, "seconds": seconds})
            log(f"[gmm {pname}] {name:24s} d_post_mean {rows[-1]['d_post_mean']:.3f} d_comp "
                f"{rows[-1]['d_nearest_comp_mean']:.3f} d_mode {rows[-1]['d_nearest_mode']:.3f} d_map {rows[-1]['d_map']:.3f} "
                f"occ {rows[-1]['occupancy']}")

        summary("exact posterior draws", post.sample(n_runs, generator=gen).reshape(n_runs, -1).double())
        summary("posterior MAP", x_map[None])
        summary("posterior mean", pm[None])
        with torch.no_grad():
            summary("pseudo-inverse start", op.A_dagger(y).reshape(1, -1).double())
        for nfe, opts in settings:
            m = measure(invdiff.solve, y, op, prior, solver="red-diff", seed=1, n_samples=n_runs, num_steps=nfe,
                        **opts)
            label = f"red-diff {nfe} steps" + (f" lr={opts['lr']}" if "lr" in opts else "")
            summary(label, m.value.samples.reshape(n_runs, -1).double(), m.value.nfe, m.seconds,
                    f"lr={m.value.info['lr']:g}, lam={m.value.info['lam']:g}")
    return rows


# ------------------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=4, help="held-out images per task (default 4)")
    ap.add_argument("--nfe1000-images", type=int, default=2,
                    help="images per inpainting task that also get DPS and RED-Diff at 1000 NFE (default 2)")
    ap.add_argument("--parts", default="images,gmm", help="comma list of: images, gmm")
    ap.add_argument("--tasks", default=",".join(SETUP), help=f"comma list of: {', '.join(SETUP)}")
    ap.add_argument("--gmm-runs", type=int, default=64)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--tune", action="store_true", help="rerun the hyper-parameter selection on tuning phantoms")
    ap.add_argument("--quick", action="store_true", help="1 image, NFE 20, no 1000-NFE runs (smoke test)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    tasks = [t for t in a.tasks.split(",") if t]
    for t in tasks:
        if t not in SETUP:
            ap.error(f"--tasks: unknown task {t!r} (choose from {', '.join(SETUP)})")
    parts = set(a.parts.split(","))
    budgets = (20,) if a.quick else (50, 100)
    n_img, n1000 = (1, 0) if a.quick else (a.images, a.nfe1000_images)
    notes = __doc__.split("Usage:")[0]
    t0 = time.perf_counter()
    priors = load_priors(tasks) if (a.tune or "images" in parts) else {}
    if a.tune:
        rows = run_tuning(tasks, priors)
        write_results(a.out, "red_diff_tuning", rows, ["task", "solver", "options", "PSNR", "best"],
                      title="RED-Diff benchmark: hyper-parameter selection on 2 tuning phantoms",
                      notes="Mean PSNR on held-out seeds HELDOUT_SEED_START + 1000, 1001 (not the evaluated ones); "
                            f"shipped priors at training steps {prior_steps(priors)}.",
                      meta={"prior_training_steps": prior_steps(priors), "grid": TUNE_GRID})
    if "images" in parts:
        rows = run_images(n_img, n1000, tasks, budgets, priors)
        cols = ["task", "method", "NFE", "PSNR", "PSNR_std", "SSIM", "SSIM_std", "seconds", "peak_mb", "images",
                "options"]
        write_results(a.out, "red_diff_images", rows, cols, title="RED-Diff vs diffusion and classical baselines",
                      notes=notes + f"\nShipped priors used: training steps {prior_steps(priors)}.\n\n" + RESULT_NOTES,
                      meta={"images": n_img, "nfe1000_images": n1000, "budgets": list(budgets), "noise": NOISE,
                            "size": SIZE, "tasks": tasks, "setup": SETUP,
                            "prior_training_steps": prior_steps(priors)})
    if "gmm" in parts:
        rows = run_gmm(16 if a.quick else a.gmm_runs, GMM_SETTINGS[:1] if a.quick else GMM_SETTINGS)
        cols = ["problem", "method", "options", "runs", "d_post_mean", "d_nearest_comp_mean", "d_nearest_mode",
                "d_map", "modes", "spread",
                "d_avg_to_post_mean", "occupancy", "post_weights", "nfe", "seconds"]
        write_results(a.out, "red_diff_gmm", rows, cols, title="RED-Diff on exact Gaussian-mixture posteriors: "
                      "mode-seeking", notes=notes.split('Part "gmm":')[1] + "\n" + GMM_NOTES)
    print(f"done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)


RESULT_NOTES = """Observations: see the report section at the end of this file (filled in from the run)."""
GMM_NOTES = """Observations: see the report section at the end of this file (filled in from the run)."""

if __name__ == "__main__":
    main()

"""Calibration of every sampler's uncertainty: interval coverage, CRPS, std-vs-error correlation, and the std scale.

Samplers with ``n_samples > 1``: smc, mcgdiff (weighted particles; samples = equally weighted draws, std = the
weighted particle std), dds, dps, diffpir, red-diff, ddrm (independent chains; std = the spread of the samples).
RED-Diff is an optimiser: its "samples" are independent runs from different noise seeds, not posterior draws.

(a) **GMM suite** (the problems of ``benchmarks/exactness.py``, exact posterior known), K = ``--gmm-samples`` draws:

- cov50 / cov90: fraction of exact posterior draws (512) inside the sampler's per-coordinate central 50 / 90 %
  intervals (sample quantiles; the ``exact`` row, K exact posterior draws, is the finite-K reference);
- CRPS: the fair energy-form CRPS of the sampler's K draws, averaged over the 512 exact draws as the truth and over
  coordinates (the expected score; the exact row is its minimum up to Monte Carlo error);
- IS90: interval score of the 90 % intervals, same averaging;
- rho_std: Spearman correlation over coordinates of the sampler's std with the exact posterior std.

(b) **Images**: 4 held-out phantoms (``split_seeds("heldout", 4)``) per task, K = ``--samples`` draws, the operators
of ``benchmarks/smc_images.py``: ``ct8`` (8 parallel-beam views, sigma 0.01, prior ``ct-phantom-64``) and
``mri4x-mc8`` (8-coil Cartesian MRI, 4x random lines, sigma 0.01, prior ``mri-brainphantom-64``), DPS / DiffPIR with
the tuned options of ``invdiff.bench.tasks``. Per task and sampler, pooled over the images' pixels (MRI: real and
imaginary channels as pixels):

- cov50 / cov90 of the ground truth by the sample-quantile intervals; CRPS and IS90 against the ground truth;
- rho_err: Spearman correlation of the std map with the |error| map of the posterior mean (magnitudes for MRI);
- zcov90: fraction of pixels with |error| <= z90 * std (z90 = 1.645 real, sqrt(ln 10) = 1.517 complex magnitude): what
  the std map written by ``invdiff reconstruct`` (``reconstruction_std``) means as a Gaussian 90 % interval;
- scale90: the factor c with q_0.9(|error| / std) = z90 c (fitted on images 0-1), and zcov90_cal: coverage of
  z90 c std on images 2-3 (held out from the fit). ``scale_all``, fitted on all 4 images, is what
  ``invdiff/priors/weights/calibration.json`` ships for ``invdiff reconstruct --calibration``.
- PSNR of the mean, NFE per image (all chains), seconds, peak memory; 1 torch thread.

Reading cov50 / cov90 at finite K: the truth's rank among K exchangeable draws is uniform, so a *calibrated* sampler's
sample-quantile interval (positions (K - 1)(1 -+ level) / 2, interpolated) covers about (K - 1) level / (K + 1):
0.87 / 0.48 at K = 64 (the ``exact`` rows), **0.70 / 0.39 at K = 8** (the image rows). zcov90 / scale90 use the std
map instead and do not have this finite-K offset (beyond the noise of an 8-sample std). DDRM needs an SVD-decomposable
operator and MCGdiff a cheap real SVD: neither runs on 8-view CT or multi-coil MRI (nor DDRM on dense matrices).

Usage: python benchmarks/calibration.py [--samples 8] [--gmm-samples 64] [--images 4] [--out benchmarks/results]
       [--parts gmm,images] [--solvers smc] [--write-table] [--threads 1] [--smoke]
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

import invdiff
from invdiff.bench import write_results
from invdiff.bench.harness import experiment_args, measured, start, write_experiment
from invdiff.metrics import coverage, crps, interval_score, psnr, spearman

sys.path.insert(0, str(Path(__file__).resolve().parent))
from exactness import PROBLEMS  # noqa: E402

Z90 = {1: 1.6448536269514722, 2: math.sqrt(math.log(10.0))}

GMM_SOLVERS = [("smc", {"num_steps": 200}), ("mcgdiff", {"num_steps": 400}), ("dds", {"num_steps": 50}),
               ("dps", {"num_steps": 500, "weight": 1.0}), ("diffpir", {"num_steps": 100}),
               ("red-diff", {"num_steps": 100}), ("ddrm", {"num_steps": 100})]
IMAGE_SOLVERS = [("smc", {"num_steps": 100}), ("smc", {"num_steps": 100, "n_samples": 64}),
                 ("mcgdiff", {"num_steps": 100}), ("dds", {"num_steps": 50}),
                 ("dps", {"num_steps": 100}), ("diffpir", {"num_steps": 50}), ("red-diff", {"num_steps": 100}),
                 ("ddrm", {"num_steps": 50})]


def sample_scores(samples, truth_draws) -> dict:
    """Coverage / CRPS / IS90 of (K, n) samples averaged over (T, n) truths."""
    out = {"cov50": coverage(samples, truth_draws, 0.5), "cov90": coverage(samples, truth_draws, 0.9)}
    out["CRPS"] = sum(crps(samples, t) for t in truth_draws) / truth_draws.shape[0]
    out["IS90"] = sum(interval_score(samples, t, 0.9) for t in truth_draws) / truth_draws.shape[0]
    return out


def run_gmm(K: int, rows: list):
    for pname, make in PROBLEMS.items():
        gen = torch.Generator().manual_seed(0)
        prior, op = make(gen)
        x = prior.sample(1, generator=gen)
        torch.manual_seed(1000)
        y = op(x)
        post = prior.posterior(y, op)
        exact = post.sample(512, generator=gen).reshape(512, -1).double()
        post_std = post.std.reshape(-1).double()
        ref = post.sample(K, generator=gen).reshape(K, -1).double()
        rows.append({"part": "gmm", "task": pname, "solver": "exact", "K": K, **sample_scores(ref, exact),
                     "rho_std": spearman(ref.std(0), post_std)})
        for solver, opts in GMM_SOLVERS:
            try:
                rec, cost = measured(invdiff.solve, y, op, prior, solver=solver, seed=1, n_samples=K, **opts)
            except (TypeError, ValueError) as e:
                rows.append({"part": "gmm", "task": pname, "solver": solver, "options": str(opts), "K": K,
                             "note": str(e)[:80]})
                continue
            s = rec.samples.reshape(K, -1).double()
            std = rec.std.reshape(-1).double() if rec.std is not None else s.std(0)
            rows.append({"part": "gmm", "task": pname, "solver": solver, "options": str(opts), "K": K,
                         **sample_scores(s, exact), "rho_std": spearman(std, post_std), "nfe": rec.nfe,
                         "seconds": cost["seconds"], "peak_mb": cost["peak_mb"]})
            print({k: rows[-1].get(k) for k in ("task", "solver", "cov90", "CRPS")}, file=sys.stderr, flush=True)


def _mag(t):
    return t.double().pow(2).sum(1).sqrt() if t.shape[1] == 2 else t.double()[:, 0]


def run_images(K_all: int, n_images: int, rows: list, figs: dict, scales: dict, solvers=None):
    from smc_images import TASKS
    from invdiff.priors import available, load

    for tname, make in TASKS.items():
        x, op, prior_name, _ = make(n_images)
        if prior_name not in available():
            rows.append({"part": "images", "task": tname, "note": f"prior {prior_name} not installed"})
            continue
        prior = load(prior_name)
        torch.manual_seed(0)
        y = op(x)
        C = x.shape[1]
        for solver, opts in IMAGE_SOLVERS:
            # per-task tuned values are the solvers' measured defaults now (invdiff.solvers.defaults)
            if solvers and solver not in solvers:
                continue
            opts = dict(opts)
            K = opts.pop("n_samples", K_all)
            means, stds, samples, nfe, secs, peak = [], [], [], 0, 0.0, 0.0
            try:
                for i in range(n_images):      # one image per call: per-image seconds, bounded memory
                    rec, cost = measured(invdiff.solve, y[i:i + 1], op, prior, solver=solver, seed=i,
                                         n_samples=K, **opts)
                    means.append(rec.mean)
                    stds.append(rec.std if rec.std is not None else rec.samples.std(0))
                    samples.append(rec.samples[:, 0])
                    nfe, secs, peak = nfe + rec.nfe, secs + cost["seconds"], max(peak, cost["peak_mb"])
            except (TypeError, ValueError, RuntimeError) as e:
                rows.append({"part": "images", "task": tname, "solver": solver, "options": str(opts), "K": K,
                             "note": str(e).splitlines()[0][:90]})
                print(rows[-1], file=sys.stderr, flush=True)
                continue
            mean, std, S = torch.cat(means), torch.cat(stds), torch.stack(samples, 1)   # S: (K, B, C, H, W)
            err_m, std_m = _mag(mean - x), _mag(std)
            ratio = (err_m / std_m.clamp_min(1e-12))
            z = Z90[C]
            half = n_images // 2
            fit = float(torch.quantile(ratio[:half].reshape(-1), 0.9)) / z
            scale_all = float(torch.quantile(ratio.reshape(-1), 0.9)) / z
            sc = {"cov50": 0.0, "cov90": 0.0, "CRPS": 0.0, "IS90": 0.0}
            for b in range(n_images):
                for k, v in sample_scores(S[:, b].reshape(K, -1), x[b].reshape(1, -1).double()).items():
                    sc[k] += v / n_images
            rows.append({"part": "images", "task": tname, "solver": solver, "options": str(opts), "K": K, **sc,
                         "rho_err": spearman(std_m, err_m), "zcov90": float((err_m <= z * std_m).double().mean()),
                         "scale90": fit,
                         "zcov90_cal": float((err_m[half:] <= z * fit * std_m[half:]).double().mean()),
                         "scale_all": scale_all,
                         "PSNR": float(psnr(mean, x, 1.0, complex=C == 2).mean()), "nfe": nfe // n_images,
                         "seconds": secs / n_images, "peak_mb": peak})
            print({k: rows[-1].get(k) for k in ("task", "solver", "cov90", "zcov90", "scale90", "zcov90_cal")},
                  file=sys.stderr, flush=True)
            figs.setdefault(tname, []).append((solver if K == K_all else f"{solver} K={K}", err_m[0], std_m[0]))
            scales.setdefault(prior_name, {})[solver] = {"std_scale": round(scale_all, 4), "task": tname,
                                                         "options": {k: v for k, v in opts.items()}, "K": K,
                                                         "n_images": n_images}


def figure(figs: dict, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for tname, items in figs.items():
        fig, ax = plt.subplots(2, len(items), figsize=(2.1 * len(items), 4.4))
        ax = ax.reshape(2, -1)
        vmax = max(float(e.max()) for _, e, _ in items)
        for j, (solver, e, s) in enumerate(items):
            ax[0, j].imshow(e.numpy(), cmap="magma", vmin=0, vmax=vmax)
            ax[1, j].imshow(s.numpy(), cmap="magma", vmin=0, vmax=max(float(s.max()), 1e-12))
            ax[0, j].set_title(solver, fontsize=9)
            for a in ax[:, j]:
                a.axis("off")
        ax[0, 0].text(-8, 32, "|error|", rotation=90, va="center", fontsize=9)
        ax[1, 0].text(-8, 32, "std", rotation=90, va="center", fontsize=9)
        fig.suptitle(f"{tname}, held-out image 0: |error| (shared scale) vs std (own scale)", fontsize=9)
        fig.tight_layout()
        fig.savefig(path.parent / f"{path.stem}_{tname}.png", dpi=110)
        plt.close(fig)


def render(out: Path):
    """Rewrite calibration.md from calibration.json with the current notes (no rerun)."""
    data = json.loads((out / "calibration.json").read_text())
    write_results(out, "calibration", data["rows"], COLS, title="Calibration of every sampler's uncertainty",
                  notes=__doc__.split("Usage:")[0], meta=data["meta"])


COLS = ["part", "task", "solver", "options", "K", "cov50", "cov90", "CRPS", "IS90", "rho_std", "rho_err", "zcov90",
        "scale90", "zcov90_cal", "scale_all", "PSNR", "nfe", "seconds", "peak_mb", "note"]


def main():
    ap = experiment_args(__doc__, images=4)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--gmm-samples", type=int, default=64)
    ap.add_argument("--parts", default="gmm,images")
    ap.add_argument("--write-table", action="store_true", help="write the fitted scales into the package table")
    ap.add_argument("--solvers", default="", help="rerun only these image-part solvers (comma-separated); the other "
                                                  "rows, figure columns and table entries are kept")
    a = start(ap.parse_args())
    if a.smoke:
        a.samples, a.gmm_samples, a.images, a.write_table = 2, 16, 2, False
    rows, figs, scales = [], {}, {}
    parts = a.parts.split(",")
    only = [v for v in a.solvers.split(",") if v]
    out = Path(a.out)
    if only:     # keep every row not rerun (same data and seeds), in the previous order
        old = json.loads((out / "calibration.json").read_text())["rows"] if (out / "calibration.json").exists() else []
        rows = [r for r in old if not (r.get("part") == "images" and r.get("solver") in only)]
        parts = ["images"]
    if "gmm" in parts:
        run_gmm(a.gmm_samples, rows)
    if "images" in parts:
        run_images(a.samples, a.images, rows, figs, scales, only)
    write_experiment(a, "calibration", rows, COLS, title="Calibration of every sampler's uncertainty",
                     notes=__doc__, meta={"samples": a.samples, "gmm_samples": a.gmm_samples, "images": a.images,
                                          "parts": parts})
    if figs:     # a rerun of some solvers draws their own figure next to the full one
        figure(figs, out / ("calibration.png" if not only else f"calibration_{'-'.join(only)}.png"))
    if a.write_table and scales:
        table = Path(__file__).resolve().parents[1] / "invdiff" / "priors" / "weights" / "calibration.json"
        if only:     # merge: the solvers not rerun keep their entries
            kept = json.loads(table.read_text())["priors"]
            for p_name, d in scales.items():
                kept.setdefault(p_name, {}).update(d)
            scales = kept
        data = {"about": "per-(prior, solver) factor c: c * std gives 90 % Gaussian intervals (|error| <= z90 c std) "
                         "on held-out phantoms; fitted by benchmarks/calibration.py (results: "
                         "benchmarks/results/calibration.md)", "level": 0.9, "priors": scales}
        table.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()

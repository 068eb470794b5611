"""Exactness of the particle samplers (``smc`` = AFDPS, ``mcgdiff``) and of DPS on closed-form posteriors.

Gaussian-mixture priors (exact denoisers) with linear-Gaussian data, so every posterior is an exact mixture
(``GaussianMixture.posterior``). Problems go from 2-D to image-sized low-rank mixtures (``low_rank(..., floor=0)``,
exact posteriors at 256 / 1024 / 2048 dimensions), with matrix, inpainting, blur and MRI operators and several
noise levels. For each problem, R measurements are drawn (x ~ prior, y = A x + n) and every sampler runs once per
measurement with N particles (DPS: N independent chains). Reported, averaged over the R draws:

- ``SW``: sliced-Wasserstein-2 between the sampler's *weighted* ensemble and M = 2048 exact posterior draws
  (200 directions); ``floor``: the same distance for N exact draws (``sw_monte_carlo_floor``, 2 repeats);
  ``SW/floor``: goal <= 1.5 at N <= 64. ``SW_draws``: the equally weighted output ``samples`` instead.
- ``mode_TV``: total variation between the weighted mode histogram (each particle assigned to its most responsible
  posterior component) and the exact posterior weights.
- ``MSE_ratio`` = E||mean - x||^2 / E||E[x|y] - x||^2 over problem draws (x ~ prior, y ~ p(y|x)), goal <= 1.05.
  Computed Rao-Blackwellised, i.e. averaging x over p(x|y) in closed form:
  (E||mean - E[x|y]||^2 + E tr Cov[x|y]) / E tr Cov[x|y] (same expectation, far lower variance);
  ``MSE_ratio_raw`` is the plain estimate with the drawn x.
- ``cov90``: coverage of the per-coordinate central 90 % intervals of the output ``samples``, Rao-Blackwellised
  (exact posterior mass inside each interval, averaged over coordinates and draws); goal in [0.85, 0.95].
  ``cov90_exactN``: the same for N exact posterior draws (quantiles of N draws sit inside the true ones: about
  0.79 / 0.87 / 0.89 at N = 16 / 64 / 256); ``cov90_raw``: fraction of the true x inside.
  A perfect sampler also has ``MSE_ratio`` = 1 + 1/N and ``SW/floor`` = 1.
- ``ess_end`` (ESS/N after the last step), NFE per particle (denoiser evaluations of each particle), seconds per
  solve (1 thread).

Usage: python benchmarks/smc_exactness.py [--out benchmarks/results] [--quick] [--problems a,b] [--solvers smc]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

import invdiff
from invdiff.bench import write_results
from invdiff.metrics import sliced_wasserstein, sw_monte_carlo_floor
from invdiff.operators import (MRI, CircularBlur, Inpainting, MatrixOperator, gaussian_kernel, random_mask,
                               random_mask_1d)
from invdiff.priors import GaussianMixture

from exactness import problem_gmm2d, problem_gmm16  # noqa: E402 (benchmarks/ is on sys.path when run as a script)

M_EXACT = 2048
N_PROJ = 200


# ------------------------------------------------------------------------------------------------
# problems: (prior, physics)
# ------------------------------------------------------------------------------------------------
def gauss2d(gen):
    """2-D Gaussian prior N(0, 0.5 I), A = [[1, .4], [-.2, .7]], sigma_y = 1 (jma02/afdps-pde example)."""
    prior = GaussianMixture(torch.ones(1), torch.zeros(1, 2), 0.5 * torch.eye(2)[None])
    return prior, MatrixOperator(torch.tensor([[1.0, 0.4], [-0.2, 0.7]]), sigma=1.0)


def gmm2d(sigma):
    """2-D, 3 modes, one measurement of (x1 - x2)/sqrt 2: bimodal posteriors (``exactness.problem_gmm2d``)."""
    return lambda gen: problem_gmm2d(gen, sigma)


def mcg8(gen):
    """MCGdiff benchmark GMM: 8-D, 25 unit-covariance modes on a grid of spacing 8, weights ~ chi^2_1, d_y = 2,
    A = U diag(sorted U(0,1)) V^T, sigma_y = 0.5 max s (reference notes 5.3; the paper draws U(0,1) max s)."""
    means = torch.tensor([[-8.0 * i, -8.0 * j] * 4 for i in range(-2, 3) for j in range(-2, 3)])
    w = torch.randn(25, generator=gen) ** 2
    prior = GaussianMixture(w / w.sum(), means, torch.eye(8).repeat(25, 1, 1))
    A = torch.randn(2, 8, generator=gen)
    U, _, Vh = torch.linalg.svd(A, full_matrices=False)
    s = torch.rand(2, generator=gen).sort(descending=True).values
    return prior, MatrixOperator(U @ torch.diag(s) @ Vh, sigma=0.5 * float(s.max()))


gmm16 = problem_gmm16  # 16-D, 4 full-covariance components, 8 random measurements, sigma_y = 0.1


def _low_rank_images(gen, shape, K=3, r=9):
    """K exactly rank-r components (floor 0) of smooth cosine images; complex (2-channel) when shape[0] == 2."""
    C, n = shape[0], shape[1]
    u = torch.linspace(0, 1, n)
    yy, xx = torch.meshgrid(u, u, indexing="ij")
    waves = [torch.cos(math.pi * (i * xx + j * yy)) for i in range(3) for j in range(3)][:r]
    cols = []
    for c in range(C):
        for f in waves:
            v = torch.zeros(C, n, n)
            v[c] = f
            cols.append(v.reshape(-1))
    basis = torch.stack(cols, 1)
    basis = basis / basis.norm(dim=0)
    d, R = basis.shape
    if C == 1:
        means = (0.5 + 0.2 * torch.randn(K, d, generator=gen)).clamp(0.1, 0.9)
    else:
        means = 0.3 * torch.randn(K, d, generator=gen)
    w = torch.tensor([0.3, 0.3, 0.4])
    return GaussianMixture.low_rank(w, means, basis[None].expand(K, d, R).contiguous(), torch.full((K, R), 0.3), 0.0,
                                    img_shape=shape)


def img16_inpaint(gen):
    """1 x 16 x 16 low-rank mixture (rank 9, floor 0), 50 % random inpainting, sigma_y = 0.05."""
    prior = _low_rank_images(gen, (1, 16, 16))
    return prior, Inpainting((1, 16, 16), random_mask((1, 16, 16), keep=0.5, generator=gen), sigma=0.05)


def img32_blur(gen):
    """1 x 32 x 32 low-rank mixture, circular Gaussian blur (std 1 px), sigma_y = 0.02 (no real SVD: CG steps)."""
    prior = _low_rank_images(gen, (1, 32, 32))
    return prior, CircularBlur(gaussian_kernel(5, 1.0), (1, 32, 32), sigma=0.02)


def img32_mri(gen):
    """2 x 32 x 32 complex low-rank mixture (rank 18), single-coil Cartesian MRI 4x (random lines), sigma_y = 0.02."""
    prior = _low_rank_images(gen, (2, 32, 32))
    return prior, MRI(random_mask_1d((32, 32), 4, center_fraction=0.125, seed=0), (2, 32, 32), sigma=0.02)


# name -> (factory, draws R, particle counts)
PROBLEMS = {
    "gauss2d": (gauss2d, 6, (16, 64, 256)),
    "gmm2d-s0.5": (gmm2d(0.5), 6, (16, 64, 256)),
    "gmm2d-s0.1": (gmm2d(0.1), 6, (16, 64, 256)),
    "mcg8-dy2": (mcg8, 6, (16, 64, 256)),
    "gmm16-s0.1": (gmm16, 6, (16, 64, 256)),
    "img16-inpaint": (img16_inpaint, 3, (16, 64, 256)),
    "img32-blur": (img32_blur, 2, (16, 64)),
    "img32-mri4x": (img32_mri, 2, (16, 64)),
}


def solver_grid(counts, scale: float = 1.0, sweep: bool = True):
    """(label, solver, options, N) rows. NFE per particle ~ 400 for every sampler except DPS (500)."""
    rows = [(f"smc N={n}", "smc", {}, n) for n in counts]
    # the previous default smallest level (EDM's 0.004 tau): its last step to 0 collapses the weights at 2048-D
    rows += [("smc sigma_min=0.004tau N=64", "smc", {"sigma_min": 0.004 * scale}, 64)]
    # discretisation: more Langevin correction per level / more levels (2x / 4x the NFE), and the NFE-matched
    # trade of half the levels for 3 corrector steps each
    rows += [("smc corrector_steps=3 N=64", "smc", {"corrector_steps": 3}, 64),
             ("smc 800 levels N=64", "smc", {"num_steps": 800}, 64),
             ("smc 100 levels x 3 correctors N=64", "smc", {"num_steps": 100, "corrector_steps": 3}, 64)]
    # the fall toward the floor with particles at 800 levels (every problem at N = 256)
    rows += [(f"smc 800 levels N={n}", "smc", {"num_steps": 800}, n) for n in ((128, 256) if sweep else (256,))]
    # islands: independent runs of 16 particles pooled with equal / evidence weights (the image setting)
    rows += [("smc islands=4 N=64", "smc", {"island_size": 16}, 64),
             ("smc islands=4 evidence N=64", "smc", {"island_size": 16, "island_weights": "evidence"}, 64)]
    # adaptive levels (conditional ESS >= 0.9) and the Metropolis-adjusted corrector
    rows += [("smc cess_target=0.9 N=64", "smc", {"cess_target": 0.9}, 64),
             ("smc corrector=mala N=64", "smc", {"corrector": "mala"}, 64)]
    rows += [("smc tempering=none N=64", "smc", {"tempering": "none"}, 64),
             ("smc sde N=64", "smc", {"variant": "sde", "num_steps": 400}, 64)]
    rows += [(f"mcgdiff N={n}", "mcgdiff", {"num_steps": 400}, n) for n in counts if n <= 64]
    rows += [("dps N=64", "dps", {"num_steps": 500, "weight": 1.0}, 64)]
    return rows


# ------------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------------
def diag_vars(post: GaussianMixture) -> torch.Tensor:
    """(K, n) per-coordinate variances of each posterior component."""
    Q, v, d = (t.double() for t in post.covs_low_rank)
    return ((Q ** 2) * v[:, None, :]).sum(-1) + d[:, None]


def rb_coverage(post: GaussianMixture, lo: torch.Tensor, hi: torch.Tensor) -> float:
    """Mean over coordinates of the exact posterior mass in [lo_i, hi_i]."""
    w = post.weights.double()
    m = post.means.double()
    s = diag_vars(post).clamp_min(1e-24).sqrt()
    nd = torch.distributions.Normal(0.0, 1.0)
    mass = (w[:, None] * (nd.cdf((hi[None] - m) / s) - nd.cdf((lo[None] - m) / s))).sum(0)
    return float(mass.mean())


def weighted_modes(post: GaussianMixture, P: torch.Tensor, W: torch.Tensor, scale: float) -> torch.Tensor:
    lab = post.responsibilities(P.double().reshape(P.shape[0], *post.event_shape), 1e-2 * scale).argmax(1)
    return torch.zeros(post.n_components, dtype=torch.float64).index_add_(0, lab, W.double())


SWEEP = ("img32-mri4x",)   # problems with the 800-level particle sweep (N = 128, 256)


def evaluate(pname, make, R, counts, quick: bool, solvers=None):
    gen = torch.Generator().manual_seed(0)
    prior, op = make(gen)
    scale = math.sqrt(float(prior.variance.mean()))
    draws = []
    for r in range(R):
        x = prior.sample(1, generator=gen)
        torch.manual_seed(1000 + r)  # the operators draw their noise from the global RNG: seed it per measurement
        y = op(x)
        post = prior.posterior(y, op)
        exact = post.sample(M_EXACT, generator=gen).reshape(M_EXACT, -1).double()
        draws.append({"x": x.reshape(-1).double(), "y": y, "post": post, "exact": exact,
                      "pmean": post.mean.reshape(-1).double(), "trcov": float(post.variance.double().sum())})
    floors, cov_exact = {}, {}
    qs = torch.tensor([0.05, 0.95], dtype=torch.float64)
    grid = [g for g in solver_grid(counts, scale, pname in SWEEP)
            if solvers is None or g[1] in solvers or g[0] in solvers]
    for n in sorted({row[3] for row in grid if not (quick and row[3] > 64)}):  # coverage of n exact draws (8 reps)
        g = torch.Generator().manual_seed(2)
        cov_exact[n] = sum(rb_coverage(d["post"], *torch.quantile(
            d["post"].sample(n, generator=g).reshape(n, -1).double(), qs, dim=0))
            for d in draws for _ in range(8)) / (8 * R)
        floors[n] = sum(sw_monte_carlo_floor(lambda m, g, p=d["post"]: p.sample(m, generator=g).reshape(m, -1),
                                             n, m=M_EXACT, n_repeats=2, n_projections=N_PROJ,
                                             generator=torch.Generator().manual_seed(1)).mean for d in draws) / R
    rows = []
    for label, solver, opts, n in grid:
        if quick and n > 64:
            continue
        acc = {k: 0.0 for k in ("sw", "sw_draws", "tv", "dmean", "trcov", "raw_err", "raw_mmse", "cov", "cov_raw",
                                "ess", "sec")}
        nfe, note = None, ""
        try:
            for i, d in enumerate(draws):
                t0 = time.perf_counter()
                rec = invdiff.solve(d["y"], op, prior, solver=solver, seed=100 + i, n_samples=n, **opts)
                acc["sec"] += time.perf_counter() - t0
                S = rec.samples.reshape(n, -1).double()
                if "particles" in rec.info:
                    P = rec.info["particles"].reshape(n, -1).double()
                    W = rec.info["weights"].reshape(n).double()
                    acc["ess"] += float(rec.info["ess"][-1].mean())
                    nfe = rec.info["nfe_per_particle"]
                else:
                    P, W = S, torch.full((n,), 1.0 / n, dtype=torch.float64)
                    acc["ess"] += 1.0
                    nfe = rec.nfe
                g = torch.Generator().manual_seed(5)
                acc["sw"] += sliced_wasserstein(P, d["exact"], N_PROJ, generator=g, weights_a=W)
                acc["sw_draws"] += sliced_wasserstein(S, d["exact"], N_PROJ, generator=torch.Generator().manual_seed(5))
                mw = weighted_modes(d["post"], P, W, scale)
                acc["tv"] += 0.5 * float((mw - d["post"].weights.double()).abs().sum())
                mean = rec.mean.reshape(-1).double()
                acc["dmean"] += float(((mean - d["pmean"]) ** 2).sum())
                acc["trcov"] += d["trcov"]
                acc["raw_err"] += float(((mean - d["x"]) ** 2).sum())
                acc["raw_mmse"] += float(((d["pmean"] - d["x"]) ** 2).sum())
                q = torch.quantile(S, torch.tensor([0.05, 0.95], dtype=torch.float64), dim=0)
                acc["cov"] += rb_coverage(d["post"], q[0], q[1])
                acc["cov_raw"] += float(((d["x"] >= q[0]) & (d["x"] <= q[1])).double().mean())
        except (ValueError, TypeError, RuntimeError) as e:
            rows.append({"problem": pname, "dim": draws[0]["x"].numel(), "sampler": label, "note": str(e)[:90]})
            print(rows[-1], file=sys.stderr)
            continue
        row = {
            "problem": pname, "dim": draws[0]["x"].numel(), "sampler": label, "N": n, "draws": R,
            "SW": acc["sw"] / R, "floor": floors.get(n), "SW/floor": acc["sw"] / R / floors[n] if n in floors else None,
            "SW_draws": acc["sw_draws"] / R, "mode_TV": acc["tv"] / R,
            "MSE_ratio": 1.0 + acc["dmean"] / acc["trcov"], "MSE_ratio_raw": acc["raw_err"] / acc["raw_mmse"],
            "cov90": acc["cov"] / R, "cov90_exactN": cov_exact.get(n), "cov90_raw": acc["cov_raw"] / R,
            "ess_end": acc["ess"] / R,
            "nfe_per_particle": nfe, "sec_per_solve": acc["sec"] / R,
        }
        rows.append(row)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, file=sys.stderr, flush=True)
    return rows


def goals(rows, sampler: str = "smc N=64") -> str:
    """Plain-text verdicts for one sampler row label (default: smc with its defaults, N = 64)."""
    lines = []
    for r in rows:
        if r.get("sampler") != sampler or "SW" not in r:
            continue
        sw_ok = r["SW/floor"] <= 1.5
        mse_ok = r["MSE_ratio"] <= 1.05
        cov_ok = 0.85 <= r["cov90"] <= 0.95
        lines.append(f"- {r['problem']} (dim {r['dim']}): "
                     f"SW/floor {r['SW/floor']:.2f} ({'met' if sw_ok else 'NOT met'}), "
                     f"MSE ratio {r['MSE_ratio']:.3f} ({'met' if mse_ok else 'NOT met'}), "
                     f"cov90 {r['cov90']:.3f} ({'met' if cov_ok else 'NOT met'}), mode TV {r['mode_TV']:.3f}")
    return "\n".join(lines)


def _row_order(r):
    """(problem, position in its solver grid): kept and rerun rows in the usual order."""
    labels = [g[0] for g in solver_grid(PROBLEMS[r["problem"]][2], 1.0, r["problem"] in SWEEP)]
    return list(PROBLEMS).index(r["problem"]), labels.index(r["sampler"]) if r["sampler"] in labels else len(labels)


def run(out: str, quick: bool, only: list[str] | None, solvers: list[str] | None = None):
    torch.set_num_threads(1)
    rows = []
    t0 = time.perf_counter()
    old = Path(out) / "smc_exactness.json"
    kept = json.loads(old.read_text())["rows"] if (solvers or only) and old.exists() else []
    for pname, (make, R, counts) in PROBLEMS.items():
        if only and pname not in only:     # problems not rerun keep their previous rows
            rows += [r for r in kept if r["problem"] == pname]
            continue
        rows += evaluate(pname, make, 2 if quick else R, counts, quick, solvers)
        # rows of the samplers not rerun are kept from the previous results (same problems, seeds and metrics)
        rows += [r for r in kept if r["problem"] == pname and solvers and r["sampler"].split()[0] not in solvers
                 and r["sampler"] not in solvers]
    rows.sort(key=_row_order)
    cols = ["problem", "dim", "sampler", "N", "draws", "SW", "floor", "SW/floor", "SW_draws", "mode_TV", "MSE_ratio",
            "MSE_ratio_raw", "cov90", "cov90_exactN", "cov90_raw", "ess_end", "nfe_per_particle", "sec_per_solve",
            "note"]
    notes = (__doc__.split("Usage:")[0] + "\nSampler settings: smc = defaults (variant 'ode', 200 levels, "
             "tempering 'noise', ULA corrector_step 0.5, sigma_min = min(0.004 tau, 0.1 sigma_y / sqrt(m))); "
             "'smc sigma_min=0.004tau' is the previous default smallest level (EDM's); 'smc cess_target=0.9' inserts "
             "levels so that every step keeps the conditional ESS >= 0.9; 'smc corrector=mala' uses the "
             "Metropolis-adjusted corrector (exact invariance, step adapted to 57 % acceptance); "
             "'smc tempering=none' is the canonical alpha = 1 AFDPS target; "
             "'smc sde' = variant 'sde' (exact-likelihood integrator) with 400 levels; mcgdiff with 400 levels "
             "(NFE-matched); DPS = deepinv DPS, 500 steps, weight 1; 'islands=4' = 4 independent runs of 16 "
             "particles pooled with equal weights ('evidence': weighted by their evidence estimates).\n\nGoals for smc N=64:\n" + goals(rows)
             + "".join(f"\n\nThe same for '{v}':\n" + goals(rows, v) for v in
                       ("smc sigma_min=0.004tau N=64", "smc corrector_steps=3 N=64", "smc 800 levels N=64",
                        "smc 800 levels N=128", "smc 800 levels N=256", "smc islands=4 N=64",
                        "smc islands=4 evidence N=64",
                        "smc 100 levels x 3 correctors N=64",
                        "smc cess_target=0.9 N=64", "smc corrector=mala N=64"))
             + f"\n\nTotal time {time.perf_counter() - t0:.0f} s"
             + (f" (this run: problems {only or 'all'}, rows {solvers}; the other rows are kept from earlier runs "
                "of this script)." if (only or solvers) else "."))
    path = write_results(out, "smc_exactness", rows, cols, title="SMC samplers vs exact Gaussian-mixture posteriors",
                         notes=notes, meta={"quick": quick, "M_exact": M_EXACT, "n_projections": N_PROJ})
    print(path)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--quick", action="store_true", help="2 draws per problem, N <= 64")
    ap.add_argument("--problems", default="", help="rerun only these (comma-separated subset of " + ", ".join(PROBLEMS)
                    + "); the other problems' rows are kept from the existing results file")
    ap.add_argument("--solvers", default="", help="rerun only these solvers or row labels (e.g. smc, or "
                                                  "'smc sde N=64'); "
                                                  "the other rows are kept from the existing results file")
    a = ap.parse_args()
    run(a.out, a.quick, [p for p in a.problems.split(",") if p] or None, [v for v in a.solvers.split(",") if v] or None)

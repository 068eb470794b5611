"""SMC log-evidence log p(y) (``info["log_evidence"]`` of ``smc`` and ``mcgdiff``) against the closed form on the GMM problems.

Problems: the three of ``benchmarks/exactness.py`` (same seeds, same y) plus ``gauss16``, a one-component control
(16-D Gaussian prior, 8 random measurements, sigma_y 0.1) where every error is the sampler's own. The exact value
is ``GaussianMixture.log_evidence(y, physics)`` = log sum_k w_k N(y; A mu_k, A C_k A^T + sigma_y^2 I).

For each configuration, R independent runs (seeds 0..R-1) of N particles:
- est_mean, run_sd: mean and standard deviation over runs of the estimate (run_sd is the Monte Carlo standard error
  of one run's estimate), bias = est_mean - exact, bias_se = run_sd / sqrt(R);
- ok: |bias| <= max(0.1, run_sd) (the acceptance: within 0.1 nats or within the estimator's own standard error);
- NFE per particle, seconds per run, peak memory. The 800-level ULA smc rows run on the problems up to 64-D only.

What the estimator measures: log p(y) = log Z_I + sum_levels log sum_i W_i w_i - (m/2) log(2 pi sigma_y^2) with Z_I the
Gaussian Stage-I constant. It is consistent (N -> inf) only when every move leaves its tempered target invariant; the
probability-flow Euler predictor and the ULA corrector (``variant="ode"``) do so only as their steps shrink, so the
bias below is the sampler's own discretisation / corrector bias, in nats (the log-estimator is also biased low by
about run_sd^2 / 2, Jensen). ``corrector="mala"`` (Metropolis-adjusted Langevin, exact invariance of each tempered
target; it needs the noised prior's density, here the mixture's closed form) removes the corrector's part.

MCGdiff: log p(y) = log p(y~) (its particle filter with normalised potentials) - sum_i log s_i - (out-of-range part).

Usage: python benchmarks/smc_evidence.py [--particles 64] [--runs 4] [--out benchmarks/results] [--quick]
       [--solvers smc,mcgdiff] [--threads 1] [--smoke]
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

import invdiff
from invdiff.bench.harness import experiment_args, measured, start, write_experiment
from invdiff.operators import MatrixOperator
from invdiff.priors import GaussianMixture

sys.path.insert(0, str(Path(__file__).resolve().parent))
from exactness import PROBLEMS  # noqa: E402


def problem_gauss16(gen):
    """16-D one-component control: prior N(mu, L L^T + 0.05 I), 8 random measurements, sigma_y = 0.1."""
    n = 16
    L = 0.4 * torch.randn(n, n, generator=gen) / math.sqrt(n)
    prior = GaussianMixture(torch.ones(1), 2 * torch.randn(1, n, generator=gen), (L @ L.T + 0.05 * torch.eye(n))[None])
    return prior, MatrixOperator(torch.randn(8, n, generator=gen) / math.sqrt(n), sigma=0.1)


ALL = {"gauss16": problem_gauss16, **PROBLEMS}
CONFIGS = [
    ("smc", {"num_steps": 200}),                                     # defaults (ULA corrector)
    ("smc", {"num_steps": 800}),
    ("smc", {"num_steps": 200, "corrector": "mala"}),                # Metropolis-adjusted corrector
    ("smc", {"num_steps": 800, "corrector": "mala"}),
    ("smc", {"num_steps": 200, "variant": "sde"}),
    ("mcgdiff", {"num_steps": 100}),                                 # defaults
    ("mcgdiff", {"num_steps": 400}),
]


def run(args):
    particles, runs, quick, solvers = args.particles, args.runs, args.quick, args.solvers.split(",")
    rows = []
    configs = [c for c in (CONFIGS[:1] if quick else CONFIGS) if c[0] in solvers]
    for pname, make in ALL.items():
        gen = torch.Generator().manual_seed(0)
        prior, op = make(gen)
        x = prior.sample(1, generator=gen)
        torch.manual_seed(1000)  # as exactness.py: the operators draw their noise from the global RNG
        y = op(x)
        exact = float(prior.log_evidence(y, op))
        for solver, opts in configs:
            if solver == "smc" and prior.dim > 64 and opts["num_steps"] > 200 and opts.get("corrector") != "mala":
                continue                                                 # 256-D, 800 levels: ~1 CPU-min a run
            est, secs, nfe, peak = [], [], 0, 0.0
            for seed in range(runs):
                rec, cost = measured(invdiff.solve, y, op, prior, solver=solver, seed=seed, n_samples=particles,
                                     **opts)
                est.append(float(rec.info["log_evidence"][0]))
                secs.append(cost["seconds"])
                nfe, peak = rec.info["nfe_per_particle"], max(peak, cost["peak_mb"])
            t = torch.tensor(est, dtype=torch.float64)
            sd = float(t.std()) if runs > 1 else float("nan")
            bias = float(t.mean()) - exact
            rows.append({"problem": pname, "dim": prior.dim, "solver": solver, "options": str(opts),
                         "particles": particles, "runs": runs, "exact": exact, "est_mean": float(t.mean()),
                         "run_sd": sd, "bias": bias, "bias_se": sd / math.sqrt(runs),
                         "ok": bool(abs(bias) <= max(0.1, sd)), "estimates": [round(e, 4) for e in est],
                         "nfe": nfe, "seconds": sum(secs) / runs, "peak_mb": peak})
            print({k: rows[-1][k] for k in ("problem", "options", "exact", "est_mean", "run_sd", "bias", "ok")},
                  file=sys.stderr, flush=True)
    old = Path(args.out) / "smc_evidence.json"
    if old.exists():     # keep the rows of the solvers not rerun
        import json
        rows = [r for r in json.loads(old.read_text())["rows"] if r["solver"] not in solvers] + rows
    cols = ["problem", "dim", "solver", "options", "particles", "runs", "exact", "est_mean", "run_sd", "bias",
            "bias_se", "ok", "nfe", "seconds", "peak_mb"]
    write_experiment(args, "smc_evidence", rows, cols, title="SMC log-evidence vs closed form (GMM problems)",
                     notes=__doc__, meta={"particles": particles, "runs": runs, "quick": quick})


if __name__ == "__main__":
    ap = experiment_args(__doc__)
    ap.add_argument("--particles", type=int, default=64)
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="the default settings of smc only")
    ap.add_argument("--solvers", default="smc,mcgdiff", help="rerun these; the other solvers' rows are kept")
    a = start(ap.parse_args())
    if a.smoke:
        a.particles, a.runs, a.quick = 8, 2, True
    run(a)

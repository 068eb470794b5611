"""Exactness of every sampler against closed-form posteriors (Gaussian-mixture prior, linear-Gaussian data).

For each problem: draw x ~ prior, y = A x + n; the exact posterior is a Gaussian mixture
(``GaussianMixture.posterior``). Each solver draws N samples; we report

- SW: sliced-Wasserstein-2 distance between solver samples and N exact posterior samples,
- floor: SW between two independent exact sample sets of size N (what a perfect sampler gets), mean +- std,
- mean_err: ||E_solver[x] - E_post[x]|| / sqrt(tr Cov_post) (0 = exact mean; ~ 1/sqrt(N) from Monte Carlo),
- cov90: per-coordinate coverage of the central 90% credible interval of the solver samples by exact posterior
  draws (0.9 for a calibrated sampler),
- NFE, seconds, peak memory.

Usage: python benchmarks/exactness.py [--samples 512] [--out benchmarks/results] [--quick] [--threads 1] [--smoke]
"""
from __future__ import annotations

import math
import sys

import torch

import invdiff
from invdiff.bench.harness import experiment_args, measured, start, write_experiment
from invdiff.metrics import sliced_wasserstein, sw_monte_carlo_floor
from invdiff.operators import Inpainting, MatrixOperator, random_mask
from invdiff.priors import GaussianMixture


def problem_gmm2d(gen, sigma: float = 0.5):
    """2-D, 3 well-separated modes, one measurement of (x1 - x2)/sqrt 2 with noise ``sigma``: a bimodal posterior."""
    w = torch.tensor([0.3, 0.3, 0.4])
    means = torch.tensor([[-2.0, 2.0], [2.0, -2.0], [1.5, 1.5]])
    covs = torch.stack([0.3 * torch.eye(2), 0.3 * torch.eye(2), torch.tensor([[0.4, 0.2], [0.2, 0.4]])])
    prior = GaussianMixture(w, means, covs)
    op = MatrixOperator(torch.tensor([[1.0, -1.0]]) / math.sqrt(2), sigma=sigma)
    return prior, op


def problem_gmm16(gen):
    """16-D, 4 random full-covariance components, 8 random measurements, sigma_y = 0.1."""
    n, K = 16, 4
    means = 2 * torch.randn(K, n, generator=gen)
    L = 0.4 * torch.randn(K, n, n, generator=gen) / math.sqrt(n)
    covs = L @ L.mT + 0.05 * torch.eye(n)
    prior = GaussianMixture(torch.tensor([0.1, 0.2, 0.3, 0.4]), means, covs)
    op = MatrixOperator(torch.randn(8, n, generator=gen) / math.sqrt(n), sigma=0.1)
    return prior, op


def problem_image(gen, n=16):
    """(1, 16, 16) images, 3 low-rank (r = 9) smooth components in [0, 1], 50 % random inpainting, sigma 0.05."""
    d = n * n
    u = torch.linspace(0, 1, n)
    yy, xx = torch.meshgrid(u, u, indexing="ij")
    basis = torch.stack([torch.cos(math.pi * (i * xx + j * yy)).reshape(-1) for i in range(3) for j in range(3)], 1)
    basis = basis / basis.norm(dim=0)
    means = (0.5 + 0.2 * torch.randn(3, d, generator=gen)).clamp(0.1, 0.9)
    prior = GaussianMixture.low_rank(torch.tensor([0.3, 0.3, 0.4]), means, basis[None].expand(3, d, 9),
                                     torch.full((3, 9), 0.3), 1e-4, img_shape=(1, n, n))
    op = Inpainting((1, n, n), random_mask((1, n, n), keep=0.5, generator=gen), sigma=0.05)
    return prior, op


def interval_coverage(samples: torch.Tensor, exact: torch.Tensor, level: float) -> float:
    """Fraction of exact posterior draws inside the solver's per-coordinate central credible intervals."""
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=samples.dtype)
    lo, hi = torch.quantile(samples, q, dim=0)
    return float(((exact >= lo) & (exact <= hi)).double().mean())


PROBLEMS = {"gmm2d": problem_gmm2d, "gmm16": problem_gmm16, "image16-inpaint": problem_image}
SOLVERS = [
    ("dds", {"num_steps": 50}),
    ("dds", {"num_steps": 100}),
    ("dps", {"num_steps": 500, "weight": 1.0}),
    ("diffpir", {"num_steps": 100}),
    ("ddrm", {"num_steps": 100}),
    # RED-Diff is a mode-seeking optimiser: its "samples" are independent runs, so expect SW far above the floor and
    # cov90 far below 0.9; what it converges to is in benchmarks/red_diff_images.py --parts gmm (red_diff_gmm.md)
    ("red-diff", {"num_steps": 100}),
    ("red-diff", {"num_steps": 1000}),
    # weighted-particle samplers: n_samples = particles of one run (the rows use the equally weighted draws);
    # the full particle-count / mode-weight / MSE / coverage study is benchmarks/smc_exactness.py
    ("smc", {"num_steps": 200}),
    ("mcgdiff", {"num_steps": 400}),
]


def run(args):
    n_samples, quick = args.samples, args.quick
    rows = []
    for pname, make in PROBLEMS.items():
        gen = torch.Generator().manual_seed(0)
        prior, op = make(gen)
        x = prior.sample(1, generator=gen)
        torch.manual_seed(1000)  # the operators draw their noise from the global RNG: seed it (reproducible y)
        y = op(x)
        post = prior.posterior(y, op)
        exact = post.sample(n_samples, generator=gen).reshape(n_samples, -1).double()
        floor = sw_monte_carlo_floor(lambda m, g: post.sample(m, generator=g).reshape(m, -1), n_samples,
                                     n_repeats=3, generator=gen)
        post_mean = post.mean.reshape(-1).double()
        post_scale = float(post.std.pow(2).sum().sqrt())
        for solver, opts in SOLVERS:
            if quick:
                opts = {**opts, "num_steps": min(opts["num_steps"], 50)}
            try:
                rec, cost = measured(invdiff.solve, y, op, prior, solver=solver, seed=1, n_samples=n_samples, **opts)
            except (TypeError, ValueError) as e:
                rows.append({"problem": pname, "solver": solver, "options": str(opts), "note": str(e)[:80]})
                continue
            s = rec.samples.reshape(n_samples, -1).double()
            rows.append({
                "problem": pname, "solver": solver, "options": str(opts),
                "SW": float(sliced_wasserstein(s, exact, generator=torch.Generator().manual_seed(5))),
                "floor": floor.mean, "floor_std": floor.std,
                "mean_err": float((s.mean(0) - post_mean).norm()) / post_scale,
                "cov90": interval_coverage(s, exact, 0.9), **cost,
            })
            print(rows[-1], file=sys.stderr)
    cols = ["problem", "solver", "options", "SW", "floor", "floor_std", "mean_err", "cov90", "nfe", "seconds",
            "peak_mb", "note"]
    write_experiment(args, "exactness", rows, cols, title="Sampler exactness on closed-form posteriors",
                     notes=__doc__, meta={"n_samples": n_samples, "quick": quick})


if __name__ == "__main__":
    ap = experiment_args(__doc__)
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--quick", action="store_true", help="at most 50 steps per sampler")
    a = start(ap.parse_args())
    if a.smoke:
        a.samples, a.quick = 16, True
    run(a)

"""ADS exactness of the choice: greedy max-entropy acquisitions against the closed form with a Gaussian prior.

With a one-component ``GaussianMixture`` prior N(0, Sigma) and y = A x + sigma n, the posterior given the acquired
set S is Gaussian, Sigma_S = Sigma - Sigma A_S^T (A_S Sigma A_S^T + sigma^2 I)^-1 A_S Sigma, and the entropy of the
predictive of candidate c is H_c = 1/2 log det(2 pi e (A_c Sigma_S A_c^T + sigma^2 I)). At every ADS acquisition
(one candidate per event, ``per_step=1``) we compare ADS's choice with argmax_c H_c over the candidates not yet
acquired, given the same S (the set ADS had acquired so far).

Problems (sigma = 0.05, prior covariances: squared-exponential kernels times a random amplitude envelope, so
acquisitions interact and candidates are not eigen-directions):

- ``fourier-rows``: x in R^32, the full real orthonormal DFT basis (32 rows cos/sin), one candidate per row
  (``MatrixOperator``; an MRI-like problem with d = 1 per candidate);
- ``mri-16x16``: tiny single-coil Cartesian MRI, complex 16 x 16 image (real and imaginary parts independent,
  the imaginary one at half the variance), candidates = the 16 k-space columns (d = 32 real entries each; H_c is
  a 32 x 32 log-determinant);
- ``inpainting-8x8``: 8 x 8 image, candidates = the 64 pixels.

Part 1 (``ads_exactness``): ADS runs (50 steps, 8 acquisitions, no centre block) for three (guidance, window)
cells: the default DDS data consistency with the default window (0, 0.5) of the reverse steps, DDS with a late window
(0.5, 1), and the official DPS step (weight 2) with the late window; then each particle count N and score; ``agree`` = fraction of acquisitions equal to the exact greedy choice;
``agree_tie`` counts a choice within 0.01 nats of the best as agreeing; ``regret`` = mean H_best - H_chosen
(nats); ``rank_corr`` = Spearman correlation between ADS's scores and H over the open candidates. Seeds give both
the problem (covariance envelope) and x.

Part 2 (``ads_estimators``): the estimators alone, on N exact posterior samples (given the acquired sets of the
part-1 runs with N = 1024, variance score): top-1 agreement, Spearman correlation with H, and for ``gmm-lb`` (nats,
sigma_H = sigma) the mean absolute error |H_est - H| and the mean signed error.

Usage: python benchmarks/ads_exactness.py [--seeds 3] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import torch

import invdiff
from invdiff.bench import write_results
from invdiff.operators import MRI, Inpainting, MatrixOperator
from invdiff.operators.candidates import candidates
from invdiff.priors import GaussianMixture
from invdiff.solvers.ads import predictive_score

F64 = torch.float64
SIGMA = 0.05
DPS_WEIGHT = 2.0
#: (guidance, acquisition window) cells
CELLS = [("dds", (0.0, 0.5)), ("dds", (0.5, 1.0)), ("dps", (0.5, 1.0))]


def _cov_1d(n, ell, g):
    i = torch.arange(n, dtype=F64)
    K = torch.exp(-(i[:, None] - i[None]) ** 2 / (2 * ell ** 2))
    env = 0.3 + torch.rand(n, generator=g, dtype=F64)
    return env[:, None] * K * env[None] + 1e-4 * torch.eye(n, dtype=F64)


def make_problem(name, g):
    """(operator, prior covariance (n, n) float64, image shape)."""
    if name == "fourier-rows":
        n = 32
        t = torch.arange(n, dtype=F64)
        rows = [torch.ones(n, dtype=F64) / math.sqrt(n)]
        for k in range(1, n // 2):
            rows += [torch.cos(2 * math.pi * k * t / n) * math.sqrt(2 / n), torch.sin(2 * math.pi * k * t / n) * math.sqrt(2 / n)]
        rows.append(torch.cos(math.pi * t) / math.sqrt(n))
        return MatrixOperator(torch.stack(rows).float(), sigma=SIGMA), _cov_1d(n, 2.0, g), (n,)
    if name == "mri-16x16":
        H = 16
        S = torch.kron(_cov_1d(H, 2.0, g), _cov_1d(H, 2.0, g))
        return MRI(None, (2, H, H), sigma=SIGMA), torch.block_diag(S, 0.5 * S), (2, H, H)
    H = 8
    S = torch.kron(_cov_1d(H, 1.5, g), _cov_1d(H, 1.5, g))
    return Inpainting((1, H, H), torch.ones(1, H, H), sigma=SIGMA), S, (1, H, H)


PROBLEMS = ("fourier-rows", "mri-16x16", "inpainting-8x8")


def dense(op, shape):
    n = math.prod(shape)
    E = torch.eye(n).reshape(n, *shape)
    return op.A(E).reshape(n, -1).T.to(F64)


def posterior_cov(Ad, cs, Sig, acq):
    if not acq:
        return Sig
    AS = Ad[cs.index[torch.tensor(acq)].reshape(-1)]
    S = AS @ Sig @ AS.T + SIGMA ** 2 * torch.eye(AS.shape[0], dtype=F64)
    return Sig - Sig @ AS.T @ torch.linalg.solve(S, AS @ Sig)


def exact_entropy(Ad, cs, Sig_S):
    out = []
    for c in range(cs.n):
        Ac = Ad[cs.index[c]]
        Sc = Ac @ Sig_S @ Ac.T + SIGMA ** 2 * torch.eye(Ac.shape[0], dtype=F64)
        out.append(0.5 * torch.logdet(2 * math.pi * math.e * Sc))
    return torch.stack(out)


def spearman(a, b):
    ra, rb = a.argsort().argsort().to(F64), b.argsort().argsort().to(F64)
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def ads_run(name, seed, N, score, steps, budget, window, guidance):
    g = torch.Generator().manual_seed(seed)
    op, Sig, shape = make_problem(name, g)
    prior = GaussianMixture(torch.ones(1), torch.zeros(1, Sig.shape[0]), Sig[None].float(),
                            img_shape=None if len(shape) == 1 else shape)
    x = prior.sample(1, generator=g)
    y = op(x)
    opts = dict(budget=budget, particles=N, num_steps=steps, window=window, score=score, per_step=1)
    if guidance == "dps":
        opts.update(guidance="dps", dps_weight=DPS_WEIGHT)
    if isinstance(op, MRI):
        opts["center_fraction"] = None
    t0 = time.perf_counter()
    rec = invdiff.solve(y, op, prior, solver="ads", seed=seed, **opts)
    secs = time.perf_counter() - t0
    cs = candidates(op)
    Ad = dense(op, shape)
    acq, agree, agree_tie, regret, corr, sets = [], 0, 0, [], [], []
    for e, (c, _) in enumerate(rec.info["order"]):
        H = exact_entropy(Ad, cs, posterior_cov(Ad, cs, Sig, acq))
        open_ = torch.ones(cs.n, dtype=torch.bool)
        open_[acq] = False
        best = float(H[open_].max())
        gap = best - float(H[c])
        agree += int(gap <= 0.0)
        agree_tie += int(gap <= 0.01)
        regret.append(gap)
        if int(open_.sum()) >= 3:
            corr.append(spearman(H[open_], rec.info["scores"][e][open_]))
        sets.append(list(acq))
        acq.append(c)
    k = len(rec.info["order"])
    return {"agree": agree / k, "agree_tie": agree_tie / k, "regret": sum(regret) / k,
            "rank_corr": sum(corr) / len(corr) if corr else None,
            "nfe": rec.nfe, "nfe_images": rec.info["nfe_images"], "seconds": secs}, (op, Sig, shape, cs, Ad, sets)


def estimator_rows(name, ctx, N, seed):
    op, Sig, shape, cs, Ad, sets = ctx
    g = torch.Generator().manual_seed(10_000 + seed)
    out = {s: {"top1": 0, "corr": [], "mae": [], "bias": []} for s in ("variance", "gmm", "gmm-lb")}
    for acq in sets:
        Sig_S = posterior_cov(Ad, cs, Sig, acq)
        H = exact_entropy(Ad, cs, Sig_S)
        L = torch.linalg.cholesky(Sig_S + 1e-12 * torch.eye(Sig_S.shape[0], dtype=F64))
        xs = (torch.randn(N, Sig_S.shape[0], generator=g, dtype=F64) @ L.T).reshape(N, *shape)
        pred = cs.split((xs.reshape(N, -1) @ Ad.T).reshape(N, *cs.y_shape))
        open_ = torch.ones(cs.n, dtype=torch.bool)
        open_[acq] = False
        for s in out:
            est = predictive_score(pred, s, SIGMA)
            out[s]["top1"] += int(int(est.masked_fill(~open_, -float("inf")).argmax()) ==
                                  int(H.masked_fill(~open_, -float("inf")).argmax()))
            out[s]["corr"].append(spearman(H[open_], est[open_]))
            if s == "gmm-lb":
                out[s]["mae"].append(float((est[open_] - H[open_]).abs().mean()))
                out[s]["bias"].append(float((est[open_] - H[open_]).mean()))
    rows = []
    for s, o in out.items():
        k = len(sets)
        rows.append({"problem": name, "seed": seed, "N": N, "score": s, "top1": o["top1"] / k,
                     "rank_corr": sum(o["corr"]) / k,
                     "mae_nats": sum(o["mae"]) / k if o["mae"] else None,
                     "bias_nats": sum(o["bias"]) / k if o["bias"] else None})
    return rows


def mean_rows(rows, keys, metrics):
    groups = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for key, rs in groups.items():
        row = dict(zip(keys, key))
        row["seeds"] = len(rs)
        for m in metrics:
            vals = [r[m] for r in rs if r.get(m) is not None]
            row[m] = sum(vals) / len(vals) if vals else None
        out.append(row)
    return out


def run(args):
    torch.set_num_threads(1)
    t_all = time.perf_counter()
    rows, est = [], []
    for name in args.problems:
        for guidance, window in CELLS:
          for N in args.particles:
            for score in ("variance", "gmm", "gmm-lb"):
                if score != "variance" and N > args.max_pairwise:
                    continue
                for seed in range(args.seeds):
                    r, ctx = ads_run(name, seed, N, score, args.steps, args.budget, window, guidance)
                    rows.append({"problem": name, "guidance": guidance, "window": str(window), "N": N, "score": score, "seed": seed, **r})
                    print(rows[-1], file=sys.stderr, flush=True)
                    if N == max(args.particles) and score == "variance" and (guidance, window) == CELLS[0]:
                        for Ne in args.estimator_particles:
                            est += estimator_rows(name, ctx, Ne, seed)
    metrics = ["agree", "agree_tie", "regret", "rank_corr", "nfe", "nfe_images", "seconds"]
    summary = mean_rows(rows, ["problem", "guidance", "window", "N", "score"], metrics)
    notes = (__doc__.split("Usage:")[0] + f"\nSettings: {args.seeds} seeds per cell, {args.budget} acquisitions, "
             f"{args.steps} reverse steps; seconds per ADS run (1 thread, shared machine). "
             f"Total {time.perf_counter() - t_all:.0f} s.")
    cols = ["problem", "guidance", "window", "N", "score", "seeds", *metrics]
    path = write_results(args.out, "ads_exactness", summary, cols, title="ADS: exactness of the greedy choice",
                         notes=notes, meta=vars(args))
    est_sum = mean_rows(est, ["problem", "N", "score"], ["top1", "rank_corr", "mae_nats", "bias_nats"])
    write_results(args.out, "ads_estimators", est_sum, ["problem", "N", "score", "seeds", "top1", "rank_corr",
                                                        "mae_nats", "bias_nats"],
                  title="ADS: entropy estimators on exact posterior samples", notes=__doc__.split("Usage:")[0],
                  meta=vars(args))
    print(path)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--particles", type=int, nargs="*", default=[64, 256, 1024])
    ap.add_argument("--estimator-particles", type=int, nargs="*", default=[64, 256])
    ap.add_argument("--max-pairwise", type=int, default=256, help="largest N for the O(N^2) gmm scores")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--budget", type=int, default=8)
    ap.add_argument("--problems", nargs="*", default=list(PROBLEMS), choices=list(PROBLEMS))
    ap.add_argument("--out", default="benchmarks/results")
    run(ap.parse_args())

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

Part 1 (``ads_exactness``): ADS runs (50 reverse steps, 8 acquisitions, one candidate per event, no centre block)
in three cells: ``tweedie`` = the particles' current (data-consistent) Tweedie estimates at the scheduled steps
of the window (0.5, 1) scored (the official way), with DDS data consistency or the official DPS step (weight 2);
``restart`` = every event scores the particles at the end of a reverse pass, then a new pass from half-way
(``predictive="restart"``), with the default prox weight (gamma = 1 for a prior without a value range) and with
gamma = 1/sigma^2 (``-g400``: prox prior variance 1, the scale of these priors). For each particle count N and
score:

- the comparison is choice by choice *conditional on the same history*: at event e the exact entropies H_c are
  computed given the set ADS itself had acquired before e (not a separate exact trajectory);
- ``agree`` (strict) = fraction of choices that are an argmax of H_c (exact ties, H equal up to 1e-9 nats,
  count: MRI columns +k and -k have the same predictive); ``agree_01`` / ``agree_05``: the chosen candidate's H
  within 0.01 / 0.05 nats of the best (predictive variance within 2 % / 10 %: near-ties, below what N particles
  resolve); ``regret`` = mean H_best - H_chosen (nats); ``rank_corr`` = Spearman
  correlation between ADS's scores and H over the open candidates;
- particle predictive vs exact predictive at each event (noiseless part, trace over a candidate's d entries):
  ``var_logratio`` = mean over open candidates of log(particle variance / exact posterior variance) (0 = right
  spread, < 0 too narrow), ``var_abslog`` its mean absolute value (direction-dependent error, which reorders
  candidates), ``mean_err`` = RMS error of the particle mean over the exact posterior mean, in posterior
  standard deviations.

Seeds give both the problem (covariance envelope) and x.

Part 2 (``ads_estimators``): the estimators alone, on N exact posterior samples (given the acquired sets of the
exact greedy trajectory, 8 events per seed, 4 independent draws each): top-1 agreement strict / within 0.01 /
0.05 nats, Spearman correlation with H, and for the entropies in nats (``gmm-lb``, ``gauss``, sigma_H = sigma)
the mean absolute and signed error against H.

Part 3 (``ads_select``): several candidates per event (k = 4, inpainting and Fourier rows): ``topk`` (the k best
marginal scores, official) vs ``conditional`` (greedy, particles re-conditioned after each pick,
``select_candidates``), on N exact posterior samples, against the exact greedy k picks (exact re-conditioning
after each pick): ``joint_gap`` = joint entropy of the exact greedy set minus that of the chosen set,
1/2 log det(2 pi e (A_B Sigma_S A_B^T + sigma^2 I)) (nats, >= 0 up to greedy suboptimality), ``overlap`` =
fraction of the exact greedy set chosen.

Usage: python benchmarks/ads_exactness.py [--seeds 3] [--particles 16 64 256 1024] [--out benchmarks/results]
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
from invdiff.solvers import ads as ads_module
from invdiff.solvers.ads import predictive_score, select_candidates

F64 = torch.float64
SIGMA = 0.05
DPS_WEIGHT = 2.0
#: (name, solver options) cells of part 1
CELLS = [("dds-tweedie", dict(window=(0.5, 1.0))),
         ("dps-tweedie", dict(window=(0.5, 1.0), guidance="dps", dps_weight=DPS_WEIGHT)),
         ("dds-restart", dict(predictive="restart", restart=0.5)),
         ("dds-restart-g400", dict(predictive="restart", restart=0.5, gamma=1 / SIGMA ** 2))]
TOLS = (0.01, 0.05)
TIE = 1e-9          #: exact ties (MRI columns +k and -k have the same predictive): H equal up to round-off


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


def posterior_mean(Ad, cs, Sig, acq, yv):
    if not acq:
        return torch.zeros(Sig.shape[0], dtype=F64)
    idx = cs.index[torch.tensor(acq)].reshape(-1)
    AS = Ad[idx]
    return Sig @ AS.T @ torch.linalg.solve(AS @ Sig @ AS.T + SIGMA ** 2 * torch.eye(len(idx), dtype=F64), yv[idx])


def setup(name, seed):
    g = torch.Generator().manual_seed(seed)
    op, Sig, shape = make_problem(name, g)
    prior = GaussianMixture(torch.ones(1), torch.zeros(1, Sig.shape[0]), Sig[None].float(),
                            img_shape=None if len(shape) == 1 else shape)
    x = prior.sample(1, generator=g)
    return op, Sig, shape, prior, op(x)


def ads_run(name, seed, N, score, steps, budget, cell):
    op, Sig, shape, prior, y = setup(name, seed)
    opts = dict(budget=budget, particles=N, num_steps=steps, score=score, per_step=1, **dict(CELLS)[cell])
    if isinstance(op, MRI):
        opts["center_fraction"] = None
    captured = []                        # the particle predictions each event scored (spy on the selection)
    real_select = ads_module.select_candidates

    def spy(pred, *a, **kw):
        captured.append(pred.detach().to(F64).clone())
        return real_select(pred, *a, **kw)

    ads_module.select_candidates = spy
    try:
        t0 = time.perf_counter()
        rec = invdiff.solve(y, op, prior, solver="ads", seed=seed, **opts)
        secs = time.perf_counter() - t0
    finally:
        ads_module.select_candidates = real_select
    cs = candidates(op)
    Ad = dense(op, shape)
    yv = y.reshape(-1).to(F64)
    acq, gaps, corr, vlog, vabs, merr = [], [], [], [], [], []
    for e, (c, _) in enumerate(rec.info["order"]):
        Sig_S = posterior_cov(Ad, cs, Sig, acq)
        H = exact_entropy(Ad, cs, Sig_S)
        open_ = torch.ones(cs.n, dtype=torch.bool)
        open_[acq] = False
        gaps.append(float(H[open_].max()) - float(H[c]))
        if int(open_.sum()) >= 3:
            corr.append(spearman(H[open_], rec.info["scores"][e][open_]))
        # particle predictive vs the exact one (noiseless part)
        pred = captured[e]                                                    # (N, n, d)
        pv = (pred - pred.mean(0)).pow(2).mean(0).sum(-1)
        ev = torch.stack([torch.trace(Ad[cs.index[k]] @ Sig_S @ Ad[cs.index[k]].T) for k in range(cs.n)])
        em = cs.split((Ad @ posterior_mean(Ad, cs, Sig, acq, yv)).reshape(1, *cs.y_shape))[0]
        lr = (pv / ev)[open_].log()
        vlog.append(float(lr.mean()))
        vabs.append(float(lr.abs().mean()))
        merr.append(float((pred.mean(0) - em)[open_].pow(2).sum(-1).mean().sqrt() / ev[open_].mean().sqrt()))
        acq.append(c)
    k = len(gaps)
    mean = lambda v: sum(v) / len(v) if v else None                                       # noqa: E731
    return {"agree": sum(g <= TIE for g in gaps) / k, **{f"agree_{str(t)[2:]}": sum(g <= t for g in gaps) / k
                                                        for t in TOLS},
            "regret": mean(gaps), "rank_corr": mean(corr), "var_logratio": mean(vlog), "var_abslog": mean(vabs),
            "mean_err": mean(merr), "nfe": rec.nfe, "nfe_images": rec.info["nfe_images"], "seconds": secs}


def exact_greedy_sets(Ad, cs, Sig, budget):
    acq, sets = [], []
    for _ in range(budget):
        H = exact_entropy(Ad, cs, posterior_cov(Ad, cs, Sig, acq))
        if acq:
            H[acq] = -float("inf")
        sets.append(list(acq))
        acq.append(int(H.argmax()))
    return sets


def posterior_draws(Sig_S, N, g):
    L = torch.linalg.cholesky(Sig_S + 1e-12 * torch.eye(Sig_S.shape[0], dtype=F64))
    return torch.randn(N, Sig_S.shape[0], generator=g, dtype=F64) @ L.T


def estimator_rows(name, seed, Ns, budget, draws, max_pairwise):
    op, Sig, shape, _, _ = setup(name, seed)
    cs, Ad = candidates(op), dense(op, shape)
    g = torch.Generator().manual_seed(10_000 + seed)
    out = {}
    for acq in exact_greedy_sets(Ad, cs, Sig, budget):
        Sig_S = posterior_cov(Ad, cs, Sig, acq)
        H = exact_entropy(Ad, cs, Sig_S)
        open_ = torch.ones(cs.n, dtype=torch.bool)
        open_[acq] = False
        Hb = float(H[open_].max())
        for N in Ns:
            for _ in range(draws):
                pred = cs.split((posterior_draws(Sig_S, N, g) @ Ad.T).reshape(N, *cs.y_shape))
                for sc in ("variance", "gauss", "gmm", "gmm-lb"):
                    if sc in ("gmm", "gmm-lb") and N > max_pairwise:
                        continue
                    est = predictive_score(pred, sc, SIGMA)
                    gap = Hb - float(H[int(est.masked_fill(~open_, -float("inf")).argmax())])
                    o = out.setdefault((N, sc), {"gap": [], "corr": [], "err": []})
                    o["gap"].append(gap)
                    o["corr"].append(spearman(H[open_], est[open_]))
                    if sc in ("gmm-lb", "gauss"):
                        o["err"].append(est[open_] - H[open_])
    rows = []
    for (N, sc), o in out.items():
        k = len(o["gap"])
        err = torch.cat(o["err"]) if o["err"] else None
        rows.append({"problem": name, "seed": seed, "N": N, "score": sc,
                     "top1": sum(v <= TIE for v in o["gap"]) / k,
                     **{f"top1_{str(t)[2:]}": sum(v <= t for v in o["gap"]) / k for t in TOLS},
                     "rank_corr": sum(o["corr"]) / k,
                     "mae_nats": float(err.abs().mean()) if err is not None else None,
                     "bias_nats": float(err.mean()) if err is not None else None})
    return rows


def joint_entropy(Ad, cs, Sig_S, B):
    AB = Ad[cs.index[torch.tensor(B)].reshape(-1)]
    return float(0.5 * torch.logdet(2 * math.pi * math.e * (AB @ Sig_S @ AB.T
                                                             + SIGMA ** 2 * torch.eye(AB.shape[0], dtype=F64))))


def select_rows(name, seed, Ns, k, draws, score="variance"):
    """Part 3: k picks per event, on exact posterior samples, vs the exact greedy k picks."""
    op, Sig, shape, _, _ = setup(name, seed)
    cs, Ad = candidates(op), dense(op, shape)
    g = torch.Generator().manual_seed(20_000 + seed)
    rows, acq = [], []
    for _ in range(2):                                   # two events of k picks along the exact greedy trajectory
        Sig_S = posterior_cov(Ad, cs, Sig, acq)
        best = _exact_greedy_within(Ad, cs, Sig_S, acq, k)
        Hbest = joint_entropy(Ad, cs, Sig_S, best)
        open_ = ~_closed(cs.n, acq)
        for N in Ns:
            for _ in range(draws):
                pred = cs.split((posterior_draws(Sig_S, N, g) @ Ad.T).reshape(N, *cs.y_shape))
                for rule in ("topk", "conditional"):
                    B, _ = select_candidates(pred, k, open_, score, SIGMA, conditional=(rule == "conditional"))
                    B = B.tolist()
                    rows.append({"problem": name, "seed": seed, "N": N, "k": k, "select": rule,
                                 "joint_gap": Hbest - joint_entropy(Ad, cs, Sig_S, B),
                                 "overlap": len(set(B) & set(best)) / k})
        acq = acq + best
    return rows


def _closed(n, acq):
    m = torch.zeros(n, dtype=torch.bool)
    if acq:
        m[torch.tensor(acq)] = True
    return m


def _exact_greedy_within(Ad, cs, Sig_S, acq, k):
    """Exact greedy k picks given the posterior Sig_S (acquired ``acq`` excluded), re-conditioning after each."""
    B = []
    for _ in range(k):
        H = exact_entropy(Ad, cs, posterior_cov(Ad, cs, Sig_S, B))
        H = H.masked_fill(_closed(cs.n, acq + B), -float("inf"))
        B.append(int(H.argmax()))
    return B


def mean_rows(rows, keys, metrics):
    groups = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for key, rs in groups.items():
        row = dict(zip(keys, key))
        row["seeds"] = len({r.get("seed") for r in rs})
        for m in metrics:
            vals = [r[m] for r in rs if r.get(m) is not None]
            row[m] = sum(vals) / len(vals) if vals else None
        out.append(row)
    return out


def run(args):
    torch.set_num_threads(1)
    t_all = time.perf_counter()
    rows, est, sel = [], [], []
    for name in args.problems:
        for cell, _ in CELLS:
            if cell not in args.cells:
                continue
            for N in args.particles:
                if N > args.max_particles_tweedie and "tweedie" in cell:
                    continue
                if name == "mri-16x16" and (N > args.max_particles_mri or cell == "dds-restart-g400"):
                    continue                                                    # cost (the -g400 cell: pixels)
                for score in args.scores:
                    if score in ("gmm", "gmm-lb") and N > args.max_pairwise:
                        continue
                    for seed in range(args.seeds):
                        r = ads_run(name, seed, N, score, args.steps, args.budget, cell)
                        rows.append({"problem": name, "cell": cell, "N": N, "score": score, "seed": seed, **r})
                        print(rows[-1], file=sys.stderr, flush=True)
        for seed in range(args.seeds):
            if args.estimator_particles:
                est += estimator_rows(name, seed, args.estimator_particles, args.budget, args.draws,
                                      args.max_pairwise)
            if args.select_particles and name != "mri-16x16":
                sel += select_rows(name, seed, args.select_particles, args.select_k, args.draws)
    tail = (f"\nSettings: {args.seeds} seeds per cell, {args.budget} acquisitions, {args.steps} reverse steps; "
            f"seconds per ADS run (1 thread, shared machine). Total {time.perf_counter() - t_all:.0f} s.")
    metrics = ["agree", "agree_01", "agree_05", "regret", "rank_corr", "var_logratio", "var_abslog", "mean_err",
               "nfe", "nfe_images", "seconds"]
    summary = mean_rows(rows, ["problem", "cell", "N", "score"], metrics)
    doc = __doc__.split("Usage:")[0]
    path = write_results(args.out, "ads_exactness", summary, ["problem", "cell", "N", "score", "seeds", *metrics],
                         title="ADS: exactness of the greedy choice", notes=doc + tail, meta=vars(args))
    if est:
        em = ["top1", "top1_01", "top1_05", "rank_corr", "mae_nats", "bias_nats"]
        write_results(args.out, "ads_estimators", mean_rows(est, ["problem", "N", "score"], em),
                      ["problem", "N", "score", "seeds", *em],
                      title="ADS: entropy estimators on exact posterior samples", notes=doc + tail, meta=vars(args))
    if sel:
        write_results(args.out, "ads_select", mean_rows(sel, ["problem", "N", "k", "select"], ["joint_gap", "overlap"]),
                      ["problem", "N", "k", "select", "seeds", "joint_gap", "overlap"],
                      title="ADS: several candidates per event, top-k vs conditional greedy", notes=doc + tail,
                      meta=vars(args))
    print(path)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--particles", type=int, nargs="*", default=[16, 64, 256, 1024, 4096])
    ap.add_argument("--scores", nargs="*", default=["variance", "gauss", "gmm", "gmm-lb"])
    ap.add_argument("--cells", nargs="*", default=[c for c, _ in CELLS], choices=[c for c, _ in CELLS])
    ap.add_argument("--estimator-particles", type=int, nargs="*", default=[16, 64, 256, 1024, 4096])
    ap.add_argument("--select-particles", type=int, nargs="*", default=[64, 1024])
    ap.add_argument("--select-k", type=int, default=4)
    ap.add_argument("--draws", type=int, default=4, help="independent sample sets per event in parts 2 and 3")
    ap.add_argument("--max-particles-mri", type=int, default=1024, help="largest N on mri-16x16 (cost)")
    ap.add_argument("--max-particles-tweedie", type=int, default=1024, help="largest N of the tweedie cells")
    ap.add_argument("--max-pairwise", type=int, default=256, help="largest N for the O(N^2) gmm scores")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--budget", type=int, default=8)
    ap.add_argument("--problems", nargs="*", default=list(PROBLEMS), choices=list(PROBLEMS))
    ap.add_argument("--out", default="benchmarks/results")
    run(ap.parse_args())

"""DiffPIR's data step: the exact prox, CG iterations of the warm-started prox, and deepinv's ``prox_l2``.

DiffPIR (``invdiff.solvers.deepinv_baselines``) solves its data sub-problem (paper Eq. 13) exactly where the
operator offers it (``prox="auto"``, the default: sparse-view CT by the Woodbury identity, line-mask multi-coil MRI
by one eigendecomposition per image line; ``invdiff.solvers.primitives.prox_l2``), else with ``cg_iters`` CG steps
started at the denoised estimate (``prox="cg"``). This measures PSNR (mean over held-out images that no other
benchmark row uses, batched in one solve) and seconds for the exact prox ("exact"), for ``prox="cg"`` with
cg_iters in {1, 2, 3, 5, 10} and for deepinv's own prox (up to 50 CG iterations), on the 64x64
CT 8-view and 4x 8-coil MRI tasks with DiffPIR's tuned options (lambda 1 / zeta 0.5 on CT, 3 / 0.5 on MRI),
100 steps, seed 0,
1 torch thread. Writes ``benchmarks/results/diffpir_cg.{json,csv,md}``.

Usage: python benchmarks/diffpir_cg.py [--images 3] [--first 1002] [--steps 100] [--out benchmarks/results]
       [--threads 1] [--smoke]
"""
from __future__ import annotations

import json
import warnings

import torch

import invdiff
from invdiff.bench.harness import experiment_args, heldout, measured, start, write_experiment
from invdiff.bench.tasks import get_task
from invdiff.metrics import psnr
from invdiff.priors import load
from invdiff.solvers import deepinv_baselines as B

ITERS = ("exact", 1, 2, 3, 5, 10, "deepinv")


def run(task_name: str, cg, images: int, first: int, steps: int) -> dict:
    import deepinv as dinv

    task = get_task(task_name)
    x = heldout(task, images, first=first)
    phys = task.physics(rng=torch.Generator().manual_seed(0))
    y = phys(x)
    prior = load(task.prior)
    saved = B._warm_l2
    opts = dict(task.solver_options.get("diffpir", {}))       # empty: the solver's measured per-operator defaults
    if cg == "deepinv":
        B._warm_l2 = lambda: (lambda n, exact=True: dinv.optim.data_fidelity.L2())
    elif cg != "exact":
        opts.update(cg_iters=cg, prox="cg")
    try:
        rec, cost = measured(invdiff.solve, y, phys, prior, "diffpir", seed=0, num_steps=steps, **opts)
    finally:
        B._warm_l2 = saved
    p = psnr(rec.mean, x, data_range=1.0, complex=task.data == "mri")
    return {"task": task_name, "cg_iters": cg, "psnr": float(p.mean()),
            "psnr_per_image": [round(float(v), 2) for v in p],
            "nfe": cost["nfe"], "seconds": cost["seconds"], "peak_mb": cost["peak_mb"], "images": images,
            "steps": steps,
            "options": {k: v for k, v in rec.info.get("options", {}).items()}}


def main(argv=None):
    ap = experiment_args(__doc__, images=3)
    ap.add_argument("--first", type=int, default=1002, help="first held-out image (default 1002)")
    ap.add_argument("--steps", type=int, default=100)
    args = start(ap.parse_args(argv), argv=None if argv is None else ["benchmarks/diffpir_cg.py", *argv])
    if args.smoke:
        args.images, args.steps = 1, 5
    warnings.simplefilter("ignore")
    rows = []
    for task in ("ct-8view", "mri-4x-multicoil"):
        for cg in ITERS:
            rows.append(run(task, cg, args.images, args.first, args.steps))
            print(json.dumps(rows[-1]), flush=True)
    write_experiment(args, "diffpir_cg", rows, ["task", "cg_iters", "psnr", "psnr_per_image", "nfe", "seconds",
                                                "peak_mb"],
                     title="DiffPIR data step: exact prox, CG iterations (warm start at the denoised estimate), "
                           "deepinv's prox_l2",
                     notes=__doc__ + f"\n\nHeld-out images {args.first}..{args.first + args.images - 1} (batched in "
                           f"one solve), {args.steps} steps; seconds on a shared machine are indicative.")


if __name__ == "__main__":
    main()

"""DiffPIR's data step: CG iterations of the warm-started prox vs deepinv's ``prox_l2`` (up to 50 iterations).

DiffPIR (``invdiff.solvers.deepinv_baselines``) solves its data sub-problem (paper Eq. 13) with ``cg_iters`` CG
steps started at the denoised estimate. This measures PSNR (mean over held-out images that no other benchmark row
uses, batched in one solve) and seconds for cg_iters in {1, 2, 3, 5, 10} and for deepinv's own prox, on the 64x64
CT 8-view and 4x 8-coil MRI tasks with DiffPIR's tuned options (lambda 1 / zeta 0.5 on CT, 3 / 0.5 on MRI),
100 steps, seed 0,
1 torch thread. Writes ``benchmarks/results/diffpir_cg.{json,md}``.

    python benchmarks/diffpir_cg.py [--images 3] [--first 1002]
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch

import invdiff
from invdiff.bench.tasks import get_task
from invdiff.metrics import psnr
from invdiff.priors import load
from invdiff.solvers import deepinv_baselines as B

ITERS = (1, 2, 3, 5, 10, "deepinv")


def run(task_name: str, cg, images: int, first: int, steps: int) -> dict:
    import deepinv as dinv

    task = get_task(task_name)
    x = task.images(range(images), first=first)
    phys = task.physics(rng=torch.Generator().manual_seed(0))
    y = phys(x)
    prior = load(task.prior)
    saved = B._warm_l2
    opts = dict(task.solver_options.get("diffpir", {}))       # empty: the solver's measured per-operator defaults
    if cg == "deepinv":
        B._warm_l2 = lambda: (lambda n: dinv.optim.data_fidelity.L2())
    else:
        opts["cg_iters"] = cg
    try:
        t0 = time.perf_counter()
        rec = invdiff.solve(y, phys, prior, "diffpir", seed=0, num_steps=steps, **opts)
        sec = time.perf_counter() - t0
    finally:
        B._warm_l2 = saved
    p = psnr(rec.mean, x, data_range=1.0, complex=task.data == "mri")
    return {"task": task_name, "cg_iters": cg, "psnr": float(p.mean()),
            "psnr_per_image": [round(float(v), 2) for v in p],
            "seconds": sec, "images": images, "steps": steps,
            "options": {k: v for k, v in rec.info.get("options", {}).items()}}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--first", type=int, default=1002)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--out", default="benchmarks/results/diffpir_cg")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    rows = []
    for task in ("ct-8view", "mri-4x-multicoil"):
        for cg in ITERS:
            rows.append(run(task, cg, args.images, args.first, args.steps))
            print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    lines = ["# DiffPIR data step: CG iterations (warm start at the denoised estimate) vs deepinv's prox_l2", "",
             f"`benchmarks/diffpir_cg.py`, {time.strftime('%Y-%m-%d', time.gmtime())}: held-out images "
             f"{args.first}..{args.first + args.images - 1} (batched in one solve), {args.steps} steps, seed 0, "
             "tuned DiffPIR options of the task, shipped priors, CPU, 1 thread, shared machine (seconds indicative).",
             "", "| task | CG iterations | PSNR (mean) | per image | seconds |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['cg_iters']} | {r['psnr']:.2f} | {r['psnr_per_image']} "
                     f"| {r['seconds']:.1f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""Network precision: PSNR with the prior network in bf16 / fp16 autocast vs fp32 (issue 14 item 3).

Each sampler on the 64x64 CT 8-view and 4x 8-coil MRI tasks (tuned task options), held-out images batched in one
solve, seed 0, the same measurements for every precision; only the network runs in the lower precision
(``invdiff.priors.load(name, precision=...)``). On a CPU this measures quality only (CPU bf16 kernels are not faster
than fp32 on most CPUs); ``benchmarks/gpu.sh`` measures the speed on a GPU. Writes
``benchmarks/results/precision.{json,md}``.

    python benchmarks/precision.py [--images 2] [--precisions fp32,bf16]
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

SOLVERS = {"dds": {"num_steps": 50}, "red-diff": {"num_steps": 50}, "diffpir": {"num_steps": 100},
           "dps": {"num_steps": 100}}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="benchmarks/results/precision")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    rows = []
    for task_name in ("ct-8view", "mri-4x-multicoil"):
        task = get_task(task_name)
        x = task.images(range(args.images), first=args.first)
        phys = task.physics(rng=torch.Generator().manual_seed(0))
        with torch.no_grad():
            y = phys(x)
        y, phys = y.to(args.device), phys.to(args.device)
        for solver, opts in SOLVERS.items():
            for prec in args.precisions.split(","):
                prior = load(task.prior, device=args.device, precision=prec)
                t0 = time.perf_counter()
                rec = invdiff.solve(y, phys, prior, solver, seed=0,
                                    **{**task.solver_options.get(solver, {}), **opts})
                sec = time.perf_counter() - t0
                p = psnr(rec.mean.cpu(), x, data_range=1.0, complex=task.data == "mri")
                rows.append({"task": task_name, "solver": solver, "precision": prec, "psnr": float(p.mean()),
                             "psnr_per_image": [round(float(v), 2) for v in p], "seconds": sec, "nfe": rec.nfe})
                print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    ref = {(r["task"], r["solver"]): r["psnr"] for r in rows if r["precision"] == "fp32"}
    lines = ["# Network precision: PSNR with bf16 / fp16 autocast vs fp32", "",
             f"`benchmarks/precision.py`, {time.strftime('%Y-%m-%d', time.gmtime())}, device {args.device} (1 thread): "
             f"held-out images {args.first}..{args.first + args.images - 1} batched, seed 0, tuned task options, "
             "shipped "
             "priors; only the network runs in the lower precision. CPU seconds are not a speed claim for bf16.", "",
             "| task | solver | NFE | precision | PSNR | vs fp32 (dB) | per image | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d = r["psnr"] - ref[(r["task"], r["solver"])] if (r["task"], r["solver"]) in ref else float("nan")
        lines.append(f"| {r['task']} | {r['solver']} | {r['nfe']} | {r['precision']} | {r['psnr']:.2f} | {d:+.2f} | "
                     f"{r['psnr_per_image']} | {r['seconds']:.1f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""DPS guidance weight vs number of steps: the weight best at each ``num_steps`` on two 64 x 64 tasks.

deepinv's DPS adds ``weight * grad ||y - A D(x_t)||`` to the score and its DDPM solver integrates the score with
step ``dt = 1 / num_steps``: the guidance pushed per step grows as the steps get fewer, and a weight tuned at
1000 steps overshoots at 100-200. This script measures, on the tuning image of each task (held-out index 1000,
never evaluated in ``benchmarks/defaults.py``), PSNR over a grid of weights at several ``num_steps``; the best
weight per step count is the measured basis of DPS's step-dependent default (``invdiff.solvers.defaults``,
``dps_weight``: ``min(1000, 5 num_steps)`` on CT and MRI). At 1000 steps the weight was tuned in
``benchmarks/results/priors/NOTES.md`` (1000 best of {30..3000}); ``benchmarks/results/defaults.md`` has the 1000-step
rows on every task. Noise 0.01, torch threads 1, prior = the task's shipped prior.

    python benchmarks/dps_steps.py [--tasks ct-8view,mri-4x-multicoil] [--cache DIR]

Writes ``benchmarks/results/dps_steps.{json,md}`` (rewritten after every row).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from invdiff.bench.harness import RowCache
from invdiff.bench.runner import RowSpec, run_row
from invdiff.bench.tables import environment, markdown_table
from invdiff.bench.tasks import TASKS
from invdiff.io_utils import atomic_write_json, atomic_write_text

OUT = Path(__file__).parent / "results"
TUNE_IMAGE = 1000
#: num_steps -> weights tried (cheap step counts get the wider grid)
GRID = {50: [100.0, 250.0, 500.0], 100: [30.0, 100.0, 300.0, 500.0, 1000.0],
        200: [30.0, 100.0, 300.0, 1000.0, 3000.0], 500: [300.0, 1000.0], 1000: [300.0, 1000.0, 3000.0]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default="ct-8view,mri-4x-multicoil")
    p.add_argument("--steps", default="50,100,200,500",
                   help="step counts (1000 steps: benchmarks/results/priors/NOTES.md has ct-8view and "
                        "mri-4x-multicoil with weight in {30..3000}, 1000 best)")
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--cache", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = {"size": 64, "depth": 8, "noise": 0.01, "first_image": TUNE_IMAGE}
    cache, prior_cache, rows = RowCache(a.cache), {}, []
    t0 = time.process_time()

    def write():
        best = []
        for task in dict.fromkeys(r["task"] for r in rows):
            for n in dict.fromkeys(r["num_steps"] for r in rows if r["task"] == task):
                rs = [r for r in rows if r["task"] == task and r["num_steps"] == n]
                b = max(rs, key=lambda r: r["PSNR"])
                best.append({"task": task, "num_steps": n, "best_weight": b["weight"], "PSNR_best": b["PSNR"],
                             "PSNR_by_weight": " / ".join(f"{r['weight']:g}: {r['PSNR']:.2f}" for r in rs)})
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        env = environment()
        atomic_write_json(out / "dps_steps.json", {"rows": rows, "best": best, "meta": {
            "config": cfg, "grid": GRID, "cpu_seconds": time.process_time() - t0, "environment": env}})
        md = (f"# DPS: best guidance weight per number of steps\n\n{__doc__.split(chr(10) * 2, 1)[1]}\n"
              f"CPU {time.process_time() - t0:.0f} s (process time).\n\n## Best weight per num_steps\n\n"
              + markdown_table(best, ["task", "num_steps", "best_weight", "PSNR_best", "PSNR_by_weight"])
              + "\n## Rows\n\n" + markdown_table(rows, ["task", "num_steps", "weight", "PSNR", "SSIM", "NFE",
                                                        "seconds"])
              + f"\nEnvironment: `{env}`\n")
        atomic_write_text(out / "dps_steps.md", md)

    for n in (int(s) for s in a.steps.split(",")):
        for task in a.tasks.split(","):
            for w in GRID[n]:
                opts = {"num_steps": n, "weight": w}
                r = RowSpec(task, "dps", "tune", opts, TASKS[task].prior, 0)
                r.key = f"dpssteps__{task}__{json.dumps(opts, sort_keys=True)}__{TUNE_IMAGE}"
                row = cache.get(r.key, lambda: run_row(r, cfg, prior_cache))
                rows.append(dict(row, num_steps=n, weight=w))
                write()
                print(f"{time.process_time() - t0:7.0f} s  {task:<18} steps {n:<5} weight {w:<7g} "
                      f"PSNR {row['PSNR']:.2f}  {row['seconds']:.1f} s", flush=True)


if __name__ == "__main__":
    main()

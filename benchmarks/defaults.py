"""Default options vs per-task tuned values vs the classical baseline, every diffusion solver x every 64x64 task.

Called as a user calls it (``invdiff.solve(y, op, prior, solver=NAME)``, no options), every solver takes its
measured per-operator defaults (:mod:`invdiff.solvers.defaults`). This script measures, on held-out phantoms of
the bench tasks (:mod:`invdiff.bench.tasks`, noise 0.01, 64 x 64):

- ``PSNR_default``: the solver with no options;
- ``PSNR_tuned``: the solver with its per-task tuned options. For ``red-diff`` (lr, lam) and ``dds`` (gamma) the
  tuning is done here, per task, on a separate tuning image (held-out index 1000, never evaluated): a small grid
  around the default (factors 1/3 and 3 of each), the best on the tuning image is then evaluated; for the other
  solvers no per-task tuning is run (no column value: too costly on a shared 2-core CPU, see the notes);
- ``PSNR_baseline``: the task's classical baseline (TV or l1-wavelet with the task's tuned weight) and the
  zero-filled / back-projection estimate ``adjoint``;
- NFE and seconds per image (1 torch thread; the machine was shared, so seconds are an upper bound).

Rows run in order of cost (baselines, the defaults and tunings of dds and red-diff, then the other solvers'
defaults cheapest first) and the script
stops launching rows when ``--budget`` CPU seconds are spent (rows not run are listed); the tables are rewritten
after every row. Writes ``benchmarks/results/defaults.{json,md}``.

    python benchmarks/defaults.py [--images 2] [--budget 900] [--dps-tasks ct-8view,mri-4x-multicoil,...]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import time
from pathlib import Path

import torch

import invdiff
from invdiff.bench.harness import RowCache
from invdiff.bench.runner import RowSpec, run_row
from invdiff.bench.tables import environment, markdown_table
from invdiff.bench.tasks import TASKS, applicable
from invdiff.io_utils import atomic_write_json, atomic_write_text
from invdiff.priors import load
from invdiff.solvers.defaults import table_for

OUT = Path(__file__).parent / "results"
#: cheapest first, so that a spent budget cuts the most expensive rows
SOLVERS = ["dds", "red-diff", "ddrm", "mcgdiff", "diffpir", "smc", "dps"]
TUNE_IMAGE = 1000
TUNABLE = {"red-diff": ("lr", "lam"), "dds": ("gamma",)}


def _resolved(solver, task, prior, cfg) -> dict:
    """The options the solver resolves for this task without explicit ones (the measured/own defaults)."""
    from invdiff.solvers.base import resolve_options

    x = task.images([0], cfg["size"], cfg["depth"], TUNE_IMAGE)
    op = task.physics(cfg["size"], cfg["depth"], cfg["noise"], torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = op(x)
    resolved, _ = resolve_options(solver, {}, op, prior)
    if solver == "dds" and resolved["gamma"] is None:
        from invdiff.solvers.dds import default_gamma

        resolved["gamma"] = default_gamma(op, prior)
    if solver == "red-diff" and resolved["lr"] is None:   # run once to read the effective (lr, lam)
        rec = invdiff.solve(y, op, prior, solver=solver, num_steps=2)
        resolved["lr"], resolved["lam"] = rec.info["lr"], rec.info["lam"]
    return resolved


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--budget", type=float, default=900.0, help="CPU seconds after which no new row starts")
    p.add_argument("--tasks", default=",".join(t for t, v in TASKS.items() if v.dims == 2))
    p.add_argument("--solvers", default=",".join(SOLVERS))
    p.add_argument("--dps-tasks", default="ct-8view,mri-4x-multicoil,inpainting-random,deblur-gaussian",
                   help="DPS (1000 NFE with backpropagation) only on these tasks")
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--cache", default=None, help="folder of per-row JSON files: a rerun skips rows already there")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = {"size": 64, "depth": 8, "noise": 0.01, "first_image": 0}
    tasks, solvers = a.tasks.split(","), a.solvers.split(",")
    priors, prior_cache = {}, {}
    rows, skipped, tuning = [], [], []
    t_cpu0 = time.process_time()

    def spent():
        return time.process_time() - t_cpu0

    cache = RowCache(a.cache)

    def run(task, solver, label, options, prior_name, image, first=0):
        key = f"{task}__{solver}__{label}__{json.dumps(options, sort_keys=True)}__{image}__{first}"
        if table_for(solver):  # the solver's measured-defaults rows are part of what a row ran with
            rows_text = re.sub(r" at 0x[0-9a-f]+", "", repr(table_for(solver)))
            key += "__" + hashlib.sha1(rows_text.encode()).hexdigest()[:10]
        r = RowSpec(task, solver, label, options, prior_name, image)
        r.key = key
        return cache.get(key, lambda: run_row(r, dict(cfg, first_image=first), prior_cache))

    def write():
        table = summarise(rows, tuning)
        env = environment()
        meta = {"config": dict(cfg, images=a.images, budget_cpu_s=a.budget, tune_image=TUNE_IMAGE),
                "cpu_seconds": spent(), "environment": env, "tuning": tuning, "skipped": skipped}
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "defaults.json", {"rows": table, "per_image": rows, "meta": meta})
        cols = ["task", "solver", "PSNR_default", "PSNR_tuned", "gap_dB", "tuned_options", "PSNR_baseline",
                "baseline", "PSNR_adjoint", "beats_baseline", "beats_adjoint", "NFE", "seconds", "n"]
        md = (f"# Measured defaults vs per-task tuned vs classical baseline\n\n{__doc__.split(chr(10) * 2, 1)[1]}\n"
              f"Held-out images 0..{a.images - 1} of each task, noise 0.01, 64 x 64, torch threads 1; CPU "
              f"{spent():.0f} s so far (process time). Priors: the shipped `ct-phantom-64`, `mri-brainphantom-64`. "
              f"`gap_dB` = tuned - default (only where a tuning was run; 0 when the default won on the tuning "
              f"image).\n\n" + markdown_table(table, cols) +
              "\n## Per-task tuning (tuning image)\n\n" + markdown_table(
                  [dict(t, candidates=json.dumps(t["candidates"]), default=json.dumps(t["default"]),
                        best=json.dumps(t["best"]),
                        PSNR_tuning_image=" / ".join(f"{v:.2f}" for v in t["PSNR_tuning_image"])) for t in tuning],
                  ["task", "solver", "default", "candidates", "PSNR_tuning_image", "best"]) +
              "\n## Rows not run\n\n" + "".join(f"- {s}\n" for s in skipped) + f"\nEnvironment: `{env}`\n")
        atomic_write_text(out / "defaults.md", md)
        return md

    plan = []
    for tname in tasks:
        task = TASKS[tname]
        plan.append((0, tname, task.baseline, "baseline"))
        plan.append((0, tname, "adjoint", "adjoint"))
        for s in solvers:
            if s == "dps" and tname not in a.dps_tasks.split(","):
                skipped.append(f"{tname} / dps: not run (DPS only on --dps-tasks, CPU budget)")
                continue
            plan.append((1 + SOLVERS.index(s), tname, s, "default"))
            if s in TUNABLE:  # right after the defaults of the tunable (cheap) solvers
                plan.append((2.5 + SOLVERS.index(s) / 10, tname, s, "tune"))
    plan.sort(key=lambda e: e[0])
    for _, tname, solver, label in plan:
        task = TASKS[tname]
        prior_name = task.prior if invdiff.solvers.get(solver).needs_prior else None
        if prior_name and prior_name not in priors:
            priors[prior_name] = load(prior_name)
        why = applicable(task, solver, priors.get(prior_name))
        if why:
            if label != "tune":
                skipped.append(f"{tname} / {solver}: not applicable ({why})")
            continue
        if spent() > a.budget:
            skipped.append(f"{tname} / {solver} ({label}): not run (CPU budget {a.budget:.0f} s spent)")
            continue
        opts = dict(task.baseline_options) if label == "baseline" else {}
        if label == "tune":  # per-task tuning on the tuning image (red-diff, dds), then the best on the images
            if not any(r["task"] == tname and r["solver"] == solver and r["label"] == "default" for r in rows):
                continue
            base = _resolved(solver, task, priors[prior_name], cfg)
            cands = [{}]
            for k in TUNABLE[solver]:
                cands += [{k: base[k] * f} for f in (1 / 3, 3.0)]
            scores = []
            for c in cands:
                try:
                    scores.append(run(tname, solver, "tune", c, prior_name, 0, TUNE_IMAGE)["PSNR"])
                except (ValueError, TypeError, RuntimeError) as e:
                    scores.append(float("-inf"))
                    skipped.append(f"{tname} / {solver} {c}: tuning run failed ({e})"[:200])
            best = max(range(len(cands)), key=lambda i: scores[i])
            tuning.append({"task": tname, "solver": solver, "default": {k: base[k] for k in TUNABLE[solver]},
                           "candidates": cands, "PSNR_tuning_image": scores, "best": cands[best]})
            if cands[best]:
                for i in range(a.images):
                    rows.append(dict(run(tname, solver, "tuned", cands[best], prior_name, i), label="tuned"))
        else:
            for i in range(a.images):
                try:
                    row = run(tname, solver, label, opts, prior_name, i)
                except (ValueError, TypeError, RuntimeError) as e:
                    skipped.append(f"{tname} / {solver}: failed ({e})"[:300])
                    break
                rows.append(dict(row, label=label))
        write()
        print(f"{spent():7.0f} s  {tname:<20} {solver:<10} {label:<8} {rows[-1]['PSNR'] if rows else ''}", flush=True)
    print(write())


def summarise(rows, tuning):
    import numpy as np

    def mean(task, solver, label, key="PSNR"):
        v = [r[key] for r in rows if r["task"] == task and r["solver"] == solver and r["label"] == label]
        return (float(np.mean(v)), len(v)) if v else (None, 0)

    out = []
    tuned_by = {(t["task"], t["solver"]): t for t in tuning}
    for task in dict.fromkeys(r["task"] for r in rows):
        base_solver = TASKS[task].baseline
        pb, _ = mean(task, base_solver, "baseline")
        pa, _ = mean(task, "adjoint", "adjoint")
        for solver in dict.fromkeys(r["solver"] for r in rows if r["task"] == task and r["label"] == "default"):
            pd, n = mean(task, solver, "default")
            t = tuned_by.get((task, solver))
            if t is not None and t["best"]:
                pt, _ = mean(task, solver, "tuned")
                tuned_opts = t["best"]
            elif t is not None:
                pt, tuned_opts = pd, "default won"
            else:
                pt, tuned_opts = None, ""
            out.append({"task": task, "solver": solver, "PSNR_default": pd, "PSNR_tuned": pt,
                        "gap_dB": None if pt is None else pt - pd,
                        "tuned_options": json.dumps(tuned_opts) if isinstance(tuned_opts, dict) else tuned_opts,
                        "PSNR_baseline": pb, "baseline": base_solver, "PSNR_adjoint": pa,
                        "beats_baseline": None if pb is None else bool(pd > pb),
                        "beats_adjoint": None if pa is None else bool(pd > pa),
                        "NFE": mean(task, solver, "default", "NFE")[0],
                        "seconds": mean(task, solver, "default", "seconds")[0], "n": n})
    return out


if __name__ == "__main__":
    main()

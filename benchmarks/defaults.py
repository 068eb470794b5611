"""Default options vs per-task tuned values vs the classical baseline, every diffusion solver x every 64x64 task.

Called as a user calls it (``invdiff.solve(y, op, prior, solver=NAME)``, no options), every solver takes its
measured per-operator defaults (:mod:`invdiff.solvers.defaults`). This script measures, on held-out phantoms of
the bench tasks (:mod:`invdiff.bench.tasks`, noise 0.01, 64 x 64):

- ``PSNR_default``: the solver with no options;
- ``PSNR_tuned``: the solver with its per-task tuned options: per task, a small grid around the resolved
  default (:func:`_grid`, one knob at a time: dds gamma x {1/3, 1/sqrt3, sqrt3, 3}; red-diff lr and lam x {1/3, 3};
  ddrm eta in {0.5, 1}, eta_b in {0.6, 0.8}; mcgdiff sigma_y in {2, 4} x the noise std; diffpir lambda x {1/3, 3}
  and zeta 0.3; smc tempering "linear" or sigma_y = 2 x the noise std; dps weight x {1/3,
  3}: the costly smc and dps get two candidates only) is run on a separate tuning image (held-out index 1000,
  never evaluated); the best there is then evaluated on the images;
- ``PSNR_baseline``: the task's classical baseline (TV or l1-wavelet with the task's tuned weight) and the
  zero-filled / back-projection estimate ``adjoint``;
- NFE and seconds per image (1 torch thread; the machine was shared, so seconds are an upper bound).

Rows run in the order of ``--solvers`` (baselines first; each solver's defaults then its tuning, except that the tunings
of the costly diffpir and smc run after every solver's defaults) and the script
stops launching rows when ``--budget`` CPU seconds are spent (rows not run are listed); the tables are rewritten
after every row. Writes ``benchmarks/results/defaults.{json,md}``.

    python benchmarks/defaults.py [--images 2] [--budget 20000] [--cache DIR] [--dps-tasks ct-8view,...]
"""
from __future__ import annotations

import argparse
import hashlib
import json
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

OUT = Path(__file__).parent / "results"
#: cheapest first, so that a spent budget cuts the most expensive rows
SOLVERS = ["dds", "red-diff", "ddrm", "mcgdiff", "diffpir", "smc", "dps"]
TUNE_IMAGE = 1000
#: solvers whose tunings run after every solver's defaults (dps's tuning is limited by --dps-tune-tasks instead)
COSTLY = ("diffpir", "smc")
_R3 = 3.0 ** 0.5


class NotRun(Exception):
    """A row that ``--cached-only`` did not find in the row cache."""


def _grid(solver: str, d: dict, sigma: float) -> list[dict]:
    """The per-task tuning candidates of ``solver`` around its resolved defaults ``d`` (the default, ``{}``, first);
    ``sigma``: the task's measurement noise std. One knob varied at a time; the costly samplers (smc, dps) get two
    candidates besides the default."""
    def scaled(key, factors):
        return [{key: d[key] * f} for f in factors]

    if solver == "dds":          # prox weight gamma
        grid = scaled("gamma", (1 / 3, 1 / _R3, _R3, 3.0))
    elif solver == "red-diff":   # Adam step lr and regulariser weight lam
        grid = scaled("lr", (1 / 3, 3.0)) + scaled("lam", (1 / 3, 3.0))
    elif solver == "ddrm":       # eta (in [0, 1]) and eta_b
        grid = [{"eta": e} for e in (0.5, 1.0) if e != d["eta"]] + [{"etab": e} for e in (0.6, 0.8) if e != d["etab"]]
    elif solver == "mcgdiff":    # the likelihood's noise std (sigma_y > sigma tempers the data term)
        grid = [{"sigma_y": f * sigma} for f in (2.0, 4.0)]
    elif solver == "diffpir":    # prior weight lambda in the data step, re-injected noise zeta (in [0, 1])
        grid = scaled("lambda_", (1 / 3, 3.0)) + ([{"zeta": 0.3}] if d["zeta"] != 0.3 else [{"zeta": 0.6}])
    elif solver == "smc":        # likelihood tempering and the likelihood's noise std
        grid = [{"tempering": "linear"}, {"sigma_y": 2.0 * sigma}]
    elif solver == "dps":        # guidance weight
        grid = scaled("weight", (1 / 3, 3.0))
    else:
        grid = []
    return [{}] + grid


def _resolved(solver, options, op, y, prior) -> dict:
    """Every option ``solver`` runs with on this task given the explicit ``options`` (measured defaults, the spec's,
    and the solver's own data-dependent defaults of dds' gamma and red-diff's (lr, lam))."""
    from invdiff.solvers.base import resolve_options

    resolved, _ = resolve_options(solver, dict(options), op, prior)
    if solver == "dds" and resolved["gamma"] is None:
        from invdiff.solvers.dds import default_gamma

        resolved["gamma"] = default_gamma(op, prior)
    if solver == "red-diff" and resolved["lr"] is None:   # run once to read the effective (lr, lam)
        rec = invdiff.solve(y, op, prior, solver=solver, num_steps=2, **options)
        resolved["lr"], resolved["lam"] = rec.info["lr"], rec.info["lam"]
    return resolved


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--budget", type=float, default=20000.0, help="CPU seconds after which no new row starts")
    p.add_argument("--tasks", default=",".join(t for t, v in TASKS.items() if v.dims == 2))
    p.add_argument("--solvers", default=",".join(SOLVERS), help="which solvers, in the order they run")
    p.add_argument("--no-tune", default="", help="solvers whose per-task tuning is not run (comma-separated)")
    p.add_argument("--dps-tasks", default=None, help="DPS only on these tasks (default: every task)")
    p.add_argument("--dps-tune-tasks", default=None, help="DPS's tuning only on these tasks (default: every task)")
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--cache", default=None, help="folder of per-row JSON files: a rerun skips rows already there")
    p.add_argument("--cached-only", action="store_true", help="run no row: take every row from --cache and list the "
                   "rows not there as not run (writes the tables of earlier invocations in one pass)")
    p.add_argument("--notes", default=None, help="a markdown file appended to the results (run notes)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = {"size": 64, "depth": 8, "noise": 0.01, "first_image": 0}
    tasks, solvers = a.tasks.split(","), a.solvers.split(",")
    no_tune = set(filter(None, a.no_tune.split(",")))
    priors, prior_cache, problems, resolved_cache = {}, {}, {}, {}
    rows, skipped, tuning = [], [], []
    t_cpu0 = time.process_time()

    def spent():
        return time.process_time() - t_cpu0

    cache = RowCache(a.cache)

    def problem(tname, prior_name):
        """The task's operator and measurement of the tuning image (the operator kind and noise are the same for
        every image of a task, so the resolved options are too)."""
        if tname not in problems:
            task = TASKS[tname]
            x = task.images([0], cfg["size"], cfg["depth"], TUNE_IMAGE)
            op = task.physics(cfg["size"], cfg["depth"], cfg["noise"], torch.Generator().manual_seed(TUNE_IMAGE))
            with torch.no_grad():
                y = op(x)
            problems[tname] = (op, y)
        return problems[tname]

    def resolved(tname, solver, options, prior_name):
        k = (tname, solver, json.dumps(options, sort_keys=True))
        if k not in resolved_cache:
            op, y = problem(tname, prior_name)
            prior = priors.get(prior_name)
            if prior is not None:
                from invdiff.bench.runner import _for_task

                prior = _for_task(TASKS[tname], prior)
            resolved_cache[k] = _resolved(solver, options, op, y, prior) if prior_name else dict(options)
        return resolved_cache[k]

    def run(task, solver, label, options, prior_name, image, first=0):
        # the key names the options the row runs with after the measured defaults are applied, so that a row is
        # re-measured exactly when a change of invdiff.solvers.defaults changes what it runs
        eff = resolved(task, solver, options, prior_name)
        key = f"{task}__{solver}__{json.dumps(eff, sort_keys=True, default=str)}__{image}__{first}"
        key = f"{task}__{solver}__{hashlib.sha1(key.encode()).hexdigest()[:16]}__{image}__{first}"
        r = RowSpec(task, solver, label, options, prior_name, image)
        r.key = key
        if a.cached_only and not cache.path(key).is_file():
            raise NotRun(key)
        row = cache.get(key, lambda: run_row(r, dict(cfg, first_image=first), prior_cache))
        return dict(row, options=options, resolved={k: v for k, v in eff.items() if isinstance(v, (int, float, str))})

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
        notes = Path(a.notes).read_text() if a.notes else ""
        md = (f"# Measured defaults vs per-task tuned vs classical baseline\n\n{__doc__.split(chr(10) * 2, 1)[1]}\n"
              f"Held-out images 0..{a.images - 1} of each task, noise 0.01, 64 x 64, torch threads 1; CPU "
              f"{spent():.0f} s in this run (process time; rows found in the row cache cost nothing). Priors: the "
              f"shipped `ct-phantom-64`, `mri-brainphantom-64`. `gap_dB` = tuned - default (0 where the default won "
              f"on the tuning image; negative where the tuning image's choice lost on the evaluation images).\n\n"
              + notes + "\n" + markdown_table(table, cols) +
              "\n## Per-task tuning (tuning image)\n\n" + markdown_table(
                  [dict(t, candidates=json.dumps(t["candidates"]), default=json.dumps(t["default"]),
                        best=json.dumps(t["best"]),
                        PSNR_tuning_image=" / ".join(f"{v:.2f}" for v in t["PSNR_tuning_image"])) for t in tuning],
                  ["task", "solver", "default", "candidates", "PSNR_tuning_image", "best"]) +
              "\n## Rows not run\n\n" + "".join(f"- {s}\n" for s in skipped) + f"\nEnvironment: `{env}`\n")
        atomic_write_text(out / "defaults.md", md)
        return md

    plan = []
    dps_tasks = tasks if a.dps_tasks is None else a.dps_tasks.split(",")
    for tname in tasks:
        task = TASKS[tname]
        plan.append((0, tname, task.baseline, "baseline"))
        plan.append((0, tname, "adjoint", "adjoint"))
        for s in solvers:
            if s == "dps" and tname not in dps_tasks:
                skipped.append(f"{tname} / dps: not run (DPS only on --dps-tasks, CPU budget)")
                continue
            plan.append((1 + solvers.index(s), tname, s, "default"))
            if s == "dps" and a.dps_tune_tasks is not None and tname not in a.dps_tune_tasks.split(","):
                skipped.append(f"{tname} / dps: tuning not run (--dps-tune-tasks, CPU budget)")
            elif s not in no_tune:  # right after the solver's defaults; the costly solvers' after every default
                plan.append(((100 if s in COSTLY else 1.5) + solvers.index(s), tname, s, "tune"))
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
        if label == "tune":  # per-task tuning on the tuning image, then the best candidate on the images
            if not any(r["task"] == tname and r["solver"] == solver and r["label"] == "default" for r in rows):
                continue
            base = resolved(tname, solver, {}, prior_name)
            cands = _grid(solver, base, cfg["noise"])
            scores = []
            try:
                for c in cands:
                    try:
                        scores.append(run(tname, solver, "tune", c, prior_name, 0, TUNE_IMAGE)["PSNR"])
                    except (ValueError, TypeError, RuntimeError) as e:
                        scores.append(float("-inf"))
                        skipped.append(f"{tname} / {solver} {c}: tuning run failed ({e})"[:200])
                best = max(range(len(cands)), key=lambda i: scores[i])
                tuned = [dict(run(tname, solver, "tuned", cands[best], prior_name, i), label="tuned")
                         for i in range(a.images)] if cands[best] else []
            except NotRun:
                skipped.append(f"{tname} / {solver} (tune): not run (CPU budget of the session)")
                continue
            knobs = sorted({k for c in cands for k in c})
            tuning.append({"task": tname, "solver": solver, "default": {k: base.get(k) for k in knobs},
                           "candidates": cands, "PSNR_tuning_image": scores, "best": cands[best]})
            rows.extend(tuned)
        else:
            done = []
            for i in range(a.images):
                try:
                    done.append(dict(run(tname, solver, label, opts, prior_name, i), label=label))
                except NotRun:
                    skipped.append(f"{tname} / {solver} ({label}): not run (CPU budget of the session)")
                    done = []
                    break
                except (ValueError, TypeError, RuntimeError) as e:
                    skipped.append(f"{tname} / {solver}: failed ({e})"[:300])
                    done = []
                    break
            rows.extend(done)
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

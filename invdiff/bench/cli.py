"""``invdiff bench --tasks ... --solvers ... --out DIR``: benchmark solvers on the standard tasks.

Every (task, solver configuration, held-out image) row records NMSE / PSNR / SSIM, NFE, seconds and peak memory;
OUT gets results.json (summary + per-image rows + config), results.md (PSNR/SSIM grid and the full table),
results.csv, results_per_image.csv, psnr_vs_nfe.png and config.json.

--tasks / --solvers take comma-separated names ('all' for every task; the solver 'baseline' means each task's
natural classical solver, e.g. tv for CT, l1-wavelet for MRI). Solver options: --set SOLVER.OPTION=VALUE
(e.g. --set dds.num_steps=20 --set tv.lam=0.005); sweeps: --sweep SOLVER.OPTION=V1,V2,... adds one configuration
per value (e.g. --sweep dds.num_steps=10,20,50 draws the PSNR-vs-NFE curve). Config file keys: see --config.

Resumable: rows are stored one file each under OUT/rows/ as they finish; a re-run computes only the missing
(or failed) rows and rewrites the tables. Under torchrun each rank computes rows rank::WORLD_SIZE and rank 0
writes the tables after a barrier.

examples:
  invdiff bench --tasks ct-8view,mri-4x-multicoil --solvers adjoint,baseline,dds --n-images 8 --out bench/
  invdiff bench --tasks all --solvers tv,dds --sweep dds.num_steps=10,20,50 --out bench/
  invdiff bench --list
"""
from __future__ import annotations

import argparse
import sys

import torch

from .._validate import check_choice, fail
from .runner import DEFAULTS


def _parser():
    p = argparse.ArgumentParser(prog="invdiff bench", description=__doc__.replace("``", ""),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", help="comma-separated task names, or 'all' (see --list)")
    p.add_argument("--solvers", help="comma-separated solver names ('baseline' = each task's classical solver)")
    p.add_argument("--out", help="output folder (created)")
    p.add_argument("--n-images", type=int, help=f"held-out images per task (default {DEFAULTS['n_images']})")
    p.add_argument("--size", type=int, help=f"image size (default {DEFAULTS['size']})")
    p.add_argument("--prior", help="prior for every task (default: each task's own)")
    p.add_argument("--device", help="cpu (default), cuda or cuda:N")
    p.add_argument("--precision", help="prior network precision: fp32 (default), bf16 or fp16")
    p.add_argument("--sweep", action="append", default=[], metavar="SOLVER.OPTION=V1,V2,...",
                   help="one configuration per value")
    p.add_argument("--overwrite", action="store_true", default=None, help="recompute finished rows")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")
    p.add_argument("--strict", action="store_true", default=None, help="a prior applied to images of a size or "
                   "scale it was not trained for is an error (checked before any row runs), not a warning")
    p.add_argument("--list", action="store_true", help="list the tasks and exit")
    p.add_argument("--config", help="config file (JSON or key = value lines); keys: " + ", ".join(DEFAULTS)
                                    + ", and SOLVER.OPTION")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, or a solver option as SOLVER.OPTION=VALUE")
    return p


def _names(v) -> list[str]:
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]
    if isinstance(v, (list, tuple)):
        return [str(s) for s in v]
    fail("--tasks/--solvers", "comma-separated names or a list", v)


def _parse_sweeps(pairs) -> dict:
    from ..config import parse_value

    out = {}
    for p in pairs:
        if "=" not in p or "." not in p.split("=", 1)[0]:
            fail("--sweep", "SOLVER.OPTION=V1,V2,...", p)
        k, v = p.split("=", 1)
        parsed = parse_value(v.strip())
        out[k.strip()] = parsed if isinstance(parsed, list) else [parse_value(s.strip()) for s in v.split(",")]
    return out


def list_tasks() -> str:
    from .tasks import TASKS

    w = max(map(len, TASKS))
    return "\n".join(f"{t.name:<{w}}  {t.description}  [prior {t.prior}, baseline {t.baseline}"
                     f"{', 3D' if t.dims == 3 else ''}]" for t in TASKS.values())


def main(argv=None) -> int:
    from ..io_utils import atomic_write_json, check_writable_dir
    from ..priors import available as priors_available
    from ..jobs import barrier, check_device, check_solver_options, resolve_config
    from ..jobs import join as dist_context
    from ..solvers import available as solvers_available
    from .runner import run, write_outputs
    from .tasks import TASKS

    a = _parser().parse_args(argv)
    if a.list:
        print(list_tasks())
        return 0
    flags = {k: v for k, v in {"tasks": a.tasks, "solvers": a.solvers, "n_images": a.n_images, "size": a.size,
                               "prior": a.prior, "overwrite": a.overwrite, "progress": a.progress,
                               "strict": a.strict, "device": a.device, "precision": a.precision}.items()
             if v is not None}
    cfg, options = resolve_config(DEFAULTS, a.config, a.set, extra=flags)
    check_device(cfg["device"])
    check_choice("--precision", cfg["precision"], ("fp32", "bf16", "fp16"))
    if "solver" in options:
        fail("--set", "solver options as SOLVER.OPTION (the solver's name, e.g. dds.num_steps)",
             f"solver.{next(iter(options['solver']))}")
    if a.out is None:
        fail("--out", "an output folder", "nothing")
    tasks = list(TASKS) if _names(cfg["tasks"]) == ["all"] else _names(cfg["tasks"])
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        fail("--tasks", f"task names among {sorted(TASKS)} or 'all'", f"unknown {bad}" if bad else "nothing")
    solvers = _names(cfg["solvers"])
    known = solvers_available()
    bad = [s for s in solvers if s not in known and s != "baseline"]
    if bad or not solvers:
        fail("--solvers", f"solver names among {known} or 'baseline'", f"unknown {bad}" if bad else "nothing")
    raw_sweep = cfg["sweep"] or {}
    if not isinstance(raw_sweep, dict) or not all(isinstance(v, list) for v in raw_sweep.values()):
        fail("sweep", 'a mapping {"SOLVER.OPTION": [V1, V2, ...]}', cfg["sweep"], TypeError)
    sweep = dict(cfg["sweep"] or {})
    sweep.update(_parse_sweeps(a.sweep))
    for k in sweep:
        if k.split(".", 1)[0] not in known:
            fail("--sweep", f"SOLVER.OPTION with SOLVER among {known}", k)
        if k.split(".", 1)[0] not in solvers and "baseline" not in solvers:
            fail("--sweep", f"options of the benchmarked solvers {solvers}", f"{k} (solver not in --solvers)")
    for s in set(options) | {k.split(".", 1)[0] for k in sweep}:
        check_solver_options(s, dict(options.get(s, {}), **{k.split(".", 1)[1]: None for k in sweep
                                                             if k.split(".", 1)[0] == s}), chains=True)
        for k, values in sweep.items():   # every swept value checked (typed option specs: type and range)
            if k.split(".", 1)[0] == s:
                for v in values:
                    check_solver_options(s, dict(options.get(s, {}), **{k.split(".", 1)[1]: v}), chains=True)
    if not (isinstance(cfg["n_images"], int) and cfg["n_images"] >= 1):
        fail("--n-images", "an int >= 1", cfg["n_images"])
    if cfg["prior"] is not None:
        from pathlib import Path

        if cfg["prior"] not in priors_available() and not Path(str(cfg["prior"])).exists():
            fail("--prior", f"one of the shipped priors {priors_available()} or a checkpoint path", repr(cfg["prior"]))
    from .._validate import check_bool, check_int, check_number

    check_int("--size", cfg["size"], lo=8)
    check_int("depth", cfg["depth"], lo=1)
    check_number("noise", cfg["noise"], lo=0)
    check_int("first_image", cfg["first_image"], lo=0)
    check_int("threads", cfg["threads"], lo=1)
    for k in ("overwrite", "progress", "strict"):
        check_bool(k, cfg[k])
    cfg = dict(cfg, tasks=tasks, solvers=solvers, sweep=sweep)
    from .runner import plan

    plan(cfg, options)  # priors load and the size guard (--strict) runs before anything is written
    torch.set_num_threads(int(cfg["threads"]))
    out = check_writable_dir("--out", a.out)

    rank, world, initialised = dist_context()
    if rank == 0:
        atomic_write_json(out / "config.json", dict(cfg, solver_options=options, world_size=world))
    specs, notes, failed = run(cfg, options, out, rank=rank, world=world)
    barrier(world)
    rc = 0
    if rank == 0:
        summary = write_outputs(out, cfg, options, specs, notes)
        errors = sum(s["errors"] for s in summary)
        print((out / "results.md").read_text().split("## All configurations")[0].split("\n\n", 2)[-1].strip())
        print(f"[bench] wrote {out / 'results.md'}, results.json, results.csv, psnr_vs_nfe.png")
        if errors:
            print(f"invdiff bench: error: {errors} row(s) failed (see results_per_image.csv)", file=sys.stderr)
            rc = 1
    if failed:
        rc = 1
    if initialised:
        from ..jobs import DistContext

        DistContext(rank, world, initialised).close()
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

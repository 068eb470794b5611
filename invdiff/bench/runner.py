r"""Benchmark runner: tasks x solvers (x option sweeps) x held-out images -> rows, tables, plot; resumable, shardable.

A *row* is one (task, solver, options, prior, image) reconstruction. Each row is measured once and stored as
``OUT/rows/<task>/<solver>-<key>.json`` (atomic), where ``key`` hashes everything that determines the result
(task, solver, options, prior, image seed, size, depth, noise); a re-run skips rows whose file exists, so only
new or failed rows are computed (``overwrite`` redoes them). Under torchrun each rank takes rows
``rank::WORLD_SIZE`` of the sorted plan and rank 0 merges after a barrier.

Per row: NMSE, PSNR, SSIM by :func:`invdiff.metrics.fastmri_metrics` with ``crop=False`` (PSNR and NMSE over the
whole image/volume with ``data_range`` = the reference maximum, SSIM with skimage's defaults averaged over slices;
complex images as magnitudes), NFE (denoiser calls counted by :func:`invdiff.solve`), wall seconds and peak memory
growth (:func:`invdiff.bench.measure`). Summary rows average over images (mean and sample std).

Outputs: ``results.{json,md,csv}`` (one summary row per task x solver configuration, with the per-image rows and
the configuration in the JSON), ``results_per_image.csv``, ``psnr_vs_nfe.png`` and ``config.json``.
"""
from __future__ import annotations

import hashlib
import io
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._validate import fail


DEFAULTS = {
    "tasks": ["inpainting-random", "mri-4x-multicoil", "ct-8view"],
    "solvers": ["adjoint", "baseline", "dds"],   # "baseline" = each task's natural classical solver
    "n_images": 4,
    "size": 64,
    "depth": 8,               # slices of the 3D tasks
    "noise": 0.01,
    "first_image": 0,         # image i uses held-out seed first_image + i
    "prior": None,            # None: each task's default prior
    "cond_prior": None,       # conditional prior of solver conditional-dc (None: "<task prior>-cond")
    "threads": 1,
    "device": "cpu",          # cpu | cuda | cuda:N: where solvers run (images are simulated on the CPU)
    "precision": "fp32",      # fp32 | bf16 | fp16: the prior network's autocast precision
    "sweep": {},              # {"dds.num_steps": [10, 20, 50]}: one configuration per value (product over keys)
    "overwrite": False,
    "progress": True,
    "strict": False,          # a prior applied outside the sizes it fits: an error (checked when planning)
}


@dataclass
class RowSpec:
    task: str
    solver: str
    label: str                 # solver name + swept options, e.g. "dds (num_steps=20)"
    options: dict
    prior: str | None
    image: int
    key: str = ""

    @property
    def path_parts(self) -> tuple[str, str]:
        return self.task, f"{self.solver}-{self.key}.json"


def _key(d: dict) -> str:
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _sweep_combos(sweep: dict, solver: str) -> list[dict]:
    keys = sorted(k for k in sweep if k.split(".", 1)[0] == solver)
    if not keys:
        return [{}]
    values = []
    for k in keys:
        v = sweep[k]
        values.append(list(v) if isinstance(v, (list, tuple)) else [v])
    return [{k.split(".", 1)[1]: v for k, v in zip(keys, combo)} for combo in itertools.product(*values)]


def plan(cfg: dict, options: dict) -> tuple[list[RowSpec], list[str]]:
    """All rows of the benchmark (sorted by key) and notes on skipped combinations."""
    from ..priors import available as priors_available
    from ..priors import load
    from ..solvers.base import get
    from .tasks import applicable, get_task

    rows, notes, priors, physics_cache = [], [], {}, {}
    for tname in cfg["tasks"]:
        task = get_task(tname)
        for entry in cfg["solvers"]:
            solver = task.baseline if entry == "baseline" else entry
            spec = get(solver)
            prior_name = None
            if spec.needs_prior:
                prior_name = cfg["prior"] or task.prior
                if solver == "conditional-dc":  # its own (conditional) prior: <task prior>-cond unless cond_prior is set
                    prior_name = cfg.get("cond_prior") or (f"{task.prior}-cond" if task.prior else None)
                if prior_name not in priors and not Path(str(prior_name)).exists() \
                        and prior_name not in priors_available():
                    notes.append(f"{tname} / {solver}: skipped, prior {prior_name!r} is not installed")
                    continue
                if prior_name not in priors:
                    priors[prior_name] = load(prior_name)
            why = applicable(task, solver, _for_task(task, priors.get(prior_name)))
            if not why and prior_name is not None and cfg.get("strict"):
                from ..priors import check_prior_fits

                size, C = int(cfg["size"]), task.channels
                shape = (C, int(cfg["depth"]), size, size) if task.dims == 3 else (C, size, size)
                try:
                    check_prior_fits(_for_task(task, priors[prior_name]), shape, strict=True)
                except ValueError as e:
                    fail("--strict", f"a prior that fits task {tname!r} at --size {size}", str(e))
            if why:
                notes.append(f"{tname} / {solver}: skipped, {why}")
                continue
            base = dict(task.baseline_options) if solver == task.baseline else dict(task.solver_options.get(solver, {}))
            base.update(options.get(solver, {}))
            for combo in _sweep_combos(cfg["sweep"], solver):
                opts = dict(base, **combo)
                label = solver + (" (" + ", ".join(f"{k}={v}" for k, v in sorted(combo.items())) + ")" if combo else "")
                resolved = _resolved_defaults(task, solver, opts, priors.get(prior_name), cfg, physics_cache)
                for i in range(int(cfg["n_images"])):
                    r = RowSpec(tname, solver, label, opts, prior_name, i)
                    fields = {"task": tname, "solver": solver, "options": opts, "prior": prior_name,
                              "image": int(cfg["first_image"]) + i, "size": cfg["size"],
                              "depth": cfg["depth"] if task.dims == 3 else None, "noise": cfg["noise"]}
                    if resolved:  # the measured defaults the row will run with: a change of the table re-runs it
                        fields["resolved"] = resolved
                    r.key = _key(fields)
                    rows.append(r)
    rows.sort(key=lambda r: (r.task, r.solver, r.key))
    return rows, notes


def _resolved_defaults(task, solver: str, opts: dict, prior, cfg: dict, physics_cache: dict) -> dict:
    """The options :mod:`invdiff.solvers.defaults` adds for this row (those not set explicitly), as the solver
    will resolve them on the task's operator; part of the row key, so rows measured under an older table are
    not taken for current ones on resume."""
    from ..solvers.defaults import measured, table_for

    if not table_for(solver):
        return {}
    if task.name not in physics_cache:
        physics_cache[task.name] = task.physics(int(cfg["size"]), int(cfg["depth"]), float(cfg["noise"]),
                                                torch.Generator().manual_seed(int(cfg["first_image"])))
    row = measured(solver, physics_cache[task.name], _for_task(task, prior), opts)
    return json.loads(json.dumps(row.get("options", {}), sort_keys=True, default=str))


def _for_task(task, prior):
    """3D tasks take a 2D prior lifted slice by slice (invdiff.priors.lift, 8 slices per network call)."""
    if prior is None or task.dims != 3:
        return prior
    from ..jobs import prior_for_volumes

    try:
        return prior_for_volumes(prior, chunk=8)
    except ImportError:  # no lifting available: applicable() then explains why prior-based rows are skipped
        return prior


def row_path(out: Path, r: RowSpec) -> Path:
    t, f = r.path_parts
    return out / "rows" / t / f


def is_done(out: Path, r: RowSpec) -> bool:
    p = row_path(out, r)
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text()).get("status") == "ok"
    except (OSError, json.JSONDecodeError):
        return False


def _magnitude(x: torch.Tensor, complex_: bool) -> np.ndarray:
    """(1, C, [D], H, W) -> (S, H, W) numpy magnitude slices."""
    x = x.detach().float().cpu()[0]
    m = x.pow(2).sum(0).sqrt() if complex_ else x[0]
    return (m[None] if m.dim() == 2 else m).numpy()


def run_row(r: RowSpec, cfg: dict, prior_cache: dict) -> dict:
    """Simulate the measurement of one held-out image and reconstruct it; returns the row."""
    import invdiff

    from ..datasets import HELDOUT_SEED_START
    from ..metrics import fastmri_metrics
    from ..jobs import to_device
    from ..priors import load
    from .measure import measure
    from .tasks import get_task

    task = get_task(r.task)
    first = int(cfg["first_image"])
    x = task.images([r.image], int(cfg["size"]), int(cfg["depth"]), first)
    seed = first + r.image
    op = task.physics(int(cfg["size"]), int(cfg["depth"]), float(cfg["noise"]), torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y = op(x)
    y, op = to_device(y, op, cfg.get("device", "cpu"))
    prior = None
    if r.prior is not None:
        if r.prior not in prior_cache:
            prior_cache[r.prior] = load(r.prior, device=cfg.get("device", "cpu"),
                                        precision=str(cfg.get("precision", "fp32")))
        prior = _for_task(task, prior_cache[r.prior])
    m = measure(invdiff.solve, y, op, prior, solver=r.solver, seed=seed, progress=False,
                strict=bool(cfg.get("strict", False)), **r.options)
    rec = m.value
    c = task.channels == 2
    met = fastmri_metrics(_magnitude(rec.mean, c), _magnitude(x, c), crop=False)
    return {"task": r.task, "solver": r.solver, "label": r.label, "prior": r.prior or "-", "options": r.options,
            "image": r.image, "seed": seed, "image_seed": HELDOUT_SEED_START + seed, "PSNR": met["PSNR"],
            "SSIM": met["SSIM"], "NMSE": met["NMSE"],
            "NFE": rec.nfe, "NFE_images": int(rec.info.get("nfe_images", rec.nfe)),
            "seconds": m.seconds, "peak_mb": m.peak_mb, "growth_mb": m.growth_mb, "status": "ok", "key": r.key}


def summarise(rows: list[dict]) -> list[dict]:
    """One row per (task, label): mean and sample std over images; NFE, seconds means; peak memory max."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["task"], r["label"]), []).append(r)
    out = []
    for (task, label), rs in sorted(groups.items()):
        ok = [r for r in rs if r.get("status") == "ok"]
        s = {"task": task, "solver": label, "prior": rs[0].get("prior", "-"), "n": len(ok),
             "errors": len(rs) - len(ok), "options": rs[0].get("options", {})}
        for k in ("PSNR", "SSIM", "NMSE", "NFE", "NFE_images", "seconds"):
            # rows written before NFE_images existed: one chain, so NFE_images = NFE
            v = np.array([float(r["NFE"] if k == "NFE_images" and k not in r else r[k]) for r in ok], dtype=np.float64)
            s[k] = float(v.mean()) if len(v) else None
            if k in ("PSNR", "SSIM", "NMSE"):
                s[f"{k}_std"] = float(v.std(ddof=1)) if len(v) > 1 else None
        pm = [r["peak_mb"] for r in ok if r.get("peak_mb") is not None]
        s["peak_mb"] = float(max(pm)) if pm else None
        out.append(s)
    return out


def grid_table(summary: list[dict]) -> str:
    """Markdown grid: tasks x solver configurations, 'PSNR / SSIM' entries."""
    labels = sorted({s["solver"] for s in summary})
    tasks = sorted({s["task"] for s in summary})
    by = {(s["task"], s["solver"]): s for s in summary}
    lines = ["| task | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for t in tasks:
        cells = []
        for lab in labels:
            s = by.get((t, lab))
            cells.append("" if s is None or s["PSNR"] is None else f"{s['PSNR']:.2f} / {s['SSIM']:.3f}")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_psnr_vs_nfe(summary: list[dict], path: Path):
    """PSNR against NFE per task: diffusion solvers as points/lines (one line per solver over its sweep),
    prior-free solvers (NFE 0) as horizontal dashed lines. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io_utils import atomic_write_bytes

    tasks = sorted({s["task"] for s in summary if s["PSNR"] is not None})
    if not tasks:
        return None
    ncol = min(3, len(tasks))
    nrow = math.ceil(len(tasks) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow), squeeze=False)
    for ax, t in zip(axes.flat, tasks):
        rows = [s for s in summary if s["task"] == t and s["PSNR"] is not None]
        diff = [s for s in rows if s["NFE"] and s["NFE"] > 0]
        cost = lambda s: s.get("NFE_images") or s["NFE"]  # noqa: E731 (K batched chains cost K per call)
        by_solver: dict = {}
        for s in diff:
            by_solver.setdefault(s["solver"].split(" ")[0], []).append(s)
        for name, ss in sorted(by_solver.items()):
            ss.sort(key=cost)
            ax.plot([cost(s) for s in ss], [s["PSNR"] for s in ss], "o-", label=name)
        for i, s in enumerate(r for r in rows if not r["NFE"]):
            ax.axhline(s["PSNR"], ls="--", lw=1, color=f"C{(len(by_solver) + i) % 10}", label=f"{s['solver']} (no prior)")
        if diff:
            ax.set_xscale("log")
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("image evaluations of the denoiser")
        ax.set_ylabel("PSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, dpi=110, format="png")    # to memory: a full disk fails in one plain write
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def collect(out: Path, specs: list[RowSpec]) -> list[dict]:
    rows = []
    for r in specs:
        p = row_path(out, r)
        if p.is_file():
            try:
                rows.append(json.loads(p.read_text()))
                continue
            except (OSError, json.JSONDecodeError):
                pass
        rows.append({"task": r.task, "solver": r.solver, "label": r.label, "prior": r.prior or "-",
                     "options": r.options, "image": r.image, "status": "missing", "key": r.key})
    rows.sort(key=lambda r: (r["task"], r["label"], r["image"]))
    return rows


def write_outputs(out: Path, cfg: dict, options: dict, specs: list[RowSpec], notes: list[str]) -> list[dict]:
    """Merge all row files into results.{json,md,csv}, results_per_image.csv and psnr_vs_nfe.png."""
    import csv
    import io

    from ..io_utils import atomic_write_text
    from .tables import write_results

    rows = collect(out, specs)
    summary = summarise(rows)
    cols = ["task", "solver", "prior", "n", "PSNR", "PSNR_std", "SSIM", "SSIM_std", "NMSE", "NFE", "NFE_images",
            "seconds", "peak_mb", "errors"]
    text = ("Held-out phantoms (invdiff.datasets, never seen in training); metrics by the fastMRI volume protocol "
            "without crop (PSNR/NMSE with data_range = reference max, SSIM mean over slices; complex images as "
            "magnitudes); mean and sample std over n images; NFE = denoiser calls (a batched call of K chains "
            "counts 1), NFE_images = images through the denoiser (it counts K: the compute); seconds = wall time of "
            f"invdiff.solve; peak_mb = peak memory during the solve (MiB): peak resident memory of the whole process "
            "on CPU (kernel high-water mark, everything resident included), torch's peak allocated memory on CUDA "
            f"(invdiff.bench.measure). Noise sigma = {cfg['noise']}, size {cfg['size']}, "
            f"{torch.get_num_threads()} torch thread(s).\n\n## PSNR / SSIM\n\n" + grid_table(summary)
            + ("\n" + "\n".join(f"- {n}" for n in notes) + "\n" if notes else "") + "\n## All configurations\n")
    write_results(out, "results", summary, cols, title="invdiff bench", notes=text,
                  meta={"config": cfg, "solver_options": options, "notes": notes, "per_image": rows})
    pcols = ["task", "label", "prior", "image", "image_seed", "PSNR", "SSIM", "NMSE", "NFE", "NFE_images", "seconds",
             "peak_mb", "status", "error"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=pcols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({c: r.get(c) for c in pcols})
    atomic_write_text(out / "results_per_image.csv", buf.getvalue())
    plot_psnr_vs_nfe(summary, out / "psnr_vs_nfe.png")
    return summary


def run(cfg: dict, options: dict, out: Path, *, rank: int = 0, world: int = 1) -> tuple[list[RowSpec], list[str], int]:
    """Compute this rank's rows that are not done yet; returns (plan, notes, number of failed rows)."""
    from ..io_utils import atomic_write_json
    from ..jobs import DistContext, run_items, shard

    specs, notes = plan(cfg, options)
    todo = [r for r in shard(specs, rank, world) if cfg["overwrite"] or not is_done(out, r)]
    if rank == 0:
        print(f"[bench] {len(specs)} rows planned, {len(specs) - sum(not is_done(out, r) for r in specs)} already "
              f"done; this rank computes {len(todo)}" + (f" (world size {world})" if world > 1 else ""))
        for n in notes:
            print(f"[bench] {n}")
    prior_cache: dict = {}

    def work(r):
        atomic_write_json(row_path(out, r), run_row(r, cfg, prior_cache))

    def on_error(r, e):  # a failing solver/task pair must not cost the other rows: its row records the error
        row = {"task": r.task, "solver": r.solver, "label": r.label, "prior": r.prior or "-", "options": r.options,
               "image": r.image, "status": "error", "error": f"{type(e).__name__}: {e}", "key": r.key}
        atomic_write_json(row_path(out, r), row)
        return f"{r.task} / {r.label} / image {r.image}: FAILED {row['error']}"

    tally = run_items(specs, work, ctx=DistContext(rank, world), name="bench", overwrite=bool(cfg["overwrite"]),
                      progress=bool(cfg["progress"]), unit="row", is_done=lambda r: is_done(out, r), on_error=on_error)
    return specs, notes, tally.failed


__all__ = ["DEFAULTS", "RowSpec", "plan", "run", "run_row", "summarise", "write_outputs", "plot_psnr_vs_nfe",
           "grid_table", "is_done"]

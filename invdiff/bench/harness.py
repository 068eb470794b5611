"""The shared part of the experiment scripts in ``benchmarks/``: each script is then its experiment only.

A script composes:

- :func:`experiment_args`: an ``argparse`` parser with the options every experiment has (``--out``, ``--threads``,
  ``--smoke``, and ``--images`` when the script evaluates held-out images), the script's docstring as ``--help``;
- :func:`start`: fixes the torch threads (timings side by side on 1 thread unless asked otherwise), sends a
  ``--smoke`` run to a fresh temporary folder (never over ``benchmarks/results``) and records the command line;
- :func:`heldout`: held-out phantoms (never seen by the shipped priors) by data kind or benchmark task;
- :func:`measured`: one solve with its wall time, peak memory and NFE as row fields;
- :func:`quality`: PSNR / SSIM with peak 1 (magnitude images for complex 2-channel data);
- :func:`prior_versions`: which version of each loaded prior a run used (training step, sha256 of the weights);
  :class:`PinnedPriors` loads each shipped prior once from a private copy (re-exports during a run cannot mix
  versions), :func:`installed_versions` what is installed now;
- :func:`mean_rows`: per-group means of numeric row fields; :class:`RowCache`: per-row JSON files, so a rerun
  skips the rows already measured; :func:`weights_sha` tags cached rows by the prior's weights;
- :func:`option_default`: the value of a solver option a user gets by default on an operator (tuning grids
  centre on it);
- :func:`write_experiment`: JSON + CSV + markdown (:func:`invdiff.bench.tables.write_results`) with a header naming
  the command and the prior versions.

Example (a complete experiment)::

    ap = experiment_args(__doc__, images=3)
    a = start(ap.parse_args())
    x = heldout("ct", a.images)
    op = CT(64, n_views=8, sigma=0.01)
    rows = []
    for i in range(a.images):
        y = op(x[i:i + 1])
        rec, cost = measured(invdiff.solve, y, op, None, solver="fbp")
        rows.append({"image": i, "solver": "fbp", **quality(rec.mean, x[i:i + 1]), **cost})
    write_experiment(a, "fbp_ct8", rows, ["image", "solver", "PSNR", "SSIM", "nfe", "seconds", "peak_mb"],
                     title="FBP on 8-view CT", notes=__doc__)
"""
from __future__ import annotations

import argparse
import hashlib
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

from .._validate import check_positive
from .measure import measure
from .tables import write_results

RESULTS_DIR = "benchmarks/results"
COST_COLUMNS = ["nfe", "seconds", "peak_mb"]


def experiment_args(doc: str | None, *, images: int | None = None, out: str = RESULTS_DIR,
                    threads: int = 1) -> argparse.ArgumentParser:
    """A parser with the common options; the script adds its own. ``images``: default of ``--images`` (held-out
    images per task), None for scripts that have no such option."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=out, help=f"folder for the JSON / CSV / markdown results (default {out})")
    ap.add_argument("--threads", type=int, default=threads, help=f"torch threads (default {threads})")
    ap.add_argument("--smoke", action="store_true",
                    help="smallest settings, results into a new temporary folder (checks the script runs)")
    if images is not None:
        ap.add_argument("--images", type=int, default=images, help=f"held-out images per task (default {images})")
    return ap


def start(args: argparse.Namespace, argv: list[str] | None = None) -> argparse.Namespace:
    """Fix torch threads to ``args.threads``; under ``--smoke`` point ``args.out`` at a new temporary folder; set
    ``args.command`` to the command line (recorded in every table). Returns ``args``."""
    check_positive("threads", args.threads, integer=True)
    torch.set_num_threads(args.threads)
    if getattr(args, "smoke", False):
        args.out = tempfile.mkdtemp(prefix="invdiff-smoke-")
    argv = sys.argv if argv is None else argv
    args.command = "python " + shlex.join([Path(argv[0]).as_posix(), *argv[1:]]) if argv else ""
    return args


def heldout(task, n: int, *, first: int = 0, size: int = 64) -> torch.Tensor:
    """``n`` held-out phantoms (seeds ``split_seeds("heldout", n, start=first)``): ``task`` is a data kind ("ct":
    (n, 1, size, size) in [0, 1]; "mri": complex (n, 2, size, size), max magnitude 1) or a benchmark task (name or
    :class:`~invdiff.bench.tasks.BenchTask`, volumes for 3D tasks)."""
    from ..datasets import ct_phantoms, mri_phantoms, split_seeds

    check_positive("n", n, integer=True)
    if task in ("ct", "mri"):
        return (ct_phantoms if task == "ct" else mri_phantoms)(split_seeds("heldout", n, start=first), size)
    from .tasks import get_task

    t = get_task(task) if isinstance(task, str) else task
    return t.images(range(n), size=size, first=first)


def quality(est: torch.Tensor, x: torch.Tensor, data_range: float = 1.0) -> dict:
    """``{"PSNR", "SSIM"}`` of ``est`` against ``x`` (B, C, H, W), mean over the batch; 2 channels are complex and
    scored on the magnitude."""
    from ..metrics import psnr, ssim

    cplx = x.shape[1] == 2
    return {"PSNR": float(psnr(est, x, data_range, complex=cplx).mean()),
            "SSIM": float(ssim(est, x, data_range, complex=cplx).mean())}


def measured(fn, *args, device="cpu", **kwargs) -> tuple[object, dict]:
    """``(value, cost)``: the value of ``fn(*args, **kwargs)`` and ``{"nfe", "seconds", "cpu_s", "peak_mb"}``
    (``nfe`` from the value's ``.nfe`` when it has one, else None; ``cpu_s`` the process CPU time, which on 1 thread
    is the wall time an idle machine would show); see :func:`invdiff.bench.measure` for ``peak_mb``."""
    c0 = time.process_time()
    m = measure(fn, *args, device=device, **kwargs)
    cpu = time.process_time() - c0
    return m.value, {"nfe": getattr(m.value, "nfe", None), "seconds": m.seconds, "cpu_s": cpu, "peak_mb": m.peak_mb}


def prior_versions(priors: dict) -> dict:
    """``{name: {"step", "sha256_12"}}`` of loaded priors ``{name: prior}``: the training step the weights were
    exported at (from the prior's ``info``) and, for shipped priors, the first 12 hex digits of the weights' sha256."""
    from ..priors.registry import WEIGHTS_DIR

    out = {}
    for name, p in priors.items():
        info = getattr(p, "info", None) or {}
        entry = {"step": info.get("step")}
        f = Path(WEIGHTS_DIR) / f"{name}.safetensors"
        if f.is_file():
            entry["sha256_12"] = hashlib.sha256(f.read_bytes()).hexdigest()[:12]
        out[name] = entry
    return out


def _model_card_steps(name: str) -> str:
    from ..priors.registry import WEIGHTS_DIR

    card = Path(WEIGHTS_DIR) / f"{name}.md"
    if not card.is_file():
        return ""
    return next((ln.strip("- ").strip() for ln in card.read_text().splitlines() if ln.startswith("- steps")), "")


def installed_versions(names) -> dict:
    """``{name: {"sha256_12", "mtime", "training"}}`` of the shipped priors ``names`` installed now (absent ones are
    left out): record it at the start and end of a long run to see whether the weights were re-exported meanwhile."""
    from ..priors.registry import WEIGHTS_DIR

    out = {}
    for name in names:
        f = Path(WEIGHTS_DIR) / f"{name}.safetensors"
        if f.is_file():
            out[name] = {"sha256_12": hashlib.sha256(f.read_bytes()).hexdigest()[:12],
                         "mtime": time.ctime(f.stat().st_mtime), "training": _model_card_steps(name)}
    return out


class PinnedPriors:
    """Shipped priors, each loaded once per run from a private copy of its weights (the shipped weights are
    re-exported while training runs: one benchmark run must use one version). ``pinned(name)`` returns the prior;
    ``pinned.versions()`` what was used: ``{name: {"sha256_12", "mtime", "model_card"}}``."""

    def __init__(self):
        self._loaded: dict = {}

    def __call__(self, name: str):
        if name not in self._loaded:
            import shutil

            from ..priors import load
            from ..priors.registry import WEIGHTS_DIR

            src = Path(WEIGHTS_DIR) / f"{name}.safetensors"
            tmp = Path(tempfile.mkdtemp()) / src.name
            try:
                shutil.copyfile(src, tmp)
                data = tmp.read_bytes()
                prior = load(tmp)
            finally:
                shutil.rmtree(tmp.parent, ignore_errors=True)
            self._loaded[name] = (prior, {"sha256_12": hashlib.sha256(data).hexdigest()[:12],
                                          "mtime": time.ctime(src.stat().st_mtime),
                                          "model_card": _model_card_steps(name)})
        return self._loaded[name][0]

    def versions(self) -> dict:
        return {k: v[1] for k, v in self._loaded.items()}


def weights_sha(name_or_path: str) -> str:
    """First 12 hex digits of the SHA-256 of a prior's weights (tensor names and bytes, not the metadata), for a
    shipped name or a ``.safetensors`` file: cached rows follow the network, not its model-card text."""
    from safetensors.torch import load_file

    p = Path(name_or_path)
    if not p.is_file():
        from ..priors.registry import WEIGHTS_DIR

        p = WEIGHTS_DIR / f"{name_or_path}.safetensors"
    h = hashlib.sha256()
    for k, v in sorted(load_file(str(p)).items()):
        h.update(k.encode())
        h.update(v.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:12]


def option_default(solver: str, option: str, physics, prior) -> float:
    """The value of ``option`` that ``solver`` uses on ``physics`` with ``prior`` when the user gives none: the
    measured table (:mod:`invdiff.solvers.defaults`), else the solver's own default (DDS: its automatic gamma).
    Experiments tune around it."""
    from ..solvers.base import get, resolve_options

    v = resolve_options(solver, {}, physics, prior)[0].get(option)
    if v is None and solver == "dds" and option == "gamma":
        from ..solvers.dds import default_gamma

        v = default_gamma(physics, prior)
    return float(v if v is not None else get(solver).option(option).default)


class RowCache:
    """Per-row JSON files in ``folder`` (None: no cache), so that a rerun skips the rows already measured:
    ``cache.get(key, compute)`` returns the stored row of ``key`` or stores and returns ``compute()``. The key must
    name everything the row depends on (task, solver, options, image, ...); it becomes a file name with characters
    outside ``[A-Za-z0-9_.-]`` replaced. Rows are written atomically."""

    def __init__(self, folder=None):
        self.folder = Path(folder) if folder is not None else None
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path | None:
        import re

        return None if self.folder is None else self.folder / (re.sub(r"[^A-Za-z0-9_.-]+", "_", key) + ".json")

    def get(self, key: str, compute) -> dict:
        import json

        from ..io_utils import atomic_write_text

        f = self.path(key)
        if f is not None and f.is_file():
            return json.loads(f.read_text())
        row = compute()
        if f is not None:
            atomic_write_text(f, json.dumps(row))
        return row


def mean_rows(rows: list[dict], by: list[str], *, label: dict | None = None) -> list[dict]:
    """One row per group of ``rows`` sharing the values of ``by``: numeric fields averaged over the rows that have
    them (None skipped), ``label`` fields set (e.g. ``{"image": "mean"}``). Groups keep their first-seen order."""
    groups: dict = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in by), []).append(r)
    label = label or {}
    out = []
    for key, rs in groups.items():
        row = {**dict(zip(by, key)), **label}
        for k in dict.fromkeys(k for r in rs for k in r):       # every field, in first-seen order
            vals = [r[k] for r in rs if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)]
            if k not in row and vals:
                row[k] = sum(vals) / len(vals)
        out.append(row)
    return out


def write_experiment(args: argparse.Namespace, name: str, rows: list[dict], columns: list[str], *, title: str,
                     notes: str = "", meta: dict | None = None, priors: dict | None = None) -> Path:
    """Write ``name.{json,csv,md}`` into ``args.out``; the markdown header names the command and, when given, the
    prior versions (``priors``: :func:`prior_versions` output); ``meta`` gets the run's arguments. Returns the
    markdown path."""
    command = getattr(args, "command", "")
    head = (notes.split("Usage:")[0].strip() if notes else "")
    head += f"\n\nCommand: `{command}`" if command else ""
    head += f"\n\nPrior versions: {priors}" if priors else ""
    run_args = {k: v for k, v in vars(args).items() if k != "command"}
    return write_results(args.out, name, rows, columns, title=title, notes=head,
                         meta={**run_args, "command": command, **({"priors": priors} if priors else {}),
                               **(meta or {})})

"""Batch jobs: the machinery ``invdiff reconstruct``, ``invdiff bench`` and ``invdiff train-prior`` share.

A batch command turns a sorted list of work items into one output each, resumably and shardably:

- **work list**: :func:`discover` walks files and folders (classifier per file, e.g.
  :func:`invdiff.datasets.inputs.classify_file`) into sorted, de-duplicated :class:`Item` s;
- **configuration** (:mod:`invdiff.jobs.options`, re-exported here): :func:`resolve_config` (defaults <
  ``--config`` file < ``--set`` < explicit flags, solver options ``SOLVER.OPTION`` split off), :func:`check_solver_options`, :func:`load_prior_checked`,
  :func:`is_volume_solver` (the ``volume=True`` metadata of :func:`invdiff.solvers.base.register`) and
  :func:`prior_for_volumes`;
- **scale-out**: under torchrun, rank r of W takes :func:`shard` ``items[r::W]``; :func:`item_seed` derives
  every item's seed from the global seed and the item's name, so sharding never changes results;
- **resumable atomic outputs**: an output appears atomically (:mod:`invdiff.io_utils`) only when complete and
  marks its item done; :func:`clean_stale` removes what a killed run left; each item's record (metrics, NFE,
  seconds, or the error) goes to ``OUT/records/NAME.json`` (:func:`write_record`);
- **the loop**: :func:`run_items` runs this rank's share (skip done, report failures and go on, progress bar);
- **the index**: after the barrier rank 0 merges every rank's records (:func:`merge_records`) into its tables;
  :func:`finish` is that run tail (barrier, index, summary line, failures, exit code);
- **shared checks**: :func:`check_common_config` (the config keys the commands share),
  :func:`check_distinct_outputs`; :func:`add_job_flags` (``--overwrite``, ``--no-progress``, ``--config``,
  ``--set``).

The process-group context
    :class:`DistContext` is this process's place in a run (rank ``rank`` of ``world``). :func:`join` joins the
    group torchrun started (``WORLD_SIZE``/``RANK`` in the environment; a single process otherwise),
    :func:`current` reads an already initialised default group (training initialises it itself, with its
    own backend). ``ctx.barrier()``, ``ctx.on_main(fn)`` (rank 0 computes, every rank receives, an error on
    rank 0 is raised on every rank) and ``ctx.close()`` (destroys the group only if :func:`join` created it).

A new batch command (say: simulate measurements for a folder of clean inputs; :mod:`invdiff.acquire` is built so) is
the experiment plus about 30 lines of this module::

    def main(argv=None):
        a = parser().parse_args(argv)
        cfg, options = jobs.resolve_config(DEFAULTS, a.config, a.set, extra=flags_of(a))
        out = check_writable_dir("--out", a.out)
        items = jobs.discover(a.inputs, lambda p, explicit: classify_file(p, explicit=explicit),
                              folder=is_series_folder, what=inputs.DESCRIPTION)
        for it in items:
            it.out_name = output_name(it.kind, it.path)
        ctx = jobs.join()

        def work(it):                                    # one input -> its output; returns its record
            seed = jobs.item_seed(cfg["seed"], it.path.name)
            y, meta = simulate(it, cfg, seed)            # the experiment
            rec = {"input": str(it.path), "output": it.out_name, "status": "done", "seed": seed}
            jobs.write_record(out, it.out_name, rec)     # the record first, the output last (= done)
            write_measurement(out / it.out_name, y, meta)
            return rec

        tally = jobs.run_items(items, work, ctx=ctx, name="acquire", out=out, overwrite=cfg["overwrite"],
                               progress=cfg["progress"])
        return jobs.finish(items, tally, ctx, out, lambda: write_index(out, jobs.merge_records(out, items), cfg),
                           name="simulate", verb="simulated")
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

from .._validate import fail
from .options import (add_job_flags, check_common_config, check_device, check_solver_options,  # noqa: F401
                      is_volume_solver, load_prior_checked, prior_for_volumes, resolve_config,
                      resolve_with_solver_options, solves_whole_volumes, to_device)


# ================================================================================================
# the process-group context
# ================================================================================================
class DistContext(NamedTuple):
    """This process's place in a data-parallel run: rank ``rank`` of ``world`` (1 process: 0 of 1).

    ``initialised`` is True when :func:`join` created the process group (so :meth:`close` destroys it). A tuple:
    ``rank, world, initialised = join()``."""

    rank: int = 0
    world: int = 1
    initialised: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, batch_size: int) -> tuple[int, int]:
        """This rank's rows ``[start, stop)`` of a global batch (``batch_size`` divisible by ``world``)."""
        if batch_size % self.world:
            fail("batch_size", f"a multiple of the number of processes ({self.world})", batch_size)
        b = batch_size // self.world
        return self.rank * b, (self.rank + 1) * b

    def barrier(self) -> None:
        barrier(self.world)

    def on_main(self, fn: Callable):
        """Run ``fn()`` on rank 0 and hand its result to every rank; an error on rank 0 is raised on every rank
        (instead of leaving the other ranks waiting in the next collective)."""
        if self.world == 1:
            return fn()
        import torch.distributed as dist

        payload = [None]
        if self.is_main:
            try:
                payload = [("ok", fn())]
            except (ValueError, TypeError, OSError) as e:
                payload = [("error", (type(e).__name__, str(e)))]
        dist.broadcast_object_list(payload, src=0)
        status, value = payload[0]
        if status == "error":
            kind, msg = value
            err = {"TypeError": TypeError, "OSError": OSError}.get(kind, ValueError)(msg)
            err.echo_of_rank0 = True  # rank 0 reports it; the CLI does not print it again
            raise err
        return value

    def close(self) -> None:
        """Destroy the process group if :func:`join` created it."""
        if self.initialised:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def launched_rank() -> tuple[int, int] | None:
    """(rank, world size) of a process started by torchrun / ``torch.distributed.run``, else None."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return None


def current() -> DistContext:
    """Rank and world size of the initialised default process group, or a single-process context."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size())
    return DistContext()


def init_process_group(backend: str, timeout: datetime.timedelta) -> None:
    """Join the process group torchrun set up (env:// rendezvous) with ``backend``."""
    import torch.distributed as dist

    dist.init_process_group(backend, timeout=timeout)


def join(backend: str = "gloo", timeout: datetime.timedelta = datetime.timedelta(hours=72)) -> DistContext:
    """This process's context from torchrun's environment; the process group (``backend``) is initialised only
    when ``WORLD_SIZE > 1`` and no group exists yet (then ``initialised`` is True).

    The default timeout is long: in a batch job rank 0 waits at the barrier for the slowest rank's whole share."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world <= 1:
        return DistContext(0, 1, False)
    import torch.distributed as dist

    if not dist.is_initialized():
        init_process_group(backend, timeout)
        return DistContext(rank, world, True)
    return DistContext(dist.get_rank(), dist.get_world_size(), False)


def barrier(world: int) -> None:
    """Wait for every rank (a no-op in one process)."""
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


# ================================================================================================
# the work list: discovery, shards, per-item seeds
# ================================================================================================
@dataclass
class Item:
    """One input of a batch job; ``error`` is set when it cannot be used (reported, the others go on)."""

    path: Path
    kind: str                 # what the input holds (e.g. fastmri | sinogram | volume | image)
    task: str | None = None   # what is done with it (e.g. mri | ct | inpainting | deblur)
    out_name: str = ""        # its output, relative to OUT; existence marks it done
    error: str | None = None
    info: dict = field(default_factory=dict)  # what probing found (sizes from the header, ...)


def discover(inputs, classify: Callable, *, folder: Callable | None = None, what: str = "a supported file") \
        -> list[Item]:
    """Items from files and folders (recursively, hidden names skipped), sorted by path, each path once.

    ``classify(path, explicit) -> kind | None`` sorts a file (``explicit``: named on the command line rather than
    met in a folder); a named file it refuses is an error saying ``what`` was expected. ``folder(dir) -> bool``
    marks folders that are one input themselves (a DICOM series: kind ``volume``)."""
    items = []
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            fail("INPUT", "an existing file or folder", str(p))
        if p.is_file():
            k = classify(p, True)
            if k is None:
                fail("INPUT", what, str(p))
            items.append(Item(p, k))
            continue
        for root, dirs, files in os.walk(p):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            root = Path(root)
            if folder is not None and folder(root):
                items.append(Item(root, "volume"))
            for f in sorted(files):
                k = None if f.startswith(".") else classify(root / f, False)
                if k is not None:
                    items.append(Item(root / f, k))
    uniq = {}
    for it in items:
        uniq.setdefault(it.path.resolve(), it)
    return sorted(uniq.values(), key=lambda it: str(it.path))


def shard(items: list, rank: int, world: int) -> list:
    """Rank ``rank``'s share of a sorted work list: ``items[rank::world]`` (disjoint, covers everything)."""
    return items[rank::world]


def item_seed(seed: int, name: str) -> int:
    """The seed of one item: from the global ``seed`` and the item's file name only (never its rank or position)."""
    from ..operators import seed_for_file

    return (seed_for_file(name) + 1_000_003 * int(seed)) % (2 ** 31)


# ================================================================================================
# resumable atomic outputs, records, the index
# ================================================================================================
def clean_stale(out: Path, name: str):
    """Remove temporary files/folders a killed run left for output ``name`` (``.NAME.*`` from atomic writes)."""
    for p in out.glob(f".{name}.*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                p.unlink()
            except FileNotFoundError:
                pass


def record_path(out: Path, name: str) -> Path:
    return out / "records" / f"{name}.json"


def write_record(out: Path, name: str, rec: dict) -> None:
    """Write output ``name``'s record atomically (before the output itself: done == the output exists)."""
    from ..io_utils import atomic_write_json

    atomic_write_json(record_path(out, name), rec)


def merge_records(out: Path, items: list[Item]) -> list[dict]:
    """Every item's record, for the index (rank 0 after the barrier): ``status`` is ``done`` when its output
    exists, ``failed`` (with ``error``; failures of other ranks are read from their records) or ``missing``."""
    for it in items:
        r = record_path(out, it.out_name)
        if it.error is None and r.is_file() and not (out / it.out_name).exists():
            rec = json.loads(r.read_text())
            if rec.get("status") == "failed":
                it.error = rec.get("error")
    records = []
    for it in items:
        rpath = record_path(out, it.out_name)
        rec = json.loads(rpath.read_text()) if rpath.is_file() else None
        done = (out / it.out_name).exists()
        if it.error is not None:
            rec = {"input": str(it.path), "output": it.out_name, "status": "failed", "error": it.error}
        elif rec is None:
            rec = {"input": str(it.path), "output": it.out_name, "status": "done" if done else "missing"}
        elif rec.get("status") == "done" and not done:
            rec = dict(rec, status="missing")
        records.append(rec)
    return records


# ================================================================================================
# the loop
# ================================================================================================
@dataclass
class Tally:
    """What one rank's :func:`run_items` did."""

    done: int = 0
    failed: int = 0
    skipped: int = 0
    failures: list = field(default_factory=list)


def _default_error(it, e: Exception) -> str:
    return str(e) if str(it.path) in str(e) else f"{it.path}: {e}"


def run_items(items: list, work: Callable, *, ctx: DistContext, name: str, out: Path | None = None,
              overwrite: bool = False, progress: bool = True, unit: str = "input", is_done: Callable | None = None,
              report: Callable | None = None, on_error: Callable | None = None) -> Tally:
    """Run this rank's share (:func:`shard`) of ``items``: ``work(item)`` for each one not done yet.

    Defaults are those of file jobs (items with ``path``, ``out_name``, ``error``, outputs in ``out``): stale
    temporaries are cleaned first, an item is done when ``out / item.out_name`` exists (``overwrite`` redoes
    it), an item with ``error`` set is reported failed, and a failure of ``work`` is written as the item's
    failed record. ``is_done(item)``, ``report(item, result) -> line`` and ``on_error(item, exc) -> line`` (which
    then records the failure itself) adapt it to other work lists (the benchmark's rows). One failing item
    never costs the others; lines are printed as ``[name] line`` on stderr."""
    import sys

    from tqdm.auto import tqdm

    files = out is not None and is_done is None
    done_fn = is_done or (lambda it: (out / it.out_name).exists())
    tally = Tally()
    todo = []
    for it in shard(items, ctx.rank, ctx.world):
        if files:
            clean_stale(out, it.out_name)
            clean_stale(out / "records", f"{it.out_name}.json")
        if getattr(it, "error", None) is not None:
            tally.failed += 1
            tally.failures.append(it.error)
            print(f"[{name}] FAILED {it.error}", file=sys.stderr)
        elif not overwrite and done_fn(it):
            tally.skipped += 1
        else:
            todo.append(it)
    bar = tqdm(todo, desc=f"{name}{f' [rank {ctx.rank}/{ctx.world}]' if ctx.world > 1 else ''}", unit=unit,
               disable=not progress, position=ctx.rank if ctx.world > 1 else None, file=sys.stderr)
    for it in bar:
        try:
            result = work(it)
            tally.done += 1
            if report is not None:
                tqdm.write(f"[{name}] {report(it, result)}", file=sys.stderr)
        except Exception as e:  # one bad item must not cost the others; a full disk stops the job
            from ..io_utils import disk_full_error, is_disk_full

            if is_disk_full(e):
                bar.close()
                raise (e if getattr(e, "filename", None) else disk_full_error(out or "the outputs", e)) from None
            tally.failed += 1
            if on_error is not None:
                line = on_error(it, e)
                tally.failures.append(line)
            else:
                line = _default_error(it, e)
                it.error = line
                tally.failures.append(line)
                if out is not None:
                    write_record(out, it.out_name, {"input": str(it.path), "output": it.out_name, "status": "failed",
                                                    "error": line})
                line = f"FAILED {line}"
            tqdm.write(f"[{name}] {line}", file=sys.stderr)
    bar.close()
    return tally


def check_distinct_outputs(items: list, out: Path | None = None) -> None:
    """Two inputs that would write the same output are refused before anything is written."""
    seen = {}
    for it in items:
        if it.out_name in seen:
            fail("INPUT", "inputs with distinct output names",
                 f"{seen[it.out_name]} and {it.path} would both write {out / it.out_name if out else it.out_name}")
        seen[it.out_name] = it.path


def finish(items: list, tally: Tally, ctx: DistContext, out: Path, write_index: Callable, *, name: str, verb: str,
           barrier: Callable | None = None) -> int:
    """The end of a file job: wait for every rank, rank 0 writes the merged index (``write_index() -> index``)
    and prints the summary, the process group is closed, failures are listed on stderr. Returns the exit code
    (0 all done, 1 some inputs failed)."""
    import sys

    (barrier or ctx.barrier)()
    if ctx.is_main:
        c = write_index()["counts"]
        print(f"[{name}] {c['done']} of {len(items)} inputs {verb} in {out} ({tally.skipped} already done on this "
              f"rank), {c['failed']} failed; index: {out / 'index.json'}")
    ctx.close()
    if tally.failures:
        print(f"invdiff {name}: error: {len(tally.failures)} input(s) failed:\n  " + "\n  ".join(tally.failures),
              file=sys.stderr)
        return 1
    return 0

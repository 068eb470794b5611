"""Batch jobs: the machinery shared by ``invdiff reconstruct``, ``invdiff bench`` and ``invdiff train-prior``.

The process-group context
    :class:`DistContext` is this process's place in a run (rank ``rank`` of ``world``). :func:`join` joins the
    group torchrun started (``WORLD_SIZE``/``RANK`` in the environment; a single process otherwise),
    :func:`current` reads an already initialised default group (training initialises it itself, with its
    own backend). ``ctx.barrier()``, ``ctx.on_main(fn)`` (rank 0 computes, every rank receives, an error on
    rank 0 is raised on every rank) and ``ctx.close()`` (destroys the group only if :func:`join` created it).
"""
from __future__ import annotations

import datetime
import os
from typing import Callable, NamedTuple

from ._validate import fail


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

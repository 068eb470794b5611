"""Wall time and peak memory of a call.

``peak_mb`` is the memory the call needed at its peak, counted from zero (not from the level at entry):

- CPU: the peak resident set size of the process during the call (MiB), i.e. everything resident at that moment
  (interpreter, torch, prior weights, the solver's tensors). On Linux the kernel's own high-water mark is used:
  ``VmHWM`` of ``/proc/self/status``, reset to the current RSS at entry through ``/proc/self/clear_refs``, so no
  short-lived peak is missed. Where that reset is not permitted, a background thread samples ``VmRSS`` every
  2 ms; without ``/proc`` the figure is None rather than guessed.
- CUDA: ``torch.cuda.max_memory_allocated`` during the call (tensors alive at entry included); the process RSS
  peak is kept in ``rss_peak_mb``.

``growth_mb`` is the peak minus the level at entry: what the call added. It is often near 0 on CPU because the
allocator reuses memory freed by earlier calls, which is why it is not the headline figure (issue 16: a 4 MiB
"peak" for a ~1 GiB process).

Nested measurements are supported: resetting the kernel's mark first folds the mark reached so far into every
enclosing measurement.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_ACTIVE: list["PeakMemory"] = []          # open CPU measurements (innermost last)
_LOCK = threading.Lock()


def _rss_bytes() -> int | None:
    """Current resident set size of this process (bytes), or None without /proc."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return None


def _hwm_bytes() -> int | None:
    """The kernel's peak resident set size of this process since the last reset (``VmHWM``), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_hwm() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0, ``echo 5 > /proc/self/clear_refs``); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Context manager: ``.peak_mb`` = peak memory during the block (MiB; process RSS on CPU, torch's allocated
    memory on CUDA), ``.growth_mb`` = that peak minus the level at entry, ``.rss_peak_mb`` = peak process RSS."""

    def __init__(self, device: str | torch.device = "cpu", interval: float = 0.002):
        self.device = torch.device(device)
        self.interval = interval
        self.peak_mb: float | None = None
        self.growth_mb: float | None = None
        self.rss_peak_mb: float | None = None
        self._thread = None

    # -- CPU: kernel high-water mark, or sampling ------------------------------------------------------
    def _start_rss(self):
        self._base = _rss_bytes()
        self._peak = self._base
        self._stop = threading.Event()
        if self._base is None:
            return
        with _LOCK:
            hwm = _hwm_bytes()
            for outer in _ACTIVE:                         # keep what enclosing measurements have seen so far
                if outer._peak is not None and hwm is not None:
                    outer._peak = max(outer._peak, hwm)
            self._kernel = hwm is not None and _reset_hwm()
            _ACTIVE.append(self)
        if not self._kernel:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()

    def _poll(self):
        while not self._stop.is_set():
            r = _rss_bytes()
            if r is not None and r > self._peak:
                self._peak = r
            time.sleep(self.interval)

    def _stop_rss(self):
        if self._base is None:
            return None
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with _LOCK:
            if self._kernel:
                self._peak = max(self._peak, _hwm_bytes() or 0)
            if self in _ACTIVE:
                _ACTIVE.remove(self)
        self._peak = max(self._peak, _rss_bytes() or 0)
        return self._peak

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._cuda_base = torch.cuda.memory_allocated(self.device)
        self._start_rss()
        return self

    def __exit__(self, *exc):
        rss_peak = self._stop_rss()
        if rss_peak is not None:
            self.rss_peak_mb = rss_peak / 2**20
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            self.peak_mb = peak / 2**20
            self.growth_mb = (peak - self._cuda_base) / 2**20
        elif rss_peak is not None:
            self.peak_mb = self.rss_peak_mb
            self.growth_mb = (rss_peak - self._base) / 2**20
        return False


@dataclass
class Measured:
    value: object
    seconds: float
    peak_mb: float | None              # peak memory during the call (see PeakMemory), MiB
    growth_mb: float | None = None     # peak minus the level at entry, MiB


def measure(fn, *args, device="cpu", **kwargs) -> Measured:
    """Run ``fn(*args, **kwargs)`` and return its value with wall time, peak memory and peak growth."""
    with PeakMemory(device) as pm:
        t0 = time.perf_counter()
        value = fn(*args, **kwargs)
        seconds = time.perf_counter() - t0
    return Measured(value, seconds, pm.peak_mb, pm.growth_mb)

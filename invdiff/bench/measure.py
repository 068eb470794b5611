"""Wall time and peak memory of a call.

CPU: peak resident set size above the level at entry, sampled from ``/proc/self/statm`` every 2 ms by a
background thread (torch's CPU allocator is invisible to tracemalloc). CUDA: ``torch.cuda.max_memory_allocated``.
On systems without ``/proc`` the CPU figure is reported as None rather than guessed.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return None


class PeakMemory:
    """Context manager: ``.peak_mb`` = peak memory growth (MiB) during the block."""

    def __init__(self, device: str | torch.device = "cpu", interval: float = 0.002):
        self.device = torch.device(device)
        self.interval = interval
        self.peak_mb: float | None = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        self._base = _rss_bytes()
        self._peak = self._base
        self._stop = threading.Event()
        if self._base is not None:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            r = _rss_bytes()
            if r is not None and r > self._peak:
                self._peak = r
            time.sleep(self.interval)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
            return False
        if self._base is None:
            return False
        self._stop.set()
        self._thread.join()
        r = _rss_bytes()
        self._peak = max(self._peak, r or 0)
        self.peak_mb = (self._peak - self._base) / 2**20
        return False


@dataclass
class Measured:
    value: object
    seconds: float
    peak_mb: float | None


def measure(fn, *args, device="cpu", **kwargs) -> Measured:
    """Run ``fn(*args, **kwargs)`` and return its value with wall time and peak memory growth."""
    with PeakMemory(device) as pm:
        t0 = time.perf_counter()
        value = fn(*args, **kwargs)
        seconds = time.perf_counter() - t0
    return Measured(value, seconds, pm.peak_mb)

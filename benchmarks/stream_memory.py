"""Peak memory of streamed fastMRI training data vs the number of files (issue 11: bounded memory).

For each file count, a fresh process writes that many synthetic multi-coil fastMRI files
(``invdiff.datasets.write_synthetic_dataset``: 15 coils, 128 x 96 k-space, 8 slices, 96 x 96 crop) and then
(in a fresh process, after a separate one wrote the files) reads ``--steps`` batches of 8 random 64 x 64 patches with coordinates through
``invdiff.training.stream_batches`` with 2 DataLoader workers (the train-prior data path). Peak RSS is the kernel
high-water mark of the main process and of the (reaped) worker processes (``getrusage``); the data on disk grows
with the file count, the memory should not.

Usage: python benchmarks/stream_memory.py [--files 6 24 48] [--steps 30] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, resource, sys, time, torch
from pathlib import Path
from invdiff.datasets import write_synthetic_dataset
from invdiff.training import PatchSource, stream_batches
from invdiff.training.files import FileSliceSource
torch.set_num_threads(1)
n, steps, folder, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
if mode == "write":
    write_synthetic_dataset(folder, n, n_slices=8, coils=15, shape=(128, 96), recon_size=(96, 96), noise=0.01)
    sys.exit(0)
disk = sum(p.stat().st_size for p in Path(folder).glob("*.h5"))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
src = PatchSource(FileSliceSource("fastmri", folder, size=96), 64, positional=True)
t0 = time.time()
for b in stream_batches(src, 0, steps, 8, 0, 8, workers=2):
    assert b["x0"].shape == (8, 2, 64, 64)
sec = time.time() - t0
print(json.dumps({"files": n, "slices": len(src.base), "disk_mb": disk / 2**20, "steps": steps,
                  "main_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "main_before_mb": base / 1024,
                  "worker_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                  "seconds_per_batch": sec / steps}))
"""


def main(argv=None):
    from invdiff.bench import write_results

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, nargs="+", default=[6, 24, 48])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args(argv)
    rows = []
    for n in a.files:
        with tempfile.TemporaryDirectory() as d:
            subprocess.run([sys.executable, "-c", CHILD, str(n), str(a.steps), d, "write"], check=True)
            out = subprocess.run([sys.executable, "-c", CHILD, str(n), str(a.steps), d, "read"], capture_output=True,
                                 text=True, check=True)   # a fresh process: only the reading is measured
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    write_results(a.out, "stream_memory", rows, ["files", "slices", "disk_mb", "steps", "main_before_mb",
                                                 "main_peak_mb", "worker_peak_mb", "seconds_per_batch"],
                  title="Streamed fastMRI training data: peak memory vs number of files",
                  notes=__doc__.split("\n\n", 1)[1].rsplit("Usage:", 1)[0])


if __name__ == "__main__":
    main()

"""Reference outputs of dds and red-diff from main's code before the speed work, for ``tests/test_speed.py``.

Run with that code first on the path: ``python benchmarks/tools/speed_reference.py OUT.safetensors``. The options
its defaults resolved to are pinned in the test (``PINNED``).
"""
import sys
import warnings

import torch

import invdiff
from invdiff.bench.tasks import get_task
from invdiff.priors import load

torch.set_num_threads(1)
warnings.simplefilter("ignore")
out = {}
for task_name in ["ct-8view", "mri-4x-multicoil"]:
    t = get_task(task_name)
    x = t.images([0])
    p = t.physics(rng=torch.Generator().manual_seed(0))
    y = p(x)
    prior = load(t.prior)
    for solver in ["dds", "red-diff"]:
        rec = invdiff.solve(y, p, prior, solver, seed=0, n_samples=2, num_steps=4)
        out[f"{task_name}/{solver}"] = rec.samples.clone()
from safetensors.torch import save_file  # noqa: E402

save_file({k: v.contiguous() for k, v in out.items()}, sys.argv[1])
print({k: tuple(v.shape) for k, v in out.items()})

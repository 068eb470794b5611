r"""Sampler overhead: time outside the network per diffusion sampler (issue 14 item 2).

For each sampler and task, one run with timers around the prior's network: ``net_s`` is the time inside the
network forward (and, for samplers that differentiate through it, the network's part of the backward pass,
measured by two autograd hooks around the network call), ``total_s`` the whole ``invdiff.solve`` call. The ratio
``total / net`` is the issue's "total <= 1.25 x NFE x network time" criterion (1.25 = 20 % outside the network).

``before`` columns are measured on another checkout of the code (``--before PATH``: a directory holding an
``invdiff`` package, e.g. ``git archive main invdiff | tar -x -C DIR``), each (sampler, task) right after the
``after`` measurement in the same process pair, so both see the same machine state. 1 torch thread everywhere.

    python benchmarks/overhead.py --before ../invdiff-main-checkout --out benchmarks/results/overhead
    python benchmarks/overhead.py --device cuda --size 64 --out benchmarks/results/overhead_gpu   # benchmarks/gpu.sh
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

#: (solver, task, options): 50 steps (20 for the volume solvers), fewer than most defaults: one-off set-up work (A^T y,
#: a least-squares start) is spread over no more steps than at the defaults, so ratios at the defaults are the same
#: or lower;
#: tuned per-task options come from the task itself
CASES = [
    ("dds", "ct-8view", {"num_steps": 50}),
    ("dds", "mri-4x-multicoil", {"num_steps": 50}),
    ("red-diff", "ct-8view", {"num_steps": 50}),
    ("red-diff", "mri-4x-multicoil", {"num_steps": 50}),
    ("dps", "ct-8view", {"num_steps": 50}),
    ("dps", "mri-4x-multicoil", {"num_steps": 50}),
    ("diffpir", "ct-8view", {"num_steps": 50}),
    ("diffpir", "mri-4x-multicoil", {"num_steps": 50}),
    ("ddrm", "mri-4x-singlecoil", {"num_steps": 50}),     # DDRM needs an SVD operator: single-coil MRI instead
    ("smc", "ct-8view", {"num_steps": 50, "n_samples": 4}),
    ("smc", "mri-4x-multicoil", {"num_steps": 50, "n_samples": 4}),
    ("mcgdiff", "mri-4x-singlecoil", {"num_steps": 50, "n_samples": 4}),  # needs an SVD-able operator
    ("dds3d", "ct3d-8view", {"num_steps": 20, "depth": 4}),
    ("dds3d", "mri3d-4x", {"num_steps": 20, "depth": 4}),
    ("diffusion-mbir", "ct3d-8view", {"num_steps": 20, "depth": 4}),
    ("diffusion-mbir", "mri3d-4x", {"num_steps": 20, "depth": 4}),
    ("ads", "mri-full-multicoil", {"num_steps": 50, "acceleration": 4, "particles": 8}),  # ADS picks the 4x mask
    ("ads", "ct-full-90view", {"num_steps": 50, "acceleration": 11.25, "particles": 8}),   # 8 of 90 views
    ("diffpir", "ct-8view", {"num_steps": 50, "prox": "cg"}),            # the CG fallback instead of the exact prox
    ("diffpir", "mri-4x-multicoil", {"num_steps": 50, "prox": "cg"}),
    ("dds", "ct-8view", {"num_steps": 50, "n_samples": 4}),
    ("red-diff", "mri-4x-multicoil", {"num_steps": 50, "n_samples": 4}),
    # conditional-dc needs a conditional prior: the shipped MRI one (no CT conditional prior is shipped)
    ("conditional-dc", "mri-4x-multicoil", {"num_steps": 50, "prior": "mri-brainphantom-64-cond"}),
    ("conditional-dc", "mri-4x-singlecoil", {"num_steps": 50, "prior": "mri-brainphantom-64-cond"}),
]

#: realistic sizes for a GPU (benchmarks/gpu.sh): 320x320 MRI with 15 coils (4x equispaced), 512x512 CT with 180
#: views; the 64x64-trained priors run on them for timing only (their quality there is not a claim)
CASES_REAL = [(s, t, {"num_steps": 10}) for t in ("mri-320-15coil", "ct-512-180view")
              for s in ("dds", "red-diff", "dps", "diffpir")] + \
             [("smc", t, {"num_steps": 10, "n_samples": 4}) for t in ("mri-320-15coil", "ct-512-180view")]

# --------------------------------------------------------------------------------------------------------------
# the measurement (runs in a child process whose PYTHONPATH selects the code version)
# --------------------------------------------------------------------------------------------------------------
CHILD = r'''
import json, sys, time, warnings
import torch
torch.set_num_threads(1)
warnings.simplefilter("ignore")
import invdiff
from invdiff.bench.tasks import get_task
from invdiff.priors import load
from invdiff.priors.lift import lift

solver, task_name, opts, device, size, precision = json.loads(sys.argv[1])
opts = dict(opts)
depth = opts.pop("depth", 4)
n_samples = opts.pop("n_samples", 1)
prior_name = opts.pop("prior", None)            # a case's own prior (conditional-dc), else the task's
sync = (lambda: torch.cuda.synchronize()) if device.startswith("cuda") else (lambda: None)
state = {"net": 0.0, "t_bwd": None, "forward": 0, "backward": 0}


class _Marker(torch.autograd.Function):         # identity whose backward marks a moment of the network's backward
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)


class _BwdEnd(_Marker):                          # on the network input: its backward ends the network's backward
    @staticmethod
    def backward(ctx, g):
        sync()
        if state["t_bwd"] is not None:
            state["net"] += time.perf_counter() - state["t_bwd"]
            state["t_bwd"] = None
            state["backward"] += 1
        return g


class _BwdStart(_Marker):                        # on the network output: its backward starts the network's backward
    @staticmethod
    def backward(ctx, g):
        sync()
        state["t_bwd"] = time.perf_counter()
        return g


class TimedNet(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, *args):
        grad = torch.is_grad_enabled() and x.requires_grad
        if grad:
            x = _BwdEnd.apply(x)
        sync()
        t0 = time.perf_counter()
        out = self.net(x, *args)
        sync()
        state["net"] += time.perf_counter() - t0
        state["forward"] += 1
        return _BwdStart.apply(out) if grad and out.requires_grad else out


if task_name == "mri-320-15coil":
    from invdiff.datasets import mri_phantoms, split_seeds
    from invdiff.operators import MultiCoilMRI, birdcage_maps, make_mask
    task = get_task("mri-4x-multicoil")
    x = mri_phantoms(split_seeds("heldout", 1), 320)
    phys = MultiCoilMRI(make_mask("equispaced", (320, 320), 4, seed=0), birdcage_maps(15, (320, 320)),
                        img_size=(2, 320, 320), sigma=0.01)
elif task_name == "ct-512-180view":
    from invdiff.datasets import ct_phantoms, split_seeds
    from invdiff.operators import CT
    task = get_task("ct-8view")
    x = ct_phantoms(split_seeds("heldout", 1), 512)
    phys = CT(512, n_views=180, sigma=0.01)
elif task_name in ("mri-full-multicoil", "ct-full-90view"):    # ADS: the fully sampled acquisition it selects from
    from invdiff.operators import CT, MultiCoilMRI, birdcage_maps
    task = get_task("mri-4x-multicoil" if task_name.startswith("mri") else "ct-8view")
    x = task.images([0], size=size)
    phys = (MultiCoilMRI(torch.ones(size, size), birdcage_maps(8, (size, size)), img_size=(2, size, size), sigma=0.01)
            if task_name.startswith("mri") else CT(size, n_views=90, sigma=0.01))
else:
    task = get_task(task_name)
    x = task.images([0], size=size, depth=depth)
    phys = task.physics(size=size, depth=depth, sigma=0.01, rng=torch.Generator().manual_seed(0))
with torch.no_grad():
    y = phys(x)
x = x.to(device)
if device != "cpu":
    y, phys = y.to(device), phys.to(device)
prior = load(prior_name or task.prior, device=device, **({"precision": precision} if precision != "fp32" else {}))
prior.net = TimedNet(prior.net)
if device.startswith("cuda"):
    torch.cuda.reset_peak_memory_stats()
if task.dims == 3:
    prior = lift(prior, chunk=8)
options = {**task.solver_options.get(solver, {}), **opts}
invdiff.solve(y, phys, prior, solver, seed=0, n_samples=n_samples, **dict(options, num_steps=2))  # warm-up
state.update(net=0.0, forward=0, backward=0)
sync()
t0 = time.perf_counter()
rec = invdiff.solve(y, phys, prior, solver, seed=0, n_samples=n_samples, **options)
sync()
total = time.perf_counter() - t0
from invdiff.metrics import psnr
print("RESULT" + json.dumps({"total_s": total, "net_s": state["net"], "net_forward": state["forward"],
                             "net_backward": state["backward"], "nfe": rec.nfe,
                             "peak_gpu_mb": (torch.cuda.max_memory_allocated() / 2**20
                                             if device.startswith("cuda") else None),
                             "psnr": float(psnr(rec.mean.cpu(), x.cpu(), data_range=1.0,
                                                complex=task.data == "mri").mean())}))
'''


def measure(code_dir: str, solver: str, task: str, opts: dict, device: str, size: int, precision: str) -> dict:
    env = dict(os.environ, PYTHONPATH=code_dir, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    # cwd = the code's own folder: "python -c" puts the working directory first on sys.path, ahead of PYTHONPATH
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps([solver, task, opts, device, size, precision])],
                         env=env, capture_output=True, text=True, cwd=code_dir)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT"):
            r = json.loads(line[6:])
            r["ratio"] = r["total_s"] / max(r["net_s"], 1e-12)
            return r
    return {"error": (out.stderr.strip().splitlines() or ["no output"])[-1][:200]}


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        try:
            return subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                   "--format=csv,noheader"],
                                  capture_output=True, text=True).stdout.strip()
        except OSError:
            return "cuda (nvidia-smi not found)"
    return f"{platform.processor() or platform.machine()} CPU, 1 torch thread"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", default=None, help="directory holding the 'before' invdiff package")
    ap.add_argument("--before-label", default="the code at main before the speed work (separate checkout, same run)",
                    help="what the 'before' checkout is, for the table")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--only", default=None, help="comma-separated solvers")
    ap.add_argument("--realistic", action="store_true", help="320x320 15-coil MRI and 512x512 CT (for a GPU)")
    ap.add_argument("--out", default="benchmarks/results/overhead")
    ap.add_argument("--update", action="store_true",
                    help="keep the other rows of an existing OUT.json (rows measured now replace theirs)")
    args = ap.parse_args(argv)
    here = str(Path(__file__).resolve().parents[1])
    rows = []
    for solver, task, opts in (CASES_REAL if args.realistic else CASES):
        if args.only and solver not in args.only.split(","):
            continue
        row = {"solver": solver, "task": task, **{k: v for k, v in opts.items()}}
        row["after"] = measure(here, solver, task, opts, args.device, args.size, args.precision)
        if args.before:
            row["before"] = measure(args.before, solver, task, opts, args.device, args.size, "fp32")
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = {"device": device_name(args.device), "size": "realistic" if args.realistic else args.size,
            "precision": args.precision,
            "torch_threads": 1, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "before": args.before_label if args.before else None}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.update and out.with_suffix(".json").is_file():
        old = json.loads(out.with_suffix(".json").read_text())
        def key(r):
            return json.dumps({k: v for k, v in r.items() if k not in ("after", "before")}, sort_keys=True)

        new_keys = {key(r) for r in rows}
        order = [json.dumps(list(c[:2]) + [c[2]], sort_keys=True) for c in CASES + CASES_REAL]
        merged = [r for r in old["rows"] if key(r) not in new_keys] + rows
        rows = sorted(merged, key=lambda r: order.index(json.dumps([r["solver"], r["task"], {
            k: v for k, v in r.items() if k not in ("solver", "task", "after", "before")}], sort_keys=True))
            if json.dumps([r["solver"], r["task"], {k: v for k, v in r.items() if k not in (
                "solver", "task", "after", "before")}], sort_keys=True) in order else len(order))
        meta["date"] = f"{old['meta']['date']}, rows updated {meta['date']}"
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    out.with_suffix(".md").write_text(table(meta, rows))


NOTES = """What changed (issue 14 item 2). First round: DDS, z-TV (dds3d) and ADS compute A^T y once per solve (per
acquisition for ADS) instead of every step; every CG normal operator goes through `normal_op`, which uses the
operator's fused `A_adjoint_A` (multi-coil MRI: shifted coil maps and mask cached); DiffPIR's noise schedule is
computed in one vectorised pass instead of deepinv's 1000-step Python loop (twice per solve); CG no longer reads a
flag back from the device every iteration. Chains and particles run batched through operators and network (one
call per step for all, `chains` column). Second round (this table's `after`): DiffPIR solves its data step (Eq. 13)
exactly where the operator offers it (`prox="auto"`, the default; `invdiff.solvers.primitives.prox_l2`):
sparse-view CT by the Woodbury identity on the eigendecomposition of A A^T (728 x 728 at 64 px / 8 views, computed
once per geometry, then one A and one A^T per step; used up to 1536 measurements), 4x multi-coil MRI by one
eigendecomposition per image line (with a line mask A^H A is block diagonal, 64 blocks of 64 x 64; two batched
products per step), instead of 10 warm-started CG steps (`diffpir_cg.md`: exact 28.68 dB on CT = deepinv's
50-step prox, 10 CG steps 28.69; MRI 28.45 vs 28.37). The multi-coil normal operator runs 1D FFTs only when the mask
is a line mask (the FFT along the fully sampled axis cancels in A^H A: half the FFT work, float32 round-off of the
2D form), and ADS's CG on the acquired columns now uses it through the masked operator (before: `A_adjoint(A(x))`
of the full 8-coil operator times a measurement mask). The `prox="cg"` rows (a new option: "error" before) are
DiffPIR's CG fallback (other operators), 10 steps.

Where the rest goes: DDS and SMC on MRI in their CG steps (6 normal operators per step, each 8 coils of 1D FFT
pairs); ADS in its per-particle CG and in scoring every candidate at its acquisition steps; DiffPIR in its exact
prox (about 1 ms per step on MRI, 0.5 ms on CT, next to a 16-35 ms network call of the small shipped prior, the
range being the load of the shared machine). PSNR columns are one image at 50 steps (not a quality claim). Where
before and after PSNR differ: DiffPIR (exact prox instead of 10 CG steps), ADS (it differs run to run in main's
code too), and DPS on CT: the CT operator norm now comes from a power iteration with its own seeded generator;
main's started from the global random stream and stopped at deepinv's 1e-3 tolerance, so its value moved by ~1e-7
relative with whatever had drawn random numbers before (22.280916 or 22.280918 in two scripts), and DPS amplifies
such round-off differences."""


def _fmt(r: dict | None, key: str, f: str) -> str:
    if not r:
        return "-"
    if "error" in r:
        return "error"
    return format(r[key], f)


def table(meta: dict, rows: list[dict]) -> str:
    size = meta['size'] if meta['size'] == 'realistic' else f"{meta['size']}x{meta['size']}"
    lines = [f"# Sampler overhead: total time / time inside the network ({size})", "",
             f"Device: {meta['device']}; network precision {meta['precision']}; {meta['date']}. "
             "Generated by `benchmarks/overhead.py`. Goal: ratio <= 1.25 (<= 20 % of the time outside the network). "
             "Network time = forward calls, plus the network's share of the backward pass for samplers that "
             "differentiate through it (DPS). Timings on a shared machine: ratios are more stable than seconds.", ""]
    if meta.get("before"):
        lines += [f"`before`: {meta['before']}.", ""]
    lines += ["| solver | task | options | steps | chains | NFE | net s | total s | ratio | before: total s "
              "| before: ratio | PSNR | before: PSNR |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, b = r.get("after"), r.get("before")
        chains = r.get("n_samples", r.get("particles", 1))
        opts = ", ".join(f"{k}={v}" for k, v in r.items() if k not in ("solver", "task", "after", "before",
                                                                       "num_steps", "n_samples", "particles"))
        lines.append(f"| {r['solver']} | {r['task']} | {opts or '-'} | {r.get('num_steps')} | {chains} | "
                     f"{_fmt(a, 'nfe', 'd')} | {_fmt(a, 'net_s', '.2f')} | {_fmt(a, 'total_s', '.2f')} | "
                     f"{_fmt(a, 'ratio', '.2f')} | {_fmt(b, 'total_s', '.2f')} | {_fmt(b, 'ratio', '.2f')} | "
                     f"{_fmt(a, 'psnr', '.2f')} | {_fmt(b, 'psnr', '.2f')} |")
    def label(r):
        extra = ", ".join(f"{k}={v}" for k, v in r.items() if k not in ("solver", "task", "after", "before",
                                                                        "num_steps"))
        return f"{r['solver']} / {r['task']}" + (f" ({extra})" if extra else "")

    over = [f"{label(r)}: {r['after']['ratio']:.2f}" for r in rows
            if r.get("after") and "ratio" in r["after"] and r["after"]["ratio"] > 1.25]
    lines += ["", "Above 1.25 in this run: " + ("; ".join(over) if over else "none") + ".", "", NOTES]
    errs = [f"- {r['solver']} / {r['task']} ({k}): {r[k]['error']}" for r in rows for k in ("after", "before")
            if r.get(k) and "error" in r[k]]
    if errs:
        lines += ["", "Errors:"] + errs
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

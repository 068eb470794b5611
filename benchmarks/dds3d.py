"""DDS with 3D augmentation (z-TV ADMM) vs slice-independent DDS on volumes; memory vs chunk size and depth.

Volumes (64 x 64 in-plane, D slices, isotropic voxels; never seen in training):
- CT: a random-ellipsoid slab (``invdiff.datasets.phantoms3d.ct_slab``), the 3D analogue of ``ct_phantoms`` (body,
  overlapping ellipsoids with additive intensities, bright inserts, smooth 3D texture, partial-volume blur), so
  every axial slice looks like a 2D training phantom while structures start and end along z; 8-view parallel-beam CT per slice
  (``CT3D``), noise 0.01; prior ``ct-phantom-64`` lifted slice by slice.
- MRI: a held-out brain phantom deformed smoothly along z (rotation, scaling, shift and a phase ramp that vary
  with z); multi-coil MRI with slice-wise 2D k-space (``MultiCoilMRI`` with a 4-entry img_size), 8 birdcage coils,
  the 4x equispaced mask of every slice, noise 0.01; prior ``mri-brainphantom-64`` lifted.

Methods (50 NFE for DDS): ``dds 2D per slice`` = 2D DDS on every slice separately (slices folded into the batch,
invdiff's defaults); ``dds lifted`` = ``solver="dds"`` on the volume with the lifted prior (same prior, one
whole-volume CG: no z coupling either); ``dds3d`` = z-TV ADMM per step (``solver="dds3d"``): with the released
code's (rho, lam) converted to invdiff's normalised operators (``ZTVADMM.preset(name, physics)``, see
``invdiff.solvers.ztv``), and with invdiff's default (the same with the lam factor the sweep below found,
``tuned=True``), Neumann and circular boundary; classical 3D TV and the
adjoint / FBP. With ``--mbir`` (``dds3d_mbir.*``): DiffusionMBIR at N = 150 and 300 steps (2 NFE each) vs DDS 3D
on the 8-slice tuning volume. Metrics: volume PSNR (peak 1, magnitude for MRI),
mean slice SSIM, and ``zgrad_err`` = ||D_z(x_hat - x)|| / ||D_z x|| (inter-slice consistency; lower is better);
``seconds`` is wall time, ``cpu_s`` the process CPU time (1 thread: the wall time of an idle machine), ``peak_mb``
the process's peak resident memory during the call (counted from zero: loaded priors included).

The z-TV preset is checked by a small sweep on a separate tuning volume (``dds3d_sweep.*``, 16 slices): rho and lam
times {0.25, 1, 4} and lam times {0, 16}, relative to the converted original preset. Memory (``dds3d_memory.*``): peak RSS growth of a fresh process solving 3 DDS-3D
steps, for D in {16, 32, 64} at chunk 8 and chunk in {4, 8, 16} at D = 32: ``prior_call_mb`` = one call of the
lifted network prior on the whole volume (network working memory + the output volume), ``solve_mb`` = 3 DDS-3D
steps, ``solve_no_network_mb`` = the same with a network-free stand-in prior (volume state + CT operator).

Usage: python benchmarks/dds3d.py [--depth 32] [--out benchmarks/results] [--mbir] [--quick] [--threads 1] [--smoke]
(the committed results were made with ``--mbir``; the default run leaves DiffusionMBIR out to stay under 15 min)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import invdiff
from invdiff.bench import measure
from invdiff.bench.harness import PinnedPriors, experiment_args, measured, start, write_experiment
from invdiff.datasets import mri_phantoms, split_seeds
from invdiff.datasets.phantoms3d import ct_slab as ct_volume
from invdiff.metrics import psnr, ssim
from invdiff.operators import CT3D, MultiCoilMRI, birdcage_maps, make_mask
from invdiff.priors import available, load
from invdiff.priors.base import Prior
from invdiff.priors.lift import lift
from invdiff.solvers.primitives import finite_diff
from invdiff.solvers.ztv import ZTVADMM, default_preset

N = 64
NOISE = 0.01
STEPS = 50
PRIORS = PinnedPriors()   # one version of each shipped prior per run, recorded in the tables' meta


# ------------------------------------------------------------------------------------------------
# volumes
# ------------------------------------------------------------------------------------------------
def mri_volume(seed: int, depth: int, size: int = N) -> torch.Tensor:
    """(1, 2, D, size, size): a held-out brain phantom rotated, scaled, shifted and phase-ramped smoothly along z."""
    img = mri_phantoms([seed], size)                                           # (1, 2, H, W)
    zs = torch.linspace(-1, 1, depth)
    th, sc, ty = 0.3 * zs, 1 + 0.18 * zs ** 2, 0.05 * zs
    theta = torch.zeros(depth, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = sc * torch.cos(th), -sc * torch.sin(th)
    theta[:, 1, 0], theta[:, 1, 1], theta[:, 1, 2] = sc * torch.sin(th), sc * torch.cos(th), ty
    grid = F.affine_grid(theta, (depth, 2, size, size), align_corners=False)
    sl = F.grid_sample(img.expand(depth, -1, -1, -1), grid, mode="bilinear", padding_mode="zeros",
                       align_corners=False)
    ph = torch.polar(torch.ones(depth), 0.8 * zs)
    z = torch.complex(sl[:, 0], sl[:, 1]) * ph[:, None, None]
    z = z / z.abs().max()
    return torch.stack([z.real, z.imag], 0)[None].float()                       # (1, 2, D, H, W)


def make_task(task: str, depth: int, seed: int):
    """(x, volume physics, 2D physics, fold(y) -> per-slice 2D measurements, prior name, complex?, tv lam)."""
    if task == "ct-8view":
        x = ct_volume(seed, depth)
        op = CT3D((1, depth, N, N), n_views=8, sigma=NOISE, rng=torch.Generator().manual_seed(seed))
        fold = lambda y: y.movedim(2, 1).reshape(depth, *y.shape[1:2], *y.shape[3:])  # noqa: E731
        return x, op, op.op2d, fold, "ct-phantom-64", False, 0.002
    x = mri_volume(seed, depth)
    mask, maps = make_mask("equispaced", (N, N), acceleration=4, seed=0), birdcage_maps(8, (N, N))
    op = MultiCoilMRI(mask, maps, img_size=(2, depth, N, N), sigma=NOISE, rng=torch.Generator().manual_seed(seed))
    op2 = MultiCoilMRI(mask, maps, img_size=(N, N), sigma=NOISE)   # same noise level: same DDS defaults as the volume
    fold = lambda y: y.permute(0, 3, 1, 2, 4, 5).reshape(depth, 2, y.shape[2], N, N)  # noqa: E731
    return x, op, op2, fold, "mri-brainphantom-64", True, 0.003


def unfold(x2: torch.Tensor) -> torch.Tensor:
    """(D, C, H, W) slices -> (1, C, D, H, W) volume."""
    return x2.movedim(0, 1)[None]


def vol_metrics(est, x, cplx) -> dict:
    D = x.shape[2]
    e2, x2 = est[0].movedim(1, 0), x[0].movedim(1, 0)
    dz = lambda v: finite_diff(v, 2)  # noqa: E731
    mag = (lambda v: v.pow(2).sum(1, keepdim=True).sqrt()) if cplx else (lambda v: v)
    return {"PSNR": float(psnr(est, x, data_range=1.0, complex=cplx)),
            "SSIM": float(ssim(e2, x2, data_range=1.0, complex=cplx).mean()),
            "zgrad_err": float((dz(mag(est)) - dz(mag(x))).norm() / dz(mag(x)).norm()), "D": D}


# ------------------------------------------------------------------------------------------------
# runs
# ------------------------------------------------------------------------------------------------
def run_methods(task, depth, seed, quick: bool) -> tuple[list[dict], dict]:
    x, op, op2, fold, prior_name, cplx, tv_lam = make_task(task, depth, seed)
    y = op(x)
    rows, recon = [], {"truth": x}
    prior2 = PRIORS(prior_name) if prior_name in available() else None

    def add(name, fn, *args, post=None, **kw):
        rec, cost = measured(fn, *args, **kw)
        est = rec if isinstance(rec, torch.Tensor) else rec.mean
        est = post(est) if post is not None else est
        info = {} if isinstance(rec, torch.Tensor) else rec.info
        row = {"task": task, "method": name, **vol_metrics(est, x, cplx),
               "nfe": getattr(rec, "nfe", 0), "network_calls": info.get("network_calls", getattr(rec, "nfe", 0)),
               "seconds": cost["seconds"], "cpu_s": cost["cpu_s"], "peak_mb": cost["peak_mb"]}
        for k in ("rho", "lam", "boundary"):
            if k in info:
                row[k] = info[k]
        rows.append(row)
        recon[name] = est
        print(row, file=sys.stderr)

    if task.startswith("ct"):
        add("fbp", lambda: op.fbp(y))
    else:
        add("adjoint (zero-filled)", lambda: op.A_adjoint(y))
    add("tv (3D, isotropic)", invdiff.solve, y, op, None, solver="tv", lam=tv_lam, n_iter=100 if quick else 300)
    if prior2 is None:
        print(f"[dds3d bench] prior {prior_name!r} not installed: classical rows only", file=sys.stderr)
        return rows, recon
    steps = 10 if quick else STEPS
    # all D slices as one batch of 2D images: one network call of D images per step
    add("dds 2D per slice", invdiff.solve, fold(y), op2, prior2, solver="dds", num_steps=steps, post=unfold)
    add("dds lifted (no z coupling)", invdiff.solve, y, op, lift(prior2, 8), solver="dds", num_steps=steps)
    orig = ZTVADMM.preset(default_preset(op), op)
    add("dds3d z-TV, converted original preset", invdiff.solve, y, op, lift(prior2, 8), solver="dds3d",
        num_steps=steps, rho=orig.rho, lam=orig.lam)
    add("dds3d z-TV (neumann)", invdiff.solve, y, op, lift(prior2, 8), solver="dds3d", num_steps=steps)
    add("dds3d z-TV (circular)", invdiff.solve, y, op, lift(prior2, 8), solver="dds3d", num_steps=steps,
        boundary="circular")
    return rows, recon


def mbir_check(task, depth, seed, steps_list) -> list[dict]:
    """DiffusionMBIR (2 NFE per step) at a few step counts vs DDS 3D (50 NFE) on a small volume."""
    x, op, _, _, prior_name, cplx, _ = make_task(task, depth, seed)
    if prior_name not in available():
        return []
    y = op(x)
    prior = lift(PRIORS(prior_name), 8)
    rows = []
    for solver, opts in [("dds3d", {"num_steps": STEPS})] + [("diffusion-mbir", {"num_steps": n}) for n in steps_list]:
        c0 = time.process_time()
        rec = invdiff.solve(y, op, prior, solver=solver, seed=0, **opts)
        rows.append({"task": task, "method": solver, "steps": opts["num_steps"], "nfe": rec.nfe,
                     **vol_metrics(rec.mean, x, cplx), "cpu_s": time.process_time() - c0})
        print(rows[-1], file=sys.stderr)
    return rows


def preset_sweep(task, depth, seed, quick) -> list[dict]:
    """DDS 3D with (rho, lam) = multiples of the *converted original* preset (``ZTVADMM.preset(name, physics)``)."""
    x, op, _, _, prior_name, cplx, _ = make_task(task, depth, seed)
    if prior_name not in available():
        return []
    y = op(x)
    prior = lift(PRIORS(prior_name), 8)
    name = default_preset(op)
    base = ZTVADMM.preset(name, op)
    grid = [(1, 1), (1, 0), (1, 0.25), (1, 4), (1, 16), (0.25, 1), (4, 1), (0.25, 0.25), (4, 4)]
    rows = []
    for rm, lm in grid[:3] if quick else grid:
        rec = invdiff.solve(y, op, prior, solver="dds3d", num_steps=STEPS, seed=0, rho=base.rho * rm, lam=base.lam * lm)
        rows.append({"task": task, "preset": name, "rho_x": rm, "lam_x": lm, "rho": base.rho * rm, "lam": base.lam * lm,
                     "threshold": base.lam * lm / (base.rho * rm), **vol_metrics(rec.mean, x, cplx)})
        print(rows[-1], file=sys.stderr)
    return rows


# ------------------------------------------------------------------------------------------------
# memory probes (fresh process each)
# ------------------------------------------------------------------------------------------------
class _Null2D(Prior):
    """Network-free stand-in: D(x, sigma) = x / (1 + sigma^2) (no activations), for the non-network footprint."""

    channels = 1

    def denoise(self, x, sigma):
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1, 1)
        return x / (1 + s ** 2)


PROBES = ("prior_call_mb", "solve_mb", "solve_no_network_mb")


def probe(depth: int, chunk: int, kind: str) -> dict:
    """Peak RSS growth (MiB) of one measurement, run in a fresh process (freed memory of an earlier measurement
    would hide the growth of a later one): ``prior_call_mb`` one call of the lifted network prior on the volume
    (network working memory + output volume), ``solve_mb`` 3 DDS-3D steps, ``solve_no_network_mb`` 3 steps with a
    network-free stand-in prior (volume state + CT operator)."""
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    x = ct_volume(7, depth)
    op = CT3D((1, depth, N, N), n_views=8, sigma=NOISE, rng=torch.Generator().manual_seed(0))
    y = op(x)
    p2 = _Null2D() if kind == "solve_no_network_mb" else load("ct-phantom-64")
    with torch.no_grad():                                     # warm-up on 2 slices: first-call allocations
        invdiff.solve(y[:, :, :2], CT3D((1, 2, N, N), n_views=8), lift(p2, 1), solver="dds3d", num_steps=1)
    if kind == "prior_call_mb":
        with torch.no_grad():
            return {"value": measure(lift(p2, chunk).denoise, x, 1.0).growth_mb}
    m = measure(invdiff.solve, y, op, lift(p2, chunk), solver="dds3d", num_steps=3)
    return {"value": m.growth_mb, "network_calls_per_step": m.value.info["network_calls"] // 3}


def memory_table(quick: bool) -> list[dict]:
    configs = [(16, 8), (32, 8), (64, 8), (32, 4), (32, 16)] if not quick else [(16, 8), (32, 4)]
    rows = []
    for depth, chunk in configs:
        row = {"D": depth, "chunk": chunk, "volume_mb": depth * N * N * 4 / 2 ** 20}
        for kind in PROBES:
            res = subprocess.run([sys.executable, __file__, "--probe", f"{depth},{chunk},{kind}"], capture_output=True,
                                 text=True, check=True)
            r = json.loads(res.stdout.strip().splitlines()[-1])
            row[kind] = r["value"]
            if "network_calls_per_step" in r:
                row["network_calls_per_step"] = r["network_calls_per_step"]
        rows.append(row)
        print(rows[-1], file=sys.stderr)
    return rows


# ------------------------------------------------------------------------------------------------
# figure
# ------------------------------------------------------------------------------------------------
def figure(recons: dict, out: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from invdiff.io_utils import atomic_path

    show = ["truth", "dds 2D per slice", "dds3d z-TV (neumann)"]
    tasks = list(recons)
    fig, axes = plt.subplots(len(tasks), len(show) + 1, figsize=(3.0 * (len(show) + 1), 2.9 * len(tasks)),
                             squeeze=False)
    for i, task in enumerate(tasks):
        R = recons[task]
        mag = {k: (v.pow(2).sum(1).sqrt() if v.shape[1] == 2 else v[:, 0])[0] for k, v in R.items() if k in show}
        D = mag["truth"].shape[0]
        row = N // 2
        for j, k in enumerate(show):
            ax = axes[i, j]
            if k in mag:
                ax.imshow(mag[k][:, row, :].numpy(), cmap="gray", vmin=0, vmax=float(mag["truth"].max()),
                          aspect="equal", origin="lower")
            ax.set_title(f"{task}: {k}\n(x-z plane at y = {row})", fontsize=8)
            ax.set_xlabel("x")
            ax.set_ylabel("z (slice)")
        ax = axes[i, -1]
        z = np.arange(D)
        for col, ls in ((N // 2, "-"), (N // 3, "--")):
            for k, c in zip(show, ("k", "tab:orange", "tab:blue")):
                if k in mag:
                    ax.plot(z, mag[k][:, row, col].numpy(), ls, color=c, lw=1.2 if k == "truth" else 1.0,
                            label=f"{k} (x={col})")
        ax.set_xlabel("slice z")
        ax.set_ylabel("intensity")
        ax.set_title(f"{task}: z-profiles", fontsize=8)
        ax.legend(fontsize=5)
    fig.tight_layout()
    with atomic_path(out / "dds3d_zprofile.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def run(a):
    warnings.filterwarnings("ignore", category=UserWarning)
    out = Path(a.out)
    t0, c0 = time.perf_counter(), time.process_time()
    depth = 8 if a.quick else a.depth
    rows, recons, sweep_rows, mbir_rows = [], {}, [], []
    for task in ("ct-8view", "mri-4x-8coil"):
        sweep_rows += preset_sweep(task, 8 if a.quick else 16, split_seeds("heldout", 1, start=200)[0], a.quick)
        r, rec = run_methods(task, depth, split_seeds("heldout", 1, start=300)[0], a.quick)
        rows += r
        recons[task] = rec
        if a.mbir:
            mbir_rows += mbir_check(task, 8, split_seeds("heldout", 1, start=200)[0], (20,) if a.quick else (150, 300))
    mem = memory_table(a.quick)
    notes = __doc__
    meta = {"depth": depth, "steps": STEPS, "noise": NOISE, "quick": a.quick, "seconds_total": time.perf_counter() - t0,
            "cpu_s_total": time.process_time() - c0, "priors_used": PRIORS.versions()}
    write_experiment(a, "dds3d", rows, ["task", "method", "D", "PSNR", "SSIM", "zgrad_err", "nfe", "network_calls",
                                       "rho", "lam", "boundary", "seconds", "cpu_s", "peak_mb"],
                  title="DDS 3D (z-TV ADMM) vs slice-independent DDS on volumes", notes=notes, meta=meta)
    write_experiment(a, "dds3d_sweep", sweep_rows, ["task", "preset", "rho_x", "lam_x", "rho", "lam", "threshold", "D",
                                                   "PSNR", "SSIM", "zgrad_err"],
                  title="z-TV preset check (DDS 3D, 50 NFE, tuning volume; x = multiples of the converted original "
                        "preset)", notes=notes, meta=meta)
    write_experiment(a, "dds3d_memory", mem, ["D", "chunk", "network_calls_per_step", "prior_call_mb", "solve_mb",
                                             "solve_no_network_mb", "volume_mb"],
                  title="DDS 3D peak memory vs depth and chunk (CT, 3 steps, fresh process)", notes=notes, meta=meta)
    if mbir_rows:
        write_experiment(a, "dds3d_mbir", mbir_rows, ["task", "method", "steps", "nfe", "D", "PSNR", "SSIM", "zgrad_err",
                                                      "cpu_s"],
                      title="DiffusionMBIR (VE PC + ADMM-TV) vs DDS 3D on an 8-slice volume", notes=notes, meta=meta)
    figure(recons, out)
    print(f"total {time.perf_counter() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    ap = experiment_args(__doc__)
    ap.add_argument("--depth", type=int, default=32, help="slices of the evaluation volumes")
    ap.add_argument("--mbir", action="store_true", help="also compare diffusion-mbir with DDS 3D on 8 slices")
    ap.add_argument("--quick", action="store_true", help="8 slices, 10 steps")
    ap.add_argument("--probe", help=argparse.SUPPRESS)
    args = start(ap.parse_args())
    if args.probe:
        d, c, kind = args.probe.split(",")
        print(json.dumps(probe(int(d), int(c), kind)))
    else:
        args.quick = args.quick or args.smoke
        run(args)

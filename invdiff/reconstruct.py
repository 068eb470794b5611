"""``invdiff reconstruct INPUT... --solver NAME --prior NAME --out DIR``: reconstruct files and folders.

Inputs (files, or folders searched recursively) and what is reconstructed:

  fastMRI .h5 (k-space)      MRI from the measured k-space, undersampled with fastMRI's own per-file mask (knee:
                             RandomMaskFunc, brain: EquispacedMaskFractionFunc, bit for bit; test files: their
                             own mask); multi-coil with ESPIRiT coil maps. Output: an h5
                             file of the same name with dataset 'reconstruction' (slices, h, w) cropped like the
                             target: the fastMRI submission format, scored by 'fastmri/evaluate.py'.
  .h5 with 'sinogram'        CT from the measured sinograms (attributes 'angles' in degrees, 'image_size').
                             Output: NAME.nii.gz.
  NIfTI .nii/.nii.gz,        a clean volume: measurements are simulated (--task, default ct: sparse-view
  DICOM folder (one series)  --views over --angle-range degrees), reconstructed slice by slice with the
                             input's geometry kept. Output: NAME.nii.gz with the input affine (+ a DICOM
                             series with --set write_dicom=true).
  .npy / .png images         a clean image (.npy (D, H, W) = a stack of slices): simulated --task
                             (default inpainting). Output: NAME.npy (+ NAME.png preview for .png inputs).

2D solvers take the slices of an input in batches (--set batch_slices=8); volume solvers (dds3d, diffusion-mbir)
take all slices as one volume under a slice-stack operator, with a 2D prior lifted slice by slice.
Images are scaled to [0, 1] for the prior (min-max; fastMRI and sinograms: by the zero-filled / FBP maximum)
and written back on the input's scale. When a ground truth exists (fastMRI targets; simulated tasks) each
output gets NMSE / PSNR / SSIM by the fastMRI volume protocol; OUT/index.json and OUT/metrics.{md,csv,json}
list every input with its metrics, NFE, seconds and peak memory (summary: mean +/- 2 std, as fastMRI prints).

Resumable: outputs appear atomically (temporary file + rename) only when complete; a re-run skips inputs whose
output exists (--overwrite redoes them). A failing input is reported and the others go on (exit code 1).
Scale-out: under torchrun (WORLD_SIZE/RANK), rank r takes inputs r::WORLD_SIZE of the sorted list, every rank
writes its own outputs, and rank 0 writes the merged index after a barrier (gloo).
Seeds (masks, noise, sampler) derive from --seed and each file's name, so sharding never changes results.

Config: --config FILE (JSON or key = value lines) and --set KEY=VALUE; solver options as
--set solver.OPTION=VALUE (e.g. --set solver.num_steps=20). Flags given explicitly win over both.
The resolved config is saved as OUT/config.json.

examples:
  invdiff reconstruct knee_val/ --solver dds --prior mri-brainphantom-64 --out recon/ --acceleration 8
  invdiff reconstruct ct.nii.gz --task ct --views 16 --solver tv --out recon/ --set solver.lam=0.002
  torchrun --nproc_per_node=4 -m invdiff.cli reconstruct data/ --solver dds --prior ct-phantom-64 --out recon/
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ._validate import check_choice, fail
from .datasets.fastmri import MASK_CHOICES
from .jobs import (DistContext, Item, barrier, check_solver_options, is_volume_solver, load_prior_checked,
                   prior_for_volumes, resolve_config, run_items)
from .jobs import join as dist_context

TASKS = ("auto", "mri", "ct", "inpainting", "deblur")

DEFAULTS = {
    "solver": None,              # a name from invdiff.solvers.available()
    "prior": None,               # a shipped prior name or a checkpoint path (needed by diffusion solvers)
    "task": "auto",              # auto | mri | ct | inpainting | deblur
    # MRI
    "mask": "auto",              # auto: fastMRI's own mask (knee fastmri-random, brain fastmri-equispaced-fraction)
    "acceleration": 4,
    "center_fraction": None,     # None: fastMRI's pairing (0.08 for < 8x, 0.04 for >= 8x)
    "coils": 0,                  # simulated MRI only: 0 = single coil, N = N birdcage coils
    "espirit_calib": 24,         # ESPIRiT calibration width (lines) and kernel width
    "espirit_kernel": 6,
    "espirit_cache": None,       # folder to cache ESPIRiT maps in (None: no cache)
    # CT
    "views": 32,
    "angle_range": 180.0,
    "image_size": None,          # sinogram inputs without an 'image_size' attribute (default: from detectors)
    "npy": "image",              # .npy inputs: image | sinogram
    # inpainting / deblurring (simulated)
    "inpaint": "random",         # random | box
    "keep": 0.3,                 # fraction of pixels observed (random)
    "box_frac": 0.4,             # side of the missing box (box)
    "blur_std": 2.0,
    "blur_size": 9,
    # common
    "noise": 0.01,               # measurement noise std on the [0, 1] image scale
    "batch_slices": 8,           # slices reconstructed together
    "n_samples": 1,              # posterior samples (their std is written next to the mean)
    "seed": 0,
    "threads": 1,
    "write_dicom": False,        # volumes: also write OUT/NAME_dicom/ (a DICOM series)
    "overwrite": False,
    "progress": True,
}

#: solver-function parameters that are not user options


# ------------------------------------------------------------------------------------------------
# inputs (discovery, shards, seeds, records and the loop: invdiff.jobs; file formats: invdiff.datasets.inputs)
# ------------------------------------------------------------------------------------------------
def discover(inputs, cfg) -> list[Item]:
    """Items from files and folders (recursively; a folder of DICOM files is one series)."""
    from .datasets.inputs import DESCRIPTION, classify_file, is_series_folder
    from .jobs import discover as discover_items

    return discover_items(inputs, lambda p, explicit: classify_file(p, npy=cfg["npy"], explicit=explicit),
                          folder=is_series_folder, what=DESCRIPTION)


def probe(item: Item, cfg) -> Item:
    """Classify an input and choose its task and output name; problems go to ``item.error``."""
    from .datasets.fastmri import DataFileError, inspect_fastmri
    from .datasets.inputs import output_name, probe_h5

    task = cfg["task"]
    try:
        if item.kind == "h5":
            item.kind = probe_h5(item.path)
            if item.kind == "fastmri":
                inspect_fastmri(item.path)
    except DataFileError as e:
        item.error = str(e)
    natural = {"fastmri": "mri", "sinogram": "ct", "volume": "ct", "image": "inpainting", "h5": None}[item.kind]
    item.task = natural if task == "auto" else task
    if item.error is None and item.kind in ("fastmri", "sinogram") and item.task != natural:
        item.error = f"{item.path}: {item.kind} data are reconstructed with --task {natural}, not {item.task}"
    item.out_name = output_name(item.kind, item.path)
    return item


# ------------------------------------------------------------------------------------------------
# reconstruction of one input
# ------------------------------------------------------------------------------------------------
def item_seed(cfg, name: str) -> int:
    from .jobs import item_seed as seed_of

    return seed_of(int(cfg["seed"]), name)


def _solve_chunks(n: int, cfg, build, prior, solver, options, seed: int):
    """Solve the n slices of an input: ``build(lo, hi, gen, volume) -> (y, physics)``; returns (means, stds, nfe)
    with means/stds ``(n, C, H, W)``.

    2D solvers: chunks of ``batch_slices`` slices in the batch axis. Volume solvers (``register(..., volume=True)``):
    the whole stack as one volume ``(1, C, n, H, W)`` under a volume operator (slice stack), with a 2D prior lifted
    slice by slice (``invdiff.priors.lift``, ``batch_slices`` slices per network call).
    """
    import invdiff

    if is_volume_solver(solver):
        gen = torch.Generator().manual_seed(seed)
        y, op = build(0, n, gen, True)
        rec = invdiff.solve(y, op, prior, solver=solver, seed=seed, n_samples=int(cfg["n_samples"]), progress=False,
                            **options)
        unvol = lambda t: None if t is None else t.detach()[0].movedim(1, 0)  # noqa: E731  (1,C,D,H,W)->(D,C,H,W)
        return unvol(rec.mean), unvol(rec.std), rec.nfe
    means, stds, nfe = [], [], 0
    B = max(1, int(cfg["batch_slices"]))
    for c, lo in enumerate(range(0, n, B)):
        hi = min(n, lo + B)
        gen = torch.Generator().manual_seed(seed + c)
        y, op = build(lo, hi, gen, False)
        rec = invdiff.solve(y, op, prior, solver=solver, seed=seed + c, n_samples=int(cfg["n_samples"]),
                            progress=False, **options)
        means.append(rec.mean.detach())
        stds.append(rec.std.detach() if rec.std is not None else None)
        nfe += rec.nfe
    std = torch.cat(stds) if all(s is not None for s in stds) else None
    return torch.cat(means), std, nfe


def _magnitude(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) -> (B, H, W): the magnitude for 2 channels (real, imag), else channel 0."""
    x = x.float()
    m = x.pow(2).sum(1).sqrt() if x.shape[1] == 2 else x[:, 0]
    return m.cpu().numpy()


def _run_fastmri(item: Item, cfg, prior, solver, options, seed):
    from .datasets.fastmri import (apply_mask, column_mask, default_mask_kind, kspace_to_tensor, read_fastmri,
                                   zero_filled)
    from .metrics import center_crop, fastmri_metrics
    from .operators import MRI, MultiCoilMRI, espirit_maps

    vol = read_fastmri(item.path)
    H, W = vol.info.shape
    cols = column_mask(vol.info, cfg["mask"], cfg["acceleration"], cfg["center_fraction"], file_mask=vol.mask)
    k = vol.kspace if vol.mask is not None else apply_mask(vol.kspace, cols.numpy())
    scale = float(zero_filled(k).max())
    if not scale > 0:
        fail("INPUT", "k-space with a non-zero measured part", f"{item.path} (all-zero measured k-space)")
    k = (k / scale).astype(np.complex64)
    mask2d = cols[None].expand(H, W).contiguous()

    def build(lo, hi, gen, volume):
        y = kspace_to_tensor(k[lo:hi]).movedim(0, 1).contiguous()            # (b, 2, [N], H, W)
        size = (2, hi - lo, H, W) if volume else (2, H, W)                    # volumes: slice-wise 2D FFTs
        sigma = float(cfg["noise"])
        if vol.info.challenge == "singlecoil":
            return (y.movedim(0, 1)[None] if volume else y), MRI(mask2d, img_size=size, sigma=sigma, rng=gen)
        maps = espirit_maps(y, calib_width=int(cfg["espirit_calib"]), kernel_width=int(cfg["espirit_kernel"]),
                            mask=mask2d, cache_dir=cfg["espirit_cache"])     # (b, N, H, W), one set per slice
        if volume:                                                            # (1, 2, N, D, H, W), maps (N, D, H, W)
            return y.permute(1, 2, 0, 3, 4)[None].contiguous(), MultiCoilMRI(mask2d, maps.movedim(0, 1), size,
                                                                              sigma=sigma, rng=gen)
        return y, MultiCoilMRI(mask2d, maps, img_size=size, sigma=sigma, rng=gen)

    mean, std, nfe = _solve_chunks(k.shape[0], cfg, build, prior, solver, options, seed)
    crop = vol.info.recon_size
    recon = center_crop(_magnitude(mean) * scale, crop).astype(np.float32)
    extra = {}
    if std is not None:
        extra["reconstruction_std"] = center_crop(_magnitude(std) * scale, crop).astype(np.float32)
    metrics = fastmri_metrics(recon, vol.target) if vol.target is not None else None
    realised = W / max(float(cols.sum()), 1.0)
    attrs = {"acquisition": vol.info.attrs.get("acquisition"), "patient_id": vol.info.attrs.get("patient_id"),
             "max": float(vol.target.max()) if vol.target is not None else None,
             "acceleration": vol.info.attrs.get("acceleration", cfg["acceleration"]),
             "realised_acceleration": realised, "mask": "file" if vol.mask is not None else
             (default_mask_kind(vol.info) if cfg["mask"] == "auto" else cfg["mask"]),
             "solver": solver, "prior": str(cfg["prior"]), "nfe": nfe, "challenge": vol.info.challenge}
    return recon, extra, metrics, {"nfe": nfe, "attrs": attrs, "shape": list(recon.shape)}


def _simulate_physics(task: str, cfg, H: int, W: int, name: str, gen: torch.Generator):
    """(physics, pad) for a simulated task on (H, W) slices; CT pads to a square (pad = (N, H, W))."""
    from .operators import (CT, MRI, Blur, Inpainting, MultiCoilMRI, birdcage_maps, box_mask, gaussian_kernel,
                            make_mask, random_mask, seed_for_file)

    sigma = float(cfg["noise"])
    if task == "ct":
        N = max(H, W)
        return CT(N, n_views=int(cfg["views"]), angle_range=float(cfg["angle_range"]), sigma=sigma, rng=gen), N
    if task == "mri":
        mask = make_mask("equispaced" if cfg["mask"] == "auto" else cfg["mask"], (H, W), cfg["acceleration"],
                         cfg["center_fraction"], seed=seed_for_file(name))
        if int(cfg["coils"]) > 0:
            return MultiCoilMRI(mask, birdcage_maps(int(cfg["coils"]), (H, W)), img_size=(2, H, W), sigma=sigma,
                                rng=gen), None
        return MRI(mask, img_size=(2, H, W), sigma=sigma, rng=gen), None
    if task == "inpainting":
        mgen = torch.Generator().manual_seed(seed_for_file(name))
        check_choice("inpaint", cfg["inpaint"], ("random", "box"))
        m = random_mask((H, W), keep=float(cfg["keep"]), generator=mgen) if cfg["inpaint"] == "random" \
            else box_mask((H, W), float(cfg["box_frac"]))
        return Inpainting((1, H, W), m, sigma=sigma, rng=gen), None
    k = gaussian_kernel(int(cfg["blur_size"]), float(cfg["blur_std"]))
    return Blur(k, (1, H, W), padding="circular", sigma=sigma, rng=gen), None


def _run_clean(item: Item, cfg, prior, solver, options, seed):
    """NIfTI/DICOM volumes and images: normalise to [0, 1], simulate the task, reconstruct, metrics vs the input."""
    from .datasets.volumes import crop_from_square, pad_to_square, read_image, read_volume
    from .metrics import fastmri_metrics
    from .operators import SliceWise

    affine = None
    if item.kind == "volume":
        vol = read_volume(item.path)
        data, affine = vol.data, vol.affine
    else:
        data = read_image(item.path)
    orig_shape = data.shape
    data3 = data[None] if data.ndim == 2 else data
    lo, hi = float(data3.min()), float(data3.max())
    if not hi > lo:
        fail("INPUT", "an image with some contrast", f"{item.path} (constant value {lo:g})")
    truth = ((data3 - lo) / (hi - lo)).astype(np.float32)
    D, H, W = truth.shape
    name = item.path.name

    def build(a, b, gen, volume):
        op, N = _simulate_physics(item.task, cfg, H, W, name, gen)
        x = torch.from_numpy(pad_to_square(truth[a:b], N) if N else truth[a:b])[:, None]
        if item.task == "mri":
            x = torch.cat([x, torch.zeros_like(x)], 1)
        if volume:                                                            # (1, C, D, H, W) under a slice stack
            op, x = SliceWise(op, b - a), x.movedim(0, 1)[None]
        with torch.no_grad():
            y = op(x)
        return y, op

    mean, std, nfe = _solve_chunks(D, cfg, build, prior, solver, options, seed)
    rec = _magnitude(mean) if item.task == "mri" else mean[:, 0].float().cpu().numpy()
    rec = crop_from_square(rec, (H, W)) if rec.shape[-2:] != (H, W) else rec
    metrics = fastmri_metrics(rec, truth, crop=False)
    out = (rec * (hi - lo) + lo).astype(np.float32).reshape(orig_shape)
    extra = {}
    if std is not None:
        s = _magnitude(std) if item.task == "mri" else std[:, 0].float().cpu().numpy()
        s = crop_from_square(s, (H, W)) if s.shape[-2:] != (H, W) else s
        extra["std"] = (s * (hi - lo)).astype(np.float32).reshape(orig_shape)
    return out, extra, metrics, {"nfe": nfe, "affine": affine, "shape": list(orig_shape)}


def _run_sinogram(item: Item, cfg, prior, solver, options, seed):
    from .datasets.volumes import ct_operator, read_sinogram
    from .operators import SliceWise

    s = read_sinogram(item.path, image_size=cfg["image_size"], angle_range=float(cfg["angle_range"]))
    y_all = torch.from_numpy(s.data)[:, None]                                  # (D, 1, n_det, n_views)
    probe_op = ct_operator(s.image_size, s.angles, normalize=True)
    if tuple(probe_op.y_shape[1:]) != tuple(s.data.shape[1:]):
        fail("INPUT", f"sinograms of shape (n_detectors, n_views) = {tuple(probe_op.y_shape[1:])} for image size "
                      f"{s.image_size}", f"{item.path} with sinograms {tuple(s.data.shape[1:])}")
    y_all = y_all / probe_op.operator_norm                                     # raw Radon -> normalised operator
    with torch.no_grad():
        scale = float(probe_op.fbp(y_all).max())
    if not scale > 0:
        fail("INPUT", "a sinogram with a positive filtered back-projection", str(item.path))
    y_all = y_all / scale

    def build(a, b, gen, volume):
        op = ct_operator(s.image_size, s.angles, sigma=float(cfg["noise"]), normalize=True, rng=gen)
        if volume:                                                            # (1, 1, D, n_det, n_views)
            return y_all[a:b].movedim(0, 1)[None], SliceWise(op, b - a)
        return y_all[a:b], op

    mean, std, nfe = _solve_chunks(y_all.shape[0], cfg, build, prior, solver, options, seed)
    out = (mean[:, 0].float().cpu().numpy() * scale).astype(np.float32)
    extra = {"std": (std[:, 0].float().cpu().numpy() * scale).astype(np.float32)} if std is not None else {}
    return out, extra, None, {"nfe": nfe, "affine": s.affine, "shape": list(out.shape)}


def _write_outputs(item: Item, out: Path, recon, extra, info, cfg):
    """Secondary files first, the primary output last (its existence marks the input as done)."""
    from .datasets.inputs import write_outputs

    write_outputs(item.kind, item.path, out / item.out_name, recon, extra, info, write_dicom=bool(cfg["write_dicom"]))


def reconstruct_item(item: Item, out: Path, cfg, prior, solver, options, rank: int = 0) -> dict:
    """Reconstruct one input, write its outputs; returns its record (also written to OUT/records/)."""
    from .bench.measure import PeakMemory
    from .jobs import write_record

    seed = item_seed(cfg, item.path.name)
    runner = {"fastmri": _run_fastmri, "sinogram": _run_sinogram}.get(item.kind, _run_clean)
    t0 = time.perf_counter()
    with PeakMemory() as pm:
        recon, extra, metrics, info = runner(item, cfg, prior, solver, options, seed)
    seconds = time.perf_counter() - t0
    rec = {"input": str(item.path), "output": item.out_name, "kind": item.kind, "task": item.task, "solver": solver,
           "prior": None if prior is None else str(cfg["prior"]), "status": "done", "nfe": info["nfe"],
           "seconds": round(seconds, 3), "peak_mb": None if pm.peak_mb is None else round(pm.peak_mb, 1),
           "shape": info["shape"], "seed": seed, "rank": rank, "metrics": metrics,
           "protocol": ("fastMRI (target)" if item.kind == "fastmri" else "vs normalised input") if metrics else None}
    write_record(out, item.out_name, rec)   # before the output: done == output exists
    _write_outputs(item, out, recon, extra, info, cfg)
    return rec


# ------------------------------------------------------------------------------------------------
# the merged index
# ------------------------------------------------------------------------------------------------
def write_index(out: Path, items: list[Item], cfg, options) -> dict:
    """Merge every input's record into OUT/index.json and OUT/metrics.{json,md,csv} (rank 0, after the barrier)."""
    from .bench.tables import write_results
    from .io_utils import atomic_write_json
    from .jobs import merge_records
    from .metrics import fastmri_summary

    records = merge_records(out, items)
    rows, summary = [], {}
    for rec in records:
        row = {k: rec.get(k) for k in ("output", "task", "solver", "status", "nfe", "seconds", "peak_mb")}
        row.update(rec.get("metrics") or {})
        rows.append(row)
    for proto in sorted({r.get("protocol") for r in records if r.get("metrics")}):
        per = [r["metrics"] for r in records if r.get("metrics") and r.get("protocol") == proto]
        summary[proto] = {k: {"mean": m, "two_std": s, "n": n} for k, (m, s, n) in fastmri_summary(per).items()}
    index = {"config": cfg, "solver_options": options, "records": records, "summary": summary,
             "counts": {s: sum(r.get("status") == s for r in records) for s in ("done", "failed", "missing")}}
    atomic_write_json(out / "index.json", index)
    notes = "Per input: metrics by the fastMRI volume protocol (NMSE, PSNR with data_range = target max, SSIM mean " \
            "over slices) against the fastMRI target or the normalised clean input; NFE, seconds, peak memory (MiB).\n\n"
    for proto, s in summary.items():
        notes += f"Summary ({proto}, n = {next(iter(s.values()))['n']}): " + ", ".join(
            f"{k} {v['mean']:.4g} +/- {v['two_std']:.2g} (2 std)" for k, v in s.items() if k != "MSE") + "\n\n"
    cols = ["output", "task", "solver", "status", "PSNR", "SSIM", "NMSE", "nfe", "seconds", "peak_mb"]
    write_results(out, "metrics", rows, cols, title="invdiff reconstruct", notes=notes, meta={"summary": summary})
    return index


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------
def _parser():
    p = argparse.ArgumentParser(prog="invdiff reconstruct", description=__doc__.replace("``", ""),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files or folders to reconstruct")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--solver", help="solver name (invdiff.solvers.available())")
    p.add_argument("--prior", help="shipped prior name (invdiff.priors.available()) or checkpoint path")
    p.add_argument("--task", help="one of " + ", ".join(TASKS) + " (default auto: from the file type)")
    p.add_argument("--acceleration", type=float, help="MRI acceleration (default 4)")
    p.add_argument("--mask", help="MRI mask: auto (default; fastMRI files: fastMRI's own, knee fastmri-random, brain "
                   "fastmri-equispaced-fraction; images: equispaced), " + ", ".join(MASK_CHOICES[1:]) + ", poisson")
    p.add_argument("--center-fraction", type=float, help="MRI fully sampled centre fraction")
    p.add_argument("--views", type=int, help="CT views (simulated sparse view, default 32)")
    p.add_argument("--angle-range", type=float, help="CT degrees covered by the views (limited angle < 180)")
    p.add_argument("--keep", type=float, help="inpainting: fraction of observed pixels")
    p.add_argument("--noise", type=float, help="measurement noise std on the [0, 1] scale (default 0.01)")
    p.add_argument("--seed", type=int, help="global seed (per-file seeds derive from it)")
    p.add_argument("--overwrite", action="store_true", default=None, help="redo inputs whose output exists")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")
    p.add_argument("--config", help="config file (JSON or key = value lines); keys: " + ", ".join(DEFAULTS))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, or a solver option as solver.OPTION=VALUE")
    return p


_FLAG_KEYS = {"solver": "solver", "prior": "prior", "task": "task", "acceleration": "acceleration", "mask": "mask",
              "center_fraction": "center_fraction", "views": "views", "angle_range": "angle_range", "keep": "keep",
              "noise": "noise", "seed": "seed", "overwrite": "overwrite", "progress": "progress"}


def main(argv=None) -> int:
    from .io_utils import atomic_write_json, check_writable_dir
    from .solvers import available as solvers_available

    a = _parser().parse_args(argv)
    flags = {key: getattr(a, attr) for attr, key in _FLAG_KEYS.items() if getattr(a, attr) is not None}
    if isinstance(flags.get("acceleration"), float) and flags["acceleration"].is_integer():
        flags["acceleration"] = int(flags["acceleration"])
    cfg, all_options = resolve_config(DEFAULTS, a.config, a.set, extra=flags)
    solver = cfg["solver"]
    if solver is None:
        fail("--solver", f"a solver name, one of {solvers_available()}", "nothing")
    check_choice("--solver", solver, solvers_available())
    options = dict(all_options.get("solver", {}), **all_options.get(solver, {}))
    check_solver_options(solver, options)
    from .solvers.base import get as get_solver

    if int(cfg["n_samples"]) > 1 and not get_solver(solver).sampler:
        fail("n_samples", f"1 for the deterministic solver {solver!r}", cfg["n_samples"])
    check_choice("--task", cfg["task"], TASKS)
    check_choice("--mask", cfg["mask"], MASK_CHOICES + ("poisson",))
    check_choice("npy", cfg["npy"], ("image", "sinogram"))
    prior = load_prior_checked(solver, cfg["prior"])
    if is_volume_solver(solver):
        prior = prior_for_volumes(prior, int(cfg["batch_slices"]))
    torch.set_num_threads(int(cfg["threads"]))
    out = check_writable_dir("--out", a.out)
    items = [probe(it, cfg) for it in discover(a.inputs, cfg)]
    if not items:
        fail("INPUT", "at least one fastMRI/sinogram .h5, NIfTI, DICOM, .npy or .png input", f"none in {a.inputs}")
    seen = {}
    for it in items:
        if it.out_name in seen:
            fail("INPUT", "inputs with distinct output names",
                 f"{seen[it.out_name]} and {it.path} would both write {out / it.out_name}")
        seen[it.out_name] = it.path
    if prior is not None and getattr(prior, "channels", None):
        need = {"mri": 2, "ct": 1, "inpainting": 1, "deblur": 1}
        for it in items:
            if it.error is None and need.get(it.task) not in (None, prior.channels):
                fail("--prior", f"a prior with {need[it.task]} channel(s) for task {it.task!r} "
                                f"({'complex MRI images' if need[it.task] == 2 else 'real images'})",
                     f"{cfg['prior']!r} with {prior.channels} channel(s) (input {it.path})")

    rank, world, initialised = dist_context()
    if rank == 0:
        atomic_write_json(out / "config.json", dict(cfg, solver_options=options, inputs=[str(i) for i in a.inputs],
                                                    world_size=world))
    ctx = DistContext(rank, world, initialised)

    def report(it, rec):
        m = rec["metrics"]
        return (f"{it.path.name} -> {it.out_name}: {rec['seconds']:.1f} s, NFE {rec['nfe']}"
                + (f", PSNR {m['PSNR']:.2f} dB, SSIM {m['SSIM']:.3f}" if m else ""))

    tally = run_items(items, lambda it: reconstruct_item(it, out, cfg, prior, solver, options, rank), ctx=ctx,
                      name="reconstruct", out=out, overwrite=bool(cfg["overwrite"]), progress=bool(cfg["progress"]),
                      report=report)
    barrier(world)
    if rank == 0:
        index = write_index(out, items, cfg, options)
        c = index["counts"]
        print(f"[reconstruct] {c['done']} of {len(items)} inputs reconstructed in {out} "
              f"({tally.skipped} already done on this rank), {c['failed']} failed; index: {out / 'index.json'}")
    ctx.close()
    if tally.failures:
        print(f"invdiff reconstruct: error: {len(tally.failures)} input(s) failed:\n  " + "\n  ".join(tally.failures),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

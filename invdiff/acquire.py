"""``invdiff acquire INPUT... --out DIR``: which measurements would the prior ask for? Active acquisition (ADS).

For every slice of every input, ADS (``solver="ads"``, :mod:`invdiff.solvers.ads`: particles of the reverse
diffusion, next measurement = maximum entropy of their predictive) chooses the k-space columns / CT views / pixels
to measure, reading only what it chose from the fully sampled data (retrospective), and reconstructs from them.

Inputs (files, or folders searched recursively):

  fastMRI .h5 (fully sampled   task mri: k-space columns. Single-coil, or multi-coil with ESPIRiT maps from the
  training/validation files)   centre (ACS) block. Scaled by the ACS zero-filled maximum.
  NIfTI .nii/.nii.gz, DICOM    a clean volume (default task ct: the fully sampled sinogram of --set views=N angles
  folder (one series)          (default 64) over angle_range degrees is simulated per slice; ADS picks views).
  .npy / .png images           a clean image or stack (default task inpainting: pixels, or patches with
                               --set ads.unit=patch --set ads.patch=4; or --task mri / ct, simulated).

Budget: --budget K candidates per slice (centre block included), or --acceleration R (K = candidates // R;
default 4). MRI: the fastMRI centre block (0.08 of the columns below 8x, 0.04 from 8x; --set center_fraction=F,
or none) is acquired first.

Writes per input NAME (OUT/):
  NAME_acquisition.json   per slice: the order [[candidate, reverse step], ...] (step -1 = centre block), the
                          chosen candidates, CT angles (degrees), event steps; budget, preset, NFE, metrics
  NAME_masks.npy          (slices, *mask) 0/1: (H, W) column masks, (H, W) pixel masks, (views,) for CT
  NAME_order.npy          (slices, budget, 2) int64 [candidate, reverse step]; NAME_angles.npy for CT
  NAME_scores.npy         (slices, events, candidates) float64: the score (entropy) of every candidate at each
                          acquisition, -inf where already acquired
  NAME_acquisition.png    mask evolution over the reverse steps and the score of every candidate at each
                          acquisition (middle slice)
  the reconstruction      as 'invdiff reconstruct' writes it: fastMRI h5 'reconstruction' (same name), NAME.npy,
                          NAME.nii.gz (written last: its existence marks the input done)
  index.json, metrics.{md,csv,json}, config.json, records/NAME.json

Cost per slice (--preset; NFE = network calls, batched over the particles; official fastMRI setting: 16
particles x 10 000 steps = 1.6e5 images denoised):
{presets}
Options of the sampler: --set ads.OPTION=VALUE (particles, num_steps, window, score, per_step, select,
predictive, restart, entropy_sigma, unit, patch, eta, cg_iters, gamma, dc, guidance, dps_weight, chunk;
'invdiff solvers ads' lists their types and ranges), e.g. --set ads.num_steps=20; checked before any input is read.

Resumable (an input whose reconstruction exists is skipped; --overwrite redoes it), shardable under torchrun
(rank r takes inputs r::WORLD_SIZE, rank 0 writes the index), seeds from --seed and each file's name (slice i:
+i). Config: --config FILE and --set KEY=VALUE (keys below); the resolved config is saved as OUT/config.json.
Bad configuration or input: one message, exit code 2, nothing written.

examples:
  invdiff acquire knee_train/file1000001.h5 --out acq/ --acceleration 8 --preset fast --set slices=15:18
  invdiff acquire ct.nii.gz --budget 16 --set views=128 --out acq/
  invdiff acquire phantom.png --task mri --acceleration 4 --out acq/ --set ads.num_steps=20
  torchrun --nproc_per_node=4 -m invdiff.cli acquire knee_val/ --acceleration 4 --out acq/
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import jobs
from ._validate import check_choice, check_positive, fail

TASKS = ("auto", "mri", "ct", "inpainting")
#: the shipped prior used for each task with --prior auto
AUTO_PRIOR = {"mri": "mri-brainphantom-64", "ct": "ct-phantom-64", "inpainting": "ct-phantom-64"}
#: ads() keywords that are flags / config keys of this command
_OWN = ("acceleration", "budget", "preset", "center_fraction", "acquire")

DEFAULTS = {
    "prior": "auto",             # auto: mri-brainphantom-64 for MRI, ct-phantom-64 otherwise; or a name / path
    "task": "auto",              # auto (fastMRI: mri, volumes: ct, images: inpainting) | mri | ct | inpainting
    "acceleration": None,        # candidates / acquired (default 4 when no budget is given)
    "budget": None,              # acquired candidates per slice (centre block included)
    "preset": "default",         # ADS preset (particles x steps x window)
    "center_fraction": "auto",   # MRI centre block: auto (fastMRI default for the acceleration), a fraction, none
    "views": 64,                 # CT: candidate views (the fully sampled sinogram)
    "angle_range": 180.0,
    "coils": 0,                  # simulated MRI of images: 0 = single coil, N birdcage coils
    "espirit_calib": 24,
    "espirit_kernel": 6,
    "espirit_cache": None,
    "noise": 0.01,               # measurement noise std on the [0, 1] image scale
    "slices": None,              # None (all), an index, or START:STOP[:STEP]
    "figure": True,
    "seed": 0,
    "threads": 1,
    "write_dicom": False,
    "overwrite": False,
    "progress": True,
}


def _preset_table() -> str:
    from .solvers.ads import PRESET_OPTIONS, PRESETS, _window_range

    rows = ["  preset     particles  steps  window          NFE   images denoised (share of official 1.6e5)"]
    for name, (n, steps, win) in PRESETS.items():
        w = f"({win[0]:g}, {win[1]:g})"
        extra = PRESET_OPTIONS.get(name, {})
        lo, hi = _window_range(steps, win)
        if extra.get("predictive") == "restart":         # a new pass per event (ads module docstring)
            rest = steps - int(extra["restart"] * steps)
            nfe = f"{steps} + {rest} x E"
            rows.append(f"  {name:<10} {n:>9}  {steps:>5}  {w}{'':<{14 - len(w)}}{nfe:>12}   {n} x NFE; E = events "
                        f"(chosen, at most {hi - lo}); predictive=restart, score="
                        f"{extra.get('score', 'gmm')}")
            continue
        rows.append(f"  {name:<10} {n:>9}  {steps:>5}  {w}{'':<{14 - len(w)}}"
                    f"{steps:>5}   {n * steps:>6} ({100 * n * steps / 1.6e5:.2g} %)")
    return "\n".join(rows)


# ------------------------------------------------------------------------------------------------
# configuration (checked before any input is read)
# ------------------------------------------------------------------------------------------------
def check_config(cfg: dict, options: dict) -> dict:
    """Check the command's config and the sampler's options; returns the options for ``ads``."""
    check_choice("--task", cfg["task"], TASKS)
    from .solvers.ads import PRESETS

    check_choice("--preset", cfg["preset"], list(PRESETS))
    if cfg["acceleration"] is not None and cfg["budget"] is not None:
        fail("--budget", "either --budget or --acceleration, not both",
             f"--budget {cfg['budget']} and --acceleration {cfg['acceleration']}")
    if cfg["budget"] is not None:
        check_positive("--budget", cfg["budget"], integer=True)
    else:
        acc = 4 if cfg["acceleration"] is None else cfg["acceleration"]
        if isinstance(acc, bool) or not isinstance(acc, (int, float)) or not 1 <= acc < float("inf"):
            fail("--acceleration", "a finite number >= 1 (candidates / acquired candidates)", acc)
    cf = cfg["center_fraction"]
    if isinstance(cf, str) and cf.lower() in ("none", "null"):
        cfg["center_fraction"] = cf = None
    if cf is not None and cf != "auto" and not (isinstance(cf, (int, float)) and 0 < cf < 1):
        fail("center_fraction", "auto, none, or a fraction of the k-space columns in (0, 1)", cf)
    from ._validate import check_bool

    jobs.check_common_config(cfg, {"seed": "--seed", "prior": "--prior"})
    for k in ("figure", "write_dicom", "overwrite", "progress"):
        check_bool(k, cfg[k])
    if cfg["slices"] is not None and not isinstance(cfg["slices"], (int, str)) or isinstance(cfg["slices"], bool):
        fail("slices", "None (all slices), an index, or START:STOP[:STEP]", cfg["slices"], TypeError)
    own = sorted(set(options) & set(_OWN))
    if own:
        fail("ads.<option>", "sampler options other than " + ", ".join(_OWN) + " (use --budget, --acceleration, "
             "--preset, --set center_fraction=...)", f"ads option(s) {own}")
    jobs.check_solver_options("ads", options)
    from .solvers.base import resolve_options

    resolved, _ = resolve_options("ads", options)              # each value against ads' option spec, typed
    return {k: resolved[k] for k in options}


def _budget(cfg, n: int) -> int:
    return int(cfg["budget"]) if cfg["budget"] is not None else int(n // (cfg["acceleration"] or 4))


def _center_fraction(cfg, n: int, budget: int):
    from .operators.masks import default_center_fraction

    cf = cfg["center_fraction"]
    return default_center_fraction(n / budget) if cf == "auto" else cf


def probe(it: jobs.Item, cfg: dict, options: dict) -> jobs.Item:
    """Kind, task, output name, candidate count and budget of one input (headers only); bad input fails here."""
    from .datasets.acquisition import NATURAL_TASK, candidate_count, parse_slices
    from .datasets.fastmri import DataFileError
    from .datasets.inputs import output_name, probe_h5
    from .operators.candidates import centre_block

    try:
        if it.kind == "h5":
            it.kind = probe_h5(it.path)
        if it.kind not in NATURAL_TASK:
            fail("INPUT", "a fully sampled fastMRI .h5, a NIfTI/DICOM volume or an image (.npy/.png)",
                 f"{it.path} ({it.kind} data: measured sinograms hold no unmeasured views to choose from)")
        natural = NATURAL_TASK[it.kind]
        it.task = natural if cfg["task"] == "auto" else cfg["task"]
        if it.kind == "fastmri" and it.task != "mri":
            fail("--task", "mri for fastMRI k-space", f"{cfg['task']} (input {it.path})")
        n, width, n_slices = candidate_count(it.kind, it.path, it.task, views=cfg["views"],
                                             unit=options.get("unit") or "pixel", patch=options.get("patch"))
    except DataFileError as e:
        fail("INPUT", "a readable input", str(e))
    parse_slices(cfg["slices"], n_slices, f"slices (of {it.path.name})")
    budget = _budget(cfg, n)
    if budget > n:
        fail("--budget", f"at most the {n} candidates of {it.path.name} (task {it.task})", budget)
    if budget < 1:
        fail("--acceleration", f"at most {n} for {it.path.name} (at least one of its {n} candidates acquired)",
             cfg["acceleration"])
    cf = _center_fraction(cfg, n, budget) if it.task == "mri" else None
    if cf is not None and len(centre_block(width, cf)) > budget:
        fail("center_fraction", f"a centre block of at most the budget ({budget} of {width} columns)",
             f"{cfg['center_fraction']} ({len(centre_block(width, cf))} columns)")
    if it.kind == "fastmri":
        from .datasets.fastmri import inspect_fastmri

        n_acs = len(centre_block(width, cf)) if cf is not None else 0
        if inspect_fastmri(it.path).challenge == "multicoil" and n_acs < 2 * int(cfg["espirit_kernel"]):
            fail("center_fraction", f"a centre block of at least 2 * espirit_kernel = {2 * int(cfg['espirit_kernel'])}"
                 f" columns for the ESPIRiT maps of multi-coil {it.path.name} (or a smaller espirit_kernel)",
                 f"{cfg['center_fraction']} ({n_acs} of {width} columns)")
    it.n_candidates, it.budget, it.center_fraction = n, budget, cf
    it.out_name = output_name(it.kind, it.path)
    return it


# ------------------------------------------------------------------------------------------------
# one input
# ------------------------------------------------------------------------------------------------
def _full_acquisition(it, cfg):
    from .datasets.acquisition import clean_acquisition, fastmri_acquisition
    from .operators.candidates import centre_block

    if it.kind == "fastmri":
        W = it.n_candidates
        cols = centre_block(W, it.center_fraction) if it.center_fraction is not None else []
        return fastmri_acquisition(it.path, center_columns=cols, noise=float(cfg["noise"]),
                                   espirit_calib=int(cfg["espirit_calib"]), espirit_kernel=int(cfg["espirit_kernel"]),
                                   espirit_cache=cfg["espirit_cache"], slices=cfg["slices"])
    return clean_acquisition(it.kind, it.path, it.task, views=int(cfg["views"]), angle_range=float(cfg["angle_range"]),
                             noise=float(cfg["noise"]), coils=int(cfg["coils"]), slices=cfg["slices"])


def acquire_item(it, out: Path, cfg: dict, prior, options: dict, rank: int = 0) -> dict:
    """ADS on every slice of one input; writes its acquisition files, figure, record and reconstruction."""
    import invdiff

    from .bench.measure import PeakMemory
    from .datasets.acquisition import write_acquisition
    from .datasets.inputs import write_outputs
    from .datasets.volumes import stem

    seed = jobs.item_seed(int(cfg["seed"]), it.path.name)
    t0 = time.perf_counter()
    slices, means, nfe, images = [], [], 0, 0
    with PeakMemory() as pm:
        full = _full_acquisition(it, cfg)
        for i in range(full.n_slices):
            y, op = full.problem(i, torch.Generator().manual_seed(seed + i))
            rec = invdiff.solve(y, op, prior, solver="ads", seed=seed + i, progress=False, budget=it.budget,
                                preset=cfg["preset"], center_fraction=it.center_fraction, **options)
            means.append(rec.mean.detach())
            nfe += rec.nfe
            images += int(rec.info.get("nfe_images", rec.nfe))
            info = rec.info
            s = {"slice": int(full.info["slices"][i]), "order": [[int(c), int(k)] for c, k in info["order"]],
                 "chosen": sorted(int(c) for c, _ in info["order"]), "event_steps": list(info["event_steps"]),
                 "fixed": info["candidates"]["fixed"], "mask": _plain_mask(info["mask"]),
                 "scores": info["scores"].cpu().numpy()}
            if "angles" in info:                              # info["angles"]: of the chosen ids, sorted
                angle_of = dict(zip(s["chosen"], info["angles"].tolist()))
                s["angles"] = [float(angle_of[c]) for c, _ in s["order"]]
            slices.append(s)
        recon, metrics, winfo = full.finish(means)
    seconds = time.perf_counter() - t0
    last = rec.info
    meta = {"input": str(it.path), "task": it.task, "unit": last["candidates"]["unit"], "n_candidates":
            last["candidates"]["n"], "budget": last["budget"], "acceleration": last["acceleration"],
            "center_fraction": last["center_fraction"], "preset": cfg["preset"], "particles": last["particles"],
            "num_steps": last["num_steps"], "window": list(last["window"]), "score": last["score"],
            "guidance": last["guidance"], "nfe": nfe, "images_denoised": images, "seed": seed, "metrics": metrics,
            "prior": str(cfg["prior"])}
    name = stem(Path(it.out_name))
    files = write_acquisition(out, name, slices, meta)
    if cfg["figure"]:
        files.append(plot_evolution(out / f"{name}_acquisition.png", slices[len(slices) // 2], meta,
                                    recon_slice=np.asarray(recon).reshape(-1, *np.asarray(recon).shape[-2:])[
                                        len(slices) // 2]))
    record = {"input": str(it.path), "output": it.out_name, "kind": it.kind, "task": it.task, "solver": "ads",
              "status": "done", "budget": it.budget, "n_candidates": it.n_candidates, "nfe": nfe,
              "images_denoised": images, "seconds": round(seconds, 3),
              "peak_mb": None if pm.peak_mb is None else round(pm.peak_mb, 1), "seed": seed, "rank": rank,
              "metrics": metrics, "files": [Path(f).name for f in files], "slices": len(slices)}
    jobs.write_record(out, it.out_name, record)                 # before the output: done == output exists
    if it.kind == "fastmri":
        winfo["attrs"].update(acceleration=it.n_candidates / it.budget, mask="ads", solver="ads", nfe=nfe,
                              prior=str(cfg["prior"]))
    write_outputs(it.kind, it.path, out / it.out_name, recon, {}, winfo, write_dicom=bool(cfg["write_dicom"]))
    return record


def _plain_mask(mask: torch.Tensor) -> np.ndarray:
    """The mask without the inpainting channel axis: (H, W) columns or pixels, (views,) for CT."""
    m = mask.detach().cpu().numpy()
    return m[0] if m.ndim == 3 and m.shape[0] == 1 else m


# ------------------------------------------------------------------------------------------------
# the figure
# ------------------------------------------------------------------------------------------------
def plot_evolution(path: Path, s: dict, meta: dict, recon_slice=None) -> Path:
    """Mask evolution over the reverse steps and the score of every candidate at each acquisition (one slice).

    Columns / views: two (acquisition x candidate) maps: the state of every candidate after each acquisition
    (centre block, earlier, chosen now) and its score at that acquisition (min-max per acquisition; chosen
    ones circled). Pixels / patches: the mask and the score map at up to five acquisitions."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from .io_utils import atomic_path

    scores = np.asarray(s["scores"], dtype=np.float64)          # (events, n)
    order, steps = s["order"], s["event_steps"]
    n = scores.shape[1] if scores.size else meta["n_candidates"]
    when = np.full(n, np.nan)                                     # event index at which each candidate came
    ev_index = {k: e for e, k in enumerate(steps)}
    for c, k in order:
        when[c] = -1 if k < 0 else ev_index[k]
    norm = np.full_like(scores, np.nan)
    for e in range(scores.shape[0]):
        row = scores[e]
        ok = np.isfinite(row)
        if ok.any():
            lo, hi = row[ok].min(), row[ok].max()
            norm[e, ok] = (row[ok] - lo) / (hi - lo) if hi > lo else 1.0
    title = (f"{Path(meta['input']).name} slice {s['slice']}: {meta['budget']} of {meta['n_candidates']} "
             f"{meta['unit']}{'es' if meta['unit'].endswith('ch') else 's'}, preset {meta['preset']} ({meta['particles']} particles x {meta['num_steps']} steps)")
    spatial = meta["unit"] in ("pixel", "patch")
    if not spatial:
        E = max(len(steps), 1)
        state = np.zeros((E, n))
        for e in range(E):
            state[e] = np.where(when == -1, 1, np.where(when < e, 2, np.where(when == e, 3, 0)))
        ncol = 3 if recon_slice is not None else 2
        fig, ax = plt.subplots(1, ncol, figsize=(4.2 * ncol, 4.2), squeeze=False)
        ax = ax[0]
        cmap = matplotlib.colors.ListedColormap(["#f0f0f0", "#4c72b0", "#55a868", "#c44e52"])
        ax[0].imshow(state, aspect="auto", cmap=cmap, vmin=0, vmax=3, interpolation="nearest")
        ax[0].set(title="mask after each acquisition", xlabel=meta["unit"], ylabel="acquisition (reverse step)")
        ax[1].imshow(norm, aspect="auto", cmap="viridis", interpolation="nearest")
        for e in range(scores.shape[0]):
            ch = np.nonzero(when == e)[0]
            ax[1].scatter(ch, np.full(len(ch), e), s=14, facecolors="none", edgecolors="red", linewidths=0.8)
        ax[1].set(title=f"score ({meta['score']}) per acquisition, min-max", xlabel=meta["unit"])
        ticks = list(range(0, E, max(1, E // 8)))
        for a in ax[:2]:
            a.set_yticks(ticks)
            a.set_yticklabels([str(steps[t]) if t < len(steps) else "" for t in ticks])
        handles = [matplotlib.patches.Patch(color=cmap(i), label=lab) for i, lab in
                   enumerate(["not acquired", "centre block", "earlier", "chosen now"])]
        ax[0].legend(handles=handles, fontsize=6, loc="upper left", framealpha=0.9)
        if recon_slice is not None:
            ax[2].imshow(recon_slice, cmap="gray")
            ax[2].set(title="reconstruction")
            ax[2].axis("off")
    else:
        H, W = np.asarray(s["mask"]).shape[-2:]
        gh = int(round((n * H / W) ** 0.5)) if n != H * W else H
        gw = n // gh
        picks = sorted(set(np.linspace(0, max(len(steps) - 1, 0), min(5, max(len(steps), 1))).round().astype(int)))
        fig, ax = plt.subplots(2, len(picks), figsize=(2.4 * len(picks), 5), squeeze=False)
        for j, e in enumerate(picks):
            ax[0, j].imshow(((when <= e) & np.isfinite(when)).reshape(gh, gw), cmap="gray", interpolation="nearest")
            ax[0, j].set_title(f"mask, step {steps[e] if steps else '-'}", fontsize=8)
            if scores.size:
                ax[1, j].imshow(norm[e].reshape(gh, gw), cmap="viridis", interpolation="nearest")
            ax[1, j].set_title(f"score ({meta['score']})", fontsize=8)
            for a in ax[:, j]:
                a.axis("off")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)


# ------------------------------------------------------------------------------------------------
# the index
# ------------------------------------------------------------------------------------------------
def write_index(out: Path, items, cfg, options) -> dict:
    from .bench.tables import write_results
    from .io_utils import atomic_write_json

    records = jobs.merge_records(out, items)
    rows = []
    for rec in records:
        row = {k: rec.get(k) for k in ("output", "task", "status", "budget", "n_candidates", "nfe",
                                        "images_denoised", "seconds", "peak_mb")}
        row.update(rec.get("metrics") or {})
        rows.append(row)
    index = {"config": cfg, "solver_options": options, "records": records,
             "counts": {s: sum(r.get("status") == s for r in records) for s in ("done", "failed", "missing")}}
    atomic_write_json(out / "index.json", index)
    cols = ["output", "task", "status", "budget", "n_candidates", "PSNR", "SSIM", "NMSE", "nfe", "images_denoised",
            "seconds", "peak_mb"]
    write_results(out, "metrics", rows, cols, title="invdiff acquire",
                  notes="Per input: ADS acquisition (budget of n candidates per slice), reconstruction metrics by the "
                        "fastMRI volume protocol against the fastMRI target or the normalised clean input; NFE "
                        "(network calls), images denoised, seconds, peak memory (MiB).\n\n")
    return index


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="invdiff acquire", description=__doc__.replace("``", "").replace(":mod:", "").replace(
        "{presets}", _preset_table()), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files or folders")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--task", help="one of " + ", ".join(TASKS) + " (default auto: from the file type)")
    p.add_argument("--acceleration", type=float, help="candidates / acquired candidates (default 4)")
    p.add_argument("--budget", type=int, help="acquired candidates per slice (centre block included)")
    p.add_argument("--preset", help="ADS preset: fast, default, quality, official, restart (table above)")
    p.add_argument("--prior", help="shipped prior name or checkpoint path (default auto: by task)")
    p.add_argument("--seed", type=int, help="global seed (per-file seeds derive from it)")
    jobs.add_job_flags(p, DEFAULTS, options="a sampler option as ads.OPTION=VALUE")
    return p


_FLAGS = ("task", "acceleration", "budget", "preset", "prior", "seed", "overwrite", "progress")


def main(argv=None) -> int:
    from .datasets.inputs import DESCRIPTION, classify_file, is_series_folder
    from .io_utils import atomic_write_json, check_writable_dir

    a = parser().parse_args(argv)
    flags = {k: getattr(a, k) for k in _FLAGS if getattr(a, k) is not None}
    if isinstance(flags.get("acceleration"), float) and flags["acceleration"].is_integer():
        flags["acceleration"] = int(flags["acceleration"])
    cfg, all_options = jobs.resolve_config(DEFAULTS, a.config, a.set, extra=flags)
    options = check_config(cfg, dict(all_options.get("solver", {}), **all_options.get("ads", {})))
    others = sorted(set(all_options) - {"solver", "ads"})
    if others:
        fail("--set", "sampler options as ads.OPTION=VALUE", f"options of other solvers {others}")
    priors = {}
    if cfg["prior"] not in (None, "auto"):                     # a configuration error before any input is read
        priors[cfg["prior"]] = jobs.load_prior_checked("ads", cfg["prior"])
    # inputs: headers only, every check before anything is written
    items = jobs.discover(a.inputs, lambda p, explicit: classify_file(p, explicit=explicit), folder=is_series_folder,
                          what=DESCRIPTION)
    if not items:
        fail("INPUT", "at least one fastMRI .h5, NIfTI, DICOM, .npy or .png input", f"none in {a.inputs}")
    items = [probe(it, cfg, options) for it in items]
    jobs.check_distinct_outputs(items)
    for it in items:
        name = AUTO_PRIOR[it.task] if cfg["prior"] in (None, "auto") else cfg["prior"]
        if name not in priors:
            priors[name] = jobs.load_prior_checked("ads", name)
        prior = priors[name]
        need = 2 if it.task == "mri" else 1
        if getattr(prior, "channels", None) not in (None, need):
            fail("--prior", f"a prior with {need} channel(s) for task {it.task!r}",
                 f"{name!r} with {prior.channels} channel(s) (input {it.path})")
        it.prior_name = name
    torch.set_num_threads(int(cfg["threads"]))
    out = check_writable_dir("--out", a.out)
    ctx = jobs.join()
    if ctx.is_main:
        atomic_write_json(out / "config.json", dict(cfg, solver_options=options, inputs=[str(i) for i in a.inputs],
                                                    world_size=ctx.world))

    def work(it):
        opts = options if it.task == "inpainting" else {k: v for k, v in options.items() if k not in ("unit", "patch")}
        return acquire_item(it, out, dict(cfg, prior=it.prior_name), priors[it.prior_name], opts, ctx.rank)

    def report(it, rec):
        m = rec["metrics"]
        return (f"{it.path.name}: {rec['budget']} of {rec['n_candidates']} per slice, {rec['seconds']:.1f} s, "
                f"NFE {rec['nfe']}" + (f", PSNR {m['PSNR']:.2f} dB" if m else ""))

    tally = jobs.run_items(items, work, ctx=ctx, name="acquire", out=out, overwrite=bool(cfg["overwrite"]),
                           progress=bool(cfg["progress"]), report=report)
    return jobs.finish(items, tally, ctx, out, lambda: write_index(out, items, cfg, options), name="acquire",
                       verb="acquired")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``invdiff reconstruct INPUT... --solver NAME --prior NAME --out DIR``: reconstruct files and folders.

Inputs (files, or folders searched recursively) and what is reconstructed:

  fastMRI .h5 (k-space)      MRI from the measured k-space, undersampled with fastMRI's own per-file mask (knee:
                             RandomMaskFunc, brain: EquispacedMaskFractionFunc, bit for bit; test files: their
                             own mask); multi-coil with ESPIRiT coil maps; images are zeroed where no
                             map reaches (no coil sees it; --set coil_support=true|false|auto: auto = with
                             a prior or the noise floor). Output: an h5
                             file of the same name with dataset 'reconstruction' (slices, h, w) cropped like the
                             target: the fastMRI submission format, scored by 'fastmri/evaluate.py'. It estimates
                             the target, whose background is the noise floor F of the coils' thermal noise:
                             sqrt(|x|^2 + F^2), F from the noise std of the k-space corners (attributes
                             'noise_floor', 'kspace_noise_std'; --set noise_floor=false: |x|).
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
--set solver.OPTION=VALUE (e.g. --set solver.num_steps=20; 'invdiff solvers NAME' lists them). Flags given
explicitly win over both. The resolved config is saved as OUT/config.json.

Checks before anything is written (exit code 2, no output folder): every configuration value (type and range),
the solver's options, the prior, and what each input's header shows: images smaller than 7x7 are refused (the
fastMRI protocol's SSIM uses a 7x7 window), so are CT inputs whose padding to a square would more than double the
pixels (--set ct_pad_square=true pads anyway), inputs whose operator is estimated to need more than --max-memory,
and fastMRI targets whose size disagrees with the header (--set check_target=false scores them anyway; a target
that is not the image of the file's own fully sampled k-space is refused when the file is read). Exit codes:
0 done, 1 some inputs failed (the others were done), 2 bad usage / configuration / input, 3 the disk is full.

Size guard: every prior knows the sizes and pixel scale it was trained and validated for (its model card);
applied to another size it warns (PriorSizeWarning), and --strict makes that an error before any input is solved.
ct-phantom-64 and mri-brainphantom-64 were trained on whole 64x64 images; ct-anatomy-patch64 is a patch prior at
the pixel scale of 256x256 CT slices (validated at 256x256 and 512x512), mri-anatomy-patch64 one at the scale of
320x320 MRI slices (validated on 640x368 multi-coil fastMRI knee files). For other
sizes use a classical solver (the default, --solver auto) or a prior trained for that size (a checkpoint path).

examples:
  invdiff reconstruct knee_val/ --out recon/ --acceleration 8            # 320x320 knee: l1-wavelet (auto)
  invdiff reconstruct knee_val/ --solver dds --prior mri-anatomy-patch64 --out recon/
  invdiff reconstruct phantoms64/ --task ct --views 16 --solver dds --prior ct-phantom-64 --out recon/
  invdiff reconstruct slices256/ --task ct --views 16 --solver diffpir --prior ct-anatomy-patch64 --strict --out recon/
  invdiff reconstruct ct.nii.gz --task ct --views 16 --solver tv --out recon/ --set solver.lam=0.002
  torchrun --nproc_per_node=4 -m invdiff.cli reconstruct data/ --solver tv --out recon/
  invdiff reconstruct --list-solvers
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .._validate import fail
from ..datasets.fastmri import MASK_CHOICES
from ..jobs import (DistContext, Item, add_job_flags, barrier, check_device, check_distinct_outputs,
                    check_solver_options, finish, load_prior_checked, prior_for_volumes, solves_whole_volumes,
                    resolve_config, run_items)
from ..jobs import join as dist_context
from .checks import (AUTO_SOLVER, DEFAULTS, FLAG_OF, MIN_SIDE, TARGET_TOLERANCE, TASKS,  # noqa: F401
                     _check_calibration, _check_sizes, _sinogram_image_size, check_config, discover, estimate_gb,
                     memory_limit_gb, probe)
from .runners import item_seed, reconstruct_item, write_index  # noqa: F401


def _parser():
    p = argparse.ArgumentParser(prog="invdiff reconstruct", description=__doc__.replace("``", ""),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="files or folders to reconstruct")
    p.add_argument("--out", help="output folder (created; required)")
    p.add_argument("--solver", help="solver name (see --list-solvers or 'invdiff solvers'); default auto: the "
                   "task's classical solver (" + ", ".join(f"{t} {s}" for t, s in AUTO_SOLVER.items()) + ")")
    p.add_argument("--list-solvers", action="store_true", help="list the solvers and exit")
    p.add_argument("--prior", help="shipped prior name (invdiff.priors.available()) or checkpoint path")
    p.add_argument("--task", help="one of " + ", ".join(TASKS) + " (default auto: from the file type)")
    p.add_argument("--acceleration", type=float, help="MRI acceleration (default 4)")
    p.add_argument("--mask", help="MRI mask: auto (default; fastMRI files: fastMRI's own, knee fastmri-random, brain "
                   "fastmri-equispaced-fraction; images: equispaced), " + ", ".join(MASK_CHOICES[1:]) + ", poisson")
    p.add_argument("--center-fraction", type=float, help="MRI fully sampled centre fraction")
    p.add_argument("--views", type=int, help="CT views (simulated sparse view, default 32)")
    p.add_argument("--angle-range", type=float, help="CT degrees covered by the views (limited angle < 180)")
    p.add_argument("--keep", type=float, help="inpainting: fraction of observed pixels")
    p.add_argument("--noise", type=float, help="noise std on the [0, 1] image scale (default 0.01): simulated "
                   "measurements get this noise; for measured data (fastMRI k-space, sinograms) it is the noise level "
                   "the solver assumes, nothing is added")
    p.add_argument("--strict", action="store_true", default=None, help="a prior applied to images of a size or "
                   "scale it was not trained for is an error (checked before any input is solved), not a warning")
    p.add_argument("--max-memory", type=float, metavar="GB", help="refuse inputs whose operator is estimated to "
                   "need more memory (default: 75%% of the RAM)")
    p.add_argument("--calibration", action="store_true", default=None, help="also write the std map times the "
                   "factor fitted for this (prior, solver) on held-out phantoms (invdiff.priors.calibration) as "
                   "reconstruction_std_calibrated / NAME_std_calibrated, labelled in the metadata; needs n_samples > 1")
    p.add_argument("--seed", type=int, help="global seed (per-file seeds derive from it)")
    p.add_argument("--device", help="cpu (default), cuda or cuda:N")
    p.add_argument("--precision", help="prior network precision: fp32 (default), bf16 or fp16")
    add_job_flags(p, DEFAULTS, options="a solver option as solver.OPTION=VALUE")
    return p


_FLAG_KEYS = {"solver": "solver", "prior": "prior", "task": "task", "acceleration": "acceleration", "mask": "mask",
              "center_fraction": "center_fraction", "views": "views", "angle_range": "angle_range", "keep": "keep",
              "noise": "noise", "seed": "seed", "overwrite": "overwrite", "progress": "progress", "strict": "strict",
              "max_memory": "max_memory_gb", "device": "device", "precision": "precision",
              "calibration": "calibration"}


def list_solvers() -> str:
    """The solvers, whether each needs a prior, and which one ``--solver auto`` picks per task."""
    from ..solvers import available
    from ..solvers.base import get

    auto = {}
    for t, name in AUTO_SOLVER.items():
        auto.setdefault(name, []).append(t)
    lines = []
    for n in available():
        spec = get(n)
        first = (spec.doc.splitlines() or [""])[0]
        tag = "needs --prior" if spec.needs_prior else "classical"
        lines.append(f"{n:<16} {tag:<14} {first}"[:110]
                     + (f"  [auto for {', '.join(auto[n])}]" if n in auto else ""))
    return "\n".join(lines) + "\n\n'invdiff solvers NAME' lists a solver's options (--set solver.OPTION=VALUE)."


def _check_out(path) -> Path:
    """``--out`` is a folder that can be created and written: checked without writing anything."""
    import os

    p = Path(path)
    if p.exists() and not p.is_dir():
        fail("--out", "a folder (created if missing)", f"{str(p)!r}, an existing file")
    anc = p
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir() or not os.access(anc, os.W_OK | os.X_OK):
        fail("--out", "a folder that can be created and written", f"{str(p)!r} ({anc} is not writable)")
    return p


def _resolve_solver(cfg, items) -> str:
    """``--solver auto``: the classical solver of the inputs' task (one task among the usable inputs)."""
    solver = cfg["solver"]
    if solver not in (None, "auto"):
        return solver
    tasks = sorted({it.task for it in items if it.error is None and it.task})
    if len(tasks) != 1:
        fail("--solver", "a solver name (inputs of several tasks need one solver for all; see --list-solvers)",
             f"auto with tasks {tasks}")
    return AUTO_SOLVER[tasks[0]]


def _x_shape(it: Item, cfg) -> tuple:
    """The image the prior sees for an input (channels, H, W)."""
    C = 2 if it.task == "mri" else 1
    if it.kind == "sinogram":
        N = _sinogram_image_size(it.info, cfg)
        return (C, N, N)
    H, W = it.info["shape"]
    if it.task == "ct":
        return (C, max(H, W), max(H, W))
    return (C, H, W)


def main(argv=None) -> int:
    """Run the command; bad configuration or input: one message and exit code 2 before anything is written."""
    from ..io_utils import atomic_write_json, check_writable_dir

    a = _parser().parse_args(argv)
    if a.list_solvers:
        print(list_solvers())
        return 0
    if a.out is None:
        fail("--out", "an output folder", "nothing")
    if not a.inputs:
        fail("INPUT", "at least one input file or folder", "nothing")
    flags = {key: getattr(a, attr) for attr, key in _FLAG_KEYS.items() if getattr(a, attr) is not None}
    cfg, all_options = resolve_config(DEFAULTS, a.config, a.set, extra=flags)
    cfg = check_config(cfg)
    out_path = _check_out(a.out)
    items = [probe(it, cfg) for it in discover(a.inputs, cfg)]      # headers only
    if not items:
        fail("INPUT", "at least one fastMRI/sinogram .h5, NIfTI, DICOM, .npy or .png input", f"none in {a.inputs}")
    usable = [it for it in items if it.error is None]
    if not usable:
        raise ValueError(items[0].error if len(items) == 1 else f"argument 'INPUT': none of the {len(items)} inputs "
                         "can be used:\n  " + "\n  ".join(it.error for it in items))
    solver = cfg["solver"] = _resolve_solver(cfg, items)
    options = dict(all_options.get("solver", {}), **all_options.get(solver, {}))
    check_solver_options(solver, options)
    from ..solvers.base import get as get_solver

    if int(cfg["n_samples"]) > 1 and not get_solver(solver).sampler:
        fail("n_samples", f"1 for the deterministic solver {solver!r}", cfg["n_samples"])
    if cfg["calibration"]:
        _check_calibration(cfg, solver)
    device = check_device(cfg["device"])
    prior = load_prior_checked(solver, cfg["prior"], device=device, precision=str(cfg["precision"]))
    if solves_whole_volumes(solver, prior):
        for it in usable:  # volume solvers and native 3D priors take a whole input at once
            it.error = _check_sizes(it, cfg, volume=True)
        if not any(it.error is None for it in items):
            fail("INPUT", "at least one input that fits in memory", next(it.error for it in items))
        prior = prior_for_volumes(prior, int(cfg["batch_slices"]))
    check_distinct_outputs(items, out_path)
    if prior is not None and getattr(prior, "channels", None):
        need = {"mri": 2, "ct": 1, "inpainting": 1, "deblur": 1}
        for it in items:
            if it.error is None and need.get(it.task) not in (None, prior.channels):
                fail("--prior", f"a prior with {need[it.task]} channel(s) for task {it.task!r} "
                                f"({'complex MRI images' if need[it.task] == 2 else 'real images'})",
                     f"{cfg['prior']!r} with {prior.channels} channel(s) (input {it.path})")
    if prior is not None and cfg["strict"]:
        from ..priors import check_prior_fits

        for it in items:      # the size guard as an error, before any input is solved
            if it.error is None and it.info:
                try:
                    check_prior_fits(prior, _x_shape(it, cfg), strict=True)
                except ValueError as e:
                    fail("--strict", f"a prior that fits every input (--prior {cfg['prior']})", f"{it.path}: {e}")
    torch.set_num_threads(int(cfg["threads"]))
    out = check_writable_dir("--out", out_path)                      # the first thing written

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
    return finish(items, tally, ctx, out, lambda: write_index(out, items, cfg, options), name="reconstruct",
                  verb="reconstructed", barrier=lambda: barrier(world))


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
--set solver.OPTION=VALUE (e.g. --set solver.num_steps=20; 'invdiff solvers NAME' lists them). Flags given
explicitly win over both. The resolved config is saved as OUT/config.json.

Checks before anything is written (exit code 2, no output folder): every configuration value (type and range),
the solver's options, the prior, and what each input's header shows: images smaller than 7x7 are refused (the
fastMRI protocol's SSIM uses a 7x7 window), so are CT inputs whose padding to a square would more than double the
pixels (--set ct_pad_square=true pads anyway), inputs whose operator is estimated to need more than --max-memory,
and fastMRI targets whose size disagrees with the header (--set check_target=false scores them anyway; a target
that is not the image of the file's own fully sampled k-space is refused when the file is read). Exit codes:
0 done, 1 some inputs failed (the others were done), 2 bad usage / configuration / input, 3 the disk is full.

Size guard: the shipped priors (invdiff.priors.available()) were trained on whole 64x64 images; applied at
another size they warn (PriorSizeWarning), and --strict makes that an error before any input is solved. At real
sizes use a classical solver (the default, --solver auto) or a prior trained for that size (a checkpoint path).

examples:
  invdiff reconstruct knee_val/ --out recon/ --acceleration 8            # 320x320 knee: l1-wavelet (auto)
  invdiff reconstruct knee_val/ --solver dds --prior my_knee_prior.safetensors --strict --out recon/
  invdiff reconstruct phantoms64/ --task ct --views 16 --solver dds --prior ct-phantom-64 --out recon/
  invdiff reconstruct ct.nii.gz --task ct --views 16 --solver tv --out recon/ --set solver.lam=0.002
  torchrun --nproc_per_node=4 -m invdiff.cli reconstruct data/ --solver tv --out recon/
  invdiff reconstruct --list-solvers
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
from .jobs import (DistContext, Item, barrier, check_device, check_solver_options, is_volume_solver,
                   load_prior_checked, prior_for_volumes, resolve_config, run_items, to_device)
from .jobs import join as dist_context

TASKS = ("auto", "mri", "ct", "inpainting", "deblur")

DEFAULTS = {
    "solver": "auto",            # a name from invdiff.solvers.available(); auto: the task's classical solver
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
    "noise": 0.01,               # noise std on the [0, 1] image scale: simulated (clean inputs) or assumed (measured)
    "device": "cpu",             # cpu | cuda | cuda:N: where the solver runs (inputs are read and written on the CPU)
    "precision": "fp32",         # fp32 | bf16 | fp16: the prior network's autocast precision
    "batch_slices": 8,           # slices reconstructed together
    "n_samples": 1,              # posterior samples (their std is written next to the mean)
    "seed": 0,
    "threads": 1,
    "write_dicom": False,        # volumes: also write OUT/NAME_dicom/ (a DICOM series)
    "overwrite": False,
    "progress": True,
    "strict": False,             # a prior applied outside the sizes it fits: an error (default: a warning)
    "max_memory_gb": None,       # refuse inputs whose operator needs more (estimate); None: 75 % of the RAM
    "ct_pad_square": False,      # CT of a non-square image: allow padding that more than doubles the pixels
    "check_target": True,        # fastMRI: refuse a target inconsistent with the header / the k-space
    "calibration": False,        # also write the std scaled by the (prior, solver) factor fitted on held-out phantoms
}

#: the classical solver ``--solver auto`` picks for each task
AUTO_SOLVER = {"mri": "l1-wavelet", "ct": "tv", "inpainting": "tv", "deblur": "tv"}

#: the command-line flag of a config key (error messages name the flag the user typed)
FLAG_OF = {"acceleration": "--acceleration", "center_fraction": "--center-fraction", "views": "--views",
           "angle_range": "--angle-range", "keep": "--keep", "noise": "--noise", "seed": "--seed",
           "solver": "--solver", "prior": "--prior", "task": "--task", "mask": "--mask", "strict": "--strict",
           "max_memory_gb": "--max-memory", "device": "--device", "precision": "--precision",
           "calibration": "--calibration"}


def check_config(cfg: dict) -> dict:
    """Every configuration value typed and in range, once, before any input is read (exit code 2 otherwise).

    Errors name the flag (``--acceleration``) or the config key (``seed``) and what is expected."""
    from ._validate import check_bool, check_int, check_number
    from .solvers import available as solvers_available

    n = lambda k: FLAG_OF.get(k, k)  # noqa: E731
    if cfg["solver"] not in ("auto", None):
        check_choice("--solver", cfg["solver"], solvers_available() + ["auto"])
    if cfg["prior"] is not None and not isinstance(cfg["prior"], str):
        fail("--prior", "a prior name or a checkpoint path", cfg["prior"], TypeError)
    check_choice("--task", cfg["task"], TASKS)
    check_choice("--mask", cfg["mask"], MASK_CHOICES + ("poisson",))
    check_choice("npy", cfg["npy"], ("image", "sinogram"))
    check_choice("inpaint", cfg["inpaint"], ("random", "box"))
    check_number(n("acceleration"), cfg["acceleration"], lo=1)
    if cfg["center_fraction"] is not None:
        check_number(n("center_fraction"), cfg["center_fraction"], lo=0, hi=1, lo_open=True, hi_open=True)
    check_int("coils", cfg["coils"], lo=0)
    check_int("espirit_kernel", cfg["espirit_kernel"], lo=1)
    check_int("espirit_calib", cfg["espirit_calib"], lo=2 * cfg["espirit_kernel"])
    if cfg["espirit_cache"] is not None and not isinstance(cfg["espirit_cache"], str):
        fail("espirit_cache", "a folder path or null", cfg["espirit_cache"], TypeError)
    check_int(n("views"), cfg["views"], lo=1)
    check_number(n("angle_range"), cfg["angle_range"], lo=0, hi=360, lo_open=True)
    if cfg["image_size"] is not None:
        check_int("image_size", cfg["image_size"], lo=2)
    check_number(n("keep"), cfg["keep"], lo=0, hi=1, lo_open=True)
    check_number("box_frac", cfg["box_frac"], lo=0, hi=1, lo_open=True, hi_open=True)
    check_number("blur_std", cfg["blur_std"], lo=0, lo_open=True)
    check_int("blur_size", cfg["blur_size"], lo=1)
    check_number(n("noise"), cfg["noise"], lo=0)
    check_int("batch_slices", cfg["batch_slices"], lo=1)
    check_int("n_samples", cfg["n_samples"], lo=1)
    check_int(n("seed"), cfg["seed"], lo=0)
    check_int("threads", cfg["threads"], lo=1)
    check_device(cfg["device"])
    check_choice("--precision", cfg["precision"], ("fp32", "bf16", "fp16"))
    for k in ("write_dicom", "overwrite", "progress", "strict", "ct_pad_square", "check_target", "calibration"):
        check_bool(n(k), cfg[k])
    if cfg["max_memory_gb"] is not None:
        check_number(n("max_memory_gb"), cfg["max_memory_gb"], lo=0, lo_open=True)
    for k in ("acceleration", "seed", "views", "coils", "batch_slices", "n_samples", "threads", "blur_size"):
        if isinstance(cfg[k], float) and cfg[k].is_integer():
            cfg[k] = int(cfg[k])
    return cfg

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
    """Classify an input, choose its task and output name and read its sizes from the header (no pixel data);
    problems that can be seen there (a damaged file, an image too small to score, a CT padding or an operator
    that would not fit in memory, a fastMRI target that disagrees with its header) go to ``item.error``."""
    from .datasets.fastmri import DataFileError, inspect_fastmri
    from .datasets.inputs import input_shape, output_name, probe_h5

    task = cfg["task"]
    try:
        if item.kind == "h5":
            item.kind = probe_h5(item.path)
            if item.kind == "fastmri":
                info = inspect_fastmri(item.path)
                item.info = {"slices": info.num_slices, "shape": info.shape, "coils": info.coils}
                if cfg["check_target"]:
                    _check_target_shape(info)
                if info.challenge == "multicoil":
                    item.error = _acs_error(info, cfg, item.path)
        if item.kind != "fastmri":
            item.info = input_shape(item.kind, item.path)
    except DataFileError as e:
        item.error = str(e)
    natural = {"fastmri": "mri", "sinogram": "ct", "volume": "ct", "image": "inpainting", "h5": None}[item.kind]
    item.task = natural if task == "auto" else task
    if item.error is None and item.kind in ("fastmri", "sinogram") and item.task != natural:
        item.error = f"{item.path}: {item.kind} data are reconstructed with --task {natural}, not {item.task}"
    item.out_name = output_name(item.kind, item.path)
    if item.error is None and item.info:
        item.error = _check_sizes(item, cfg)
    return item


#: SSIM of the fastMRI protocol (scikit-image, 7x7 window) needs images at least this large
MIN_SIDE = 7


def _check_target_shape(info):
    """A fastMRI target whose size disagrees with the header's reconstruction size is refused: fastMRI crops the
    reconstruction to the target, so a wrong target silently scores a different field of view."""
    from .datasets.fastmri import DataFileError

    rec = info.header.get("recon_size")
    if info.target_shape is None or rec is None:
        return
    H, W = info.shape
    want = (W, W) if W < rec[1] else (min(rec[0], H), min(rec[1], W))
    got = tuple(info.target_shape[-2:])
    if got != tuple(want):
        raise DataFileError(info.path, f"target '{info.target_key}' has slices of {got[0]}x{got[1]} but the header's "
                                       f"reconSpace gives {want[0]}x{want[1]}: scores against it would compare "
                                       "another field of view (fix the file, or --set check_target=false to score "
                                       "anyway)")


def _acs_problem(cols, cfg, path):
    """(expected, received) when the mask's fully sampled centre is too narrow for ESPIRiT's calibration, else
    None (the message names the flags, not the Python arguments of :func:`invdiff.operators.espirit_maps`)."""
    from .operators.coils import acs_width

    W = cols.shape[-1]
    acs = acs_width(cols.reshape(1, W).expand(W, W) != 0)
    need = 2 * int(cfg["espirit_kernel"])
    if acs >= need:
        return None
    return (f"a fully sampled centre of at least 2 * espirit_kernel = {need} k-space lines for the ESPIRiT coil "
            "maps (raise --center-fraction, lower --acceleration, or a smaller --set espirit_kernel=)",
            f"{acs} lines in the mask of {path} (width {W})")


def _acs_error(info, cfg, path, cols=None) -> str | None:
    """The message when a multi-coil file's mask (its own, for test files) is too narrow in the centre for ESPIRiT."""
    from .datasets.fastmri import _open_h5, column_mask

    file_mask = None
    if cols is None:
        if info.has_mask:
            with _open_h5(path) as f:
                file_mask = np.asarray(f["mask"][()], dtype=np.float32).reshape(-1)
        cols = column_mask(info, cfg["mask"], cfg["acceleration"], cfg["center_fraction"], file_mask=file_mask)
    msg = _acs_problem(cols, cfg, path)
    if msg is None:
        return None
    if info.has_mask:   # a test file's own mask: only the kernel can change
        acs = int(msg[1].split()[0])
        return (f"argument 'espirit_kernel': expected at most half the fully sampled centre of the file's own mask "
                f"(--set espirit_kernel={max(1, acs // 2)} or smaller), received {msg[1]}")
    return f"argument '--center-fraction': expected {msg[0]}, received {msg[1]}"


def _sinogram_image_size(info: dict, cfg) -> int:
    """The image size of a sinogram input: its attribute, else ``image_size``, else from its detector count (as
    :func:`invdiff.datasets.volumes.read_sinogram` decides)."""
    from .datasets.volumes import image_size_for_detectors

    n = info.get("image_size") or cfg["image_size"]
    return int(n) if n else int(image_size_for_detectors(int(info["n_det"])))


def memory_limit_gb(cfg) -> float:
    """``max_memory_gb``, or 75 % of the machine's RAM."""
    import os

    if cfg["max_memory_gb"] is not None:
        return float(cfg["max_memory_gb"])
    try:
        return 0.75 * os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2 ** 30
    except (ValueError, OSError, AttributeError):  # pragma: no cover  (not POSIX)
        return 16.0


def estimate_gb(task: str, info: dict, cfg, volume: bool = False) -> tuple[float, str]:
    """A lower estimate of the memory one input's operator and image buffers need (GiB), and the grid it works on.

    CT: deepinv's Radon transform keeps a sampling grid per view (``views * N^2 * 8`` bytes) and rotates a copy
    of each slice per view in the forward and adjoint passes (``3 * views * N^2 * 4`` bytes per slice); MRI:
    complex coil images (``8 * coils * H * W * 8`` bytes per slice); other tasks ``32 * H * W * 4`` bytes per
    slice. Slices per call: ``batch_slices`` (volume solvers: all)."""
    D = int(info.get("slices", 1))
    B = D if volume else min(D, int(cfg["batch_slices"]))
    B *= int(cfg["n_samples"])
    if task == "ct":
        if "n_views" in info:
            V, N = int(info["n_views"]), _sinogram_image_size(info, cfg)
        else:
            V, N = int(cfg["views"]), max(info["shape"])
        need = V * N * N * 8 + B * (3 * V * N * N * 4 + 32 * N * N * 4)
        grid = f"{N}x{N}, {V} views"
    else:
        H, W = info["shape"]
        coils = int(info.get("coils") or cfg["coils"] or 1) if task == "mri" else 1
        need = B * (8 * coils * H * W * 8 + 32 * H * W * 4) if task == "mri" else B * 32 * H * W * 4
        grid = f"{H}x{W}" + (f", {coils} coils" if coils > 1 else "")
    return need / 2 ** 30, grid


def _check_sizes(item: Item, cfg) -> str | None:
    """The per-input checks that need only the header: an error message, or None."""
    info = item.info
    if "shape" in info:
        H, W = info["shape"]
        if min(H, W) < MIN_SIDE:
            return (f"{item.path}: expected an image of at least {MIN_SIDE}x{MIN_SIDE} pixels (the SSIM window of the "
                    f"fastMRI protocol every output is scored with), received {H}x{W}")
        if item.task == "ct" and item.kind != "sinogram":
            N = max(H, W)
            if N * N > 2 * H * W and not cfg["ct_pad_square"]:
                return (f"{item.path}: CT needs a square image; this {H}x{W} image would be padded to {N}x{N} "
                        f"({N * N / (H * W):.0f}x the pixels). Expected a (nearly) square image, or "
                        "--set ct_pad_square=true to pad anyway")
    est, grid = estimate_gb(item.task, info, cfg, volume=is_volume_solver(cfg["solver"])
                            if cfg["solver"] not in (None, "auto") else False)
    limit = memory_limit_gb(cfg)
    if est > limit:
        return (f"{item.path}: its {item.task} operator ({grid}) needs about {est:.3g} GiB, more than the limit "
                f"--max-memory {limit:.3g} GiB; lower --set batch_slices=, or raise --max-memory")
    return None


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

    device = cfg.get("device", "cpu")
    if is_volume_solver(solver):
        gen = torch.Generator().manual_seed(seed)
        y, op = to_device(*build(0, n, gen, True), device)
        rec = invdiff.solve(y, op, prior, solver=solver, seed=seed, n_samples=int(cfg["n_samples"]), progress=False,
                            strict=bool(cfg["strict"]),
                            **options)
        unvol = lambda t: None if t is None else t.detach()[0].movedim(1, 0)  # noqa: E731  (1,C,D,H,W)->(D,C,H,W)
        return unvol(rec.mean), unvol(rec.std), rec.nfe
    means, stds, nfe = [], [], 0
    B = max(1, int(cfg["batch_slices"]))
    for c, lo in enumerate(range(0, n, B)):
        hi = min(n, lo + B)
        gen = torch.Generator().manual_seed(seed + c)
        y, op = to_device(*build(lo, hi, gen, False), device)
        rec = invdiff.solve(y, op, prior, solver=solver, seed=seed + c, n_samples=int(cfg["n_samples"]),
                            progress=False, strict=bool(cfg["strict"]), **options)
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
    from .datasets.fastmri import (apply_mask, column_mask, default_mask_kind, kspace_scale, kspace_to_tensor,
                                   read_fastmri)
    from .metrics import center_crop, fastmri_metrics
    from .operators import MRI, MultiCoilMRI, espirit_maps

    vol = read_fastmri(item.path)
    H, W = vol.info.shape
    if vol.target is not None and vol.mask is None and cfg["check_target"]:
        _check_target_content(item.path, vol)
    cols = column_mask(vol.info, cfg["mask"], cfg["acceleration"], cfg["center_fraction"], file_mask=vol.mask)
    if vol.info.challenge == "multicoil":
        msg = _acs_error(vol.info, cfg, item.path, cols)
        if msg:
            raise ValueError(msg)
    k = vol.kspace if vol.mask is not None else apply_mask(vol.kspace, cols.numpy())
    scale = kspace_scale(k)                    # the normalisation train-prior --data fastmri: uses (fully sampled)
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


#: relative L2 error above which a fastMRI target is not the image of its own (fully sampled) k-space
TARGET_TOLERANCE = 0.1


def _check_target_content(path, vol):
    """The target of a training/validation file is the RSS (multi-coil) or ESC (single-coil) image of its fully
    sampled k-space, centre-cropped: a target that is not (another file's, a transposed or rescaled one) is
    refused, because every score against it would be meaningless (fastMRI itself would score it silently)."""
    from .datasets.fastmri import DataFileError, zero_filled
    from .metrics import center_crop

    ref = center_crop(zero_filled(vol.kspace), vol.target.shape[-2:])
    err = float(np.linalg.norm(ref - vol.target) / max(np.linalg.norm(vol.target), 1e-30))
    if not err <= TARGET_TOLERANCE:
        raise DataFileError(path, f"target '{vol.info.target_key}' is not the image of the file's own fully sampled "
                                  f"k-space (relative error {err:.2f} > {TARGET_TOLERANCE}): scores against it would "
                                  "be meaningless (fix the file, or --set check_target=false to score anyway)")


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


def _check_calibration(cfg, solver):
    """--calibration: a fitted (prior, solver) scale and a std map to scale, checked before any input is solved."""
    from .priors.calibration import known_pairs, std_scale

    if std_scale(cfg["prior"], solver) is None:
        fail("--calibration", "a (prior, solver) pair with a std scale fitted on held-out phantoms (one of "
                              f"{', '.join(known_pairs()) or 'none shipped'})", f"{cfg['prior']}/{solver}")
    if int(cfg["n_samples"]) < 2:
        fail("n_samples", "> 1 with --calibration (the std map is the spread of the samples / particles)",
             cfg["n_samples"])


def _calibrate(extra: dict, info: dict, cfg, solver) -> dict | None:
    """Add ``<std key>_calibrated`` = factor * std to ``extra`` and a note to the fastMRI attributes; returns the note."""
    from .priors.calibration import std_scale

    entry = std_scale(cfg["prior"], solver)
    keys = [k for k in ("reconstruction_std", "std") if k in extra]
    if entry is None or not keys:
        return None
    c = float(entry["std_scale"])
    for k in keys:
        extra[f"{k}_calibrated"] = (extra[k] * c).astype(np.float32)
    note = {"std_scale": c, "prior": str(cfg["prior"]), "solver": solver, "fitted_options": entry.get("options"),
            "fitted_K": entry.get("K"), "note": f"{keys[0]}_calibrated = {c:.4g} x {keys[0]}: the factor that gave "
            "90 % Gaussian-interval coverage (|error| <= 1.645 std; complex magnitude sqrt(ln 10)) on held-out "
            f"phantoms for this prior and solver (task {entry.get('task')}); {keys[0]} is the solver's raw std"}
    if "attrs" in info:
        info["attrs"] = dict(info["attrs"] or {}, std_calibration=note["note"], std_scale=c)
    return note


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
    calibration = _calibrate(extra, info, cfg, solver) if cfg.get("calibration") else None
    rec = {"input": str(item.path), "output": item.out_name, "kind": item.kind, "task": item.task, "solver": solver,
           "prior": None if prior is None else str(cfg["prior"]), "status": "done", "nfe": info["nfe"],
           "seconds": round(seconds, 3), "peak_mb": None if pm.peak_mb is None else round(pm.peak_mb, 1),
           "shape": info["shape"], "seed": seed, "rank": rank, "metrics": metrics,
           "protocol": ("fastMRI (target)" if item.kind == "fastmri" else "vs normalised input") if metrics else None}
    if calibration is not None:
        rec["calibration"] = calibration
    write_record(out, item.out_name, rec)   # before the output: done == output exists
    try:
        _write_outputs(item, out, recon, extra, info, cfg)
    except BaseException:                   # (a full disk) no record of an output that does not exist
        from .jobs import record_path

        record_path(out, item.out_name).unlink(missing_ok=True)
        raise
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
    p.add_argument("--overwrite", action="store_true", default=None, help="redo inputs whose output exists")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")
    p.add_argument("--config", help="config file (JSON or key = value lines); keys: " + ", ".join(DEFAULTS))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, or a solver option as solver.OPTION=VALUE")
    return p


_FLAG_KEYS = {"solver": "solver", "prior": "prior", "task": "task", "acceleration": "acceleration", "mask": "mask",
              "center_fraction": "center_fraction", "views": "views", "angle_range": "angle_range", "keep": "keep",
              "noise": "noise", "seed": "seed", "overwrite": "overwrite", "progress": "progress", "strict": "strict",
              "max_memory": "max_memory_gb", "device": "device", "precision": "precision",
              "calibration": "calibration"}


def list_solvers() -> str:
    """The solvers, whether each needs a prior, and which one ``--solver auto`` picks per task."""
    from .solvers import available
    from .solvers.base import get

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
    from .io_utils import atomic_write_json, check_writable_dir

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
    from .solvers.base import get as get_solver

    if int(cfg["n_samples"]) > 1 and not get_solver(solver).sampler:
        fail("n_samples", f"1 for the deterministic solver {solver!r}", cfg["n_samples"])
    if cfg["calibration"]:
        _check_calibration(cfg, solver)
    device = check_device(cfg["device"])
    prior = load_prior_checked(solver, cfg["prior"], device=device, precision=str(cfg["precision"]))
    if is_volume_solver(solver):
        for it in usable:  # volume solvers take a whole input at once
            it.error = _check_sizes(it, cfg)
        if not any(it.error is None for it in items):
            fail("INPUT", "at least one input that fits in memory", next(it.error for it in items))
        prior = prior_for_volumes(prior, int(cfg["batch_slices"]))
    seen = {}
    for it in items:
        if it.out_name in seen:
            fail("INPUT", "inputs with distinct output names",
                 f"{seen[it.out_name]} and {it.path} would both write {out_path / it.out_name}")
        seen[it.out_name] = it.path
    if prior is not None and getattr(prior, "channels", None):
        need = {"mri": 2, "ct": 1, "inpainting": 1, "deblur": 1}
        for it in items:
            if it.error is None and need.get(it.task) not in (None, prior.channels):
                fail("--prior", f"a prior with {need[it.task]} channel(s) for task {it.task!r} "
                                f"({'complex MRI images' if need[it.task] == 2 else 'real images'})",
                     f"{cfg['prior']!r} with {prior.channels} channel(s) (input {it.path})")
    if prior is not None and cfg["strict"]:
        from .priors import check_prior_fits

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

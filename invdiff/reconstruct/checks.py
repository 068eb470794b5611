"""``invdiff reconstruct``'s configuration and its up-front checks: the config keys and their defaults, every value
typed and in range (:func:`check_config`, with the keys ``acquire`` and ``bench`` share checked by
:func:`invdiff.jobs.check_common_config`), and what each input's header shows (:func:`probe`: sizes, fastMRI
targets, the ESPIRiT calibration region, the memory an operator needs), all before any input is solved."""
from __future__ import annotations

import numpy as np

from .._validate import check_choice, fail
from ..datasets.fastmri import MASK_CHOICES
from ..jobs import Item, check_common_config, is_volume_solver

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
    "coil_support": "auto",      # multi-coil: zero the image where every ESPIRiT map is zero (no coil sees it);
                                 # auto: for solvers with a prior (a diffusion prior paints there) and, with
                                 # noise_floor, for every solver (the floor fills that air)
    "noise_floor": True,         # fastMRI: write the estimate of the noisy RSS / ESC target, sqrt(|x|^2 + F^2), F the
                                 # mean noise floor of the coils' thermal noise estimated from the k-space corners
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
    from .._validate import check_bool, check_int, check_number
    from ..solvers import available as solvers_available

    n = lambda k: FLAG_OF.get(k, k)  # noqa: E731
    if cfg["solver"] not in ("auto", None):
        check_choice("--solver", cfg["solver"], solvers_available() + ["auto"])
    check_choice("--task", cfg["task"], TASKS)
    check_choice("--mask", cfg["mask"], MASK_CHOICES + ("poisson",))
    check_choice("npy", cfg["npy"], ("image", "sinogram"))
    check_choice("inpaint", cfg["inpaint"], ("random", "box"))
    check_number(n("acceleration"), cfg["acceleration"], lo=1)
    if cfg["center_fraction"] is not None:
        check_number(n("center_fraction"), cfg["center_fraction"], lo=0, hi=1, lo_open=True, hi_open=True)
    if cfg["espirit_cache"] is not None and not isinstance(cfg["espirit_cache"], str):
        fail("espirit_cache", "a folder path or null", cfg["espirit_cache"], TypeError)
    if cfg["image_size"] is not None:
        check_int("image_size", cfg["image_size"], lo=2)
    check_number(n("keep"), cfg["keep"], lo=0, hi=1, lo_open=True)
    check_number("box_frac", cfg["box_frac"], lo=0, hi=1, lo_open=True, hi_open=True)
    check_number("blur_std", cfg["blur_std"], lo=0, lo_open=True)
    check_int("blur_size", cfg["blur_size"], lo=1)
    check_int("batch_slices", cfg["batch_slices"], lo=1)
    check_int("n_samples", cfg["n_samples"], lo=1)
    check_common_config(cfg, FLAG_OF)   # prior, views, angle_range, coils, espirit_*, noise, seed, threads, device, ...
    for k in ("write_dicom", "overwrite", "progress", "strict", "ct_pad_square", "check_target", "calibration",
              "noise_floor"):
        check_bool(n(k), cfg[k])
    if cfg["coil_support"] != "auto" and not isinstance(cfg["coil_support"], bool):
        fail(n("coil_support"), "auto, true or false", cfg["coil_support"], TypeError)
    if cfg["max_memory_gb"] is not None:
        check_number(n("max_memory_gb"), cfg["max_memory_gb"], lo=0, lo_open=True)
    for k in ("acceleration", "seed", "views", "coils", "batch_slices", "n_samples", "threads", "blur_size"):
        if isinstance(cfg[k], float) and cfg[k].is_integer():
            cfg[k] = int(cfg[k])
    return cfg


def _check_calibration(cfg, solver):
    """--calibration: a fitted (prior, solver) scale and a std map to scale, checked before any input is solved."""
    from ..priors.calibration import known_pairs, std_scale

    if std_scale(cfg["prior"], solver) is None:
        fail("--calibration", "a (prior, solver) pair with a std scale fitted on held-out phantoms (one of "
                              f"{', '.join(known_pairs()) or 'none shipped'})", f"{cfg['prior']}/{solver}")
    if int(cfg["n_samples"]) < 2:
        fail("n_samples", "> 1 with --calibration (the std map is the spread of the samples / particles)",
             cfg["n_samples"])


# ------------------------------------------------------------------------------------------------
# inputs: what the headers show (discovery, shards, seeds and the loop: invdiff.jobs; formats: invdiff.datasets.inputs)
# ------------------------------------------------------------------------------------------------
def discover(inputs, cfg) -> list[Item]:
    """Items from files and folders (recursively; a folder of DICOM files is one series)."""
    from ..datasets.inputs import DESCRIPTION, classify_file, is_series_folder
    from ..jobs import discover as discover_items

    return discover_items(inputs, lambda p, explicit: classify_file(p, npy=cfg["npy"], explicit=explicit),
                          folder=is_series_folder, what=DESCRIPTION)


def probe(item: Item, cfg) -> Item:
    """Classify an input, choose its task and output name and read its sizes from the header (no pixel data);
    problems that can be seen there (a damaged file, an image too small to score, a CT padding or an operator
    that would not fit in memory, a fastMRI target that disagrees with its header) go to ``item.error``."""
    from ..datasets.fastmri import DataFileError, inspect_fastmri
    from ..datasets.inputs import input_shape, output_name, probe_h5

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
    from ..datasets.fastmri import DataFileError

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
    from ..operators.coils import acs_width

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
    from ..datasets.fastmri import _open_h5, column_mask

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
    from ..datasets.volumes import image_size_for_detectors

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


def _check_sizes(item: Item, cfg, volume: bool | None = None) -> str | None:
    """The per-input checks that need only the header: an error message, or None. ``volume``: whether the input is
    solved as one volume (None: when the solver is a volume solver)."""
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
    if volume is None:
        volume = is_volume_solver(cfg["solver"]) if cfg["solver"] not in (None, "auto") else False
    est, grid = estimate_gb(item.task, info, cfg, volume=volume)
    limit = memory_limit_gb(cfg)
    if est > limit:
        return (f"{item.path}: its {item.task} operator ({grid}) needs about {est:.3g} GiB, more than the limit "
                f"--max-memory {limit:.3g} GiB; lower --set batch_slices=, or raise --max-memory")
    return None




#: relative L2 error above which a fastMRI target is not the image of its own (fully sampled) k-space
TARGET_TOLERANCE = 0.1


def _check_target_content(path, vol):
    """The target of a training/validation file is the RSS (multi-coil) or ESC (single-coil) image of its fully
    sampled k-space, centre-cropped: a target that is not (another file's, a transposed or rescaled one) is
    refused, because every score against it would be meaningless (fastMRI itself would score it silently)."""
    from ..datasets.fastmri import DataFileError, zero_filled
    from ..metrics import center_crop

    ref = center_crop(zero_filled(vol.kspace), vol.target.shape[-2:])
    err = float(np.linalg.norm(ref - vol.target) / max(np.linalg.norm(vol.target), 1e-30))
    if not err <= TARGET_TOLERANCE:
        raise DataFileError(path, f"target '{vol.info.target_key}' is not the image of the file's own fully sampled "
                                  f"k-space (relative error {err:.2f} > {TARGET_TOLERANCE}): scores against it would "
                                  "be meaningless (fix the file, or --set check_target=false to score anyway)")

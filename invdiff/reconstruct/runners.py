"""``invdiff reconstruct``'s per-input work: build each input's measurements and operator (measured fastMRI k-space,
sinograms; simulated tasks on clean volumes and images), solve its slices (2D solvers in batches, volume solvers
as one stack), write its outputs and record, and merge the records into the index."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .._validate import fail
from ..jobs import Item, solves_whole_volumes, to_device
from .checks import _acs_error, _check_target_content


def item_seed(cfg, name: str) -> int:
    from ..jobs import item_seed as seed_of

    return seed_of(int(cfg["seed"]), name)


def _solve_chunks(n: int, cfg, build, prior, solver, options, seed: int):
    """Solve the n slices of an input: ``build(lo, hi, gen, volume) -> (y, physics)``; returns (means, stds, nfe)
    with means/stds ``(n, C, H, W)``.

    2D solvers: chunks of ``batch_slices`` slices in the batch axis. Volume solvers (``register(..., volume=True)``)
    and native 3D priors (any solver, through its volume path): the whole stack as one volume ``(1, C, n, H, W)``
    under a volume operator (slice stack), with a 2D prior lifted slice by slice (``invdiff.priors.lift``,
    ``batch_slices`` slices per network call).
    """
    import invdiff

    device = cfg.get("device", "cpu")
    if solves_whole_volumes(solver, prior):
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


def coil_support(cfg, solver: str) -> bool:
    """Whether a multi-coil image is zeroed where no ESPIRiT map reaches: ``cfg["coil_support"]``; "auto": when
    ``solver`` uses a prior or the output gets the noise floor (``noise_floor``, which then fills that air). Measured
    (benchmarks/results/realsize_mri.md, knee tuning file, fastMRI RSS target): DDS with ``mri-anatomy-patch64``
    paints structure there (26.6 -> 39.9 dB at 4x, 25.2 -> 31.4 at 8x with zeroing); l1-wavelet gains 0.2 / 0.03 dB
    from zeroing with the noise floor and loses 1.2 / 0.1 dB without it (its own residual noise is then closer to
    the target's air than zero is)."""
    from ..solvers import get

    v = cfg.get("coil_support", "auto")
    return (get(solver).needs_prior or bool(cfg.get("noise_floor", True))) if v == "auto" else bool(v)


def noise_floor(k: np.ndarray) -> tuple[float, float]:
    """``(sigma, F)`` of a volume's measured k-space ``k`` (slices, [coils,] H, W): the thermal noise std per real
    component (:func:`invdiff.datasets.fastmri.kspace_noise_std`: k-space corners and the readout ends of the coil
    images; 0 where it cannot be estimated)
    and the fastMRI target's mean noise floor, the RSS of the coils' noise (multi-coil ``reconstruction_rss``) or
    its magnitude (single-coil ``reconstruction_esc``): :func:`invdiff.datasets.fastmri.rss_noise_floor`. Measured
    on the 8 evaluation files of benchmarks/realsize_mri.py (15 coils, k-space masked at 8x): F within 0.7 % of the
    target's background median."""
    from ..datasets.fastmri import kspace_noise_std, rss_noise_floor

    sigma = kspace_noise_std(k)
    sigma = sigma if np.isfinite(sigma) else 0.0
    return sigma, rss_noise_floor(sigma, int(k.shape[1]) if k.ndim == 4 else 1)


def _run_fastmri(item: Item, cfg, prior, solver, options, seed):
    from ..datasets.fastmri import (apply_mask, column_mask, default_mask_kind, kspace_scale, kspace_to_tensor,
                                   read_fastmri)
    from ..metrics import center_crop, fastmri_metrics
    from ..operators import MRI, MultiCoilMRI, espirit_maps

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
    support = []                                   # per slice: where some ESPIRiT map is non-zero

    def build(lo, hi, gen, volume):
        y = kspace_to_tensor(k[lo:hi]).movedim(0, 1).contiguous()            # (b, 2, [N], H, W)
        size = (2, hi - lo, H, W) if volume else (2, H, W)                    # volumes: slice-wise 2D FFTs
        sigma = float(cfg["noise"])
        if vol.info.challenge == "singlecoil":
            return (y.movedim(0, 1)[None] if volume else y), MRI(mask2d, img_size=size, sigma=sigma, rng=gen)
        maps = espirit_maps(y, calib_width=int(cfg["espirit_calib"]), kernel_width=int(cfg["espirit_kernel"]),
                            mask=mask2d, cache_dir=cfg["espirit_cache"])     # (b, N, H, W), one set per slice
        support.append(maps.abs().amax(1) > 0)                               # (b, H, W)
        if volume:                                                            # (1, 2, N, D, H, W), maps (N, D, H, W)
            return y.permute(1, 2, 0, 3, 4)[None].contiguous(), MultiCoilMRI(mask2d, maps.movedim(0, 1), size,
                                                                              sigma=sigma, rng=gen)
        return y, MultiCoilMRI(mask2d, maps, img_size=size, sigma=sigma, rng=gen)

    mean, std, nfe = _solve_chunks(k.shape[0], cfg, build, prior, solver, options, seed)
    if support and coil_support(cfg, solver):
        # ESPIRiT zeroes the maps where no coil has signal (air): A is blind there, so the image there is only the
        # solver's regulariser; zero it, as SENSE images are (coil_support)
        sup = torch.cat(support)[:, None].to(mean.device)
        mean = mean * sup
        std = None if std is None else std * sup
    crop = vol.info.recon_size
    recon = center_crop(_magnitude(mean) * scale, crop).astype(np.float32)
    sigma, floor = (v * scale for v in noise_floor(k))
    floor = floor if cfg["noise_floor"] else 0.0
    if floor > 0:       # the target is the magnitude of noisy coil images: E[target] ~ sqrt(|x|^2 + F^2)
        recon = np.sqrt(recon.astype(np.float64) ** 2 + floor ** 2).astype(np.float32)
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
             "solver": solver, "prior": str(cfg["prior"]), "nfe": nfe, "challenge": vol.info.challenge,
             "noise_floor": floor, "kspace_noise_std": sigma}
    return recon, extra, metrics, {"nfe": nfe, "attrs": attrs, "shape": list(recon.shape)}




def _simulate_physics(task: str, cfg, H: int, W: int, name: str, gen: torch.Generator):
    """(physics, pad) for a simulated task on (H, W) slices; CT pads to a square (pad = (N, H, W))."""
    from ..operators import (CT, MRI, Blur, Inpainting, MultiCoilMRI, birdcage_maps, box_mask, gaussian_kernel,
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
    from ..datasets.volumes import crop_from_square, pad_to_square, read_image, read_volume
    from ..metrics import fastmri_metrics
    from ..operators import SliceWise

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
    from ..datasets.volumes import ct_operator, read_sinogram
    from ..operators import SliceWise

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


def _calibrate(extra: dict, info: dict, cfg, solver) -> dict | None:
    """Add ``<std key>_calibrated`` = factor * std to ``extra`` and a note to the fastMRI attributes; returns the note."""
    from ..priors.calibration import std_scale

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
    from ..datasets.inputs import write_outputs

    write_outputs(item.kind, item.path, out / item.out_name, recon, extra, info, write_dicom=bool(cfg["write_dicom"]))


def reconstruct_item(item: Item, out: Path, cfg, prior, solver, options, rank: int = 0) -> dict:
    """Reconstruct one input, write its outputs; returns its record (also written to OUT/records/)."""
    from ..bench.measure import PeakMemory
    from ..jobs import write_record

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
        from ..jobs import record_path

        record_path(out, item.out_name).unlink(missing_ok=True)
        raise
    return rec




# ------------------------------------------------------------------------------------------------
# the merged index
# ------------------------------------------------------------------------------------------------
def write_index(out: Path, items: list[Item], cfg, options) -> dict:
    """Merge every input's record into OUT/index.json and OUT/metrics.{json,md,csv} (rank 0, after the barrier)."""
    from ..bench.tables import write_results
    from ..io_utils import atomic_write_json
    from ..jobs import merge_records
    from ..metrics import fastmri_summary

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



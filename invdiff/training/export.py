"""Sampling, denoising evaluation and export: a checkpoint (final or intermediate) becomes shipped artefacts —
EMA weights, a model card with held-out denoising PSNR, the loss curve CSV and a grid of samples from a
deterministic EDM Heun sampler (:func:`edm_heun_sampler`, Karras et al. 2022, Algorithm 1)."""
from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import torch

from .._validate import fail
from .checkpoint import read_train_checkpoint
from ..priors.neural import NeuralPrior
from .config import PHANTOM_KINDS, regenerate_command


# ================================================================================================
# sampling, evaluation, export
# ================================================================================================
@torch.no_grad()
def edm_heun_sampler(prior, shape, *, steps: int = 32, sigma_min: float | None = None, sigma_max: float | None = None,
                     rho: float = 7.0, generator: torch.Generator | None = None, x_init: torch.Tensor | None = None):
    r"""Deterministic EDM sampler (Karras et al. 2022, Algorithm 1, Heun's 2nd order, S_churn = 0).

    Noise levels follow Eq. 5 (:class:`invdiff.schedules.EDMSchedule`); the defaults scale EDM's
    0.002..80 (for sigma_data = 0.5) by ``prior.sigma_data / 0.5``. Starts at ``data_shift + sigma_max * n``.
    NFE = 2 * steps - 1.
    """
    from ..schedules import EDMSchedule

    sd = getattr(prior, "sigma_data", 0.5)
    sigma_min = 0.002 * sd / 0.5 if sigma_min is None else sigma_min
    sigma_max = 80.0 * sd / 0.5 if sigma_max is None else sigma_max
    t = EDMSchedule(sigma_min=sigma_min, sigma_max=sigma_max, rho=rho).sigmas(steps).tolist() + [0.0]
    shift = getattr(prior, "data_shift", 0.0)
    x = x_init if x_init is not None else shift + t[0] * torch.randn(shape, generator=generator)
    for i in range(steps):
        d = (x - prior(x, t[i])) / t[i]                                   # Alg. 1 line 7: dx/dt = (x - D(x; t)) / t
        x_next = x + (t[i + 1] - t[i]) * d                                # line 8: Euler step
        if t[i + 1] > 0:                                                  # line 9-11: 2nd-order correction
            d2 = (x_next - prior(x_next, t[i + 1])) / t[i + 1]
            x_next = x + (t[i + 1] - t[i]) * (d + d2) / 2
        x = x_next
    return x


def psnr(x_hat: torch.Tensor, x: torch.Tensor, peak: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB with a fixed peak; for 2-channel complex images the error is |x_hat - x|^2 per pixel."""
    err = (x_hat - x) ** 2
    mse = err.sum(1).flatten(1).mean(1)  # channels summed = |.|^2 for complex, plain MSE for 1 channel
    return 10 * torch.log10(peak ** 2 / mse.clamp_min(1e-20))


def _tv_denoise(y: torch.Tensor, weight: float) -> torch.Tensor:
    from skimage.restoration import denoise_tv_chambolle
    import numpy as np

    out = [denoise_tv_chambolle(img.movedim(0, -1).double().numpy(), weight=weight, channel_axis=-1) for img in y]
    return torch.from_numpy(np.stack(out)).movedim(-1, 1).float()  # (B, C, H, W) or (B, C, D, H, W)


_TV_WEIGHTS = (0.01, 0.02, 0.04, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5)


def tv_baseline(y_tune, x_tune, y, *, weights=_TV_WEIGHTS):
    """Classical baseline: TV denoising (Chambolle 2004) with the weight chosen on separate tuning images."""
    best = max(weights, key=lambda w: float(psnr(_tv_denoise(y_tune, w), x_tune).mean()))
    return _tv_denoise(y, best), best


@torch.no_grad()
def evaluate_denoising(prior, kind: str, *, size: int = 64, n_images: int = 64, sigmas=(0.05, 0.1, 0.2, 0.5),
                       seed: int = 1234, baseline: bool = True) -> dict:
    """Held-out denoising PSNR (mean over images) for the prior, the noisy input and a tuned TV baseline,
    on phantoms (or volumes, kind 'ct3d') from held-out seeds and on Shepp-Logan (out of distribution)."""
    from ..datasets.phantoms import GENERATORS, shepp_logan, split_seeds
    from ..datasets.phantoms3d import GENERATORS3D, shepp_logan_3d

    gen = GENERATORS[kind] if kind in GENERATORS else GENERATORS3D[kind]
    x = gen(split_seeds("heldout", n_images), size)
    x_tune = gen(split_seeds("heldout", 8, start=500_000), size)
    sl = shepp_logan_3d(size) if kind in GENERATORS3D else shepp_logan(size, complex=kind.startswith("mri"))
    g = torch.Generator().manual_seed(seed)
    rows = []
    for s in sigmas:
        n, nt, ns = (torch.randn(t.shape, generator=g) for t in (x, x_tune, sl))
        y, yt, ys = x + s * n, x_tune + s * nt, sl + s * ns
        den = torch.cat([prior(y[i:i + 16], s) for i in range(0, len(y), 16)])
        row = {"sigma": s, "noisy_psnr": float(psnr(y, x).mean()), "prior_psnr": float(psnr(den, x).mean()),
               "ood_noisy_psnr": float(psnr(ys, sl).mean()), "ood_prior_psnr": float(psnr(prior(ys, s), sl).mean())}
        if baseline:
            tv, w = tv_baseline(yt, x_tune, y)
            row.update(tv_psnr=float(psnr(tv, x).mean()), tv_weight=w,
                       ood_tv_psnr=float(psnr(_tv_denoise(ys, w), sl).mean()))
        rows.append(row)
    return {"kind": kind, "size": size, "n_images": n_images,
            "heldout_seeds": f"[{split_seeds('heldout', 1)[0]}, {split_seeds('heldout', 1)[0] + n_images})",
            "rows": rows}


def central_slices(volumes: torch.Tensor) -> torch.Tensor:
    """(N, C, D, H, W) -> (3N, C, S, S): the central axial, coronal and sagittal slices of each volume (cubic volumes)."""
    d, h, w = volumes.shape[-3:]
    if not d == h == w:
        fail("volumes", "cubic volumes (D = H = W)", volumes)
    views = [volumes[:, :, d // 2], volumes[:, :, :, h // 2], volumes[:, :, :, :, w // 2]]
    return torch.stack(views, 1).flatten(0, 1)


def save_sample_grid(samples: torch.Tensor, path, title: str = "", cols: int | None = None) -> None:
    """Save a grid of 2D samples (N, C, H, W); volumes (N, C, D, H, W) are shown as one row per sample of
    their central axial / coronal / sagittal slices."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if samples.dim() == 5:
        samples, cols = central_slices(samples), 3
        title = title + ("\n(rows: samples; columns: central axial / coronal / sagittal slice)" if title else "")
    n = samples.shape[0]
    cols = cols or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    complex_ = samples.shape[1] == 2
    fig, axes = plt.subplots(rows * (2 if complex_ else 1), cols, figsize=(1.6 * cols, 1.6 * rows * (2 if complex_ else 1)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        r, c = divmod(i, cols)
        if complex_:
            mag = samples[i].norm(dim=0)
            axes[2 * r, c].imshow(mag, cmap="gray", vmin=0, vmax=1)
            phase = torch.atan2(samples[i, 1], samples[i, 0]).masked_fill(mag < 0.1, float("nan"))  # phase of background noise is meaningless
            cmap = matplotlib.colormaps["twilight"].with_extremes(bad="black")
            axes[2 * r + 1, c].imshow(phase, cmap=cmap, vmin=-math.pi, vmax=math.pi)
        else:
            axes[r, c].imshow(samples[i, 0].clamp(0, 1), cmap="gray", vmin=0, vmax=1)
    if title:
        fig.suptitle(title + (" (rows: magnitude / phase where magnitude > 0.1)" if complex_ else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def export_dir(checkpoint, weights_dir=None) -> Path:
    """Where :func:`export` writes: ``weights_dir`` when given, else the run folder of ``checkpoint``
    (``<out>/<name>`` for ``<out>/<name>/ckpt/*.safetensors``) -- never the installed package by default."""
    return Path(weights_dir) if weights_dir else Path(checkpoint).resolve().parents[1]


def check_not_shipped(wdir, name: str, overwrite_shipped: bool = False) -> None:
    """Refuse to replace a shipped prior (a name of :data:`invdiff.priors.registry.SHIPPED`, or any prior already
    in the package's weights folder) unless ``overwrite_shipped`` says so explicitly (``--overwrite-shipped``)."""
    from ..priors.registry import SHIPPED, WEIGHTS_DIR

    if overwrite_shipped or Path(wdir).resolve() != WEIGHTS_DIR.resolve():
        return
    if name in SHIPPED or (WEIGHTS_DIR / f"{name}.safetensors").exists():
        fail("weights_dir", f"a folder outside the installed package for the shipped prior name {name!r} (the "
                            "default is the run folder), or --overwrite-shipped to replace the shipped weights",
             str(wdir))


def export(checkpoint, *, weights_dir=None, name: str | None = None, dtype: str = "float16", eval_images: int = 64,
           sigmas=(0.05, 0.1, 0.2, 0.5), sample_steps: int = 32, n_samples: int = 16, loss_csv=None,
           command: str | None = None, threads: int | None = None, overwrite_shipped: bool = False) -> dict:
    """Write ``<name>.safetensors`` (EMA weights), ``<name>.md`` (model card), ``<name>_samples.png`` and
    ``<name>_loss.csv`` from a training checkpoint (final or intermediate). Returns the evaluation dict.

    The artefacts go to ``weights_dir``, by default the run folder (:func:`export_dir`); replacing a shipped prior
    in the installed package needs ``overwrite_shipped=True`` (:func:`check_not_shipped`)."""
    if threads:
        torch.set_num_threads(threads)
    meta, tensors = read_train_checkpoint(checkpoint)
    cfg = meta["config"]
    name = name or cfg["name"]
    wdir = export_dir(checkpoint, weights_dir)
    check_not_shipped(wdir, name, overwrite_shipped)
    wdir.mkdir(parents=True, exist_ok=True)
    pmeta = dict(meta["prior"])
    pmeta["name"] = name
    ema = {k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")}
    prior = NeuralPrior.from_state(pmeta, ema, source=str(checkpoint))
    kind = cfg["data"] if cfg["data"] in PHANTOM_KINDS else None
    info = {"step": meta["step"], "data": cfg["data"], "training_config": cfg,
            "trained_with": "invdiff.training (EDM loss, Karras et al. 2022)",
            "regenerate": command or regenerate_command(cfg, meta["step"])}
    conditional = bool(cfg.get("conditional"))
    if conditional:  # conditional hook: what the prior was trained for, in its metadata
        from . import conditional as cond_mod
        info["conditional"] = cond_mod.info(cfg)
    prior.info = info
    torch_dtype = torch.float16 if dtype == "float16" else torch.float32
    out = wdir / f"{name}.safetensors"
    prior.save(out, dtype=torch_dtype)
    shipped = NeuralPrior.load(out)
    # check the storage dtype costs nothing measurable
    probe = (torch.Generator().manual_seed(0))
    spatial = (cfg["size"],) * prior.spatial_dims
    x = torch.randn(4, prior.channels, *spatial, generator=probe) * 0.2 + prior.data_shift
    c = torch.randn(4, prior.cond_channels, *spatial, generator=probe) if conditional else None
    with torch.no_grad():
        dev = float((shipped.denoise(x, 0.1, c) - prior.denoise(x, 0.1, c)).abs().max())
    ev = {}
    if kind and not conditional:
        ev = evaluate_denoising(shipped, kind, size=cfg["size"], n_images=eval_images, sigmas=sigmas)
    g = torch.Generator().manual_seed(0)
    t0 = time.time()
    if conditional:  # conditional hook: held-out reconstructions; grid rows = truth, A^dagger y, sample
        cond_ev, samples = cond_mod.evaluate(shipped, cfg, n_images=eval_images, sample_steps=sample_steps,
                                             n_show=n_samples)
    else:
        samples = edm_heun_sampler(shipped, (n_samples, prior.channels, *spatial), steps=sample_steps, generator=g)
    t_sample = time.time() - t0
    save_sample_grid(samples, wdir / f"{name}_samples.png", cols=samples.shape[0] // 3 if conditional else None,
                     title=f"{name}: EDM Heun, {sample_steps} steps, step {meta['step']}")
    loss_src = Path(loss_csv) if loss_csv else Path(checkpoint).parents[1] / "loss.csv"
    loss_rows = []
    if loss_src.is_file():
        with open(loss_src) as f:
            loss_rows = [r for r in csv.reader(f)][1:]
        loss_rows = [r for r in loss_rows if r and int(r[0]) <= meta["step"]]
        with open(wdir / f"{name}_loss.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "loss", "lr", "sec_per_step", "wall_s"])
            w.writerows(loss_rows)
    card = model_card(name, meta, prior, ev, loss_rows, dtype=dtype, fp_dev=dev, sample_steps=sample_steps,
                      t_sample=t_sample, n_samples=n_samples, regenerate=info["regenerate"], file_size=out.stat().st_size)
    if conditional:  # conditional hook: conditioning and held-out reconstruction sections
        card = cond_mod.card(card, cfg, cond_ev, sample_steps=sample_steps, t_sample=t_sample,
                             step=meta["step"])
        ev = cond_ev
    (wdir / f"{name}.md").write_text(card)
    return {"weights": str(out), "eval": ev, "step": meta["step"], "fp_dev": dev}


def _loss_summary(rows, k: int = 10):
    if not rows:
        return "(no loss log found)"
    idx = sorted({int(round(i)) for i in [j * (len(rows) - 1) / (k - 1) for j in range(k)]})
    lines = ["| step | loss (EDM-weighted, mean over the last log interval) |", "|---:|---:|"]
    lines += [f"| {rows[i][0]} | {float(rows[i][1]):.4f} |" for i in idx]
    return "\n".join(lines)


def model_card(name, meta, prior, ev, loss_rows, *, dtype, fp_dev, sample_steps, t_sample, n_samples, regenerate,
               file_size) -> str:
    cfg = meta["config"]
    n_params = sum(p.numel() for p in prior.net.parameters())
    kind = cfg["data"]
    dims = int(cfg.get("dims", 2))
    nproc = int(cfg.get("nproc", 1))
    shape_str = "x".join([str(cfg["size"])] * dims)
    items = "volumes" if dims == 3 else "images"
    data_desc = {
        "ct": "CT-like random-ellipse phantoms (`invdiff.datasets.ct_phantoms`): body outline, 8-25 overlapping "
              "ellipses of random additive intensity, small bright inserts, smooth multiplicative texture; "
              "1 channel in [0, 1].",
        "mri": "MRI-like complex brain phantoms (`invdiff.datasets.mri_phantoms`): head outline, scalp, skull, CSF, "
               "grey/white matter with irregular boundary, ventricles, deep nuclei, bias field, texture, times a smooth "
               "random phase; 2 channels (real, imag), max magnitude 1.",
        "ct3d": "CT-like random-ellipsoid volumes (`invdiff.datasets.phantoms3d.ct_volumes`): body elongated along "
                "the axial axis, outer fat layer, 8-25 overlapping randomly rotated ellipsoids of random additive "
                "intensity, small bright inserts, smooth multiplicative 3D texture; 1 channel in [0, 1], (D, H, W).",
        "ct-anatomy": "Anatomy-like CT slices (`invdiff.datasets.anatomy.ct_anatomy`): abdomen (liver, spleen, kidneys, "
                      "aorta/IVC, bowel loops with air/fluid/contrast, vertebra; liver lesions), chest (lungs with "
                      "vessels and nodules, heart chambers, ribs, sternum, vertebra) and head (skull with diploe, "
                      "grey/white matter, sulci, ventricles, falx; haemorrhage / infarct / calcification); tissues "
                      "in HU mapped by the window -1000..3000 HU -> [0, 1] (water 0.25), contrast phase none / arterial "
                      "/ venous, texture, partial-volume blur; 1 channel.",
        "mri-anatomy": "Anatomy-like complex MRI slices (`invdiff.datasets.anatomy.mri_anatomy`): axial brain (folded "
                       "cortex, sulci, ventricles, deep nuclei, white-matter lesions, tumour with oedema; T1 / T2 / PD / "
                       "FLAIR) and knee (femur / tibia marrow and cortex, cartilage, menisci, ligament, joint fluid, "
                       "striated muscle, fat, skin; marrow oedema, cartilage defect; PD / PD-FS / T1 / T2-FS), receive-"
                       "coil bias field, smooth random phase, complex Gaussian noise; 2 channels, max magnitude 1.",
    }.get(kind, None)
    if data_desc is None:
        from . import files as _files

        data_desc = (f"`{kind}`" + (f": streamed from disk by `invdiff.training.files` ("
                                    + _files.__doc__.split("Per format", 1)[1].split(":", 1)[1].strip()
                                    .replace("\n", " ") + ")" if kind.startswith(("fastmri:", "nifti:", "dicom:")) else ""))
    lines = [
        f"# {name}", "",
        f"Unconditional diffusion prior (denoiser D(x, sigma) ~ E[x0 | x0 + sigma n = x], EDM preconditioning) "
        f"trained by invdiff's own training code. Load with `invdiff.priors.load({name!r})`.", "",
        "## Model", "",
        f"- architecture: `{prior.arch}` {json.dumps(prior.net_config)}; {n_params / 1e6:.2f} M parameters; fully "
        f"convolutional (trained at {shape_str}, accepts sizes that are multiples of "
        f"{2 ** (len(cfg['channel_mult']) - 1)} natively, others are padded)",
        *(["- native 3D prior (`spatial_dims = 3`): denoises volumes (B, C, D, H, W) with 3x3x3 convolutions"]
          if dims == 3 else []),
        *([f"- patch prior (PaDIS, Hu et al. 2024): trained on random {'x'.join([str(cfg['patch_size'])] * dims)} "
           f"crops of {shape_str} {'volumes' if dims == 3 else 'images'} (training cost set by the patch size; the "
           f"pixel scale is that of the {shape_str} {'volumes' if dims == 3 else 'images'}); coordinate channels of the crop in its image: {'yes' if cfg.get('positional') else 'no'}; "
           f"whole-image inference: `{prior.inference}` (`prior.set_inference('conv' | 'tiled')`); patch_size "
           f"{list(prior.patch_size)}, validated_sizes {prior.validated_sizes and [list(v) for v in prior.validated_sizes]}, "
           f"pixel_spacing {prior.pixel_spacing} (None: synthetic data)"] if cfg.get("patch_size") else []),
        f"- channels: {prior.channels} ({'complex as real/imag' if prior.channels == 2 else 'real'}); value range "
        f"{list(prior.value_range) if prior.value_range else None}",
        f"- preconditioning: EDM (Karras et al. 2022, Table 1), sigma_data = {prior.sigma_data}, data_shift = {prior.data_shift}",
        f"- weights: EMA (decay {cfg['ema_decay']}) stored as {dtype}, {file_size / 1e6:.1f} MB; max |D_{dtype} - D_fp32| on a "
        f"probe batch at sigma=0.1: {fp_dev:.2e}", "",
        "## Training data", "", data_desc,
        "" if kind not in PHANTOM_KINDS else
        f"Generated on the fly: training step k uses the {items} with seeds {cfg['batch_size']}k .. {cfg['batch_size']}k+"
        f"{cfg['batch_size'] - 1} (`invdiff.datasets.{'phantoms3d.VolumeStream' if dims == 3 else 'PhantomStream'}`), "
        f"so {meta['step']} steps saw "
        f"{meta['step'] * cfg['batch_size']} distinct {items}"
        + (f" (this run: steps {cfg['init_step'] + 1}-{meta['step']}; the earlier steps are the warm start's own data)"
           if cfg.get("init_from") else "")
        + (f", one random {'x'.join([str(cfg['patch_size'])] * dims)} crop of each" if cfg.get("patch_size") else "")
        + "; every training seed is below 1e9 "
        "(`invdiff.datasets.HELDOUT_SEED_START`) and evaluation uses seeds >= 1e9, never seen in training.", "",
        "## Training", "",
        f"- steps: {meta['step']} of {cfg['steps']} planned; batch {cfg['batch_size']}; Adam lr {cfg['lr']} "
        f"(warm-up {cfg['warmup']}), grad clip {cfg['grad_clip']}, EMA {cfg['ema_decay']}",
        *([f"- warm start: steps 1-{cfg['init_step']} are the run that exported `{cfg['init_from']}` (first command "
           f"below); this run started from its exported EMA weights ({cfg.get('export_dtype', 'float16')}) with a fresh "
           f"Adam state and a {cfg['warmup']}-step warm-up, and continued the step count (and the data stream) from "
           f"{cfg['init_step']}"] if cfg.get("init_from") else []),
        f"- loss: EDM (Karras et al. 2022, Eq. 2), ln sigma ~ N({cfg['p_mean']}, {cfg['p_std']}^2), "
        f"lambda = (sigma^2 + sigma_data^2)/(sigma sigma_data)^2",
        f"- {cfg['threads']} torch thread(s) on CPU"
        + (f" per process, {nproc} data-parallel processes (torch.distributed {cfg.get('dist_backend', 'gloo')}, "
           f"{cfg['batch_size'] // nproc} {items} per process and step)" if nproc > 1 else "")
        + f"; full loss log: `{name}_loss.csv`", "",
        _loss_summary(loss_rows), "",
        ("Regenerate (the commands in order; each is resumable and exports its artefacts at the end). "
         if cfg.get("init_from") else
         "Regenerate (exact command; resumable: re-running continues from the last checkpoint; it exports these "
        "artefacts at the end). ") + "Without the `invdiff` console script use `python -m invdiff.training` with the "
        "same flags; `--export only [--checkpoint FILE]` re-exports any checkpoint:", "", "```", regenerate, "```", "",
    ]
    if ev:
        lines += ["## Held-out denoising", "",
                  f"PSNR (dB, peak 1{', complex error |x_hat - x|^2' if prior.channels == 2 else ''}) averaged over "
                  f"{ev['n_images']} held-out {'volumes' if dims == 3 else 'phantoms'} (seeds {ev['heldout_seeds']}) at "
                  f"{'x'.join([str(ev['size'])] * dims)}, "
                  f"Gaussian noise of std sigma per real channel. TV = total-variation denoising (Chambolle 2004, "
                  f"skimage{', in 3D' if dims == 3 else ''}) with the weight tuned per sigma on 8 other held-out "
                  f"{'volumes' if dims == 3 else 'phantoms'}. OOD = "
                  + ("3D Shepp-Logan (sigpy)" if dims == 3 else
                     f"modified Shepp-Logan ({'with a smooth phase' if prior.channels == 2 else 'real'})")
                  + ", never seen in training.", "",
                  "| sigma | noisy | TV (tuned) | this prior | OOD noisy | OOD TV | OOD this prior |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for r in ev["rows"]:
            lines.append(f"| {r['sigma']} | {r['noisy_psnr']:.2f} | {r.get('tv_psnr', float('nan')):.2f} | "
                         f"**{r['prior_psnr']:.2f}** | {r['ood_noisy_psnr']:.2f} | {r.get('ood_tv_psnr', float('nan')):.2f} | "
                         f"{r['ood_prior_psnr']:.2f} |")
        lines.append("")
    lines += ["## Samples", "",
              f"`{name}_samples.png`: {n_samples} unconditional samples"
              f"{' (one row each: central axial / coronal / sagittal slice)' if dims == 3 else ''}, deterministic EDM Heun sampler "
              f"(Karras et al. 2022, Alg. 1), {sample_steps} steps ({2 * sample_steps - 1} NFE), seed 0, "
              f"{t_sample:.1f} s on CPU.", "",
              "## Limitations", "",
              "Synthetic training data only: a prior for tests, demos and method comparisons on phantoms, not for "
              "clinical images. Small network trained briefly on CPU.", ""]
    return "\n".join(lines)



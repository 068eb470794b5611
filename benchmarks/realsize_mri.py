"""Real-size MRI (issue 11): diffusion solvers with a patch prior vs l1-wavelet on 320x320 multi-coil fastMRI-format
files (15 coils, 640 x 368 k-space), through ``invdiff reconstruct`` exactly as a user runs it.

Data: fastMRI-format multi-coil files written by :func:`invdiff.datasets.synthetic_fastmri.write_synthetic_fastmri`
with ``phantom="anatomy"``: one held-out anatomy-like brain or knee slice per file (seeds never seen in training: the
real-size priors train on the other split), complex with smooth phase and bias field, without the generator's
image-domain noise (a scanner's thermal noise is in each coil's k-space, below), filling the 368 x 368 centre of a
640 x 368 field of view (fastMRI's 2x readout oversampling), 15 sigpy birdcage coils, and thermal noise independent
per coil: complex Gaussian k-space noise of std ``--noise`` (default 0.005, i.e. 0.0035 per real component on the
image's [0, 1] magnitude scale; a root-sum-of-squares noise floor of about 2 % of the maximum in the background, as
in fastMRI knee scans); the target is the file's ``reconstruction_rss`` (320 x 320) of the noisy fully sampled
k-space, as in fastMRI. Every method is told the true noise level (``--set noise=NOISE/sqrt 2``). Without per-coil
noise the 15 coils make 4x sampling nearly a well-posed SENSE problem and any method that fits the data to the last
digit wins (so would noise added to the object, identical in every coil: it is measured and recoverable, unlike
thermal noise); with 3x more noise (0.0141) the background noise floor of the target, which no method recovers,
dominates every method's error. ``--images`` evaluation files (file seeds 300..) and ``--tune-images`` tuning files
(seeds 400..).

Reconstruction: ``invdiff reconstruct FOLDER --acceleration R`` with its defaults: fastMRI's knee mask
(``RandomMaskFunc``, centre fraction 0.08 at 4x and 0.04 at 8x, seeded by the file name, so every method sees the same
k-space), ESPIRiT maps from the ACS lines (sigpy; cached, computed once per file and acceleration), the whole
640 x 368 field of view solved (zeroed where no ESPIRiT map reaches, ``coil_support``, where that was better on the
tuning files: ``--coil-support tuned``), the magnitude centre-cropped to 320 x 320 and, as ``reconstruct`` writes it
by default (``noise_floor``), returned as the estimate of the noisy target sqrt(|x|^2 + F^2), F the mean
root-sum-of-squares floor of the coils' thermal noise estimated from the k-space (the same for every method), scored
by the fastMRI protocol (PSNR with the target's maximum, SSIM 7x7) against the file's ``reconstruction_rss``. Methods,
each tuned on the tuning files per acceleration, then run on the evaluation files:

- zero-filled (the adjoint: ESPIRiT coil combination of the zero-filled coil images);
- l1-wavelet (sigpy, 100 FISTA iterations): ``lam`` from ``L1W_LAMS``;
- the diffusion solvers of ``--solvers`` with the prior: DiffPIR (100 NFE) with ``lambda_`` and DDS (50 NFE) with
  ``gamma`` from ``{1/3, 1, 3} x`` the value the solver would use (measured table), posterior mean of ``--chains``
  chains (``--set n_samples``).

Per method: PSNR / SSIM / NMSE averaged over the files (fastMRI protocol against the RSS target; ``PSNR_clean`` /
``SSIM_clean``: the same protocol against the noise-free anatomy slice, a reference a scanner does not give but that
separates the anatomy from the target's noise floor; ``PSNR_nofloor`` / ``SSIM_nofloor``: |x| without the noise
floor, against the RSS target; both from the written image with F taken out exactly), the paired difference best
diffusion solver - l1-wavelet with its standard error, NFE, seconds per slice (1 torch thread, ESPIRiT time
included except where its cache had the maps; wall time on a shared 2-core machine) and peak memory growth, from
``reconstruct``'s per-file records.
``--cache`` keeps the files, the ESPIRiT maps and every reconstruction folder (one per method, options, prior and
acceleration), so an interrupted run resumes (``reconstruct`` skips finished files) and a newer prior only re-runs
its own rows.

Usage: python benchmarks/realsize_mri.py --prior mri-anatomy-patch64 --cache CACHE --images 8 --solvers dds
       [--accelerations 4 8] [--noise-floor on|off]
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from invdiff.bench import write_results
from invdiff.bench.harness import option_default, weights_sha

L1W_LAMS = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2)
TUNED_OPTION = {"dds": "gamma", "diffpir": "lambda_"}
FACTORS = (1 / 3, 1.0, 3.0)
STEPS = {"dds": 50, "diffpir": 100}
COILS, SHAPE, RECON, SCALE = 15, (640, 368), (320, 320), 1e-3      # SCALE: write_synthetic_fastmri's default
SEEDS = {"eval": 300, "tune": 400}


def files(cache: Path, split: str, n: int, noise: float) -> Path:
    """The folder of ``n`` fastMRI-format files of ``split`` (written once, atomically)."""
    from invdiff.datasets.synthetic_fastmri import write_synthetic_fastmri

    folder = cache / f"data_noise{noise:g}" / split
    for i in range(n):
        f = folder / f"file_rsm_{split}_{i:03d}.h5"
        if not f.is_file():
            write_synthetic_fastmri(f, n_slices=1, coils=COILS, shape=SHAPE, recon_size=RECON, phantom="anatomy",
                                    seed=SEEDS[split] + i, acquisition="CORPD_FBK", noise=noise)
    return folder


def clean_target(split: str, i: int) -> np.ndarray:
    """(1, 320, 320) the noise-free magnitude of file ``i`` of ``split`` (the anatomy slice before coils and
    noise), on the file's scale: a second reference that leaves out the thermal noise floor of the RSS target."""
    from invdiff.datasets.anatomy import mri_anatomy_np
    from invdiff.datasets.phantoms import split_seeds
    from invdiff.metrics import center_crop

    seed = split_seeds("heldout", 1, start=1000 * (SEEDS[split] + i))[0]
    return center_crop(np.abs(mri_anatomy_np(seed, min(SHAPE), thermal_noise=False))[None] * SCALE, RECON)


def reconstruct(cache: Path, split: str, n: int, noise: float, acc: int, solver: str, options: dict,
                prior: str | None, tag: str, chains: int = 1, support: bool = False, floor: bool = True) -> list[dict]:
    """``invdiff reconstruct`` of the ``split`` files; one record per file (name, metrics, NFE, seconds, memory;
    ``*_nofloor`` / ``*_clean``: the written image with its noise floor taken out, against the RSS target / the
    noise-free slice)."""
    import h5py

    from invdiff.cli import main
    from invdiff.metrics import fastmri_metrics

    folder = files(cache, split, n, noise)
    key = json.dumps([split, noise, acc, solver, sorted(options.items()), tag, chains]
                     + (["coil_support"] if support else []) + (["noise_floor"] if floor else []))
    out = cache / "runs" / f"{acc}x_{split}_{solver}_{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    argv = ["reconstruct", str(folder), "--out", str(out), "--solver", solver, "--acceleration", str(acc),
            "--set", "progress=false", "--set", f"espirit_cache={cache / 'espirit'}", "--set", f"n_samples={chains}",
            "--set", f"noise={noise / 2 ** 0.5:.6g}", "--set", f"coil_support={str(support).lower()}",
            "--set", f"noise_floor={str(floor).lower()}"]
    argv += ["--prior", prior] if prior else []
    for k, v in options.items():
        argv += ["--set", f"solver.{k}={v}"]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            main(argv)
        except SystemExit as e:
            if e.code not in (0, None):
                raise RuntimeError(f"reconstruct failed ({e.code}): {' '.join(argv)}") from e
    recs = [json.loads(p.read_text()) for p in sorted((out / "records").glob("*.json"))]
    if len(recs) < n:
        raise RuntimeError(f"{out}: {len(recs)} of {n} records")
    rows = []
    for r in recs[:n]:
        name = Path(r["input"]).name                                  # file_rsm_<split>_<index>.h5
        with h5py.File(out / name) as f:                              # |x| = sqrt(written^2 - F^2), exactly
            img = np.sqrt(np.maximum(f["reconstruction"][()].astype(np.float64) ** 2
                                     - float(f.attrs.get("noise_floor", 0.0)) ** 2, 0.0))
        clean = fastmri_metrics(img, clean_target(split, int(Path(name).stem[-3:])))
        with h5py.File(folder / name) as f:
            raw = fastmri_metrics(img, f["reconstruction_rss"][()])
        rows.append({"file": name, **r["metrics"], "PSNR_clean": clean["PSNR"], "SSIM_clean": clean["SSIM"],
                     "PSNR_nofloor": raw["PSNR"], "SSIM_nofloor": raw["SSIM"],
                     "nfe": r["nfe"], "seconds": r["seconds"], "peak_mb": r["peak_mb"]})
    return rows


def _operator(folder: Path, acc: int, noise: float):
    """The multi-coil operator kind of the benchmark at ``acc`` (flat maps): what the solvers' defaults read."""
    from invdiff.datasets.fastmri import column_mask, inspect_fastmri
    from invdiff.operators import MultiCoilMRI

    f = sorted(folder.glob("*.h5"))[0]
    info = inspect_fastmri(f)
    cols = column_mask(info, "auto", acc)
    H, W = info.shape
    maps = torch.ones(COILS, H, W, dtype=torch.complex64) / COILS ** 0.5
    return MultiCoilMRI(cols[None].expand(H, W).contiguous(), maps, (2, H, W), sigma=noise / 2 ** 0.5)


def _mean(rs, k="PSNR"):
    return sum(r[k] for r in rs) / len(rs)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", required=True, help="the real-size prior: a shipped name or a .safetensors file")
    ap.add_argument("--cache", required=True, help="folder for the files, ESPIRiT maps and reconstructions (resume)")
    ap.add_argument("--accelerations", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--tune-images", type=int, default=1)
    ap.add_argument("--chains", type=int, default=2)
    ap.add_argument("--coil-support", choices=("off", "on", "tuned"), default="tuned",
                    help="reconstruct's coil_support: off, on, or tuned per method on the tuning files")
    ap.add_argument("--noise", type=float, default=0.005, help="complex k-space noise std per coil")
    ap.add_argument("--noise-floor", choices=("on", "off"), default="on",
                    help="reconstruct's noise_floor (on: its default) for every method")
    ap.add_argument("--solvers", type=lambda v: v.split(","), default=["diffpir", "dds"])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--name", default="realsize_mri")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    from invdiff.priors import load

    cache = Path(a.cache)
    prior = load(a.prior)
    sha = weights_sha(a.prior)                     # reconstructions are keyed by the weights, not the file name
    tag = f"{Path(a.prior).stem}@{sha}"
    step = (prior.info or {}).get("step")
    tune_folder = files(cache, "tune", a.tune_images, a.noise)
    rows, per_image, t0 = [], [], time.time()
    supports = {"off": (False,), "on": (True,), "tuned": (False, True)}[a.coil_support]

    def label(v, sup):
        return f"{v:.3g}" + (", coil support" if sup else "")
    for acc in a.accelerations:
        def run(split, solver, options, with_prior=False, chains=1, support=False):
            n = a.images if split == "eval" else a.tune_images
            return reconstruct(cache, split, n, a.noise, acc, solver, options, a.prior if with_prior else None,
                               sha if with_prior else "-", chains, support, a.noise_floor == "on")

        tuning = {"l1-wavelet": {(lam, sup): _mean(run("tune", "l1-wavelet", {"lam": lam}, support=sup))
                                 for lam in L1W_LAMS for sup in supports}}
        lam, sup = max(tuning["l1-wavelet"], key=tuning["l1-wavelet"].get)
        methods = [("zero-filled", "-", "adjoint", {}, False, 1, False),
                   (f"l1-wavelet (lam {label(lam, sup)}, tuned)", "-", "l1-wavelet", {"lam": lam}, False, 1, sup)]
        op = _operator(tune_folder, acc, a.noise)
        for solver in a.solvers:
            opt = TUNED_OPTION[solver]
            g0 = option_default(solver, opt, op, prior)
            tune = {(f * g0, sup): _mean(run("tune", solver, {opt: round(f * g0, 4), "num_steps": STEPS[solver]},
                                             True, support=sup))
                    for f in FACTORS for sup in supports}
            best, sup = max(tune, key=tune.get)
            tuning[solver] = tune
            methods.append((f"{solver} ({opt} {label(best, sup)}, tuned; {STEPS[solver]} steps, mean of "
                            f"{a.chains})", tag, solver, {opt: round(best, 4), "num_steps": STEPS[solver]}, True,
                            a.chains, sup))
        results = {}
        for method, ptag, solver, options, with_prior, chains, sup in methods:
            rs = run("eval", solver, options, with_prior, chains, sup)
            results[method] = rs
            per_image += [{"acceleration": acc, "method": method, **r} for r in rs]
            rows.append({"acceleration": acc, "method": method, "prior": ptag, "PSNR": _mean(rs),
                         "SSIM": _mean(rs, "SSIM"), "NMSE": _mean(rs, "NMSE"),
                         "PSNR_clean": _mean(rs, "PSNR_clean"), "SSIM_clean": _mean(rs, "SSIM_clean"),
                         "PSNR_nofloor": _mean(rs, "PSNR_nofloor"), "SSIM_nofloor": _mean(rs, "SSIM_nofloor"),
                         "nfe": rs[0]["nfe"],
                         "seconds": _mean(rs, "seconds"), "peak_mb": max(r["peak_mb"] or 0 for r in rs),
                         "n": len(rs)})
        l1w = results[methods[1][0]]
        diff = [m[0] for m in methods[2:]]
        if diff:
            best_method = max(diff, key=lambda m: _mean(results[m]))
            dd = results[best_method]
            d = [b["PSNR"] - t["PSNR"] for b, t in zip(dd, l1w)]
            dc = sum(b["PSNR_clean"] - t["PSNR_clean"] for b, t in zip(dd, l1w)) / len(d)
            mu = sum(d) / len(d)
            se = (sum((v - mu) ** 2 for v in d) / max(len(d) - 1, 1) / len(d)) ** 0.5
            wins = sum(v > 0 for v in d)
            rows.append({"acceleration": acc, "method": f"best diffusion - l1-wavelet, paired ({best_method})",
                         "prior": "", "PSNR": mu, "SSIM": _mean(dd, "SSIM") - _mean(l1w, "SSIM"), "NMSE": None,
                         "PSNR_clean": dc, "SSIM_clean": _mean(dd, "SSIM_clean") - _mean(l1w, "SSIM_clean"),
                         "PSNR_nofloor": _mean(dd, "PSNR_nofloor") - _mean(l1w, "PSNR_nofloor"),
                         "SSIM_nofloor": _mean(dd, "SSIM_nofloor") - _mean(l1w, "SSIM_nofloor"),
                         "nfe": None, "seconds": se, "peak_mb": None, "n": len(d),
                         "note": f"PSNR +- {se:.2f} (standard error), higher on {wins} of {len(d)} files; tuning-file "
                                 "PSNR: " + "; ".join(k + " {" + ", ".join(f"{label(*g)}: {v:.2f}"
                                                                           for g, v in t.items()) + "}"
                                                      for k, t in tuning.items())})
        print(json.dumps(rows[-len(methods) - 1:], indent=1), flush=True)
        notes = (__doc__.split("\n\n", 1)[1].rsplit("Usage:", 1)[0] +
                 f"\nPrior: `{tag}` (training step {step}); k-space noise {a.noise:.4g}; {a.images} evaluation and "
                 f"{a.tune_images} tuning files; "
                 f"wall {time.time() - t0:.0f} s in this invocation (reconstructions from the cache cost nothing). "
                 "In the paired row, `seconds` holds the standard error of the PSNR difference.\n")
        write_results(a.out, a.name, rows, ["acceleration", "method", "prior", "PSNR", "SSIM", "NMSE",
                                            "PSNR_clean", "SSIM_clean", "PSNR_nofloor", "SSIM_nofloor", "nfe", "seconds", "peak_mb", "n", "note"],
                      title="Real-size MRI: diffusion with a patch prior vs tuned l1-wavelet (320x320, 15 coils, "
                            "fastMRI-format files)",
                      notes=notes, meta={"prior": tag, "step": step, "per_image": per_image})
    return rows


if __name__ == "__main__":
    main()

"""Whole-image inference of a patch-trained prior: fully convolutional vs PaDIS tiling with random offsets.

Denoising D(x + sigma n, sigma) of held-out 256 x 256 anatomy-like CT slices (``invdiff.datasets.anatomy``, seeds
from the held-out split, never seen in training) at several sigmas, for

- the patch prior given by ``--prior`` (trained on ``patch_size`` crops with coordinate channels) in ``conv`` mode
  (one fully convolutional call on the whole image, whole-image coordinate channels) and ``tiled`` mode (a grid of
  patch-sized windows with a random offset per call, each cell denoised by the window holding it, with that
  window's coordinates; one call = one random tiling);
- the shipped whole-image prior ``ct-phantom-64`` applied fully convolutionally at 256 (what the issue found fails);
- TV denoising (Chambolle, skimage) with its weight tuned per sigma on 2 other held-out slices.

PSNR (peak 1) averaged over the images; seconds = wall time of the denoiser on all images at one sigma (1 torch
thread; the machine was shared, so compare rows of one run only); peak_mb = RSS growth.

Usage: python benchmarks/patch_inference.py --prior RUN/NAME.safetensors [--images 4] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from invdiff.bench import measure, write_results
from invdiff.datasets.anatomy import ct_anatomy
from invdiff.datasets.phantoms import split_seeds
from invdiff.priors import load
from invdiff.training.export import _tv_denoise, psnr, tv_baseline

SIGMAS = (0.02, 0.05, 0.1, 0.2)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", required=True, help="a patch-trained invdiff prior (.safetensors)")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--name", default="patch_inference")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    x = ct_anatomy(split_seeds("heldout", a.images, start=7000), a.size)
    x_tune = ct_anatomy(split_seeds("heldout", 2, start=7500), a.size)
    patch = load(a.prior)
    whole = load("ct-phantom-64")
    rows = []
    g = torch.Generator().manual_seed(0)
    for s in SIGMAS:
        n, nt = torch.randn(x.shape, generator=g), torch.randn(x_tune.shape, generator=g)
        y, yt = x + s * n, x_tune + s * nt
        runs = [("patch prior", "conv", patch), ("patch prior", "tiled", patch), ("ct-phantom-64 (whole 64x64)", "conv", whole)]
        for label, mode, prior in runs:
            if prior is patch:
                prior.set_inference(mode, seed=0)
            with torch.no_grad():
                m = measure(lambda: torch.cat([prior(y[i:i + 1], s) for i in range(len(y))]))
            rows.append({"sigma": s, "denoiser": label, "inference": mode, "PSNR": float(psnr(m.value, x).mean()),
                         "noisy_PSNR": float(psnr(y, x).mean()), "seconds": m.seconds, "peak_mb": m.peak_mb,
                         "network_calls": len(y)})
        m = measure(lambda: tv_baseline(yt, x_tune, y))
        tv, w = m.value
        rows.append({"sigma": s, "denoiser": f"TV (weight {w})", "inference": "-", "PSNR": float(psnr(tv, x).mean()),
                     "noisy_PSNR": float(psnr(y, x).mean()), "seconds": m.seconds, "peak_mb": m.peak_mb,
                     "network_calls": 0})
    patch.set_inference("conv")
    notes = (__doc__.split("\n\n", 1)[1].rsplit("Usage:", 1)[0] +
             f"\nPatch prior: `{Path(a.prior).name}`, patch_size {patch.patch_size}, trained on "
             f"{patch.trained_resolution} images, positional channels: {patch.pos_channels}; "
             f"{a.images} held-out {a.size}x{a.size} slices.\n")
    write_results(a.out, a.name, rows, ["sigma", "denoiser", "inference", "PSNR", "noisy_PSNR", "seconds", "peak_mb",
                                        "network_calls"], title="Patch prior: conv vs tiled whole-image inference",
                  notes=notes, meta={"prior": Path(a.prior).name, "images": a.images, "size": a.size})


if __name__ == "__main__":
    main()

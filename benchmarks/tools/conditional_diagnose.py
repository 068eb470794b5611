"""Diagnostics of a conditional MRI prior: does the network use its conditioning, and in which units?

On held-out brain phantoms (seeds >= 1e9 + 900000, the conditional-dc benchmark's) and one fixed operator per task,
prints PSNR (magnitude, data_range = target max, like ``benchmarks/conditional_dc.py``) of

- ``adjoint``: the zero-filled coil-combined A^H y;
- ``D(sigma_max)``: the one-step denoiser output D(sigma_max z, sigma_max, c) * s ~ E[x | c] (the network's
  posterior mean given the conditioning alone), with the real conditioning, with the conditioning of another image
  (rows rolled) and with zero conditioning (should fall to the unconditional mean);
- ``D(sigma)`` at a few noise levels on x/s + sigma n: the denoising PSNR with the right / wrong conditioning;
- ``no-DC``: the conditional-dc solver with ``dc="none"`` (one sample, and the mean of K), and its best scalar fit
  ``a * x_hat`` (a = <x_hat, x> / <x_hat, x_hat>, complex images as 2 real channels);
- the share of training noise levels above 1, 3 and 10 (ln sigma ~ N(P_mean, P_std^2) of the prior's training
  config), and the default sigma_max of ``conditional-dc`` (the top of that range).

``--prior``: a shipped name, an exported prior file, or a training checkpoint (``<run>/ckpt/*.safetensors``: its EMA
weights), so a running training job can be followed without exporting.

Findings on ``mri-brainphantom-64-cond`` (step 15800, 4x single coil, 4 images): no mismatch between training and
inference (the training pair and the solver's conditioning are the same tensors, the best scalar fit of the output
gains 0.1 dB, the wrong image's conditioning costs 3-10 dB); D(sigma_max) is 1.4 dB *below* the zero-filled image at
EDM's sigma_max = 43, because only 0.7 % of the training noise levels are above 3; a no-DC sample is a posterior
sample (about 3 dB under the posterior mean), and the mean of 4 no-DC samples gains 1.6 dB.

Usage: python benchmarks/tools/conditional_diagnose.py [--prior mri-brainphantom-64-cond | FILE] [--eval 4] [--k 4]
"""
from __future__ import annotations

import argparse
import sys

import torch

import invdiff
from invdiff.datasets import mri_phantoms, split_seeds
from invdiff.metrics import psnr, ssim
from invdiff.operators import MRI, MultiCoilMRI, birdcage_maps, default_center_fraction, make_mask
from invdiff.operators.conditioning import denormalise, measurement_conditioning, normalise
from invdiff.priors import load
from invdiff.solvers.conditional_dc import trained_sigma_max

N = 64


def operator(family, acc, coils, noise):
    mask = make_mask(family, (N, N), acc, default_center_fraction(acc), seed=0)
    g = torch.Generator().manual_seed(0)
    if coils == 1:
        return MRI(mask, (2, N, N), sigma=noise, rng=g)
    return MultiCoilMRI(mask, birdcage_maps(coils, (N, N)), (2, N, N), sigma=noise, rng=g)


def score(est, x):
    return f"{float(psnr(est, x, complex=True).mean()):6.2f} dB / SSIM {float(ssim(est, x, complex=True).mean()):.3f}"


def scalar_fit(est, x):
    a = (est * x).flatten(1).sum(1) / (est * est).flatten(1).sum(1).clamp_min(1e-12)
    return a.reshape(-1, 1, 1, 1) * est, a


def load_prior(src: str):
    """A shipped / exported prior, or the EMA weights of a training checkpoint (with its conditional metadata)."""
    from invdiff.io_utils import read_safetensors

    if src.endswith(".safetensors") and "invdiff_train" in read_safetensors(src, tensors=False)[0]:
        from invdiff.priors.neural import NeuralPrior
        from invdiff.training import conditional
        from invdiff.training.checkpoint import read_init_weights

        w = read_init_weights(src)
        info = {"step": w["step"], "training_config": w["config"], "conditional": conditional.info(w["config"])}
        return NeuralPrior.from_state({**w["prior"], "info": info}, w["ema"])
    return load(src)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", default="mri-brainphantom-64-cond")
    ap.add_argument("--eval", type=int, default=4)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--noise", type=float, default=0.01)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--tasks", default="random,4,1;random,4,8;random,8,1")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    prior = load_prior(a.prior)
    print(f"prior {a.prior} step {(prior.info or {}).get('step')} sigma_data {prior.sigma_data}")
    cfg = (prior.info or {}).get("training_config") or {}
    if cfg.get("p_mean") is not None:
        from math import erf, log, sqrt

        share = {t: 0.5 * (1 - erf((log(t) - cfg["p_mean"]) / (cfg["p_std"] * sqrt(2)))) for t in (1.0, 3.0, 10.0)}
        print(f"training ln sigma ~ N({cfg['p_mean']}, {cfg['p_std']}^2): share above 1 / 3 / 10: "
              + " / ".join(f"{100 * v:.2f} %" for v in share.values())
              + f"; conditional-dc default sigma_max {trained_sigma_max(prior):.3f}")
    x = mri_phantoms(split_seeds("heldout", a.eval, start=900_000), N)
    g = torch.Generator().manual_seed(0)
    for t in a.tasks.split(";"):
        fam, acc, coils = t.split(",")
        op = operator(fam, float(acc), int(coils), a.noise)
        y = op(x)
        cond, s = measurement_conditioning(y, op)
        xn = normalise(x, s)
        print(f"\n== {fam} {acc}x {coils} coil(s); s = {[round(float(v), 3) for v in s]}; "
              f"|x/s| max {[round(float(v), 2) for v in xn.pow(2).sum(1).sqrt().flatten(1).max(1).values]}")
        print(f"  adjoint            {score(op.A_adjoint(y), x)}")
        smax = 80.0 * prior.sigma_data / 0.5   # EDM's (the earlier default of conditional-dc)
        z = torch.randn(x.shape, generator=g)
        with torch.no_grad():
            for label, c in (("cond", cond), ("cond of another image", cond.roll(1, 0)),
                             ("zero cond", torch.zeros_like(cond))):
                d = prior.denoise(smax * z, smax, c)
                print(f"  D(sigma_max) {label:22s} {score(denormalise(d, s), x)}   "
                      f"best a*: {score(scalar_fit(denormalise(d, s), x)[0], x)}")
            for sig in (0.05, 0.2, 1.0, 3.0, 10.0, smax):
                xt = xn + sig * z
                right = prior.denoise(xt, sig, cond)
                wrong = prior.denoise(xt, sig, cond.roll(1, 0))
                print(f"  D(sigma={sig:5.2f})  right cond {score(denormalise(right, s), x)}   "
                      f"wrong cond {score(denormalise(wrong, s), x)}")
        r1 = invdiff.solve(y, op, prior, solver="conditional-dc", dc="none", num_steps=a.steps, seed=0)
        fit, al = scalar_fit(r1.mean, x)
        print(f"  no-DC 1 sample     {score(r1.mean, x)}   best a* {score(fit, x)} (a = {[round(float(v), 3) for v in al]})")
        rk = invdiff.solve(y, op, prior, solver="conditional-dc", dc="none", num_steps=a.steps, seed=0, n_samples=a.k)
        print(f"  no-DC mean of {a.k}    {score(rk.mean, x)}   best a* {score(scalar_fit(rk.mean, x)[0], x)}")
        rd = invdiff.solve(y, op, prior, solver="conditional-dc", num_steps=a.steps, seed=0)
        print(f"  conditional-dc     {score(rd.mean, x)}  (dc {rd.info['dc']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

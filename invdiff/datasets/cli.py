"""``invdiff evaluate`` and ``invdiff synth-fastmri``: the fastMRI protocol and the synthetic fastMRI writer on the
command line (:func:`invdiff.datasets.evaluate`, :func:`invdiff.datasets.synthetic_fastmri.write_synthetic_dataset`).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .._validate import check_choice, check_int, check_number, fail

EVALUATE_DOC = """Score fastMRI reconstructions exactly as fastMRI's evaluate.py: per volume NMSE, PSNR
(data_range = the target volume's max) and SSIM (7x7 window, mean over slices) after a centre crop to the target
width; the summary is mean +/- 2 std over volumes, as fastMRI prints it. Predictions are .h5 files with a
'reconstruction' dataset, named like their target files (what 'invdiff reconstruct' writes).

examples:
  invdiff evaluate --targets knee_val/ --predictions recon/
  invdiff evaluate --targets knee_val/ --predictions recon/ --acceleration 4 --acquisition CORPD_FBK --json scores.json
"""

SYNTH_DOC = """Write synthetic fastMRI-format .h5 files (k-space, ISMRMRD header, targets computed from the k-space as
fastMRI's; or test files with a masked k-space and the 'mask' dataset) so every fastMRI workflow runs offline.
Test-file masks are seeded by the file name; a fastMRI family (fastmri-random, fastmri-equispaced-fraction, ...)
gives the columns fastMRI's own mask functions give that file.

examples:
  invdiff synth-fastmri --out synth_val/ --n-files 4 --coils 8 --shape 128 96
  invdiff synth-fastmri --out synth_test/ --kind test --mask fastmri-random --acceleration 8
"""


def evaluate_main(argv=None) -> int:
    from .evaluation import evaluate

    p = argparse.ArgumentParser(prog="invdiff evaluate", description=EVALUATE_DOC,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", required=True, help="a fastMRI target .h5 file or a folder of them")
    p.add_argument("--predictions", required=True, help="folder of reconstruction .h5 files named like the targets")
    p.add_argument("--challenge", choices=("singlecoil", "multicoil"),
                   help="target dataset: reconstruction_esc (singlecoil) or reconstruction_rss (multicoil); "
                        "default: each file's own")
    p.add_argument("--acceleration", type=float, help="score only files with this 'acceleration' attribute")
    p.add_argument("--acquisition", help="score only files with this 'acquisition' attribute (e.g. CORPD_FBK)")
    p.add_argument("--json", metavar="FILE", help="also write the per-volume scores and the summary as JSON")
    a = p.parse_args(argv)
    if a.acceleration is not None:
        check_number("--acceleration", a.acceleration, lo=1)
    if a.json is not None and Path(a.json).is_dir():
        fail("--json", "a file name", f"{a.json!r}, an existing folder")
    acc = int(a.acceleration) if a.acceleration is not None and float(a.acceleration).is_integer() else a.acceleration
    try:
        per_volume, summary = evaluate(a.targets, a.predictions, a.challenge, acceleration=acc,
                                       acquisition=a.acquisition)
    except ValueError as e:  # name the flags, not the Python arguments
        msg = str(e)
        for arg, flag in (("predictions_dir", "--predictions"), ("targets", "--targets")):
            msg = msg.replace(f"argument '{arg}'", f"argument '{flag}'")
        raise ValueError(msg) from None
    w = max(len(n) for n in per_volume)
    print(f"{'volume':<{w}}  {'NMSE':>9} {'PSNR':>8} {'SSIM':>7}")
    for name, m in sorted(per_volume.items()):
        print(f"{name:<{w}}  {m['NMSE']:9.4g} {m['PSNR']:8.3f} {m['SSIM']:7.4f}")
    print("summary (mean +/- 2 std, n = %d): " % next(iter(summary.values()))[2]
          + ", ".join(f"{k} = {mean:.4g} +/- {two:.2g}" for k, (mean, two, _) in summary.items() if k != "MSE"))
    if a.json is not None:
        from ..io_utils import atomic_write_json

        table = {k: {"mean": m, "two_std": s, "n": n} for k, (m, s, n) in summary.items()}
        atomic_write_json(a.json, {"per_volume": per_volume, "summary": table, "protocol": "fastMRI evaluate.py"})
    return 0


def synth_fastmri_main(argv=None) -> int:
    from ..operators import FASTMRI_MASK_KINDS, MASK_KINDS
    from .synthetic_fastmri import write_synthetic_dataset

    p = argparse.ArgumentParser(prog="invdiff synth-fastmri", description=SYNTH_DOC,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (created); files file_synth_000.h5, ...")
    p.add_argument("--n-files", type=int, default=4, help="number of files (default 4)")
    p.add_argument("--kind", default="multicoil", help="multicoil (default), singlecoil or test")
    p.add_argument("--slices", type=int, default=4, help="slices per file (default 4)")
    p.add_argument("--coils", type=int, default=8, help="receiver coils (multicoil and test files, default 8)")
    p.add_argument("--shape", type=int, nargs=2, default=(64, 64), metavar=("H", "W"),
                   help="k-space size (default 64 64); the object fills the centred min(H, W) square")
    p.add_argument("--phantom", default="brain", help="brain (default), anatomy (anatomy-like brain / knee slices "
                   "without image noise: add per-coil thermal noise with --noise) or shepp-logan")
    p.add_argument("--noise", type=float, default=0.0, help="complex k-space noise std relative to the scale")
    p.add_argument("--mask", default="fastmri-equispaced-fraction",
                   help="test files: mask family, one of " + ", ".join(FASTMRI_MASK_KINDS + MASK_KINDS)
                        + " (default fastmri-equispaced-fraction, the brain challenge's)")
    p.add_argument("--acceleration", type=float, default=4, help="test files: acceleration (default 4)")
    p.add_argument("--center-fraction", type=float, help="test files: centre fraction (default fastMRI's pairing)")
    p.add_argument("--seed", type=int, default=0, help="first file's seed (file i: seed + i)")
    a = p.parse_args(argv)
    check_int("--n-files", a.n_files, lo=1)
    check_choice("--kind", a.kind, ("multicoil", "singlecoil", "test"))
    check_int("--slices", a.slices, lo=1)
    check_int("--coils", a.coils, lo=1)
    for s in a.shape:
        check_int("--shape", s, lo=8)
    check_choice("--phantom", a.phantom, ("brain", "anatomy", "shepp-logan"))
    check_number("--noise", a.noise, lo=0)
    check_choice("--mask", a.mask, FASTMRI_MASK_KINDS + MASK_KINDS)
    check_number("--acceleration", a.acceleration, lo=1)
    if a.center_fraction is not None:
        check_number("--center-fraction", a.center_fraction, lo=0, hi=1, lo_open=True, hi_open=True)
    check_int("--seed", a.seed, lo=0)
    out = Path(a.out)
    if out.exists() and not out.is_dir():
        fail("--out", "a folder (created if missing)", f"{a.out!r}, an existing file")
    acc = int(a.acceleration) if float(a.acceleration).is_integer() else a.acceleration
    paths = write_synthetic_dataset(out, a.n_files, n_slices=a.slices, coils=a.coils, shape=tuple(a.shape),
                                    kind=a.kind, seed=a.seed, phantom=a.phantom, noise=a.noise, mask_kind=a.mask,
                                    acceleration=acc, center_fraction=a.center_fraction)
    print(f"[synth-fastmri] wrote {len(paths)} {a.kind} file(s) of {a.slices} slice(s), k-space {a.shape[0]}x"
          f"{a.shape[1]}, in {out}")
    return 0


__all__ = ["evaluate_main", "synth_fastmri_main"]

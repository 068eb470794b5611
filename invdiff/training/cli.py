"""``invdiff train-prior`` (``python -m invdiff.training``): flags, the ``--nproc`` launcher, and the main function."""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
from pathlib import Path

from .. import jobs
from .._validate import fail
from ..jobs import launched_rank  # noqa: F401  (part of this module's face)
from .config import TrainConfig, load_config_file, make_config, validate_config
from .export import check_not_shipped, export, export_dir
from .loop import train


# ================================================================================================
# CLI
# ================================================================================================
_HELP = {
    "name": "run / prior name; artefacts are written as <weights_dir>/<name>.* (default: the run folder <out>/<name>)",
    "data": "training data: 'ct' or 'mri' (synthetic 2D phantoms generated on the fly), 'ct3d' (synthetic CT-like "
            "volumes, needs --dims 3), 'tensor:FILE' (.safetensors with one tensor, .npy, .pt; (N,C,H,W) or (N,H,W); "
            "with --dims 3 (N,C,D,H,W) or (N,D,H,W)), 'folder:DIR' (grayscale images), 'fastmri:DIR' (fastMRI .h5 "
            "k-space -> complex images), 'nifti:DIR' / 'dicom:DIR' (slices of CT / MRI volumes); files are streamed "
            "slice by slice, never held in memory",
    "size": "image size, or volume edge length with --dims 3 (phantoms generated at this size; folder images "
            "resized); a multiple of the network's down-sampling factor 2^(len(channel_mult)-1)",
    "patch_size": "train on random crops of this size from the --size images (PaDIS; 0 = whole images): the cost of "
                  "a step depends on the patch size only, and the prior keeps the pixel scale of the images",
    "positional": "give the network the crop's normalised coordinates within the whole image as extra input channels",
    "inference": "how the exported patch prior denoises whole images: 'conv' (fully convolutional) or 'tiled' "
                 "(patch tiles with a random grid offset per call); changeable later with prior.set_inference",
    "workers": "DataLoader worker processes preparing the batches (0: in the training process); the batch of step k "
               "depends only on (seed, k), so results and resume do not depend on the number of workers",
    "fastmri_combine": "fastMRI multi-coil k-space -> complex image: 'rss-phase' (root-sum-of-squares magnitude, phase "
                       "of the coil combination with low-resolution sensitivities) or 'espirit' (sigpy ESPIRiT maps)",
    "slice_axis": "NIfTI / DICOM: take 2D slices along this axis of the (D, H, W) volume",
    "modality": "NIfTI / DICOM: 'ct' (HU through --hu-window), 'mri' (magnitude / its 99.5th percentile), 'auto'",
    "hu_window": "CT: the HU range mapped linearly onto [0, 1] (values outside clipped), e.g. -1000,3000",
    "dims": "spatial dimensions: 2 (images, Conv2d) or 3 (volumes (B,C,D,H,W), Conv3d; e.g. --data ct3d --size 32)",
    "nproc": "data-parallel processes (torch.distributed DDP, one CPU process each): the command re-launches itself "
             "under 'python -m torch.distributed.run --standalone --nproc_per_node N'; batch_size is the global "
             "batch and must be divisible by N; give each process --threads cores/N",
    "dist_backend": "torch.distributed backend for --nproc > 1: gloo (mpi if torch was built with it; nccl is "
                    "not supported: training runs on the CPU)",
    "steps": "total optimisation steps (re-running with a larger value continues training)",
    "batch_size": "images (or volumes) per step: the global batch, split evenly over the --nproc processes",
    "lr": "Adam learning rate", "warmup": "linear learning-rate warm-up steps",
    "ema_decay": "EMA decay of the exported weights", "grad_clip": "max global gradient norm (0 disables)",
    "seed": "seed of noise levels, noise and dropout",
    "threads": "torch.set_num_threads per process (1 is best on a shared CPU)",
    "channels_last": "channels-last memory format, NHWC / NDHWC (faster CPU convolutions)",
    "arch": "network class (invdiff.priors.networks.ARCHITECTURES)",
    "base_channels": "width of the first U-Net level", "channel_mult": "per-level width multipliers, e.g. 1,2,4,8",
    "num_blocks": "residual blocks per level", "attn_levels": "levels with self-attention (empty: none)",
    "emb_dim": "noise-embedding width", "dropout": "dropout in residual blocks",
    "cond_channels": "extra conditioning input channels (0 = unconditional prior; set by --conditional)",
    "conditional": "'mri' or 'ct': conditional prior on paired data made on the fly (random operator per image, "
                   "cond = [A^dagger y / s, sampling pattern]; invdiff.datasets.paired); '' = unconditional",
    "sigma_data": "data std for EDM preconditioning (auto: estimated from 256 training images)",
    "data_shift": "data mean subtracted before the network (auto: estimated)",
    "p_mean": "mean of ln(sigma) in training (auto: -1.2 + ln(sigma_data/0.5))", "p_std": "std of ln(sigma) in training (EDM: 1.2)",
    "out": "runs directory; the run lives in <out>/<name> (checkpoints, loss.csv, config.json)",
    "ckpt_every": "write ckpt/latest.safetensors every this many steps",
    "keep_every": "also keep ckpt/step_XXXXXXX.safetensors every this many steps (0: never)",
    "log_every": "steps per loss.csv row", "progress": "show a tqdm progress bar",
    "weights_dir": "where export writes the artefacts (default: the run folder <out>/<name>; the installed package "
                   "only when named here, and over a shipped prior only with --overwrite-shipped)",
    "overwrite_shipped": "allow the export to replace a shipped prior inside the installed package (invdiff/priors/"
                         "weights); without it such an export is refused",
    "export_dtype": "dtype of exported weights (float16 or float32)",
    "eval_images": "held-out images for the model-card PSNR table", "eval_sigmas": "noise levels of that table",
    "sample_steps": "EDM Heun steps for the sample grid", "n_samples": "number of samples in the grid",
    "fully_convolutional": "exported prior accepts any image size (else only the training size)",
    "init_from": "start a fresh run from these weights (shipped prior name, exported prior or training checkpoint); "
                 "model and EMA start from its EMA weights, Adam restarts with a new warm-up, steps continue its count",
    "init_step": "step count of init_from (read from its metadata; leave unset)",
    "init_regenerate": "the command that produced init_from (read from its metadata; leave unset)",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="invdiff train-prior",
        description="Train a diffusion prior with the EDM loss (Karras et al. 2022) and export it as an invdiff "
                    "safetensors prior with a model card. Resumable: re-running the same command continues from "
                    "<out>/<name>/ckpt/latest.safetensors. Precedence: defaults < --config < flags < --set.",
        epilog="examples:\n"
               "  invdiff train-prior --name ct-phantom-64 --data ct --steps 10000 --lr 3e-4\n"
               "  invdiff train-prior --config run.cfg --set steps=20000        # continue a run to more steps\n"
               "  (artefacts go to the run folder runs/<name>/; replacing a shipped prior in the package needs\n"
               "   --weights-dir <package>/priors/weights --overwrite-shipped)\n"
               "  invdiff train-prior --config runs/ct-phantom-64/config.json --export only "
               "--checkpoint runs/ct-phantom-64/ckpt/step_0004000.safetensors\n"
               "  invdiff train-prior --name ct-phantom-64 --data ct --steps 10000 --nproc 2   # 2 processes (DDP, gloo)\n"
               "  python -m torch.distributed.run --standalone --nproc_per_node 2 -m invdiff.training --name ...\n"
               "  invdiff train-prior --name ct-ellipsoid-32 --data ct3d --dims 3 --size 32 --channel-mult 1,2,4 "
               "--batch-size 4 --steps 20000   # a 3D prior",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE", help="config file: JSON object or 'key = value' lines")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="override any config key (repeatable), e.g. --set lr=1e-4 --set channel_mult=1,2,4")
    p.add_argument("--export", choices=("end", "never", "only"), default="end",
                   help="'end' (default): export the artefacts (weights, model card, samples, loss CSV) to "
                        "weights_dir when training finishes; 'never'; 'only': no training, just export a checkpoint")
    p.add_argument("--checkpoint", metavar="FILE",
                   help="training checkpoint to export with --export only (default: <out>/<name>/ckpt/latest.safetensors)")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint and start from step 0")
    p.add_argument("--verbose", action="store_true", help="print the export's full evaluation JSON (always written "
                   "to <run folder>/export.json)")
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        d = getattr(defaults, f.name)
        show = ",".join(map(str, d)) if isinstance(d, tuple) else d
        flag = isinstance(d, bool)  # on/off settings: "--positional" alone means true, "--positional false" off
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None, metavar="V",
                       nargs="?" if flag else None, const="true" if flag else None,
                       help=f"{_HELP.get(f.name, f.name)} (default: {show})")
    return p


def parse_config(argv) -> tuple[TrainConfig, argparse.Namespace]:
    args = build_parser().parse_args(argv)
    raw = {}
    if args.config:
        raw.update(load_config_file(args.config))
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name)
        if v is not None:
            raw[f.name] = v
    for item in args.set:
        if "=" not in item:
            fail("--set", "KEY=VALUE", item)
        k, v = item.split("=", 1)
        raw[k.strip()] = v
    return make_config(raw), args


def launch_command(nproc: int, argv) -> list[str]:
    """The command that runs ``invdiff train-prior ARGV`` in ``nproc`` data-parallel processes on this machine.

    ``--nproc`` itself is handed on as ``--set nproc=N``: torchrun's parser would take ``--nproc`` for an
    abbreviation of its own ``--nproc-per-node`` (so do not pass ``--nproc`` when calling torchrun directly)."""
    worker_argv, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            worker_argv.append(a)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "invdiff.training", *worker_argv, "--set", f"nproc={nproc}"]


def init_distributed(cfg: TrainConfig, world: int) -> None:
    """Join the process group torchrun set up (env:// rendezvous) with ``cfg.dist_backend``; checks first."""
    if cfg.nproc not in (1, world):
        fail("nproc", f"{world} (the WORLD_SIZE torchrun started) or 1", cfg.nproc)
    cfg.nproc = world
    validate_config(cfg)  # batch_size divisible by the world size, backend available
    jobs.init_process_group(cfg.dist_backend, timeout=datetime.timedelta(minutes=30))


def export_summary(res: dict) -> str:
    """Three lines about an export: where the weights went, the step, and the denoising PSNR table in short."""
    lines = [f"[invdiff] exported {res['weights']} (step {res['step']}; exported-dtype deviation {res['fp_dev']:.2g})"]
    rows = (res.get("eval") or {}).get("rows") or []
    if rows:
        lines.append("[invdiff] held-out denoising PSNR (noisy -> prior) at sigma " + ", ".join(
            f"{r['sigma']:g}: {r['noisy_psnr']:.1f} -> {r['prior_psnr']:.1f} dB" for r in rows))
    return "\n".join(lines)


def report_export(res: dict, cfg: TrainConfig, verbose: bool = False) -> None:
    """A short summary on stdout; the full evaluation JSON into the run folder (and on stdout with --verbose)."""
    from ..io_utils import atomic_write_json

    path = cfg.run_dir() / "export.json"
    atomic_write_json(path, res)
    print(export_summary(res) + f"\n[invdiff] full evaluation: {path}")
    if verbose:
        print(json.dumps(res, indent=1))


def train_prior_main(argv=None) -> int:
    """``invdiff train-prior``: train (resumably) and/or export a prior. Returns the exit code.

    ``--nproc N > 1`` (outside torchrun) re-runs the same arguments under :func:`launch_command`; inside torchrun
    every rank trains its shard (:func:`train`) and rank 0 alone prints and exports."""
    argv = list(sys.argv[1:] if argv is None else argv)
    launched = launched_rank()
    rank, world = launched if launched else (0, 1)
    joined = False
    try:
        cfg, args = parse_config(argv)
        ckpt = Path(args.checkpoint) if args.checkpoint and args.export == "only" else \
            cfg.run_dir() / "ckpt" / "latest.safetensors"
        if args.export != "never":  # refused before any training: never replace a shipped prior by default
            check_not_shipped(export_dir(ckpt, cfg.weights_dir or None), cfg.name, cfg.overwrite_shipped)
        if args.export == "only":
            if rank == 0:
                res = export(ckpt, weights_dir=cfg.weights_dir or None, dtype=cfg.export_dtype,
                             eval_images=cfg.eval_images, sigmas=cfg.eval_sigmas, sample_steps=cfg.sample_steps,
                             n_samples=cfg.n_samples, threads=cfg.threads, overwrite_shipped=cfg.overwrite_shipped)
                report_export(res, cfg, args.verbose)
            return 0
        if cfg.nproc > 1 and launched is None:
            import subprocess

            cmd = launch_command(cfg.nproc, argv)
            print(f"[invdiff] {cfg.name}: {cfg.nproc} data-parallel processes: {' '.join(cmd)}", file=sys.stderr, flush=True)
            return subprocess.call(cmd, env=dict(os.environ, OMP_NUM_THREADS=str(cfg.threads)))
        if world > 1:
            init_distributed(cfg, world)
            joined = True
        state = train(cfg, resume=not args.fresh)
        if joined:
            jobs.DistContext(rank, world, True).close()
            joined = False
        if rank != 0:
            return 0
        print(f"[invdiff] {cfg.name}: trained to step {state.step}; checkpoint {cfg.run_dir() / 'ckpt' / 'latest.safetensors'}",
              file=sys.stderr)
        if args.export == "end":
            res = export(cfg.run_dir() / "ckpt" / "latest.safetensors", weights_dir=cfg.weights_dir or None,
                         dtype=cfg.export_dtype, eval_images=cfg.eval_images, sigmas=cfg.eval_sigmas,
                         sample_steps=cfg.sample_steps, n_samples=cfg.n_samples,
                         overwrite_shipped=cfg.overwrite_shipped)
            report_export(res, cfg, args.verbose)
        return 0
    except (ValueError, TypeError, OSError) as e:
        from ..io_utils import disk_full_error, is_disk_full

        full = is_disk_full(e)
        if full:   # checkpoints are atomic: the last complete one stays, and re-running resumes from it
            e = e if e.__class__.__name__ == "DiskFullError" else disk_full_error(getattr(e, "filename", "") or "", e)
            e = e.strerror
        # errors every rank meets alike (bad config, rank 0's checks) are printed once, by rank 0
        if rank == 0 or (joined and not getattr(e, "echo_of_rank0", False)):
            print(f"invdiff train-prior: error: {f'[rank {rank}] ' if rank else ''}{e}", file=sys.stderr)
        return 3 if full else 2
    finally:
        if joined:
            jobs.DistContext(rank, world, True).close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(train_prior_main())

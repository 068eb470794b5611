"""Training configuration: :class:`TrainConfig` (every ``invdiff train-prior`` setting), parsing from files / flags,
validation, and the command that regenerates a run (:func:`regenerate_command`, written into model cards)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from .._validate import check_choice, check_positive, fail


# ================================================================================================
# configuration
# ================================================================================================
@dataclass
class TrainConfig:
    """Every setting of a training run (the resolved config is saved as ``config.json`` in the run dir)."""

    name: str = "prior"                 # run / prior name (artefacts are <weights_dir or out/name>/<name>.*)
    data: str = "ct"                    # "ct" | "mri" phantoms, "ct3d" volumes, "tensor:FILE.safetensors|.pt|.npy", "folder:DIR",
                                        # "fastmri:DIR", "nifti:DIR", "dicom:DIR" (streamed from disk, invdiff.training.files)
    size: int = 64                      # image size (phantoms generated at this size; folder images resized; fastMRI /
                                        # NIfTI / DICOM slices centre-cropped or zero-padded to it, pixel scale kept)
    patch_size: int = 0                 # > 0: train on random patch_size crops of the size-`size` images (PaDIS)
    positional: bool = False            # give the network the crop's coordinates in the whole image (PaDIS)
    inference: str = "conv"             # whole-image inference of the exported patch prior: "conv" | "tiled"
    workers: int = 0                    # DataLoader worker processes preparing batches (0: in the training process)
    fastmri_combine: str = "rss-phase"  # fastMRI multi-coil -> complex image: "rss-phase" | "espirit"
    slice_axis: int = 0                 # NIfTI / DICOM: slices along this axis of the (D, H, W) volume
    modality: str = "auto"              # NIfTI / DICOM: "ct" (HU window below) | "mri" (magnitude) | "auto" (DICOM tag, else HU range)
    hu_window: tuple = (-1000.0, 3000.0)  # CT: HU mapped linearly to [0, 1] (then clipped): water 0 HU -> 0.25
    dims: int = 2                       # spatial dimensions: 2 images (B, C, H, W), 3 volumes (B, C, D, H, W)
    steps: int = 10000                  # total optimisation steps
    batch_size: int = 16
    lr: float = 2e-4                    # Adam learning rate
    warmup: int = 500                   # linear learning-rate warm-up steps
    ema_decay: float = 0.999            # EMA decay (with warm-up min(decay, (1+t)/(10+t)))
    grad_clip: float = 1.0              # max global gradient norm (0 = off)
    seed: int = 0                       # seed of noise levels / noise / dropout (data has its own seeds)
    threads: int = 1                    # torch.set_num_threads (per process)
    nproc: int = 1                      # data-parallel processes (torch.distributed); batch_size is the global batch
    dist_backend: str = "gloo"          # torch.distributed backend for nproc > 1 (CPU training: gloo)
    channels_last: bool = True          # NHWC memory format (about 20 % faster convolutions on CPU)
    # architecture (invdiff.priors.networks)
    arch: str = "CompactUNet"
    base_channels: int = 16
    channel_mult: tuple = (1, 2, 4, 8)
    num_blocks: int = 1
    attn_levels: tuple = ()
    emb_dim: int = 128
    dropout: float = 0.0
    cond_channels: int = 0              # > 0: conditional network (data source yields (x0, cond))
    conditional: str = ""               # "mri" | "ct": paired data on the fly (invdiff.training.conditional)
    # preconditioning / loss (None = estimated from the data)
    sigma_data: float | None = None
    data_shift: float | None = None
    p_mean: float | None = None         # None -> -1.2 + ln(sigma_data / 0.5)
    p_std: float = 1.2
    # bookkeeping
    out: str = "runs"                   # run directory is <out>/<name>
    ckpt_every: int = 500
    keep_every: int = 5000              # also keep step_XXXXXXX.safetensors every this many steps (0 = never)
    log_every: int = 50
    progress: bool = True
    # export
    weights_dir: str = ""               # "" -> the run folder <out>/<name> (never the installed package by default)
    overwrite_shipped: bool = False     # allow exporting over a shipped prior inside the installed package
    export_dtype: str = "float16"
    eval_images: int = 64
    eval_sigmas: tuple = (0.05, 0.1, 0.2, 0.5)
    sample_steps: int = 32
    n_samples: int = 16
    fully_convolutional: bool = True    # saved prior accepts any size (resolution=None)
    # warm start (fine-tuning / continuing an exported prior whose training checkpoint is gone)
    init_from: str = ""                 # shipped prior name, exported prior .safetensors or training checkpoint
    init_step: int = 0                  # step count of init_from (filled in; the step counter continues from it)
    init_regenerate: str = ""           # the command that produced init_from (filled in, for the model card)

    def run_dir(self) -> Path:
        return Path(self.out) / self.name


_TUPLE_KEYS = {f.name for f in dataclasses.fields(TrainConfig) if f.type in ("tuple",)}


def _parse_value(key: str, value):
    """Convert a string (from a config file or --set) to the type of the TrainConfig field ``key``."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    if key not in fields:
        fail("config key", f"one of {sorted(fields)}", key)
    default = fields[key].default
    if not isinstance(value, str):
        return tuple(value) if key in _TUPLE_KEYS and isinstance(value, list) else value
    v = value.strip()
    try:
        if key in _TUPLE_KEYS:
            v = v.strip("()[] ")
            items = [s for s in v.replace(",", " ").split() if s]
            conv = float if key in ("eval_sigmas", "hu_window") else int
            return tuple(conv(s) for s in items)
        if key in ("sigma_data", "data_shift", "p_mean"):
            return None if v.lower() in ("", "none", "auto") else float(v)
        if isinstance(default, bool):
            if v.lower() in ("1", "true", "yes", "on"):
                return True
            if v.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(v)
        if isinstance(default, int):
            return int(v)
        if isinstance(default, float):
            return float(v)
        return v
    except ValueError:
        fail(key, f"a value of type {type(default).__name__ if default is not None else 'float'}", value)


def load_config_file(path) -> dict:
    """JSON object or ``key = value`` lines (``#`` comments), parsed by the shared :mod:`invdiff.config` reader;
    values are then typed per TrainConfig field by :func:`_parse_value`."""
    from ..config import load_config_file as _load

    return _load(path)


def make_config(overrides: dict | None = None) -> TrainConfig:
    cfg = TrainConfig()
    for k, v in (overrides or {}).items():
        setattr(cfg, k, _parse_value(k, v))
    validate_config(cfg)
    return cfg


#: data streamed from files on disk (invdiff.training.files)
FILE_KINDS = ("fastmri:", "nifti:", "dicom:")
#: data kinds generated on the fly, and their number of spatial dimensions
PHANTOM_KINDS = {"ct": 2, "mri": 2, "ct-anatomy": 2, "mri-anatomy": 2, "ct3d": 3}
#: torch.distributed backends that can train here (training runs on CPU tensors: nccl needs CUDA ones)
CPU_BACKENDS = ("gloo", "mpi")


def _backend_available(name: str) -> bool:
    import torch.distributed as dist

    if not dist.is_available():
        return False
    return {"gloo": dist.is_gloo_available, "mpi": dist.is_mpi_available}.get(name, lambda: False)()


def memory_format(cfg: TrainConfig) -> torch.memory_format:
    """Channels-last (NHWC / NDHWC) when ``cfg.channels_last``; both are faster for CPU convolutions."""
    if not cfg.channels_last:
        return torch.contiguous_format
    return torch.channels_last_3d if cfg.dims == 3 else torch.channels_last


def validate_config(cfg: TrainConfig) -> None:
    for k in ("size", "steps", "batch_size", "threads", "base_channels", "num_blocks", "emb_dim",
              "ckpt_every", "log_every", "sample_steps", "n_samples", "eval_images", "nproc"):
        check_positive(k, getattr(cfg, k), integer=True)
    if cfg.dims not in (2, 3) or isinstance(cfg.dims, bool):
        fail("dims", "2 (images) or 3 (volumes)", cfg.dims)
    if cfg.dist_backend not in CPU_BACKENDS:
        fail("dist_backend", f"one of {list(CPU_BACKENDS)} (training runs on the CPU; nccl needs CUDA tensors)",
             repr(cfg.dist_backend))
    if cfg.nproc > 1 and not _backend_available(cfg.dist_backend):
        fail("dist_backend", f"a torch.distributed backend built into this torch for nproc={cfg.nproc} "
                             f"(available: {[b for b in CPU_BACKENDS if _backend_available(b)]})", repr(cfg.dist_backend))
    if cfg.batch_size % cfg.nproc:
        fail("batch_size", f"a multiple of nproc={cfg.nproc} (the global batch is split evenly over the processes)",
             cfg.batch_size)
    for k in ("warmup", "keep_every", "cond_channels", "seed"):
        check_positive(k, getattr(cfg, k), strict=False, integer=True)
    check_positive("lr", float(cfg.lr))
    check_positive("grad_clip", float(cfg.grad_clip), strict=False)
    if not 0.0 <= cfg.ema_decay < 1.0:
        fail("ema_decay", "a value in [0, 1)", cfg.ema_decay)
    if not cfg.name or any(c in cfg.name for c in "/\\ "):
        fail("name", "a non-empty name without slashes or spaces", cfg.name)
    check_choice("export_dtype", cfg.export_dtype, ("float16", "float32"))
    if not (cfg.data in PHANTOM_KINDS or cfg.data.startswith(("tensor:", "folder:") + FILE_KINDS)):
        fail("data", "'ct', 'mri', 'ct3d', 'tensor:FILE', 'folder:DIR', 'fastmri:DIR', 'nifti:DIR' or 'dicom:DIR'",
             cfg.data)
    data_dims = PHANTOM_KINDS.get(cfg.data, 2 if cfg.data.startswith(("folder:",) + FILE_KINDS) else None)
    if data_dims is not None and data_dims != cfg.dims:
        if cfg.dims == 3:
            fail("data", "volumes for dims=3: 'ct3d' or 'tensor:FILE' with an (N, C, D, H, W) tensor", repr(cfg.data))
        fail("dims", f"3 for the volume data {cfg.data!r} (add --dims 3)", cfg.dims)
    check_positive("patch_size", cfg.patch_size, strict=False, integer=True)
    check_positive("workers", cfg.workers, strict=False, integer=True)
    check_choice("inference", cfg.inference, ("conv", "tiled"))
    check_choice("fastmri_combine", cfg.fastmri_combine, ("rss-phase", "espirit"))
    check_choice("modality", cfg.modality, ("auto", "ct", "mri"))
    if cfg.slice_axis not in (0, 1, 2):
        fail("slice_axis", "0, 1 or 2 (an axis of the (D, H, W) volume)", cfg.slice_axis)
    if len(cfg.hu_window) != 2 or not cfg.hu_window[0] < cfg.hu_window[1]:
        fail("hu_window", "two HU values lo < hi", cfg.hu_window)
    factor = 2 ** (len(cfg.channel_mult) - 1)
    if cfg.patch_size and (cfg.patch_size > cfg.size or cfg.patch_size % factor):
        fail("patch_size", f"0 (whole images) or a multiple of {factor} (the network's down-sampling factor) no larger "
                           f"than size={cfg.size}", cfg.patch_size)
    from . import conditional  # conditional hook: --conditional mri|ct
    conditional.check_config(cfg)
    if cfg.size % (2 ** (len(cfg.channel_mult) - 1)):
        fail("size", f"a multiple of {2 ** (len(cfg.channel_mult) - 1)}, the network's down-sampling factor "
                     f"(2^(levels-1) for channel_mult={cfg.channel_mult})", cfg.size)


def config_to_json(cfg: TrainConfig) -> dict:
    d = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def regenerate_command(cfg: dict, step: int | None = None) -> str:
    """The training command that reproduces a run: every setting that differs from the defaults, as flags.

    ``step`` (when given) replaces the planned number of steps, so the command reproduces that checkpoint."""
    defaults = config_to_json(TrainConfig())
    skip = {"progress", "weights_dir", "overwrite_shipped", "eval_images", "eval_sigmas", "sample_steps", "n_samples", "export_dtype",
            "init_step", "init_regenerate"}
    parts = ["invdiff train-prior"]
    for k, v in cfg.items():
        if k == "steps" and step is not None:
            v = step
        if k in skip or k not in defaults or (v == defaults[k] and k not in ("name", "data", "steps")):
            continue
        val = ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
        parts.append(f"--{k.replace('_', '-')} {val if val else chr(39) * 2}")
    command = " ".join(parts) + " --export end"
    # a warm start is reproduced by the chain: the command that produced init_from (which exports it), then this one
    return f"{cfg['init_regenerate']}\n{command}" if cfg.get("init_regenerate") else command



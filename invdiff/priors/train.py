r"""Training invdiff's own diffusion priors: EDM denoising score matching (Karras et al. 2022).

Loss (Karras et al. 2022, Eq. 2 and Sec. 5 "Training", Table 1):

.. math::
    \mathcal L(\theta) = \mathbb E_{\sigma, x_0, n}\big[\lambda(\sigma)\,\lVert D_\theta(x_0+\sigma n, \sigma) - x_0\rVert^2\big],\quad
    \ln\sigma\sim\mathcal N(P_{mean}, P_{std}^2),\quad \lambda(\sigma) = \frac{\sigma^2+\sigma_d^2}{(\sigma\sigma_d)^2},

with :math:`D_\theta` the preconditioned network of :class:`~invdiff.priors.neural.NeuralPrior`. EDM's
:math:`P_{mean}=-1.2, P_{std}=1.2` are for :math:`\sigma_d = 0.5`; here :math:`P_{mean} = -1.2 + \ln(\sigma_d/0.5)`
so the noise distribution scales with the data. Weights are averaged with an EMA (decay warm-up
:math:`\min(\beta, (1+t)/(10+t))`), Adam with linear learning-rate warm-up and gradient-norm clipping.

Design:

- :func:`train_step` is the whole per-step algorithm on one batch.
- Data sources are callables ``source(step, batch_size)`` returning ``x0`` or ``(x0, cond)``; the batch
  at step k depends only on k, and the noise at step k only on (seed, k), so a resumed run reproduces an
  uninterrupted one exactly. A source may also offer ``source.part(step, batch_size, start, stop)``: rows
  ``[start, stop)`` of that batch, generated or read alone (the phantom streams do); otherwise
  :func:`batch_part` slices the whole batch.
- Checkpoints (model + EMA + Adam moments + step + RNG state) are safetensors with a JSON header (no pickle),
  written atomically (tmp + ``os.replace``) every ``ckpt_every`` steps; re-running the same command resumes.
- :func:`export` turns any checkpoint (final or intermediate) into shipped artefacts: EMA weights,
  model card with held-out denoising PSNR, loss curve CSV and a grid of samples from a deterministic
  EDM Heun sampler (:func:`edm_heun_sampler`, Karras et al. 2022, Algorithm 1).

Data-parallel training (``torch.distributed``, one process per rank, launched by torchrun). Rank r of W
takes rows ``[r B/W, (r+1) B/W)`` of the global batch of B images (``batch_size``, which W must divide):
its images (:func:`batch_part`) and the same rows of the step's noise levels and noise, which every rank
draws for the whole batch from the (seed, step) generator. So the union over ranks is exactly the
single-process batch. The loss runs through ``DistributedDataParallel`` wrapped around :class:`EDMLoss`,
which averages the gradients over ranks; with equal shards the average of per-rank means is the
single-process mean, so W processes follow the single-process trajectory up to floating-point summation
order (GroupNorm has no cross-sample statistics). Clipping, Adam and the EMA then act on identical
gradients on every rank. Rank 0 alone writes ``config.json``, ``loss.csv`` (the loss averaged over ranks)
and the checkpoints (atomically); every rank reads the checkpoint on resume, so a run can be resumed with
another number of processes (the global batch, not the world size, defines the run). Dropout masks are
drawn per rank (not bitwise equal to one process, equal in distribution).

3D priors: ``--dims 3`` trains a :class:`~invdiff.priors.networks.CompactUNet` with ``Conv3d`` on volumes
(B, C, D, H, W), e.g. on the CT-like ellipsoid volumes of :mod:`invdiff.datasets.phantoms3d` (``--data
ct3d``); the exported prior has ``spatial_dims == 3``. A real one: 1.34 M parameters (base 16, levels
1,2,4), about 0.17 s/step at 16^3 and 0.9 s/step at 32^3 (batch 4, 1 thread, idle core; 4x that on a
saturated 2-core machine), so about 5 h for 20k steps on 1 core (run it when the CPU is free)::

    invdiff train-prior --name ct-ellipsoid-32 --data ct3d --dims 3 --size 32 --base-channels 16 \
        --channel-mult 1,2,4 --batch-size 4 --steps 20000 --lr 3e-4 --ckpt-every 250 --keep-every 2000 \
        --nproc 2 --threads 1 --eval-images 16 --n-samples 8

CLI: :func:`train_prior_main` (``invdiff train-prior``; ``python -m invdiff.priors.train``). ``--nproc N``
re-launches the command under ``python -m torch.distributed.run --standalone --nproc_per_node N -m
invdiff.priors.train``; launching that way (or with ``torchrun``) directly works the same: the world size
then comes from torchrun (leave out ``--nproc``, which torchrun's own parser would claim, or use
``--set nproc=N``).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .._validate import check_choice, check_positive, fail
from .neural import NeuralPrior
from .networks import build_network

CKPT_FORMAT = "invdiff-train-checkpoint/1"


# ================================================================================================
# configuration
# ================================================================================================
@dataclass
class TrainConfig:
    """Every setting of a training run (the resolved config is saved as ``config.json`` in the run dir)."""

    name: str = "prior"                 # run / prior name (artefacts are weights_dir/<name>.*)
    data: str = "ct"                    # "ct" | "mri" phantoms, "ct3d" volumes, "tensor:FILE.safetensors|.pt|.npy", "folder:DIR"
    size: int = 64                      # image size (phantoms are generated at this size; files are resized)
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
    conditional: str = ""               # "mri" | "ct": paired data on the fly (invdiff.priors.train_conditional)
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
    weights_dir: str = ""               # "" -> invdiff/priors/weights
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
            conv = float if key == "eval_sigmas" else int
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


#: data kinds generated on the fly, and their number of spatial dimensions
PHANTOM_KINDS = {"ct": 2, "mri": 2, "ct3d": 3}
#: torch.distributed backends that can train here (training runs on CPU tensors: nccl needs CUDA ones)
CPU_BACKENDS = ("gloo", "mpi")


def _backend_available(name: str) -> bool:
    import torch.distributed as dist

    if not dist.is_available():
        return False
    return {"gloo": dist.is_gloo_available, "mpi": dist.is_mpi_available}.get(name, lambda: False)()


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
    if not (cfg.data in PHANTOM_KINDS or cfg.data.startswith(("tensor:", "folder:"))):
        fail("data", "'ct', 'mri', 'ct3d', 'tensor:FILE' or 'folder:DIR'", cfg.data)
    data_dims = PHANTOM_KINDS.get(cfg.data, 2 if cfg.data.startswith("folder:") else None)
    if data_dims is not None and data_dims != cfg.dims:
        if cfg.dims == 3:
            fail("data", "volumes for dims=3: 'ct3d' or 'tensor:FILE' with an (N, C, D, H, W) tensor", repr(cfg.data))
        fail("dims", f"3 for the volume data {cfg.data!r} (add --dims 3)", cfg.dims)
    from . import train_conditional  # conditional hook: --conditional mri|ct
    train_conditional.check_config(cfg)
    if cfg.size % (2 ** (len(cfg.channel_mult) - 1)):
        fail("size", f"a multiple of {2 ** (len(cfg.channel_mult) - 1)}, the network's down-sampling factor "
                     f"(2^(levels-1) for channel_mult={cfg.channel_mult})", cfg.size)


# ================================================================================================
# data sources: callables (step, batch_size) -> x0 or (x0, cond)
# ================================================================================================
class TensorSource:
    """Random minibatches from an image tensor (N, C, H, W) or volume tensor (N, C, D, H, W); indices drawn
    from a per-step generator."""

    def __init__(self, images: torch.Tensor, seed: int = 0):
        if not isinstance(images, torch.Tensor) or images.dim() not in (4, 5):
            fail("images", "a tensor (N, C, H, W) or (N, C, D, H, W)", images)
        self.images, self.seed = images.float(), seed
        self.channels = images.shape[1]

    def _indices(self, step: int, batch_size: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return torch.randint(len(self.images), (batch_size,), generator=g)

    def __call__(self, step: int, batch_size: int):
        return self.images[self._indices(step, batch_size)]

    def part(self, step: int, batch_size: int, start: int, stop: int):
        """Rows ``[start, stop)`` of ``self(step, batch_size)``."""
        return self.images[self._indices(step, batch_size)[start:stop]]


def batch_part(source: Callable, step: int, batch_size: int, start: int, stop: int):
    """Rows ``[start, stop)`` of ``source(step, batch_size)`` (x0 or (x0, cond)): a data-parallel rank's shard.

    Uses ``source.part`` when the source has one, generates only those seeds for a
    :class:`~invdiff.datasets.PhantomStream` (batch k holds seeds ``offset + k*B + i``), else slices the batch.
    """
    from ..datasets.phantoms import PhantomStream

    if start == 0 and stop == batch_size:
        return source(step, batch_size)
    if hasattr(source, "part"):
        return source.part(step, batch_size, start, stop)
    if type(source) is PhantomStream:
        return PhantomStream(source.kind, source.size, source.seed_offset + step * batch_size + start)(0, stop - start)
    x0, cond = _split(source(step, batch_size))
    return x0[start:stop] if cond is None else (x0[start:stop], cond[start:stop])


def _load_tensor_file(path: str) -> torch.Tensor:
    p = Path(path)
    if not p.is_file():
        fail("data", "an existing tensor file (tensor:FILE)", path)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file
        d = load_file(str(p))
        if len(d) != 1:
            fail("data", "a safetensors file with exactly one tensor (N, C, H, W)", f"{path} with keys {sorted(d)}")
        return next(iter(d.values()))
    if p.suffix == ".npy":
        import numpy as np
        return torch.from_numpy(np.load(p, allow_pickle=False))
    if p.suffix in (".pt", ".pth"):
        return torch.load(p, map_location="cpu", weights_only=True)
    fail("data", "a .safetensors, .npy or .pt tensor file", path)


def _load_folder(path: str, size: int) -> torch.Tensor:
    import numpy as np
    from skimage import io, transform, color

    files = sorted(f for f in Path(path).glob("*") if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"))
    if not files:
        fail("data", "a folder with .png/.jpg/.tif images (folder:DIR)", path)
    imgs = []
    for f in files:
        im = io.imread(f)
        if im.ndim == 3:
            im = color.rgb2gray(im[..., :3])
        im = im.astype(np.float64)
        im = (im - im.min()) / max(im.max() - im.min(), 1e-12)
        imgs.append(transform.resize(im, (size, size), anti_aliasing=True).astype(np.float32))
    return torch.from_numpy(np.stack(imgs))[:, None]


def make_source(cfg: TrainConfig) -> Callable:
    """Data source of a config: a phantom / volume stream or random minibatches of a tensor / image folder
    (with ``cfg.conditional``: paired (x0, cond) data on top of it)."""
    if cfg.conditional:  # conditional hook
        from . import train_conditional
        return train_conditional.make_source(cfg, _make_image_source(cfg))
    return _make_image_source(cfg)


def _make_image_source(cfg: TrainConfig) -> Callable:
    from ..datasets.phantoms import PhantomStream
    from ..datasets.phantoms3d import VolumeStream

    if cfg.data in ("ct", "mri"):
        return PhantomStream(cfg.data, cfg.size)
    if cfg.data == "ct3d":
        return VolumeStream(cfg.data, cfg.size)
    if cfg.data.startswith("tensor:"):
        x = _load_tensor_file(cfg.data[len("tensor:"):])
        if x.dim() == cfg.dims + 1:
            x = x[:, None]
        if x.dim() != cfg.dims + 2:
            want = "(N, C, D, H, W) or (N, D, H, W)" if cfg.dims == 3 else "(N, C, H, W) or (N, H, W)"
            fail("data", f"a tensor {want} for dims={cfg.dims}", f"{cfg.data}: shape {tuple(x.shape)}")
        return TensorSource(x, cfg.seed)
    return TensorSource(_load_folder(cfg.data[len("folder:"):], cfg.size), cfg.seed)


def _split(batch):
    return batch if isinstance(batch, (tuple, list)) else (batch, None)


def estimate_data_stats(source: Callable, n: int = 256) -> tuple[int, float, float]:
    """(channels, mean, std) of ``n`` training images (batch 0 of size n): the preconditioning's mu and sigma_data."""
    x0, _ = _split(source(0, n))
    return int(x0.shape[1]), float(x0.mean()), float(x0.std())


# ================================================================================================
# model, state, one training step
# ================================================================================================
@dataclass
class DistContext:
    """This process's place in a data-parallel run: rank ``rank`` of ``world`` (1 process: 0 of 1)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, batch_size: int) -> tuple[int, int]:
        """This rank's rows ``[start, stop)`` of a global batch (``batch_size`` divisible by ``world``)."""
        if batch_size % self.world:
            fail("batch_size", f"a multiple of the number of processes ({self.world})", batch_size)
        b = batch_size // self.world
        return self.rank * b, (self.rank + 1) * b


def dist_context() -> DistContext:
    """Rank and world size of the initialised default process group, or a single-process context."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size())
    return DistContext()


@dataclass
class TrainState:
    model: NeuralPrior
    ema: NeuralPrior
    opt: torch.optim.Optimizer
    cfg: TrainConfig
    step: int = 0
    losses: list = field(default_factory=list)   # (step, loss) since the last log line
    dist: DistContext = field(default_factory=DistContext)
    ddp: nn.Module | None = None                 # DistributedDataParallel(EDMLoss(model)) when dist.world > 1


def memory_format(cfg: TrainConfig) -> torch.memory_format:
    """Channels-last (NHWC / NDHWC) when ``cfg.channels_last``; both are faster for CPU convolutions."""
    if not cfg.channels_last:
        return torch.contiguous_format
    return torch.channels_last_3d if cfg.dims == 3 else torch.channels_last


def net_config_of(cfg: TrainConfig, channels: int) -> dict:
    """The network's constructor arguments (saved in the prior's header) for this config."""
    net_config = dict(in_channels=channels, cond_channels=cfg.cond_channels, base_channels=cfg.base_channels,
                      channel_mult=list(cfg.channel_mult), num_blocks=cfg.num_blocks,
                      attn_levels=list(cfg.attn_levels), emb_dim=cfg.emb_dim, dropout=cfg.dropout)
    if cfg.dims != 2:  # 2D configs stay as before dims existed (see CompactUNet.config)
        net_config["dims"] = cfg.dims
    return net_config


def build_prior(cfg: TrainConfig, channels: int) -> NeuralPrior:
    net_config = net_config_of(cfg, channels)
    net = build_network(cfg.arch, net_config)
    value_range = (0.0, 1.0) if channels == 1 else (-1.0, 1.0)
    size = (cfg.size,) * cfg.dims
    return NeuralPrior(net, sigma_data=cfg.sigma_data, data_shift=cfg.data_shift, channels=channels,
                       resolution=None if cfg.fully_convolutional else size,
                       trained_resolution=size, value_range=value_range, name=cfg.name,
                       arch=cfg.arch, net_config=net_config, spatial_dims=cfg.dims)


def init_state(cfg: TrainConfig, channels: int) -> TrainState:
    torch.manual_seed(cfg.seed)
    model = build_prior(cfg, channels)
    ema = build_prior(cfg, channels)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False).eval()
    if cfg.channels_last:
        model.to(memory_format=memory_format(cfg))
        ema.to(memory_format=memory_format(cfg))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
    return TrainState(model, ema, opt, cfg)


def edm_loss(prior: NeuralPrior, x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor,
             cond: torch.Tensor | None = None) -> torch.Tensor:
    """EDM loss (Karras et al. 2022, Eq. 2 with lambda of Table 1), mean over batch and pixels (or voxels)."""
    bc = (-1,) + (1,) * (x0.dim() - 1)
    d = prior.precond(x0 + sigma.reshape(bc) * noise, sigma, cond)
    sd = prior.sigma_data
    weight = (sigma ** 2 + sd ** 2) / (sigma * sd) ** 2
    return (weight.reshape(bc) * (d - x0) ** 2).mean()


class EDMLoss(nn.Module):
    """:func:`edm_loss` as a module whose parameters are the prior's, so ``DistributedDataParallel`` can wrap it
    (its forward is the one DDP hooks; the prior and its checkpoint keys stay unwrapped)."""

    def __init__(self, prior: NeuralPrior):
        super().__init__()
        self.prior = prior

    def forward(self, x0, sigma, noise, cond=None):
        return edm_loss(self.prior, x0, sigma, noise, cond)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up over ``warmup`` steps, counted from the start of the run (``init_step`` for a warm start)."""
    return cfg.lr * min(1.0, (step - cfg.init_step + 1) / cfg.warmup) if cfg.warmup else cfg.lr


def train_step(state: TrainState, batch) -> float:
    """One optimisation step on ``batch`` (x0 or (x0, cond)); the randomness depends only on (seed, step).

    Data parallel (``state.dist.world`` W > 1): ``batch`` is this rank's shard, rows ``[r b, (r+1) b)`` of the
    global batch of ``W b`` images; the noise levels and noise are drawn for the global batch and sliced the
    same way, and ``state.ddp`` averages the gradients over ranks. Returns the loss of the global batch."""
    cfg, step, ctx = state.cfg, state.step, state.dist
    x0, cond = _split(batch)
    fmt = memory_format(cfg)
    if cfg.channels_last:
        x0 = x0.contiguous(memory_format=fmt)
    start, stop = ctx.rank * x0.shape[0], (ctx.rank + 1) * x0.shape[0]
    n_global = x0.shape[0] * ctx.world
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    torch.manual_seed(cfg.seed * 1_000_003 + step + 7 + 7919 * ctx.rank)  # dropout (its own masks on each rank)
    sigma = (torch.randn(n_global, generator=g) * cfg.p_std + cfg.p_mean).exp()[start:stop]  # ln sigma ~ N(P_mean, P_std^2)
    noise = torch.randn((n_global, *x0.shape[1:]), generator=g)[start:stop].contiguous(memory_format=fmt)
    state.model.train()
    loss = edm_loss(state.model, x0, sigma, noise, cond) if state.ddp is None else state.ddp(x0, sigma, noise, cond)
    state.opt.zero_grad(set_to_none=True)
    loss.backward()  # with DDP: gradients all-reduced (averaged over ranks) during backward
    for group in state.opt.param_groups:
        group["lr"] = lr_at(cfg, step)
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg.grad_clip)
    state.opt.step()
    beta = min(cfg.ema_decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for pe, pm in zip(state.ema.parameters(), state.model.parameters()):
            pe.lerp_(pm, 1 - beta)
        for be, bm in zip(state.ema.buffers(), state.model.buffers()):
            be.copy_(bm)
    state.step += 1
    value = loss.detach().clone()
    if ctx.world > 1:  # log the global-batch loss: the mean of the per-rank means
        import torch.distributed as dist
        dist.all_reduce(value)
        value /= ctx.world
    return float(value)


# ================================================================================================
# checkpoints: safetensors + JSON header, atomic
# ================================================================================================
def save_checkpoint(state: TrainState, path) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for k, v in state.model.net.state_dict().items():
        tensors["model." + k] = v.detach().contiguous()
    for k, v in state.ema.net.state_dict().items():
        tensors["ema." + k] = v.detach().contiguous()
    params = list(state.model.parameters())
    for i, p in enumerate(params):
        st = state.opt.state.get(p, {})
        for name in ("exp_avg", "exp_avg_sq", "step"):
            if name in st:
                tensors[f"optim.{i}.{name}"] = torch.as_tensor(st[name]).detach().float().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    header = {
        "format": CKPT_FORMAT, "step": state.step, "config": config_to_json(state.cfg),
        "prior": state.ema.metadata(), "n_params": len(params),
        "optim": {"lr": state.opt.param_groups[0]["lr"]},
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"invdiff_train": json.dumps(header)})
    os.replace(tmp, path)
    return path


def read_train_checkpoint(path) -> tuple[dict, dict]:
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        fail("checkpoint", "an existing training checkpoint file", str(path))
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(header["invdiff_train"])
    except Exception as e:
        fail("checkpoint", "a readable invdiff training checkpoint (safetensors with an 'invdiff_train' header)",
             f"{str(path)!r}: {type(e).__name__}: {e}")
    if meta.get("format") != CKPT_FORMAT:
        fail("checkpoint", f"format {CKPT_FORMAT!r}", f"{str(path)!r}: {meta.get('format')!r}")
    return meta, tensors


def load_checkpoint_into(state: TrainState, path) -> None:
    meta, tensors = read_train_checkpoint(path)
    sub = lambda prefix: {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}  # noqa: E731
    try:
        state.model.net.load_state_dict(sub("model."), strict=True)
        state.ema.net.load_state_dict(sub("ema."), strict=True)
    except RuntimeError as e:
        fail("checkpoint", "weights matching the configured architecture", f"{str(path)!r}: {e}")
    params = list(state.model.parameters())
    if meta.get("n_params") != len(params):
        fail("checkpoint", f"{len(params)} optimiser parameter slots", f"{meta.get('n_params')} in {path}")
    state.opt.state.clear()

    def like(t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:  # conv weights: Adam moments channels-last too
        return t.clone().to(memory_format=memory_format(state.cfg)) if p.dim() == state.cfg.dims + 2 else t.clone()

    for i, p in enumerate(params):
        if f"optim.{i}.exp_avg" in tensors:
            state.opt.state[p] = {
                "step": tensors[f"optim.{i}.step"].reshape(()).clone(),
                "exp_avg": like(tensors[f"optim.{i}.exp_avg"], p),
                "exp_avg_sq": like(tensors[f"optim.{i}.exp_avg_sq"], p),
            }
    torch.set_rng_state(tensors["rng.torch"])
    state.step = int(meta["step"])


def config_to_json(cfg: TrainConfig) -> dict:
    d = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


# ================================================================================================
# the training loop
# ================================================================================================
def resolve_config(cfg: TrainConfig, source: Callable) -> tuple[TrainConfig, int]:
    """Fill sigma_data / data_shift / p_mean from the data (rounded, so configs read well) and return channels."""
    channels, mean, std = estimate_data_stats(source)
    if cfg.sigma_data is None:
        cfg.sigma_data = round(std, 3)
    if cfg.data_shift is None:
        cfg.data_shift = round(mean, 3)
    if cfg.p_mean is None:
        cfg.p_mean = round(-1.2 + math.log(cfg.sigma_data / 0.5), 3)
    return cfg, channels


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _log_rows(path: Path, rows: list, upto_step: int | None = None, header=("step", "loss", "lr", "sec_per_step", "wall_s")):
    """Append rows to the loss CSV; on resume first drop rows past the checkpoint step (atomically rewritten)."""
    if upto_step is not None and path.exists():
        with open(path) as f:
            kept = [r for r in csv.reader(f)][1:]
        kept = [r for r in kept if r and int(r[0]) <= upto_step]
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(kept)
        os.replace(tmp, path)
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(header)
        w.writerows(rows)


def _on_main(ctx: DistContext, fn: Callable):
    """Run ``fn()`` on rank 0 and hand its result to every rank; an error on rank 0 is raised on every rank
    (instead of leaving the other ranks waiting in the next collective)."""
    if ctx.world == 1:
        return fn()
    import torch.distributed as dist

    payload = [None]
    if ctx.is_main:
        try:
            payload = [("ok", fn())]
        except (ValueError, TypeError, OSError) as e:
            payload = [("error", (type(e).__name__, str(e)))]
    dist.broadcast_object_list(payload, src=0)
    status, value = payload[0]
    if status == "error":
        kind, msg = value
        err = {"TypeError": TypeError, "OSError": OSError}.get(kind, ValueError)(msg)
        err.echo_of_rank0 = True  # rank 0 reports it; the CLI does not print it again
        raise err
    return value


def read_init_weights(src: str) -> dict:
    """The weights a warm start (``init_from``) begins with: EMA weights, prior metadata, step count, the source's
    training config and loss log. ``src`` is a shipped prior name, an exported invdiff prior (``.safetensors``) or
    a training checkpoint (``ckpt/*.safetensors``)."""
    from .neural import is_invdiff_checkpoint, read_checkpoint
    from .registry import SHIPPED, WEIGHTS_DIR

    path = WEIGHTS_DIR / f"{src}.safetensors" if src in SHIPPED else Path(src).expanduser()
    if not path.is_file():
        fail("init_from", f"a shipped prior name {sorted(SHIPPED)} or an existing .safetensors file", src)
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            is_train = "invdiff_train" in (f.metadata() or {})
    except Exception as e:
        fail("init_from", "a readable safetensors file", f"{str(path)!r}: {type(e).__name__}: {e}")
    if is_train:
        meta, tensors = read_train_checkpoint(path)
        ema = {k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")}
        return {"prior": meta["prior"], "ema": ema, "step": int(meta["step"]), "config": meta["config"],
                "loss_csv": path.parents[1] / "loss.csv", "path": str(path),
                "regenerate": regenerate_command(meta["config"], int(meta["step"]))}
    if not is_invdiff_checkpoint(path):
        fail("init_from", "an invdiff prior or training checkpoint (safetensors with an invdiff header)", str(path))
    meta, tensors = read_checkpoint(path)
    info = meta.get("info") or {}
    return {"prior": meta, "ema": {k: v.float() for k, v in tensors.items()}, "step": int(info.get("step", 0)),
            "config": info.get("training_config") or {}, "loss_csv": path.with_name(path.stem + "_loss.csv"),
            "path": str(path), "regenerate": str(info.get("regenerate", ""))}


def _apply_init_config(cfg: TrainConfig, init: dict) -> int:
    """Check the architecture of a warm start against ``cfg``; take its preconditioning and step count."""
    pm = init["prior"]
    if int(pm.get("spatial_dims", 2)) != cfg.dims:
        fail("init_from", f"a {cfg.dims}-D prior (dims={cfg.dims})", f"{init['path']}: spatial_dims={pm.get('spatial_dims')}")
    want = net_config_of(cfg, int(pm["channels"]))
    from . import train_conditional  # conditional hook: an unconditional init_from is widened
    if pm.get("arch") != cfg.arch or (dict(pm.get("net_config", {})) != want and not
                                      train_conditional.init_config_matches(cfg, dict(pm.get("net_config", {})), want)):
        fail("init_from", f"weights of the configured network {cfg.arch} {want}",
             f"{init['path']}: {pm.get('arch')} {pm.get('net_config')}")
    # the preconditioning is part of the network's function: kept (a different value is refused); the training
    # noise distribution p_mean may change (taken from the source unless given)
    for k, v in (("sigma_data", pm["precond"]["sigma_data"]), ("data_shift", pm["precond"].get("data_shift", 0.0))):
        if getattr(cfg, k) is None:
            setattr(cfg, k, float(v))
        elif abs(float(getattr(cfg, k)) - float(v)) > 1e-9:
            fail(k, f"{v} (the value of init_from {init['path']})", getattr(cfg, k))
    if cfg.p_mean is None and init["config"].get("p_mean") is not None:
        cfg.p_mean = float(init["config"]["p_mean"])
    cfg.init_step = init["step"]
    cfg.init_regenerate = init["regenerate"]
    if cfg.steps <= cfg.init_step:
        fail("steps", f"more than the {cfg.init_step} steps init_from was trained for (steps count on from it)", cfg.steps)
    return int(pm["channels"])


def _prepare_run(cfg: TrainConfig, source: Callable, resume: bool) -> tuple[dict, int, bool]:
    """Rank 0's start of a run: resolve the config (from the checkpoint being resumed, or from the data), write
    ``config.json``, trim ``loss.csv``. Returns (resolved config as JSON, channels, whether to resume)."""
    run = cfg.run_dir()
    latest = run / "ckpt" / "latest.safetensors"
    resumed = resume and latest.exists()
    if resumed:
        meta, _ = read_train_checkpoint(latest)
        saved = meta["config"]
        saved_dims = int(meta["prior"].get("spatial_dims", 2))
        if saved_dims != cfg.dims:
            fail("dims", f"{saved_dims} (the value of the run being resumed, {latest}); use --fresh to restart", cfg.dims)
        for k in ("sigma_data", "data_shift", "p_mean"):  # the preconditioning must not change mid-run
            if getattr(cfg, k) is None:
                setattr(cfg, k, saved[k])
            elif abs(float(getattr(cfg, k)) - float(saved[k])) > 1e-9:
                fail(k, f"{saved[k]} (the value of the run being resumed, {latest}); use --fresh to restart",
                     getattr(cfg, k))
        channels = int(meta["prior"]["channels"])
        cfg.init_step = int(saved.get("init_step", 0))
        cfg.init_regenerate = saved.get("init_regenerate", "")
    elif cfg.init_from:
        init = read_init_weights(cfg.init_from)
        channels = _apply_init_config(cfg, init)
        cfg, _ = resolve_config(cfg, source)  # fills only what the warm start left unset (p_mean)
    else:
        cfg, channels = resolve_config(cfg, source)
    run.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(run / "config.json", json.dumps(config_to_json(cfg), indent=2) + "\n")
    if resumed:
        _log_rows(run / "loss.csv", [], upto_step=int(meta["step"]))
    else:
        if (run / "loss.csv").exists():
            (run / "loss.csv").unlink()
        if cfg.init_from and Path(init["loss_csv"]).is_file():  # the loss curve continues the warm start's
            with open(init["loss_csv"]) as f:
                _log_rows(run / "loss.csv", [r for r in list(csv.reader(f))[1:] if r and int(r[0]) <= cfg.init_step])
    return config_to_json(cfg), channels, resumed


def train(cfg: TrainConfig, source: Callable | None = None, *, resume: bool = True) -> TrainState:
    """Train (or resume) a prior; checkpoints, ``config.json`` and ``loss.csv`` go to ``cfg.run_dir()``.

    Inside an initialised ``torch.distributed`` process group (torchrun, or ``--nproc``) every rank calls this
    with the same ``cfg``: each trains on its shard of the global batch (module docstring) and rank 0 writes."""
    ctx = dist_context()
    torch.set_num_threads(cfg.threads)
    if cfg.nproc != ctx.world:
        if ctx.world == 1:
            print(f"[invdiff] nproc={cfg.nproc} but no process group is initialised: training in 1 process (launch "
                  "with torchrun or 'invdiff train-prior --nproc N' for data-parallel training)", file=sys.stderr)
        cfg.nproc = ctx.world  # the config records how this run was actually executed
    ctx.rows(cfg.batch_size)  # one clear error when the world size does not divide the global batch
    source = source if source is not None else make_source(cfg)
    run = cfg.run_dir()
    ckpt_dir = run / "ckpt"
    latest = ckpt_dir / "latest.safetensors"
    resolved, channels, resumed = _on_main(ctx, lambda: _prepare_run(cfg, source, resume))
    for k in ("sigma_data", "data_shift", "p_mean", "init_step", "init_regenerate"):
        setattr(cfg, k, resolved[k])
    state = init_state(cfg, channels)
    state.dist = ctx
    if cfg.init_from and not resumed:  # warm start: model and EMA from the source's EMA weights, fresh Adam
        init = read_init_weights(cfg.init_from)
        if cfg.conditional:  # conditional hook: zero weights for the conditioning input channels
            from . import train_conditional
            init["ema"] = train_conditional.widen_init_weights(init["ema"], state.model.net)
        try:
            state.model.net.load_state_dict(init["ema"], strict=True)
            state.ema.net.load_state_dict(init["ema"], strict=True)
        except RuntimeError as e:
            fail("init_from", "weights matching the configured architecture", f"{init['path']}: {e}")
        state.step = cfg.init_step
        if ctx.is_main:
            print(f"[invdiff] {cfg.name}: warm start from {init['path']} (step {cfg.init_step})", file=sys.stderr, flush=True)
    if resumed:
        load_checkpoint_into(state, latest)
        if ctx.is_main:
            print(f"[invdiff] resumed {cfg.name} at step {state.step} from {latest}", file=sys.stderr, flush=True)
    if ctx.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # every rank built the same initial weights (same seed) or read the same checkpoint; DDP checks the shapes,
        # broadcasts rank 0's parameters and from then on averages the gradients in backward.
        state.ddp = DistributedDataParallel(EDMLoss(state.model))
    try:
        from tqdm import tqdm
        bar = tqdm(total=cfg.steps, initial=state.step, desc=cfg.name, disable=not (cfg.progress and ctx.is_main),
                   mininterval=30 if not sys.stderr.isatty() else 0.5, dynamic_ncols=True)
    except ImportError:  # pragma: no cover
        bar = None
    start, stop = ctx.rows(cfg.batch_size)
    t_last, t0, rows = time.time(), time.time(), []
    while state.step < cfg.steps:
        batch = batch_part(source, state.step, cfg.batch_size, start, stop)
        loss = train_step(state, batch)
        state.losses.append(loss)
        if bar is not None:
            bar.update(1)
        if state.step % cfg.log_every == 0 or state.step == cfg.steps:
            now = time.time()
            rows.append((state.step, f"{sum(state.losses) / len(state.losses):.6g}", f"{lr_at(cfg, state.step - 1):.3g}",
                         f"{(now - t_last) / len(state.losses):.4f}", f"{now - t0:.1f}"))
            if bar is not None:
                bar.set_postfix(loss=f"{sum(state.losses) / len(state.losses):.4f}", refresh=False)
            state.losses.clear()
            t_last = now
        if ctx.is_main and (state.step % cfg.ckpt_every == 0 or state.step == cfg.steps):
            _log_rows(run / "loss.csv", rows)
            rows = []
            save_checkpoint(state, latest)
            if cfg.keep_every and state.step % cfg.keep_every == 0:
                save_checkpoint(state, ckpt_dir / f"step_{state.step:07d}.safetensors")
    if rows and ctx.is_main:
        _log_rows(run / "loss.csv", rows)
    if bar is not None:
        bar.close()
    if ctx.world > 1:
        import torch.distributed as dist
        dist.barrier()  # the final checkpoint is on disk before any rank returns
    return state


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
    sl = shepp_logan_3d(size) if kind in GENERATORS3D else shepp_logan(size, complex=(kind == "mri"))
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


def _default_weights_dir() -> Path:
    return Path(__file__).resolve().parent / "weights"


def export(checkpoint, *, weights_dir=None, name: str | None = None, dtype: str = "float16", eval_images: int = 64,
           sigmas=(0.05, 0.1, 0.2, 0.5), sample_steps: int = 32, n_samples: int = 16, loss_csv=None,
           command: str | None = None, threads: int | None = None) -> dict:
    """Write ``<name>.safetensors`` (EMA weights), ``<name>.md`` (model card), ``<name>_samples.png`` and
    ``<name>_loss.csv`` from a training checkpoint (final or intermediate). Returns the evaluation dict."""
    if threads:
        torch.set_num_threads(threads)
    meta, tensors = read_train_checkpoint(checkpoint)
    cfg = meta["config"]
    name = name or cfg["name"]
    wdir = Path(weights_dir) if weights_dir else _default_weights_dir()
    wdir.mkdir(parents=True, exist_ok=True)
    pmeta = dict(meta["prior"])
    pmeta["name"] = name
    ema = {k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")}
    prior = NeuralPrior.from_state(pmeta, ema, source=str(checkpoint))
    kind = cfg["data"] if cfg["data"] in PHANTOM_KINDS else None
    info = {"step": meta["step"], "data": cfg["data"], "training_config": cfg,
            "trained_with": "invdiff.priors.train (EDM loss, Karras et al. 2022)",
            "regenerate": command or regenerate_command(cfg, meta["step"])}
    conditional = bool(cfg.get("conditional"))
    if conditional:  # conditional hook: what the prior was trained for, in its metadata
        from . import train_conditional
        info["conditional"] = train_conditional.info(cfg)
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
        cond_ev, samples = train_conditional.evaluate(shipped, cfg, n_images=eval_images, sample_steps=sample_steps,
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
        card = train_conditional.card(card, cfg, cond_ev, sample_steps=sample_steps, t_sample=t_sample)
        ev = cond_ev
    (wdir / f"{name}.md").write_text(card)
    return {"weights": str(out), "eval": ev, "step": meta["step"], "fp_dev": dev}


def regenerate_command(cfg: dict, step: int | None = None) -> str:
    """The training command that reproduces a run: every setting that differs from the defaults, as flags.

    ``step`` (when given) replaces the planned number of steps, so the command reproduces that checkpoint."""
    defaults = config_to_json(TrainConfig())
    skip = {"progress", "weights_dir", "eval_images", "eval_sigmas", "sample_steps", "n_samples", "export_dtype",
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
    }.get(kind, f"`{kind}`")
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
        f"{meta['step'] * cfg['batch_size']} distinct {items}; every training seed is below 1e9 "
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
        "artefacts at the end). ") + "Without the `invdiff` console script use `python -m invdiff.priors.train` with the "
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


# ================================================================================================
# CLI
# ================================================================================================
_HELP = {
    "name": "run / prior name; artefacts are written as <weights_dir>/<name>.*",
    "data": "training data: 'ct' or 'mri' (synthetic 2D phantoms generated on the fly), 'ct3d' (synthetic CT-like "
            "volumes, needs --dims 3), 'tensor:FILE' (.safetensors with one tensor, .npy, .pt; (N,C,H,W) or (N,H,W); "
            "with --dims 3 (N,C,D,H,W) or (N,D,H,W)), 'folder:DIR' (grayscale images)",
    "size": "image size, or volume edge length with --dims 3 (phantoms generated at this size; folder images "
            "resized); a multiple of the network's down-sampling factor 2^(len(channel_mult)-1)",
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
    "weights_dir": "where export writes the shipped artefacts (default: invdiff/priors/weights)",
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
               "  invdiff train-prior --config runs/ct-phantom-64/config.json --export only "
               "--checkpoint runs/ct-phantom-64/ckpt/step_0004000.safetensors\n"
               "  invdiff train-prior --name ct-phantom-64 --data ct --steps 10000 --nproc 2   # 2 processes (DDP, gloo)\n"
               "  python -m torch.distributed.run --standalone --nproc_per_node 2 -m invdiff.priors.train --name ...\n"
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
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        d = getattr(defaults, f.name)
        show = ",".join(map(str, d)) if isinstance(d, tuple) else d
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None, metavar="V",
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


def launched_rank() -> tuple[int, int] | None:
    """(rank, world size) of a process started by torchrun / ``torch.distributed.run``, else None."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return None


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
            "-m", "invdiff.priors.train", *worker_argv, "--set", f"nproc={nproc}"]


def init_distributed(cfg: TrainConfig, world: int) -> None:
    """Join the process group torchrun set up (env:// rendezvous) with ``cfg.dist_backend``; checks first."""
    import datetime

    import torch.distributed as dist

    if cfg.nproc not in (1, world):
        fail("nproc", f"{world} (the WORLD_SIZE torchrun started) or 1", cfg.nproc)
    cfg.nproc = world
    validate_config(cfg)  # batch_size divisible by the world size, backend available
    dist.init_process_group(cfg.dist_backend, timeout=datetime.timedelta(minutes=30))


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
        if args.export == "only":
            if rank == 0:
                ckpt = Path(args.checkpoint) if args.checkpoint else cfg.run_dir() / "ckpt" / "latest.safetensors"
                res = export(ckpt, weights_dir=cfg.weights_dir or None, dtype=cfg.export_dtype,
                             eval_images=cfg.eval_images, sigmas=cfg.eval_sigmas, sample_steps=cfg.sample_steps,
                             n_samples=cfg.n_samples, threads=cfg.threads)
                print(json.dumps(res, indent=1))
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
            import torch.distributed as dist
            dist.destroy_process_group()
            joined = False
        if rank != 0:
            return 0
        print(f"[invdiff] {cfg.name}: trained to step {state.step}; checkpoint {cfg.run_dir() / 'ckpt' / 'latest.safetensors'}",
              file=sys.stderr)
        if args.export == "end":
            res = export(cfg.run_dir() / "ckpt" / "latest.safetensors", weights_dir=cfg.weights_dir or None,
                         dtype=cfg.export_dtype, eval_images=cfg.eval_images, sigmas=cfg.eval_sigmas,
                         sample_steps=cfg.sample_steps, n_samples=cfg.n_samples)
            print(json.dumps(res, indent=1))
        return 0
    except (ValueError, TypeError, OSError) as e:
        # errors every rank meets alike (bad config, rank 0's checks) are printed once, by rank 0
        if rank == 0 or (joined and not getattr(e, "echo_of_rank0", False)):
            print(f"invdiff train-prior: error: {f'[rank {rank}] ' if rank else ''}{e}", file=sys.stderr)
        return 2
    finally:
        if joined:
            import torch.distributed as dist
            dist.destroy_process_group()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(train_prior_main())

r"""The training loop: state, the EDM loss, one step, and :func:`train` (resumable, data-parallel).

Loss (Karras et al. 2022, Eq. 2 and Sec. 5 "Training", Table 1):

.. math::
    \mathcal L(\theta) = \mathbb E_{\sigma, x_0, n}\big[\lambda(\sigma)\,\lVert D_\theta(x_0+\sigma n, \sigma) - x_0\rVert^2\big],\quad
    \ln\sigma\sim\mathcal N(P_{mean}, P_{std}^2),\quad \lambda(\sigma) = \frac{\sigma^2+\sigma_d^2}{(\sigma\sigma_d)^2}.

:func:`train_step` is the whole per-step algorithm on one batch; :func:`train` runs it on this rank's rows of
every global batch (:class:`invdiff.jobs.DistContext`), rank 0 writing ``config.json``, ``loss.csv`` and the
checkpoints (:mod:`invdiff.training.checkpoint`).
"""
from __future__ import annotations

import csv
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .._validate import fail
from ..jobs import DistContext, current as dist_context
from ..priors.networks import build_network
from ..priors.neural import NeuralPrior
from .checkpoint import load_checkpoint_into, read_init_weights, read_train_checkpoint, save_checkpoint
from .config import TrainConfig, config_to_json, memory_format
from .data import _pos, _split, make_source, resolve_config, stream_batches


# ================================================================================================
# model, state, one training step
# ================================================================================================
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


def net_config_of(cfg: TrainConfig, channels: int) -> dict:
    """The network's constructor arguments (saved in the prior's header) for this config."""
    net_config = dict(in_channels=channels, cond_channels=cfg.cond_channels, base_channels=cfg.base_channels,
                      channel_mult=list(cfg.channel_mult), num_blocks=cfg.num_blocks,
                      attn_levels=list(cfg.attn_levels), emb_dim=cfg.emb_dim, dropout=cfg.dropout)
    if cfg.dims != 2:  # 2D configs stay as before dims existed (see CompactUNet.config)
        net_config["dims"] = cfg.dims
    if cfg.positional:  # likewise configs without positional channels
        net_config["pos_channels"] = cfg.dims
    return net_config


def build_prior(cfg: TrainConfig, channels: int) -> NeuralPrior:
    net_config = net_config_of(cfg, channels)
    net = build_network(cfg.arch, net_config)
    value_range = (0.0, 1.0) if channels == 1 else (-1.0, 1.0)
    size = (cfg.size,) * cfg.dims
    patch = (cfg.patch_size,) * cfg.dims if cfg.patch_size else None
    return NeuralPrior(net, sigma_data=cfg.sigma_data, data_shift=cfg.data_shift, channels=channels,
                       resolution=None if cfg.fully_convolutional else size,
                       trained_resolution=size, value_range=value_range, name=cfg.name,
                       arch=cfg.arch, net_config=net_config, spatial_dims=cfg.dims, patch_size=patch,
                       inference=cfg.inference if patch else "conv")


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
             cond: torch.Tensor | None = None, pos: torch.Tensor | None = None) -> torch.Tensor:
    """EDM loss (Karras et al. 2022, Eq. 2 with lambda of Table 1), mean over batch and pixels (or voxels);
    ``pos``: coordinate channels of patches within their whole images (positional patch priors)."""
    bc = (-1,) + (1,) * (x0.dim() - 1)
    d = prior.precond(x0 + sigma.reshape(bc) * noise, sigma, cond, pos)
    sd = prior.sigma_data
    weight = (sigma ** 2 + sd ** 2) / (sigma * sd) ** 2
    return (weight.reshape(bc) * (d - x0) ** 2).mean()


class EDMLoss(nn.Module):
    """:func:`edm_loss` as a module whose parameters are the prior's, so ``DistributedDataParallel`` can wrap it
    (its forward is the one DDP hooks; the prior and its checkpoint keys stay unwrapped)."""

    def __init__(self, prior: NeuralPrior):
        super().__init__()
        self.prior = prior

    def forward(self, x0, sigma, noise, cond=None, pos=None):
        return edm_loss(self.prior, x0, sigma, noise, cond, pos)


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
    pos = _pos(batch)
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
    loss = edm_loss(state.model, x0, sigma, noise, cond, pos) if state.ddp is None else state.ddp(x0, sigma, noise, cond, pos)
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
# the training loop
# ================================================================================================
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


def _apply_init_config(cfg: TrainConfig, init: dict) -> int:
    """Check the architecture of a warm start against ``cfg``; take its preconditioning and step count."""
    pm = init["prior"]
    if int(pm.get("spatial_dims", 2)) != cfg.dims:
        fail("init_from", f"a {cfg.dims}-D prior (dims={cfg.dims})", f"{init['path']}: spatial_dims={pm.get('spatial_dims')}")
    want = net_config_of(cfg, int(pm["channels"]))
    have = dict(pm.get("net_config", {}))
    if want.get("pos_channels") and not have.get("pos_channels"):  # positional channels are added (zero weights)
        have["pos_channels"] = want["pos_channels"]
    from . import conditional  # conditional hook: an unconditional init_from is widened
    if pm.get("arch") != cfg.arch or (have != want and not conditional.init_config_matches(cfg, have, want)):
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


def add_positional_inputs(weights: dict, net: nn.Module) -> dict:
    """Warm start of a positional network from one without coordinate channels: the first convolution gets zero
    weights for the new input channels, so the network computes exactly the function it was trained as."""
    w = weights.get("conv_in.weight")
    want = net.state_dict()["conv_in.weight"]
    if w is None or w.shape == want.shape or w.shape[1] + getattr(net, "pos_channels", 0) != want.shape[1]:
        return weights
    extra = torch.zeros((w.shape[0], want.shape[1] - w.shape[1], *w.shape[2:]), dtype=w.dtype)
    return {**weights, "conv_in.weight": torch.cat([w, extra], 1)}


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
    resolved, channels, resumed = ctx.on_main(lambda: _prepare_run(cfg, source, resume))
    for k in ("sigma_data", "data_shift", "p_mean", "init_step", "init_regenerate"):
        setattr(cfg, k, resolved[k])
    state = init_state(cfg, channels)
    state.dist = ctx
    if cfg.init_from and not resumed:  # warm start: model and EMA from the source's EMA weights, fresh Adam
        init = read_init_weights(cfg.init_from)
        weights = add_positional_inputs(init["ema"], state.model.net)
        if cfg.conditional:  # conditional hook: zero weights for the conditioning input channels
            from . import conditional
            weights = conditional.widen_init_weights(weights, state.model.net)
        try:
            state.model.net.load_state_dict(weights, strict=True)
            state.ema.net.load_state_dict(weights, strict=True)
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
    batches = stream_batches(source, state.step, cfg.steps, cfg.batch_size, start, stop, cfg.workers)
    while state.step < cfg.steps:
        batch = next(batches)
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



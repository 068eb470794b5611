"""Training checkpoints: model + EMA + Adam moments + step + RNG state as safetensors with a JSON header (no
pickle), written atomically (tmp + ``os.replace``); and the weights a warm start (``init_from``) begins with."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .._validate import fail
from .config import config_to_json, memory_format, regenerate_command

if TYPE_CHECKING:  # pragma: no cover
    from .loop import TrainState

CKPT_FORMAT = "invdiff-train-checkpoint/1"


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


def read_init_weights(src: str) -> dict:
    """The weights a warm start (``init_from``) begins with: EMA weights, prior metadata, step count, the source's
    training config and loss log. ``src`` is a shipped prior name, an exported invdiff prior (``.safetensors``) or
    a training checkpoint (``ckpt/*.safetensors``)."""
    from ..priors.neural import is_invdiff_checkpoint, read_checkpoint
    from ..priors.registry import SHIPPED, WEIGHTS_DIR

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



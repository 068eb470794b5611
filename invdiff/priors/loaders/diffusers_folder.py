"""diffusers ``UNet2DModel`` folders (model or pipeline folder with ``config.json`` and a scheduler config); needs the
optional ``diffusers`` package. Wrapped as discrete VP (DDPM schedulers) or VE conditioned on sigma."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .detect import CheckpointError, _Config, _unwrap, load_weights_strict, read_checkpoint_file
from .wrappers import DiscreteVPPrior, PreconditionedPrior, _TimestepCall, _class_label, _freeze, _n_params, _pair


# =====================================================================================================
# diffusers UNet2DModel folders
# =====================================================================================================
_DIFFUSERS_SPEC = dict(prediction_type=None, beta_schedule=None, beta_start=None, beta_end=None,
                       num_train_timesteps=None, centered=None, timestep="interpolate", class_label=None,
                       value_range=(0.0, 1.0))
_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def _diffusers_paths(p: Path):
    """(unet folder, weights file, scheduler config file or None) for a pipeline root, a unet folder or a weights file."""
    folder = p.parent if p.is_file() else p
    if (folder / "unet" / "config.json").is_file():
        folder = folder / "unet"
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"cannot load '{p}' as diffusers: no config.json in '{folder}' (expected a UNet2DModel "
                              f"folder saved by save_pretrained, or a pipeline folder with unet/)")
    if p.is_file():
        weights = p
    else:
        weights = next((folder / n for n in _WEIGHT_NAMES if (folder / n).is_file()), None)
        if weights is None:
            raise CheckpointError(f"cannot load '{p}' as diffusers: no weights in '{folder}' (looked for {list(_WEIGHT_NAMES)})")
    sched = next((c for c in (folder / "scheduler_config.json", folder.parent / "scheduler" / "scheduler_config.json")
                  if c.is_file()), None)
    return folder, weights, sched


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read '{path}': invalid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"'{path}' must hold a JSON object")
    return obj


def _build_diffusers(p: Path, user: dict, device):
    folder, weights, sched_path = _diffusers_paths(p)
    source = str(p)
    cfg = _Config("diffusers", source, _DIFFUSERS_SPEC, user, {}, None)
    try:
        from diffusers import DDPMScheduler, UNet2DModel
    except ImportError:
        raise CheckpointError(f"cannot load '{p}': diffusers models need the optional package 'diffusers' "
                              f"(pip install diffusers)") from None
    model_cfg = _read_json(folder / "config.json")
    cls_name = model_cfg.get("_class_name", "UNet2DModel")
    if cls_name != "UNet2DModel":
        raise CheckpointError(f"cannot load '{p}': diffusers model class {cls_name!r} is not supported "
                              f"(only unconditional UNet2DModel image priors)")
    sched_cfg = _read_json(sched_path) if sched_path else {}
    for k in ("prediction_type", "beta_schedule", "beta_start", "beta_end", "num_train_timesteps"):
        if cfg[k] is not None:
            sched_cfg[k] = cfg[k]
    sd, _ = _unwrap(read_checkpoint_file(weights), weights)
    try:
        net = UNet2DModel.from_config(model_cfg)
    except Exception as e:
        raise CheckpointError(f"cannot load '{p}': diffusers cannot build UNet2DModel from config.json ({e})") from None
    load_weights_strict(net, sd, source=str(weights), fmt="diffusers", what="UNet2DModel")
    C = int(net.config.in_channels)
    size = net.config.sample_size
    resolution = None if size is None else _pair(size)
    n_down = len(net.config.down_block_types)
    ncls = net.config.num_class_embeds
    if net.config.class_embed_type is not None and not ncls:
        raise CheckpointError(f"cannot load '{p}': class_embed_type={net.config.class_embed_type!r} needs class "
                              f"embeddings at every call; only unconditional or num_class_embeds models are supported")
    label = _class_label(cfg, ncls, source, one_hot=False)
    info = dict(format="diffusers", path=source, unet_config={k: v for k, v in dict(net.config).items()},
                scheduler=sched_cfg, n_params=_n_params(net))
    sched_name = sched_cfg.get("_class_name", "DDPMScheduler")
    name = f"diffusers:{folder.parent.name if folder.name == 'unet' else folder.name}"
    if sched_name == "ScoreSdeVeScheduler" or net.config.time_embedding_type == "fourier":
        # score-SDE VE nets (google/ncsnpp-*): unet(x, sigma) = score; data in [0, 1] (center_input_sample in the net)
        centered = False if cfg["centered"] is None else bool(cfg["centered"])
        prior = PreconditionedPrior(_TimestepCall(net, label, kind="diffusers", output_times_label=True),
                                    VEScoreLabel(), channels=C, resolution=resolution, centered=centered,
                                    value_range=cfg["value_range"], size_multiple=2 ** (n_down - 1), name=name, info=info)
        return _freeze(prior, device)
    try:
        sched = DDPMScheduler.from_config(sched_cfg)
    except Exception as e:
        raise CheckpointError(f"cannot load '{p}': cannot build the DDPM noise schedule from {sched_cfg} ({e})") from None
    prediction = sched.config.prediction_type
    centered = True if cfg["centered"] is None else bool(cfg["centered"])
    prior = DiscreteVPPrior(_TimestepCall(net, label, kind="diffusers"), sched.alphas_cumprod.double(),
                            prediction=prediction, timestep=cfg["timestep"], channels=C, resolution=resolution,
                            centered=centered, value_range=cfg["value_range"], size_multiple=2 ** (n_down - 1),
                            name=name, info=info)
    return _freeze(prior, device)


@dataclass(frozen=True)
class VEScoreLabel:
    """VE preconditioning for nets conditioned on sigma itself: c_skip=1, c_out=sigma, c_in=1, c_noise=sigma."""

    def __call__(self, sigma):
        one = torch.ones_like(sigma)
        return one, sigma, one, sigma.clamp_min(1e-20)



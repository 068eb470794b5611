"""EDM checkpoints (Karras et al. 2022): ``SongUNet`` (DDPM++/NCSN++) = deepinv ``NCSNpp`` and ``DhariwalUNet`` = deepinv
``ADMUNet``, architecture read from the keys, wrapped with EDM / VP / VE preconditioning.

EDM's GroupNorm uses :math:`\min(32, \lfloor C/4 \rfloor)` groups; the networks are built with that rule
(:mod:`.groupnorm`), so levels of fewer than 128 channels give EDM's denoiser too."""
from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path

from .detect import CheckpointError, _CONSTANT_BUFFERS, load_weights_strict
from .groupnorm import build_with_group_rule
from .wrappers import (EDMCoefficients, PreconditionedPrior, VECoefficients, VPCoefficients, _UNetCall, _class_label,
                       _freeze, _n_params, _pair, _short)


# =====================================================================================================
# EDM (deepinv NCSNpp = SongUNet, ADMUNet = DhariwalUNet)
# =====================================================================================================
def _edm_levels(sd) -> list[int]:
    res = sorted({int(m.group(1)) for k in sd for m in [re.match(r"enc\.(\d+)x\d+_", k)] if m}, reverse=True)
    if not res:
        raise ValueError("no 'enc.RxR_*' keys")
    return res


def infer_edm_config(sd: dict, kind: str) -> dict:
    """Constructor arguments of deepinv ``NCSNpp`` (kind='ncsnpp') or ``ADMUNet`` (kind='adm') from a state dict."""
    res = _edm_levels(sd)
    R = res[0]
    conv = sd[f"enc.{R}x{R}_conv.weight"]
    mc = sd["map_layer0.weight"].shape[1] if kind == "adm" else conv.shape[0]
    if kind == "ncsnpp" and "map_noise.freqs" in sd:
        noise_ch = sd["map_layer0.weight"].shape[1]
        if noise_ch != 2 * mc:
            raise ValueError(f"Fourier embedding of {noise_ch} channels for {mc} model channels (expected {2 * mc})")
    num_blocks = len({m.group(1) for k in sd for m in [re.match(rf"enc\.{R}x{R}_block(\d+)\.", k)] if m})
    mult = [sd[f"enc.{r}x{r}_block0.conv0.weight"].shape[0] // mc for r in res]
    attn = [r for r in res if f"enc.{r}x{r}_block0.qkv.weight" in sd]
    out_key = "out_conv.weight" if kind == "adm" else f"dec.{R}x{R}_aux_conv.weight"
    cfg = dict(img_resolution=R, in_channels=conv.shape[1], out_channels=sd[out_key].shape[0],
               label_dim=sd["map_label.weight"].shape[1] if "map_label.weight" in sd else 0,
               augment_dim=sd["map_augment.weight"].shape[1] if "map_augment.weight" in sd else 0,
               model_channels=mc, channel_mult=mult, channel_mult_emb=sd["map_layer0.weight"].shape[0] // mc,
               num_blocks=num_blocks, attn_resolutions=attn)
    if kind == "ncsnpp":
        cfg["model_type"] = "ncsn" if "map_noise.freqs" in sd else "ddpm"
    return cfg


_EDM_SPEC = dict(precond="edm", sigma_data=0.5, beta_min=0.1, beta_d=19.9, M=1000, centered=True, class_label=None,
                 value_range=(0.0, 1.0))


def _build_edm(sd, extras, cfg: _Config, source, device, kind: str):
    from deepinv.models import ADMUNet, NCSNpp

    fmt = "edm-adm" if kind == "adm" else "edm-ncsnpp"
    try:
        arch = infer_edm_config(sd, kind)
    except (KeyError, ValueError, IndexError) as e:
        raise CheckpointError(f"cannot load '{source}' as {fmt}: cannot read the architecture from the weights "
                              f"({type(e).__name__}: {e})") from None
    cls = ADMUNet if kind == "adm" else NCSNpp
    try:
        # EDM normalises C channels in min(32, C // 4) groups (deepinv: always 32; identical only for C >= 128);
        # pretrained=None: never deepinv's default (a hub download, impossible offline)
        net = build_with_group_rule(cls, **arch, dropout=0.0, pretrained=None)
    except (ValueError, RuntimeError, AssertionError) as e:
        raise CheckpointError(f"cannot load '{source}' as {fmt}: deepinv {cls.__name__} rejects the architecture "
                              f"{_short(arch)} ({e})") from None
    load_weights_strict(net, sd, source=source, fmt=fmt, what=_short(arch), constant_buffers=_CONSTANT_BUFFERS)
    coeffs = _precond(cfg, source)
    label = _class_label(cfg, arch["label_dim"], source, one_hot=True)
    C = arch["in_channels"]
    info = dict(format=fmt, path=source, arch=arch, precond=dict(type=cfg["precond"], **asdict(coeffs)),
                weights=extras.get("weights_key", "state_dict"), n_params=_n_params(net))
    prior = PreconditionedPrior(_UNetCall(net, label), coeffs, channels=C, resolution=_pair(arch["img_resolution"]),
                                centered=cfg["centered"], value_range=cfg["value_range"],
                                name=f"{fmt}:{Path(source).name}", info=info)
    return _freeze(prior, device)


def _precond(cfg: _Config, source):
    kind = cfg["precond"]
    if kind == "edm":
        return EDMCoefficients(float(cfg["sigma_data"]))
    if kind == "ve":
        return VECoefficients(0.5)
    if kind == "vp":
        return VPCoefficients(float(cfg["beta_min"]), float(cfg["beta_d"]), int(cfg["M"]))
    raise CheckpointError(f"cannot load '{source}': precond: expected 'edm', 've' or 'vp', received {kind!r}")



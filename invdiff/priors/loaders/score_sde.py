"""score_sde NCSN++ / DDPM++ checkpoints (score-MRI, DiffusionMBIR): ``all_modules.N.*`` keys converted to deepinv
``NCSNpp`` by explicit rules (:func:`score_sde_rules`, both directions), config checked, continuous VE / VP wrappers."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .detect import CheckpointError, _CONSTANT_BUFFERS, _REQUIRED, _few, load_weights_strict
from .groupnorm import build_with_group_rule, group_count
from .wrappers import PreconditionedPrior, VECoefficients, VPCoefficients, _UNetCall, _freeze, _n_params, _pair, _short


# =====================================================================================================
# score_sde NCSN++ / DDPM++ (all_modules.N.*) -> deepinv NCSNpp
# =====================================================================================================
@dataclass(frozen=True)
class _Rule:
    """One deepinv tensor made from a group of score_sde tensors (``kind`` says how)."""

    target: str
    sources: tuple[str, ...]
    kind: str  # 'copy' | 'nin_weight' (W (in,out) -> conv (out,in,1,1)) | 'qkv_weight' | 'qkv_bias'


def score_sde_rules(net: nn.Module) -> list[_Rule]:
    """Key correspondence between a deepinv ``NCSNpp`` and score_sde's ``NCSNpp.all_modules`` list.

    The deepinv modules are walked in the order score_sde appends its modules (embedding, two dense layers,
    input conv, encoder [ResBlock (+Attn)] x num_res_blocks + down ResBlock + pyramid conv, middle ResBlock +
    Attn + ResBlock, decoder blocks (+Attn) + up ResBlock, GroupNorm, output conv); each group of score_sde
    tensors maps to exactly one deepinv tensor and every tensor on both sides is used once.
    """
    from deepinv.models.utils import UNetBlock

    rules: list[_Rule] = []
    i = 0

    def copy(target, src):
        rules.append(_Rule(target, (src,), "copy"))

    def dense(target, idx):
        for p in ("weight", "bias"):
            copy(f"{target}.{p}", f"all_modules.{idx}.{p}")

    def resblock(prefix, idx, blk):
        for mine, theirs in (("norm0", "GroupNorm_0"), ("conv0", "Conv_0"), ("affine", "Dense_0"),
                             ("norm1", "GroupNorm_1"), ("conv1", "Conv_1")):
            dense(f"{prefix}.{mine}", f"{idx}.{theirs}")
        if blk.skip is not None and blk.skip.weight is not None:
            dense(f"{prefix}.skip", f"{idx}.Conv_2")

    def attention(prefix, idx):
        src = f"all_modules.{idx}"
        dense(f"{prefix}.norm2", f"{idx}.GroupNorm_0")
        rules.append(_Rule(f"{prefix}.qkv.weight", tuple(f"{src}.NIN_{j}.W" for j in range(3)), "qkv_weight"))
        rules.append(_Rule(f"{prefix}.qkv.bias", tuple(f"{src}.NIN_{j}.b" for j in range(3)), "qkv_bias"))
        rules.append(_Rule(f"{prefix}.proj.weight", (f"{src}.NIN_3.W",), "nin_weight"))
        copy(f"{prefix}.proj.bias", f"{src}.NIN_3.b")

    if hasattr(net.map_noise, "freqs"):
        copy("map_noise.freqs", "all_modules.0.W")
        i = 1
    dense("map_layer0", i)
    dense("map_layer1", i + 1)
    i += 2
    for part in ("enc", "dec"):
        for name, blk in getattr(net, part).items():
            prefix = f"{part}.{name}"
            if isinstance(blk, UNetBlock):
                resblock(prefix, i, blk)
                i += 1
                if blk.num_heads:
                    attention(prefix, i)
                    i += 1
            elif name.endswith("_aux_residual"):
                dense(prefix, f"{i}.Conv2d_0")
                i += 1
            elif name.endswith(("_conv", "_aux_norm", "_aux_conv")):
                dense(prefix, i)
                i += 1
            else:  # pragma: no cover - encoder 'skip' / decoder 'skip' types are not built by deepinv NCSNpp
                raise ValueError(f"no score_sde counterpart for deepinv module {prefix}")
    return rules


def convert_score_sde_state_dict(sd: dict, rules: list[_Rule]) -> dict:
    """score_sde tensors -> deepinv NCSNpp tensors (buffers such as resampling filters not included)."""
    out = {}
    for r in rules:
        src = [sd[k] for k in r.sources]
        if r.kind == "copy":
            out[r.target] = src[0]
        elif r.kind == "nin_weight":                       # NIN: y_c = sum_i x_i W[i, c]
            out[r.target] = src[0].t()[:, :, None, None].contiguous()
        elif r.kind == "qkv_weight":                       # deepinv qkv channel 3c+j = (q, k, v)[j] channel c
            out[r.target] = torch.stack([w.t() for w in src], dim=1).reshape(-1, src[0].shape[0], 1, 1).contiguous()
        elif r.kind == "qkv_bias":
            out[r.target] = torch.stack(src, dim=1).reshape(-1).contiguous()
    return out


def to_score_sde_state_dict(sd: dict, rules: list[_Rule]) -> dict:
    """Inverse of :func:`convert_score_sde_state_dict` (deepinv NCSNpp tensors -> score_sde ``all_modules`` layout)."""
    out = {}
    for r in rules:
        t = sd[r.target]
        if r.kind == "copy":
            out[r.sources[0]] = t
        elif r.kind == "nin_weight":
            out[r.sources[0]] = t[:, :, 0, 0].t().contiguous()
        elif r.kind == "qkv_weight":
            w = t[:, :, 0, 0].reshape(-1, 3, t.shape[1])
            for j, k in enumerate(r.sources):
                out[k] = w[:, j].t().contiguous()
        elif r.kind == "qkv_bias":
            b = t.reshape(-1, 3)
            for j, k in enumerate(r.sources):
                out[k] = b[:, j].contiguous()
    return out


_SDE_SPEC = dict(sde=_REQUIRED, image_size=_REQUIRED, centered=_REQUIRED, ch_mult=(1, 2, 2, 2), num_res_blocks=4,
                 attn_resolutions=(16,), beta_min=0.1, beta_max=20.0, sigma_min=None, sigma_max=None, continuous=True,
                 scale_by_sigma=None, embedding_type=None, progressive="none", progressive_input=None, fir=None,
                 fir_kernel=None, resblock_type="biggan", skip_rescale=True, conditional=True, attention_type="ddpm",
                 nf=None, num_channels=None, name="ncsnpp", use_ema=True, value_range=(0.0, 1.0),
                 normalization="GroupNorm", nonlinearity="swish", conv_size=3, resamp_with_conv=True)
_SDE_DOC = ("score_sde checkpoints need: sde ('ve' or 'vp'), image_size (int) and centered (False when the data "
            "were in [0, 1], e.g. score-MRI/DiffusionMBIR; True for [-1, 1]); ch_mult, num_res_blocks, "
            "attn_resolutions default to (1,2,2,2), 4, (16,); VP also reads beta_min/beta_max (0.1/20). The "
            "score_sde config dict (config.to_dict()) saved as JSON works as a sidecar.")


def _score_sde_check(cfg: _Config, fourier: bool, source: str):
    sde = str(cfg["sde"]).lower().replace("sde", "")
    if sde not in ("ve", "vp"):
        raise CheckpointError(f"cannot load '{source}' as score-sde: sde={cfg['sde']!r} is not supported (only the VE "
                              f"and VP SDEs; sub-VP networks are not handled)")
    want = dict(continuous=True, progressive="none", resblock_type="biggan", skip_rescale=True, conditional=True,
                attention_type="ddpm", name="ncsnpp", normalization="groupnorm", nonlinearity="swish", conv_size=3,
                resamp_with_conv=True,
                embedding_type="fourier" if fourier else "positional",
                progressive_input="residual" if fourier else "none",
                fir=fourier, scale_by_sigma=sde == "ve")
    if fourier:
        want["fir_kernel"] = [1, 3, 3, 1]
    bad = []
    for k, v in want.items():
        got = cfg.get(k)
        if got is None:
            continue
        norm = lambda z: z.lower() if isinstance(z, str) else (list(z) if isinstance(z, (list, tuple)) else z)  # noqa: E731
        if norm(got) != norm(v):
            bad.append(f"{k}={got!r} (supported: {v!r})")
    if (sde == "ve") != fourier:
        bad.append(f"sde={cfg['sde']!r} with {'Fourier' if fourier else 'positional'} noise embedding "
                   f"(supported: VE with Fourier features of ln sigma, VP with positional embedding of 999 t)")
    if bad:
        raise CheckpointError(
            f"cannot load '{source}' as score-sde: this configuration has no deepinv NCSNpp equivalent: {'; '.join(bad)}. "
            f"Supported: NCSN++ VE continuous (fourier, progressive_input='residual', FIR [1,3,3,1]; score-MRI, "
            f"DiffusionMBIR, cifar10_ncsnpp_continuous) and DDPM++ VP continuous (positional, no FIR; "
            f"cifar10_ddpmpp_continuous)")
    return sde


def _no_group_rule(channels: int) -> bool:
    try:
        group_count(channels)
        return False
    except ValueError:
        return True


def _build_score_sde(sd, extras, cfg: _Config, source, device):
    from deepinv.models import NCSNpp

    cfg.require(_SDE_DOC)
    sd = dict(sd)
    sigmas = sd.pop("sigmas", None)
    fourier = "all_modules.0.W" in sd
    sde = _score_sde_check(cfg, fourier, source)
    # input conv: the first 4-D weight after the embedding and the two dense layers
    idx0 = 3 if fourier else 2
    conv_key = f"all_modules.{idx0}.weight"
    if conv_key not in sd or sd[conv_key].dim() != 4:
        raise CheckpointError(f"cannot load '{source}' as score-sde: expected the input conv at '{conv_key}' "
                              f"(conditional NCSN++), keys seen: {_few(sorted(sd), 8)}")
    nf, C = sd[conv_key].shape[0], sd[conv_key].shape[1]
    for k, v in (("nf", nf), ("num_channels", C)):
        if cfg.get(k) is not None and int(cfg[k]) != v:
            raise CheckpointError(f"cannot load '{source}': config says {k}={cfg[k]} but the weights have {v}")
    arch = dict(model_type="ncsn" if fourier else "ddpm", img_resolution=int(cfg["image_size"]), in_channels=C,
                out_channels=C, label_dim=0, augment_dim=0, model_channels=nf, channel_mult=list(cfg["ch_mult"]),
                channel_mult_emb=4, num_blocks=int(cfg["num_res_blocks"]),
                attn_resolutions=list(cfg["attn_resolutions"]))
    # score_sde normalises C channels in min(C // 4, 32) groups (layerspp.py; deepinv: always 32), which needs
    # every level width nf * ch_mult[i] to split so: nf = 16 works (4 groups), nf = 10 cannot (2 groups of 5)
    bad = [f"nf * ch_mult[{i}] = {nf * m}" for i, m in enumerate(arch["channel_mult"]) if _no_group_rule(nf * m)]
    if bad:
        raise CheckpointError(f"cannot load '{source}' as score-sde: nf={nf} (read from the weights): score_sde's "
                              f"GroupNorm splits C channels into min(C // 4, 32) groups, impossible for {', '.join(bad)}; "
                              f"the original network cannot be built with this nf either")
    try:
        net = build_with_group_rule(NCSNpp, **arch, dropout=0.0, pretrained=None)
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot load '{source}' as score-sde: cannot build NCSNpp {_short(arch)} with "
                              f"nf={nf} ({e})") from None
    rules = score_sde_rules(net)
    weights = "model"
    shadow = extras.get("ema_shadow_params")
    if shadow is not None and cfg["use_ema"]:
        trainable = [k for k in sd if k != "all_modules.0.W"]          # W (Fourier) has requires_grad=False
        if len(trainable) != len(shadow) or any(tuple(sd[k].shape) != tuple(s.shape) for k, s in zip(trainable, shadow)):
            raise CheckpointError(f"cannot load '{source}': the EMA shadow parameters ({len(shadow)}) do not match "
                                  f"the model's trainable tensors ({len(trainable)}); pass use_ema=False to load the raw weights")
        sd.update(dict(zip(trainable, shadow)))
        weights = "ema"
    theirs = {s for r in rules for s in r.sources}
    missing = [k for k in sorted(theirs) if k not in sd]
    unexpected = [k for k in sd if k not in theirs]
    if missing or unexpected:
        parts = ([f"{len(missing)} missing key(s): {_few(missing)}"] if missing else []) + \
                ([f"{len(unexpected)} unexpected key(s): {_few(unexpected)}"] if unexpected else [])
        raise CheckpointError(f"cannot load '{source}' as score-sde: the weights do not match the configured "
                              f"architecture {_short(arch)} ({len(theirs)} tensors expected): {'; '.join(parts)}. "
                              f"Check ch_mult, num_res_blocks, attn_resolutions and image_size.")
    load_weights_strict(net, convert_score_sde_state_dict(sd, rules), source=source, fmt="score-sde",
                        what=_short(arch), constant_buffers=_CONSTANT_BUFFERS)
    if sde == "ve":
        coeffs = VECoefficients(1.0)          # net output h = sigma * score: D = x + sigma h
    else:
        beta_min, beta_max = float(cfg["beta_min"]), float(cfg["beta_max"])
        coeffs = VPCoefficients(beta_min, beta_max - beta_min, 1000)   # labels = 999 t, output eps
    centered = bool(cfg["centered"])
    sig = None
    if sde == "ve":
        smin = cfg["sigma_min"] if cfg["sigma_min"] is not None else (float(sigmas[-1]) if sigmas is not None else None)
        smax = cfg["sigma_max"] if cfg["sigma_max"] is not None else (float(sigmas[0]) if sigmas is not None else None)
        sig = dict(sigma_min=smin, sigma_max=smax)
    info = dict(format="score-sde", path=source, sde=sde, arch=arch, centered=centered, weights=weights,
                precond=dict(type=sde, **asdict(coeffs)), train_sigma_range=sig, n_params=_n_params(net))
    # the score_sde net maps [0, 1] inputs to [-1, 1] itself when centered=False (ncsnpp.py: x = 2x - 1)
    unet = _UNetCall(net, None, input_affine=(1.0, 0.0) if centered else (2.0, -1.0))
    prior = PreconditionedPrior(unet, coeffs, channels=C, resolution=_pair(arch["img_resolution"]), centered=centered,
                                value_range=cfg["value_range"], name=f"score-sde:{Path(source).name}", info=info)
    return _freeze(prior, device)



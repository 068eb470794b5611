"""guided-diffusion (openai ADM UNet; also ILVR, DPS, DDS CT/MRI priors, deepinv ``DiffUNet`` files): the network
built from deepinv ``DiffUNet`` blocks with its architecture read from the keys, and the discrete VP wrapper."""
from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from torch import nn

from ... import schedules as S
from .detect import CheckpointError, _Config, load_weights_strict
from .wrappers import DiscreteVPPrior, _TimestepCall, _class_label, _freeze, _n_params, _pair, _short


# =====================================================================================================
# guided-diffusion (openai ADM)
# =====================================================================================================
class GuidedDiffusionUNet(nn.Module):
    """The ADM UNet of openai/guided-diffusion with a configurable architecture, assembled from deepinv's
    ``DiffUNet`` blocks (same module names, so guided-diffusion state dicts load as they are).

    deepinv's ``DiffUNet`` hard-codes two architectures (FFHQ 128 channels / ImageNet 256 channels); this
    class builds any of them from the settings inferred by :func:`infer_guided_diffusion_config`.
    """

    def __init__(self, *, in_channels: int, model_channels: int, out_channels: int, level_channels, num_res_blocks: int,
                 attention_levels=(), num_heads: int = 4, num_head_channels: int = 64, use_scale_shift_norm: bool = True,
                 resblock_updown: bool = True, conv_resample: bool = True, num_classes: int | None = None,
                 use_new_attention_order: bool = False, num_heads_upsample: int = -1):
        super().__init__()
        from deepinv.models.diffunet import (AttentionBlock, Downsample, ResBlock, TimestepEmbedSequential, Upsample,
                                             normalization)

        self.model_channels = model_channels
        self.num_classes = num_classes
        emb = 4 * model_channels
        levels = list(level_channels)
        attention_levels = set(attention_levels)
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        if num_classes:
            self.label_emb = nn.Embedding(num_classes, emb)

        def res(cin, cout, **kw):
            return ResBlock(cin, emb, 0.0, out_channels=cout, dims=2, use_scale_shift_norm=use_scale_shift_norm, **kw)

        def attn(c, heads=num_heads):
            return AttentionBlock(c, num_heads=heads, num_head_channels=num_head_channels,
                                  use_new_attention_order=use_new_attention_order)

        heads_up = num_heads if num_heads_upsample == -1 else num_heads_upsample

        ch = levels[0]
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skips = [ch]
        for level, cl in enumerate(levels):
            for _ in range(num_res_blocks):
                layers = [res(ch, cl)]
                ch = cl
                if level in attention_levels:
                    layers.append(attn(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skips.append(ch)
            if level != len(levels) - 1:
                down = res(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample, dims=2, out_channels=ch)
                self.input_blocks.append(TimestepEmbedSequential(down))
                skips.append(ch)
        self.middle_block = TimestepEmbedSequential(res(ch, ch), attn(ch), res(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(levels))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skips.pop(), levels[level])]
                ch = levels[level]
                if level in attention_levels:
                    layers.append(attn(ch, heads_up))
                if level and i == num_res_blocks:
                    layers.append(res(ch, ch, up=True) if resblock_updown else Upsample(ch, conv_resample, dims=2, out_channels=ch))
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(normalization(ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        from deepinv.models.diffunet import timestep_embedding

        emb = self.time_embed(timestep_embedding(t, self.model_channels))
        if self.num_classes:
            emb = emb + self.label_emb(y)
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


def _block_indices(keys, prefix: str) -> dict[int, set[str]]:
    """{block index: set of sub-key suffixes} for keys 'prefix.{i}.rest'."""
    out: dict[int, set[str]] = {}
    for k in keys:
        if k.startswith(prefix + "."):
            i, _, rest = k[len(prefix) + 1:].partition(".")
            if i.isdigit():
                out.setdefault(int(i), set()).add(rest)
    return out


def infer_guided_diffusion_config(sd: dict, num_res_blocks: int | None = None) -> dict:
    """Architecture of a guided-diffusion UNet from its state dict (everything that shapes the weights)."""
    mc = sd["time_embed.0.weight"].shape[1]
    cin = sd["input_blocks.0.0.weight"].shape[1]
    ch0 = sd["input_blocks.0.0.weight"].shape[0]
    cout = sd["out.2.weight"].shape[0]
    inb = _block_indices(sd, "input_blocks")
    outb = _block_indices(sd, "output_blocks")
    n_in, n_out = max(inb) + 1, max(outb) + 1
    if num_res_blocks is None:
        # the last output block of every level but level 0 carries an upsampler: a 2nd ResBlock or Upsample conv
        ups = [i for i, rest in sorted(outb.items())
               if any(re.match(r"[1-9]\d*\.(in_layers\.0\.weight|conv\.weight)$", r) for r in rest)]
        if not ups:
            raise ValueError("cannot infer num_res_blocks (no upsampling layer with weights); pass num_res_blocks=")
        num_res_blocks = ups[0]
    per = num_res_blocks + 1
    if n_out % per or n_in != n_out:
        raise ValueError(f"inconsistent block counts ({n_in} input, {n_out} output blocks) for num_res_blocks={num_res_blocks}")
    n_levels = n_out // per
    level_channels, attention = [], []
    for lv in range(n_levels):
        first = 1 + lv * per
        level_channels.append(sd[f"input_blocks.{first}.0.out_layers.3.weight"].shape[0])
        if f"1.qkv.weight" in inb.get(first, set()):
            attention.append(lv)
    c1 = level_channels[0]
    sss = sd["input_blocks.1.0.emb_layers.1.weight"].shape[0] == 2 * c1
    down = inb.get(num_res_blocks + 1, set()) if n_levels > 1 else set()
    resblock_updown = "0.in_layers.0.weight" in down
    conv_resample = resblock_updown or "0.op.weight" in down
    return dict(in_channels=cin, model_channels=mc, out_channels=cout, level_channels=level_channels,
                num_res_blocks=num_res_blocks, attention_levels=attention, use_scale_shift_norm=sss,
                resblock_updown=resblock_updown, conv_resample=conv_resample,
                num_classes=sd["label_emb.weight"].shape[0] if "label_emb.weight" in sd else None,
                first_channels=ch0)


def _cosine_alpha_bars(T: int, s: float = 0.008) -> torch.Tensor:
    """Improved-DDPM cosine schedule (Nichol & Dhariwal 2021, Eq. 17), betas clipped at 0.999."""
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    betas = torch.tensor([min(1 - f(i + 1) / f(i), 0.999) for i in range(T)], dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


_GD_SPEC = dict(centered=True, image_size=None, num_head_channels=None, num_heads=None, num_heads_upsample=-1,
                use_new_attention_order=False, num_res_blocks=None, noise_schedule="linear", beta_start=1e-4,
                beta_end=0.02, num_train_timesteps=1000, rescale_timesteps=False, timestep="interpolate",
                class_label=None, value_range=(0.0, 1.0), learn_sigma=None,
                # guided-diffusion / DDS config fields the weights determine too: checked when given
                num_channels=None, in_channels=None, out_channels=None, use_scale_shift_norm=None,
                resblock_updown=None, attention_resolutions=None, class_cond=None)
_DIFFUNET_BUFFERS = ("sqrt_1m_alphas_cumprod", "sqrt_alphas_cumprod")
_DIFFUNET_HEADS = dict(num_heads=4, num_head_channels=64)     # deepinv DiffUNet's fixed attention setting
_HEADS_HINT = ("pass num_head_channels=N (channels per head; openai's 64x64, 256x256 and 512x512 models and DDS use "
               "64) or num_heads=N (openai's 128x128 models: num_heads=4), or the model's config file: "
               "config='configs/vp/AAPM256.yml' (DDS), or '<checkpoint>.json' / '<checkpoint>.yml' beside the "
               "checkpoint with num_head_channels / num_heads")


def _heads(cfg: _Config, source: str, attn_channels, from_deepinv: bool) -> dict:
    """Attention head setting (guided-diffusion: ``num_head_channels`` per head unless -1, then ``num_heads``)."""
    nhc, nh = cfg["num_head_channels"], cfg["num_heads"]
    if nhc is None and nh is None:
        if not from_deepinv:
            raise CheckpointError(
                f"cannot load '{source}' as guided-diffusion: the number of attention heads is not stored in the "
                f"weights (attention blocks of {sorted(set(attn_channels))} channels) and a wrong value gives a "
                f"different denoiser; {_HEADS_HINT}")
        nhc, nh = _DIFFUNET_HEADS["num_head_channels"], _DIFFUNET_HEADS["num_heads"]
    nhc = -1 if nhc is None else int(nhc)
    if nhc == -1 and nh is None:
        raise CheckpointError(f"cannot load '{source}' as guided-diffusion: num_head_channels=-1 means 'num_heads "
                              f"heads' but num_heads is not set; {_HEADS_HINT}")
    nh = 1 if nh is None else int(nh)
    nh_up = int(cfg["num_heads_upsample"])
    for c in attn_channels:
        ok = c % nhc == 0 if nhc != -1 else all(c % h == 0 for h in {nh, nh if nh_up == -1 else nh_up})
        if not ok:
            what = f"num_head_channels={nhc}" if nhc != -1 else f"num_heads={nh}, num_heads_upsample={nh_up}"
            raise CheckpointError(f"cannot load '{source}' as guided-diffusion: {what} does not divide the "
                                  f"{c}-channel attention blocks; {_HEADS_HINT}")
    return dict(num_heads=nh, num_head_channels=nhc, num_heads_upsample=nh_up,
                use_new_attention_order=bool(cfg["use_new_attention_order"]))


def _check_config(cfg: _Config, source: str, arch: dict, learn_sigma_weights: bool):
    """Config fields (DDS / guided-diffusion flags) against what the weights say: one error listing conflicts."""
    n_levels = len(arch["level_channels"])
    seen = dict(num_channels=arch["model_channels"], in_channels=arch["in_channels"],
                out_channels=arch["out_channels"], num_res_blocks=arch["num_res_blocks"],
                use_scale_shift_norm=arch["use_scale_shift_norm"], resblock_updown=arch["resblock_updown"],
                class_cond=bool(arch["num_classes"]), learn_sigma=learn_sigma_weights)
    def differs(given, v):
        try:
            return (bool(given) if isinstance(v, bool) else int(given)) != v
        except (TypeError, ValueError):
            return True

    bad = [f"{k}={cfg[k]!r} (weights: {v!r})" for k, v in seen.items() if cfg.get(k) is not None and differs(cfg[k], v)]
    res, ar = cfg["image_size"], cfg["attention_resolutions"]
    if res is not None and ar is not None:                  # guided-diffusion: attention where image_size // ds = r
        have = sorted(2 ** lv for lv in arch["attention_levels"])
        try:
            want = sorted({int(res) // int(r) for r in str(ar).replace(" ", "").strip("()[]").split(",") if r})
            ok = [d for d in want if d < 2 ** n_levels] == have
        except (TypeError, ValueError, ZeroDivisionError):
            ok = False
        if not ok:
            bad.append(f"attention_resolutions={ar!r} at image_size={res!r} (weights: attention at downsampling "
                       f"factors {have})")
    if bad:
        where = f" (config '{cfg.sidecar_path}')" if cfg.sidecar_path else ""
        raise CheckpointError(f"cannot load '{source}' as guided-diffusion: the settings contradict the "
                              f"weights{where}: {'; '.join(bad)}")


def _build_guided_diffusion(sd, extras, cfg: _Config, source, device):
    # deepinv's DiffUNet.state_dict() carries two schedule buffers it cannot reload itself (audit §3): drop them
    from_deepinv = any(k in sd for k in _DIFFUNET_BUFFERS)
    sd = {k: v for k, v in sd.items() if k not in _DIFFUNET_BUFFERS}
    try:
        arch = infer_guided_diffusion_config(sd, cfg["num_res_blocks"])
    except (KeyError, ValueError, IndexError) as e:
        raise CheckpointError(f"cannot load '{source}' as guided-diffusion: cannot read the architecture from the "
                              f"weights ({type(e).__name__}: {e})") from None
    first = arch.pop("first_channels")
    if first != arch["level_channels"][0]:
        raise CheckpointError(f"cannot load '{source}' as guided-diffusion: input conv has {first} channels but the "
                              f"first ResBlock {arch['level_channels'][0]} (not an ADM UNet layout)")
    C = arch["in_channels"]
    learn_sigma = arch["out_channels"] == 2 * C if cfg["learn_sigma"] is None else bool(cfg["learn_sigma"])
    if arch["out_channels"] not in (C, 2 * C):
        raise CheckpointError(f"cannot load '{source}': output has {arch['out_channels']} channels for {C} input "
                              f"channels (expected {C} for eps or {2 * C} for eps + learned variance)")
    _check_config(cfg, source, arch, arch["out_channels"] == 2 * C)
    attn_channels = [arch["level_channels"][lv] for lv in arch["attention_levels"]] + [arch["level_channels"][-1]]
    heads = _heads(cfg, source, attn_channels, from_deepinv)
    try:
        net = GuidedDiffusionUNet(**arch, **heads)
    except AssertionError as e:  # pragma: no cover - _heads checks divisibility first
        raise CheckpointError(f"cannot load '{source}': attention settings do not fit the channels ({e}); "
                              f"{_HEADS_HINT}") from None
    load_weights_strict(net, sd, source=source, fmt="guided-diffusion", what=_short(arch))
    T = int(cfg["num_train_timesteps"])
    if cfg["noise_schedule"] == "linear":
        ab = S.VPSchedule(float(cfg["beta_start"]), float(cfg["beta_end"]), T).alpha_bars()
    elif cfg["noise_schedule"] == "cosine":
        ab = _cosine_alpha_bars(T)
    else:
        raise CheckpointError(f"noise_schedule: expected 'linear' or 'cosine', received {cfg['noise_schedule']!r}")
    label = _class_label(cfg, arch["num_classes"], source, one_hot=False)
    n_levels = len(arch["level_channels"])
    res = cfg["image_size"]
    info = dict(format="guided-diffusion", path=source, arch={**arch, **heads}, learn_sigma=learn_sigma,
                schedule=dict(noise_schedule=cfg["noise_schedule"], beta_start=cfg["beta_start"],
                              beta_end=cfg["beta_end"], num_train_timesteps=T), weights=extras.get("weights_key", "state_dict"),
                n_params=_n_params(net))
    prior = DiscreteVPPrior(_TimestepCall(net, label), ab, prediction="epsilon", timestep=cfg["timestep"],
                            timestep_scale=1000.0 / T if cfg["rescale_timesteps"] else 1.0, channels=C,
                            resolution=None if res is None else _pair(res), centered=cfg["centered"],
                            value_range=cfg["value_range"], size_multiple=2 ** (n_levels - 1),
                            name=f"guided-diffusion:{Path(source).name}", info=info)
    return _freeze(prior, device)



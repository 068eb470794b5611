"""Safe checkpoint reading and format detection, shared by every format's loader.

Only ``safetensors`` and ``torch.load(..., weights_only=True)`` read files (pickles are refused with how to
convert them once); state dicts are unwrapped (EMA / ``state_dict`` / ``module.`` prefixes), the format is
detected from the keys (:func:`detect_format`), weights load strictly with one clear error
(:func:`load_weights_strict`), and settings the weights cannot tell come from keyword arguments or a JSON
sidecar (:class:`_Config`).
"""
from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import torch
from torch import nn

SUPPORTED_FORMATS = {
    "guided-diffusion": "openai/guided-diffusion ADM UNet state dict (keys input_blocks.*, middle_block.*, out.*)",
    "edm-ncsnpp": "EDM SongUNet (DDPM++/NCSN++) state dict, deepinv NCSNpp layout (keys map_layer0.*, enc.*, dec.*_aux_conv.*)",
    "edm-adm": "EDM DhariwalUNet state dict, deepinv ADMUNet layout (keys map_layer0.*, enc.*, out_conv.*)",
    "score-sde": "yang-song/score_sde NCSN++/DDPM++ checkpoint (keys all_modules.N.*), plus a config",
    "diffusers": "diffusers UNet2DModel folder (config.json + diffusion_pytorch_model.safetensors)",
}
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar")
PICKLE_SUFFIXES = (".pkl", ".pickle")
_CONVERT_HINT = ("convert it once, in an environment where you trust the file: load it there, then re-save only the "
                 "weights with torch.save(model.state_dict(), 'weights.pt') or safetensors.torch.save_file("
                 "model.state_dict(), 'weights.safetensors')")
_REQUIRED = object()


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: the message names the file, the reason and the fix."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path does not exist."""


# =====================================================================================================
# safe reading
# =====================================================================================================
def _sniff(path: Path) -> str:
    """File kind from its first bytes: 'empty', 'zip' (torch.save), 'pickle', 'safetensors' or 'unknown'."""
    size = path.stat().st_size
    if size == 0:
        return "empty"
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if len(head) >= 9:  # before the pickle test: the 8-byte header length may start with 0x80
        n = int.from_bytes(head[:8], "little")
        if 0 < n <= size - 8 and head[8:9] == b"{":
            return "safetensors"
    if head[:1] == b"\x80":
        return "pickle"
    return "unknown"


def _refuse_pickle(path: Path, why: str) -> CheckpointError:
    return CheckpointError(
        f"refusing to load '{path}': {why}. invdiff only reads safetensors files and torch.save files that "
        f"torch.load(weights_only=True) accepts, because unpickling arbitrary objects can run arbitrary code. "
        f"To use it, {_CONVERT_HINT}.")


def read_checkpoint_file(path, *, device="cpu"):
    """Read a checkpoint file without executing code: safetensors, or ``torch.load(weights_only=True)``.

    Returns whatever the file holds (a state dict, or a dict nesting one). Raises :class:`CheckpointError`
    for missing, empty, truncated or corrupt files and for files that need arbitrary unpickling.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointNotFoundError(f"checkpoint not found: '{p}' does not exist")
    if p.is_dir():
        raise CheckpointError(f"'{p}' is a folder; pass a checkpoint file (folders are read only as diffusers models)")
    suffix = p.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise _refuse_pickle(p, "a '.pkl' file is a Python pickle (EDM network pickles hold the whole network object; "
                                "for an EDM pickle, inside the EDM repository run: import pickle, torch; "
                                "net = pickle.load(open(PKL, 'rb'))['ema']; torch.save(net.model.state_dict(), 'edm.pt')")
    kind = _sniff(p)
    if kind == "empty":
        raise CheckpointError(f"cannot load '{p}': the file is empty (0 bytes): truncated download or failed save")
    # the content decides (a safetensors file named .pt is still read as safetensors); the suffix only when unclear
    if kind == "safetensors" or (kind == "unknown" and suffix == ".safetensors"):
        return _read_safetensors(p, device)
    if kind in ("zip", "pickle") or suffix in TORCH_SUFFIXES:
        return _read_torch(p, device)
    raise CheckpointError(
        f"cannot load '{p}': unsupported file type '{suffix or '(no suffix)'}'; supported: .safetensors, "
        f"{', '.join(TORCH_SUFFIXES)} (torch.save files) and diffusers model folders")


def _read_safetensors(p: Path, device):
    from safetensors.torch import load_file

    try:
        return load_file(str(p), device=str(torch.device(device)))
    except Exception as e:  # SafetensorError, OSError, ... all mean the same to a user
        raise CheckpointError(f"cannot load '{p}': not a valid safetensors file, probably truncated or corrupt "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


_TORCH_BOILERPLATE = ("Weights only load failed", "In PyTorch", "(1)", "(2)", "Check the documentation", "Please file an issue")


def _weights_only_reason(msg: str) -> str:
    """The informative line of torch's weights-only refusal (e.g. 'Unsupported global: GLOBAL posix.system')."""
    for line in msg.splitlines():
        line = re.sub(r"\x1b\[[0-9;]*m", "", line).replace("WeightsUnpickler error:", "").strip()
        if line and not line.startswith(_TORCH_BOILERPLATE):
            return re.sub(r"\s*Please use `torch\.serialization.*", "", line)
    return ""


def _read_torch(p: Path, device):
    try:
        return torch.load(str(p), map_location=torch.device(device), weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Weights only load failed" in msg:
            detail = _weights_only_reason(msg)
            raise _refuse_pickle(p, "it needs unpickling of Python objects that weights-only loading refuses"
                                    + (f" ({detail})" if detail else "")) from None
        raise CheckpointError(f"cannot load '{p}': corrupt pickle data ({msg.splitlines()[0] if msg else type(e).__name__})") from None
    except Exception as e:  # RuntimeError (zip), EOFError, KeyError, ...: the bytes are not a torch.save file
        first = str(e).split(". ")[0].splitlines()[0] if str(e) else ""
        raise CheckpointError(f"cannot load '{p}': not a readable torch.save file, it is truncated or corrupt "
                              f"({type(e).__name__}{': ' + first[:160] if first else ''})") from None


# =====================================================================================================
# state dicts: unwrapping, prefixes, strict loading with clear errors
# =====================================================================================================
_NESTED_KEYS = ("ema", "ema_model", "model_ema", "state_dict", "model", "net", "network", "params", "module", "weights")
_PREFIXES = ("module.", "model.", "_orig_mod.", "net.")


def _is_tensor_dict(obj) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                          for k, v in obj.items())


def _unwrap(obj, p: Path) -> tuple[dict, dict]:
    """Find the state dict inside a loaded object. Returns (state_dict, extras)."""
    extras: dict = {}
    if _is_tensor_dict(obj):
        sd = dict(obj)
    elif isinstance(obj, dict):
        # score_sde training state: {'model': sd, 'ema': {'shadow_params': [...]}, 'optimizer': ..., 'step': ...}
        ema = obj.get("ema")
        if _is_tensor_dict(obj.get("model")) and isinstance(ema, dict) and isinstance(ema.get("shadow_params"), list):
            sd = dict(obj["model"])
            extras["ema_shadow_params"] = ema["shadow_params"]
            extras["weights_key"] = "model+ema"
        else:
            for key in _NESTED_KEYS:
                if _is_tensor_dict(obj.get(key)):
                    sd = dict(obj[key])
                    extras["weights_key"] = key
                    break
            else:
                top = ", ".join(f"{k!r}: {type(v).__name__}" for k, v in list(obj.items())[:10])
                raise CheckpointError(f"cannot load '{p}': no state dict (a dict of tensors) found; top-level entries "
                                      f"{{{top}}}; nested state dicts are looked for under {list(_NESTED_KEYS)}")
    else:
        raise CheckpointError(f"cannot load '{p}': expected a state dict (dict of tensors), found a {type(obj).__name__}")
    changed = True
    while changed:
        changed = False
        for pre in _PREFIXES:
            if all(k.startswith(pre) for k in sd):
                sd = {k[len(pre):]: v for k, v in sd.items()}
                extras.setdefault("stripped_prefixes", []).append(pre)
                changed = True
    return sd, extras


def _few(keys, n=5) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


_CONSTANT_BUFFERS = ("resample_filter",)   # deepinv's fixed FIR resampling kernels (not learned, not in score_sde)


def load_weights_strict(net: nn.Module, sd: dict, *, source: str, fmt: str, what: str = "",
                        constant_buffers: tuple[str, ...] = ()) -> None:
    """``net.load_state_dict(sd, strict=True)`` with one clear error listing missing/unexpected keys and shapes.

    Buffers whose name ends with one of ``constant_buffers`` may be absent from ``sd``: they are taken from the
    freshly built network (they are constants of the architecture).
    """
    expected = net.state_dict()
    if constant_buffers:
        fill = {n for n, _ in net.named_buffers() if n.endswith(constant_buffers) and n not in sd}
        sd = {**{k: expected[k] for k in fill}, **sd}
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    ctx = f"the {fmt} network{' (' + what + ')' if what else ''} built for '{source}'"
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_few(unexpected)}")
        raise CheckpointError(f"cannot load '{source}': the weights do not match {ctx} ({len(expected)} tensors): "
                              f"{'; '.join(parts)}. Check format= and the architecture settings.")
    wrong = [(k, tuple(sd[k].shape), tuple(v.shape)) for k, v in expected.items() if tuple(sd[k].shape) != tuple(v.shape)]
    if wrong:
        shown = "; ".join(f"{k}: checkpoint {a} vs network {b}" for k, a, b in wrong[:4])
        raise CheckpointError(f"cannot load '{source}': {len(wrong)} tensor(s) have the wrong shape for {ctx}: {shown}"
                              f"{' ...' if len(wrong) > 4 else ''}. Check the architecture settings.")
    net.load_state_dict(sd, strict=True)


def detect_format(keys) -> str | None:
    """The checkpoint format of a state dict from its key names (None if unknown)."""
    ks = set(keys)
    if any(k.startswith("all_modules.") for k in ks):
        return "score-sde"
    if "input_blocks.0.0.weight" in ks and "out.2.weight" in ks:
        return "guided-diffusion"
    if "map_layer0.weight" in ks and any(k.startswith("enc.") for k in ks):
        if "out_conv.weight" in ks:
            return "edm-adm"
        if any(k.startswith("dec.") and "_aux_conv." in k for k in ks):
            return "edm-ncsnpp"
    if "conv_in.weight" in ks and any(k.startswith("time_embedding.") for k in ks):
        return "diffusers"
    return None


# =====================================================================================================
# configuration: keyword arguments + JSON sidecar
# =====================================================================================================
_SECTIONS = ("model", "data", "training", "diffusion", "sampling", "config")


def _flatten(cfg: dict) -> dict:
    flat = {k: v for k, v in cfg.items() if not (k in _SECTIONS and isinstance(v, dict))}
    for sec in _SECTIONS:
        if isinstance(cfg.get(sec), dict):
            for k, v in _flatten(cfg[sec]).items():
                flat.setdefault(k, v)
    return flat


def _sidecar(p: Path) -> tuple[dict, Path | None]:
    for cand in (p.with_suffix(".json"), p.with_name(p.name + ".json")):
        if cand != p and cand.is_file():
            try:
                raw = json.loads(cand.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CheckpointError(f"cannot read the config sidecar '{cand}' of '{p}': invalid JSON ({e})") from None
            if not isinstance(raw, dict):
                raise CheckpointError(f"config sidecar '{cand}' must hold a JSON object, found {type(raw).__name__}")
            return _flatten(raw), cand
    return {}, None


class _Config:
    """Resolved settings for one format: user keyword arguments > sidecar > defaults (or required)."""

    def __init__(self, fmt: str, source: str, spec: dict, user: dict, sidecar: dict, sidecar_path):
        unknown = sorted(set(user) - set(spec))
        if unknown:
            raise TypeError(f"load_checkpoint(format={fmt!r}): unknown setting(s) {unknown}; accepted: {sorted(spec)}")
        self.fmt, self.source, self.sidecar_path = fmt, source, sidecar_path
        self.values: dict = {}
        self.missing: list[str] = []
        for k, default in spec.items():
            if k in user:
                self.values[k] = user[k]
            elif k in sidecar:
                self.values[k] = sidecar[k]
            elif default is _REQUIRED:
                self.missing.append(k)
            else:
                self.values[k] = default

    def require(self, doc: str):
        if self.missing:
            where = f"the sidecar '{self.sidecar_path}'" if self.sidecar_path else \
                f"keyword arguments or a JSON sidecar '{Path(self.source).with_suffix('.json')}'"
            raise CheckpointError(f"cannot load '{self.source}' as {self.fmt}: the weights do not say {self.missing}; "
                                  f"pass them as {where}. {doc}")

    def __getitem__(self, k):
        return self.values[k]

    def get(self, k, default=None):
        return self.values.get(k, default)



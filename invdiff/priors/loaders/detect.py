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
# configuration: keyword arguments + config file (JSON / YAML / ml_collections python, never executed)
# =====================================================================================================
_SECTIONS = ("model", "data", "training", "diffusion", "sampling", "config")


def _flatten(cfg: dict) -> dict:
    flat = {k: v for k, v in cfg.items() if not (k in _SECTIONS and isinstance(v, dict))}
    for sec in _SECTIONS:
        if isinstance(cfg.get(sec), dict):
            for k, v in _flatten(cfg[sec]).items():
                flat.setdefault(k, v)
    return flat


_CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
# names other projects give to a setting the loaders know by another name (DDS YAML, guided-diffusion flags)
_ALIASES = {"num_diffusion_timesteps": "num_train_timesteps", "diffusion_steps": "num_train_timesteps",
            "beta_schedule": "noise_schedule"}


def _sidecar(p: Path, config=None) -> tuple[dict, Path | None]:
    """Settings from a config file: ``config`` if given, else the first of ``<ckpt>.json``, ``<ckpt>.pt.json``,
    ``<ckpt>.yaml``, ``<ckpt>.yml`` that exists. Returns (flat settings, file) or ({}, None)."""
    if config is not None:
        cand = Path(config)
        if not cand.is_file():
            raise CheckpointNotFoundError(f"argument 'config': config file '{cand}' for '{p}' does not exist")
        cands = [cand]
    else:
        cands = [p.with_suffix(".json"), p.with_name(p.name + ".json"), p.with_suffix(".yaml"), p.with_suffix(".yml")]
    for cand in cands:
        if cand != p and cand.is_file():
            raw = read_config_file(cand, p)
            flat = _flatten(raw)
            for alias, name in _ALIASES.items():
                if alias in flat:
                    flat.setdefault(name, flat[alias])
            return flat, cand
    return {}, None


def read_config_file(path, ckpt=None) -> dict:
    """A model config as a nested dict, read without executing code.

    - ``.json``: ``json.loads`` (e.g. a score_sde ``config.to_dict()`` dump, or any dict of settings);
    - ``.yaml`` / ``.yml``: ``yaml.safe_load`` (PyYAML, optional), e.g. the ``configs/vp/*.yml`` of DDS;
    - ``.py``: an ``ml_collections`` config as score_sde / score-MRI ship them (``configs/ve/*.py``): read by
      :func:`read_ml_collections_config`, which parses the assignments and never runs the file.
    """
    path = Path(path)
    of = f" of '{ckpt}'" if ckpt is not None else ""
    suffix = path.suffix.lower()
    if suffix == ".py":
        return read_ml_collections_config(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read the config file '{path}'{of}: {e}") from None
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise CheckpointError(
                f"cannot read the YAML config '{path}'{of}: PyYAML is not installed. Install it (pip install pyyaml) "
                f"or save the same settings as JSON ('{path.with_suffix('.json').name}', e.g. "
                f"json.dump(yaml.safe_load(open(...)), ...) where PyYAML is available)") from None
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise CheckpointError(f"cannot read the config file '{path}'{of}: invalid YAML ({e})") from None
    else:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"cannot read the config sidecar '{path}'{of}: invalid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"config file '{path}' must hold a mapping of settings, found {type(raw).__name__}")
    return raw


def read_ml_collections_config(path) -> dict:
    """Settings of an ``ml_collections`` python config (score_sde / score-MRI style), parsed, never executed.

    Follows, in statement order, the body of ``get_config()`` (else ``get_default_configs()``): aliases
    (``model = config.model``, ``config.data = data = ml_collections.ConfigDict()``), assignments of literals
    (``model.nf = 128``, ``config.training.sde = 'vesde'``) and the defaults it starts from
    (``config = get_default_configs()`` imported ``from configs.default_lsun_configs``: that file is looked for
    under the config's folder and its parents). Values that are not literals (``torch.device(...)``) are skipped.

    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "c.py"
    >>> lines = ["def get_config():", "  config = ml_collections.ConfigDict()",
    ...          "  config.model = model = ml_collections.ConfigDict()", "  model.nf = 64", "  return config"]
    >>> _ = f.write_text(chr(10).join(lines))
    >>> read_ml_collections_config(f)
    {'model': {'nf': 64}}
    """
    import ast

    path = Path(path)
    out: dict = {}

    def parse(file: Path, func_names, depth: int):
        try:
            tree = ast.parse(file.read_text(), filename=str(file))
        except (OSError, UnicodeDecodeError, SyntaxError) as e:
            raise CheckpointError(f"cannot read the python config '{file}': {e}") from None
        imports = {a.asname or a.name: node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                   and node.module for a in node.names}
        funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
        fn = next((funcs[n] for n in func_names if n in funcs), None)
        if fn is None:
            raise CheckpointError(f"cannot read the python config '{file}': no function {' or '.join(func_names)}()")
        alias: dict[str, tuple] = {}

        def target(node):                       # config.a.b / alias.b -> ('a', 'b'); None if not a config path
            parts = []
            while isinstance(node, ast.Attribute):
                parts.append(node.attr)
                node = node.value
            if not isinstance(node, ast.Name) or node.id not in alias:
                return None
            return alias[node.id] + tuple(reversed(parts))

        def put(keys, value):
            d = out
            for k in keys[:-1]:
                d = d.setdefault(k, {})
                if not isinstance(d, dict):
                    return
            if keys:
                d[keys[-1]] = value

        body = [st for st in ast.walk(fn) if isinstance(st, ast.Assign)]      # breadth first: body in order
        for st in body:
            v = st.value
            names = [t.id for t in st.targets if isinstance(t, ast.Name)]
            attrs = [k for t in st.targets if not isinstance(t, ast.Name) for k in [target(t)] if k]
            if isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id in imports and depth < 4:
                module = imports[v.func.id]                     # config = get_default_configs()
                rel = Path(*module.split(".")).with_suffix(".py")
                found = next((d / rel for d in [file.parent, *file.parents][:6] if (d / rel).is_file()), None)
                if found is None:
                    raise CheckpointError(
                        f"cannot read the python config '{path}': it starts from {v.func.id}() of '{module}', "
                        f"and '{rel}' was not found beside it or in a parent folder; keep the repository's config "
                        f"folder together, or save config.to_dict() as JSON")
                parse(found, (v.func.id,), depth + 1)
                where: tuple = ()
            elif isinstance(v, ast.Call) and ast.unparse(v.func).endswith("ConfigDict"):
                for k in attrs:                                 # config.data = data = ConfigDict()
                    if not isinstance(_get(out, k), dict):
                        put(k, {})
                where = attrs[0] if attrs else ()
            elif target(v) is not None:                         # model = config.model
                where = target(v)
            else:                                               # model.nf = 128
                try:
                    value = ast.literal_eval(v)
                except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                    continue                                    # not a literal: not a setting the loaders read
                for k in attrs:
                    put(k, value)
                continue
            for n in names:
                alias[n] = where

    parse(path, ("get_config", "get_default_configs"), 0)
    return out


def _get(d: dict, keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


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



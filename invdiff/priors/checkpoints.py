r"""Load published diffusion checkpoints from a local path, offline and safely, as invdiff priors.

:func:`load_checkpoint` reads a checkpoint from disk, rebuilds the network (deepinv classes, or diffusers'
``UNet2DModel``), loads the weights strictly and wraps the network into the invdiff denoiser contract

.. math::  D(x, \sigma) \approx \mathbb{E}[x_0 \mid x_0 + \sigma n = x],\qquad x, x_0 \text{ in [0, 1] data space},

with :math:`\sigma` on the data scale (:mod:`invdiff.priors.base`). Nothing is downloaded.

Safety
------
Only two readers are used: ``safetensors`` for ``.safetensors`` and ``torch.load(..., weights_only=True)`` for
``.pt/.pth/.ckpt/.bin/.tar``. A file that needs arbitrary Python objects unpickled (an ``argparse.Namespace``
inside a checkpoint, a pickled module, EDM's ``.pkl`` network pickles) is refused with one
:class:`CheckpointError` saying how to convert it once, in a trusted environment.

Formats (``format=`` or detected from the state-dict keys)
------------------------------------------------------------
================== =============================================== ==============================================
format             detected by                                     network
================== =============================================== ==============================================
guided-diffusion   ``input_blocks.0.0.weight`` + ``out.2.weight``  ADM UNet of openai/guided-diffusion (also ILVR,
                                                                   DPS, DDS's CT/MRI priors, deepinv ``DiffUNet``
                                                                   files); built from deepinv's ``DiffUNet``
                                                                   blocks with the architecture read from the keys
edm-ncsnpp         ``map_layer0.weight`` + ``dec.*_aux_conv.*``    EDM ``SongUNet`` (DDPM++/NCSN++) = deepinv
                                                                   ``NCSNpp``
edm-adm            ``map_layer0.weight`` + ``out_conv.weight``     EDM ``DhariwalUNet`` = deepinv ``ADMUNet``
score-sde          ``all_modules.N.*``                             score_sde NCSN++/DDPM++ (score-MRI,
                                                                   DiffusionMBIR), keys converted to deepinv
                                                                   ``NCSNpp``; needs a config (see below)
diffusers          a folder with ``config.json`` (UNet2DModel)     ``diffusers.UNet2DModel`` (optional package)
================== =============================================== ==============================================

Wrappers (native space of the network: :math:`x_n = a x + b`, :math:`\sigma_n = a\sigma`, with
:math:`(a, b) = (2, -1)` for networks trained on [-1, 1] (``centered=True``) and :math:`(1, 0)` for [0, 1];
the result is mapped back by :math:`D = (D_n - b)/a`):

* discrete VP (guided-diffusion, diffusers DDPM schedulers): :math:`\bar\alpha = 1/(1+\sigma_n^2)`,
  :math:`x_{vp} = \sqrt{\bar\alpha}\,x_n`, timestep :math:`t` with :math:`\sigma_{train}(t) = \sigma_n`
  (log-sigma interpolation between training steps, or the nearest step with ``timestep="nearest"``), then
  eps: :math:`D_n = x_n - \sigma_n\,\hat\epsilon(x_{vp}, t)` (first C output channels; learned-variance
  channels dropped); v: :math:`D_n = \sqrt{\bar\alpha}\,x_{vp} - \sqrt{1-\bar\alpha}\,\hat v`; sample:
  :math:`D_n = \hat x_0`.
* preconditioned (EDM Table 1): :math:`D_n = c_{skip} x_n + c_{out} F(c_{in} x_n, c_{noise})` with
  ``edm``: :math:`\sigma_d^2/(\sigma^2+\sigma_d^2),\ \sigma\sigma_d/\sqrt{\sigma^2+\sigma_d^2},\
  1/\sqrt{\sigma^2+\sigma_d^2},\ \tfrac14\ln\sigma`;
  ``ve``: :math:`1,\ \sigma,\ 1,\ \ln(k\sigma)` (:math:`k=\tfrac12` for EDM's VEPrecond, :math:`k=1` for
  score_sde, whose net outputs :math:`\sigma_n\nabla\log p`);
  ``vp``: :math:`1,\ -\sigma,\ 1/\sqrt{1+\sigma^2},\ (M-1)\,t(\sigma)` with
  :math:`t(\sigma) = (\sqrt{\beta_{min}^2 + 2\beta_d\ln(1+\sigma^2)} - \beta_{min})/\beta_d` (the net predicts
  eps; score_sde continuous VP passes :math:`999\,t`).

Config: architecture fields are read from the weights wherever they can be. What weights cannot tell
(the SDE, the data range, attention heads, the noise schedule) comes from keyword arguments or a JSON
sidecar next to the checkpoint (``ckpt.json`` or ``ckpt.pt.json``; keyword arguments win). A nested
score_sde ``config.to_dict()`` dump (sections ``data``/``model``/``training``) is accepted as a sidecar.

Limits: score_sde configurations are those deepinv's ``NCSNpp`` can express: continuous VE NCSN++ (Fourier
embedding, FIR, ``progressive_input='residual'``, ``progressive='none'``) and continuous VP DDPM++ (positional
embedding, no FIR); the 256-px score_sde models (``output_skip``/``input_skip``), sub-VP and discrete-time
checkpoints are refused with the reason. Attention heads of guided-diffusion nets are not stored in the weights
(``num_head_channels=64`` by default, as in the published 256-px models; set it for others).

>>> from invdiff.priors.checkpoints import SUPPORTED_FORMATS
>>> sorted(SUPPORTED_FORMATS)
['diffusers', 'edm-adm', 'edm-ncsnpp', 'guided-diffusion', 'score-sde']
"""
from __future__ import annotations

import json
import math
import pickle
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .. import schedules as S
from .base import Prior
from .neural import edm_coefficients

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


# =====================================================================================================
# wrappers into the invdiff contract
# =====================================================================================================
def _sigma_batch(sigma, x: torch.Tensor) -> torch.Tensor:
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
    if s.numel() == 1:
        s = s.expand(x.shape[0])
    if s.numel() != x.shape[0]:
        raise ValueError(f"argument 'sigma': expected a scalar or {x.shape[0]} values (one per image), received {s.numel()}")
    if not torch.isfinite(s).all() or (s < 0).any():
        raise ValueError(f"argument 'sigma': expected finite values >= 0, received {s.tolist()[:8]}")
    return s


def _bc(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return S._bcast(c, x)


class _CheckpointPrior(Prior):
    """Shared metadata and input checks of checkpoint priors."""

    def _setup(self, *, channels, resolution, centered, value_range, size_multiple, name, info):
        self.channels = int(channels)
        self.resolution = tuple(int(r) for r in resolution) if resolution is not None else None
        self.value_range = tuple(value_range) if value_range is not None else None
        self.centered = bool(centered)
        self.native_affine = (2.0, -1.0) if centered else (1.0, 0.0)
        self.size_multiple = int(size_multiple)
        self._name = name
        self.info = dict(info)

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        x = self.check_input(x)
        m = self.size_multiple
        if m > 1 and (x.shape[-1] % m or x.shape[-2] % m):
            raise ValueError(f"argument 'x': expected height and width divisible by {m} for prior {self.name!r} "
                             f"(its UNet downsamples {int(math.log2(m))} times), received {tuple(x.shape)}")
        return x

    def _to_native(self, x, s):
        a, b = self.native_affine
        return a * x + b, a * s

    def _from_native(self, d):
        a, b = self.native_affine
        return (d - b) / a


class DiscreteVPPrior(_CheckpointPrior):
    r"""A network trained on a discrete DDPM (VP) schedule, as an invdiff denoiser.

    ``net(x_vp, t)`` predicts ``prediction`` ('epsilon', 'v_prediction' or 'sample') from the VP state
    :math:`x_{vp} = \sqrt{\bar\alpha_t} x_0 + \sqrt{1-\bar\alpha_t}\epsilon` in the network's native range.
    See the module docstring for the equations. ``train_sigmas`` are the data-space noise levels of the
    training timesteps (a solver that passes these hits the training grid exactly).
    """

    def __init__(self, net: nn.Module, alpha_bars: torch.Tensor, *, prediction: str = "epsilon",
                 timestep: str = "interpolate", timestep_scale: float = 1.0, channels: int, resolution=None,
                 centered: bool = True, value_range=(0.0, 1.0), size_multiple: int = 1, name: str = "checkpoint",
                 info: dict | None = None):
        super().__init__()
        if prediction not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"argument 'prediction': expected one of ['epsilon', 'sample', 'v_prediction'], received {prediction!r}")
        if timestep not in ("interpolate", "nearest"):
            raise ValueError(f"argument 'timestep': expected 'interpolate' or 'nearest', received {timestep!r}")
        self.net = net
        self.prediction = prediction
        self.timestep_mode = timestep
        self.timestep_scale = float(timestep_scale)
        ab = torch.as_tensor(alpha_bars, dtype=torch.float64)
        self.register_buffer("log_sigmas", S.alpha_bar_to_sigma(ab).log())
        self._setup(channels=channels, resolution=resolution, centered=centered, value_range=value_range,
                    size_multiple=size_multiple, name=name, info=info or {})

    @property
    def train_sigmas(self) -> torch.Tensor:
        """Data-space sigma of each training timestep t = 0..T-1."""
        return self.log_sigmas.exp() / self.native_affine[0]

    def timestep(self, sigma_native: torch.Tensor) -> torch.Tensor:
        """(Fractional) training timestep whose native noise level is ``sigma_native``; clamped to [0, T-1]."""
        ls = self.log_sigmas
        q = sigma_native.to(ls.dtype).clamp_min(1e-30).log()
        if self.timestep_mode == "nearest":
            return (q[:, None] - ls[None, :]).abs().argmin(dim=1).to(ls.dtype)
        hi = torch.searchsorted(ls, q).clamp(1, ls.numel() - 1)
        lo = hi - 1
        w = ((q - ls[lo]) / (ls[hi] - ls[lo])).clamp(0.0, 1.0)
        return lo.to(ls.dtype) + w

    def denoise(self, x: torch.Tensor, sigma) -> torch.Tensor:
        x = self._check(x)
        s = _sigma_batch(sigma, x)
        xn, sn = self._to_native(x, s)
        ab = S.sigma_to_alpha_bar(sn)                                     # alpha_bar = 1/(1+sigma_n^2)
        x_vp = _bc(ab.sqrt(), xn) * xn                                    # x_vp = sqrt(ab) x_n
        t = (self.timestep(sn) * self.timestep_scale).to(torch.float32)
        dtype = next(self.net.parameters()).dtype
        out = self.net(x_vp.to(dtype), t)[:, : self.channels].to(x.dtype)
        if self.prediction == "epsilon":
            d = S.eps_to_x0(xn, out, sn)                                  # D_n = x_n - sigma_n eps
        elif self.prediction == "v_prediction":
            d = S.v_to_x0(x_vp, out, ab)                                  # D_n = sqrt(ab) x_vp - sqrt(1-ab) v
        else:
            d = out
        return self._from_native(d)


@dataclass(frozen=True)
class EDMCoefficients:
    """EDM preconditioning (Karras et al. 2022, Table 1, "Ours")."""

    sigma_data: float = 0.5

    def __call__(self, sigma):
        return edm_coefficients(sigma, self.sigma_data)


@dataclass(frozen=True)
class VECoefficients:
    """VE preconditioning (Karras et al. 2022, Table 1, VE column): c_noise = ln(noise_scale * sigma).

    noise_scale = 0.5 for EDM's VEPrecond; 1 for score_sde's NCSN++ (Fourier features of ln sigma).
    """

    noise_scale: float = 0.5

    def __call__(self, sigma):
        one = torch.ones_like(sigma)
        return one, sigma, one, (self.noise_scale * sigma).clamp_min(1e-20).log()


@dataclass(frozen=True)
class VPCoefficients:
    """VP preconditioning (Karras et al. 2022, Table 1, VP column; Song et al. 2021 continuous VP SDE)."""

    beta_min: float = 0.1
    beta_d: float = 19.9
    M: int = 1000

    def __call__(self, sigma):
        one = torch.ones_like(sigma)
        t = ((self.beta_min ** 2 + 2 * self.beta_d * torch.log1p(sigma ** 2)).sqrt() - self.beta_min) / self.beta_d
        return one, -sigma, 1 / (1 + sigma ** 2).sqrt(), (self.M - 1) * t


class PreconditionedPrior(_CheckpointPrior):
    r"""A network ``F(c_in x_n, c_noise)`` with preconditioning ``coefficients(sigma_n) -> (c_skip, c_out, c_in, c_noise)``:
    :math:`D_n = c_{skip} x_n + c_{out} F`, in the network's native range (see the module docstring).
    """

    def __init__(self, net: nn.Module, coefficients: Callable, *, channels: int, resolution=None,
                 centered: bool = True, value_range=(0.0, 1.0), size_multiple: int = 1, name: str = "checkpoint",
                 info: dict | None = None):
        super().__init__()
        self.net = net
        self.coefficients = coefficients
        self._setup(channels=channels, resolution=resolution, centered=centered, value_range=value_range,
                    size_multiple=size_multiple, name=name, info=info or {})

    def denoise(self, x: torch.Tensor, sigma) -> torch.Tensor:
        x = self._check(x)
        s = _sigma_batch(sigma, x)
        xn, sn = self._to_native(x, s)
        c_skip, c_out, c_in, c_noise = self.coefficients(sn)
        dtype = next(self.net.parameters()).dtype
        f = self.net((_bc(c_in, xn) * xn).to(dtype), c_noise.to(dtype))[:, : self.channels].to(x.dtype)
        return self._from_native(_bc(c_skip, xn) * xn + _bc(c_out, xn) * f)


class _UNetCall(nn.Module):
    """Adapter: ``forward(u, c_noise)`` -> ``unet.forward_unet(scale * u + shift, c_noise, class_labels)``."""

    def __init__(self, unet: nn.Module, label: torch.Tensor | None = None, input_affine=(1.0, 0.0)):
        super().__init__()
        self.unet = unet
        self.register_buffer("label", label)
        self.input_affine = tuple(float(v) for v in input_affine)

    def forward(self, u, c_noise):
        a, b = self.input_affine
        if (a, b) != (1.0, 0.0):
            u = a * u + b
        labels = None if self.label is None else self.label.expand(u.shape[0], -1)
        return self.unet.forward_unet(u, c_noise.reshape(-1), class_labels=labels)


class _TimestepCall(nn.Module):
    """Adapter: ``forward(x_vp, t)`` for guided-diffusion (``unet(x, t, y)``) and diffusers (``unet(x, t).sample``)."""

    def __init__(self, unet: nn.Module, label: torch.Tensor | None = None, kind: str = "guided-diffusion",
                 output_times_label: bool = False):
        super().__init__()
        self.unet = unet
        self.register_buffer("label", label)
        self.kind = kind
        self.output_times_label = output_times_label

    def forward(self, x, t):
        t = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t.reshape(-1)
        y = None if self.label is None else self.label.expand(x.shape[0])
        if self.kind == "diffusers":
            out = self.unet(x, t, class_labels=y).sample
        else:
            out = self.unet(x, t, y)
        if self.output_times_label:                # diffusers VE nets return score = F / sigma
            out = out * _bc(t, out)
        return out


def _freeze(prior: Prior, device) -> Prior:
    prior = prior.to(device).eval()
    for p in prior.parameters():
        p.requires_grad_(False)
    return prior


def _n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


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
                 use_new_attention_order: bool = False):
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

        def attn(c):
            return AttentionBlock(c, num_heads=num_heads, num_head_channels=num_head_channels,
                                  use_new_attention_order=use_new_attention_order)

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
                    layers.append(attn(ch))
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


_GD_SPEC = dict(centered=True, image_size=None, num_head_channels=64, num_heads=4, use_new_attention_order=False,
                num_res_blocks=None, noise_schedule="linear", beta_start=1e-4, beta_end=0.02, num_train_timesteps=1000,
                rescale_timesteps=False, timestep="interpolate", class_label=None, value_range=(0.0, 1.0),
                learn_sigma=None)
_DIFFUNET_BUFFERS = ("sqrt_1m_alphas_cumprod", "sqrt_alphas_cumprod")


def _build_guided_diffusion(sd, extras, cfg: _Config, source, device):
    # deepinv's DiffUNet.state_dict() carries two schedule buffers it cannot reload itself (audit §3): drop them
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
    heads = dict(num_heads=int(cfg["num_heads"]), num_head_channels=int(cfg["num_head_channels"]),
                 use_new_attention_order=bool(cfg["use_new_attention_order"]))
    try:
        net = GuidedDiffusionUNet(**arch, **heads)
    except AssertionError as e:
        raise CheckpointError(f"cannot load '{source}': attention settings do not fit the channels ({e}); "
                              f"set num_head_channels= (or -1 and num_heads=)") from None
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
        net = cls(**arch, dropout=0.0, pretrained=None)  # never deepinv's default (a hub download, impossible offline)
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
    try:
        net = NCSNpp(**arch, dropout=0.0, pretrained=None)
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot load '{source}' as score-sde: cannot build NCSNpp {_short(arch)} ({e})") from None
    # score_sde normalises with min(C // 4, 32) groups (deepinv always uses 32): identical for C >= 128
    for m in net.modules():
        if isinstance(m, nn.GroupNorm):
            m.num_groups = min(m.num_channels // 4, 32)
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


# =====================================================================================================
# helpers and the entry point
# =====================================================================================================
def _pair(r) -> tuple[int, int]:
    if isinstance(r, (list, tuple)):
        return (int(r[0]), int(r[1])) if len(r) == 2 else (int(r[0]), int(r[0]))
    return (int(r), int(r))


def _short(arch: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in arch.items() if v not in (None, 0, False) or k in ("in_channels",))


def _class_label(cfg: _Config, n_classes, source, *, one_hot: bool):
    if not n_classes:
        if cfg.get("class_label") is not None:
            raise CheckpointError(f"cannot load '{source}': class_label given but the network is unconditional")
        return None
    c = cfg.get("class_label")
    if c is None:
        raise CheckpointError(f"cannot load '{source}': the network is class-conditional ({n_classes} classes); "
                              f"pass class_label=<int in [0, {n_classes - 1}]> to get a prior for one class")
    if not isinstance(c, int) or not 0 <= c < n_classes:
        raise CheckpointError(f"class_label: expected an int in [0, {n_classes - 1}], received {c!r}")
    if one_hot:
        return torch.nn.functional.one_hot(torch.tensor([c]), n_classes).float()
    return torch.tensor([c])


_SPECS = {"guided-diffusion": _GD_SPEC, "edm-ncsnpp": _EDM_SPEC, "edm-adm": _EDM_SPEC, "score-sde": _SDE_SPEC}


def load_checkpoint(path, *, device="cpu", format: str | None = None, **arch_kwargs) -> Prior:
    """Load a published diffusion checkpoint from a local path as an invdiff :class:`~invdiff.priors.base.Prior`.

    Parameters
    ----------
    path : a checkpoint file (``.safetensors``, ``.pt/.pth/.ckpt/.bin``) or a diffusers model/pipeline folder.
    device : where the network lives.
    format : one of :data:`SUPPORTED_FORMATS`, or None to detect it from the state-dict keys.
    **arch_kwargs : settings the weights cannot tell (override a JSON sidecar ``<ckpt>.json``):

        - guided-diffusion: ``centered`` (True: trained on [-1, 1]; False for DDS's [0, 1] CT/MRI priors),
          ``image_size``, ``num_head_channels`` (64) / ``num_heads`` (4, used when num_head_channels=-1),
          ``use_new_attention_order``, ``noise_schedule`` ('linear' | 'cosine'), ``beta_start``/``beta_end``/
          ``num_train_timesteps`` (1e-4/0.02/1000), ``rescale_timesteps``, ``timestep`` ('interpolate' |
          'nearest'), ``class_label``, ``num_res_blocks`` (normally inferred);
        - edm-ncsnpp / edm-adm: ``precond`` ('edm' | 'vp' | 've', for EDM's EDMPrecond / VPPrecond / VEPrecond),
          ``sigma_data`` (0.5), ``beta_min``/``beta_d``/``M`` (VP), ``class_label``, ``centered`` (True: EDM
          trains on [-1, 1]; a deepinv network trained on [0, 1] with its default ``pixel_std`` needs
          ``centered=False, sigma_data=0.75``);
        - score-sde: ``sde``, ``image_size``, ``centered`` (required), ``ch_mult``, ``num_res_blocks``,
          ``attn_resolutions``, ``beta_min``/``beta_max``, ``use_ema`` (True) and score_sde config fields, checked;
        - diffusers: ``prediction_type``, ``beta_schedule``, ``beta_start``, ``beta_end``,
          ``num_train_timesteps`` (override scheduler_config.json), ``centered``, ``timestep``, ``class_label``;
        - all: ``value_range`` (metadata, default (0, 1)).

    Returns a frozen prior in eval mode: ``prior(x, sigma)`` with x in [0, 1] data space; ``prior.info`` says
    what was loaded.

    Raises :class:`CheckpointError` (a ``ValueError``; :class:`CheckpointNotFoundError` is also a
    ``FileNotFoundError``) with one message naming the file, the reason and the fix.
    """
    p = Path(path)
    if format is not None and format not in SUPPORTED_FORMATS:
        raise CheckpointError(f"argument 'format': expected one of {sorted(SUPPORTED_FORMATS)} or None, received {format!r}")
    if not p.exists():
        raise CheckpointNotFoundError(f"checkpoint not found: '{p}' does not exist")
    if p.is_dir() or format == "diffusers" or (p.is_file() and p.name in _WEIGHT_NAMES and (p.parent / "config.json").is_file()):
        if format not in (None, "diffusers"):
            raise CheckpointError(f"'{p}' is a folder: only diffusers model folders are loaded from folders, not {format!r}")
        return _build_diffusers(p, arch_kwargs, device)
    obj = read_checkpoint_file(p, device="cpu")
    sd, extras = _unwrap(obj, p)
    detected = detect_format(sd)
    fmt = format or detected
    if fmt is None:
        raise CheckpointError(
            f"cannot load '{p}': unknown checkpoint format. Supported formats: "
            + "; ".join(f"{k} ({v})" for k, v in SUPPORTED_FORMATS.items())
            + f". Keys seen ({len(sd)}): {_few(list(sd), 8)}")
    if format is not None and detected is not None and detected != format:
        raise CheckpointError(f"cannot load '{p}' as format={format!r}: its keys are those of a {detected!r} checkpoint "
                              f"(e.g. {_few(list(sd), 3)}); pass format={detected!r} or format=None")
    if fmt == "diffusers":
        raise CheckpointError(f"cannot load '{p}': diffusers weights need their config.json; pass the model folder")
    sidecar, sidecar_path = _sidecar(p)
    if "diffusion_steps" in sidecar:                       # guided-diffusion's command-line name
        sidecar.setdefault("num_train_timesteps", sidecar["diffusion_steps"])
    cfg = _Config(fmt, str(p), _SPECS[fmt], arch_kwargs, sidecar, sidecar_path)
    if fmt == "guided-diffusion":
        return _build_guided_diffusion(sd, extras, cfg, str(p), device)
    if fmt == "edm-ncsnpp":
        return _build_edm(sd, extras, cfg, str(p), device, "ncsnpp")
    if fmt == "edm-adm":
        return _build_edm(sd, extras, cfg, str(p), device, "adm")
    return _build_score_sde(sd, extras, cfg, str(p), device)


__all__ = [
    "load_checkpoint", "read_checkpoint_file", "detect_format", "load_weights_strict", "CheckpointError",
    "CheckpointNotFoundError", "SUPPORTED_FORMATS", "DiscreteVPPrior", "PreconditionedPrior", "EDMCoefficients",
    "VECoefficients", "VPCoefficients", "GuidedDiffusionUNet", "infer_guided_diffusion_config", "infer_edm_config",
    "score_sde_rules", "convert_score_sde_state_dict", "to_score_sde_state_dict",
]

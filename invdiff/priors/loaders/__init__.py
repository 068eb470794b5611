r"""Load published diffusion checkpoints from a local path, offline and safely, as invdiff priors.

:func:`load_checkpoint` reads a checkpoint from disk, rebuilds the network (deepinv classes, or diffusers'
``UNet2DModel``), loads the weights strictly and wraps the network into the invdiff denoiser contract

.. math::  D(x, \sigma) \approx \mathbb{E}[x_0 \mid x_0 + \sigma n = x],\qquad x, x_0 \text{ in [0, 1] data space},

with :math:`\sigma` on the data scale (:mod:`invdiff.priors.base`). Nothing is downloaded.

Layout (one module per external format, its key-conversion rules next to the architecture it builds)
-----------------------------------------------------------------------------------------------------
- :mod:`.detect` -- safe file reading, state-dict unwrapping, format detection, strict loading, config sidecars;
- :mod:`.wrappers` -- the invdiff denoiser contract around a network (discrete VP, preconditioned);
- :mod:`.groupnorm` -- EDM / score_sde's GroupNorm group rule :math:`\min(32, \lfloor C/4\rfloor)` for deepinv networks;
- :mod:`.guided_diffusion`, :mod:`.edm` (ADM / NCSN++), :mod:`.score_sde`, :mod:`.diffusers_folder` -- one format each;
- this module: :func:`load_checkpoint`, which reads, detects and dispatches.

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
(the SDE, the data range, attention heads, the noise schedule) comes from keyword arguments or a config file
(``config=``, or ``ckpt.json`` / ``ckpt.pt.json`` / ``ckpt.yaml`` / ``ckpt.yml`` next to the checkpoint;
keyword arguments win). Accepted as they are shipped: a score_sde ``config.to_dict()`` dump (JSON), the YAML
configs of DDS (sections ``data``/``model``/``diffusion``; PyYAML needed), and score_sde / score-MRI
``ml_collections`` python configs, which are parsed, never run. Config fields that the weights also
determine (e.g. ``num_channels``, ``nf``) are checked against them.

Limits: score_sde configurations are those deepinv's ``NCSNpp`` can express: continuous VE NCSN++ (Fourier
embedding, FIR, ``progressive_input='residual'``, ``progressive='none'``) and continuous VP DDPM++ (positional
embedding, no FIR); the 256-px score_sde models (``output_skip``/``input_skip``), sub-VP and discrete-time
checkpoints are refused with the reason. Attention heads of guided-diffusion nets are not stored in the weights:
they must be given (keyword or config file); a missing head count is one error saying what to pass. EDM and
score_sde normalise C channels in :math:`\min(32, \lfloor C/4\rfloor)` groups (deepinv builds 32): the
networks are built with that rule (:mod:`.groupnorm`), so every width gives the original denoiser.

>>> from invdiff.priors.loaders import SUPPORTED_FORMATS
>>> sorted(SUPPORTED_FORMATS)
['diffusers', 'edm-adm', 'edm-ncsnpp', 'guided-diffusion', 'score-sde']
"""
from __future__ import annotations

from pathlib import Path

from ..base import Prior
from .detect import (SUPPORTED_FORMATS, CheckpointError, CheckpointNotFoundError, _Config, _few, _sidecar, _unwrap,
                     detect_format, load_weights_strict, read_checkpoint_file)
from .diffusers_folder import _WEIGHT_NAMES, _build_diffusers
from .edm import _EDM_SPEC, _build_edm, infer_edm_config
from .guided_diffusion import _GD_SPEC, GuidedDiffusionUNet, _build_guided_diffusion, infer_guided_diffusion_config
from .score_sde import _SDE_SPEC, _build_score_sde, convert_score_sde_state_dict, score_sde_rules, to_score_sde_state_dict
from .wrappers import DiscreteVPPrior, EDMCoefficients, PreconditionedPrior, VECoefficients, VPCoefficients

_SPECS = {"guided-diffusion": _GD_SPEC, "edm-ncsnpp": _EDM_SPEC, "edm-adm": _EDM_SPEC, "score-sde": _SDE_SPEC}


def load_checkpoint(path, *, device="cpu", format: str | None = None, config=None, **arch_kwargs) -> Prior:
    """Load a published diffusion checkpoint from a local path as an invdiff :class:`~invdiff.priors.base.Prior`.

    Parameters
    ----------
    path : a checkpoint file (``.safetensors``, ``.pt/.pth/.ckpt/.bin``) or a diffusers model/pipeline folder.
    device : where the network lives.
    format : one of :data:`SUPPORTED_FORMATS`, or None to detect it from the state-dict keys.
    config : the model's config file, read without executing it: JSON, YAML (DDS ``configs/vp/*.yml``; needs
        PyYAML) or an ``ml_collections`` python config (score_sde / score-MRI ``configs/ve/*.py``, parsed). Without
        it, ``<ckpt>.json``, ``<ckpt>.pt.json``, ``<ckpt>.yaml`` or ``<ckpt>.yml`` beside the checkpoint is used.
    **arch_kwargs : settings the weights cannot tell (override a JSON sidecar ``<ckpt>.json``):

        - guided-diffusion: ``num_head_channels`` or ``num_heads`` (required: the weights do not say how the
          attention channels split into heads; guided-diffusion's rule: ``num_head_channels`` channels per head
          unless it is -1, then ``num_heads`` heads; ``num_heads_upsample`` for the decoder, -1 = num_heads),
          ``centered`` (True: trained on [-1, 1]; False for DDS's [0, 1] CT/MRI priors),
          ``image_size``, ``use_new_attention_order``, ``noise_schedule`` ('linear' | 'cosine'), ``beta_start``/``beta_end``/
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
        if config is not None:
            raise CheckpointError(f"argument 'config': not used for the diffusers folder '{p}' (its config.json and "
                                  f"scheduler_config.json are read); pass settings as keyword arguments")
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
    sidecar, sidecar_path = _sidecar(p, config)
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

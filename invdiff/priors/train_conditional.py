r"""Conditional priors in ``invdiff train-prior --conditional mri|ct``: everything :mod:`invdiff.priors.train` needs
beyond its unconditional path, in one place (training code: it moves with ``train.py``).

The network :math:`D_\theta(x, \sigma, c)` is the EDM denoiser of :class:`~invdiff.priors.neural.NeuralPrior` with
the conditioning ``c`` concatenated to its input (``cond_channels``); the loss is the same EDM loss (Karras et
al. 2022, Eq. 2) on paired data :math:`(x_0/s, c)` from :class:`invdiff.datasets.paired.PairedStream`:
``c = [A^dagger y / s, sampling pattern]`` for a random operator ``A`` per image, ``s`` the per-slice scale
(:func:`invdiff.datasets.paired.measurement_conditioning`, shared with the ``"conditional-dc"`` solver).

Warm start from an unconditional prior (``--init-from mri-brainphantom-64``): every weight is copied and the
input convolution gets zero weights for the extra conditioning channels (:func:`widen_init_weights`), so
training starts exactly at the unconditional denoiser and learns to use the conditioning.

The exported prior records what it was trained for in ``info["conditional"]`` (kind, channels,
normalisation, operator distribution); solvers read it from there (:func:`conditional_meta`).
"""
from __future__ import annotations

import torch

from .._validate import check_choice, fail

KINDS = ("mri", "ct")
#: conditioning channels per kind: [A^dagger y (2 complex / 1 real), sampling pattern]
COND_CHANNELS = {"mri": 3, "ct": 2}
IMAGE_CHANNELS = {"mri": 2, "ct": 1}


def check_config(cfg) -> None:
    """Validate ``cfg.conditional`` and set / check ``cfg.cond_channels`` (called by ``validate_config``)."""
    if not cfg.conditional:
        return
    check_choice("conditional", cfg.conditional, KINDS)
    want = COND_CHANNELS[cfg.conditional]
    if cfg.cond_channels == 0:
        cfg.cond_channels = want
    elif cfg.cond_channels != want:
        fail("cond_channels", f"{want} for --conditional {cfg.conditional} ([A^dagger y, sampling pattern]) or 0 "
                              "(set automatically)", cfg.cond_channels)
    if cfg.dims != 2:
        fail("dims", "2 for a conditional prior (2D operators)", cfg.dims)


def make_source(cfg, base):
    """The paired training source on top of the configured clean-image source ``base``."""
    from ..datasets.paired import PairedStream

    return PairedStream(base, cfg.conditional, seed=cfg.seed)


def init_config_matches(cfg, init_net_config: dict, want: dict) -> bool:
    """A warm start may begin from the same network without conditioning (``cond_channels`` 0)."""
    if not cfg.conditional:
        return False
    return int(init_net_config.get("cond_channels", 0)) == 0 and dict(init_net_config, cond_channels=want["cond_channels"]) == want


def widen_init_weights(state: dict, net: torch.nn.Module) -> dict:
    """Unconditional weights -> conditional network: the input convolution's new input channels (the
    conditioning) get zero weights, so the widened network computes exactly the unconditional function."""
    target = net.state_dict()
    out = dict(state)
    for k, v in state.items():
        t = target.get(k)
        if t is None or tuple(t.shape) == tuple(v.shape):
            continue
        if k == "conv_in.weight" and v.dim() == t.dim() and v.shape[0] == t.shape[0] and v.shape[1] < t.shape[1] \
                and tuple(v.shape[2:]) == tuple(t.shape[2:]):
            w = torch.zeros(t.shape, dtype=v.dtype)
            w[:, :v.shape[1]] = v
            out[k] = w
        else:
            fail("init_from", f"weights of the configured network (tensor {k} of shape {tuple(t.shape)})",
                 f"shape {tuple(v.shape)}")
    return out


def info(cfg) -> dict:
    """What a conditional prior was trained for (``info["conditional"]`` of the exported prior)."""
    from ..datasets.paired import PairedStream

    src = PairedStream(lambda step, b: None, cfg["conditional"] if isinstance(cfg, dict) else cfg.conditional,
                       seed=int(cfg["seed"] if isinstance(cfg, dict) else cfg.seed))
    return src.describe()


__all__ = ["KINDS", "COND_CHANNELS", "check_config", "make_source", "init_config_matches", "widen_init_weights", "info"]

r"""Group normalisation with the group rule of EDM and score_sde, for deepinv networks that hard-code 32 groups.

EDM (``training/networks.py``, ``GroupNorm(num_groups=32, min_channels_per_group=4)``) and score_sde
(``layerspp.py``, ``nn.GroupNorm(num_groups=min(C // 4, 32))``) normalise a C-channel feature map in

.. math::  G(C) = \min(32,\ \lfloor C/4 \rfloor)

groups, i.e. 32 groups only for :math:`C \ge 128`. deepinv 0.5's ``NCSNpp`` / ``ADMUNet`` (and their shared
``UNetBlock``) build ``torch.nn.GroupNorm(num_groups=32)`` for every width: a checkpoint with a level of
fewer than 128 channels then loads strictly (GroupNorm has no weights that depend on the group count) but
computes a different function, and widths that are not multiples of 32 cannot even be built.

:func:`build_with_group_rule` builds such a network with :class:`RuleGroupNorm` in place of every GroupNorm
deepinv creates, so that the group count is the original projects' one from the start.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

from torch import nn

_LOCK = threading.Lock()


def group_count(channels: int, max_groups: int = 32, min_channels_per_group: int = 4) -> int:
    """:math:`G(C) = \\min(32, \\lfloor C/4 \\rfloor)`; raises ``ValueError`` when C cannot be split so."""
    g = min(max_groups, channels // min_channels_per_group)
    if g < 1 or channels % g:
        raise ValueError(f"{channels} channels cannot be normalised in min({max_groups}, {channels} // "
                         f"{min_channels_per_group}) = {g} groups (the original network cannot run this width either)")
    return g


class RuleGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` whose group count is :func:`group_count` of its channels (the requested count is a cap).

    Same parameters and state-dict keys as ``nn.GroupNorm``.

    >>> RuleGroupNorm(num_channels=64, num_groups=32).num_groups
    16
    >>> RuleGroupNorm(num_channels=256, num_groups=32).num_groups
    32
    """

    def __init__(self, num_channels: int, num_groups: int = 32, eps: float = 1e-5, affine: bool = True,
                 device=None, dtype=None):
        super().__init__(group_count(num_channels, num_groups), num_channels, eps=eps, affine=affine, device=device,
                         dtype=dtype)


@contextmanager
def _rule_groupnorm_in_deepinv():
    """Within the block, deepinv's NCSNpp / ADMUNet / UNetBlock modules create :class:`RuleGroupNorm`."""
    import deepinv.models.guided_diffusion as adm
    import deepinv.models.ncsnpp as ncsnpp
    import deepinv.models.utils as blocks

    modules = [m for m in (blocks, ncsnpp, adm) if getattr(m, "GroupNorm", None) is nn.GroupNorm]
    with _LOCK:
        for m in modules:
            m.GroupNorm = RuleGroupNorm
        try:
            yield
        finally:
            for m in modules:
                m.GroupNorm = nn.GroupNorm


def build_with_group_rule(cls, **kwargs) -> nn.Module:
    """``cls(**kwargs)`` (deepinv ``NCSNpp`` or ``ADMUNet``) with every GroupNorm using :func:`group_count`.

    Raises ``ValueError`` when a width has no valid group count; afterwards every ``nn.GroupNorm`` of the
    network is checked to follow the rule (a deepinv version that creates its norms elsewhere is caught here
    rather than giving a silently different denoiser).
    """
    with _rule_groupnorm_in_deepinv():
        net = cls(**kwargs)
    for name, m in net.named_modules():
        if isinstance(m, nn.GroupNorm) and m.num_groups != group_count(m.num_channels):
            raise RuntimeError(f"{cls.__name__}.{name}: GroupNorm with {m.num_groups} groups for {m.num_channels} "
                               f"channels, expected {group_count(m.num_channels)} (deepinv layout changed?)")
    return net

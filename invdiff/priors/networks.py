r"""Time-conditioned denoiser networks for invdiff's own priors.

:class:`CompactUNet` is a small, fully-convolutional U-Net in the style of DDPM / ADM
(Ho et al. 2020, Sec. 4 & App. B; Dhariwal & Nichol 2021, Sec. 3): residual blocks with GroupNorm and
SiLU, the noise level injected by a sinusoidal embedding (Vaswani et al. 2017, Sec. 3.5) and an MLP,
applied as a per-channel scale and shift after the second normalisation ("adaptive group
normalisation", Dhariwal & Nichol 2021, Sec. 3 / FiLM, Perez et al. 2018). There is no attention by
default, so the network applies to any image size (inputs are reflect-padded to a multiple of
``2 ** (levels - 1)`` and cropped back).

The network is the raw function :math:`F_\theta(c_{in} x, c_{noise})` of EDM (Karras et al. 2022,
Eq. 7); the preconditioning lives in :class:`invdiff.priors.neural.NeuralPrior`.

Conditional variant: ``cond_channels > 0`` adds input channels for a measurement-derived image
(e.g. the zero-filled / back-projected reconstruction), concatenated to the noisy input; the output
still has ``out_channels`` channels.

Positional (patch) variant: ``pos_channels = dims`` adds one input channel per spatial axis holding the normalised
coordinate of each pixel within the *whole* image (:func:`coordinate_channels`), as in patch-based diffusion priors
(PaDIS, Hu et al. 2024, Sec. 3.2 "positional encoding"): a network trained on random crops then knows where in the
image each crop lies. Without ``pos`` the network computes the coordinates of the input itself (the whole image).

Native volumes: ``dims=3`` builds the same network from ``Conv3d`` (3x3x3 kernels, stride-2 3x3x3
down-sampling, nearest up-sampling), GroupNorm and the same noise embedding; it takes (B, C, D, H, W).
``dims`` is stored in :attr:`CompactUNet.config` only when it is 3, so 2D configs (and the files of
every 2D prior) are unchanged from before ``dims`` existed.

>>> import torch
>>> net = CompactUNet(in_channels=2, base_channels=8, channel_mult=(1, 2))
>>> net(torch.zeros(3, 2, 20, 18), torch.zeros(3)).shape
torch.Size([3, 2, 20, 18])
>>> vol = CompactUNet(in_channels=1, base_channels=8, channel_mult=(1, 2), dims=3)
>>> vol(torch.zeros(2, 1, 6, 8, 10), torch.zeros(2)).shape
torch.Size([2, 1, 6, 8, 10])
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._validate import check_positive, fail


def _conv(dims: int):
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    return nn.Conv3d if dims == 3 else nn.Conv2d


def coordinate_channels(full, offsets=None, patch=None, *, batch: int = 1, dtype=torch.float32,
                        device=None, frame=None) -> torch.Tensor:
    r"""Normalised pixel-centre coordinates of crops within a whole image (PaDIS positional channels).

    For a whole image of spatial size ``full`` = (N_1, ..., N_d), pixel index :math:`i_a` on axis :math:`a` has the
    coordinate :math:`u_a = 2 (i_a + 1/2) / N_a - 1 \in (-1, 1)`. A crop of size ``patch`` at ``offsets`` (one
    row of d start indices per batch element, (B, d)) gets the coordinates of the pixels it covers. Without
    ``offsets`` / ``patch``: the whole image, repeated ``batch`` times. ``frame`` (one size per axis, default
    ``full``): coordinates relative to the centred ``frame`` of the image, :math:`u_a = 2 (i_a + 1/2 - (N_a -
    F_a)/2) / F_a - 1` (beyond +-1 outside it), e.g. the square field of view of an image with readout
    oversampling. Returns (B, d, *patch).

    >>> coordinate_channels((4, 4))[0, 0, :, 0].tolist()     # axis 0 (rows) varies down the image
    [-0.75, -0.25, 0.25, 0.75]
    >>> coordinate_channels((4, 4), torch.tensor([[2, 0]]), (2, 2))[0, 0, :, 0].tolist()
    [0.25, 0.75]
    """
    full = tuple(int(n) for n in full)
    d = len(full)
    patch = full if patch is None else tuple(int(n) for n in patch)
    frame = full if frame is None else tuple(int(n) for n in frame)
    offs = torch.zeros(batch, d, dtype=torch.long) if offsets is None else torch.as_tensor(offsets).long().reshape(-1, d)
    axes = []
    for a in range(d):
        i = offs[:, a:a + 1].to(torch.float64) + torch.arange(patch[a], dtype=torch.float64)[None]   # (B, P_a)
        u = (2 * (i + 0.5 - (full[a] - frame[a]) / 2) / frame[a] - 1).to(dtype)
        shape = [u.shape[0]] + [patch[b] if b == a else 1 for b in range(d)]
        axes.append(u.reshape(shape).expand(u.shape[0], *patch))
    return torch.stack(axes, 1).to(device) if device is not None else torch.stack(axes, 1)


def _groups(channels: int, max_groups: int = 8) -> int:
    g = min(max_groups, channels)
    while channels % g:
        g -= 1
    return g


class SinusoidalEmbedding(nn.Module):
    """Sinusoidal features of a scalar per sample (Vaswani et al. 2017, Sec. 3.5), frequencies 1..1/max_period."""

    def __init__(self, dim: int, max_period: float = 10000.0):
        super().__init__()
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # c_noise = ln(sigma)/4 lies in about [-2.5, 2]: scale up so the fast frequencies resolve it (EDM uses 1000x for VP t).
        arg = 100.0 * t.float()[:, None] * self.freqs[None]
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class ResBlock(nn.Module):
    """GN -> SiLU -> conv -> GN -> FiLM(emb) -> SiLU -> dropout -> conv, plus a (1x1) skip."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float = 0.0, dims: int = 2):
        super().__init__()
        conv = _conv(dims)
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = conv(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = conv(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = conv(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb).reshape(*emb.shape[:1], -1, *([1] * (x.dim() - 2))).chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head self-attention over pixels / voxels (used only where ``attn_levels`` asks for it)."""

    def __init__(self, ch: int, dims: int = 2):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.qkv = _conv(dims)(ch, 3 * ch, 1)
        self.proj = _conv(dims)(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, -1).unbind(1)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return x + self.proj(a.transpose(1, 2).reshape(b, c, *spatial))


class CompactUNet(nn.Module):
    r"""Small time-conditioned U-Net :math:`F(x, c_{noise})`.

    Parameters
    ----------
    in_channels : image channels (1 real, 2 complex); also the number of output channels.
    cond_channels : extra conditioning channels concatenated to the input (0 = unconditional).
    base_channels : width of the first level; level ``i`` has ``base_channels * channel_mult[i]``.
    channel_mult : per-level width multipliers; ``len(channel_mult)`` resolutions.
    num_blocks : residual blocks per level (encoder and decoder).
    attn_levels : indices of levels that get a self-attention block after their residual blocks.
    emb_dim : width of the noise embedding.
    dropout : dropout inside residual blocks.
    dims : 2 for images (B, C, H, W), 3 for volumes (B, C, D, H, W) (``Conv3d`` throughout).
    pos_channels : 0, or ``dims`` coordinate channels (:func:`coordinate_channels`) of the input's position within
        the whole image (patch-trained priors, PaDIS).
    """

    def __init__(self, in_channels: int = 1, cond_channels: int = 0, base_channels: int = 32,
                 channel_mult: Sequence[int] = (1, 2, 4), num_blocks: int = 1,
                 attn_levels: Sequence[int] = (), emb_dim: int = 128, dropout: float = 0.0, dims: int = 2,
                 pos_channels: int = 0):
        super().__init__()
        if dims not in (2, 3) or isinstance(dims, bool):
            fail("dims", "2 (images) or 3 (volumes)", dims)
        check_positive("in_channels", in_channels, integer=True)
        check_positive("cond_channels", cond_channels, strict=False, integer=True)
        check_positive("base_channels", base_channels, integer=True)
        check_positive("num_blocks", num_blocks, integer=True)
        if len(channel_mult) < 1 or any(not isinstance(m, int) or m < 1 for m in channel_mult):
            fail("channel_mult", "a non-empty sequence of positive integers", channel_mult)
        if any(lvl not in range(len(channel_mult)) for lvl in attn_levels):
            fail("attn_levels", f"level indices in [0, {len(channel_mult) - 1}]", attn_levels)
        self.config = dict(in_channels=in_channels, cond_channels=cond_channels, base_channels=base_channels,
                           channel_mult=list(channel_mult), num_blocks=num_blocks,
                           attn_levels=list(attn_levels), emb_dim=emb_dim, dropout=dropout)
        if pos_channels not in (0, dims) or isinstance(pos_channels, bool):
            fail("pos_channels", f"0 or {dims} (one coordinate channel per spatial axis)", pos_channels)
        if dims != 2:  # 2D configs stay exactly as before ``dims`` existed (old files, old readers)
            self.config["dims"] = dims
        if pos_channels:  # likewise configs without positional channels
            self.config["pos_channels"] = pos_channels
        self.in_channels, self.cond_channels, self.dims = in_channels, cond_channels, dims
        self.pos_channels = pos_channels
        self.levels = len(channel_mult)
        conv = _conv(dims)
        widths = [base_channels * m for m in channel_mult]

        self.embed = nn.Sequential(SinusoidalEmbedding(emb_dim), nn.Linear(emb_dim, emb_dim), nn.SiLU(),
                                   nn.Linear(emb_dim, emb_dim), nn.SiLU())
        self.conv_in = conv(in_channels + cond_channels + pos_channels, widths[0], 3, padding=1)

        self.enc = nn.ModuleList()
        self.down = nn.ModuleList()
        ch = widths[0]
        for i, w in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(num_blocks):
                blocks.append(ResBlock(ch, w, emb_dim, dropout, dims))
                ch = w
            self.enc.append(blocks)
            self.down.append(conv(ch, ch, 3, stride=2, padding=1) if i < self.levels - 1 else nn.Identity())
        self.enc_attn = nn.ModuleList([SelfAttention(w, dims) if i in attn_levels else nn.Identity()
                                       for i, w in enumerate(widths)])

        self.mid1 = ResBlock(ch, ch, emb_dim, dropout, dims)
        self.mid2 = ResBlock(ch, ch, emb_dim, dropout, dims)

        self.dec = nn.ModuleList()
        self.up = nn.ModuleList()
        for i in reversed(range(self.levels)):
            w = widths[i]
            blocks = nn.ModuleList()
            for j in range(num_blocks):
                blocks.append(ResBlock(ch + (w if j == 0 else 0), w, emb_dim, dropout, dims))
                ch = w
            self.dec.append(blocks)
            self.up.append(conv(ch, widths[i - 1], 3, padding=1) if i > 0 else nn.Identity())
            if i > 0:
                ch = widths[i - 1]
        self.dec_attn = nn.ModuleList([SelfAttention(widths[i], dims) if i in attn_levels else nn.Identity()
                                       for i in reversed(range(self.levels))])
        self.norm_out = nn.GroupNorm(_groups(ch), ch)
        self.conv_out = conv(ch, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @property
    def downsampling_factor(self) -> int:
        """Spatial sizes that are multiples of this run without padding (``2 ** (levels - 1)``)."""
        return 2 ** (self.levels - 1)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor | None = None,
                pos: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (B, in_channels, *spatial) already scaled by c_in, spatial = (H, W) or (D, H, W) for ``dims=3``;
        ``c_noise`` (B,); ``cond`` (B, cond_channels, *spatial); ``pos`` (B, pos_channels, *spatial) coordinates
        of a crop within its whole image (default: ``x`` is the whole image)."""
        if x.dim() != 2 + self.dims:
            fail("x", f"a {2 + self.dims}-D tensor (B, C, {'D, ' if self.dims == 3 else ''}H, W) for this "
                      f"{self.dims}D network", x)
        spatial = tuple(x.shape[2:])
        if self.cond_channels:
            if cond is None or cond.dim() != x.dim() or cond.shape[1] != self.cond_channels or tuple(cond.shape[2:]) != spatial:
                fail("cond", f"a (B, {self.cond_channels}, {', '.join(map(str, spatial))}) conditioning image",
                     cond if cond is not None else "None")
            x = torch.cat([x, cond.to(x.dtype)], dim=1)
        elif cond is not None:
            fail("cond", "None (this network was built with cond_channels=0)", cond)
        if self.pos_channels:
            if pos is None:
                pos = coordinate_channels(spatial, batch=x.shape[0], dtype=x.dtype, device=x.device)
            elif pos.dim() != x.dim() or pos.shape[1] != self.pos_channels or tuple(pos.shape[2:]) != spatial:
                fail("pos", f"(B, {self.pos_channels}, {', '.join(map(str, spatial))}) coordinate channels", pos)
            x = torch.cat([x, pos.to(x.dtype).expand(x.shape[0], *pos.shape[1:])], dim=1)
        elif pos is not None:
            fail("pos", "None (this network was built with pos_channels=0)", pos)
        m = self.downsampling_factor
        pads = [(-n) % m for n in spatial]
        if any(pads):
            pad_arg = [v for p in reversed(pads) for v in (0, p)]  # F.pad lists the last dimension first
            x = F.pad(x, pad_arg, mode="reflect" if min(spatial) > max(pads) else "replicate")
        emb = self.embed(c_noise.reshape(-1).expand(x.shape[0]))
        h = self.conv_in(x)
        skips = []
        for blocks, attn, down in zip(self.enc, self.enc_attn, self.down):
            for blk in blocks:
                h = blk(h, emb)
            h = attn(h)
            skips.append(h)
            h = down(h)
        h = self.mid2(self.mid1(h, emb), emb)
        for blocks, attn, up in zip(self.dec, self.dec_attn, self.up):
            skip = skips.pop()
            if h.shape[2:] != skip.shape[2:]:
                h = F.interpolate(h, size=skip.shape[2:], mode="nearest")
            h = blocks[0](torch.cat([h, skip], dim=1), emb)
            for blk in blocks[1:]:
                h = blk(h, emb)
            h = attn(h)
            if not isinstance(up, nn.Identity):
                h = up(F.interpolate(h, scale_factor=2, mode="nearest"))
        out = self.conv_out(F.silu(self.norm_out(h)))
        return out[(..., *(slice(0, n) for n in spatial))]


ARCHITECTURES = {"CompactUNet": CompactUNet}


def build_network(arch: str, config: dict) -> nn.Module:
    """Rebuild a network from its class name and constructor arguments (as stored in checkpoints)."""
    if arch not in ARCHITECTURES:
        fail("arch", f"one of {sorted(ARCHITECTURES)}", arch)
    try:
        return ARCHITECTURES[arch](**config)
    except TypeError as e:
        fail("config", f"constructor arguments of {arch}", f"{config!r} ({e})")


__all__ = ["CompactUNet", "coordinate_channels", "SinusoidalEmbedding", "ResBlock", "build_network", "ARCHITECTURES"]

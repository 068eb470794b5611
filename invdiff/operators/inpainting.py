r"""Inpainting: keep the pixels where a 0/1 mask is 1; mask makers for boxes, halves, random pixels, brush strokes.

Mask convention (all functions here): float tensor of 0s and 1s, **1 = observed pixel, 0 = missing**,
shape ``(1, H, W)`` (shared by all channels). :class:`Inpainting` also takes ``(C, H, W)`` masks
(one per channel) and batched ``(B, 1|C, H, W)`` masks (one per sample).
"""
from __future__ import annotations

import math

import deepinv as dinv
import torch

from .._validate import check_choice, check_in_range, fail
from .base import InvdiffPhysics, format_mask, gaussian_noise, parse_img_size


class Inpainting(InvdiffPhysics, dinv.physics.Inpainting):
    r"""Inpainting forward model (a thin subclass of deepinv ``Inpainting``).

    .. math::  y = m \odot x + m \odot n, \qquad m \in \{0, 1\}^{C \times H \times W},\ n \sim \mathcal{N}(0, \sigma^2 I)

    Missing pixels of ``y`` are exactly 0: noise is added only where ``m = 1``. :math:`A = \mathrm{diag}(m)`
    is self-adjoint and has the trivial SVD, so DDRM and closed-form ``prox_l2`` apply.

    Args:
        img_size: ``(C, H, W)`` or ``(H, W)`` (one channel); ``(C, D, H, W)`` for volumes.
        mask: 0/1 tensor of shape ``(H, W)``, ``(1|C, H, W)`` or ``(B, 1|C, H, W)`` (bool accepted);
            see :func:`box_mask`, :func:`random_mask`, :func:`half_mask`, :func:`brush_mask`.
        sigma: noise standard deviation on the [0, 1] image scale.
        rng: optional ``torch.Generator`` for the noise.

    Shapes: ``x`` and ``y`` are ``(B, C, H, W)``.

    Example:
        >>> import torch
        >>> from invdiff.operators import Inpainting, half_mask
        >>> op = Inpainting((1, 4, 4), half_mask((4, 4), side="right"))
        >>> op.A(torch.ones(1, 1, 4, 4))[0, 0]
        tensor([[1., 1., 0., 0.],
                [1., 1., 0., 0.],
                [1., 1., 0., 0.],
                [1., 1., 0., 0.]])
    """

    def __init__(self, img_size, mask: torch.Tensor, sigma: float = 0.0, *, rng: torch.Generator | None = None):
        x_shape = parse_img_size(img_size, spatial_dims=(2, 3))
        if not isinstance(mask, torch.Tensor):
            fail("mask", "a 0/1 torch.Tensor (see invdiff.operators.box_mask / random_mask / ...)", mask, TypeError)
        m = format_mask(mask, x_shape[1:], channels=(1, x_shape[0]))
        super().__init__(img_size=x_shape, mask=m, noise_model=gaussian_noise(sigma, rng))
        self._setup_shapes(x_shape, x_shape, is_complex=False)

    def update_parameters(self, mask=None, **kwargs):
        if mask is not None:
            mask = format_mask(mask, self.x_shape[1:], channels=(1, self.x_shape[0]))
        super().update_parameters(mask=mask, **kwargs)

    def _param_batch(self) -> int:
        return int(self.mask.shape[0]) if isinstance(self.mask, torch.Tensor) and self.mask.dim() > 1 else 1

    def A(self, x, mask=None, **kwargs):
        self.update_parameters(mask=mask, **kwargs)
        self._check_x_shape(x)
        return super().A(x)

    def A_adjoint(self, y, mask=None, **kwargs):
        self.update_parameters(mask=mask, **kwargs)
        self._check_y_shape(y)
        return super().A_adjoint(y)


# ---------------------------------------------------------------------------------------------------
# mask makers
# ---------------------------------------------------------------------------------------------------
def _hw(img_size, name="img_size") -> tuple[int, int]:
    return parse_img_size(img_size, name=name)[-2:]


def _check_generator(generator):
    if generator is not None and not isinstance(generator, torch.Generator):
        fail("generator", "a torch.Generator or None", generator, TypeError)
    return generator


def box_mask(img_size, box_frac: float = 0.5, *, box: tuple[int, int, int, int] | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Mask with one missing rectangle (0 inside the box, 1 elsewhere), shape ``(1, H, W)``.

    By default a centred box of ``round(box_frac * H) x round(box_frac * W)`` pixels; with ``generator``
    the box is placed uniformly at random inside the image (the "box inpainting" task of DPS/DDRM
    papers); ``box=(top, left, height, width)`` places it explicitly.

    >>> box_mask((4, 4), 0.5)[0]
    tensor([[1., 1., 1., 1.],
            [1., 0., 0., 1.],
            [1., 0., 0., 1.],
            [1., 1., 1., 1.]])
    """
    H, W = _hw(img_size)
    _check_generator(generator)
    if box is None:
        check_in_range("box_frac", box_frac, 0.0, 1.0, lo_open=True)
        bh, bw = max(1, round(box_frac * H)), max(1, round(box_frac * W))
        if generator is None:
            top, left = (H - bh) // 2, (W - bw) // 2
        else:
            top = int(torch.randint(0, H - bh + 1, (1,), generator=generator))
            left = int(torch.randint(0, W - bw + 1, (1,), generator=generator))
    else:
        if not (isinstance(box, (tuple, list)) and len(box) == 4
                and all(isinstance(b, int) and not isinstance(b, bool) for b in box)):
            fail("box", "a tuple of 4 ints (top, left, height, width)", box, TypeError)
        top, left, bh, bw = box
        if top < 0 or left < 0 or bh < 1 or bw < 1 or top + bh > H or left + bw > W:
            fail("box", f"(top, left, height, width) with the box inside the {H}x{W} image", box)
    m = torch.ones(1, H, W)
    m[:, top:top + bh, left:left + bw] = 0
    return m


def half_mask(img_size, side: str = "right") -> torch.Tensor:
    """Mask with one half of the image missing (``side`` in left/right/top/bottom), shape ``(1, H, W)``.

    >>> half_mask((2, 4), "left")[0]
    tensor([[0., 0., 1., 1.],
            [0., 0., 1., 1.]])
    """
    H, W = _hw(img_size)
    check_choice("side", side, ("left", "right", "top", "bottom"))
    m = torch.ones(1, H, W)
    if side == "left":
        m[..., : W // 2] = 0
    elif side == "right":
        m[..., W - W // 2:] = 0
    elif side == "top":
        m[:, : H // 2] = 0
    else:
        m[:, H - H // 2:] = 0
    return m


def random_mask(img_size, keep: float = 0.3, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each pixel observed independently with probability ``keep`` (all channels together), ``(1, H, W)``.

    >>> m = random_mask((64, 64), keep=0.3, generator=torch.Generator().manual_seed(0))
    >>> round(float(m.mean()), 1)
    0.3
    """
    H, W = _hw(img_size)
    check_in_range("keep", keep, 0.0, 1.0)
    _check_generator(generator)
    return (torch.rand(1, H, W, generator=generator) < keep).float()


def _segment_capsule(yy, xx, p0, p1, radius):
    """Pixels within ``radius`` of the segment p0-p1 (points as (x, y))."""
    (x0, y0), (x1, y1) = p0, p1
    dx, dy = x1 - x0, y1 - y0
    L2 = dx * dx + dy * dy
    if L2 == 0:
        t = torch.zeros_like(xx)
    else:
        t = (((xx - x0) * dx + (yy - y0) * dy) / L2).clamp(0, 1)
    px, py = x0 + t * dx, y0 + t * dy
    return (xx - px) ** 2 + (yy - py) ** 2 <= radius * radius


def brush_mask(img_size, generator: torch.Generator | None = None, *, max_strokes: int = 3,
               min_vertices: int = 4, max_vertices: int = 12, min_width: float = 12 / 256,
               max_width: float = 40 / 256) -> torch.Tensor:
    r"""Free-form brush-stroke mask (0 on the strokes), shape ``(1, H, W)``.

    The stroke model of DeepFill v2 (Yu et al., "Free-Form Image Inpainting with Gated Convolution",
    ICCV 2019, ``brush_stroke_mask``): 1 to ``max_strokes`` strokes, each a polyline of
    ``min_vertices..max_vertices-1`` segments with alternating turning angles around :math:`2\pi/5`
    (spread :math:`2\pi/15`), segment lengths :math:`\mathcal{N}(r, r/2)` clipped to [0, 2r] with
    :math:`r = \sqrt{H^2 + W^2}/8`, and brush width uniform in [``min_width``, ``max_width``] times
    ``min(H, W)`` (12-40 px at 256 px, as in the paper), drawn with round joints; random
    left-right / up-down flips.

    >>> m = brush_mask((64, 64), torch.Generator().manual_seed(0))
    >>> m.shape, bool(0 < m.mean() < 1)
    (torch.Size([1, 64, 64]), True)
    """
    H, W = _hw(img_size)
    _check_generator(generator)
    for nm, v in (("max_strokes", max_strokes), ("min_vertices", min_vertices), ("max_vertices", max_vertices)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            fail(nm, "a positive int", v)
    if max_vertices <= min_vertices:
        fail("max_vertices", f"an int > min_vertices = {min_vertices}", max_vertices)
    check_in_range("min_width", min_width, 0.0, 1.0, lo_open=True)
    check_in_range("max_width", max_width, min_width, 1.0)

    def U(a, b):
        return a + (b - a) * float(torch.rand((), generator=generator))

    def randint(a, b):  # [a, b)
        return int(torch.randint(a, b, (), generator=generator))

    mean_angle, angle_range = 2 * math.pi / 5, 2 * math.pi / 15
    r_avg = math.sqrt(H * H + W * W) / 8
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32),
                            indexing="ij")
    holes = torch.zeros(H, W, dtype=torch.bool)
    for _ in range(randint(1, max_strokes + 1)):
        n_vert = randint(min_vertices, max_vertices)
        a_min, a_max = mean_angle - U(0, angle_range), mean_angle + U(0, angle_range)
        angles = [(2 * math.pi - U(a_min, a_max)) if i % 2 == 0 else U(a_min, a_max) for i in range(n_vert)]
        verts = [(float(randint(0, W)), float(randint(0, H)))]
        for a in angles:
            r = min(max(r_avg + r_avg / 2 * float(torch.randn((), generator=generator)), 0.0), 2 * r_avg)
            nx = min(max(verts[-1][0] + r * math.cos(a), 0.0), W - 1.0)
            ny = min(max(verts[-1][1] + r * math.sin(a), 0.0), H - 1.0)
            verts.append((nx, ny))
        width = max(1.0, U(min_width, max_width) * min(H, W))
        for p0, p1 in zip(verts[:-1], verts[1:]):
            holes |= _segment_capsule(yy, xx, p0, p1, width / 2)
    if float(torch.randn((), generator=generator)) > 0:
        holes = holes.flip(-1)
    if float(torch.randn((), generator=generator)) > 0:
        holes = holes.flip(-2)
    return (~holes).float()[None]


__all__ = ["Inpainting", "box_mask", "half_mask", "random_mask", "brush_mask"]

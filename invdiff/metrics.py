r"""Image metrics (PSNR, SSIM, NMSE, the fastMRI volume protocol) and posterior-sample metrics.

**Image metrics** are per sample on batches (B, C, H, W) (PSNR and NMSE also on volumes (B, C, D, H, W)),
computed in float64 and returned as (B,) tensors. Complex images are handled explicitly, never guessed:
a complex-dtype tensor is reduced to its magnitude; a 2-channel real tensor is treated as (real, imag)
*only* with ``complex=True`` (otherwise as two real channels).

``data_range=None`` means the per-sample maximum of the reference (magnitude), which is the fastMRI
convention; pass ``data_range=1.0`` for images in [0, 1] (the deepinv / skimage-float convention).
SSIM follows Wang et al. 2004 with skimage's defaults (7 x 7 uniform window, sample covariance,
K1 = 0.01, K2 = 0.03, mean over the window-valid region and the channels), so
``ssim(x, ref, data_range=R)[b] == skimage.metrics.structural_similarity(ref[b], x[b], data_range=R,
channel_axis=0)``.

:func:`fastmri_metrics` reproduces ``fastmri/evaluate.py`` (facebookresearch/fastMRI): both volumes
centre-cropped to (W, W) with W the target's width, NMSE :math:`\|gt - pred\|^2/\|gt\|^2` over the volume,
PSNR by skimage on the whole volume with ``data_range = gt.max()``, SSIM the mean over slices of skimage's
``structural_similarity(gt[s], pred[s], data_range=gt.max())``. Aggregation over volumes
(:func:`fastmri_summary`) is mean +/- 2 sample standard deviations, as fastMRI prints it.

**Posterior metrics** (reference notes ``smc-ads-conditional-dc.md`` §5.4): sliced Wasserstein distance
between sample sets with its Monte Carlo floor, per-pixel coverage of central credible intervals, and
mode weights for mixture posteriors. **Calibration** of per-pixel uncertainty: :func:`coverage`,
:func:`interval_score` and :func:`crps` (proper scores, Gneiting & Raftery 2007) from samples, and :func:`spearman`
(rank correlation of a std map with the |error| map).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ._validate import check_in_range, check_positive, check_tensor, describe, fail

F64 = torch.float64


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def _magnitude_pair(x, ref, complex: bool, min_dim: int):
    """Validated float64 (x, ref) with magnitudes taken where requested."""
    out = []
    for name, t in (("x", x), ("ref", ref)):
        if not isinstance(t, torch.Tensor):
            fail(name, "a torch.Tensor", t, TypeError)
        if t.is_complex():
            t = t.abs()
        check_tensor(name, t)
        if t.dim() < min_dim:
            more = " or (B, C, D, H, W) / flat vectors (B, n)" if min_dim == 2 else ""
            fail(name, "a batch (B, C, H, W)" + more, t)
        if complex:
            if t.shape[1] != 2:
                fail(name, "2 channels (real, imaginary) with complex=True", t)
            t = t.to(F64).pow(2).sum(1, keepdim=True).sqrt()
        out.append(t.to(F64))
    x, ref = out
    if x.shape != ref.shape:
        fail("x", f"the same shape as ref {tuple(ref.shape)}", x)
    return x, ref


def _data_range(data_range, ref: torch.Tensor) -> torch.Tensor:
    B = ref.shape[0]
    if data_range is None:
        dr = ref.reshape(B, -1).amax(1)
        if (dr <= 0).any():
            fail("data_range", "an explicit value (the reference maximum is <= 0 for some sample)", describe(dr))
        return dr
    if isinstance(data_range, torch.Tensor):
        dr = data_range.to(device=ref.device, dtype=F64).reshape(-1)
        if dr.numel() == 1:
            dr = dr.expand(B)
        if dr.numel() != B or (dr <= 0).any():
            fail("data_range", f"a positive number or {B} positive values", data_range)
        return dr
    check_positive("data_range", data_range)
    return torch.full((B,), float(data_range), dtype=F64, device=ref.device)


# ------------------------------------------------------------------------------------------------
# per-sample image metrics
# ------------------------------------------------------------------------------------------------
def psnr(x: torch.Tensor, ref: torch.Tensor, data_range=None, *, complex: bool = False) -> torch.Tensor:
    r"""(B,) :math:`10\log_{10}(R^2/\mathrm{MSE})` per sample (inf where x == ref)."""
    x, ref = _magnitude_pair(x, ref, complex, min_dim=2)
    dr = _data_range(data_range, ref)
    mse = (x - ref).pow(2).reshape(x.shape[0], -1).mean(1)
    return 10 * torch.log10(dr ** 2 / mse)


def nmse(x: torch.Tensor, ref: torch.Tensor, *, complex: bool = False) -> torch.Tensor:
    r"""(B,) :math:`\|x - ref\|^2 / \|ref\|^2` per sample."""
    x, ref = _magnitude_pair(x, ref, complex, min_dim=2)
    B = x.shape[0]
    return (x - ref).pow(2).reshape(B, -1).sum(1) / ref.pow(2).reshape(B, -1).sum(1)


def ssim(x: torch.Tensor, ref: torch.Tensor, data_range=None, *, complex: bool = False,
         win_size: int = 7) -> torch.Tensor:
    r"""(B,) structural similarity (Wang et al. 2004, Eq. 13) of 2D images (B, C, H, W), skimage defaults.

    Local statistics over a ``win_size`` uniform window with the sample-covariance factor NP/(NP-1); the map
    is averaged over the positions where the window fits and over channels (skimage crops the same border).
    """
    x, ref = _magnitude_pair(x, ref, complex, min_dim=4)
    if x.dim() != 4:
        fail("x", "2D images (B, C, H, W) (use fastmri_metrics for volumes, slice by slice)", x)
    check_positive("win_size", win_size, integer=True)
    if win_size % 2 == 0:
        fail("win_size", "an odd number", win_size)
    if min(x.shape[-2:]) < win_size:
        fail("x", f"images at least {win_size} x {win_size} (or a smaller odd win_size)", x)
    dr = _data_range(data_range, ref)[:, None, None, None]
    B, C, H, W = x.shape
    xs, rs = x.reshape(B * C, 1, H, W), ref.reshape(B * C, 1, H, W)
    pool = lambda t: F.avg_pool2d(t, win_size, stride=1)  # noqa: E731 - valid region only
    NP = win_size ** 2
    cov_norm = NP / (NP - 1)
    ux, uy = pool(xs), pool(rs)
    vx = cov_norm * (pool(xs * xs) - ux * ux)
    vy = cov_norm * (pool(rs * rs) - uy * uy)
    vxy = cov_norm * (pool(xs * rs) - ux * uy)
    C1 = (0.01 * dr) ** 2
    C2 = (0.03 * dr) ** 2
    C1, C2 = C1.repeat_interleave(C, 0), C2.repeat_interleave(C, 0)        # one row per (sample, channel)
    S = ((2 * ux * uy + C1) * (2 * vxy + C2)) / ((ux ** 2 + uy ** 2 + C1) * (vx + vy + C2))
    return S.reshape(B, -1).mean(1)


# ------------------------------------------------------------------------------------------------
# fastMRI protocol
# ------------------------------------------------------------------------------------------------
def center_crop(x, shape: Sequence[int]):
    """Centre crop of the last two dimensions, exactly as ``fastmri.data.transforms.center_crop``
    (offset ``(size - crop) // 2``); works on torch tensors and numpy arrays."""
    if not hasattr(x, "shape") or len(x.shape) < 2:
        fail("x", "an array or tensor with at least 2 dimensions", x, TypeError)
    if len(shape) != 2:
        fail("shape", "a pair (height, width)", describe(tuple(shape)))
    h, w = int(shape[0]), int(shape[1])
    H, W = x.shape[-2], x.shape[-1]
    if not (0 < h <= H and 0 < w <= W):
        fail("shape", f"a crop within the input's last two dimensions {(H, W)}", describe((h, w)))
    top, left = (H - h) // 2, (W - w) // 2
    return x[..., top:top + h, left:left + w]


def _volume_numpy(v, name: str, complex: bool) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu()
        v = v.abs() if v.is_complex() else v
        v = v.numpy()
    if not isinstance(v, np.ndarray):
        fail(name, "a numpy array or torch tensor", v, TypeError)
    if np.iscomplexobj(v):
        v = np.abs(v)
    if complex and v.ndim == 4 and v.shape[1] == 2:
        v = np.sqrt(v[:, 0] ** 2 + v[:, 1] ** 2)
    elif v.ndim == 4 and v.shape[1] == 1:
        v = v[:, 0]
    if v.ndim != 3:
        fail(name, "a magnitude volume (slices, H, W) or (slices, 1, H, W); for (slices, 2, H, W) complex "
                   "images pass complex=True", f"array of shape {v.shape}")
    if not np.isfinite(v).all():
        fail(name, "finite values", f"array of shape {v.shape} with NaN/Inf")
    return v


def fastmri_metrics(recon_volume, target_volume, *, complex: bool = False, crop: bool = True) -> dict:
    """Per-volume NMSE, PSNR, SSIM (and MSE) as ``fastmri/evaluate.py`` computes them.

    :param recon_volume: the reconstruction, (slices, H, W) or (slices, 1, H, W) magnitude, numpy or torch
        (a complex dtype is reduced to its magnitude).
    :param target_volume: the reference volume, same conventions.
    :param complex: volumes of shape (slices, 2, H, W) are (real, imaginary) pairs reduced to their magnitude
        (3-D volumes are already magnitudes). Without it a 2-channel volume is refused, never guessed.
    :param crop: centre-crop both to (W, W), W = target width, as evaluate.py does before scoring.
    :returns: dict of Python floats ``{"NMSE", "PSNR", "SSIM", "MSE"}``.
    """
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    gt = _volume_numpy(target_volume, "target_volume", complex)
    pred = _volume_numpy(recon_volume, "recon_volume", complex)
    if crop:
        gt = center_crop(gt, (gt.shape[-1], gt.shape[-1]))
        pred = center_crop(pred, (gt.shape[-1], gt.shape[-1]))
    if gt.shape != pred.shape:
        fail("recon_volume", f"the target's shape {gt.shape} (after cropping)", f"array of shape {pred.shape}")
    if min(gt.shape[-2:]) < 7:  # fastMRI's SSIM: scikit-image's default 7x7 window (no smaller window is substituted)
        fail("target_volume", "slices of at least 7x7 pixels (the fastMRI protocol's SSIM uses a 7x7 window)",
             f"slices of {gt.shape[-2]}x{gt.shape[-1]}")
    maxval = gt.max()
    ssim_sum = 0
    for s in range(gt.shape[0]):
        ssim_sum = ssim_sum + structural_similarity(gt[s], pred[s], data_range=maxval)
    return {
        "NMSE": float(np.linalg.norm(gt - pred) ** 2 / np.linalg.norm(gt) ** 2),
        "PSNR": float(peak_signal_noise_ratio(gt, pred, data_range=maxval)),
        "SSIM": float(ssim_sum / gt.shape[0]),
        "MSE": float(np.mean((gt - pred) ** 2)),
    }


def fastmri_summary(per_volume: Sequence[dict]) -> dict:
    """Aggregate per-volume metric dicts as fastMRI prints them: {name: (mean, 2 * sample std (ddof=1), n)}."""
    if len(per_volume) == 0:
        fail("per_volume", "at least one per-volume result", describe(per_volume))
    out = {}
    for key in per_volume[0]:
        vals = np.array([float(row[key]) for row in per_volume], dtype=np.float64)
        two_sigma = 2 * float(vals.std(ddof=1)) if len(vals) > 1 else float("nan")
        out[key] = (float(vals.mean()), two_sigma, len(vals))
    return out


# ------------------------------------------------------------------------------------------------
# posterior-sample metrics
# ------------------------------------------------------------------------------------------------
def _as_rows(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        fail(name, "a torch.Tensor of samples (N, ...)", t, TypeError)
    check_tensor(name, t)
    if t.dim() < 1 or t.shape[0] < 1:
        fail(name, "samples (N, ...) with N >= 1", t)
    return t.detach().reshape(t.shape[0], -1).to(F64)


def _norm_weights(name: str, w, N: int, device) -> torch.Tensor | None:
    if w is None:
        return None
    check_tensor(name, w, ndim=1)
    if w.shape[0] != N or (w < 0).any() or float(w.sum()) <= 0:
        fail(name, f"{N} non-negative weights with a positive sum", w)
    w = w.detach().to(device=device, dtype=F64)
    return w / w.sum()


def _quantile_rows(sorted_vals: torch.Tensor, cum: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Left-continuous quantile function of weighted atoms per row: first atom with cum >= u."""
    idx = torch.searchsorted(cum, u).clamp_max(cum.shape[1] - 1)
    return sorted_vals.gather(1, idx)


def _cumulative(w: torch.Tensor | None, order: torch.Tensor, N: int, L: int) -> torch.Tensor:
    """(N, L) cumulative weights of the sorted atoms; exactly i/N for uniform weights."""
    if w is None:
        return (torch.arange(1, N + 1, dtype=F64, device=order.device) / N)[:, None].expand(N, L)
    c = w[order].cumsum(0)
    return c / c[-1:]


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, n_projections: int = 1000, *,
                       generator: torch.Generator | None = None, p: int = 2,
                       weights_a: torch.Tensor | None = None, weights_b: torch.Tensor | None = None) -> float:
    r"""Sliced Wasserstein distance :math:`SW_p(\mu,\nu) = (\mathbb E_\theta W_p^p(\theta_\#\mu, \theta_\#\nu))^{1/p}`.

    Directions uniform on the sphere (normalised Gaussians, float64). Each 1D :math:`W_p^p` is the exact
    :math:`\int_0^1 |F_a^{-1}(u) - F_b^{-1}(u)|^p du` between the empirical (optionally weighted) measures, so
    sample sets of different sizes and weighted particles (SMC) are handled without resampling.

    :param a: (N, ...) samples; :param b: (M, ...) samples with the same per-sample shape.
    """
    A, Bm = _as_rows("a", a), _as_rows("b", b)
    if A.shape[1] != Bm.shape[1]:
        fail("b", f"samples of the same size as a ({A.shape[1]} values each)", b)
    check_positive("n_projections", n_projections, integer=True)
    check_positive("p", p)
    Bm = Bm.to(A.device)
    wa = _norm_weights("weights_a", weights_a, A.shape[0], A.device)
    wb = _norm_weights("weights_b", weights_b, Bm.shape[0], A.device)
    d, N, M = A.shape[1], A.shape[0], Bm.shape[0]
    gdev = generator.device if generator is not None else torch.device("cpu")
    theta = torch.randn(d, n_projections, dtype=F64, generator=generator, device=gdev).to(A.device)
    theta = theta / theta.norm(dim=0, keepdim=True)
    chunk = max(1, min(n_projections, 2 ** 22 // max(N + M, 1)))
    total = A.new_zeros(())
    uniform_equal = wa is None and wb is None and N == M
    for i in range(0, n_projections, chunk):
        th = theta[:, i:i + chunk]
        pa, ia = (A @ th).sort(dim=0)
        pb, ib = (Bm @ th).sort(dim=0)
        if uniform_equal:
            total = total + (pa - pb).abs().pow(p).mean(0).sum()
            continue
        L = th.shape[1]
        ca = _cumulative(wa, ia, N, L)
        cb = _cumulative(wb, ib, M, L)
        u = torch.cat([ca, cb], dim=0).sort(dim=0).values                   # merged breakpoints (N+M, L)
        du = torch.diff(u, dim=0, prepend=u.new_zeros(1, L))
        mid = u - du / 2
        qa = _quantile_rows(pa.T.contiguous(), ca.T.contiguous(), mid.T.contiguous())
        qb = _quantile_rows(pb.T.contiguous(), cb.T.contiguous(), mid.T.contiguous())
        total = total + (du.T * (qa - qb).abs().pow(p)).sum()
    return float((total / n_projections) ** (1.0 / p))


@dataclass(frozen=True)
class SWFloor:
    """Sliced Wasserstein between independent exact sample sets: the value a perfect sampler reaches."""

    mean: float
    std: float
    values: tuple[float, ...]
    n: int
    m: int

    def __str__(self) -> str:
        return f"SW floor {self.mean:.4g} +/- {self.std:.2g} (n={self.n} vs m={self.m}, {len(self.values)} repeats)"


def sw_monte_carlo_floor(sampler, n: int, *, m: int | None = None, n_repeats: int = 5,
                         n_projections: int = 1000, generator: torch.Generator | None = None,
                         p: int = 2) -> SWFloor:
    """SW between two independent exact sample sets of sizes n and m (default n), over ``n_repeats`` repeats.

    :param sampler: an object with ``.sample(k, generator=...)`` (e.g. an exact posterior
        :class:`~invdiff.priors.GaussianMixture`) or a callable ``fn(k, generator) -> (k, ...)``.
    :param generator: drives the samples and the projections (default: seeded with 0, so it is reproducible).
    Compare a sampler's SW (its n samples vs m exact ones) with this floor at the same n, m.
    """
    check_positive("n", n, integer=True)
    m = n if m is None else m
    check_positive("m", m, integer=True)
    check_positive("n_repeats", n_repeats, integer=True)
    if hasattr(sampler, "sample") and callable(sampler.sample):
        draw: Callable = lambda k, g: sampler.sample(k, generator=g)  # noqa: E731
    elif callable(sampler):
        draw = sampler
    else:
        fail("sampler", "an object with .sample(n, generator=...) or a callable fn(n, generator)", sampler, TypeError)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    vals = tuple(sliced_wasserstein(draw(n, g), draw(m, g), n_projections, generator=g, p=p)
                 for _ in range(n_repeats))
    t = torch.tensor(vals, dtype=F64)
    return SWFloor(float(t.mean()), float(t.std()) if n_repeats > 1 else 0.0, vals, n, m)


def _sorted_quantile(s: torch.Tensor, q: float) -> torch.Tensor:
    """Quantile along dim 0 of a sorted tensor, linear interpolation (numpy's default method)."""
    pos = q * (s.shape[0] - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, s.shape[0] - 1)
    frac = pos - lo
    return s[lo] + frac * (s[hi] - s[lo])


def coverage(samples: torch.Tensor, truth: torch.Tensor, level: float = 0.9, *, reduce: bool = True):
    """Empirical coverage of per-pixel central credible intervals.

    The interval of each pixel is [q_(1-level)/2, q_(1+level)/2] of ``samples`` (S, *shape) (linear
    interpolation between order statistics). ``truth`` is one ground truth (*shape) or several (T, *shape)
    judged against the same samples.

    :returns: the fraction of (truth, pixel) pairs inside their interval (a float; about ``level`` for a
        calibrated posterior), or with ``reduce=False`` the boolean map with truth's shape.
    """
    check_tensor("samples", samples)
    check_tensor("truth", truth)
    check_in_range("level", level, 0.0, 1.0, lo_open=True, hi_open=True)
    if samples.dim() < 1 or samples.shape[0] < 2:
        fail("samples", "at least 2 samples (S, ...)", samples)
    shape = tuple(samples.shape[1:])
    if tuple(truth.shape) != shape and tuple(truth.shape[1:]) != shape:
        fail("truth", f"shape {shape} or (T, {', '.join(map(str, shape))})", truth)
    s = samples.detach().to(F64).sort(dim=0).values
    lo = _sorted_quantile(s, (1 - level) / 2)
    hi = _sorted_quantile(s, (1 + level) / 2)
    t = truth.detach().to(device=s.device, dtype=F64)
    inside = (t >= lo) & (t <= hi)
    return float(inside.to(F64).mean()) if reduce else inside


def _samples_truth(samples, truth):
    check_tensor("samples", samples)
    check_tensor("truth", truth)
    if samples.dim() < 1 or samples.shape[0] < 2:
        fail("samples", "at least 2 samples (S, ...)", samples)
    if tuple(truth.shape) != tuple(samples.shape[1:]):
        fail("truth", f"shape {tuple(samples.shape[1:])} (one ground truth, like one sample)", truth)
    return samples.detach().to(F64), truth.detach().to(device=samples.device, dtype=F64)


def interval_score(samples: torch.Tensor, truth: torch.Tensor, level: float = 0.9, *, reduce: bool = True):
    r"""Interval score of the per-pixel central credible intervals (Gneiting & Raftery 2007, Eq. 43).

    With :math:`\alpha = 1 - \text{level}` and :math:`[l, u]` the :math:`\alpha/2` and :math:`1 - \alpha/2` sample quantiles
    (as in :func:`coverage`):

    .. math::  S_\alpha(l, u; x) = (u - l) + \tfrac{2}{\alpha}(l - x)\,\mathbb 1\{x < l\} + \tfrac{2}{\alpha}(x - u)\,\mathbb 1\{x > u\}

    (width plus a penalty for a miss; lower is better, proper: minimised in expectation by the true quantiles).

    :param samples: (S, *shape) posterior samples; ``truth``: (*shape) the ground truth.
    :returns: the mean over pixels (float), or the per-pixel map with ``reduce=False``.

    Example:
        >>> s = torch.tensor([[0.0], [1.0], [2.0]])
        >>> interval_score(s, torch.tensor([3.0]), level=0.5)   # [0.5, 1.5], miss by 1.5: 1 + 4 * 1.5
        7.0
    """
    s, t = _samples_truth(samples, truth)
    check_in_range("level", level, 0.0, 1.0, lo_open=True, hi_open=True)
    alpha = 1.0 - level
    srt = s.sort(dim=0).values
    lo, hi = _sorted_quantile(srt, alpha / 2), _sorted_quantile(srt, 1 - alpha / 2)
    score = (hi - lo) + (2 / alpha) * (lo - t).clamp_min(0) + (2 / alpha) * (t - hi).clamp_min(0)
    return float(score.mean()) if reduce else score


def crps(samples: torch.Tensor, truth: torch.Tensor, *, reduce: bool = True):
    r"""Continuous ranked probability score per pixel from samples, energy form (Gneiting & Raftery 2007, Eq. 21):

    .. math::  \mathrm{CRPS}(F, x) = \mathbb E|X - x| - \tfrac12\mathbb E|X - X'|,

    estimated without bias (the "fair" estimator, Ferro 2014) from S samples :math:`x_1..x_S`:
    :math:`\frac1S\sum_i|x_i - x| - \frac{1}{2S(S-1)}\sum_{i\ne j}|x_i - x_j|`, the pair sum in O(S log S) from the
    sorted samples, :math:`\sum_{i<j}|x_{(i)} - x_{(j)}| = \sum_i (2i - S - 1)\,x_{(i)}` (i = 1..S). Same units as the
    pixels, lower is better; for a point forecast it is the absolute error.

    :param samples: (S, *shape), S >= 2; ``truth``: (*shape).
    :returns: the mean over pixels (float), or the per-pixel map with ``reduce=False``.

    Example:
        >>> crps(torch.tensor([[0.0], [2.0]]), torch.tensor([1.0]))   # 1 - (2 * 2) / (2 * 2 * 1)
        0.0
    """
    s, t = _samples_truth(samples, truth)
    S = s.shape[0]
    first = (s - t).abs().mean(0)
    srt = s.sort(dim=0).values
    i = torch.arange(1, S + 1, dtype=F64, device=s.device).reshape(S, *([1] * (s.dim() - 1)))
    pair = ((2 * i - S - 1) * srt).sum(0)                                   # sum_{i<j} |x_i - x_j|
    score = first - pair / (S * (S - 1))
    return float(score.mean()) if reduce else score


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    r"""Spearman rank correlation of two equally shaped tensors (flattened): the Pearson correlation of their
    ranks (ties broken by order; use on continuous values such as a std map and an |error| map)."""
    check_tensor("a", a)
    check_tensor("b", b)
    if a.numel() != b.numel() or a.numel() < 2:
        fail("b", f"{a.numel()} values like a (at least 2)", b)

    def ranks(t):
        t = t.detach().reshape(-1).to(F64)
        r = torch.empty_like(t)
        r[t.argsort()] = torch.arange(t.numel(), dtype=F64, device=t.device)
        return r - r.mean()

    ra, rb = ranks(a), ranks(b.to(a.device))
    den = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / den if den > 0 else float("nan")


def mode_weights(samples: torch.Tensor, means, *, sigma: float = 0.0) -> torch.Tensor:
    """(K,) fraction of samples assigned to each mixture component.

    ``means`` (K, ...) assigns each sample to its nearest mean (Euclidean). If ``means`` is a mixture with a
    ``responsibilities(x)`` method (:class:`~invdiff.priors.GaussianMixture`), samples go to their most
    responsible component instead (the reference notes' recommendation: it respects the covariances).
    Compare with the exact posterior weights (``posterior.weights``) by total variation. ``sigma`` is passed to
    ``responsibilities`` (a mixture with singular covariances needs a small sigma > 0).
    """
    X = _as_rows("samples", samples)
    if hasattr(means, "responsibilities"):
        K = int(means.n_components)
        lab = means.responsibilities(samples.detach().to(means.device, torch.float64), sigma).argmax(1).to(X.device)
    else:
        Mu = _as_rows("means", means).to(X.device)
        if Mu.shape[1] != X.shape[1]:
            fail("means", f"means with {X.shape[1]} values each (like the samples)", means)
        K = Mu.shape[0]
        lab = torch.cdist(X, Mu).argmin(1)
    return torch.bincount(lab, minlength=K).to(F64) / X.shape[0]


__all__ = [
    "psnr", "ssim", "nmse", "center_crop", "fastmri_metrics", "fastmri_summary",
    "sliced_wasserstein", "sw_monte_carlo_floor", "SWFloor", "coverage", "interval_score", "crps", "spearman",
    "mode_weights",
]

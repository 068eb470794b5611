r"""ADS: active diffusion subsampling by maximum entropy of the particle predictive (Nolan, Stevens, van Nierop &
van Sloun, "Active Diffusion Subsampling", TMLR 2025, arXiv 2406.14388; reference dossier §3, §6.3).

``physics`` is the *fully sampled* acquisition; its measurements are split into candidates (k-space columns, CT
views, pixels, patches, matrix rows: :mod:`invdiff.operators.candidates`). ADS decides which ones to measure
while it reconstructs.

**Particles.** N particles run one reverse VP diffusion (DDPM schedule, DDS grid and re-noising, :mod:`.dds`),
batched through the prior (one network call per step for all). Each step, with the measurements acquired so far
:math:`y_S = M_S y` and the sub-operator :math:`A_S = M_S A`:

1. Tweedie :math:`\hat x_0^{(i)} = \mathbb E[x_0 \mid x_t^{(i)}]` (one NFE for all particles);
2. data consistency on :math:`\hat x_0^{(i)}`: DDS's M conjugate-gradient steps on
   :math:`(I + \gamma A_S^\top A_S)x = \hat x_0 + \gamma A_S^\top y_S` (``dc="prox"``, noisy data) or on
   :math:`A_S^\top A_S x = A_S^\top y_S` (``dc="ls"``), skipped while nothing is measured;
3. at a scheduled step, the acquisition (below) on the predictions :math:`A \tilde x_0^{(i)}`;
4. re-noising :math:`x_{t'} = \sqrt{\bar\alpha_{t'}}\tilde x_0 + \sqrt{1-\bar\alpha_{t'}}(\eta z + \sqrt{1-\eta^2}\hat\epsilon)`.

``guidance="dps"`` replaces step 2 by the official DPS step (ADS ``pixel_guidance.py``): after the DDIM-type
update, :math:`x_{t'} \mathrel{-}= \omega\nabla_{x_t}\|y_S - A_S\hat x_0(x_t)\|_2` (``dps_weight`` :math:`\omega`; the
norm, not its square), one vector-Jacobian product through the network per step for all particles.

*Why DDS's data consistency is the default*: the DPS gradient costs a backward pass through the network per step
(about 2-3x the forward call) and the official setting needs 10 000 steps; CG on :math:`\hat x_0` needs no
backpropagation, is the library's tuned data consistency (``benchmarks/results/dds*.md``) and keeps the particles
consistent with the acquired data at 50-100 steps. Its limit, measured in ``benchmarks/results/ads_exactness.md``:
CG changes :math:`\hat x_0` only in the range of :math:`A_S^\top`, so what an acquisition says about *correlated*
unmeasured entries (a pixel's neighbours) reaches the particles only through later denoising steps, whereas the DPS
gradient carries it through the network's Jacobian at once.

*Window.* The presets acquire in the second half of the reverse steps, (0.5, 1), not early as the official
fastMRI setting ((0.005, 0.25) of 10 000 steps): early Tweedie estimates are shrunk towards the prior mean by a
direction-dependent factor, so their spread ranks candidates by the wrong quantity.

*Which particles are scored* (``predictive``). ``"tweedie"`` (official, the presets): the current estimates
:math:`\tilde x_0^{(i)}` at the scheduled steps. Their spread is that of :math:`\mathbb E[x_0 \mid x_t, y_S]`, not of
:math:`x_0 \mid y_S`: it lacks :math:`\mathbb E\,\mathrm{Cov}[x_0 \mid x_t, y_S]`, a different amount per candidate,
so no particle count makes the choice exact. ``"restart"``: every event scores the particles at the end of a
reverse pass (:math:`t = 0`, approximate draws of :math:`p(x_0 \mid y_S)`); after the acquisition they are
forward-noised to step :math:`k_r = \lfloor` ``restart`` :math:`\cdot` ``num_steps`` :math:`\rfloor`,
:math:`x = \sqrt{\bar\alpha_{t_{k_r}}}\,\tilde x_0 + \sqrt{1-\bar\alpha_{t_{k_r}}}\,z`, and a new pass with the enlarged data
runs to :math:`t = 0`; the last pass gives the estimate. Cost: ``num_steps`` + n_events x (``num_steps`` -
:math:`k_r`) network calls (the window then only sets the number of events, with ``per_step``). Measured with a
Gaussian prior (``benchmarks/results/ads_exactness.md``): see **Measured** below.

**Acquisition** (dossier §3.2). At each scheduled step, for every candidate :math:`c` not yet acquired, the
predictions :math:`\hat y_c^{(i)} = A_c\tilde x_0^{(i)}` (:math:`d` real entries) give the pairwise squared distances
:math:`D_{ij}(c) = \|\hat y_c^{(i)} - \hat y_c^{(j)}\|^2`; the ``score`` (float64, log-sum-exp) is

- ``"gmm"`` (official ``column_entropy`` / ``pixel_entropy``): :math:`\sum_i \log\sum_j \exp(D_{ij}/2\sigma_H^2)`;
- ``"gmm-lb"``: the entropy lower bound of the equal-weight mixture :math:`\frac1N\sum_i\mathcal N(\hat y_c^{(i)}, \sigma_H^2 I)`
  (Huber et al. 2008), in nats:
  :math:`-\frac1N\sum_i\log\frac1N\sum_j\mathcal N(\hat y_c^{(i)}; \hat y_c^{(j)}, 2\sigma_H^2 I)`;
- ``"variance"``: :math:`\sum_{k\le d}\widehat{\mathrm{Var}}_i(\hat y_{c,k}^{(i)})` (official ``column_variance``).

For :math:`D \ll \sigma_H^2` all three rank like the variance. :math:`\sigma_H` (``entropy_sigma``) defaults to the
measurement noise std (the predictive of a noisy measurement *is* that mixture), or 1e-2 x the prior's peak
for noiseless physics. ``"gauss"``: the Gaussian entropy of the particle predictive,
:math:`\tfrac12\log\det(2\pi e(\hat C_c + \sigma_H^2 I))` with :math:`\hat C_c` the particle covariance of candidate
:math:`c` (nats; for :math:`d = 1` it ranks like the variance, for MRI columns it weighs correlated entries as the
exact entropy does); ``"diag"``: the same with the diagonal of :math:`\hat C_c` only,
:math:`\sum_{k\le d}\tfrac12\log(2\pi e(\hat C_{c,kk} + \sigma_H^2))` (Hadamard's upper bound of ``"gauss"``, exact for
uncorrelated entries; needs only marginal variances, so few particles estimate it, and the logarithm compresses
the few huge low-frequency variances that make ``"variance"`` pile lines at the k-space centre). Never an already
acquired candidate; the mask is shared by all particles.

*Several candidates per event* (``select``). ``"topk"`` (official): the best marginal scores, which for pixels
are clusters of correlated neighbours. ``"conditional"`` (default): greedy, each pick conditions the particle
predictive on a measurement of it with noise :math:`\sigma_H` (ensemble square-root update,
:func:`select_candidates`: the particle covariance becomes the Schur complement, exact when the predictive is
Gaussian), and the next pick is scored on the conditioned particles: the exact greedy choice within the event.

**Schedule.** ``budget`` candidates in total (or ``n // acceleration``), of which the operator's fixed block (the
MRI centre: ``center_fraction``, fastMRI default 0.08 below 8x, 0.04 from 8x; none for CT, pixels, rows) is
measured before the first step. The others are chosen at ``n_events = min(remaining, steps in window)`` steps
spread evenly over the reverse-step window ``[window[0], window[1])`` (fractions of ``num_steps``; presets
(0.5, 1); official fastMRI: [50, 2500] of 10 000 = (0.005, 0.25)), the remainder spread one extra per event from the first.

**Measurements.** Retrospective: the chosen entries of ``y_full`` are read, no others (``y_full`` may hold NaN
elsewhere). Prospective: ``acquire(candidates) -> measurements`` is called with the int64 candidate ids of one
event and must return a float tensor ``(k, *meas_shape)`` (``CandidateSet.meas_shape``); ``y_full`` may then be
None. Either way the final answer only depends on the chosen measurements.

**Presets** (``preset``; particles x steps; NFE = network calls (``rec.nfe``, batched over particles) and images
denoised (``info["nfe_images"]``); the official fastMRI setting costs 16 particles x 10 000 steps = 1.6e5 images
denoised per slice plus as many VJPs):

==========  =========  =====  ================  ===========  ====================================
preset      particles  steps  window            rec.nfe      images denoised (share of official)
==========  =========  =====  ================  ===========  ====================================
"fast"      8          50     (0.5, 1.0)        50           400 (0.25 %)
"default"   16         100    (0.5, 1.0)        100          1 600 (1 %)
"quality"   16         200    (0.5, 1.0)        200          3 200 (2 %)
"official"  16         1000   (0.005, 0.25)     1 000        16 000 (10 %)
"restart"   8          50     (0.5, 1.0)        50 + 15 E    8 x rec.nfe (MRI 64 columns: 4x 1 720, 1.1 %; 8x 1 120)
==========  =========  =====  ================  ===========  ====================================

"restart" also sets ``predictive="restart"``, ``restart=0.7``, ``score="diag"`` (unless given): E events (one per
chosen candidate, at most the 24 steps of the window), each followed by a new pass over the last 15 of the 50
steps (4x on 64 columns: 11 chosen, 215 network calls; 8x: 6 chosen, 140; fastMRI width 368 at 4x: 24 events,
410 calls, 3 280 images denoised, 2 %). Chosen on tuning phantoms
(``benchmarks/results/ads_tune.md``) as the one setting whose masks beat the fixed line masks at 8x as well as 4x
there (on the evaluation phantoms 8x is a tie: **Measured**).

"official" keeps the official particle count and window; its 10 000 steps live on a continuous cosine schedule,
while the shipped priors are trained on the 1000-step DDPM grid, so 1000 steps is the finest grid here. With
``guidance="dps"`` every step adds one VJP for all particles (about 2-3x the cost of the network call).

**Measured** (``benchmarks/results/ads_images.md``: 6 held-out phantoms per task, each mask then reconstructed by
DDS mean of 2 chains x 50 NFE, paired differences +- one standard error; settings chosen on 3 other phantoms,
``ads_tune.md``). MRI single-coil lines, preset "restart" vs the best fixed line mask (Gaussian; equispaced, random
and 1D Poisson-disc lines with the same centre block are lower): 4x 29.6 vs 27.8 dB, +1.8 +- 0.5, 6 of 6 images
(1 720 images denoised, 1.1 % of the official cost); 8x 23.4 vs 23.1 dB, +0.3 +- 0.5, 3 of 6: a tie (1 120
images). Preset "fast" (400 images): 28.3 / 23.0 dB. Tweedie-scored settings (any score, 16 particles, other
windows) put 4 of the 6 free 8x lines next to the centre and lose to the Gaussian mask on the tuning phantoms.
2D Poisson-disc points reach 31.0 / 26.9 dB with the same number of k-space samples, but they are points with a
calibration square, not lines with full centre columns: a 3D-acquisition reference, not a mask ADS chooses
among. CT, 8 / 16 of 64 views: ADS 28.7 / 31.1 dB vs uniform 29.1 / 31.4 (-0.34 +- 0.17, -0.37 +- 0.22): uniform
views are near-optimal for parallel-beam CT of these roughly isotropic objects (greedy maximum entropy fills the
largest angular gap and leaves gaps up to 31 degrees at 8 views where uniform has 22.5; moving uniform views by
2.8 degrees costs nothing at 8 views, random views 3.2 dB). Inpainting 25 % of pixels, about 43 per event
(preset "fast"): ADS 32.3 dB, SSIM 0.92 (``select="conditional"``) vs random 29.4 dB, 0.88 and the official
top-k 29.0 dB (top-k takes clusters of neighbouring pixels).
Exactness with a Gaussian prior (``benchmarks/results/ads_exactness.md``; 3 seeds x 8 acquisitions, each choice
compared with the exact greedy one given the same acquired set; variance score; strict = an exact argmax, ties
counted / within 0.01 nats): with ``predictive="tweedie"`` the particle predictive variance is 0.4-0.5x the exact
one on pixels and Fourier rows (mean log-ratio -0.7 to -0.9, a different factor per candidate), and pixels stay at
0.58 / 0.71 for N = 16 ... 1024 (Fourier rows 0.96 / 0.96, MRI columns 1.0 / 1.0 at N = 1024); with
``predictive="restart"`` the log-ratio is -0.09 to -0.16 (nearly uniform) and agreement grows with N: pixels 0.83 /
0.88 at N = 1024 and 0.92 / 1.0 at N = 4096, Fourier rows 1.0 / 1.0 at N = 4096, MRI columns 1.0 / 1.0 from N = 16,
at 250 instead of 50 network calls (50 steps, 8 events). The rest is Monte-Carlo: exact posterior draws give
0.76 / 0.91 (N = 1024) and 0.86 / 0.99 (N = 4096) on pixels (``ads_estimators.md``). Several pixels per event
(``ads_select.md``, k = 4, N = 1024 exact draws): top-k loses 0.27 nats of joint entropy against the exact greedy
set, ``select="conditional"`` 0.003.

Outputs: ``mean`` (particle mean, (1, *x_shape)), ``samples`` (N, 1, *x_shape), ``std``; ``info``: ``mask``
(``CandidateSet.to_mask``: (H, W) for MRI, (1, H, W) for inpainting, a bool vector over the views / rows for
CT / matrices; plus ``angles`` for CT), ``order`` (list of (candidate, reverse step index: with
``predictive="restart"`` counted over all passes), fixed block with step -1), ``scores`` ((n_events, n)
float64, -inf at acquired candidates: the score of every candidate at each acquisition (first pick of an
event)), ``event_steps``, ``candidates`` (unit, n), and the resolved options.

Example:
    >>> import torch, invdiff
    >>> from invdiff.operators import MatrixOperator
    >>> from invdiff.priors import GaussianMixture
    >>> prior = GaussianMixture(torch.ones(1), torch.zeros(1, 6), torch.diag(torch.arange(1., 7.))[None])
    >>> op = MatrixOperator(torch.eye(6), sigma=0.1)
    >>> rec = invdiff.solve(op.A(torch.ones(1, 6)), op, prior, solver="ads", budget=2, particles=64, num_steps=20)
    >>> int(rec.info["mask"].sum()), len(rec.info["order"]), rec.nfe, rec.samples.shape
    (2, 2, 20, torch.Size([64, 1, 6]))
"""
from __future__ import annotations

import math

import torch

from .._validate import check_choice, fail
from ..operators.candidates import CandidateSet, candidates as make_candidates
from ..schedules import VPSchedule
from .base import Option, SolverOutput, progress_bar, register
from .dds import _eta, default_dc, default_gamma, dds_data_consistency, dds_timesteps
from .particles import map_chunked
from .primitives import noise_sigma

F64 = torch.float64

#: particles, num_steps, window (fractions of the reverse steps) per preset (module docstring table)
PRESETS = {"fast": (8, 50, (0.5, 1.0)), "default": (16, 100, (0.5, 1.0)), "quality": (16, 200, (0.5, 1.0)),
           "official": (16, 1000, (0.005, 0.25)), "restart": (8, 50, (0.5, 1.0))}
#: options a preset sets besides (particles, steps, window), unless given explicitly
PRESET_OPTIONS = {"restart": {"predictive": "restart", "restart": 0.7, "score": "diag"}}
#: resolved defaults of the options a preset may set
_DEFAULTS = {"predictive": "tweedie", "restart": 0.5, "per_step": None, "score": "gmm"}
SCORES = ("gmm", "gmm-lb", "variance", "gauss", "diag")


# ------------------------------------------------------------------------------------------------
# scores of the particle predictive (float64, log-sum-exp)
# ------------------------------------------------------------------------------------------------
def pairwise_sq_dist(pred: torch.Tensor) -> torch.Tensor:
    """(N, n, d) predictions -> (n, N, N) float64 squared distances D_ij(c)."""
    p = pred.to(F64).transpose(0, 1)                                   # (n, N, d)
    sq = p.pow(2).sum(-1)
    D = sq[:, :, None] + sq[:, None, :] - 2 * p @ p.transpose(1, 2)
    return D.clamp_min(0.0)


def predictive_score(pred: torch.Tensor, score: str = "gmm", sigma: float = 1.0) -> torch.Tensor:
    r"""Score of each candidate from (N, n, d) particle predictions, (n,) float64 (module docstring).

    >>> p = torch.zeros(4, 2, 1); p[:, 1, 0] = torch.tensor([0., 1., 2., 3.])   # candidate 1 spreads
    >>> [round(v, 3) for v in predictive_score(p, "variance").tolist()]
    [0.0, 1.25]
    >>> s = predictive_score(p, "gmm", 1.0); bool(s[1] > s[0])
    True
    >>> h = predictive_score(p, "gauss", 1.0)
    >>> round(float(h[1] - h[0]), 4)                        # 1/2 log(1 + 1.25)
    0.4055
    """
    check_choice("score", score, SCORES)
    N, n, d = pred.shape
    if score == "variance":
        p = pred.to(F64)
        return (p - p.mean(0, keepdim=True)).pow(2).mean(0).sum(-1)
    if score == "gauss":
        return _gauss_entropy(pred, sigma)
    if score == "diag":                     # sum_k 1/2 log(2 pi e (Var_k + s^2)): Hadamard bound of "gauss"
        v = pred.to(F64).var(0, unbiased=False)
        return 0.5 * torch.log(2 * math.pi * math.e * (v + sigma ** 2)).sum(-1)
    # D is (n, N, N): chunk over candidates to hold at most ~2^23 float64 entries at a time
    step = max(1, (1 << 23) // (N * N))
    out = []
    for c0 in range(0, n, step):
        D = pairwise_sq_dist(pred[:, c0:c0 + step])
        if score == "gmm":                                              # official positive kernel
            out.append(torch.logsumexp(D / (2 * sigma ** 2), dim=2).sum(1))
        else:  # Huber et al. (2008) lower bound, nats: -1/N sum_i log 1/N sum_j N(mu_i; mu_j, 2 s^2 I)
            log_k = -D / (4 * sigma ** 2) - 0.5 * d * math.log(4 * math.pi * sigma ** 2)
            out.append(-(torch.logsumexp(log_k, dim=2) - math.log(N)).mean(1))
    return torch.cat(out)


def _gauss_entropy(pred: torch.Tensor, sigma: float) -> torch.Tensor:
    r"""``score="gauss"``: :math:`\tfrac12\log\det(2\pi e(\hat C_c + \sigma_H^2 I_d))`, nats, with :math:`\hat C_c` the
    (1/N) particle covariance of candidate c's d predictions; through the N x N Gram matrix when d > N
    (:math:`\det(\sigma^2 I_d + P^\top P) = \sigma^{2d}\det(I_N + PP^\top/\sigma^2)`)."""
    N, n, d = pred.shape
    p = pred.to(F64)
    P = ((p - p.mean(0, keepdim=True)) / math.sqrt(N)).transpose(0, 1)          # (n, N, d)
    s2 = sigma ** 2
    k = min(N, d)
    step = max(1, (1 << 23) // (k * k))
    out = []
    for c0 in range(0, n, step):
        Pc = P[c0:c0 + step]
        G = Pc.transpose(1, 2) @ Pc if d <= N else Pc @ Pc.transpose(1, 2)   # (m, k, k)
        eye = torch.eye(k, dtype=F64, device=G.device)
        out.append(torch.logdet(eye + G / s2) + d * math.log(s2))
    return 0.5 * (torch.cat(out) + d * math.log(2 * math.pi * math.e))


def select_candidates(pred: torch.Tensor, k: int, open_: torch.Tensor, score: str = "gmm", sigma: float = 1.0,
                      conditional: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Choose ``k`` of the ``open_`` candidates from (N, n, d) particle predictions; returns (sorted ids, scores of
    the first pick, (n,) float64 with -inf at closed candidates).

    ``conditional=False``: the ``k`` best scores (official, no re-scoring). ``conditional=True`` (greedy joint
    choice): after each pick c the particle predictive is conditioned on a measurement of c with noise
    :math:`\sigma_H` by the ensemble square-root update (linear-Gaussian, exact when the predictive is Gaussian):
    with centred, :math:`1/\sqrt N`-scaled predictions :math:`P` (N x (n d)) and :math:`P_c = U S V^\top`,

    .. math:: P \leftarrow (I_N + P_c P_c^\top/\sigma_H^2)^{-1/2} P = P + U\,[(1 + S^2/\sigma_H^2)^{-1/2} - 1]\,U^\top P,

    so that :math:`P^\top P` becomes the Schur complement :math:`C - C_{\cdot c}(C_{cc} + \sigma_H^2 I)^{-1}C_{c\cdot}`
    (Woodbury); the next pick is scored on the updated particles. Correlated neighbours of a pick lose their
    spread, so one event does not take a cluster of neighbouring pixels. N particles span at most N - 1
    directions: after N - 1 picks in one event every direction is conditioned once, and further picks rank the
    spread that the (noise-regularised) conditioning left, so keep picks per event below N where it matters.

    >>> g = torch.Generator().manual_seed(0)
    >>> z = torch.randn(256, 1, generator=g)
    >>> pred = torch.cat([z, z + 0.01 * torch.randn(256, 1, generator=g), 0.8 * torch.randn(256, 1, generator=g)], 1)
    >>> ids, _ = select_candidates(pred[..., None], 2, torch.ones(3, dtype=torch.bool), "variance", 0.1, False)
    >>> ids.tolist()                  # top-2 marginal variances: the two copies of the same value
    [0, 1]
    >>> ids, _ = select_candidates(pred[..., None], 2, torch.ones(3, dtype=torch.bool), "variance", 0.1)
    >>> ids.tolist()                  # conditional: after one copy the other says nothing new
    [0, 2]
    """
    open_ = open_.clone().to(pred.device)
    N = pred.shape[0]
    first = predictive_score(pred, score, sigma).masked_fill(~open_, float("-inf"))
    if not conditional or k == 1:
        return torch.topk(first, k).indices.sort().values.cpu(), first.cpu()
    p = pred.to(F64)
    mean = p.mean(0, keepdim=True)
    P = (p - mean) / math.sqrt(N)
    s, chosen = first, []
    for j in range(k):
        if j:
            s = predictive_score(mean + math.sqrt(N) * P, score, sigma).masked_fill(~open_, float("-inf"))
        c = int(s.argmax())
        chosen.append(c)
        open_[c] = False
        U, S, _ = torch.linalg.svd(P[:, c], full_matrices=False)                 # P_c = U S V^T, U (N, r)
        shrink = (1 + S ** 2 / sigma ** 2).rsqrt() - 1
        P = P + torch.einsum("nr,r,rcd->ncd", U, shrink, torch.einsum("nr,ncd->rcd", U, P))
    return torch.tensor(sorted(chosen), dtype=torch.int64), first.cpu()


def acquisition_steps(num_steps: int, n_acquire: int, window: tuple[float, float]) -> list[tuple[int, int]]:
    """[(step index, number of candidates)] for ``n_acquire`` candidates spread over the window (docstring)."""
    if n_acquire == 0:
        return []
    lo, hi = _window_range(num_steps, window)
    n_win = hi - lo
    n_events = min(n_acquire, n_win)
    steps = [lo + (k * n_win) // n_events for k in range(n_events)]
    base, extra = divmod(n_acquire, n_events)
    return [(s, base + (1 if k < extra else 0)) for k, s in enumerate(steps)]


def _window_range(num_steps: int, window) -> tuple[int, int]:
    """Step indices [lo, hi) of the window; the last step (which returns the estimate) is excluded when there are
    several, so that every acquisition reaches the particles through at least one data-consistency step."""
    last = num_steps - 1 if num_steps > 1 else 1
    lo = min(int(math.floor(window[0] * num_steps)), last - 1)
    hi = min(max(lo + 1, int(math.ceil(window[1] * num_steps))), last)
    return lo, hi


def _measure(cs: CandidateSet, chosen: torch.Tensor, y_full, acquire, like: torch.Tensor) -> torch.Tensor:
    """(1, k, d) measurements of ``chosen``: read from ``y_full`` or asked from ``acquire``."""
    if acquire is not None:
        v = acquire(chosen.clone())
        want = (int(chosen.numel()),) + cs.meas_shape
        if not isinstance(v, torch.Tensor) or tuple(v.shape) != want:
            fail("acquire", f"a callable returning a float tensor of shape {want} "
                            f"(len(candidates), *meas_shape) for candidates {chosen.tolist()}", v)
        if v.is_complex() or not torch.isfinite(v).all():
            fail("acquire", "finite real measurements (complex data as 2 real channels)", v)
        return v.reshape(1, v.shape[0], -1).to(like.dtype)
    v = cs.split(y_full)[:, chosen.to(y_full.device)]
    if not torch.isfinite(v).all():
        fail("y", f"finite measurements at the chosen candidates {chosen.tolist()}", v)
    return v.to(like.dtype)


OPTIONS = (
    Option("acceleration", float, None, "candidates / acquired candidates (exactly one of acceleration, budget)",
           lo=1.0),
    Option("budget", int, None, "candidates acquired in total, fixed block included (or acceleration)", lo=1),
    Option("acquire", object, None, "prospective: callable(candidate ids) -> (k, *meas_shape) measurements; "
           "None: read them from y", extra=("callable",)),
    Option("preset", str, "default", "particles x steps x acquisition window (module docstring: NFE of each)",
           choices=tuple(PRESETS)),
    Option("particles", int, None, "particles N (None: the preset's, or n_samples when > 1)", lo=2),
    Option("num_steps", int, None, "reverse steps (None: the preset's)", lo=1, hi=VPSchedule().num_train_timesteps),
    Option("window", object, None, "(start, stop) fractions of the reverse steps in which to acquire (None: the "
           "preset's)", extra=("sequence",)),
    Option("per_step", int, None, "at most this many candidates per acquisition event (None: the preset's, else as "
           "scheduled)", lo=1),
    Option("score", str, None, "candidate score: gmm (official), gmm-lb (entropy lower bound, nats), variance, "
           "gauss (Gaussian entropy), diag (its diagonal bound); None: the preset's (gmm except preset restart)",
           choices=SCORES),
    Option("entropy_sigma", float, None, "kernel width sigma_H of the mixture entropy (None: the noise level)",
           lo=0.0, lo_open=True),
    Option("center_fraction", str, "auto", "fixed centre block acquired first: auto (MRI: fastMRI default for the "
           "acceleration), a fraction, or None", choices=("auto",), extra=("number", "none")),
    Option("unit", str, None, "inpainting candidates: pixel or patch", choices=("pixel", "patch")),
    Option("patch", int, None, "patch side for unit=patch", lo=1),
    Option("groups", object, None, "matrix operators: row groups forming one candidate", extra=("sequence", "tensor")),
    Option("eta", float, None, "DDS re-noising eta (None: DDS's preset for num_steps)", lo=0.0, hi=1.0),
    Option("cg_iters", int, 5, "CG steps of the data-consistency step", lo=1),
    Option("gamma", float, None, "prox weight (None: DDS's default for the operator)", lo=0.0, lo_open=True),
    Option("dc", str, "auto", "data consistency: prox, ls or auto (ls noiseless, else prox)",
           choices=("auto", "prox", "ls")),
    Option("guidance", str, "dds", "dds (CG data consistency) or dps (official gradient step)",
           choices=("dds", "dps")),
    Option("dps_weight", float, 1.0, "step weight of guidance=dps", lo=0.0, lo_open=True),
    Option("chunk", int, None, "at most this many particles per network call", lo=1),
    Option("predictive", str, None, "particles scored at an event: tweedie (official: current estimates at the "
           "scheduled steps) or restart (end of a reverse pass, then a new pass from `restart`); None: the preset's",
           choices=("tweedie", "restart")),
    Option("restart", float, None, "predictive=restart: fraction of the reverse steps at which each new pass starts "
           "(None: the preset's, else 0.5)",
           lo=0.0, hi=1.0, hi_open=True),
    Option("select", str, "conditional", "several candidates per event: conditional (greedy, re-scored on the "
           "conditioned particles) or topk (official)", choices=("conditional", "topk")),
)


@register("ads", partial_y=True, options=OPTIONS)
def ads(y, physics, prior, *, generator, n_samples, progress, acceleration, budget, acquire, preset, particles,
        num_steps, window, per_step, score, entropy_sigma, center_fraction, unit, patch, groups, eta, cg_iters, gamma,
        dc, guidance, dps_weight, chunk, predictive, restart, select):
    r"""Active maximum-entropy subsampling (see module docstring).

    ``y`` is the fully sampled measurement ``(1, *physics.y_shape)`` (only chosen entries are read; NaN allowed
    elsewhere), or None with ``acquire``. Exactly one of ``acceleration`` (>= 1; budget = n // acceleration)
    and ``budget`` (candidates in total, fixed block included). ``preset`` sets ``particles``, ``num_steps``,
    ``window``; ``n_samples`` > 1 also sets the particle count. ``per_step`` caps candidates per event (default:
    as the schedule spreads them). ``score`` in {"gmm", "gmm-lb", "variance", "gauss", "diag"}; ``entropy_sigma``
    :math:`\sigma_H`; ``select`` "conditional" (greedy, re-scored after each pick) or "topk" (official);
    ``predictive`` "tweedie" (official: the estimates at the scheduled steps) or "restart" (the particles at the end
    of a reverse pass, then a new pass from ``restart`` x ``num_steps``).
    ``center_fraction``: "auto" (MRI: fastMRI default for the acceleration; others none), a fraction, or None.
    ``unit``/``patch`` (inpainting), ``groups`` (matrix rows) pick the candidate set. ``eta``, ``cg_iters``,
    ``gamma``, ``dc`` as :func:`~invdiff.solvers.dds.dds`; ``guidance`` "dds" (CG data consistency) or "dps"
    (official gradient step, ``dps_weight``); ``chunk`` = max particles per network call.
    """
    # ---- what the spec cannot say: options that depend on each other, y (each option was checked by OPTIONS) ----
    p_particles, p_steps, p_window = PRESETS[preset]
    p_opts = {**_DEFAULTS, **PRESET_OPTIONS.get(preset, {})}
    predictive = p_opts["predictive"] if predictive is None else predictive
    restart = p_opts["restart"] if restart is None else restart
    per_step = p_opts["per_step"] if per_step is None else per_step
    score = p_opts["score"] if score is None else score
    if particles is not None and n_samples > 1 and particles != n_samples:
        fail("particles", f"the same value as n_samples = {n_samples} (both give the particle count)", particles)
    particles = particles if particles is not None else (n_samples if n_samples > 1 else p_particles)
    num_steps = p_steps if num_steps is None else num_steps
    window = p_window if window is None else window
    if not (len(window) == 2 and all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in window)
            and 0 <= window[0] < window[1] <= 1):
        fail("window", "(start, stop) fractions of the reverse steps with 0 <= start < stop <= 1", window)
    if (acceleration is None) == (budget is None):
        fail("acceleration", "exactly one of acceleration= and budget=",
             f"acceleration={acceleration!r}, budget={budget!r}")
    if acquire is None:
        if not isinstance(y, torch.Tensor):
            fail("y", "the fully sampled measurement tensor, or None together with acquire=", y, TypeError)
        if y.is_complex():
            fail("y", "a real tensor (complex data as 2 real channels)", y, TypeError)
    if y is not None:
        want = (1,) + tuple(getattr(physics, "y_shape", y.shape[1:]))
        if tuple(y.shape) != want:
            fail("y", f"one fully sampled measurement of shape {want} (ADS acquires for one image at a time)", y)
    eta = _eta(eta, num_steps)
    # ---- candidate set, budget, fixed block ------------------------------------------------------------------
    is_mri = _is_cartesian_mri(physics)
    cs0 = make_candidates(physics, unit=unit, patch=patch, groups=groups)
    n = cs0.n
    budget = int(n // acceleration) if acceleration is not None else budget
    if budget > n:
        fail("budget", f"at most the {n} candidates ({cs0.unit}s) of the fully sampled operator", budget)
    if budget < 1:
        fail("acceleration", f"at most {n} (at least one of the {n} candidates acquired)", acceleration)
    if center_fraction == "auto":
        from ..operators.masks import default_center_fraction

        center_fraction = default_center_fraction(n / budget) if is_mri else None
    cs = make_candidates(physics, unit=unit, patch=patch, groups=groups, center_fraction=center_fraction) \
        if center_fraction is not None else cs0
    if cs.fixed.numel() > budget:
        fail("center_fraction", f"a centre block of at most budget = {budget} {cs.unit}s", 
             f"{center_fraction} ({cs.fixed.numel()} {cs.unit}s)")
    gamma = default_gamma(physics, prior) if gamma is None else gamma
    dc = default_dc(physics) if dc == "auto" else dc
    sigma_y = noise_sigma(physics)
    if entropy_sigma is None:
        vr = getattr(prior, "value_range", None)
        peak = max(abs(float(vr[0])), abs(float(vr[1]))) if vr is not None else 1.0
        entropy_sigma = sigma_y if sigma_y > 0 else 1e-2 * peak

    # ---- state -----------------------------------------------------------------------------------------------
    like = torch.zeros((), dtype=y.dtype if y is not None else torch.get_default_dtype(),
                       device=y.device if y is not None else "cpu")
    acquired = torch.zeros(n, dtype=torch.bool)
    order: list[tuple[int, int]] = []
    y_acq = torch.zeros(1, *cs.y_shape, dtype=like.dtype, device=like.device)

    def take(chosen: torch.Tensor, step: int):
        nonlocal y_acq
        vals = _measure(cs, chosen, y, acquire, like)
        y_acq = cs.merge(vals, chosen, y_acq)
        acquired[chosen] = True
        order.extend((int(c), step) for c in chosen)

    if cs.fixed.numel():
        take(cs.fixed, -1)
    events = acquisition_steps(num_steps, budget - int(acquired.sum()), tuple(window))
    if per_step is not None:
        events = _cap(events, per_step, num_steps, tuple(window))
    event_at = dict(events)

    sched = VPSchedule()
    alpha_bars = sched.alpha_bars()

    def ab(t: int) -> float:
        return 1.0 if t < 0 else float(alpha_bars[t])

    def denoise(xx, a):
        return prior.x0_vp(xx, a)

    x_shape = tuple(getattr(physics, "x_shape", ()))
    gdev = generator.device
    x = torch.randn((particles,) + x_shape, generator=generator, device=gdev, dtype=like.dtype).to(like.device)
    scores, event_steps = [], []
    sub = cs.restrict(torch.nonzero(acquired).reshape(-1)) if acquired.any() else None
    ts, prev = dds_timesteps(num_steps, sched)
    # plan: (reverse step index, candidates to acquire there); "restart": every event at the end of a pass, then
    # a new pass from step k_r (module docstring)
    if predictive == "tweedie":
        plan = [(k, event_at.get(k, 0)) for k in range(num_steps)]
    else:
        k_r = min(int(math.floor(restart * num_steps)), num_steps - 1)
        plan = [(k, 0) for k in range(num_steps)]
        for _, m_ev in events:
            plan[-1] = (num_steps - 1, m_ev)
            plan += [(k, 0) for k in range(k_r, num_steps)]
    aty = None
    with torch.no_grad():
        for i, (k, m_ev) in enumerate(progress_bar(plan, progress, "ads")):
            t = ts[k]
            a = ab(t)
            if guidance == "dps" and sub is not None:                              # official: DPS step
                with torch.enable_grad():
                    xg = x.detach().requires_grad_(True)
                    x0_hat = map_chunked(denoise, xg, a, chunk=chunk)
                    res = (sub.A(x0_hat) - y_acq).reshape(particles, -1)
                    grad = torch.autograd.grad(res.norm(dim=1).sum(), xg)[0]      # grad of w ||y - A x0_hat(x_t)||
                x0_hat = x0_hat.detach()
            else:
                x0_hat = map_chunked(denoise, x, a, chunk=chunk)                   # Tweedie, one NFE
                grad = None
            eps_hat = (x - a ** 0.5 * x0_hat) / (1 - a) ** 0.5
            if sub is not None and guidance == "dds":                              # DDS data consistency
                y_sub = y_acq.expand(particles, *cs.y_shape)
                if aty is None or aty[0] is not sub:                               # A_S^T y_S: once per acquisition
                    aty = (sub, sub.A_adjoint(y_sub))
                x0 = dds_data_consistency(x0_hat, y_sub, sub, dc=dc, gamma=gamma, cg_iters=cg_iters, ATy=aty[1])
            else:
                x0 = x0_hat
            if m_ev:                                                               # acquisition
                m = min(m_ev, int((~acquired).sum()))
                chosen, s = select_candidates(cs.predict(x0), m, ~acquired, score, entropy_sigma,
                                              conditional=(select == "conditional"))
                scores.append(s)
                event_steps.append(i)
                take(chosen, i)
                sub = cs.restrict(torch.nonzero(acquired).reshape(-1))
            if i + 1 == len(plan):
                break
            z = torch.randn(x.shape, generator=generator, device=gdev, dtype=x.dtype).to(x.device)
            k_next = plan[i + 1][0]
            if k_next != k + 1:                                                    # restart: forward-noise x0
                a_r = ab(ts[k_next])
                x = a_r ** 0.5 * x0 + (1 - a_r) ** 0.5 * z
                continue
            a_prev = ab(prev[k])
            x = a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * (eta * z + (1 - eta ** 2) ** 0.5 * eps_hat)  # Eq. 17
            if grad is not None:
                x = x - dps_weight * grad
    samples = x0[:, None]
    chosen_all = torch.nonzero(acquired).reshape(-1)
    info = {"mask": cs.to_mask(chosen_all), "order": order, "scores": torch.stack(scores) if scores else
            torch.zeros(0, n, dtype=F64), "event_steps": event_steps,
            "candidates": {"unit": cs.unit, "n": n, "meas_shape": cs.meas_shape, "fixed": cs.fixed.tolist()},
            "budget": budget, "acceleration": n / budget, "particles": particles, "num_steps": num_steps,
            "window": tuple(window), "score": score, "entropy_sigma": entropy_sigma,
            "center_fraction": center_fraction, "eta": eta, "cg_iters": cg_iters, "gamma": gamma, "dc": dc,
            "guidance": guidance, "dps_weight": dps_weight, "preset": preset,
            "predictive": predictive, "restart": restart, "select": select, "prospective": acquire is not None}
    if "angles" in cs.info:
        info["angles"] = cs.info["angles"][chosen_all]
    return SolverOutput(mean=samples.mean(0), samples=samples, std=samples.std(0), info=info)


def _cap(events, per_step, num_steps, window):
    """Re-spread so that no event takes more than ``per_step`` candidates (more events, same window)."""
    total = sum(c for _, c in events)
    lo, hi = _window_range(num_steps, window)
    if math.ceil(total / per_step) > hi - lo:
        fail("per_step", f"at least {math.ceil(total / (hi - lo))} ({total} candidates over the {hi - lo} steps "
                         "of the window)", per_step)
    if all(c <= per_step for _, c in events):
        return events
    n_events = math.ceil(total / per_step)
    out = acquisition_steps(num_steps, n_events, window)
    base, extra = divmod(total, n_events)
    return [(s, base + (1 if k < extra else 0)) for k, (s, _) in enumerate(out)]


def _is_cartesian_mri(physics) -> bool:
    from ..operators import MRI, MultiCoilMRI, SliceWise

    inner = physics.op2d if isinstance(physics, SliceWise) else physics
    return isinstance(inner, (MRI, MultiCoilMRI))


__all__ = ["ads", "predictive_score", "select_candidates", "pairwise_sq_dist", "acquisition_steps", "PRESETS", "SCORES"]

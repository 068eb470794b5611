r"""Particle utilities shared by the SMC-type solvers (AFDPS ``smc``, ``mcgdiff``; ADS active subsampling).

Layout. ``G`` measurements ("groups") with ``N`` particles each are stored along one batch axis, group-major,
exactly as :func:`~invdiff.solvers.base.chains_batch` lays out ``n_samples`` chains: row ``g * N + i`` is
particle ``i`` of measurement ``g``. Log-weights are a ``(G, N)`` float64 tensor.

- :func:`normalize_log_weights`: float64, max-subtracted softmax per group; ``-inf`` entries get weight 0.
- :func:`ess`: effective sample size :math:`(\sum_i w_i)^2 / \sum_i w_i^2` (Kong, Liu & Wong 1994), here
  returned normalised by N (in (0, 1]), computed from log-weights without overflow.
- :func:`systematic_resample` (Kitagawa 1996; Douc, Cappe & Moulines 2005): one uniform per group,
  :math:`u_i = (U + i)/N`; unbiased (:math:`\mathbb E[\#\text{copies of } i] = N w_i`) and every count is
  :math:`\lfloor N w_i\rfloor` or :math:`\lceil N w_i\rceil`, hence a lower variance than
  :func:`multinomial_resample`.
- :class:`ParticleState`: particles + log-weights + history (ESS trace, resampling events, ancestry), with
  reweighting that quarantines non-finite particles (log-weight :math:`-\infty`), ESS-triggered resampling
  that returns the ancestor indices (so callers gather their own per-particle tensors: APF predictions,
  per-particle masks, ...), weighted moments and equally weighted draws.
- :func:`map_chunked`: apply a network to at most ``chunk`` particles at a time (memory-aware batching).
- :func:`spectral_basis` / :func:`sample_linear_gaussian`: exact draws from a Gaussian (prior or proposal kernel)
  tilted by a linear-Gaussian likelihood, in closed form when the operator has a cheap real SVD (matrix,
  inpainting, single-coil MRI) and by perturbation-optimisation with conjugate gradients otherwise (AFDPS Stage I,
  MCGdiff's initial level). They live here, not in :mod:`.primitives`, because only particle methods use them so far.

All randomness comes from a caller-supplied ``torch.Generator``.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> st = ParticleState(torch.zeros(2 * 4, 3), n_groups=2)
    >>> st.reweight(torch.tensor([0., 0., 0., -50., 0., 0., 0., 0.], dtype=torch.float64))
    >>> [round(v, 3) for v in st.ess().tolist()]
    [0.75, 1.0]
    >>> idx = st.resample(generator=g, threshold=0.9)   # only group 0 falls below the threshold
    >>> st.n_resample.tolist(), st.log_w.abs().sum().item()
    ([1, 0], 0.0)
"""
from __future__ import annotations

from typing import Callable

import torch

from .._validate import check_choice, check_in_range, check_positive, check_tensor, fail

F64 = torch.float64


# ------------------------------------------------------------------------------------------------
# weights
# ------------------------------------------------------------------------------------------------
def _as_groups(log_w: torch.Tensor) -> torch.Tensor:
    if not isinstance(log_w, torch.Tensor):
        fail("log_w", "a torch.Tensor of log-weights (N,) or (G, N)", log_w, TypeError)
    if log_w.dim() not in (1, 2) or log_w.shape[-1] < 1:
        fail("log_w", "log-weights of shape (N,) or (G, N) with N >= 1", log_w)
    if torch.isnan(log_w).any() or (log_w == float("inf")).any():
        fail("log_w", "log-weights without NaN or +inf (use -inf for a discarded particle)", log_w)
    return log_w.to(F64).reshape(-1, log_w.shape[-1])


def normalize_log_weights(log_w: torch.Tensor) -> torch.Tensor:
    r"""Normalised weights :math:`w_i = e^{\ell_i - \max_j \ell_j} / \sum_k e^{\ell_k - \max_j \ell_j}`, float64.

    ``log_w`` is (N,) or (G, N) (one row per group); ``-inf`` entries get weight 0. A row that is entirely
    ``-inf`` (every particle discarded) raises a ValueError.
    """
    lw = _as_groups(log_w)
    mx = lw.max(dim=1, keepdim=True).values
    if (mx == float("-inf")).any():
        fail("log_w", "at least one finite log-weight per group", "a group whose particles are all discarded (-inf)")
    w = torch.exp(lw - mx)
    w = w / w.sum(dim=1, keepdim=True)
    return w.reshape(log_w.shape)


def ess(log_w: torch.Tensor) -> torch.Tensor:
    r"""Normalised effective sample size :math:`(\sum w)^2 / (N \sum w^2)` per group, float64 in [1/N, 1].

    >>> round(float(ess(torch.tensor([0., 0., float('-inf'), float('-inf')]))), 3)
    0.5
    """
    w = normalize_log_weights(log_w).reshape(-1, log_w.shape[-1])
    out = 1.0 / (w.pow(2).sum(dim=1) * w.shape[1])
    return out if log_w.dim() == 2 else out.reshape(())


def _uniforms(n_groups: int, generator: torch.Generator | None, device) -> torch.Tensor:
    gdev = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(n_groups, 1, dtype=F64, generator=generator, device=gdev).to(device)


def _check_weights(weights: torch.Tensor) -> torch.Tensor:
    check_tensor("weights", weights, ndim=(1, 2))
    w = weights.to(F64).reshape(-1, weights.shape[-1])
    if (w < 0).any() or (w.sum(dim=1) <= 0).any():
        fail("weights", "non-negative weights with a positive sum per group", weights)
    return w / w.sum(dim=1, keepdim=True)


def systematic_resample(weights: torch.Tensor, n: int | None = None, *,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Ancestor indices by systematic resampling: :math:`a_i = \min\{j : \sum_{k\le j} w_k \ge (U + i)/n\}`.

    ``weights`` (N,) or (G, N) (normalised or not); returns int64 indices (n,) or (G, n) into the last axis,
    in increasing order. One :math:`U\sim\mathcal U[0,1)` per group from ``generator``.
    """
    w = _check_weights(weights)
    G, N = w.shape
    n = N if n is None else n
    check_positive("n", n, integer=True)
    cum = w.cumsum(dim=1)
    cum[:, -1] = 1.0  # guard against round-off: the last bin closes the unit interval
    u = (_uniforms(G, generator, w.device) + torch.arange(n, dtype=F64, device=w.device)[None]) / n
    idx = torch.searchsorted(cum, u, right=False).clamp_max(N - 1)
    return idx if weights.dim() == 2 else idx[0]


def multinomial_resample(weights: torch.Tensor, n: int | None = None, *,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """Ancestor indices drawn i.i.d. from the categorical distribution ``weights`` (same conventions as
    :func:`systematic_resample`; sorted, so that the two are interchangeable)."""
    w = _check_weights(weights)
    G, N = w.shape
    n = N if n is None else n
    check_positive("n", n, integer=True)
    gdev = generator.device if generator is not None else torch.device("cpu")
    idx = torch.multinomial(w.to(gdev), n, replacement=True, generator=generator).to(w.device).sort(dim=1).values
    return idx if weights.dim() == 2 else idx[0]


RESAMPLERS = {"systematic": systematic_resample, "multinomial": multinomial_resample}


def flat_indices(idx: torch.Tensor, n_particles: int) -> torch.Tensor:
    """(G, n) per-group ancestor indices -> (G * n,) rows of the group-major particle batch."""
    G = idx.shape[0]
    return (idx + n_particles * torch.arange(G, device=idx.device)[:, None]).reshape(-1)


# ------------------------------------------------------------------------------------------------
# batching
# ------------------------------------------------------------------------------------------------
def map_chunked(fn: Callable[..., torch.Tensor], x: torch.Tensor, *args, chunk: int | None = None) -> torch.Tensor:
    """``fn(x[i:i+chunk], *args_chunk)`` concatenated over the batch axis: at most ``chunk`` particles per call.

    Tensor ``args`` with the batch size of ``x`` are chunked alongside (per-particle noise levels, conditioning);
    other arguments are passed unchanged. ``chunk=None`` makes one call.
    """
    B = x.shape[0]
    if chunk is None or chunk >= B:
        return fn(x, *args)
    check_positive("chunk", chunk, integer=True)
    outs = []
    for i in range(0, B, chunk):
        sl = [a[i:i + chunk] if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == B else a for a in args]
        outs.append(fn(x[i:i + chunk], *sl))
    return torch.cat(outs, dim=0)


# ------------------------------------------------------------------------------------------------
# the particle system
# ------------------------------------------------------------------------------------------------
class ParticleState:
    r"""A weighted particle system for ``G`` measurements x ``N`` particles (group-major rows of ``x``).

    Attributes:
        x: (G * N, ...) particles (any dtype/device; the solver's working precision).
        log_w: (G, N) float64 unnormalised log-weights (``-inf`` = discarded particle).
        ancestry: (G, N) int64 index of each particle's time-0 ancestor (path degeneracy diagnostics).
        ess_trace: list of (G,) normalised ESS values, one per :meth:`record` call.
        resampled_at: list of (G,) bool, whether each group resampled at that step.
        n_resample: (G,) int64 number of resampling events per group.
        n_quarantined: number of particles discarded because they became non-finite.
        log_evidence: (G,) float64 running SMC estimate of :math:`\log(Z_t/Z_0)`, the log normalising-constant
            ratio between the current and the initial unnormalised targets: every :meth:`reweight` adds
            :math:`\log\sum_i W_i e^{\delta_i}` (W the normalised weights before the increment), which after a
            resampling step (W = 1/N) is the log of the mean incremental weight (Del Moral, Doucet & Jasra 2006).

    Invariants: ``x.shape[0] == G * N``; a row of ``log_w`` always has a finite entry (else a RuntimeError
    names the group and the fix).
    """

    def __init__(self, x: torch.Tensor, n_groups: int = 1, log_w: torch.Tensor | None = None):
        check_tensor("x", x, finite=False)
        check_positive("n_groups", n_groups, integer=True)
        if x.shape[0] % n_groups != 0:
            fail("x", f"a batch divisible by n_groups = {n_groups}", x)
        self.x = x
        self.n_groups = n_groups
        self.n_particles = x.shape[0] // n_groups
        shape = (n_groups, self.n_particles)
        if log_w is None:
            self.log_w = torch.zeros(shape, dtype=F64, device=x.device)
        else:
            check_tensor("log_w", log_w, finite=False)
            if tuple(log_w.shape) != shape:
                fail("log_w", f"shape {shape}", log_w)
            self.log_w = log_w.to(device=x.device, dtype=F64).clone()
        self.ancestry = torch.arange(self.n_particles, device=x.device).repeat(n_groups, 1)
        self.ess_trace: list[torch.Tensor] = []
        self.resampled_at: list[torch.Tensor] = []
        self.n_resample = torch.zeros(n_groups, dtype=torch.long, device=x.device)
        self.n_quarantined = 0
        self.log_evidence = torch.zeros(n_groups, dtype=F64, device=x.device)
        self.quarantine()

    # -- views --------------------------------------------------------------------------------------
    @property
    def G(self) -> int:
        return self.n_groups

    @property
    def N(self) -> int:
        return self.n_particles

    def grouped(self, t: torch.Tensor | None = None) -> torch.Tensor:
        """(G * N, ...) -> (G, N, ...) view (of ``x`` by default)."""
        t = self.x if t is None else t
        return t.reshape(self.G, self.N, *t.shape[1:])

    def weights(self) -> torch.Tensor:
        """(G, N) normalised float64 weights."""
        return normalize_log_weights(self.log_w)

    def ess(self) -> torch.Tensor:
        """(G,) normalised effective sample size ESS / N."""
        return ess(self.log_w)

    # -- updates ------------------------------------------------------------------------------------
    def quarantine(self, extra: torch.Tensor | None = None) -> int:
        """Discard particles whose state (or ``extra`` per-particle values) is non-finite: log-weight -inf and
        state zeroed, so they neither contaminate batched operators nor survive resampling."""
        bad = ~torch.isfinite(self.x.reshape(self.x.shape[0], -1)).all(dim=1)
        if extra is not None:
            bad = bad | ~torch.isfinite(extra.reshape(self.x.shape[0], -1)).all(dim=1)
        n_bad = int(bad.sum())
        if n_bad:
            self.x = torch.where(bad.reshape(-1, *([1] * (self.x.dim() - 1))), torch.zeros_like(self.x), self.x)
            self.log_w = self.log_w.masked_fill(bad.reshape(self.G, self.N), float("-inf"))
            self.n_quarantined += n_bad
            self._check_alive()
        return n_bad

    def _check_alive(self):
        dead = (self.log_w.max(dim=1).values == float("-inf")).nonzero().reshape(-1).tolist()
        if dead:
            raise RuntimeError(f"every particle of measurement(s) {dead} became non-finite (numerically unstable "
                               "steps): use more steps, a smaller step size, or tempering")

    def reweight(self, delta: torch.Tensor):
        r"""Add log-weight increments ``delta`` ((G * N,) or (G, N)), in float64. NaN / +inf increments
        (overflowed likelihoods) quarantine the particle."""
        d = delta.to(device=self.log_w.device, dtype=F64).reshape(self.G, self.N)
        lw_old = self.log_w
        bad = torch.isnan(d) | (d == float("inf"))
        lw = self.log_w + torch.where(bad, torch.zeros_like(d), d)
        self.log_w = lw.masked_fill(bad, float("-inf"))
        # evidence increment log sum_i W_i e^{d_i}, W the normalised weights before this increment (log-sum-exp)
        self.log_evidence = self.log_evidence + torch.logsumexp(self.log_w, dim=1) - torch.logsumexp(lw_old, dim=1)
        if bad.any():
            self.n_quarantined += int(bad.sum())
            self.x = torch.where(bad.reshape(-1, *([1] * (self.x.dim() - 1))), torch.zeros_like(self.x), self.x)
        self._check_alive()
        # keep magnitudes bounded: subtracting the per-group max changes no normalised quantity
        self.log_w = self.log_w - self.log_w.max(dim=1, keepdim=True).values

    def record(self) -> torch.Tensor:
        """Append the current ESS / N to ``ess_trace`` and return it."""
        e = self.ess()
        self.ess_trace.append(e.detach())          # kept on the device: copied to the host once, in history()
        return e

    def resample(self, *, generator: torch.Generator | None, threshold: float = 1.0,
                 method: str = "systematic", force: bool = False) -> torch.Tensor | None:
        r"""Resample every group whose ESS / N is below ``threshold`` (all groups with ``force=True``).

        Selected groups get equally weighted copies of their particles (log-weights reset to 0); the others are
        untouched. Returns the (G * N,) ancestor row indices (identity for untouched groups) so that callers
        can gather per-particle tensors with ``t.index_select(0, idx)``, or None when nothing was resampled.
        """
        check_in_range("threshold", threshold, 0.0, 1.0, lo_open=True)
        check_choice("method", method, list(RESAMPLERS))
        sel = torch.ones(self.G, dtype=torch.bool, device=self.log_w.device) if force else self.ess() < threshold
        self.resampled_at.append(sel.detach())
        # adaptive resampling decides on the host: the one intended device->host read per step of the SMC loop
        if not bool(sel.any()):
            return None
        anc = torch.arange(self.N, device=self.log_w.device).repeat(self.G, 1)
        drawn = RESAMPLERS[method](self.weights()[sel], self.N, generator=generator)
        anc[sel] = drawn
        rows = flat_indices(anc, self.N)
        self.x = self.x.index_select(0, rows.to(self.x.device))
        self.ancestry = self.ancestry.gather(1, anc)
        self.log_w = torch.where(sel[:, None], torch.zeros_like(self.log_w), self.log_w)
        self.n_resample += sel.long()
        return rows

    # -- summaries ------------------------------------------------------------------------------------
    def weighted_mean(self, t: torch.Tensor | None = None) -> torch.Tensor:
        """(G, ...) weighted mean of ``t`` (default: the particles), accumulated in float64."""
        t = self.grouped(t)
        w = self.weights().to(t.device)
        return torch.einsum("gn,gn...->g...", w, t.to(F64)).to(t.dtype)

    def weighted_var(self, t: torch.Tensor | None = None) -> torch.Tensor:
        """(G, ...) weighted (population) variance of ``t`` (default: the particles)."""
        t = self.grouped(t)
        w = self.weights().to(t.device)
        t64 = t.to(F64)
        m = torch.einsum("gn,gn...->g...", w, t64)
        v = torch.einsum("gn,gn...->g...", w, (t64 - m[:, None]) ** 2)
        return v.clamp_min(0).to(t.dtype)

    def draws(self, n: int | None = None, *, generator: torch.Generator | None,
              method: str = "systematic") -> torch.Tensor:
        """(n, G, ...) equally weighted draws from the weighted ensemble (does not change the state).

        With uniform weights and n = N, systematic resampling returns every particle once.
        """
        check_choice("method", method, list(RESAMPLERS))
        n = self.N if n is None else n
        idx = RESAMPLERS[method](self.weights(), n, generator=generator)         # (G, n)
        rows = flat_indices(idx, self.N).to(self.x.device)
        out = self.x.index_select(0, rows)                                       # (G * n, ...)
        return out.reshape(self.G, n, *self.x.shape[1:]).transpose(0, 1).contiguous()

    def unique_ancestors(self) -> torch.Tensor:
        """(G,) number of distinct time-0 ancestors still alive (1 = complete path degeneracy)."""
        return torch.tensor([int(torch.unique(a).numel()) for a in self.ancestry])

    def history(self) -> dict:
        """ESS trace (steps, G), resampling flags (steps, G), counts: for ``info`` dictionaries."""
        ess_t = torch.stack(self.ess_trace).cpu() if self.ess_trace else torch.zeros(0, self.G, dtype=F64)
        res_t = torch.stack(self.resampled_at).cpu() if self.resampled_at else torch.zeros(0, self.G, dtype=torch.bool)
        return {"ess": ess_t, "resampled": res_t, "n_resample": self.n_resample.detach().cpu(),
                "unique_ancestors": self.unique_ancestors(), "n_quarantined": self.n_quarantined}


# ------------------------------------------------------------------------------------------------
# exact Gaussian initialisation for linear-Gaussian likelihoods
# ------------------------------------------------------------------------------------------------
class SpectralBasis:
    r"""A linear operator in SVD form :math:`A = U\,\mathrm{diag}(s)\,V^\top` with a *real orthonormal* V (and U).

    ``coef(x)`` = :math:`V^\top x`, ``image(c)`` = :math:`V c`, ``s`` (broadcastable to the coefficient shape,
    >= 0), ``ybar(y)`` = :math:`U^\top y` laid out like the coefficients (0 where s = 0), so that
    ``ybar(A x) == s * coef(x)``. Built by :func:`spectral_basis`.
    """

    def __init__(self, coef: Callable, image: Callable, s: torch.Tensor, ybar: Callable, kind: str):
        self.coef, self.image, self.s, self.ybar, self.kind = coef, image, s, ybar, kind


def _matrix_basis(M: torch.Tensor) -> SpectralBasis:
    M64 = M.detach().to(F64)
    m, n = M64.shape
    U, s, Vh = torch.linalg.svd(M64, full_matrices=True)
    s_full = torch.zeros(n, dtype=F64, device=M.device)
    s_full[: s.numel()] = s

    def ybar(y):
        yb = y.to(F64) @ U                                                 # (B, m) = U^T y per row
        out = torch.zeros(y.shape[0], n, dtype=F64, device=y.device)
        k = min(m, n)
        out[:, :k] = yb[:, :k]
        return out.to(y.dtype)

    return SpectralBasis(lambda x: (x.to(F64) @ Vh.T).to(x.dtype), lambda c: (c.to(F64) @ Vh).to(c.dtype),
                         s_full, ybar, "matrix-svd")


def spectral_basis(physics, x_like: torch.Tensor, generator: torch.Generator | None = None) -> SpectralBasis | None:
    """The SVD form of ``physics`` when it is cheap and real: a dense ``.matrix`` (``MatrixOperator``), or a
    deepinv ``DecomposablePhysics`` whose V is verified (on a random probe) to be a real orthonormal map
    with real singular values (inpainting, single-coil Cartesian MRI). Returns None otherwise (blur via
    ``rfft``, multi-coil MRI, CT): callers fall back to conjugate gradients."""
    import deepinv as dinv

    M = getattr(physics, "matrix", None)
    if isinstance(M, torch.Tensor) and M.dim() == 2:
        return _matrix_basis(M)
    if not isinstance(physics, dinv.physics.DecomposablePhysics):
        return None
    mask = physics.mask
    if not isinstance(mask, torch.Tensor) or mask.is_complex() or (mask < 0).any():
        return None
    gdev = generator.device if generator is not None else torch.device("cpu")
    z = torch.randn(x_like[:1].shape, generator=generator, device=gdev).to(device=x_like.device, dtype=x_like.dtype)
    with torch.no_grad():
        try:
            c = physics.V_adjoint(z)
            back = physics.V(c)
            yb = physics.U_adjoint(physics.A(z))
        except Exception:  # noqa: BLE001 - any failure means "no usable decomposition"
            return None
        if c.is_complex() or back.shape != z.shape or yb.shape != c.shape:
            return None
        tol = 1e-4 * float(z.norm())
        if abs(float(c.norm()) - float(z.norm())) > tol or float((back - z).norm()) > tol:
            return None
        s = mask.to(x_like.dtype)
        if float((yb - s * c).norm()) > 1e-4 * max(float(yb.norm()), 1.0):
            return None
    return SpectralBasis(physics.V_adjoint, physics.V, s, physics.U_adjoint, "decomposable")


def sample_linear_gaussian(physics, y: torch.Tensor, *, sigma_y: float, alpha: float, prior_mean, prior_var: float,
                           generator: torch.Generator | None, basis: SpectralBasis | None = None,
                           x_like: torch.Tensor | None = None, cg_iters: int = 100, cg_tol: float = 1e-6,
                           return_mean: bool = False):
    r"""Exact draws from :math:`q(x) \propto \mathcal N(x; m_0, \rho^2 I)\,\exp(-\alpha\|Ax - y\|^2 / 2\sigma_y^2)`.

    The Gaussian with precision :math:`\Lambda = \alpha A^\top A/\sigma_y^2 + I/\rho^2` and mean
    :math:`\bar m = \Lambda^{-1}(\alpha A^\top y/\sigma_y^2 + m_0/\rho^2)`, one draw per row of ``y``; ``prior_mean``
    may differ per row (a Gaussian proposal kernel tilted by the likelihood), ``prior_var`` is a scalar.

    - with a :class:`SpectralBasis`: closed form per coefficient (exact);
    - otherwise perturbation-optimisation (Papandreou & Yuille 2010; Orieux et al. 2012): solve
      :math:`\Lambda x = \alpha A^\top(y + \sigma_y\alpha^{-1/2}\xi_1)/\sigma_y^2 + (m_0 + \rho\xi_2)/\rho^2` by
      conjugate gradients, warm-started at :math:`m_0` (exact when CG converges; the relative residual is returned).

    :returns: (x, info) with ``info = {"method": "spectral"|"cg"|"prior", "cg_residual": float | None}``, and
        ``info["mean"]`` = :math:`\bar m` when ``return_mean`` (for CG, one extra right-hand side in the same solve).
    """
    from .primitives import conjugate_gradient, inner, normal_op

    gdev = generator.device if generator is not None else torch.device("cpu")

    def randn(shape, like):
        return torch.randn(shape, generator=generator, device=gdev, dtype=like.dtype).to(like.device)

    if x_like is None:
        with torch.no_grad():
            x_like = physics.A_adjoint(y)
    m0 = torch.as_tensor(prior_mean, dtype=x_like.dtype, device=x_like.device).expand_as(x_like)
    rho2 = float(prior_var)
    s2 = float(sigma_y) ** 2
    with torch.no_grad():
        if basis is not None:
            c0 = basis.coef(m0)
            s = basis.s.to(device=c0.device, dtype=F64)
            prec = alpha * s ** 2 / s2 + 1.0 / rho2
            mean = (alpha * s * basis.ybar(y).to(F64) / s2 + c0.to(F64) / rho2) / prec
            c = mean + randn(c0.shape, c0).to(F64) / prec.sqrt()
            info = {"method": "spectral", "cg_residual": None}
            if return_mean:
                info["mean"] = basis.image(mean.to(x_like.dtype))
            return basis.image(c.to(x_like.dtype)), info
        if alpha <= 0:
            info = {"method": "prior", "cg_residual": None}
            if return_mean:
                info["mean"] = m0.clone()
            return m0 + rho2 ** 0.5 * randn(x_like.shape, x_like), info
        # the normal equations times rho^2: (I + a rho^2/s2 A^T A) x = rho^2 b (better scaled)
        k = alpha * rho2 / s2
        b_mean = k * physics.A_adjoint(y) + m0
        pert = k * physics.A_adjoint((s2 / alpha) ** 0.5 * randn(y.shape, y))
        pert = pert + rho2 ** 0.5 * randn(x_like.shape, x_like)
        b = torch.cat([b_mean + pert, b_mean]) if return_mean else b_mean + pert
        start = torch.cat([m0, m0]) if return_mean else m0.clone()

        def H(v):
            return v + k * normal_op(physics, v)

        x = conjugate_gradient(H, b, x0=start, max_iter=cg_iters, tol=cg_tol)
        res = b - H(x)
        rel = float((inner(res, res).sqrt() / inner(b, b).sqrt().clamp_min(1e-30)).max())
    info = {"method": "cg", "cg_residual": rel}
    if return_mean:
        n = x_like.shape[0]
        info["mean"] = x[n:]
        return x[:n], info
    return x, info


__all__ = ["normalize_log_weights", "ess", "systematic_resample", "multinomial_resample", "RESAMPLERS",
           "flat_indices", "map_chunked", "ParticleState", "SpectralBasis", "spectral_basis",
           "sample_linear_gaussian"]

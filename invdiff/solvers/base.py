"""The solver contract: :func:`solve` -> :class:`Reconstruction`, and the registry solvers plug into.

A solver is a function ``fn(y, physics, prior, *, generator, n_samples, progress, **options) -> SolverOutput``
registered with :func:`register`. Bookkeeping lives here, not in the solvers: seeding, NFE counting
(the prior is wrapped in :class:`~invdiff.priors.base.CountingPrior`), timing, validation of ``y`` and
result packing.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .._validate import check_tensor, fail, check_positive
from ..priors.base import CountingPrior, Prior, check_prior_fits


@dataclass
class Reconstruction:
    """Result of :func:`invdiff.solve`.

    mean:    point estimate (posterior mean for samplers, the estimate for optimisers), same shape as x.
    samples: (n_samples, *x.shape) or None.
    std:     per-pixel posterior standard deviation: the solver's own estimate where it has one (the weighted
             particle std of SMC / MCGdiff), else the spread of the samples (n_samples > 1), else None.
    nfe:     denoiser evaluations actually made (batched calls), counted by wrapping the prior.
    seconds: wall time of the solve.
    info:    solver name, resolved options, and solver-specific diagnostics (ESS for SMC, mask for ADS, ...).
    """

    mean: torch.Tensor
    samples: torch.Tensor | None = None
    std: torch.Tensor | None = None
    nfe: int = 0
    seconds: float = 0.0
    info: dict = field(default_factory=dict)


@dataclass
class SolverOutput:
    """What a registered solver function returns; :func:`solve` turns it into a Reconstruction."""

    mean: torch.Tensor | None = None
    samples: torch.Tensor | None = None
    info: dict = field(default_factory=dict)
    std: torch.Tensor | None = None   # the solver's own per-pixel std (e.g. weighted particles); else from samples


@dataclass(frozen=True)
class SolverSpec:
    name: str
    fn: Callable[..., SolverOutput]
    needs_prior: bool
    sampler: bool  # True if independent runs give posterior samples
    doc: str
    volume: bool = False  # True if it reconstructs whole volumes (B, C, D, H, W) with a volume prior
    partial_y: bool = False  # reads only some entries of y (active acquisition): NaN elsewhere / None allowed


_REGISTRY: dict[str, SolverSpec] = {}


def register(name: str, *, needs_prior: bool = True, sampler: bool = True, volume: bool = False,
             partial_y: bool = False):
    """Decorator: register ``fn`` as solver ``name``.

    ``volume=True`` marks a solver that reconstructs whole volumes ``(B, C, D, H, W)`` under a volume operator
    (``invdiff reconstruct`` / ``bench`` then hand it the whole stack and lift a 2D prior slice by slice).
    ``partial_y=True``: the solver reads only the entries of ``y`` it chooses (active acquisition, ``ads``), so
    :func:`solve` leaves the finiteness and shape checks of ``y`` to it and lets ``y`` be None.
    """

    def deco(fn):
        if name in _REGISTRY:
            raise RuntimeError(f"solver {name!r} registered twice")
        _REGISTRY[name] = SolverSpec(name, fn, needs_prior, sampler, (fn.__doc__ or "").strip(), volume=volume,
                                     partial_y=partial_y)
        return fn

    return deco


def available() -> list[str]:
    """Names of all registered solvers."""
    from . import _load_all  # noqa: F401  (import side effect: registration)

    return sorted(_REGISTRY)


def get(name: str) -> SolverSpec:
    available()
    if not isinstance(name, str) or name not in _REGISTRY:
        fail("solver", f"one of {sorted(_REGISTRY)}", repr(name))
    return _REGISTRY[name]


def make_generator(seed: int | None, device) -> torch.Generator:
    """A torch.Generator seeded with ``seed`` (seed=0 is a seed, unlike deepinv's ``if seed:``)."""
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        if not isinstance(seed, int) or isinstance(seed, bool):
            fail("seed", "an int or None", seed, TypeError)
        g.manual_seed(seed)
    return g


def solve(y: torch.Tensor, physics, prior: Prior | None = None, solver: str = "dds", *, seed: int | None = 0,
          n_samples: int = 1, progress: bool | None = None, strict: bool = False, **options: Any) -> Reconstruction:
    """Reconstruct x from y = A x + n with ``solver``.

    Args:
        y: measurements, as produced by ``physics(x)``.
        physics: a deepinv ``LinearPhysics`` (every invdiff operator is one).
        prior: an invdiff prior (see :func:`invdiff.priors.load`); optional for classical solvers.
        solver: a name from :func:`invdiff.solvers.available`.
        seed: seeds the solver's own ``torch.Generator`` (results do not depend on global RNG state).
        n_samples: number of posterior samples (independent runs, or particles/draws for SMC).
        progress: show a progress bar (default: only on an interactive terminal).
        strict: refuse (``PriorSizeError``) instead of warning (``PriorSizeWarning``) when the prior is applied to an
            image size / pixel scale it was not trained or validated for (:func:`invdiff.priors.base.check_prior_fits`).
        **options: solver-specific options (see the solver's docstring).

    Example:
        >>> import torch, invdiff
        >>> from invdiff.operators import MatrixOperator
        >>> A = torch.eye(3)[:2]; op = MatrixOperator(A, sigma=0.1)
        >>> rec = invdiff.solve(op.A(torch.ones(1, 3)), op, solver="cg")
        >>> rec.mean.shape
        torch.Size([1, 3])
    """
    spec = get(solver)
    if not spec.partial_y:
        check_tensor("y", y, finite=True, floating=True)
        if hasattr(physics, "check_y"):
            physics.check_y(y)  # invdiff operators: shape / channel / dtype checks with one clear message
    check_positive("n_samples", n_samples, integer=True)
    if spec.needs_prior and prior is None:
        fail("prior", f"a prior for solver {solver!r} (see invdiff.priors.available())", "None")
    if prior is not None and not isinstance(prior, Prior):
        fail("prior", "an invdiff Prior (invdiff.priors.load(...) or GaussianMixture)", prior, TypeError)
    if prior is not None and int(getattr(prior, "cond_channels", 0) or 0) > 0 and not getattr(spec.fn, "accepts_conditional", False):
        fail("prior", f"an unconditional prior for solver {solver!r} (a conditional prior needs solver='conditional-dc')",
             f"the conditional prior {prior.name!r} ({prior.cond_channels} conditioning channels)")
    if n_samples > 1 and not spec.sampler:
        fail("n_samples", f"1 for the deterministic solver {solver!r}", n_samples)
    # size guard (issue 11 item 4): once, before the solver starts; per-slice H, W for lifted 2D priors
    if spec.needs_prior and getattr(physics, "x_shape", None):
        check_prior_fits(prior, physics.x_shape, strict=strict, stacklevel=2)
    if progress is None:
        import sys

        progress = sys.stderr.isatty()
    counted = CountingPrior(prior) if prior is not None else None
    gen = make_generator(seed, y.device if y is not None else "cpu")
    t0 = time.perf_counter()
    out = spec.fn(y, physics, counted, generator=gen, n_samples=n_samples, progress=progress, **options)
    seconds = time.perf_counter() - t0
    samples = out.samples
    mean = out.mean if out.mean is not None else samples.mean(0)
    std = out.std
    if std is None and samples is not None and samples.shape[0] > 1:
        std = samples.std(0)
    info = {"solver": solver, "seed": seed, "n_samples": n_samples, "options": dict(options)}
    if counted is not None:
        info["nfe_images"] = counted.nfe_images
    info.update(out.info)
    return Reconstruction(mean=mean, samples=samples, std=std, nfe=counted.nfe if counted is not None else 0,
                          seconds=seconds, info=info)


def chains_batch(y: torch.Tensor, n_samples: int) -> torch.Tensor:
    """Stack ``n_samples`` copies of each measurement along the batch (item-major): independent chains run
    through the prior in one batched call. Operators with batch-1 parameters broadcast over them."""
    return y.repeat_interleave(n_samples, 0) if n_samples > 1 else y


def chains_unbatch(x: torch.Tensor, n_samples: int) -> torch.Tensor:
    """Inverse of :func:`chains_batch` on the result: (B * n, ...) -> (n, B, ...)."""
    return x.reshape(x.shape[0] // n_samples, n_samples, *x.shape[1:]).transpose(0, 1).contiguous()


def progress_bar(iterable, enabled: bool, desc: str, total: int | None = None):
    """The one progress bar used by every solver (tqdm)."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False)

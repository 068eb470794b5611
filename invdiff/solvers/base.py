"""The solver contract: :func:`solve` -> :class:`Reconstruction`, and the registry solvers plug into.

A solver is a function ``fn(y, physics, prior, *, generator, n_samples, progress, **options) -> SolverOutput``
registered with :func:`register` together with its option spec: a tuple of :class:`Option` (name, type, range
or choices, default, one-line meaning). Bookkeeping lives here, not in the solvers: seeding, NFE counting
(the prior is wrapped in :class:`~invdiff.priors.base.CountingPrior`), timing, validation of ``y``, validation
and typing of the options (:func:`resolve_options`: unknown or out-of-range options are refused before the
solver runs, strings from the command line are coerced by the declared type, measured per-operator defaults of
:mod:`invdiff.solvers.defaults` fill what the caller left out) and result packing. The solver body receives
every option, resolved, and is its algorithm.

Example (a new solver)::

    SPEC = (Option("num_steps", int, 50, "network evaluations", lo=1),
            Option("mode", str, "fast", "which variant", choices=("fast", "exact")))

    @register("mine", options=SPEC)
    def mine(y, physics, prior, *, generator, n_samples, progress, num_steps, mode):
        ...
"""
from __future__ import annotations

import inspect
import math
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


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


@dataclass(frozen=True)
class Option:
    """One solver option, declared once: the registry validates, coerces and lists it from this.

    name:     keyword of the solver function.
    type:     int, float, str or bool; strings (``--set solver.X=...``) are coerced to it, an int is accepted
              for a float (and converted).
    default:  the value used when the caller gives none. ``None`` means "chosen at run time" (the meaning says
              how: a preset, the operator, the prior), and then None is also an accepted value. Measured
              per-operator defaults (:mod:`invdiff.solvers.defaults`) take precedence over it.
    help:     one-line meaning (``invdiff solvers NAME`` prints it).
    choices:  the accepted strings, for ``type=str``.
    lo, hi:   the accepted range for numbers (``lo_open`` / ``hi_open``: strict bounds).
    extra:    other accepted kinds passed through unchecked by the registry (the solver checks them): "tensor",
              "callable", "sequence" (list / tuple), "number" (int / float), "none" (None although the default is
              not None). ``type=object`` accepts only these (and None when the default is None).
    """

    name: str
    type: type
    default: Any
    help: str
    choices: tuple | None = None
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    extra: tuple = ()

    def __post_init__(self):
        if self.type not in (int, float, str, bool, object):
            raise TypeError(f"Option {self.name!r}: type must be int, float, str, bool (or object: only None and "
                            f"the extra kinds), not {self.type!r}")
        if self.choices is not None and self.type is not str:
            raise TypeError(f"Option {self.name!r}: choices need type=str")
        if self.default is not None:
            self.validate(self.default, "")  # a spec whose default it refuses is a bug of the solver module

    # ---- text ----
    def expected(self) -> str:
        """What the option accepts, in words (used by error messages and ``invdiff solvers``)."""
        if self.choices is not None:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        else:
            text = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
                    object: ""}[self.type]
            if self.lo is not None and self.hi is not None:
                text += f" in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
            elif self.lo is not None:
                text += f" {'>' if self.lo_open else '>='} {self.lo:g}"
            elif self.hi is not None:
                text += f" {'<' if self.hi_open else '<='} {self.hi:g}"
        kinds = [{"tensor": "a tensor", "callable": "a callable", "sequence": "a list / tuple", "number": "a number",
                  "none": "None"}[k] for k in self.extra]
        if self.default is None:
            kinds.append("None (automatic)")
        return " or ".join(([text] if text else []) + kinds)

    def type_name(self) -> str:
        names = ([] if self.type is object else [self.type.__name__]) + list(self.extra)
        return "|".join(names + (["None"] if self.default is None else []))

    # ---- checking ----
    def coerce(self, value):
        """A string from the command line to the declared type (other values unchanged; int -> float)."""
        if isinstance(value, str) and "none" in self.extra and value.strip().lower() in ("none", "null"):
            return None
        if isinstance(value, str) and "number" in self.extra:
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, str) and self.type not in (str, object):
            text = value.strip()
            if self.default is None and text.lower() in ("none", "null", "auto"):
                return None
            try:
                if self.type is bool:
                    if text.lower() in _TRUE + _FALSE:
                        return text.lower() in _TRUE
                    raise ValueError(text)
                return self.type(text)
            except ValueError:
                return value  # validate() then names the option and what it expects
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value

    def validate(self, value, context: str):
        """Raise one clear error (the option, what it accepts, what came, ``context``) unless ``value`` fits."""
        if value is None and self.default is None:
            return value
        if "tensor" in self.extra and isinstance(value, torch.Tensor):
            return value
        if "callable" in self.extra and callable(value) and not isinstance(value, (str, bool, int, float)):
            return value
        if "sequence" in self.extra and isinstance(value, (list, tuple)):
            return value
        if "number" in self.extra and isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        if "none" in self.extra and value is None:
            return value
        exp = self.expected() + context
        if self.type is bool:
            ok = isinstance(value, bool)
        elif self.type is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif self.type is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = isinstance(value, str) and self.type is str
        if not ok:
            fail(self.name, exp, value, TypeError)
        if self.choices is not None and value not in self.choices:
            fail(self.name, exp, repr(value))
        if self.type in (int, float):
            if not math.isfinite(value):
                fail(self.name, exp, value)
            if self.lo is not None and not (value > self.lo if self.lo_open else value >= self.lo):
                fail(self.name, exp, value)
            if self.hi is not None and not (value < self.hi if self.hi_open else value <= self.hi):
                fail(self.name, exp, value)
        return value


@dataclass(frozen=True)
class SolverSpec:
    name: str
    fn: Callable[..., SolverOutput]
    needs_prior: bool
    sampler: bool  # True if independent runs give posterior samples
    doc: str
    volume: bool = False  # True if it reconstructs whole volumes (B, C, D, H, W) with a volume prior
    partial_y: bool = False  # reads only some entries of y (active acquisition): NaN elsewhere / None allowed
    options: tuple = ()  # the Option spec

    def option(self, name: str) -> Option:
        for o in self.options:
            if o.name == name:
                return o
        raise KeyError(name)

    def accepted(self) -> str:
        """``name (type, default d)`` of every option: the list error messages give."""
        return "; ".join(f"{o.name} ({o.type_name()}, default {o.default!r})" for o in self.options) or "none"


_REGISTRY: dict[str, SolverSpec] = {}
_RESERVED = ("y", "physics", "prior", "generator", "n_samples", "progress")


def register(name: str, *, needs_prior: bool = True, sampler: bool = True, volume: bool = False,
             partial_y: bool = False, options=()):
    """Decorator: register ``fn`` as solver ``name`` with its option spec ``options`` (a sequence of
    :class:`Option`). ``fn`` is called with every option resolved, so it needs no defaults of its own; its
    keyword parameters must be exactly the spec's names (checked here, once, at import).

    ``volume=True`` marks a solver that reconstructs whole volumes ``(B, C, D, H, W)`` under a volume operator
    (``invdiff reconstruct`` / ``bench`` then hand it the whole stack and lift a 2D prior slice by slice).
    ``partial_y=True``: the solver reads only the entries of ``y`` it chooses (active acquisition, ``ads``), so
    :func:`solve` leaves the finiteness and shape checks of ``y`` to it and lets ``y`` be None.
    """
    spec_options = tuple(options)

    def deco(fn):
        if name in _REGISTRY:
            raise RuntimeError(f"solver {name!r} registered twice")
        names = [o.name for o in spec_options]
        if len(set(names)) != len(names) or not all(isinstance(o, Option) for o in spec_options):
            raise RuntimeError(f"solver {name!r}: options must be Option objects with distinct names")
        params = [p for p in inspect.signature(fn).parameters if p not in _RESERVED]
        if sorted(params) != sorted(names):
            raise RuntimeError(f"solver {name!r}: function keywords {sorted(params)} differ from its option spec "
                               f"{sorted(names)}")
        _REGISTRY[name] = SolverSpec(name, fn, needs_prior, sampler, (fn.__doc__ or "").strip(), volume=volume,
                                     partial_y=partial_y, options=spec_options)
        return fn

    return deco


def resolve_options(solver: str, options: dict, physics=None, prior=None) -> tuple[dict, dict]:
    """Every option of ``solver`` resolved: explicit values (coerced and checked) > measured defaults for this
    operator and prior (:func:`invdiff.solvers.defaults.measured`) > the spec's defaults.

    Returns ``(resolved, measured)`` where ``measured`` is ``{"options": {...}, "source": "..."}`` or ``{}``.
    An unknown or out-of-range option raises one error naming the solver and listing its options.
    """
    spec = get(solver)
    known = {o.name: o for o in spec.options}
    unknown = sorted(set(options) - set(known))
    context = f" for solver {solver!r} (its options: {spec.accepted()})"
    if unknown:
        fail(unknown[0], f"an option of solver {solver!r}: {spec.accepted()}",
             f"unknown option(s) {unknown}")
    explicit = {k: known[k].validate(known[k].coerce(v), context) for k, v in options.items()}
    measured = {}
    if physics is not None:
        from .defaults import measured as measured_defaults

        measured = measured_defaults(solver, physics, prior, explicit)
        for k, v in measured.get("options", {}).items():
            known[k].validate(v, f" (measured default{context})")
    resolved = {o.name: o.default for o in spec.options}
    resolved.update(measured.get("options", {}))
    resolved.update(explicit)
    return resolved, measured


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
        **options: solver-specific options (``invdiff solvers NAME`` lists them; strings are coerced to the
            declared type; options left out take the measured default for this operator where one exists,
            :mod:`invdiff.solvers.defaults`, else the solver's own default).

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
    if not isinstance(strict, bool):
        fail("strict", "True or False", strict, TypeError)
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
    resolved, measured = resolve_options(solver, options, physics, prior)
    options = {k: resolved[k] for k in options}  # as given, typed
    counted = CountingPrior(prior) if prior is not None else None
    gen = make_generator(seed, y.device if y is not None else "cpu")
    t0 = time.perf_counter()
    out = spec.fn(y, physics, counted, generator=gen, n_samples=n_samples, progress=progress, **resolved)
    seconds = time.perf_counter() - t0
    samples = out.samples
    mean = out.mean if out.mean is not None else samples.mean(0)
    std = out.std
    if std is None and samples is not None and samples.shape[0] > 1:
        std = samples.std(0)
    info = {"solver": solver, "seed": seed, "n_samples": n_samples, "options": dict(options)}
    if measured:
        info["measured_defaults"] = measured
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

"""Batch jobs: configuration (see :mod:`invdiff.jobs`): defaults < ``--config`` file < ``--set`` < flags with solver
options split off, the option and config checks the commands share, their common flags, the device, the prior."""
from __future__ import annotations

from .._validate import check_choice, fail


# ================================================================================================
# configuration: defaults < config file < --set < flags, solver options split off
# ================================================================================================
_SOLVER_RESERVED = {"y", "physics", "prior", "generator", "n_samples", "progress"}


def resolve_config(defaults: dict, config_file=None, overrides=(), *, extra: dict | None = None):
    """defaults < config file < ``--set`` < ``extra`` (explicit flags), with solver options split off.

    Keys ``solver.OPTION`` and ``NAME.OPTION`` (NAME a registered solver) go to ``options[NAME]`` (``"solver"``
    for the first form); a JSON config may also hold ``{"dds": {"num_steps": 20}}``. Other keys must be in
    ``defaults``. Returns ``(cfg, options)``.
    """
    from ..config import load_config_file, parse_pairs
    from ..solvers import available

    solvers = set(available()) | {"solver"}
    cfg, options = dict(defaults), {}
    for source, update in (("--config", load_config_file(config_file) if config_file else {}),
                           ("--set", parse_pairs(overrides)), ("flags", extra or {})):
        unknown = []
        for k, v in update.items():
            head, _, opt = k.partition(".")
            if opt and head in solvers:
                options.setdefault(head, {})[opt] = v
            elif k in solvers and k != "solver" and isinstance(v, dict):
                options.setdefault(k, {}).update(v)
            elif k in defaults:
                cfg[k] = v
            else:
                unknown.append(k)
        if unknown:
            fail(source, f"keys among {sorted(defaults)} or solver options SOLVER.OPTION",
                 f"unknown key(s) {sorted(unknown)}")
    return cfg, options


#: the name ``invdiff reconstruct`` and ``bench`` have used for :func:`resolve_config`
resolve_with_solver_options = resolve_config


def check_solver_options(solver: str, options: dict, *, chains: bool = False) -> dict:
    """Refuse options the solver does not take, listing the ones it does. ``chains=True`` (``invdiff bench``) also
    accepts ``n_samples`` for samplers: K chains per row, reconstructed by their mean (``reconstruct`` has its own
    ``n_samples`` key instead)."""
    import inspect

    from ..solvers import base
    from ..solvers.base import get

    spec = get(solver)
    if getattr(spec, "options", None) and hasattr(base, "resolve_options"):  # typed option specs: values too
        known = sorted(o.name for o in spec.options) + (["n_samples"] if chains and spec.sampler else [])
        bad = sorted(set(options) - set(known))
        if bad:
            fail(f"{solver}.<option>", f"options of solver {solver!r} among {sorted(known)}",
                 f"unknown option(s) {bad}")
        base.resolve_options(solver, {k: v for k, v in options.items() if v is not None and k != "n_samples"})
        return options
    params = inspect.signature(spec.fn).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return options
    known = sorted(n for n, p in params.items()
                   if n not in _SOLVER_RESERVED and (p.kind == p.KEYWORD_ONLY or p.default is not p.empty))
    if chains and spec.sampler:
        known = sorted(known + ["n_samples"])
    bad = sorted(set(options) - set(known))
    if bad:
        fail(f"{solver}.<option>", f"options of solver {solver!r} among {known}", f"unknown option(s) {bad}")
    return options


#: config keys several batch commands share: key -> check (the name is the flag or key the user typed)
def _common_checks():
    from .._validate import check_int, check_number

    return {
        "views": lambda n, v, cfg: check_int(n, v, lo=1),
        "angle_range": lambda n, v, cfg: check_number(n, v, lo=0, hi=360, lo_open=True),
        "coils": lambda n, v, cfg: check_int(n, v, lo=0),
        "espirit_kernel": lambda n, v, cfg: check_int(n, v, lo=1),
        "espirit_calib": lambda n, v, cfg: check_int(n, v, lo=2 * cfg["espirit_kernel"]),
        "noise": lambda n, v, cfg: check_number(n, v, lo=0),
        "seed": lambda n, v, cfg: check_int(n, v, lo=0),
        "threads": lambda n, v, cfg: check_int(n, v, lo=1),
        "device": lambda n, v, cfg: check_device(v, n),
        "precision": lambda n, v, cfg: check_choice(n, v, ("fp32", "bf16", "fp16")),
    }


def check_common_config(cfg: dict, flag_of: dict | None = None) -> dict:
    """Check the config keys the batch commands share (``views``, ``angle_range``, ``coils``, ``espirit_*``,
    ``noise``, ``seed``, ``threads``, ``device``, ``precision``, and ``prior``: a name, a path or None), those
    present in ``cfg``, in one place; errors name ``flag_of[key]`` (the flag the user typed) or the key."""
    name = lambda k: (flag_of or {}).get(k, k)  # noqa: E731
    if "prior" in cfg and cfg["prior"] is not None and not isinstance(cfg["prior"], str):
        fail(name("prior"), "a prior name or a checkpoint path", cfg["prior"], TypeError)
    for key, check in _common_checks().items():
        if key in cfg:
            check(name(key), cfg[key], cfg)
    return cfg


def add_job_flags(p, defaults: dict, *, options: str, done: str = "redo inputs whose output exists",
                  keys_extra: str = "") -> None:
    """The flags every batch command's parser takes: ``--overwrite``, ``--no-progress``, ``--config`` (its keys:
    those of ``defaults``, then ``keys_extra``) and ``--set`` (``options``: how solver options are spelled)."""
    p.add_argument("--overwrite", action="store_true", default=None, help=done)
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")
    p.add_argument("--config", help="config file (JSON or key = value lines); keys: " + ", ".join(defaults)
                                    + keys_extra)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a config key, or {options}")


def is_volume_solver(solver: str) -> bool:
    """True for a registered solver that reconstructs whole volumes (``register(..., volume=True)``)."""
    from ..solvers.base import _REGISTRY, available

    available()
    spec = _REGISTRY.get(solver)
    return bool(spec is not None and spec.volume)


def solves_whole_volumes(solver: str, prior=None) -> bool:
    """True when an input's slices are solved as one volume: a volume solver (:func:`is_volume_solver`), or any
    solver with a native 3D prior (``spatial_dims == 3``: its network sees the whole volume, through the solver's
    volume path)."""
    return is_volume_solver(solver) or getattr(prior, "spatial_dims", 2) == 3


def check_device(device, name: str = "--device") -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` as a torch.device, refused with one clear message when CUDA is missing."""
    import torch

    try:
        dev = torch.device(str(device))
    except (RuntimeError, TypeError):
        fail(name, "cpu, cuda or cuda:N", device)
    if dev.type not in ("cpu", "cuda"):
        fail(name, "cpu, cuda or cuda:N", device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            fail(name, "cpu on this machine (torch sees no CUDA device)", device)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            fail(name, f"cuda:0..cuda:{torch.cuda.device_count() - 1}", device)
    return dev


def to_device(y: torch.Tensor, physics, device):
    """Measurements and operator on ``device`` (operators are torch modules: masks, coil maps, CT matrices move)."""
    import torch

    device = torch.device(device)
    if y.device != device:
        y = y.to(device)
        if isinstance(physics, torch.nn.Module):
            physics = physics.to(device)
    return y, physics


def load_prior_checked(solver: str, prior_name, device="cpu", precision: str = "fp32"):
    """The prior (or None) on ``device`` with the network in ``precision``, with one clear message for a
    missing / unknown prior or a conditional prior paired with a solver other than ``conditional-dc`` (and back)."""
    from ..priors import available as priors_available
    from ..priors import load
    from ..solvers.base import get

    spec = get(solver)
    if prior_name in (None, "", "none"):
        if spec.needs_prior:
            fail("--prior", f"a prior for solver {solver!r}: one of {priors_available()} or a checkpoint path",
                 "nothing")
        return None
    check_choice("--precision", precision, ("fp32", "bf16", "fp16"))
    try:
        prior = load(prior_name, device=device, precision=precision)
    except (ValueError, TypeError, OSError) as e:
        fail("--prior", f"one of the shipped priors {priors_available()} or a loadable checkpoint path",
             f"{prior_name!r} ({e})")
    conditional = int(getattr(prior, "cond_channels", 0) or 0) > 0
    if conditional != bool(getattr(spec.fn, "accepts_conditional", False)):  # conditional priors: conditional-dc only
        fail("--prior", f"{'a conditional' if not conditional else 'an unconditional'} prior for solver {solver!r}",
             f"the {'conditional' if conditional else 'unconditional'} prior {prior_name!r}")
    return prior


def prior_for_volumes(prior, chunk: int = 8):
    """A 2D prior lifted to volumes slice by slice (``invdiff.priors.lift``), for the volume solvers."""
    if prior is None or getattr(prior, "spatial_dims", 2) != 2:
        return prior
    from ..priors.lift import lift

    return lift(prior, chunk=chunk)



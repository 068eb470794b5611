"""Argument checks that fail once, clearly: which argument, what was expected, what was received.

Every public entry point of invdiff validates its inputs with these helpers so that bad input gives
one ``ValueError``/``TypeError`` naming the argument, never a shape error deep inside torch.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch


def describe(x) -> str:
    """Short description of a value for error messages."""
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return f"{type(x).__name__} {x!r}"[:200]


def fail(name: str, expected: str, received, exc=ValueError):
    raise exc(f"argument '{name}': expected {expected}, received {received if isinstance(received, str) else describe(received)}")


def check_tensor(name: str, x, *, ndim: int | Iterable[int] | None = None, finite: bool = True,
                 real: bool = True, floating: bool = False) -> torch.Tensor:
    """Check that ``x`` is a torch tensor with the given number of dimensions, finite and real
    (and of a floating-point dtype when ``floating``: integer tensors fail deep inside torch otherwise)."""
    if not isinstance(x, torch.Tensor):
        fail(name, "a torch.Tensor", x, TypeError)
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in allowed:
            fail(name, f"a tensor with {' or '.join(map(str, allowed))} dimensions", x)
    if real and x.is_complex():
        fail(name, "a real tensor (complex images are 2 real channels: (B, 2, H, W))", x, TypeError)
    if floating and not x.is_floating_point():
        fail(name, f"a floating-point tensor (torch.float32 or float64); convert first, e.g. {name}.float()", x,
             TypeError)
    if finite and not torch.isfinite(x).all():
        n_bad = int((~torch.isfinite(x)).sum())
        fail(name, "finite values", f"{describe(x)} with {n_bad} NaN/Inf entries")
    return x


def check_positive(name: str, value, *, strict: bool = True, integer: bool = False):
    ok_type = isinstance(value, int) and not isinstance(value, bool) if integer else isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok_type:
        fail(name, "an integer" if integer else "a number", value, TypeError)
    if (strict and not value > 0) or (not strict and not value >= 0):
        fail(name, "a value > 0" if strict else "a value >= 0", value)
    return value


def check_in_range(name: str, value, lo, hi, *, lo_open=False, hi_open=False):
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        fail(name, "a number", value, TypeError)
    lo_ok = value > lo if lo_open else value >= lo
    hi_ok = value < hi if hi_open else value <= hi
    if not (lo_ok and hi_ok):
        fail(name, f"a value in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}", value)
    return value


def check_choice(name: str, value, choices: Sequence[str]):
    if not isinstance(value, str) or value not in choices:
        fail(name, f"one of {sorted(choices)}", repr(value))
    return value


def check_shape(name: str, x: torch.Tensor, expected: Sequence[int | None]):
    """``expected`` may contain None for free dimensions."""
    ok = x.dim() == len(expected) and all(e is None or e == s for e, s in zip(expected, x.shape))
    if not ok:
        exp = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        fail(name, f"shape {exp}", x)
    return x


def check_int(name: str, value, *, lo: int | None = None, hi: int | None = None) -> int:
    """An integer (not a bool, not a string) in ``[lo, hi]``; e.g. ``seed=abc`` gives
    "argument 'seed': expected an integer, received str 'abc'"."""
    rng = (f" >= {lo}" if hi is None else f" in [{lo}, {hi}]") if lo is not None else \
        (f" <= {hi}" if hi is not None else "")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        fail(name, f"an integer{rng}", value, TypeError)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        fail(name, f"an integer{rng}", value)
    return value


def check_number(name: str, value, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
                 hi_open: bool = False) -> float:
    """A finite real number (not a bool, not a string) in the given (half-)open or closed range."""
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi:g}")
    exp = "a number" + (" " + " and ".join(parts) if parts else "")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(name, exp, value, TypeError)
    v = float(value)
    if v != v or v in (float("inf"), float("-inf")):
        fail(name, exp, value)
    if lo is not None and not (v > lo if lo_open else v >= lo):
        fail(name, exp, value)
    if hi is not None and not (v < hi if hi_open else v <= hi):
        fail(name, exp, value)
    return value


def check_bool(name: str, value) -> bool:
    """True or False (config files and ``--set`` give JSON ``true`` / ``false``)."""
    if not isinstance(value, bool):
        fail(name, "true or false", value, TypeError)
    return value

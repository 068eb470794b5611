"""Command configuration: defaults < config file (JSON or ``key = value`` lines) < ``--set key=value`` overrides.

Values are parsed as JSON when possible (numbers, booleans, lists), otherwise kept as strings. Unknown keys are
an error that lists the known ones. The resolved configuration is saved next to the outputs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from ._validate import fail


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_pairs(pairs: Iterable[str], name: str = "--set") -> dict:
    out = {}
    for p in pairs:
        if "=" not in p:
            fail(name, "key=value", p)
        k, v = p.split("=", 1)
        out[k.strip()] = parse_value(v.strip())
    return out


def load_config_file(path) -> dict:
    path = Path(path)
    if not path.is_file():
        fail("--config", "an existing config file (JSON or key = value lines)", str(path))
    text = path.read_text()
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            fail("--config", "valid JSON", f"{path} ({e})")
    lines = [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
    return parse_pairs([ln for ln in lines if ln], name="--config")


def resolve(defaults: dict, config_file=None, overrides: Iterable[str] = ()) -> dict:
    cfg = dict(defaults)
    for source, update in (("--config", load_config_file(config_file) if config_file else {}),
                           ("--set", parse_pairs(overrides))):
        unknown = sorted(set(update) - set(defaults))
        if unknown:
            fail(source, f"keys among {sorted(defaults)}", f"unknown key(s) {unknown}")
        cfg.update(update)
    return cfg

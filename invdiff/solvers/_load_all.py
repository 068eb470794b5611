"""Imports every solver module in this package so that they register themselves (one module per solver)."""
import importlib
import pkgutil

_SHARED = {"base", "primitives", "defaults", "_load_all"}

for _info in pkgutil.iter_modules(importlib.import_module(__package__).__path__):
    if _info.name not in _SHARED and not _info.name.startswith("_"):
        importlib.import_module(f"{__package__}.{_info.name}")

"""Imports every solver module so that they register themselves."""
import importlib

_MODULES = ["classical", "deepinv_baselines", "dds"]
for _m in _MODULES:
    importlib.import_module(f"{__package__}.{_m}")

"""Input/output: downloads (:mod:`~spared.io.download`), safe unpacking (:mod:`~spared.io.archive`), raw-data
readers (:mod:`~spared.io.readers`) and image patches (:mod:`~spared.io.patches`); submodules load on first use."""

from __future__ import annotations

import importlib
from types import ModuleType

_SUBMODULES = ("archive", "atomic", "download", "patches", "provenance", "readers", "scan", "sniff")


def __getattr__(name: str) -> ModuleType:
    if name in _SUBMODULES:
        return importlib.import_module(f"spared.io.{name}")
    raise AttributeError(f"module 'spared.io' has no attribute {name!r}")


__all__ = list(_SUBMODULES)

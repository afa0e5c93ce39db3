"""Input/output: downloads (:mod:`~spared.io.download`), safe unpacking (:mod:`~spared.io.archive`), raw-data
readers (:mod:`~spared.io.readers`, with :func:`read_hest` and :func:`read_st` at hand) and image patches
(:mod:`~spared.io.patches`); submodules load on first use."""

from __future__ import annotations

import importlib
from typing import Any

_SUBMODULES = ("archive", "atomic", "download", "patches", "provenance", "readers", "scan", "sniff")
_READERS = {"read_hest": "spared.io.readers.hest", "read_st": "spared.io.readers.st"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"spared.io.{name}")
    if name in _READERS:
        return getattr(importlib.import_module(_READERS[name]), name)
    raise AttributeError(f"module 'spared.io' has no attribute {name!r}")


__all__ = [*_SUBMODULES, *_READERS]

"""spared: the SpaRED database, SpaCKLE completion and a histology-to-expression benchmark.

Submodules are imported lazily so that ``import spared`` stays fast and does not load torch.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

# Spinning OpenMP waiters make torch many times slower once other processes share the cores (measured: a
# SpaCKLE step 10x slower on 2 threads of a busy 2-core machine, a small training test 6x); sleeping ones
# cost little on a quiet one. It only takes effect when torch is loaded after spared; a user's value is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

_SUBMODULES = {
    "annotation", "bench", "catalog", "config", "data_model", "datasets", "graph", "impute", "info", "io",
    "metrics", "models", "pl", "pp", "report", "synthetic",
}
_ATTRIBUTES = {"validate": "spared.data_model"}

__all__ = sorted(_SUBMODULES | set(_ATTRIBUTES) | {"__version__"})


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"spared.{name}")
    if name in _ATTRIBUTES:
        return getattr(importlib.import_module(_ATTRIBUTES[name]), name)
    raise AttributeError(f"module 'spared' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__

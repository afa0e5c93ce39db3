"""Filling missing (zero) expression values: the adaptive median filter, SpaCKLE, their evaluation.

Submodules are imported on first access so that ``import spared.impute`` loads neither numba nor torch.
"""

from __future__ import annotations

import importlib
from types import ModuleType

_SUBMODULES = ("baselines", "evaluate", "median", "noise_floor", "spackle")

__all__ = list(_SUBMODULES)


def __getattr__(name: str) -> ModuleType:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return list(__all__)

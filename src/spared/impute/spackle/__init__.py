"""SpaCKLE: a transformer that completes missing gene-expression values from a spot's same-slide neighbours.

``fit`` trains (Lightning), ``complete`` fills the missing entries of a layer, ``save``/``load`` handle
checkpoint folders. Only :class:`SpackleConfig` is imported eagerly; everything that needs torch is loaded on
first access.
"""

from __future__ import annotations

import importlib
from typing import Any

from spared.impute.spackle.config import SpackleConfig

_ATTRIBUTES = {
    "fit": "train",
    "complete": "completion",
    "save": "checkpoint",
    "load": "checkpoint",
    "CheckpointError": "checkpoint",
    "SpackleModel": "model",
    "SpackleNetwork": "model",
    "SpackleEnsemble": "model",
    "mask_probabilities": "masking",
}

__all__ = ["CheckpointError", "SpackleConfig", "SpackleEnsemble", "SpackleModel", "SpackleNetwork", "complete",
           "fit", "load", "mask_probabilities", "save"]


def __getattr__(name: str) -> Any:
    if name in _ATTRIBUTES:
        return getattr(importlib.import_module(f"{__name__}.{_ATTRIBUTES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__

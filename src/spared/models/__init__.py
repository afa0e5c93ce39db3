"""Histology → expression prediction models behind one interface (:class:`~spared.models.base.Predictor`).

Every model, spared's own included, lives in one open registry (:mod:`spared.models.registry`): add yours with
:func:`register`, an entry point in the ``spared.models`` group, or a ``"module:Class"`` reference wherever a model
name is accepted. ``build_model(name, n_genes, **config)`` builds any trained model; :data:`MODEL_INFO` describes
every registered model without importing torch (label, paper, year, input kind, what it regresses),
:data:`TRAINED_MODELS` and :data:`PROBE_MODELS` list them by kind, and :func:`spared.models.recipe.recipe` gives
how each is trained. The batch contract is documented in :mod:`spared.models.base`.
"""

from __future__ import annotations

import importlib
from typing import Any

from spared.models import registry
from spared.models.registry import (
    ModelEntry,
    build_model,
    model_class,
    register,
    unregister,
)

#: Kept for code that names the registry entries' type by its former name.
ModelInfo = ModelEntry

_LAZY = {"Predictor": "spared.models.base", "build_backbone": "spared.models.backbones",
         "PredictorModule": "spared.models.lightning"}
#: Views of the registry computed on access (so they include models registered since).
_VIEWS = {
    "MODEL_INFO": lambda: registry.entries(),
    "MODEL_NAMES": lambda: registry.names(),
    "TRAINED_MODELS": lambda: registry.names("trained"),
    "PROBE_MODELS": lambda: registry.names("probe"),
}

__all__ = ["MODEL_INFO", "MODEL_NAMES", "PROBE_MODELS", "TRAINED_MODELS", "ModelEntry", "ModelInfo", "build_model",
           "model_class", "register", "unregister", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _VIEWS:
        return _VIEWS[name]()
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'spared.models' has no attribute {name!r}")

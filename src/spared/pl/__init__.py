"""Figures (matplotlib, scanpy-style ``ax``/``show``/``save`` arguments); modules load on first use."""

from __future__ import annotations

import importlib
from typing import Any

#: Public plotting functions and the module defining each.
_FUNCTIONS = {
    "patches": "spared.pl.patch_grid",
    "spatial_gene": "spared.pl.spatial",
    "gene_label": "spared.pl.spatial",
    "counts_per_spot": "spared.pl.qc",
    "genes_kept": "spared.pl.qc",
    "missing_fraction": "spared.pl.qc",
    "missing_table": "spared.pl.qc",
    "moran_ranking": "spared.pl.qc",
    "completion_curve": "spared.pl.completion",
    "benchmark_bars": "spared.pl.benchmark",
    "benchmark_heatmap": "spared.pl.benchmark",
}

__all__ = sorted(_FUNCTIONS)


def __getattr__(name: str) -> Any:
    if name in _FUNCTIONS:
        function = getattr(importlib.import_module(_FUNCTIONS[name]), name)
        globals()[name] = function
        return function
    raise AttributeError(f"module 'spared.pl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__

"""Processing steps of the SpaRED protocol (scanpy ``sc.pp`` style) and :func:`process` that runs them all."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "filter_spots": "qc", "expression_fractions": "qc", "filter_genes": "qc", "real_data_prefix": "qc",
    "offpanel_counts": "qc",
    "tpm": "normalize", "tpm_matrix": "normalize", "log1p": "normalize",
    "moran_genes": "moran", "morans_i": "moran", "select_top_moran": "moran",
    "combat": "combat", "combat_fit": "combat", "combat_apply": "combat",
    "compute_mask": "layers", "deltas": "layers", "noisy_layers": "layers",
    "process": "protocol", "step_table": "protocol", "ensembl_ids": "genes",
}
_FOREIGN = {"adaptive_median_filter": "spared.impute.median"}

__all__ = sorted([*_EXPORTS, *_FOREIGN])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"spared.pp.{_EXPORTS[name]}"), name)
    if name in _FOREIGN:
        return getattr(importlib.import_module(_FOREIGN[name]), name)
    raise AttributeError(f"module 'spared.pp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__

"""The SpaRED benchmark: runs (model × dataset × target × seed), executors (local, Ray) and the results table.

Names are imported on first access, so ``import spared.bench`` loads neither torch nor Ray.

Examples
--------
>>> from spared.bench import LocalExecutor, TrainingConfig, make_specs, run_benchmark, aggregate  # doctest: +SKIP
>>> specs = make_specs(["stnet", "sepal"], ["simulated"], seeds=[0, 1], training=TrainingConfig(max_steps=200))
>>> run_benchmark(specs, "results/", LocalExecutor())                                            # doctest: +SKIP
>>> aggregate("results/")                                                                         # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

_ATTRIBUTES = {
    "RunSpec": "runs", "TrainingConfig": "runs", "make_specs": "runs", "parse_dataset": "runs",
    "TARGET_LAYERS": "targets", "TARGETS": "targets", "Target": "targets", "get_target": "targets",
    "score": "scoring", "PROTOCOL": "scoring", "load_collection": "train",
    "loaders": "dataloaders", "data_module": "dataloaders", "Loaders": "dataloaders",
    "SpotTable": "data", "SpotDataset": "data", "SpotDataModule": "data", "SlideBatchSampler": "data",
    "normalise_images": "data", "patch_store": "data",
    "run_one": "train", "load_table": "train",
    "LocalExecutor": "executors", "RayExecutor": "executors", "run_benchmark": "executors", "execute": "executors",
    "ResultsTable": "results", "aggregate": "results", "load_results": "results",
}

__all__ = sorted(_ATTRIBUTES)


def __getattr__(name: str) -> Any:
    if name in _ATTRIBUTES:
        return getattr(importlib.import_module(f"{__name__}.{_ATTRIBUTES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__

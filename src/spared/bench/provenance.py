"""Where a benchmark dataset's data came from: its catalogue key and the processing preset that made its layers.

A results row says which preset produced its data (``preset`` column), so that a reader sees at once which rows are
comparable with the authors' published figures (:mod:`spared.bench.published`): ``"original"`` rows were processed
as the original SpaRED library processes, ``"spared"`` rows with this package's layers.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

UNKNOWN = "unknown"


def data_provenance(dataset: str) -> dict[str, str]:
    """``{"catalogue_key": ..., "preset": ...}`` of a benchmark dataset string.

    A catalogue dataset (``"name"`` or ``"name:key=value,..."``): its key and the preset of its processing settings.
    A processed ``.h5ad``: what its ``uns["spared"]`` records (``dataset``, ``preset``, else the preset its
    ``config`` matches). Simulated data: ``""`` and the preset of its settings. ``"unknown"`` where it cannot be told
    (a file that is gone or was not processed by spared).
    """
    from spared.bench.runs import SIMULATED, parse_dataset

    try:
        name, params = parse_dataset(dataset)
    except ValueError:
        return {"catalogue_key": UNKNOWN, "preset": UNKNOWN}
    if name.endswith(".h5ad"):
        path = Path(name).expanduser().resolve()
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            return {"catalogue_key": UNKNOWN, "preset": UNKNOWN}
        return _file_provenance(str(path), stamp)
    from spared.config import ProcessingConfig

    fields = {k: v for k, v in params.items() if k == "preset" or k in ProcessingConfig.__dataclass_fields__}
    try:
        preset = ProcessingConfig().replace(**fields).preset_name
    except (KeyError, ValueError, TypeError):
        preset = UNKNOWN
    return {"catalogue_key": "" if name == SIMULATED else name, "preset": preset}


def data_preset(dataset: str) -> str:
    """The processing preset of a benchmark dataset string (see :func:`data_provenance`)."""
    return data_provenance(dataset)["preset"]


@cache
def _file_provenance(path: str, stamp: int) -> dict[str, str]:
    """What a processed file's ``uns["spared"]`` says (read without loading the matrices; ``stamp``, the file's
    modification time, keys the cache)."""
    import h5py
    from anndata.io import read_elem

    from spared.config import preset_of

    try:
        with h5py.File(path, "r") as handle:
            info = handle.get("uns/spared")
            if info is None:
                return {"catalogue_key": UNKNOWN, "preset": UNKNOWN}
            record: dict[str, Any] = {key: read_elem(info[key]) for key in ("dataset", "preset", "config")
                                      if key in info}
    except OSError:
        return {"catalogue_key": UNKNOWN, "preset": UNKNOWN}
    preset = record.get("preset")
    if preset is None:
        preset = preset_of(json.loads(record["config"])) if "config" in record else UNKNOWN
    return {"catalogue_key": str(record.get("dataset", "")), "preset": str(preset)}

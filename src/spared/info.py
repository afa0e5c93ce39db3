"""What a raw or processed collection holds, as JSON-ready data (``spared info FILE``).

:func:`describe` gathers, from the AnnData alone: spots, genes, slides and splits, layers and what they mean,
missing fractions, the processing parameters and preset, how SpaCKLE completed it, its patch store (where, and
whether it is there) and the warnings recorded while it was read and processed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from spared.config import preset_of
from spared.data_model import LAYERS


def layer_meaning(name: str) -> str:
    """What a layer holds, from the data model (``""`` for a layer spared does not write)."""
    if name in LAYERS:
        return LAYERS[name]
    if name.startswith("noisy_") and name[6:] in LAYERS:
        return f"{name[6:]} with missing entries set to 0 (log layers) or to -mean (delta layers)"
    return ""


def describe(adata: Any, path: str | Path | None = None) -> dict[str, Any]:
    """A summary of ``adata`` (read from ``path``, when given) for people and programs.

    Returns
    -------
    dict
        ``file``, ``kind`` (``"processed"`` or ``"raw"``), ``dataset``, ``spots``, ``genes``, ``slides`` (per
        slide: spots, patient, split, the image patches would be cut from), ``splits``, ``layers`` (name, dtype,
        meaning), ``missing`` (fractions of zero/missing values), ``processing`` (preset, parameters, versions,
        steps), ``completion``, ``patches`` (recorded, path, present, size, scale) and ``warnings`` and
        ``input_warnings`` (recorded while reading and processing).
    """
    info = dict(adata.uns.get("spared", {})) if hasattr(adata.uns.get("spared", {}), "get") else {}
    processed = "steps" in info or "mask" in adata.layers
    return {
        "file": None if path is None else str(path),
        "kind": "processed" if processed else "raw",
        "dataset": str(info.get("dataset", "")) or None,
        "spots": int(adata.n_obs),
        "genes": int(adata.n_vars),
        "slides": _slides(adata),
        "splits": _splits(adata),
        "layers": [{"name": str(name), "dtype": str(adata.layers[name].dtype), "meaning": layer_meaning(str(name))}
                   for name in adata.layers],
        "missing": _missing(adata, info),
        "processing": _processing(info) if processed else None,
        "completion": _plain(info.get("completion")) or None,
        "patches": _patches(adata, path),
        "warnings": [str(m) for m in info.get("warnings", [])],
        "input_warnings": [str(m) for m in info.get("input_warnings", [])],
    }


def _slides(adata: Any) -> list[dict[str, Any]]:
    from spared.io.patches import image_source

    if "slide_id" not in adata.obs:
        return []
    spatial = dict(adata.uns.get("spatial", {}))
    columns = [c for c in ("slide_id", "patient", "split") if c in adata.obs]
    table = adata.obs[columns].astype(str)
    out = []
    for slide, rows in table.groupby("slide_id", sort=False, observed=True):
        first = rows.iloc[0]
        out.append({"slide": str(slide), "spots": len(rows), "patient": first.get("patient"),
                    "split": first.get("split"), "image": image_source(dict(spatial.get(str(slide), {})))})
    return out


def _splits(adata: Any) -> dict[str, dict[str, int]]:
    if "split" not in adata.obs:
        return {}
    split = adata.obs["split"].astype(str)
    slides = adata.obs["slide_id"].astype(str) if "slide_id" in adata.obs else split
    return {str(name): {"slides": int(slides[split == name].nunique()), "spots": int((split == name).sum())}
            for name in ("train", "val", "test") if (split == name).any()}


def _zero_fraction(x: Any) -> float | None:
    if x is None or 0 in x.shape:
        return None
    from spared.pp.protocol import zero_fraction
    return float(zero_fraction(x))


def _missing(adata: Any, info: dict[str, Any]) -> dict[str, Any]:
    """Missing fractions: raw zeros of every gene read, and of the kept genes before/after the median filter."""
    out: dict[str, Any] = {"X_zero_fraction": _zero_fraction(adata.X)}
    if "raw_zero_fraction" in info:
        out["raw_all_genes"] = float(info["raw_zero_fraction"])
    if "mask" in adata.layers:
        mask = np.asarray(adata.layers["mask"].toarray() if sp.issparse(adata.layers["mask"]) else adata.layers["mask"])
        out["kept_genes"] = float(1.0 - mask.mean())
        if "split" in adata.obs:
            split = adata.obs["split"].astype(str).to_numpy()
            out["kept_genes_per_split"] = {s: float(1.0 - mask[split == s].mean()) for s in ("train", "val", "test")
                                           if (split == s).any()}
    if "missing_fraction_after_median" in info:
        out["after_median_filter"] = float(info["missing_fraction_after_median"])
    return out


def _processing(info: dict[str, Any]) -> dict[str, Any]:
    config = info.get("config")
    params = json.loads(config) if isinstance(config, str) else _plain(config) or {}
    steps = info.get("steps", {})
    names = [str(s) for s in steps.get("step", [])] if hasattr(steps, "get") else []
    preset = info.get("preset") or (preset_of(params) if isinstance(params, dict) else None)
    return {"preset": None if preset is None else str(preset),
            "parameters": params, "versions": _plain(info.get("versions")) or {},
            "geometry": info.get("geometry"), "steps": names}


def _patches(adata: Any, path: str | Path | None) -> dict[str, Any]:
    from spared.io.patch_paths import recorded, store_path

    entry = recorded(adata)
    if not entry.get("path"):
        return {"recorded": False}
    try:
        where, problem = store_path(adata, path, must_exist=False), None
    except FileNotFoundError as exc:  # a relative record whose .h5ad is unknown
        where, problem = None, str(exc)
    present = where is not None and where.is_file()
    out = {"recorded": True, "path": None if where is None else str(where), "present": present,
           "size": entry.get("size"), "scale": entry.get("scale"),
           "sources": {str(k): str(dict(v).get("image", "")) for k, v in dict(entry.get("sources", {})).items()}}
    if problem:
        out["problem"] = problem
    return out


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars and arrays turned into JSON types (nested dicts and lists too)."""
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in dict(value).items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value

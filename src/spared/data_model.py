"""The AnnData conventions of spared, stated once, and :func:`validate` that enforces them.

See ``docs/data_model.md`` for the prose version of the tables below.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

#: Layers written by :func:`spared.pp.process` and what each holds.
LAYERS: dict[str, str] = {
    "counts": "raw UMI counts of the kept spots and genes",
    "tpm": "transcripts per million with GENCODE merged-exon gene lengths (rows sum to 1e6)",
    "log1p": "log2(tpm + 1)",
    "d_log1p": "log1p after the adaptive median filter (zeros replaced from spatial neighbours)",
    "c_log1p": "log1p after ComBat batch correction",
    "c_d_log1p": "d_log1p after ComBat batch correction (the raw/median benchmark target)",
    "c_t_log1p": "c_d_log1p whose missing entries were completed by SpaCKLE (the completed target)",
    "deltas": "log1p minus its per-gene train-split mean (var['log1p_avg_exp'])",
    "d_deltas": "d_log1p minus var['d_log1p_avg_exp']",
    "c_deltas": "c_log1p minus var['c_log1p_avg_exp']",
    "c_d_deltas": "c_d_log1p minus var['c_d_log1p_avg_exp']",
    "c_t_deltas": "c_t_log1p minus var['c_t_log1p_avg_exp']",
    "mask": "True where tpm != 0 (a real measurement); False = missing, imputed",
    "noisy_<L>": "layer L with missing entries set to 0 (log layers) or to -mean (delta layers)",
    "true_counts": "simulated data only: counts before dropout (known truth)",
    "true_rate": "simulated data only: expected counts λ (the truth before sampling and dropout)",
    "true_log1p": "simulated data only: log2(TPM + 1) of true_rate",
    "c_true_log1p": "simulated data only: true_log1p with the ComBat transform fitted for c_d_log1p",
}

#: Per-spot columns every collection carries.
REQUIRED_OBS: dict[str, str] = {
    "slide_id": "slide (library) the spot belongs to",
    "patient": "patient / donor of the slide",
    "split": "'train', 'val' or 'test', assigned per slide",
    "array_row": "row on the spot array",
    "array_col": "column on the spot array",
}

SPLITS = ("train", "val", "test")


def dense(x) -> np.ndarray:
    """A layer as a dense ndarray (sparse layers are densified; dense ones are returned as they are)."""
    return x.toarray() if sp.issparse(x) else np.asarray(x)


class ValidationError(ValueError):
    """Raised when an AnnData breaks the spared conventions; the message lists every problem."""


def validate(adata, stage: str = "raw", layers: list[str] | None = None) -> None:
    """Check that ``adata`` follows the spared data model; raise :class:`ValidationError` otherwise.

    Parameters
    ----------
    adata
        The collection.
    stage
        ``"raw"``: counts in ``X`` plus obs/obsm conventions; ``"processed"``: additionally the core
        processed layers (``counts``, ``tpm``, ``log1p``, ``d_log1p``, ``c_d_log1p``, ``mask``).
    layers
        Extra layers that must exist.
    """
    if stage not in ("raw", "processed"):
        raise ValueError(f"stage must be 'raw' or 'processed', got {stage!r}")
    problems: list[str] = []
    if adata.n_obs == 0:
        problems.append("the collection has no spots (n_obs = 0); check the reader's input or the spot selection")
    if adata.n_vars == 0:
        problems.append("the collection has no genes (n_vars = 0); check the reader's input or the gene selection")
    problems += _check_obs(adata)
    problems += _check_names(adata)
    problems += _check_spatial(adata)
    problems += _check_counts(adata.X, "X")
    needed = list(layers or [])
    if stage == "processed":
        needed = ["counts", "tpm", "log1p", "d_log1p", "c_d_log1p", "mask", *needed]
    for name in needed:
        if name not in adata.layers:
            problems.append(f"layer {name!r} is missing ({LAYERS.get(name, 'required by the caller')}); "
                            f"run spared.pp.process first")
    for name in adata.layers:
        if name != "mask":
            problems += _check_finite(adata.layers[name], f"layer {name!r}")
    if "mask" in adata.layers and adata.layers["mask"].dtype != bool:
        problems.append(f"layer 'mask' must be boolean, found dtype {adata.layers['mask'].dtype}")
    if problems:
        raise ValidationError("AnnData does not follow the spared data model:\n  - " + "\n  - ".join(problems))


def count_problem(x, name: str = "X") -> str | None:
    """Why ``x`` does not look like raw integer counts (fractional values, log-like range), or ``None``."""
    values = x.data if sp.issparse(x) else np.asarray(x).ravel()
    if values.dtype.kind in "biu" or values.size == 0:
        return None
    fractional = values[np.abs(values - np.round(values)) > 1e-6]
    if fractional.size == 0:
        return None
    top = float(np.max(values))
    found = (f"{name} does not hold integer counts: {fractional.size:,} of {values.size:,} stored values are "
             f"fractional (e.g. {', '.join(f'{v:.3g}' for v in fractional[:3])}; maximum {top:.3g})")
    if top < 30:
        found += ", and all values lie below 30 as log-transformed data do"
    return found


def check_splits(obs, split_key: str = "split", slide_key: str = "slide_id", when: str = "") -> None:
    """Raise ``ValueError`` unless ``obs`` has spots in the train split.

    The protocol's deltas are taken from the train split's gene means. Val/test slides are not needed: SpaCKLE
    selects its weights on them when there are some, and on held-out blocks of the spots otherwise (one slide,
    one sample). ``when`` says at which point the problem was found (e.g. after the spot filter).
    """
    if split_key not in obs:
        raise ValueError(f"obs has no split column {split_key!r} (columns: {list(obs.columns)}); put each slide in "
                         f"'train', 'val' or 'test' (a single sample: 'train')")
    splits = obs[split_key].astype(str)
    if (splits == "train").any():
        return
    slides = obs[slide_key].astype(str).groupby(splits.to_numpy(), observed=True).nunique().to_dict() \
        if slide_key in obs else splits.value_counts().to_dict()
    shown = ", ".join(f"{k}: {v} slide(s)" for k, v in slides.items()) or "no spots"
    raise ValueError(f"processing needs spots in the train split{' ' + when if when else ''}; found {shown}. The "
                     f"deltas are taken from the train split's gene means: assign at least one slide to 'train' in "
                     f"obs[{split_key!r}] (a single sample: all of it)")


def check_not_processed(adata) -> None:
    """Raise :class:`ValidationError` when ``adata`` was already processed by :func:`spared.pp.process`."""
    info = adata.uns.get("spared", {}) if hasattr(adata.uns, "get") else {}
    derived = [name for name in ("tpm", "log1p", "d_log1p", "c_d_log1p", "mask") if name in adata.layers]
    if "steps" in info or derived:
        what = "uns['spared']['steps'] records its processing" if "steps" in info else f"it has layers {derived}"
        raise ValidationError(f"this collection is already processed ({what}); spared.pp.process takes a raw "
                              f"collection (raw counts in X). To process again with other parameters, start from "
                              f"the raw file (e.g. `spared process RAW.h5ad OUT.h5ad --set key=value`)")


def require(adata, layer: str | None = None, obs: str | None = None, hint: str = "") -> None:
    """Raise a ``KeyError`` naming what exists when ``adata`` lacks ``layers[layer]`` or ``obs[obs]``."""
    if layer is not None and layer not in adata.layers:
        raise KeyError(f"layer {layer!r} not found; available layers: {sorted(adata.layers)}"
                       + (f"; {hint}" if hint else ""))
    if obs is not None and obs not in adata.obs:
        raise KeyError(f"obs column {obs!r} not found; available columns: {list(adata.obs.columns)}")


def _check_obs(adata) -> list[str]:
    out = [f"obs[{c!r}] is missing ({d})" for c, d in REQUIRED_OBS.items() if c not in adata.obs]
    if "split" in adata.obs:
        bad = sorted(set(adata.obs["split"].astype(str)) - set(SPLITS))
        if bad:
            out.append(f"obs['split'] has values {bad}; expected only {list(SPLITS)}")
        if "slide_id" in adata.obs:
            per_slide = adata.obs.groupby("slide_id", observed=True)["split"].nunique()
            mixed = per_slide[per_slide > 1].index.tolist()
            if mixed:
                out.append(f"slides {mixed} have spots in more than one split; splits are assigned per slide")
    if "slide_id" in adata.obs:
        sizes = adata.obs["slide_id"].value_counts()
        tiny = sizes[sizes < 2].index.tolist()
        if tiny:
            out.append(f"slides {tiny} have a single spot; a spatial graph needs at least 2 spots per slide")
    return out


def _check_names(adata) -> list[str]:
    out = []
    for axis, names in (("spot (obs)", adata.obs_names), ("gene (var)", adata.var_names)):
        dup = pd.Index(names)[pd.Index(names).duplicated()].unique().tolist()
        if dup:
            out.append(f"duplicate {axis} names {dup[:5]}{' ...' if len(dup) > 5 else ''}; make them unique "
                       f"(e.g. prefix barcodes with the slide id)")
    return out


def _check_spatial(adata) -> list[str]:
    if "spatial" not in adata.obsm:
        return ["obsm['spatial'] is missing (full-resolution pixel coordinates x, y)"]
    coords = np.asarray(adata.obsm["spatial"])
    if coords.ndim != 2 or coords.shape[1] != 2:
        return [f"obsm['spatial'] must have shape (n_spots, 2), found {coords.shape}"]
    if not np.isfinite(coords).all():
        return ["obsm['spatial'] contains NaN or inf"]
    return []


def _check_counts(x, name: str) -> list[str]:
    if x is None:
        return [f"{name} is empty (None); put the raw counts (spots × genes) in {name}"]
    values = x.data if sp.issparse(x) else np.asarray(x)
    if values.dtype.kind not in "biuf":
        return [f"{name} has dtype {values.dtype}; expected numeric raw counts"]
    if not np.isfinite(values).all():
        return [f"{name} contains NaN or inf; raw counts must be finite"]
    if values.size and values.min() < 0:
        return [f"{name} contains negative values; expected raw counts (>= 0)"]
    return []


def _check_finite(x, name: str) -> list[str]:
    values = x.data if sp.issparse(x) else np.asarray(x)
    if values.dtype.kind not in "fc":
        return [] if values.dtype.kind in "biu" else [f"{name} is not numeric (dtype {values.dtype})"]
    bad = values.size - int(np.count_nonzero(np.isfinite(values)))
    return [f"{name} contains NaN or inf ({bad} of {values.size} entries)"] if bad else []


def require_finite(values: np.ndarray, what: str, real: np.ndarray | None = None) -> None:
    """Raise ``ValueError`` when ``values`` (a completed or computed layer) holds NaN or inf.

    ``real`` marks the measured entries: the message then says how many of the filled (``~real``) entries are
    non-finite, i.e. whether the method or its input is to blame.
    """
    finite = np.isfinite(values)
    if finite.all():
        return
    bad = ~finite
    if real is None:
        raise ValueError(f"{what} holds {int(bad.sum())} non-finite (NaN or inf) value(s); nothing was written")
    filled = int(bad[~real].sum())
    if filled:
        raise ValueError(f"{what}: the method predicted non-finite (NaN or inf) values for {filled} of "
                         f"{int((~real).sum())} missing entries (a corrupt checkpoint or diverged training); "
                         f"nothing was written. Retrain, or use another checkpoint or method")
    raise ValueError(f"{what}: {int(bad.sum())} measured entries of the input layer are NaN or inf; fix the "
                     f"input layer first (spared.validate(adata, stage='processed') lists the problems)")

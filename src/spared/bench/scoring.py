"""The benchmark's scoring protocol, in one place: which spots, which entries, which layer, which metrics.

Every run, and every prediction scored with :func:`score` (predictions made elsewhere), is scored the same way:

- **spots**: the evaluation split, ``test`` (``val`` when the collection has no test spots);
- **entries**: the measured ones (``layers["mask"]``), whatever the target trained on;
- **values**: the target's absolute log layer (on measured entries ``c_t_log1p`` equals ``c_d_log1p``);
- **metrics**: :func:`spared.metrics.compute`, plus the train-split gene-mean baseline's MSE; on simulated data
  also every metric over every entry of the split against the truth (columns ``"<metric> vs truth"``).

A results row carries what makes it comparable: ``protocol`` (:data:`PROTOCOL`, raised whenever this changes),
``scored_entries``, ``layer``, ``eval_split``, ``target`` and the dataset's content hash ``data_version``.
:func:`check_row` is the check :meth:`~spared.bench.results.ResultsTable.append` applies to every new row.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

#: Revision of the scoring protocol recorded in every row (rows of different revisions are not comparable).
PROTOCOL = "1"
#: Entries scored: the measured ones.
SCORED_ENTRIES = "real"
#: Metrics every successful row carries (those of :func:`spared.metrics.compute`).
METRICS = ("MSE", "MAE", "PCC-Gene", "PCC-Patch", "R2-Gene", "R2-Patch", "Global")
#: Suffix of the metrics against the simulated truth.
TRUTH_SUFFIX = " vs truth"
#: Statuses of a results row.
STATUSES = ("done", "failed")


def eval_split_of(split: np.ndarray) -> str:
    """The split reported for a collection's ``obs["split"]`` values: ``test``, or ``val`` without test spots."""
    return "test" if (np.asarray(split) == "test").any() else "val"


def score_arrays(target: np.ndarray, pred: np.ndarray, mask: np.ndarray, train_mean: np.ndarray,
                 truth: np.ndarray | None = None) -> dict[str, float]:
    """The protocol's figures for the evaluation spots: every metric on the measured entries (``mask``), the
    train-mean baseline's MSE, the counts scored and, given ``truth``, every metric over all entries against it.
    """
    from spared.metrics import compute

    metrics = compute(target, pred, mask)
    out = {m: float(metrics[m]) for m in METRICS}
    out["n_genes_scored"] = float(metrics["n_genes_scored"])
    out["n_spots_scored"] = float(metrics["n_spots_scored"])
    out["baseline_MSE"] = float(compute(target, np.broadcast_to(train_mean, target.shape), mask)["MSE"])
    if truth is not None:
        versus = compute(truth, pred)
        out.update({f"{m}{TRUTH_SUFFIX}": float(versus[m]) for m in METRICS})
    return out


def protocol_fields(target: str, layer: str, eval_split: str) -> dict[str, str]:
    """The fields that make a row comparable with others (besides the dataset and its ``data_version``)."""
    return {"target": target, "layer": layer, "eval_split": eval_split, "scored_entries": SCORED_ENTRIES,
            "protocol": PROTOCOL}


def check_row(row: Mapping[str, Any]) -> list[str]:
    """Why ``row`` cannot enter a results table (empty when it can).

    Every row needs ``run_id``, ``model``, ``dataset``, ``target`` (a known target) and ``status``; a failed row
    also its ``error``. A ``done`` row also needs every metric of :data:`METRICS` as a number, the
    :func:`protocol_fields` of the current protocol (its ``layer`` the target's, ``eval_split`` ``test`` or
    ``val``, ``scored_entries`` ``"real"``), a ``data_version`` and at least one scored spot.
    """
    from spared.bench.targets import TARGETS

    problems = [f"it lacks {key!r}" for key in ("run_id", "model", "dataset", "target", "status") if key not in row]
    if problems:
        return problems
    status, target = row["status"], row["target"]
    if status not in STATUSES:
        return [f"status must be one of {list(STATUSES)}, got {status!r}"]
    if target not in TARGETS:
        problems.append(f"target must be one of {list(TARGETS)}, got {target!r}")
    if status == "failed":
        return problems + ([] if row.get("error") else ["a failed row needs its 'error'"])
    for metric in METRICS:
        value = row.get(metric)
        if isinstance(value, bool) or not isinstance(value, int | float | np.number):
            problems.append(f"metric {metric!r} must be a number, got {value!r}")
    expected = {"layer": TARGETS[target].layer if target in TARGETS else None, "scored_entries": SCORED_ENTRIES,
                "protocol": PROTOCOL}
    for key, value in expected.items():
        if value is not None and row.get(key) != value:
            problems.append(f"{key!r} must be {value!r} (the protocol of target {target!r}), got {row.get(key)!r}")
    if row.get("eval_split") not in ("test", "val"):
        problems.append(f"'eval_split' must be 'test' or 'val' (the held-out split scored), got "
                        f"{row.get('eval_split')!r}")
    if not str(row.get("data_version") or ""):
        problems.append("'data_version' (the dataset's content hash) is missing")
    spots = row.get("n_spots_scored")
    if not isinstance(spots, int | float | np.number) or not spots > 0:
        problems.append(f"'n_spots_scored' must be > 0, got {spots!r}")
    return problems


# ---------------------------------------------------------------------------------- predictions from elsewhere


def read_predictions(path: str | Path) -> Any:
    """Predictions from a file: a table with spots (obs names) as rows and genes as columns.

    ``.csv``/``.tsv`` (first column: the spot names), ``.parquet`` (index, or a first column, of spot names) or
    ``.h5ad`` (``X``, obs names and var names).
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv", ".txt"):
        frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", index_col=0)
    elif suffix == ".parquet":
        frame = pd.read_parquet(path)
        if isinstance(frame.index, pd.RangeIndex) and frame.shape[1] and frame.iloc[:, 0].dtype == object:
            frame = frame.set_index(frame.columns[0])
    elif suffix == ".h5ad":
        import anndata as ad

        from spared.data_model import dense

        adata = ad.read_h5ad(path)
        frame = pd.DataFrame(dense(adata.X), index=adata.obs_names, columns=adata.var_names)
    else:
        raise ValueError(f"predictions file {path}: expected .csv, .tsv, .parquet or .h5ad, got {suffix or 'none'}")
    frame.index = frame.index.astype(str)
    frame.columns = frame.columns.astype(str)
    return frame


def align_predictions(predictions: Any, obs_names: np.ndarray, scored: np.ndarray, var_names: np.ndarray,
                      gene_symbols: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Predictions of the spots ``scored`` in that order, ``(len(scored), len(var_names))`` float64, and how many
    other spots of the collection they also held (ignored); or a ``ValueError``.

    ``predictions`` is a DataFrame (spots as rows by obs name, genes as columns by var name or unique gene
    symbol) or an AnnData. Spots that are not in ``obs_names``, missing scored spots, missing or unknown genes,
    duplicates and non-finite values are refused, each error naming examples and what to do.
    """
    import pandas as pd

    if hasattr(predictions, "obs_names") and hasattr(predictions, "X"):
        from spared.data_model import dense

        predictions = pd.DataFrame(dense(predictions.X), index=predictions.obs_names, columns=predictions.var_names)
    if not isinstance(predictions, pd.DataFrame):
        raise TypeError(f"predictions must be a pandas DataFrame (spots × genes, indexed by obs names) or an AnnData, "
                        f"got {type(predictions).__name__}; a bare array has no spot names to align by")
    frame = predictions.copy()
    frame.index = frame.index.astype(str)
    frame.columns = frame.columns.astype(str)
    for axis, labels in (("spot", frame.index), ("gene", frame.columns)):
        dup = labels[labels.duplicated()].unique()
        if len(dup):
            raise ValueError(f"predictions name {len(dup)} {axis}(s) twice, e.g. {_examples(dup)}")
    genes = _gene_columns(frame.columns, var_names, gene_symbols)
    frame = frame.rename(columns=genes)
    wanted = pd.Index(np.asarray(scored, dtype=str))
    unknown = frame.index.difference(pd.Index(np.asarray(obs_names, dtype=str)))
    if len(unknown):
        raise ValueError(f"predictions hold {len(unknown)} spot(s) that are not in the dataset, e.g. "
                         f"{_examples(unknown)}; rows must be indexed by the dataset's obs names")
    missing = wanted.difference(frame.index)
    if len(missing):
        raise ValueError(f"predictions lack {len(missing)} of the {len(wanted)} spots of the evaluation split, e.g. "
                         f"{_examples(missing)}; predict every spot of that split")
    values = frame.loc[wanted, list(np.asarray(var_names, dtype=str))].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        rows = wanted[bad.any(axis=1)]
        raise ValueError(f"predictions hold {int(bad.sum())} NaN/inf value(s) in {len(rows)} spot(s), e.g. "
                         f"{_examples(rows)}")
    return values, int(len(frame.index) - len(wanted))


def _gene_columns(columns: Any, var_names: np.ndarray, symbols: np.ndarray | None) -> dict[str, str]:
    """Map prediction columns to var names (columns may be var names or unique gene symbols)."""
    var = list(np.asarray(var_names, dtype=str))
    cols = list(columns)
    if set(cols) == set(var):
        return {c: c for c in cols}
    if symbols is not None:
        sym = list(np.asarray(symbols, dtype=str))
        if len(set(sym)) == len(sym) and set(cols) == set(sym):
            return dict(zip(sym, var, strict=True))
    known = set(var) | (set(np.asarray(symbols, dtype=str)) if symbols is not None else set())
    unknown = [c for c in cols if c not in known]
    lacking = [v for v in var if v not in set(cols)]
    detail = (f"{len(unknown)} unknown gene column(s), e.g. {_examples(unknown)}" if unknown
              else f"{len(lacking)} gene(s) missing, e.g. {_examples(lacking)}")
    raise ValueError(f"prediction columns must be the dataset's {len(var)} genes (var names, or unique gene "
                     f"symbols): {detail}")


def _examples(items: Any, n: int = 3) -> str:
    items = [str(i) for i in list(items)[:n]]
    return ", ".join(items) + (", ..." if len(items) == n else "")


def predictions_hash(values: np.ndarray) -> str:
    """A short content hash of aligned predictions (part of a scored row's id)."""
    return hashlib.sha256(np.ascontiguousarray(values, dtype=np.float64).tobytes()).hexdigest()[:10]


def json_ready(row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` with NaN as ``None`` and numpy scalars as Python values (for ``--json`` output)."""
    out = {}
    for key, value in row.items():
        if isinstance(value, np.generic):
            value = value.item()
        out[key] = None if isinstance(value, float) and math.isnan(value) else value
    return json.loads(json.dumps(out, default=str))


# -------------------------------------------------------------------------------------------------- score()


def score(predictions: Any, dataset: Any, target: str = "raw", *, model: str = "external", seed: int = 0,
          out: str | Path | None = None, data_dir: str | Path | None = None, name: str | None = None
          ) -> dict[str, Any]:
    """Score predictions made anywhere under the benchmark's protocol, and optionally record them.

    Parameters
    ----------
    predictions
        A DataFrame with spots as rows (the dataset's obs names) and genes as columns (var names, or unique gene
        symbols), an AnnData, or a file (``.csv``/``.tsv``/``.parquet``/``.h5ad``, :func:`read_predictions`).
        Every spot of the evaluation split must be there, in any order; spots of other splits are ignored;
        unknown spots or genes, missing ones and non-finite values are an error.
    dataset
        A catalogue key, ``"simulated[:key=value,...]"``, a processed ``.h5ad`` path, or a processed AnnData.
    target
        The target the model was trained on (``raw``, ``median`` or ``completed``): recorded, and its layer is the
        reference (on measured entries every target's layer holds the same values).
    model, seed
        How the row names the model (marked custom) and the seed of the run that made the predictions.
    out
        A results folder: the row is appended to its table (``spared results``, the report).
    data_dir
        Dataset cache for dataset strings (default: ``out/_data``, else ``$SPARED_DATA``'s cache).
    name
        The dataset's name in the row when ``dataset`` is an AnnData (default its ``uns["spared"]["dataset"]``).

    Returns
    -------
    dict
        The results row: the metrics on the measured entries of the evaluation split (and against the truth on
        simulated data), the baseline MSE, the protocol fields, the dataset's content hash and a ``run_id`` that
        depends on the predictions' content.
    """
    import datetime as dt

    from spared.bench.runs import canonical_dataset, data_fingerprint
    from spared.bench.targets import TARGETS, TRUTH_LAYER
    from spared.data_model import dense

    if target not in TARGETS:
        raise ValueError(f"target must be one of {list(TARGETS)}, got {target!r}")
    if isinstance(predictions, str | Path):
        predictions = read_predictions(predictions)
    layer = TARGETS[target].layer
    if isinstance(dataset, str):
        from spared.bench.train import DATA_CACHE, load_collection

        cache = Path(data_dir) if data_dir else (Path(out) / DATA_CACHE if out else default_cache())
        adata, _ = load_collection(dataset, cache)
        label, version = canonical_dataset(dataset), data_fingerprint(dataset)
        dense_layers = {}
    else:
        adata = dataset
        label = name or str(adata.uns.get("spared", {}).get("dataset", "anndata"))
        # densified once: hashed here, scored below
        dense_layers = {key: dense(adata.layers[key]) for key in (layer, "mask") if key in adata.layers}
        version = anndata_fingerprint(adata, layer, dense_layers)
    for key in (layer, "mask"):
        if key not in adata.layers:
            raise KeyError(f"dataset {label!r} has no layer {key!r} to score the {target!r} target against; its "
                           f"layers: {sorted(adata.layers)}")
    if "split" not in adata.obs:
        raise KeyError(f"dataset {label!r} has no obs['split']: score a processed collection")
    split = adata.obs["split"].astype(str).to_numpy()
    evaluation = eval_split_of(split)
    index = np.flatnonzero(split == evaluation)
    symbols = adata.var["gene_symbol"].astype(str).to_numpy() if "gene_symbol" in adata.var else None
    pred, ignored = align_predictions(predictions, adata.obs_names.to_numpy(dtype=str),
                                      adata.obs_names[index].to_numpy(dtype=str), adata.var_names.to_numpy(dtype=str),
                                      symbols)
    for key in (layer, "mask"):
        if key not in dense_layers:
            dense_layers[key] = dense(adata.layers[key])
    values = np.asarray(dense_layers.pop(layer), dtype=np.float64)
    truth = np.asarray(dense(adata.layers[TRUTH_LAYER]), dtype=np.float64)[index] \
        if TRUTH_LAYER in adata.layers else None
    mask = np.asarray(dense_layers.pop("mask"), dtype=bool)[index]
    scores = score_arrays(values[index], pred, mask, values[split == "train"].mean(axis=0), truth)
    digest = predictions_hash(pred)
    slug = "".join(c if c.isalnum() or c in "_.-" else "_" for c in f"{model}-{label}")[:60]
    row = {"run_id": f"{slug}-{target}-s{seed}-scored-{digest}", "model": model, "dataset": label,
           "target": target, "seed": int(seed), "status": "done", "error": "", "data_version": version, **scores,
           **protocol_fields(target, layer, evaluation), "origin": "scored", "custom": True,
           "imputed_weight": float("nan"), "n_genes": int(adata.n_vars), "n_eval": int(index.size),
           "n_ignored_spots": ignored, "predictions_sha256": digest,
           "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    if out is not None:
        from spared.bench.results import ResultsTable

        ResultsTable(out).append(row)
    return row


def anndata_fingerprint(adata: Any, layer: str, dense_layers: Mapping[str, np.ndarray] | None = None) -> str:
    """A content hash of what scoring reads from an in-memory AnnData: spot and gene names, split, the layer and
    the mask (the ``data_version`` of rows scored on it). ``dense_layers``: those layers already densified."""
    from spared.data_model import dense

    dense_layers = dense_layers or {}

    digest = hashlib.sha256()
    for part in (adata.obs_names.to_numpy(dtype=str), adata.var_names.to_numpy(dtype=str),
                 adata.obs["split"].astype(str).to_numpy() if "split" in adata.obs else np.array([], str)):
        digest.update("\x1f".join(part).encode())
    for key in (layer, "mask"):
        if key in adata.layers:
            array = dense_layers[key] if key in dense_layers else dense(adata.layers[key])
            digest.update(np.ascontiguousarray(array).tobytes())
    return "anndata-" + digest.hexdigest()[:16]


def default_cache() -> Path:
    """Where dataset strings are cached when no folder is given: ``$SPARED_DATA/bench``."""
    from spared.io.download import data_dir

    return Path(data_dir()) / "bench"

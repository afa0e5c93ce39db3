"""The results table of a benchmark folder (one row per run, Parquet + CSV) and its model × dataset summary."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spared.bench.scoring import METRICS, STATUSES, check_row  # noqa: F401 (re-exported)
from spared.io.atomic import atomic_path

PARQUET = "results.parquet"
CSV = "results.csv"
RUNS = "runs"
METRICS_FILE = "metrics.json"
#: Leading columns of the table, in order; metric and bookkeeping columns follow.
KEY_COLUMNS = ("run_id", "model", "dataset", "target", "seed", "status", "error", "data_version", "spec_key")


class ResultsTable:
    """The table ``results.parquet`` (and its twin ``results.csv``) of a benchmark folder.

    Only the driver writes it: :meth:`append` checks every new row (:func:`spared.bench.scoring.check_row`: a known
    target, the protocol's split, scored entries and layer, every metric) and rewrites both files atomically
    (temporary file + rename), one row per run id (a re-run replaces its row). Rows carry the run's ``spec_key``
    (its settings without the data's content): a new row of a spec replaces that spec's failed rows, and a
    successful one also its rows on earlier versions of the data.
    """

    def __init__(self, results_dir: str | Path) -> None:
        self.dir = Path(results_dir)

    @property
    def parquet_path(self) -> Path:
        return self.dir / PARQUET

    @property
    def csv_path(self) -> Path:
        return self.dir / CSV

    def run_dir(self, run_id: str) -> Path:
        """Folder of a run."""
        return self.dir / RUNS / run_id

    def load(self) -> pd.DataFrame:
        """The table (empty with the key columns when nothing was written yet)."""
        if not self.parquet_path.is_file():
            return pd.DataFrame({c: pd.Series(dtype=object) for c in KEY_COLUMNS})
        return pd.read_parquet(self.parquet_path)

    def append(self, rows: Mapping[str, Any] | Iterable[Mapping[str, Any]]) -> pd.DataFrame:
        """Add rows (replacing earlier rows of the same ``run_id``) and rewrite the table atomically.

        Raises
        ------
        ValueError
            When a row cannot be compared with the others (every problem of every row is listed; nothing is
            written).
        """
        rows = [rows] if isinstance(rows, Mapping) else list(rows)
        problems = [f"row {row.get('run_id', i)!r}: {p}" for i, row in enumerate(rows) for p in check_row(row)]
        if problems:
            raise ValueError("results rows refused (nothing written):\n  - " + "\n  - ".join(problems))
        new = pd.DataFrame([_flat(row) for row in rows])
        old = self.load()
        replaced = old["run_id"].isin(new["run_id"])
        if "spec_key" in new and "spec_key" in old:
            done = new.loc[new["status"] == "done", "spec_key"].dropna()
            replaced |= old["spec_key"].isin(done)
            replaced |= old["spec_key"].isin(new["spec_key"].dropna()) & (old["status"] == "failed")
        old = old[~replaced]
        table = pd.concat([df for df in (old, new) if len(df)], ignore_index=True) if len(old) else new
        table = table.drop_duplicates("run_id", keep="last").reset_index(drop=True)
        table = table[[c for c in KEY_COLUMNS if c in table] + [c for c in table if c not in KEY_COLUMNS]]
        self.dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.parquet_path) as tmp:
            table.to_parquet(tmp, index=False, engine="pyarrow")
        with atomic_path(self.csv_path) as tmp:
            table.to_csv(tmp, index=False)
        return table

    def finished(self) -> set[str]:
        """Run ids whose row is ``done`` and whose folder still holds ``metrics.json``."""
        table = self.load()
        ok = table.loc[table["status"] == "done", "run_id"]
        return {rid for rid in ok if (self.run_dir(rid) / METRICS_FILE).is_file()}


def _flat(row: Mapping[str, Any]) -> dict[str, Any]:
    """Scalars stay; nested values (configs) become JSON text so that Parquet and CSV hold them alike."""
    return {k: json.dumps(v, sort_keys=True) if isinstance(v, Mapping | list | tuple) else v for k, v in row.items()}



def load_results(results: str | Path | pd.DataFrame) -> pd.DataFrame:
    """The results table of a folder (empty when no run was recorded yet), or the DataFrame itself."""
    if isinstance(results, pd.DataFrame):
        return results
    if not Path(results).is_dir():
        raise FileNotFoundError(f"results folder {results} does not exist; run `spared bench --out {results}` first")
    return ResultsTable(results).load()


def mark_stale(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with a boolean ``stale`` column: True for runs on a dataset whose content changed since (its
    current :func:`~spared.bench.runs.data_fingerprint` differs from the run's ``data_version``)."""
    from spared.bench.runs import data_fingerprint

    table = table.copy()
    if "data_version" not in table or table.empty:
        table["stale"] = False
        return table
    versions = table["data_version"].fillna("").astype(str)
    current = {d: data_fingerprint(d) for d in table["dataset"].dropna().unique()}
    now = table["dataset"].map(current).fillna("")
    table["stale"] = (versions != "") & (now != "") & (now != versions)
    return table


def aggregate(results: str | Path | pd.DataFrame, metrics: Iterable[str] = ("MSE", "PCC-Gene")) -> pd.DataFrame:
    """Model × dataset summary: per target (raw, median, completed) and metric, mean and std over seeds.

    Parameters
    ----------
    results
        A results folder, or its table.
    metrics
        Metric columns to summarise.

    Returns
    -------
    DataFrame with columns ``model``, ``dataset``, ``data_version``, ``preset`` (when the rows carry it: the
    processing preset of the data), ``custom`` (a model not built into spared, or predictions scored from
    elsewhere) and, for each target label ``t`` present (:func:`~spared.bench.targets.target_label`: the target,
    with its imputed-entry weight when that is not 1) and metric ``m``, ``"m t mean"``, ``"m t std"`` (sample
    standard deviation, NaN with one seed) and ``"n t"`` (seeds); ``attrs["targets"]`` lists the labels in table
    order. Only runs with status ``done`` count; ``failed`` gives the number of failed runs of the model and
    dataset. Runs on different versions of a dataset's content (``data_version``) are summarised apart, never
    averaged together; a ``stale`` column (any run of the row on data that changed since) is kept when
    ``results`` has one (:func:`mark_stale`).
    """
    from spared.bench.targets import label_order

    table = load_results(results).copy()
    metrics = list(metrics)
    absent = [m for m in metrics if m not in table.columns]
    if absent and (table["status"] == "done").any():
        raise KeyError(f"metrics {absent} are not columns of the results ({list(table.columns)})")
    table["data_version"] = table["data_version"].fillna("").astype(str) if "data_version" in table else ""
    table["target_label"] = target_labels(table)
    table["custom"] = table["custom"].fillna(False).astype(bool) if "custom" in table else False
    keys = ["model", "dataset", "data_version"]
    if "preset" in table:  # the processing preset of the data (rows written before it existed: told now)
        from spared.bench.provenance import data_preset

        presets = {dataset: data_preset(dataset) for dataset in table["dataset"].unique()}
        table["preset"] = table["preset"].fillna(table["dataset"].map(presets)).astype(str)
        keys.append("preset")
    ok = table[table["status"] == "done"]
    out = table[keys].drop_duplicates().sort_values(keys).reset_index(drop=True)
    out = out.merge(table.groupby(keys)["custom"].any().reset_index(), on=keys, how="left")
    labels = label_order(set(ok["target_label"]))
    for label in labels:
        rows = ok[ok["target_label"] == label].groupby(keys)
        stats = pd.DataFrame({f"n {label}": rows.size()})
        for m in metrics:
            values = rows[m].agg(["mean", "std"])
            stats[f"{m} {label} mean"], stats[f"{m} {label} std"] = values["mean"], values["std"]
        out = out.merge(stats.reset_index(), on=keys, how="left")
        out[f"n {label}"] = out[f"n {label}"].fillna(0).astype(np.int64)
    failed = table[table["status"] == "failed"].groupby(keys).size().rename("failed")
    out = out.merge(failed.reset_index(), on=keys, how="left")
    out["failed"] = out["failed"].fillna(0).astype(np.int64)
    if "stale" in table:
        out = out.merge(table.groupby(keys)["stale"].any().reset_index(), on=keys, how="left")
    out.attrs["targets"] = labels
    return out


def target_labels(table: pd.DataFrame) -> list[str]:
    """The target label of every row of a results table (:func:`~spared.bench.targets.target_label`: the target,
    with its ``imputed_weight`` when that is not 1)."""
    from spared.bench.targets import target_label

    weights = table["imputed_weight"] if "imputed_weight" in table else [None] * len(table)
    return [target_label(t, w) for t, w in zip(table["target"], weights, strict=True)]


def summary_labels(summary: pd.DataFrame) -> pd.Series:
    """Readable dataset names for the rows of :func:`aggregate`: unique among the datasets shown, with the data
    version when one dataset appears with several, and ``(stale)`` for data that changed since the runs."""
    from spared.bench.runs import dataset_labels

    labels = summary["dataset"].map(dataset_labels(summary["dataset"]))
    several = summary.groupby("dataset")["data_version"].transform("nunique") > 1
    labels = labels.where(~several, labels + " [data " + summary["data_version"].str[:6] + "]")
    if "stale" in summary:
        labels = labels.where(~summary["stale"].fillna(False).astype(bool), labels + " (stale)")
    return labels


def format_mean_std(mean: float, std: float, digits: int = 3) -> str:
    """``"0.912 ± 0.013"``; just the mean when std is undefined, ``"–"`` when there is no mean."""
    if mean is None or not np.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None and np.isfinite(std) else "")

"""The results table of a benchmark folder (one row per run, Parquet + CSV) and its model × dataset summary."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spared.io.atomic import atomic_path

PARQUET = "results.parquet"
CSV = "results.csv"
RUNS = "runs"
METRICS_FILE = "metrics.json"
#: Metrics every successful row carries (those of :func:`spared.metrics.compute`).
METRICS = ("MSE", "MAE", "PCC-Gene", "PCC-Patch", "R2-Gene", "R2-Patch", "Global")
#: Leading columns of the table, in order; metric and bookkeeping columns follow.
KEY_COLUMNS = ("run_id", "model", "dataset", "target", "seed", "status", "error")
STATUSES = ("done", "failed")


class ResultsTable:
    """The table ``results.parquet`` (and its twin ``results.csv``) of a benchmark folder.

    Only the driver writes it: :meth:`append` rewrites both files atomically (temporary file + rename), one row
    per run id (a re-run replaces its row).
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
        """Add rows (replacing earlier rows of the same ``run_id``) and rewrite the table atomically."""
        rows = [rows] if isinstance(rows, Mapping) else list(rows)
        for row in rows:
            missing = [c for c in ("run_id", "status") if c not in row]
            if missing:
                raise KeyError(f"a results row needs {missing}")
            if row["status"] not in STATUSES:
                raise ValueError(f"status must be one of {list(STATUSES)}, got {row['status']!r}")
        new = pd.DataFrame([_flat(row) for row in rows])
        old = self.load()
        old = old[~old["run_id"].isin(new["run_id"])]
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


def aggregate(results: str | Path | pd.DataFrame, metrics: Iterable[str] = ("MSE", "PCC-Gene")) -> pd.DataFrame:
    """Model × dataset summary: per target (raw, completed) and metric, mean and std over seeds.

    Parameters
    ----------
    results
        A results folder, or its table.
    metrics
        Metric columns to summarise.

    Returns
    -------
    DataFrame with columns ``model``, ``dataset`` and, for each target ``t`` present and metric ``m``,
    ``"m t mean"``, ``"m t std"`` (sample standard deviation, NaN with one seed) and ``"n t"`` (seeds). Only
    runs with status ``done`` count; ``failed`` gives the number of failed runs of the model and dataset.
    """
    table = load_results(results)
    metrics = list(metrics)
    absent = [m for m in metrics if m not in table.columns]
    if absent and (table["status"] == "done").any():
        raise KeyError(f"metrics {absent} are not columns of the results ({list(table.columns)})")
    ok = table[table["status"] == "done"]
    pairs = table[["model", "dataset"]].drop_duplicates().sort_values(["model", "dataset"])
    out = pairs.reset_index(drop=True)
    for target in [t for t in ("raw", "completed") if t in set(ok["target"])]:
        rows = ok[ok["target"] == target].groupby(["model", "dataset"])
        stats = pd.DataFrame({f"n {target}": rows.size()})
        for m in metrics:
            values = rows[m].agg(["mean", "std"])
            stats[f"{m} {target} mean"], stats[f"{m} {target} std"] = values["mean"], values["std"]
        out = out.merge(stats.reset_index(), on=["model", "dataset"], how="left")
        out[f"n {target}"] = out[f"n {target}"].fillna(0).astype(np.int64)
    failed = table[table["status"] == "failed"].groupby(["model", "dataset"]).size().rename("failed")
    out = out.merge(failed.reset_index(), on=["model", "dataset"], how="left")
    out["failed"] = out["failed"].fillna(0).astype(np.int64)
    return out


def format_mean_std(mean: float, std: float, digits: int = 3) -> str:
    """``"0.912 ± 0.013"``; just the mean when std is undefined, ``"–"`` when there is no mean."""
    if mean is None or not np.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None and np.isfinite(std) else "")

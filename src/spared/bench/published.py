"""The SpaRED authors' published benchmark figures, as data with their source, and ours beside them.

The authors' project page lists, per dataset and model, the test MSE and PCC-Gene of their benchmark
(``published/spared_webpage.csv``, rebuilt by ``scripts/build_published_results.py``; every value is kept exactly
as published, with the page that shows it). :func:`beside_published` puts our results next to them, row by row,
with the processing preset that produced our data: only rows of preset ``"original"`` were processed as the
authors processed theirs (docs/processing.md), and the page does not say which target (raw or completed) its
figures were trained on, so ours are shown for each target.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

import numpy as np
import pandas as pd

#: Package file with the published figures (one row per dataset, model and metric).
PUBLISHED_FILE = "spared_webpage.csv"
#: Metrics the page publishes.
PUBLISHED_METRICS = ("MSE", "PCC-Gene")


@cache
def _read() -> pd.DataFrame:
    """The package file, models in the page's column order, datasets in its row order."""
    from spared.models import MODEL_NAMES

    with (files("spared.bench") / "published" / PUBLISHED_FILE).open(encoding="utf-8") as handle:
        table = pd.read_csv(handle, dtype=str)
    order = {name: i for i, name in enumerate(MODEL_NAMES)}
    table = table.assign(value=table["value"].astype(float), text=table["value"],
                         _dataset=table["dataset"].map({d: i for i, d in enumerate(dict.fromkeys(table["dataset"]))}),
                         _model=table["model"].map(order))
    return table.sort_values(["_dataset", "_model"], kind="stable").drop(columns=["_dataset", "_model"])


def published_results(dataset: str | None = None, model: str | None = None) -> pd.DataFrame:
    """The published figures, one row per dataset and model: ``dataset`` (catalogue key), ``abbreviation``,
    ``model`` (a :mod:`spared.models` name), ``MSE``, ``PCC-Gene`` (NaN where not published), their text as
    published (``MSE text``, ``PCC-Gene text``) and ``source`` (the page that shows them).

    ``dataset`` / ``model`` keep only that dataset or model; one that has no published figure is a ``ValueError``
    naming those that do.
    """
    long = _read()
    for column, wanted in (("dataset", dataset), ("model", model)):
        if wanted is not None:
            if wanted not in set(long[column]):
                raise ValueError(f"no published figure for {column} {wanted!r}; published {column}s: "
                                 f"{', '.join(sorted(set(long[column])))}")
            long = long[long[column] == wanted]
    keys = ["dataset", "abbreviation", "model", "source"]
    wide = long.pivot_table(index=keys, columns="metric", values=["value", "text"], aggfunc="first", sort=False)
    out = wide.index.to_frame(index=False)
    for metric in PUBLISHED_METRICS:
        out[metric] = wide[("value", metric)].to_numpy() if ("value", metric) in wide else np.nan
        out[f"{metric} text"] = wide[("text", metric)].to_numpy() if ("text", metric) in wide else None
    return out[["dataset", "abbreviation", "model", *PUBLISHED_METRICS, *(f"{m} text" for m in PUBLISHED_METRICS),
                "source"]]


def beside_published(summary: pd.DataFrame) -> pd.DataFrame:
    """Our benchmark rows next to the published figure of the same dataset and model.

    Parameters
    ----------
    summary
        :func:`spared.bench.results.aggregate` output (``model``, ``dataset``, ``"<metric> <target> mean/std"``).

    Returns
    -------
    One row per (our dataset, model, target label: ``summary.attrs["targets"]``) with a published figure: ``dataset``
    (our dataset string), ``catalogue_key``, ``model``, ``target``, ``preset`` (of our data), and per metric
    ``<metric> published``, ``<metric> ours``, ``<metric> ours std``, ``<metric> difference`` (ours − published),
    then ``source``.
    Empty (with these columns) when no row matches.
    """
    from spared.bench.provenance import data_provenance
    from spared.bench.targets import TARGET_NAMES

    published = published_results().set_index(["dataset", "model"])
    rows = []
    for record in summary.to_dict(orient="records"):
        origin = data_provenance(record["dataset"])
        key = (origin["catalogue_key"], record["model"])
        if key not in published.index:
            continue
        figure = published.loc[key]
        for target in summary.attrs.get("targets", TARGET_NAMES):
            if f"n {target}" not in record or not record[f"n {target}"]:
                continue
            row = {"dataset": record["dataset"], "catalogue_key": key[0], "model": key[1], "target": target,
                   "preset": record.get("preset") or origin["preset"]}
            for metric in PUBLISHED_METRICS:
                ours = record.get(f"{metric} {target} mean", np.nan)
                row.update({f"{metric} published": figure[metric], f"{metric} ours": ours,
                            f"{metric} ours std": record.get(f"{metric} {target} std", np.nan),
                            f"{metric} difference": ours - figure[metric]})
            rows.append({**row, "source": figure["source"]})
    columns = ["dataset", "catalogue_key", "model", "target", "preset",
               *(f"{m} {part}" for m in PUBLISHED_METRICS for part in ("published", "ours", "ours std", "difference")),
               "source"]
    return pd.DataFrame(rows, columns=columns)

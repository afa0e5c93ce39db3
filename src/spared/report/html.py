"""Render the dataset summary, completion evaluation and benchmark tables into one HTML file.

Everything is embedded (figures as base64 PNG, CSS inline); the page loads nothing from elsewhere. Each table
says which direction is better for its metrics and what its rows mean, so the page reads without the code.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: File names the report looks for inside a results folder.
COMPLETION_FILE = "completion.csv"
COMPLETION_CURVE_FILE = "completion_curve.csv"
PROCESSED_GLOB = "*.h5ad"
REPORT_FILE = "report.html"

#: What each metric measures (SPEC §4, :mod:`spared.metrics`); which value is better is ``metrics.BETTER``.
METRIC_INFO: dict[str, str] = {
    "MSE": "mean squared error of log2(TPM + 1) expression over the scored entries",
    "MAE": "mean absolute error over the scored entries",
    "PCC-Gene": "Pearson correlation of each gene across spots, averaged over genes",
    "PCC-Patch": "Pearson correlation of each spot across genes, averaged over spots",
    "R2-Gene": "coefficient of determination of each gene, averaged over genes",
    "R2-Patch": "coefficient of determination of each spot, averaged over spots",
    "Global": "mean of PCC-Gene, PCC-Patch, R2-Gene, R2-Patch and 1 − MSE / variance; 1 is perfect",
}
#: Metrics shown in the completion and benchmark tables.
COMPLETION_METRICS = ("MSE", "MAE", "PCC-Gene", "PCC-Patch")
BENCHMARK_METRICS = ("MSE", "PCC-Gene")
#: What the rows of the completion table score (``target`` column of :func:`spared.impute.evaluate.evaluate`).
COMPLETION_TARGETS: dict[str, tuple[str, str]] = {
    "masked": ("hidden measured values",
               "a fraction of the measured (non-zero) values of the val/test spots was hidden on purpose, "
               "completed by each method and compared with what was measured"),
    "vs truth": ("true missing values (simulated)",
                 "simulated data only: the values that really were missing (dropouts) of the val/test spots, "
                 "compared with the known expression before dropout"),
}
#: Readable names of the completion methods.
METHOD_NAMES = {"spackle": "SpaCKLE", "median": "adaptive median filter", "mean": "train-split gene mean",
                "knn": "mean of k nearest spots"}
#: Columns of the dataset table shown as percentages.
PERCENT_COLUMNS = ("missing, raw (all genes)", "missing (kept genes)", "missing after median filter")

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5rem auto;max-width:1100px;
padding:0 1rem;color:#222;line-height:1.4}
h1{font-size:1.6rem}h2{border-bottom:2px solid #ddd;padding-bottom:.2rem;margin-top:2rem}h3{margin-bottom:.3rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.85rem;max-width:100%}
div.table{max-width:100%;overflow-x:auto}
th,td{border:1px solid #ccc;padding:.25rem .5rem}
th{background:#f3f3f3;vertical-align:bottom;text-align:center}td{text-align:right;white-space:nowrap}
td:first-child{text-align:left}td.text{text-align:left;white-space:normal}
figure{display:inline-block;margin:.5rem;vertical-align:top}
img{max-width:min(100%,520px);border:1px solid #eee}figure.wide img{max-width:100%}
figcaption{font-size:.85rem;color:#444;max-width:520px}
.note{color:#555;font-size:.9rem}dl.key{font-size:.9rem;margin:.3rem 0}dl.key dt{font-weight:600;float:left;
clear:left;margin-right:.4rem}dl.key dd{margin:0 0 .2rem 0}
"""


# --------------------------------------------------------------------------------------------- building blocks


def metric_header(metric: str) -> str:
    """``"MSE ↓"`` / ``"PCC-Gene ↑"``: the metric with the direction that is better."""
    from spared.metrics import BETTER

    direction = BETTER.get(metric, "")
    return f"{metric} {'↓' if direction == 'lower' else '↑' if direction == 'higher' else ''}".strip()


def metric_key(metrics: Iterable[str]) -> str:
    """A legend of the metrics shown: direction and meaning of each."""
    from spared.metrics import BETTER

    items = []
    for m in metrics:
        direction, meaning = BETTER.get(m, ""), METRIC_INFO.get(m, "")
        better = f"{direction} is better; " if direction else ""
        items.append(f"<dt>{html.escape(metric_header(m))}</dt><dd>{html.escape(better + meaning)}</dd>")
    return f"<dl class=key>{''.join(items)}</dl>"


def figure_html(fig, caption: str, wide: bool = False) -> str:
    """A matplotlib figure as an embedded ``<figure>`` (the figure is closed afterwards)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    css_class = " class=wide" if wide else ""
    return (f'<figure{css_class}><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def table_html(frame: pd.DataFrame, float_format: str = "{:.4g}", index: bool = False,
               text_columns: Iterable[str] = ()) -> str:
    """A DataFrame as an escaped HTML table in a scrolling box (so it never widens the page).

    ``text_columns`` are left-aligned and wrap (error messages, descriptions).
    """
    text = set(text_columns)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in ([frame.index.name or ""] if index else [])
                   + list(frame.columns))
    rows = []
    for label, row in frame.iterrows():
        cells = [f"<td>{html.escape(str(label))}</td>"] if index else []
        for column, value in row.items():
            css = " class=text" if column in text else ""
            cells.append(f"<td{css}>{html.escape(_cell(value, float_format))}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return (f"<div class=table><table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
            f"</div>")


def _cell(value: Any, float_format: str) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if isinstance(value, float | np.floating):
        return float_format.format(value)
    return str(value)


def _percent(value: float) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{100 * value:.1f}%"


# -------------------------------------------------------------------------------------------------- datasets


def dataset_summary(adata, name: str) -> dict:
    """Headline figures of one processed collection (one row of the report's dataset table).

    Fractions are in [0, 1] (the table shows the :data:`PERCENT_COLUMNS` as percentages); add a key to add a
    column.
    """
    from spared.io.readers import geometry_label, technology

    info = adata.uns.get("spared", {})
    mask = np.asarray(adata.layers["mask"]) if "mask" in adata.layers else np.zeros((0, 0), bool)
    return {
        "dataset": name,
        "technology": technology(adata),
        "geometry": geometry_label(adata),
        "slides": int(adata.obs["slide_id"].nunique()) if "slide_id" in adata.obs else 0,
        "patients": int(adata.obs["patient"].nunique()) if "patient" in adata.obs else 0,
        "spots": adata.n_obs,
        "genes kept": adata.n_vars,
        "missing, raw (all genes)": float(info.get("raw_zero_fraction", np.nan)),
        "missing (kept genes)": float(1 - mask.mean()) if mask.size else float("nan"),
        "missing after median filter": float(info.get("missing_fraction_after_median", np.nan)),
    }


def _dataset_section(processed: Mapping[str, Any], skipped: list[str]) -> str:
    from spared import pl

    notes = "".join(f'<p class="note">Not summarised: {html.escape(s)}</p>' for s in skipped)
    if not processed:
        return '<p class="note">No processed collection was given (spared report --data FILE.h5ad).</p>' + notes
    table = pd.DataFrame([dataset_summary(adata, name) for name, adata in processed.items()])
    for column in PERCENT_COLUMNS:
        table[column] = table[column].map(_percent)
    table.columns = [c[0].upper() + c[1:] for c in table.columns]
    parts = [table_html(table),
             '<p class="note">Missing = values not measured (zero counts, dropouts). "Raw (all genes)" counts '
             'every gene before filtering; "kept genes" are those the protocol selected (Moran\'s I); the adaptive '
             "median filter fills missing values from spatial neighbours.</p>", notes]
    for name, adata in processed.items():
        if adata.n_obs == 0:
            parts.append(f"<h3>{html.escape(name)}</h3><p class='note'>No spots: nothing to draw.</p>")
            continue
        figures = []
        for plot, caption in ((pl.counts_per_spot, "total counts per spot, by slide"),
                              (pl.genes_kept, "genes and spots left after each processing step"),
                              (pl.missing_fraction, "missing values per slide, before and after filling"),
                              (pl.moran_ranking, "spatial autocorrelation (Moran's I) of the kept genes")):
            ax = plot(adata, show=False)
            figures.append(figure_html(ax.figure, f"{name}: {caption}"))
        top = adata.var["d_log1p_moran"].idxmax() if "d_log1p_moran" in adata.var else adata.var_names[0]
        axes = pl.spatial_gene(adata, str(top), show=False)
        figures.append(figure_html(axes[0].figure, f"{name}: {pl.gene_label(adata, str(top))}, the gene with the "
                                                   f"highest Moran's I, on the first slide", wide=True))
        parts.append(f"<h3>{html.escape(name)}</h3>" + "".join(figures))
    return "".join(parts)


# ------------------------------------------------------------------------------------------------ completion


def _completion_section(results_dir: Path) -> str:
    from spared import pl

    parts = []
    table_path = results_dir / COMPLETION_FILE
    if table_path.is_file():
        table = pd.read_csv(table_path)
        metrics = [m for m in COMPLETION_METRICS if m in table]
        shown = pd.DataFrame({"Method": table["method"].map(lambda m: METHOD_NAMES.get(m, m))})
        if "target" in table:
            shown["Scored on"] = table["target"].map(lambda t: COMPLETION_TARGETS.get(t, (t,))[0])
        if "n_entries" in table:
            shown["Entries scored"] = table["n_entries"].map(lambda n: f"{int(n):,}")
        for m in metrics:
            shown[metric_header(m)] = table[m]
        if "seconds" in table:
            shown["Seconds"] = table["seconds"].map(lambda s: f"{s:.1f}")
        targets = [t for t in COMPLETION_TARGETS if "target" in table and t in set(table["target"])]
        key = "".join(f"<dt>{html.escape(COMPLETION_TARGETS[t][0])}</dt><dd>{html.escape(COMPLETION_TARGETS[t][1])}"
                      f"</dd>" for t in targets)
        parts += [table_html(shown, "{:.3f}", text_columns=("Method", "Scored on")),
                  f"<dl class=key>{key}</dl>" if key else "", metric_key(metrics)]
    curve_path = results_dir / COMPLETION_CURVE_FILE
    if curve_path.is_file():
        curve = pd.read_csv(curve_path)
        if "target" in curve:
            curve = curve[curve["target"] == "masked"]
        curve = curve.assign(method=curve["method"].map(lambda m: METHOD_NAMES.get(m, m)))
        for metric in ("MSE", "PCC-Gene"):
            if metric in curve:
                ax = pl.completion_curve(curve, metric=metric, show=False)
                parts.append(figure_html(ax.figure, f"{metric_header(metric)} of the completed hidden values as a "
                                                    f"larger fraction of the measured values is hidden"))
    return "".join(parts) or '<p class="note">No completion evaluation in this folder.</p>'


# ------------------------------------------------------------------------------------------------- benchmark


def _benchmark_section(results_dir: Path) -> tuple[str, pd.DataFrame | None]:
    """The benchmark section, and the summary it shows (:func:`~spared.bench.results.aggregate` of the
    :data:`BENCHMARK_METRICS`, with ``stale``; ``None`` without runs)."""
    from spared import pl
    from spared.bench.results import (
        aggregate,
        format_mean_std,
        load_results,
        mark_stale,
        summary_labels,
        target_labels,
    )
    from spared.bench.targets import target_meaning

    results = load_results(results_dir)
    if results.empty:
        return '<p class="note">No benchmark runs in this folder.</p>', None
    results = mark_stale(results)
    done = results[results["status"] == "done"]
    summary = aggregate(results, BENCHMARK_METRICS)
    targets = summary.attrs["targets"]
    shown = pd.DataFrame({"Model": [model_label(m) + (" (custom)" if c else "")
                                    for m, c in zip(summary["model"], summary["custom"], strict=True)],
                          "Dataset": summary_labels(summary)})
    if "preset" in summary:
        shown["Preset"] = summary["preset"]
    for m in BENCHMARK_METRICS:
        for t in targets:
            shown[f"{metric_header(m)}, {t}"] = [
                format_mean_std(a, b) for a, b in zip(summary[f"{m} {t} mean"], summary[f"{m} {t} std"], strict=True)]
    shown["Seeds"] = ["/".join(str(row[f"n {t}"]) for t in targets) or "0" for _, row in summary.iterrows()]
    shown["Failed runs"] = summary["failed"]
    key = "".join(f"<dt>{html.escape(t)}</dt><dd>{html.escape(target_meaning(t))}</dd>" for t in targets)
    custom = ("<p class=note>(custom): a model that is not built into spared (registered by a user or a package), "
              "or predictions made elsewhere and scored with <code>spared score</code>; scored by the same protocol."
              "</p>" if summary["custom"].any() else "")
    parts = [table_html(shown),
             f"<p class=note>Mean ± standard deviation over seeds (Seeds: runs per target, {'/'.join(targets)}). "
             "Every model is scored on the measured values of the held-out test slides (validation slides where a "
             "collection has no test split), whatever its target: the target decides only which entries the "
             "training loss uses.</p>",
             f"<dl class=key>{key}</dl>", custom, metric_key(BENCHMARK_METRICS)]
    if summary.get("stale", pd.Series(dtype=bool)).any():
        parts.append("<p class=note>(stale): the dataset changed since these runs; run <code>spared bench</code> "
                     "again to refresh them.</p>")
    names = dict(zip(zip(summary["dataset"], summary["data_version"], strict=True), summary_labels(summary),
                     strict=True))

    def label(rows: pd.DataFrame) -> list[str]:
        versions = rows["data_version"].fillna("").astype(str) if "data_version" in rows else [""] * len(rows)
        return [names[key] for key in zip(rows["dataset"], versions, strict=True)]

    failed = results[results["status"] != "done"]
    if not failed.empty:
        table = pd.DataFrame({"Model": failed["model"].map(model_label), "Dataset": label(failed),
                              "Target": failed["target"], "Seed": failed["seed"], "Error": failed["error"]})
        parts.append("<h3>Failed runs</h3>" + table_html(table, text_columns=("Error",)))
    if not done.empty:
        bars = done.assign(model=done["model"].map(model_label), dataset=label(done), target=target_labels(done))
        datasets = list(dict.fromkeys(bars["dataset"]))
        for metric in [m for m in BENCHMARK_METRICS if m in bars]:
            for dataset in datasets[:6]:
                ax = pl.benchmark_bars(bars, metric=metric, dataset=dataset, show=False)
                where = f" on {dataset}" if len(datasets) > 1 else ""
                parts.append(figure_html(ax.figure, f"{metric_header(metric)} by model{where}, one bar per target "
                                                    f"(mean ± std over seeds)"))
        if len(datasets) > 1:
            ax = pl.benchmark_heatmap(bars, metric="MSE", show=False)
            parts.append(figure_html(ax.figure, f"{metric_header('MSE')}, models × datasets"))
    from spared.models.recipe import recipe_table

    recipes = recipe_table(sorted(set(results["model"])))
    if not recipes.empty:
        parts.append("<h3>How each model was trained</h3>"
                     + table_html(recipes, text_columns=("recipe from", "training (recipe)",
                                                         "deviations from the authors")))
    return "".join(parts), summary


def _published_section(summary: pd.DataFrame | None) -> str:
    """Our benchmark rows beside the SpaRED authors' published figures for the same dataset and model.

    ``summary``: the benchmark section's (its metrics are the published ones); ``None`` when there are no runs.
    """
    from spared.bench.published import PUBLISHED_METRICS, beside_published
    from spared.bench.results import format_mean_std, summary_labels

    if summary is None:
        return ""
    assert tuple(PUBLISHED_METRICS) == BENCHMARK_METRICS, "the benchmark summary must carry the published metrics"
    # the rows as such, not marked stale here (the labels below carry no "(stale)")
    attrs = dict(summary.attrs)
    summary = summary.drop(columns=["stale"], errors="ignore")
    summary.attrs = attrs
    table = beside_published(summary)
    if table.empty:
        return ("<p class=note>None of these runs is on a catalogue dataset and model with a figure published by the "
                "SpaRED authors (<code>spared results --published</code> lists them).</p>")
    labels = dict(zip(summary["dataset"], summary_labels(summary), strict=True))
    shown = pd.DataFrame({"Model": table["model"].map(model_label), "Dataset": table["dataset"].map(labels),
                          "Target": table["target"],
                          "Preset of our data": table["preset"]})
    for m in PUBLISHED_METRICS:
        shown[f"{metric_header(m)}, published"] = table[f"{m} published"]
        shown[f"{metric_header(m)}, ours"] = [format_mean_std(a, b) for a, b in
                                              zip(table[f"{m} ours"], table[f"{m} ours std"], strict=True)]
        shown[f"{metric_header(m)}, ours − published"] = table[f"{m} difference"].map(lambda d: f"{d:+.3f}")
    sources = table.drop_duplicates("catalogue_key")
    links = "".join(f"<dt>{html.escape(k)}</dt><dd><a href='{html.escape(u)}'>{html.escape(u)}</a></dd>"
                    for k, u in zip(sources["catalogue_key"], sources["source"], strict=True))
    return (table_html(shown, "{:.4g}", text_columns=("Preset of our data",))
            + "<p class=note>Like for like only where our data's preset is <b>original</b> (layers made as the "
              "original SpaRED library makes them; <b>spared</b>: this package's layers, docs/processing.md). The "
              "authors' page does not say which target its figures were trained on (their raw experiment is our "
              "<b>median</b> target), so every target of ours is shown. Published figures are the authors' own, "
              "never averaged with ours.</p>"
            + f"<dl class=key>{links}</dl>")


def model_label(name: str) -> str:
    """A model's column label (``"stnet"`` → ``"STNet"``); a model that cannot be resolved here (a custom module
    that is not importable now, predictions scored from elsewhere) keeps its name."""
    from spared.models import registry

    try:
        return registry.get(str(name)).label
    except (ValueError, ImportError, TypeError):
        return str(name)


# ---------------------------------------------------------------------------------------- processed inputs


def read_processed(paths: Iterable[str | Path], strict: bool = True,
                   reader: Callable[[Path], Any] | None = None) -> tuple[dict[str, Any], list[str]]:
    """Read processed collections for the report: ``({label: AnnData}, [why each skipped file was skipped])``.

    A file that is unreadable or not processed (no ``layers['mask']``/``obs['slide_id']``: a raw collection) is
    a ``ValueError`` naming it with ``strict`` (files asked for), else it is skipped with a warning (files found
    in the results folder).
    """
    from spared.bench.runs import dataset_labels

    if reader is None:
        import anndata as ad

        reader = ad.read_h5ad
    paths = [Path(p) for p in paths]
    labels = dataset_labels([str(p) for p in paths]) if paths else {}
    processed, skipped = {}, []
    for path in paths:
        problem = None
        try:
            adata = reader(path)
        except Exception as exc:  # h5py/anndata raise many types for a broken file
            problem = f"{path} is not a readable .h5ad file ({type(exc).__name__}: {exc})"
        else:
            lacking = [f"layers['{k}']" for k in ("mask", "c_d_log1p") if k not in adata.layers]
            lacking += [f"obs['{k}']" for k in ("slide_id",) if k not in adata.obs]
            if lacking:
                problem = (f"{path} is not a processed collection (it lacks {', '.join(lacking)}); process it with "
                           f"`spared process`")
        if problem is None:
            processed[labels[str(path)]] = adata
        elif strict:
            raise ValueError(problem)
        else:
            warnings.warn(f"report: skipping {problem}", UserWarning, stacklevel=2)
            skipped.append(problem)
    return processed, skipped


def build_report(results_dir: str | Path, out: str | Path | None = None,
                 processed: Mapping[str, Any] | Iterable[str | Path] | None = None) -> Path:
    """Write ``report.html`` for a results folder and return its path.

    Parameters
    ----------
    results_dir
        Folder with the benchmark results table, and optionally ``completion.csv`` /
        ``completion_curve.csv`` (completion evaluation) and processed ``*.h5ad`` collections.
    out
        Output file (default ``results_dir/report.html``; a folder gets ``report.html`` inside it); written
        atomically.
    processed
        Processed collections to summarise: ``{name: AnnData}`` or ``.h5ad`` paths (an unreadable or raw file is
        a ``ValueError``); default: the ``*.h5ad`` in ``results_dir`` (raw or unreadable ones are skipped with a
        warning and a note in the report).
    """
    import matplotlib

    from spared import __version__
    from spared.io.atomic import check_writable_file, write_text

    matplotlib.use("Agg")
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results folder {results_dir} does not exist; run `spared bench` or `spared demo`")
    out = Path(out) if out is not None else results_dir / REPORT_FILE
    out = out / REPORT_FILE if out.is_dir() else out
    check_writable_file(out)
    skipped: list[str] = []
    if processed is None:
        processed, skipped = read_processed(sorted(results_dir.glob(PROCESSED_GLOB)), strict=False)
    elif not isinstance(processed, Mapping):
        processed, skipped = read_processed(processed, strict=True)
    generated = dt.datetime.now(dt.UTC)
    datasets = _dataset_section(processed, skipped)
    completion = _completion_section(results_dir)
    benchmark, summary = _benchmark_section(results_dir)
    body = (f"<h1>spared report</h1><p class='note'>spared {__version__}, generated "
            f"{generated:%Y-%m-%d %H:%M} UTC from {html.escape(str(results_dir))}</p>"
            f"<h2>Datasets</h2>{datasets}"
            f"<h2>Completion evaluation</h2>{completion}"
            f"<h2>Benchmark</h2>{benchmark}"
            f"<h3>Beside the published figures</h3>{_published_section(summary)}")
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>spared report</title>"
            f"<style>{_CSS}</style></head><body>{body}</body></html>")
    return write_text(out, page)

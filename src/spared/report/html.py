"""Render the dataset summary, completion evaluation and benchmark tables into one HTML file.

Everything is embedded (figures as base64 PNG, CSS inline); the page loads nothing from elsewhere.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
from pathlib import Path

import numpy as np
import pandas as pd

#: File names the report looks for inside a results folder.
COMPLETION_FILE = "completion.csv"
COMPLETION_CURVE_FILE = "completion_curve.csv"
PROCESSED_GLOB = "*.h5ad"

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
h1{font-size:1.6rem}h2{border-bottom:2px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem;display:block;overflow-x:auto;max-width:100%}
th,td{border:1px solid #ccc;padding:.25rem .55rem}
th{background:#f3f3f3}td{text-align:right}td:first-child{text-align:left}
figure{display:inline-block;margin:.5rem}img{max-width:520px;border:1px solid #eee}figure.wide img{max-width:100%}
.note{color:#666;font-size:.9rem}
"""


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


def table_html(frame: pd.DataFrame, float_format: str = "{:.4g}", index: bool = True) -> str:
    """A DataFrame as an escaped HTML table."""
    return frame.to_html(float_format=float_format.format, border=0, na_rep="–", escape=True, index=index)


def dataset_summary(adata, name: str) -> dict:
    """Headline figures of one processed collection."""
    info = adata.uns.get("spared", {})
    return {
        "dataset": name,
        "slides": int(adata.obs["slide_id"].nunique()),
        "patients": int(adata.obs["patient"].nunique()),
        "spots": adata.n_obs,
        "genes": adata.n_vars,
        "raw missing (all genes)": float(info.get("raw_zero_fraction", np.nan)),
        "missing (kept genes)": float(1 - np.asarray(adata.layers["mask"]).mean()),
        "missing after median": float(info.get("missing_fraction_after_median", np.nan)),
    }


def _dataset_section(processed: dict) -> str:
    from spared import pl

    if not processed:
        return '<p class="note">No processed collection was given.</p>'
    rows = [dataset_summary(adata, name) for name, adata in processed.items()]
    parts = [table_html(pd.DataFrame(rows), index=False)]
    for name, adata in processed.items():
        figures = []
        for plot, caption in ((pl.counts_per_spot, "total counts per spot, by slide"),
                              (pl.genes_kept, "genes and spots after each step"),
                              (pl.missing_fraction, "missing values per slide"),
                              (pl.moran_ranking, "Moran's I of kept genes")):
            ax = plot(adata, show=False)
            figures.append(figure_html(ax.figure, f"{name}: {caption}"))
        top = adata.var["d_log1p_moran"].idxmax() if "d_log1p_moran" in adata.var else adata.var_names[0]
        axes = pl.spatial_gene(adata, str(top), show=False)
        figures.append(figure_html(axes[0].figure, f"{name}: gene {top} on the first slide", wide=True))
        parts.append(f"<h3>{html.escape(name)}</h3>" + "".join(figures))
    return "".join(parts)


def _completion_section(results_dir: Path) -> str:
    from spared import pl

    parts = []
    table_path = results_dir / COMPLETION_FILE
    if table_path.is_file():
        parts.append(table_html(pd.read_csv(table_path), index=False))
    curve_path = results_dir / COMPLETION_CURVE_FILE
    if curve_path.is_file():
        curve = pd.read_csv(curve_path)
        if "target" in curve:
            curve = curve[curve["target"] == "masked"]
        for metric in ("MSE", "PCC-Gene"):
            if metric in curve:
                ax = pl.completion_curve(curve, metric=metric, show=False)
                parts.append(figure_html(ax.figure, f"completion {metric} vs masking fraction"))
    return "".join(parts) or '<p class="note">No completion evaluation in this folder.</p>'


def _benchmark_section(results_dir: Path) -> str:
    from spared import pl
    from spared.bench.results import aggregate, load_results
    from spared.bench.runs import dataset_label

    results = load_results(results_dir)
    if results.empty:
        return '<p class="note">No benchmark runs in this folder.</p>'
    done = results[results["status"] == "done"]
    summary = aggregate(results_dir)
    summary["dataset"] = summary["dataset"].map(dataset_label)
    parts = [table_html(summary, index=False)]
    failed = results[results["status"] != "done"]
    if not failed.empty:
        columns = ["model", "dataset", "target", "seed", "error"]
        parts.append("<h3>Failed runs</h3>" + table_html(failed[columns], index=False))
    for metric in ("MSE", "PCC-Gene"):
        if metric in done and not done.empty:
            ax = pl.benchmark_bars(done, metric=metric, show=False)
            parts.append(figure_html(ax.figure, f"{metric}: raw vs completed targets"))
    if not done.empty and done["dataset"].nunique() > 1:
        ax = pl.benchmark_heatmap(done, metric="MSE", show=False)
        parts.append(figure_html(ax.figure, "MSE, models × datasets"))
    from spared.models.recipe import recipe_table

    recipes = recipe_table(sorted(set(results["model"])))
    if not recipes.empty:
        parts.append("<h3>How each model was trained</h3>" + table_html(recipes, index=False))
    return "".join(parts)


def build_report(results_dir: str | Path, out: str | Path | None = None, processed: dict | None = None) -> Path:
    """Write ``report.html`` for a results folder and return its path.

    Parameters
    ----------
    results_dir
        Folder with the benchmark results table, and optionally ``completion.csv`` /
        ``completion_curve.csv`` (completion evaluation) and processed ``*.h5ad`` collections.
    out
        Output file (default ``results_dir/report.html``); written atomically.
    processed
        ``{name: AnnData}`` of processed collections to summarise; default: the ``*.h5ad`` in ``results_dir``.
    """
    import anndata as ad
    import matplotlib

    from spared import __version__
    from spared.io.atomic import write_text

    matplotlib.use("Agg")
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results folder {results_dir} does not exist; run `spared bench` or `spared demo`")
    if processed is None:
        processed = {p.stem: ad.read_h5ad(p) for p in sorted(results_dir.glob(PROCESSED_GLOB))}
    body = (f"<h1>spared report</h1><p class='note'>spared {__version__}, generated "
            f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC from {html.escape(str(results_dir))}</p>"
            f"<h2>Datasets</h2>{_dataset_section(processed)}"
            f"<h2>Completion evaluation</h2>{_completion_section(results_dir)}"
            f"<h2>Benchmark</h2>{_benchmark_section(results_dir)}")
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>spared report</title>"
            f"<style>{_CSS}</style></head><body>{body}</body></html>")
    return write_text(Path(out) if out is not None else results_dir / "report.html", page)

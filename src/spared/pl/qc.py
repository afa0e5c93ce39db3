"""Quality-control figures of a processed collection."""

from __future__ import annotations

import numpy as np

from spared.pl._figure import finish, legend_outside, new_axes


def counts_per_spot(adata, slide_key: str = "slide_id", layer: str | None = "counts", bins: int = 40,
                    ax=None, show: bool | None = None, save=None):
    """Histogram of total counts per spot, one curve per slide."""
    fig, axis = new_axes(ax)
    x = adata.X if layer is None or layer not in adata.layers else adata.layers[layer]
    totals = np.asarray(x.sum(axis=1)).ravel()
    edges = np.histogram_bin_edges(np.log10(totals + 1), bins=bins)
    for slide in adata.obs[slide_key].unique():
        sel = (adata.obs[slide_key] == slide).to_numpy()
        axis.hist(np.log10(totals[sel] + 1), bins=edges, histtype="step", label=str(slide))
    axis.set(xlabel="log10(total counts + 1)", ylabel="spots", title="counts per spot")
    legend_outside(axis, title="slide")
    return finish(fig, axis, show, save, ax is None)


def genes_kept(adata, ax=None, show: bool | None = None, save=None):
    """Genes (and spots) remaining after each protocol step, from ``uns['spared']['steps']``."""
    from spared.pp import step_table

    steps = step_table(adata)
    fig, axis = new_axes(ax, figsize=(6, 3.6))
    pos = np.arange(len(steps))
    axis.plot(pos, steps["n_genes"], "o-", label="genes")
    axis.plot(pos, steps["n_spots"], "s--", label="spots")
    axis.set_xticks(pos, steps["step"], rotation=60, ha="right", fontsize="small")
    axis.set(yscale="log", ylabel="count", title="genes and spots after each step")
    legend_outside(axis)
    return finish(fig, axis, show, save, ax is None)


def missing_fraction(adata, slide_key: str = "slide_id", ax=None, show: bool | None = None, save=None):
    """Fraction of missing values per slide: raw, after the median filter, after SpaCKLE completion."""
    from matplotlib.ticker import PercentFormatter

    fig, axis = new_axes(ax, figsize=(6.5, 3.6))
    table = missing_table(adata, slide_key)
    # a stage with nothing missing draws no bar: it is named in the title instead of a legend entry
    drawn = [c for c in table.columns if (table[c].fillna(0) > 0).any()]
    empty = [c for c in table.columns if c not in drawn]
    width = 0.8 / max(len(drawn), 1)
    pos = np.arange(table.shape[0])
    for k, column in enumerate(drawn):
        axis.bar(pos + k * width, table[column], width, label=column)
    axis.set_xticks(pos + width * (len(drawn) - 1) / 2, table.index, rotation=30, ha="right")
    axis.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    title = "missing values per slide" + (f"\n(none left after {', '.join(empty)})" if empty else "")
    axis.set(ylabel="values missing", ylim=(0, 1), title=title)
    legend_outside(axis)
    return finish(fig, axis, show, save, ax is None)


def missing_table(adata, slide_key: str = "slide_id"):
    """Per-slide missing fraction of the kept genes at each stage (a DataFrame; columns = stages)."""
    import pandas as pd

    stages = {"raw": ~adata.layers["mask"]}
    if "d_log1p" in adata.layers:
        stages["median filter"] = np.asarray(adata.layers["d_log1p"]) == 0
    if "c_t_log1p" in adata.layers:
        stages["SpaCKLE"] = ~np.isfinite(np.asarray(adata.layers["c_t_log1p"]))
    slides = adata.obs[slide_key].astype(str).to_numpy()
    return pd.DataFrame({name: {s: float(m[slides == s].mean()) for s in pd.unique(slides)}
                         for name, m in stages.items()})


def moran_ranking(adata, key: str = "d_log1p_moran", ax=None, show: bool | None = None, save=None):
    """Moran's I of the kept genes, sorted (the gene selection's ranking)."""
    fig, axis = new_axes(ax)
    values = np.sort(adata.var[key].to_numpy())[::-1]
    axis.plot(np.arange(1, values.size + 1), values, ".-")
    axis.set(xlabel="gene rank", ylabel="Moran's I", title="spatial autocorrelation of kept genes")
    return finish(fig, axis, show, save, ax is None)

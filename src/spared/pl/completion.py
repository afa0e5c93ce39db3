"""Completion figures: error of each method as the fraction of masked real values grows."""

from __future__ import annotations

import numpy as np
from matplotlib.ticker import PercentFormatter

from spared.pl._figure import better_label, finish, legend_outside, new_axes


def completion_curve(results, metric: str = "MSE", ax=None, show: bool | None = None, save=None):
    """Plot ``metric`` against the masking fraction, one line per completion method.

    ``results`` is a long table with columns ``method``, ``mask_fraction`` and ``metric`` (several rows per
    point, e.g. seeds, are averaged and drawn with their standard deviation).
    """
    needed = {"method", "mask_fraction", metric}
    if not needed <= set(results.columns):
        raise KeyError(f"completion results need columns {sorted(needed)}; found {list(results.columns)}")
    fig, axis = new_axes(ax)
    stats = results.groupby(["method", "mask_fraction"])[metric].agg(["mean", "std"]).reset_index()
    undefined = []
    for method, rows in stats.groupby("method", sort=False):
        if not np.isfinite(rows["mean"]).any():  # nothing to draw: named in the title, not in the legend
            undefined.append(str(method))
            continue
        axis.errorbar(rows["mask_fraction"], rows["mean"], yerr=np.nan_to_num(rows["std"]), marker="o",
                      capsize=3, label=str(method))
    title = f"completion {metric}" + (f"\n(undefined for {', '.join(undefined)})" if undefined else "")
    axis.set(xlabel="fraction of measured values hidden", ylabel=better_label(metric), title=title)
    axis.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    legend_outside(axis, title="method")
    return finish(fig, axis, show, save, ax is None)

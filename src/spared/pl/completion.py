"""Completion figures: error of each method as the fraction of masked real values grows."""

from __future__ import annotations

import numpy as np

from spared.pl._figure import finish, new_axes


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
    for method, rows in stats.groupby("method"):
        axis.errorbar(rows["mask_fraction"], rows["mean"], yerr=np.nan_to_num(rows["std"]), marker="o",
                      capsize=3, label=str(method))
    axis.set(xlabel="fraction of real values masked", ylabel=metric, title=f"completion {metric}")
    axis.legend(fontsize="small")
    return finish(fig, axis, show, save, ax is None)

"""Benchmark figures: one bar per target (raw, median, completed) per model, and a model × dataset heatmap."""

from __future__ import annotations

import numpy as np

from spared.pl._figure import better_label, finish, legend_outside, new_axes


def _check(results, metric: str) -> None:
    needed = {"model", "dataset", "target", metric}
    if not needed <= set(results.columns):
        raise KeyError(f"benchmark results need columns {sorted(needed)}; found {list(results.columns)}")


def benchmark_bars(results, metric: str = "MSE", dataset: str | None = None, ax=None, show: bool | None = None,
                   save=None):
    """Bars of ``metric`` per model, one per target side by side (mean ± std over seeds).

    Targets are the ``target`` column's values (names or labels such as ``"completed w=0.5"``), in table order.
    """
    from spared.bench.targets import label_order

    _check(results, metric)
    rows = results if dataset is None else results[results["dataset"] == dataset]
    stats = rows.groupby(["model", "target"])[metric].agg(["mean", "std"]).unstack("target")
    fig, axis = new_axes(ax, figsize=(max(4.0, 0.9 * len(stats) + 2.5), 3.6))
    pos = np.arange(len(stats))
    # a target with no finite value draws no bar, so it gets no legend entry either
    targets = [t for t in label_order(set(stats["mean"].columns)) if np.isfinite(stats["mean"][t]).any()]
    width = 0.8 / max(len(targets), 1)
    for k, target in enumerate(targets):
        axis.bar(pos + k * width, stats["mean"][target], width, yerr=np.nan_to_num(stats["std"][target]),
                 capsize=3, label=f"{target} targets")
    axis.set_xticks(pos + width * (len(targets) - 1) / 2, stats.index, rotation=30, ha="right")
    axis.set(ylabel=better_label(metric), title=f"{metric} by model" + (f" ({dataset})" if dataset else ""))
    legend_outside(axis)
    return finish(fig, axis, show, save, ax is None)


def benchmark_heatmap(results, metric: str = "MSE", target: str = "completed", ax=None, show: bool | None = None,
                      save=None):
    """Heatmap of mean ``metric`` over seeds, models × datasets, for one target."""
    _check(results, metric)
    table = results[results["target"] == target].pivot_table(index="model", columns="dataset", values=metric,
                                                             aggfunc="mean")
    fig, axis = new_axes(ax, figsize=(1.2 * table.shape[1] + 3, 0.45 * table.shape[0] + 2))
    image = axis.imshow(table.to_numpy(), cmap="viridis_r" if metric in ("MSE", "MAE") else "viridis",
                        aspect="auto")
    axis.set_xticks(np.arange(table.shape[1]), table.columns, rotation=30, ha="right")
    axis.set_yticks(np.arange(table.shape[0]), table.index)
    for (i, j), value in np.ndenumerate(table.to_numpy()):
        axis.text(j, i, f"{value:.3f}", ha="center", va="center", color="w", fontsize="small")
    fig.colorbar(image, ax=axis, label=better_label(metric))
    axis.set_title(f"{metric}, {target} targets")
    return finish(fig, axis, show, save, ax is None)

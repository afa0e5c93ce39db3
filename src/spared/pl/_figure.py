"""Scanpy-style figure plumbing: ``ax=`` to draw into, ``show=`` to display, ``save=`` to write a file."""

from __future__ import annotations

from pathlib import Path


def new_axes(ax=None, ncols: int = 1, figsize: tuple[float, float] | None = None):
    """Return ``(fig, axes)``: the given axes, or a new figure with ``ncols`` panels."""
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        import os

        if not os.environ.get("DISPLAY") and os.name != "nt":
            matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax.figure if not isinstance(ax, list | tuple) else ax[0].figure, ax
    fig, axes = plt.subplots(1, ncols, figsize=figsize or (4.2 * ncols, 3.6), squeeze=ncols == 1, layout="constrained")
    return fig, axes if ncols == 1 else list(axes[0])


def finish(fig, ax, show: bool | None, save: str | Path | None, created: bool):
    """Save and/or show a figure; return the axes unless the figure was shown (scanpy's convention)."""
    import matplotlib.pyplot as plt

    if save is not None:
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save, dpi=120, bbox_inches="tight")
    if show is None:
        show = created and save is None and plt.get_backend().lower() != "agg"
    if show:
        plt.show()
        return None
    return ax


def legend_outside(axis, **kwargs) -> None:
    """A legend to the right of the axes, never over the data; only entries whose artists drew something."""
    handles, labels = axis.get_legend_handles_labels()
    if handles:
        axis.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                    fontsize="small", **kwargs)


def better_label(metric: str) -> str:
    """``"MSE (lower is better)"``: an axis label that says which way is better."""
    from spared.metrics import BETTER

    return f"{metric} ({BETTER[metric]} is better)" if metric in BETTER else metric

"""A grid of spot image patches, to eyeball what a model will see."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from spared.pl._figure import finish, new_axes


def patches(adata: Any, n: int = 16, store: Any = None, ax: Any = None, show: bool | None = None,
            save: str | Path | None = None, gap: int = 4) -> Any:
    """Show ``n`` patches spread evenly over the collection in a square grid, labelled by slide.

    Parameters
    ----------
    adata
        Collection with ``uns['spared']['patches']`` (unless ``store`` is given).
    n
        Number of patches (capped at the number of spots).
    store
        A :class:`spared.io.patches.PatchStore` or a path; defaults to the one recorded in ``adata``.
    ax
        Matplotlib axes to draw the mosaic into.
    show, save
        Scanpy-style: display the figure / write it to ``save``.
    gap
        White pixels between patches.

    Returns
    -------
    The axes, unless the figure was shown.
    """
    from spared.io.patches import PatchStore

    if store is None:
        store = PatchStore.from_adata(adata)
    elif not isinstance(store, PatchStore):
        store = PatchStore(store)
    if len(store) != adata.n_obs:
        raise ValueError(f"the patch store holds {len(store)} patches but adata has {adata.n_obs} spots; "
                         f"re-extract patches after filtering spots")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    picks = np.unique(np.linspace(0, adata.n_obs - 1, min(n, adata.n_obs)).round().astype(np.int64))
    tiles = store[picks]
    cols = int(np.ceil(np.sqrt(picks.size)))
    rows = int(np.ceil(picks.size / cols))
    size = tiles.shape[1]
    step = size + gap
    mosaic = np.full((rows * step - gap, cols * step - gap, 3), 255, dtype=np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        mosaic[r * step:r * step + size, c * step:c * step + size] = tile
    created = ax is None
    fig, ax = new_axes(ax, figsize=(1.3 * cols + 0.4, 1.3 * rows + 0.4))
    ax.imshow(mosaic)
    if "slide_id" in adata.obs:
        labels = adata.obs["slide_id"].astype(str).to_numpy()[picks]
        for k, label in enumerate(labels):
            r, c = divmod(k, cols)
            ax.text(c * step + 3, r * step + 3, label, fontsize=6, va="top", ha="left",
                    bbox={"facecolor": "white", "alpha": 0.7, "pad": 1, "linewidth": 0})
    ax.set_title(f"{picks.size} of {adata.n_obs} patches ({size}×{size} px)", fontsize="small")
    ax.set_axis_off()
    return finish(fig, ax, show, save, created)

"""Spatial maps of a gene on the slide image, several layers side by side."""

from __future__ import annotations

import numpy as np

from spared.pl._figure import finish, new_axes

#: Layers shown by default and their panel titles (only those present are drawn).
DEFAULT_PANELS = {"log1p": "raw", "d_log1p": "median filter", "c_t_log1p": "SpaCKLE",
                  "c_true_log1p": "truth (simulated)"}


def spatial_gene(adata, gene: str, layers: dict[str, str] | list[str] | None = None, slide: str | None = None,
                 slide_key: str = "slide_id", spot_size: float | None = None, ax=None,
                 show: bool | None = None, save=None):
    """Draw ``gene`` of one slide on its image, one panel per layer (raw, median, SpaCKLE, truth).

    ``gene`` may be an Ensembl id (var name) or a symbol (``var['gene_symbol']``).
    """
    idx = _gene_index(adata, gene)
    panels = _panels(adata, layers)
    slide = slide or str(adata.obs[slide_key].iloc[0])
    sel = (adata.obs[slide_key].astype(str) == slide).to_numpy()
    if not sel.any():
        raise KeyError(f"slide {slide!r} not found; slides: {sorted(adata.obs[slide_key].astype(str).unique())}")
    fig, axes = new_axes(ax, ncols=len(panels), figsize=(4.0 * len(panels) + 1.0, 4.2))
    axes = axes if isinstance(axes, list) else [axes]
    image, scale, diameter = _slide_image(adata, slide)
    xy = np.asarray(adata.obsm["spatial"])[sel] * scale
    values = {name: np.asarray(adata.layers[name])[sel, idx] for name in panels}
    vmin = min(float(v.min()) for v in values.values())
    vmax = max(float(v.max()) for v in values.values())
    for axis, (name, title) in zip(axes, panels.items(), strict=True):
        if image is not None:
            axis.imshow(image)
        else:
            axis.set(xlim=(xy[:, 0].min() - diameter, xy[:, 0].max() + diameter),
                     ylim=(xy[:, 1].min() - diameter, xy[:, 1].max() + diameter))
        size = spot_size or _marker_area(axis, diameter * scale)
        points = axis.scatter(xy[:, 0], xy[:, 1], c=values[name], s=size, cmap="viridis", vmin=vmin, vmax=vmax)
        axis.set_title(f"{title}\n{name}", fontsize="small")
        axis.set_axis_off()
        if image is None:
            axis.invert_yaxis()
            axis.set_aspect("equal")
    fig.colorbar(points, ax=axes, shrink=0.7, label=f"{gene_label(adata, gene)}: log2(TPM + 1)")
    fig.suptitle(f"{gene_label(adata, gene)}, slide {slide}", fontsize="medium")
    return finish(fig, axes, show, save, ax is None)


def gene_label(adata, gene: str) -> str:
    """How a gene is named in figures: its symbol (``var['gene_symbol']``) when known, else its var name."""
    idx = _gene_index(adata, gene)
    if "gene_symbol" in adata.var:
        symbol = adata.var["gene_symbol"].iloc[idx]
        if isinstance(symbol, str) and symbol.strip() and symbol.lower() != "nan":
            return symbol
    return str(adata.var_names[idx])


def _marker_area(axis, diameter: float) -> float:
    """Scatter marker area (points²) that draws a spot of ``diameter`` data units at the axes' current scale."""
    x0, x1 = axis.get_xlim()
    width_pt = axis.get_window_extent().width * 72 / axis.figure.dpi
    return max(1.0, (diameter * width_pt / abs(x1 - x0)) ** 2)


def _gene_index(adata, gene: str) -> int:
    if gene in adata.var_names:
        return int(adata.var_names.get_loc(gene))
    if "gene_symbol" in adata.var and (adata.var["gene_symbol"] == gene).any():
        return int(np.flatnonzero((adata.var["gene_symbol"] == gene).to_numpy())[0])
    raise KeyError(f"gene {gene!r} is neither a var name nor a gene_symbol of this collection")


def _panels(adata, layers) -> dict[str, str]:
    if layers is None:
        panels = {k: v for k, v in DEFAULT_PANELS.items() if k in adata.layers}
    elif isinstance(layers, dict):
        panels = dict(layers)
    else:
        panels = {name: DEFAULT_PANELS.get(name, name) for name in layers}
    missing = [name for name in panels if name not in adata.layers]
    if missing or not panels:
        raise KeyError(f"layers {missing or list(DEFAULT_PANELS)} not found; available: {list(adata.layers)}")
    return panels


def _slide_image(adata, slide: str):
    """The slide's hires image, the factor from full-res pixels to it, and the spot diameter (full res)."""
    info = adata.uns.get("spatial", {}).get(slide, {})
    scalefactors = info.get("scalefactors", {})
    diameter = float(scalefactors.get("spot_diameter_fullres", 20.0))
    image = info.get("images", {}).get("hires")
    if image is None:
        return None, 1.0, diameter
    return np.asarray(image), float(scalefactors.get("tissue_hires_scalef", 1.0)), diameter

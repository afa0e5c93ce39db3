"""Checked, torch-free views of an AnnData shared by SpaCKLE and the completion baselines.

Every completion method reads the same thing: a layer whose missing entries (``layers["mask"] == False``)
are unknown, and, for spatial methods, each spot's nearest spots of its own slide.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from spared.data_model import dense
from spared.graph import knn_indices


def observed_layer(adata, layer: str, genes: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The layer with its missing entries set to 0, and the boolean mask of real entries.

    Parameters
    ----------
    adata
        Collection with ``layers[layer]`` and a boolean ``layers["mask"]`` (True = real measurement).
    layer
        Expression layer to read (e.g. ``"c_d_log1p"``).
    genes
        Gene order expected by a trained model: the columns are returned in this order. Genes missing from
        ``adata`` (or present in ``adata`` but unknown to the model) raise a ``ValueError`` naming them.

    Returns
    -------
    ``(values, real)``: ``(n, G)`` C-contiguous float32 with zeros where ``real`` is False, and ``(n, G)`` bool.
    """
    if layer not in adata.layers:
        raise KeyError(f"layer {layer!r} not found; available layers: {sorted(adata.layers)}; run "
                       f"spared.pp.process first or pass the layer that holds log expression")
    if "mask" not in adata.layers:
        raise KeyError("layer 'mask' (True where a value was measured, False where it is missing) not found; "
                       f"available layers: {sorted(adata.layers)}; run spared.pp.process, or set "
                       "adata.layers['mask'] = adata.layers['tpm'] != 0")
    real = dense(adata.layers["mask"])
    if real.dtype != bool:
        raise TypeError(f"layer 'mask' must be boolean (True = real value), found dtype {real.dtype}; "
                        f"convert it with .astype(bool)")
    values = dense(adata.layers[layer]).astype(np.float32, copy=False)
    if not np.isfinite(values).all():
        bad = np.argwhere(~np.isfinite(values))
        raise ValueError(f"layer {layer!r} contains {len(bad)} NaN/inf value(s) (first at spot "
                         f"{adata.obs_names[bad[0, 0]]!r}, gene {adata.var_names[bad[0, 1]]!r}); missing "
                         f"values are marked by layers['mask'] == False, not NaN: replace them by 0")
    if genes is not None:
        order = gene_order(adata.var_names, genes)
        values, real = values[:, order], real[:, order]
    return np.ascontiguousarray(np.where(real, values, np.float32(0))), np.ascontiguousarray(real)


def spot_depth(adata, key: str) -> np.ndarray:
    """``log(1 + obs[key])`` as float32: each spot's sequencing depth outside the gene panel.

    Raises a ``KeyError`` when the column is absent and a ``ValueError`` naming a spot whose value is not a
    finite count >= 0.
    """
    if key not in adata.obs:
        raise KeyError(f"obs column {key!r} with each spot's counts outside the gene panel not found; available "
                       f"columns: {list(adata.obs.columns)}; spared.pp.process writes it, or set depth_key=None")
    values = pd.to_numeric(adata.obs[key], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values) | (values < 0))
    if bad.size:
        raise ValueError(f"obs[{key!r}] must hold counts >= 0, found {adata.obs[key].iloc[bad[0]]!r} at spot "
                         f"{adata.obs_names[bad[0]]!r} ({bad.size} bad value(s))")
    return np.log1p(values).astype(np.float32)


def gene_order(available: pd.Index | Sequence[str], genes: Sequence[str]) -> np.ndarray:
    """Column positions of ``genes`` in ``available``; raise naming the genes that differ."""
    available = pd.Index(available)
    missing = [g for g in genes if g not in available]
    extra = sorted(set(available) - set(genes))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} gene(s) of the model are missing from the data: {_names(missing)}")
        if extra:
            parts.append(f"{len(extra)} gene(s) of the data are unknown to the model: {_names(extra)}")
        raise ValueError("the data's genes differ from the genes the model was trained on; "
                         + "; ".join(parts) + ". Subset the data to the model's genes or train a new model")
    return available.get_indexer(list(genes))


def spot_layout(adata, slide_key: str = "slide_id", spatial_key: str = "spatial") -> tuple[np.ndarray, np.ndarray]:
    """Each spot's slide label and coordinates; a ``KeyError`` naming what is available when either is absent."""
    if slide_key not in adata.obs:
        raise KeyError(f"obs column {slide_key!r} with slide labels not found; available columns: "
                       f"{list(adata.obs.columns)}")
    if spatial_key not in adata.obsm:
        raise KeyError(f"obsm[{spatial_key!r}] with spot coordinates not found; available: {list(adata.obsm)}")
    return adata.obs[slide_key].to_numpy(), np.asarray(adata.obsm[spatial_key])


def neighbour_table(adata, num_neighs: int, slide_key: str = "slide_id",
                    spatial_key: str = "spatial") -> np.ndarray:
    """``(n, 1 + num_neighs)`` int64: each spot followed by its ``num_neighs`` nearest spots of the same slide.

    Raises a ``ValueError`` naming the slide when a slide has a single spot or too few spots.
    """
    slides, coords = spot_layout(adata, slide_key, spatial_key)
    sizes = pd.Series(slides).value_counts()
    single = sizes[sizes == 1].index.tolist()
    if single:
        raise ValueError(f"slide(s) {single} have a single spot: completion reads each spot with neighbours "
                         f"of its own slide, so drop these slides first")
    small = sizes[sizes <= num_neighs]
    if len(small):
        raise ValueError(f"slide(s) {small.to_dict()} have fewer than {num_neighs + 1} spots but "
                         f"{num_neighs} same-slide neighbours per spot were requested; lower num_neighs to at "
                         f"most {int(small.min()) - 1} or drop these slides")
    neighbours = knn_indices(coords, slides, num_neighs)
    return np.hstack([np.arange(adata.n_obs, dtype=np.int64)[:, None], neighbours])


def split_rows(adata, split_key: str, splits: Sequence[str]) -> np.ndarray:
    """Positions of the spots whose ``obs[split_key]`` is in ``splits``."""
    if split_key not in adata.obs:
        raise KeyError(f"obs column {split_key!r} (train/val/test per slide) not found; available columns: "
                       f"{list(adata.obs.columns)}")
    return np.flatnonzero(adata.obs[split_key].astype(str).isin(list(splits)).to_numpy())


def _names(names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(map(str, names[:limit]))
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")

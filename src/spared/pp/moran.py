"""Moran's I per gene (SPEC §2.7): spatial autocorrelation on each slide's kNN graph, averaged over slides.

On a slide with ``n`` spots, row-standardised weights ``w`` (each spot's neighbour weights sum to 1) and
``z`` the gene's values minus their slide mean,

    I = n / S0 * sum_ij w_ij z_i z_j / sum_i z_i**2,      S0 = sum_ij w_ij,

so ``S0 = n`` unless some spot has no neighbour. A gene that is constant on a slide has no defined I there
(NaN); the gene's score is the mean over the slides where it is defined, NaN when it is constant on all.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from spared.data_model import require
from spared.graph import check_within_groups, recipe_graph
from spared.inplace import subset, target

if TYPE_CHECKING:
    from anndata import AnnData


def slide_morans_i(
    values: np.ndarray, adjacency: sp.spmatrix, groups: np.ndarray | pd.Series
) -> tuple[np.ndarray, np.ndarray]:
    """Moran's I of every gene on every slide, all genes and slides at once.

    Parameters
    ----------
    values
        ``(n, G)`` expression matrix (finite).
    adjacency
        ``(n, n)`` sparse spatial weights built per slide (e.g. :func:`spared.graph.spatial_graph`);
        rows are standardised here. Edges may not join different slides.
    groups
        ``(n,)`` slide labels.

    Returns
    -------
    ``(labels, I)``: the slide labels in order of first appearance and the ``(n_slides, G)`` float64
    array of I (NaN where the gene is constant on the slide).
    """
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"values must be a 2-D (spots × genes) array, got {values.ndim} dimension(s)")
    if not np.issubdtype(values.dtype, np.number) or np.issubdtype(values.dtype, np.complexfloating):
        raise TypeError(f"values must be real numbers, got dtype {values.dtype}")
    if values.shape[0] == 0:
        raise ValueError("values has no spots; Moran's I needs at least one slide with spots")
    values = values.astype(np.float64, copy=False)
    if not np.isfinite(values).all():
        bad = np.argwhere(~np.isfinite(values))[0]
        raise ValueError(f"values must be finite but contain NaN/inf (first at spot {bad[0]}, gene "
                         f"{bad[1]}); fill or drop them before computing Moran's I")
    labels = np.asarray(groups)
    if labels.ndim != 1 or labels.shape[0] != values.shape[0]:
        raise ValueError(f"groups must hold one slide label per spot: expected shape ({values.shape[0]},), "
                         f"got {labels.shape}")
    check_within_groups(adjacency, labels)
    codes, uniques = pd.factorize(labels, use_na_sentinel=False)
    n = values.shape[0]

    weights = sp.csr_matrix(adjacency, dtype=np.float64)
    row_sums = np.asarray(weights.sum(axis=1)).ravel()
    scale = np.divide(1.0, row_sums, out=np.zeros_like(row_sums), where=row_sums != 0)
    weights = sp.diags(scale) @ weights
    member = sp.csr_matrix((np.ones(n), (codes, np.arange(n))), shape=(len(uniques), n))
    n_spots = np.asarray(member.sum(axis=1)).ravel()
    s0 = member @ (row_sums != 0).astype(np.float64)  # row-standardised: each connected spot adds 1

    z = values - (member @ values / n_spots[:, None])[codes]
    cross = member @ (z * (weights @ z))
    squares = member @ (z * z)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (n_spots / s0)[:, None] * cross / squares

    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(len(uniques)))
    constant = np.maximum.reduceat(values[order], starts) == np.minimum.reduceat(values[order], starts)
    out[constant] = np.nan
    return np.asarray(uniques), out


def morans_i(values: np.ndarray, adjacency: sp.spmatrix, groups: np.ndarray | pd.Series) -> np.ndarray:
    """Moran's I of every gene: the mean over slides of :func:`slide_morans_i` (constant slides skipped).

    Returns a ``(G,)`` float64 array, NaN for a gene constant on every slide.
    """
    per_slide = slide_morans_i(values, adjacency, groups)[1]
    defined = ~np.isnan(per_slide)
    total = np.where(defined, per_slide, 0.0).sum(axis=0)
    count = defined.sum(axis=0)
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)


def moran_genes(
    adata: AnnData,
    layer: str = "d_log1p",
    n_neighs: int = 6,
    slide_key: str = "slide_id",
    key_added: str = "d_log1p_moran",
    graphs: str = "spared",
    copy: bool = False,
) -> AnnData | None:
    """Store each gene's slide-averaged Moran's I of ``adata.layers[layer]`` in ``adata.var[key_added]``.

    The weights are each slide's ``n_neighs``-nearest-neighbour graph (6 hexagonal, 8 square) from
    ``obsm["spatial"]``, row-standardised. ``graphs="original"`` builds it as the original SpaRED library does
    (:func:`spared.graph.original_spatial_graph`: squidpy's kNN graph, scikit-learn's tie-breaking among
    equidistant spots); the default ``"spared"`` breaks such ties in SciPy's k-d tree order. ``copy=True``
    writes into a copy and returns it (else ``adata`` is changed and ``None`` returned).
    """
    require(adata, layer, slide_key,
            hint="run the adaptive median filter first (spared.impute.median.adaptive_median_filter)")
    data = adata.layers[layer]
    dense = data.toarray() if sp.issparse(data) else np.asarray(data)
    adjacency = recipe_graph(adata, graphs, n_neighs, slide_key)
    scores = morans_i(dense, adjacency, adata.obs[slide_key].to_numpy())
    adata = target(adata, copy)
    adata.var[key_added] = scores
    return adata if copy else None


def select_top_moran(adata: AnnData, n_top: int, key: str = "d_log1p_moran", copy: bool = False) -> AnnData | None:
    """Keep the ``n_top`` genes of highest ``var[key]``, ordered by descending I.

    The other genes are dropped from ``adata`` (``copy=False``, returns ``None``) or from the copy returned
    (``copy=True``). Ties keep the original gene order; NaN scores rank last. Asking for more genes than there
    are keeps them all (sorted) with a warning.
    """
    if key not in adata.var:
        raise KeyError(f"var column {key!r} not found; compute it with spared.pp.moran.moran_genes first")
    if isinstance(n_top, bool) or not isinstance(n_top, int | np.integer) or n_top < 1:
        raise ValueError(f"n_top must be a positive integer, got {n_top!r}")
    if n_top > adata.n_vars:
        warnings.warn(f"asked for the top {n_top} Moran genes but only {adata.n_vars} genes are left; "
                      f"keeping all of them", UserWarning, stacklevel=2)
    scores = adata.var[key].to_numpy(dtype=np.float64)
    order = np.argsort(-scores, kind="stable")  # NaN sorts last
    out = subset(adata, var=order[:n_top], copy=copy)
    return out if copy else None

"""Spatial neighbour graphs, always built per slide (slides never leak into each other)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.spatial import cKDTree


def knn_indices(coords: np.ndarray, groups: np.ndarray | pd.Series, k: int) -> np.ndarray:
    """Global indices of each spot's ``k`` nearest spots of the same group (itself excluded).

    Parameters
    ----------
    coords
        ``(n, 2)`` spot coordinates.
    groups
        ``(n,)`` slide labels; neighbours are searched only within a spot's own slide.
    k
        Neighbours per spot.

    Returns
    -------
    ``(n, k)`` int64 array, sorted by distance (equal distances in k-d tree order). Raises if a slide has
    ``<= k`` spots.
    """
    coords = np.asarray(coords, dtype=np.float64)
    labels = np.asarray(groups)
    if coords.ndim != 2 or coords.shape[0] != labels.shape[0]:
        raise ValueError(f"coords must be (n, 2) with one group label per row; got {coords.shape}, "
                         f"{labels.shape[0]} labels")
    if not np.isfinite(coords).all():
        raise ValueError("spot coordinates contain NaN or inf; fix obsm['spatial'] before building a graph")
    out = np.empty((coords.shape[0], k), dtype=np.int64)
    for label in pd.unique(labels):
        idx = np.flatnonzero(labels == label)
        if idx.size <= k:
            raise ValueError(f"slide {label!r} has {idx.size} spot(s) but {k} neighbours per spot were "
                             f"requested; use fewer neighbours or drop the slide")
        _, nn = cKDTree(coords[idx]).query(coords[idx], k=k + 1)
        out[idx] = idx[_drop_self(nn, np.arange(idx.size))]
    return out


def _drop_self(nn: np.ndarray, self_idx: np.ndarray) -> np.ndarray:
    """Remove each row's own index from a (n, k+1) neighbour table (keeping order)."""
    is_self = nn == self_idx[:, None]
    # rows where duplicated coordinates pushed the spot itself out of first place still drop exactly one entry
    no_self = ~is_self.any(axis=1)
    is_self[no_self, -1] = True
    return nn[~is_self].reshape(nn.shape[0], nn.shape[1] - 1)


def spatial_graph(
    adata, n_neighs: int = 6, slide_key: str = "slide_id", spatial_key: str = "spatial"
) -> sp.csr_matrix:
    """Directed k-nearest-neighbour adjacency (binary CSR, ``n × n``), block-diagonal over slides.

    ``n_neighs=6`` is the hexagonal Visium lattice, ``8`` a square grid (legacy ST).
    """
    coords = np.asarray(adata.obsm[spatial_key])
    nn = knn_indices(coords, adata.obs[slide_key].to_numpy(), n_neighs)
    n = nn.shape[0]
    rows = np.repeat(np.arange(n), n_neighs)
    return sp.csr_matrix((np.ones(rows.size, dtype=np.float32), (rows, nn.ravel())), shape=(n, n))


def khop_neighborhoods(adjacency: sp.spmatrix, max_hops: int) -> list[sp.csr_matrix]:
    """Boolean reachability matrices ``R_1..R_max_hops`` on the symmetrised graph, each including self.

    ``R_h[i, j]`` is True when spot ``j`` lies within ``h`` hops of spot ``i`` (``j == i`` included).
    """
    a = adjacency.astype(bool)
    a = (a + a.T).tocsr()
    eye = sp.identity(a.shape[0], dtype=bool, format="csr")
    reach = (eye + a).tocsr()
    out = [reach]
    for _ in range(max_hops - 1):
        reach = (reach + reach @ a).astype(bool).tocsr()
        out.append(reach)
    return out


def check_within_groups(adjacency: sp.spmatrix, groups: np.ndarray | pd.Series) -> None:
    """Raise ``ValueError`` unless ``adjacency`` is ``n × n`` and no edge joins spots of different groups."""
    labels = np.asarray(groups)
    n = labels.shape[0]
    if not sp.issparse(adjacency) or adjacency.shape != (n, n):
        found = adjacency.shape if hasattr(adjacency, "shape") else type(adjacency).__name__
        raise ValueError(f"adjacency must be a scipy sparse {n} × {n} matrix (one row per spot); got "
                         f"{found}; build it with spared.graph.spatial_graph")
    coo = adjacency.tocoo()
    codes = pd.factorize(labels)[0]
    crossing = int(np.count_nonzero(codes[coo.row] != codes[coo.col]))
    if crossing:
        raise ValueError(f"{crossing} edge(s) of the spatial graph join spots of different slides; build "
                         f"the graph per slide with spared.graph.spatial_graph")


#: Neighbours within 1.2 lattice spacings of an interior spot: 6 on a hexagonal array, 4 on a square grid.
_LATTICE_NEIGHBOURS = {"hexagonal": 6, "square": 4}


def detect_geometry(coords: np.ndarray, groups: np.ndarray | pd.Series, min_spots: int = 20) -> str | None:
    """The spot lattice of a collection from its coordinates: ``"hexagonal"`` (Visium), ``"square"`` (legacy ST,
    Slide-seq-like grids) or ``None`` when it cannot be told (too few spots, no regular lattice, slides disagree).

    Per slide, the lattice spacing is the median nearest-neighbour distance ``s``; each spot counts its
    neighbours closer than ``1.2 s``. Interior spots of a hexagonal array have 6 such neighbours, of a square
    grid 4 (the diagonals lie at ``1.41 s``); the 90th percentile of the counts decides.
    """
    coords = np.asarray(coords, dtype=np.float64)
    labels = np.asarray(groups)
    found = set()
    for label in pd.unique(labels):
        xy = coords[labels == label]
        if xy.shape[0] < min_spots or not np.isfinite(xy).all():
            continue
        tree = cKDTree(xy)
        dist, _ = tree.query(xy, k=2)
        spacing = float(np.median(dist[:, 1]))
        if spacing <= 0:
            continue
        counts = np.array([len(n) - 1 for n in tree.query_ball_point(xy, r=1.2 * spacing)])
        top = int(np.percentile(counts, 90))
        found.add("hexagonal" if top in (5, 6) else "square" if top in (3, 4) else None)
    return found.pop() if len(found) == 1 else None

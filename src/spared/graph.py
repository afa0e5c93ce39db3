"""Spatial neighbour graphs, always built per slide (slides never leak into each other)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.spatial import cKDTree

#: Recipes for the spatial graphs (median windows, Moran weights): ours, or the original SpaRED library's.
GRAPH_RECIPES = ("spared", "original")


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

    ``n_neighs=6`` is the hexagonal Visium lattice, ``8`` a square grid (legacy ST): with ``8`` and
    ``obs['array_row']``/``['array_col']`` present the graph is :func:`square_grid_graph` (the spots of the
    3 × 3 block around each spot), since legacy-ST pixel positions sway too much for nearest neighbours.
    """
    if n_neighs == 8 and {"array_row", "array_col"} <= set(adata.obs.columns):
        return square_grid_graph(adata.obs["array_row"].to_numpy(), adata.obs["array_col"].to_numpy(),
                                 adata.obs[slide_key].to_numpy())
    coords = np.asarray(adata.obsm[spatial_key])
    nn = knn_indices(coords, adata.obs[slide_key].to_numpy(), n_neighs)
    n = nn.shape[0]
    rows = np.repeat(np.arange(n), n_neighs)
    return sp.csr_matrix((np.ones(rows.size, dtype=np.float32), (rows, nn.ravel())), shape=(n, n))


def square_grid_graph(rows: np.ndarray, cols: np.ndarray, groups: np.ndarray | pd.Series) -> sp.csr_matrix:
    """Symmetric binary adjacency of a square spot grid: spots of the same group whose array positions differ
    by at most 1 in row and column (up to 8 neighbours; fewer at the tissue edge and around gaps).

    Parameters
    ----------
    rows, cols
        ``(n,)`` integer array positions.
    groups
        ``(n,)`` slide labels; spots of different slides are never joined.
    """
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    codes = pd.factorize(np.asarray(groups))[0].astype(np.int64)
    span = int(max(np.ptp(rows), np.ptp(cols))) + 3 if rows.size else 3
    r, c = rows - rows.min(initial=0) + 1, cols - cols.min(initial=0) + 1
    keys = (codes * span + r) * span + c
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    sources, targets = [], []
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            if dr == dc == 0:
                continue
            wanted = keys + dr * span + dc
            at = np.minimum(np.searchsorted(sorted_keys, wanted), keys.size - 1)
            found = sorted_keys[at] == wanted
            sources.append(np.flatnonzero(found))
            targets.append(order[at[found]])
    src, dst = np.concatenate(sources), np.concatenate(targets)
    n = keys.size
    return sp.csr_matrix((np.ones(src.size, dtype=np.float32), (src, dst)), shape=(n, n))


def khop_neighborhoods(adjacency: sp.spmatrix, max_hops: int, directed: bool = False) -> list[sp.csr_matrix]:
    """Boolean reachability matrices ``R_1..R_max_hops``, each including self.

    ``R_h[i, j]`` is True when spot ``j`` lies within ``h`` hops of spot ``i`` (``j == i`` included): on the
    symmetrised graph by default, or along the edges' direction (``i → j``) when ``directed`` is True.
    """
    a = adjacency.astype(bool)
    a = (a if directed else a + a.T).tocsr()
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


def original_spatial_graph(
    adata, hex_geometry: bool = True, slide_key: str = "slide_id", spatial_key: str = "spatial"
) -> sp.csr_matrix:
    """The directed neighbour graph the original SpaRED library builds (with squidpy), per slide.

    Each spot points to its 6 nearest spots of the same slide (``hex_geometry``), or, on a square grid, to
    those of its 8 nearest spots closer than 1.3 × the slide's median neighbour distance. Neighbours are
    found by scikit-learn's ``NearestNeighbors(...).kneighbors()`` on each slide's coordinates in obs order,
    as squidpy does, so ties among equidistant spots are broken exactly as in the published SpaRED layers
    (:func:`spatial_graph` breaks them in SciPy's k-d tree order instead).

    Returns
    -------
    Binary CSR ``n × n`` adjacency, block-diagonal over slides, not symmetric.
    """
    try:
        from sklearn.neighbors import NearestNeighbors
    except ImportError as err:  # pragma: no cover - scikit-learn is a dependency
        raise ImportError("the original SpaRED graphs need scikit-learn: pip install 'scikit-learn>=1.4'") from err

    coords = np.asarray(adata.obsm[spatial_key], dtype=np.float64)
    labels = adata.obs[slide_key].to_numpy()
    if not np.isfinite(coords).all():
        raise ValueError("spot coordinates contain NaN or inf; fix obsm['spatial'] before building a graph")
    k = 6 if hex_geometry else 8
    rows, cols = [], []
    for label in pd.unique(labels):
        idx = np.flatnonzero(labels == label)
        if idx.size <= k:
            raise ValueError(f"slide {label!r} has {idx.size} spot(s) but the original graph links each spot "
                             f"to {k} neighbours; drop the slide")
        dist, nn = NearestNeighbors(n_neighbors=k, metric="euclidean").fit(coords[idx]).kneighbors()
        keep = np.ones(nn.shape, dtype=bool) if hex_geometry else dist < np.median(dist) * 1.3
        rows.append(np.repeat(idx, k)[keep.ravel()])
        cols.append(idx[nn[keep]])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    n = labels.shape[0]
    return sp.csr_matrix((np.ones(rows.size, dtype=np.float32), (rows, cols)), shape=(n, n))


def recipe_graph(adata, graphs: str, n_neighs: int, slide_key: str) -> sp.csr_matrix:
    """Each slide's ``n_neighs``-nearest-neighbour graph by recipe.

    ``"spared"``: :func:`spatial_graph`; ``"original"``: :func:`original_spatial_graph` (``n_neighs`` 6 for a
    hexagonal array, 8 for a square grid), the graph the original SpaRED library builds with squidpy.
    """
    if graphs == "spared":
        return spatial_graph(adata, n_neighs=n_neighs, slide_key=slide_key)
    if graphs != "original":
        raise ValueError(f"graphs must be one of {GRAPH_RECIPES}, got {graphs!r}")
    if n_neighs not in (6, 8):
        raise ValueError(f"the original SpaRED graphs link 6 (hexagonal array) or 8 (square grid) neighbours "
                         f"per spot, got n_neighs={n_neighs}")
    return original_spatial_graph(adata, hex_geometry=n_neighs == 6, slide_key=slide_key)


#: Degree of the spatial graph (median filter, Moran's I) on each spot lattice (SPEC §2.6).
GRAPH_DEGREE = {"hexagonal": 6, "square": 8}

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

"""Adaptive median filter: bit-for-bit agreement with a plain loop-and-np.median reference."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from spared.graph import spatial_graph
from spared.impute.median import adaptive_median, adaptive_median_filter, hop_ordered_neighbourhoods


def hex_coords(n_rows: int, n_cols: int) -> np.ndarray:
    """Centres of a Visium-like hexagonal lattice (every neighbour at distance 2)."""
    r, c = np.divmod(np.arange(n_rows * n_cols), n_cols)
    return np.column_stack([2.0 * c + (r % 2), np.sqrt(3.0) * r])


def two_slide_adata(values: np.ndarray, shapes=((12, 10), (9, 8))) -> ad.AnnData:
    coords = np.vstack([hex_coords(*s) for s in shapes])
    slides = np.repeat(["A", "B"], [shapes[0][0] * shapes[0][1], shapes[1][0] * shapes[1][1]])
    obs = pd.DataFrame({"slide_id": slides}, index=[f"s{i}" for i in range(slides.size)])
    var = pd.DataFrame(index=[f"g{j}" for j in range(values.shape[1])])
    return ad.AnnData(obs=obs, var=var, obsm={"spatial": coords}, layers={"log1p": values})


def bfs_windows(adjacency: sp.spmatrix, max_hops: int) -> list[list[list[int]]]:
    """windows[i][h - 1]: spots within h hops of i on the undirected graph, self included."""
    coo = adjacency.tocoo()
    nbrs: list[set[int]] = [set() for _ in range(adjacency.shape[0])]
    for r, c in zip(coo.row.tolist(), coo.col.tolist(), strict=True):
        nbrs[r].add(c)
        nbrs[c].add(r)
    windows = []
    for i in range(adjacency.shape[0]):
        seen, frontier, per_hop = {i}, [i], []
        for _ in range(max_hops):
            frontier = [v for u in frontier for v in nbrs[u] if v not in seen]
            frontier = list(dict.fromkeys(frontier))
            seen.update(frontier)
            per_hop.append(sorted(seen))
        windows.append(per_hop)
    return windows


def reference_filter(values, adjacency, groups, max_hops=4):
    windows = bfs_windows(adjacency, max_hops)
    out = values.copy()
    for g in range(values.shape[1]):
        for i in range(values.shape[0]):
            if values[i, g] != 0:
                continue
            for h in range(max_hops):
                med = np.median(values[windows[i][h], g])
                if med != 0:
                    out[i, g] = med
                    break
            else:
                slide = values[groups == groups[i], g]
                nonzero = slide[slide != 0]
                out[i, g] = np.median(nonzero) if nonzero.size else 0
    return out


def random_values(rng, n, n_genes, dtype, zero_frac=0.5, signed=False):
    continuous = rng.lognormal(0.0, 1.0, size=(n, n_genes))
    ties = rng.integers(1, 4, size=(n, n_genes)) * 0.5  # many equal values
    vals = np.where(rng.random((n, n_genes)) < 0.5, continuous, ties)
    if signed:
        vals *= rng.choice([-1.0, 1.0], size=vals.shape)
    frac = np.linspace(0.1, 0.95, n_genes)  # from barely to almost entirely missing
    if zero_frac is not None:
        frac[:] = zero_frac
    vals[rng.random((n, n_genes)) < frac] = 0
    return vals.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("signed", [False, True])
def test_matches_reference_bit_for_bit(dtype, signed):
    rng = np.random.default_rng(7)
    adata = two_slide_adata(np.zeros((192, 1)))
    values = random_values(rng, adata.n_obs, 24, dtype, zero_frac=None, signed=signed)
    values[:, 0] = 0  # all-zero gene: stays zero
    adjacency = spatial_graph(adata)
    groups = adata.obs["slide_id"].to_numpy()
    got = adaptive_median(values, adjacency, groups)
    want = reference_filter(values, adjacency, groups)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))
    assert not got[:, 0].any()
    nonzero = values != 0
    np.testing.assert_array_equal(got[nonzero], values[nonzero])


@pytest.mark.parametrize("max_hops", [1, 2, 5])
def test_random_graph_and_hops(max_hops):
    rng = np.random.default_rng(3)
    n = 150
    coords = rng.random((n, 2))
    slides = np.where(coords[:, 0] < 0.4, "left", "right")
    obs = pd.DataFrame({"slide_id": slides}, index=[str(i) for i in range(n)])
    adata = ad.AnnData(obs=obs, obsm={"spatial": coords})
    values = random_values(rng, n, 16, np.float32, zero_frac=0.6)
    adjacency = spatial_graph(adata, n_neighs=8)
    got = adaptive_median(values, adjacency, slides, max_hops=max_hops)
    want = reference_filter(values, adjacency, slides, max_hops=max_hops)
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


def test_hop_ordered_windows_are_bfs_balls():
    adata = two_slide_adata(np.zeros((192, 1)))
    adjacency = spatial_graph(adata)
    indptr, indices, hop_end = hop_ordered_neighbourhoods(adjacency, 4)
    for i, per_hop in enumerate(bfs_windows(adjacency, 4)):
        for h, ball in enumerate(per_hop):
            assert sorted(indices[indptr[i]:hop_end[i, h]].tolist()) == ball
    # a spot deep inside a hexagonal lattice sees 7, 19, 37, 61 spots
    lattice = ad.AnnData(obs=pd.DataFrame({"slide_id": ["A"] * 400}, index=[str(i) for i in range(400)]),
                         obsm={"spatial": hex_coords(20, 20)})
    indptr, _, hop_end = hop_ordered_neighbourhoods(spatial_graph(lattice), 4)
    assert (hop_end[210] - indptr[210]).tolist() == [7, 19, 37, 61]


def test_fallback_is_per_slide_and_never_crosses():
    n_a = 120
    values = np.zeros((192, 2), dtype=np.float32)
    # gene 0: all zero on slide A, mostly zero on B with three non-zero values -> fallback median 2.0
    values[[130, 150, 170], 0] = [1.0, 2.0, 9.0]
    # gene 1: sparse on both slides with different non-zero medians (4.0 on A, 1.5 on B)
    values[[0, 60, 119], 1] = [3.0, 4.0, 5.0]
    values[[121, 191], 1] = [1.0, 2.0]
    adata = two_slide_adata(values)
    got = adaptive_median_filter(adata, copy=True)
    out = got.layers["d_log1p"]
    assert not out[:n_a, 0].any()
    zeros_b = values[n_a:, 0] == 0
    np.testing.assert_array_equal(out[n_a:, 0][zeros_b], 2.0)
    np.testing.assert_array_equal(out[:n_a, 1][values[:n_a, 1] == 0], 4.0)
    np.testing.assert_array_equal(out[n_a:, 1][values[n_a:, 1] == 0], 1.5)
    assert "d_log1p" not in adata.layers  # copy=True leaves the input alone


def test_anndata_in_place_matches_array_function():
    rng = np.random.default_rng(11)
    adata = two_slide_adata(random_values(rng, 192, 8, np.float32))
    assert adaptive_median_filter(adata, key_added="filled") is None
    expected = adaptive_median(adata.layers["log1p"], spatial_graph(adata), adata.obs["slide_id"].to_numpy())
    np.testing.assert_array_equal(adata.layers["filled"], expected)


def test_bad_input_raises_clear_errors():
    rng = np.random.default_rng(0)
    adata = two_slide_adata(random_values(rng, 192, 4, np.float32))
    values = adata.layers["log1p"]
    adjacency = spatial_graph(adata)
    groups = adata.obs["slide_id"].to_numpy()
    nan_values = values.copy()
    nan_values[5, 2] = np.nan
    with pytest.raises(ValueError, match=r"NaN/inf \(first at spot 5, gene 2\)"):
        adaptive_median(nan_values, adjacency, groups)
    with pytest.raises(ValueError, match="192 × 192"):
        adaptive_median(values, adjacency[:100, :100], groups)
    with pytest.raises(ValueError, match=r"one slide label per spot: expected shape \(192,\)"):
        adaptive_median(values, adjacency, groups[:10])
    with pytest.raises(TypeError, match="float32 or float64, got int64"):
        adaptive_median(values.astype(np.int64), adjacency, groups)
    with pytest.raises(ValueError, match="2-D"):
        adaptive_median(values[:, 0], adjacency, groups)
    with pytest.raises(ValueError, match="max_hops must be an integer >= 1"):
        adaptive_median(values, adjacency, groups, max_hops=0)
    crossing = adjacency.tolil()
    crossing[0, 150] = 1
    with pytest.raises(ValueError, match="1 edge"):
        adaptive_median(values, crossing.tocsr(), groups)
    with pytest.raises(KeyError, match="layer 'counts' not found"):
        adaptive_median_filter(adata, layer="counts")
    with pytest.raises(KeyError, match="obs column 'patient' not found"):
        adaptive_median_filter(adata, slide_key="patient")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_window_median_arithmetic_matches_numpy(dtype):
    """Selection at every rank, ties, overflow to inf and subnormal halving all agree with np.median."""
    from spared.impute.median import _split_median

    rng = np.random.default_rng(5)
    info = np.finfo(dtype)
    pools = [
        rng.normal(size=200),
        rng.integers(-3, 4, size=200) * 0.5,  # ties and exact zeros
        np.array([info.max, info.max * 0.75, info.max * 0.5, 0.0, -info.max]),  # sums overflow
        np.array([info.smallest_subnormal, 2 * info.smallest_subnormal, 3 * info.smallest_subnormal, 0.0]),
    ]
    for pool in pools:
        pool = pool.astype(dtype)
        for _ in range(300):
            window = rng.choice(pool, size=int(rng.integers(1, 120)))
            neg = np.ascontiguousarray(window[window < 0])
            pos = np.ascontiguousarray(window[window > 0])
            n_zero = int(np.count_nonzero(window == 0))
            got = _split_median(neg.copy(), neg.size, n_zero, pos.copy(), pos.size)
            with np.errstate(over="ignore"):
                want = np.median(window)
            assert np.array(got, dtype=dtype).tobytes() == np.array(want, dtype=dtype).tobytes(), window


def original_rule_reference(values, coords, groups, max_hops=4, hex_geometry=True):
    """The original library's filter as plain loops: per slide, each spot's k nearest spots (by a full distance
    matrix; on a grid only those closer than 1.3 × the slide's median neighbour distance), windows = the spot
    plus every spot reached by a walk of 1..h steps along these directed links, then the adaptive rule."""
    k = 6 if hex_geometry else 8
    out = values.copy()
    for label in np.unique(groups):
        idx = np.flatnonzero(groups == label)
        pts = coords[idx]
        dist = np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(axis=-1))
        np.fill_diagonal(dist, np.inf)
        nearest = np.argsort(dist, axis=1, kind="stable")[:, :k]
        near_dist = np.take_along_axis(dist, nearest, axis=1)
        cutoff = np.inf if hex_geometry else np.median(near_dist) * 1.3
        links = [[int(j) for j, d in zip(row, drow, strict=True) if d < cutoff]
                 for row, drow in zip(nearest, near_dist, strict=True)]
        windows = []
        for i in range(idx.size):
            frontier, reached, per_hop = {i}, set(), []
            for _ in range(max_hops):
                frontier = {j for u in frontier for j in links[u]}  # walks one step longer
                reached |= frontier
                per_hop.append([i, *sorted(reached - {i})])
            windows.append(per_hop)
        for g in range(values.shape[1]):
            column = values[idx, g]
            nonzero = column[column != 0]
            fallback = np.median(nonzero) if nonzero.size else 0
            for i in range(idx.size):
                if column[i] != 0:
                    continue
                for window in windows[i]:
                    med = np.median(column[window])
                    if med != 0:
                        out[idx[i], g] = med
                        break
                else:
                    out[idx[i], g] = fallback
    return out


def irregular_adata(rng, hex_geometry: bool, n_genes: int) -> ad.AnnData:
    """Two slides of a jittered lattice with holes: kNN links are far from symmetric, distances never tie."""
    parts, slides = [], []
    for label, (rows, cols) in (("A", (12, 11)), ("B", (9, 10))):
        if hex_geometry:
            pts = hex_coords(rows, cols)
        else:
            r, c = np.divmod(np.arange(rows * cols), cols)
            pts = np.column_stack([2.0 * c, 2.0 * r]).astype(float)
        pts = pts[rng.random(len(pts)) > 0.25]
        parts.append(pts + rng.normal(scale=0.15, size=pts.shape))
        slides += [label] * len(pts)
    obs = pd.DataFrame({"slide_id": slides}, index=[f"s{i}" for i in range(len(slides))])
    values = random_values(rng, len(slides), n_genes, np.float32, zero_frac=None)
    var = pd.DataFrame(index=[f"g{j}" for j in range(n_genes)])
    return ad.AnnData(obs=obs, var=var, obsm={"spatial": np.vstack(parts)}, layers={"log1p": values})


@pytest.mark.parametrize("hex_geometry", [True, False])
@pytest.mark.parametrize("max_hops", [1, 4])
def test_original_windows_match_the_original_rule(hex_geometry, max_hops):
    from spared.graph import original_spatial_graph

    rng = np.random.default_rng(21 + max_hops)
    adata = irregular_adata(rng, hex_geometry, n_genes=20)
    values = adata.layers["log1p"]
    n_neighs = 6 if hex_geometry else 8
    groups = adata.obs["slide_id"].to_numpy()
    want = original_rule_reference(values, adata.obsm["spatial"], groups, max_hops, hex_geometry)
    got = adaptive_median_filter(adata, n_neighs=n_neighs, max_hops=max_hops, graphs="original", copy=True)
    np.testing.assert_array_equal(got.layers["d_log1p"].view(np.uint8), want.view(np.uint8))
    # the default windows (symmetrised graph) are a different, documented recipe on such a layout
    graph = original_spatial_graph(adata, hex_geometry=hex_geometry)
    assert (graph != graph.T).nnz > 0
    if max_hops == 4:
        default = adaptive_median_filter(adata, n_neighs=n_neighs, max_hops=max_hops, copy=True)
        assert (default.layers["d_log1p"] != want).any()


def test_original_graph_keeps_nearest_spots_among_ties():
    """On an exact lattice many spots have equidistant candidates for their last neighbours: every chosen
    neighbour is at most as far as the sixth nearest, all strictly nearer spots are chosen, per slide."""
    from spared.graph import original_spatial_graph

    adata = two_slide_adata(np.zeros((192, 1)))
    graph = original_spatial_graph(adata).tocsr()
    groups = adata.obs["slide_id"].to_numpy()
    coords = adata.obsm["spatial"]
    assert (graph.getnnz(axis=1) == 6).all()
    ties = 0
    for i in range(adata.n_obs):
        same = np.flatnonzero((groups == groups[i]) & (np.arange(adata.n_obs) != i))
        dist = np.linalg.norm(coords[same] - coords[i], axis=1)
        sixth = np.sort(dist)[5]
        chosen = graph.indices[graph.indptr[i]:graph.indptr[i + 1]]
        assert set(chosen) <= set(same)
        assert np.linalg.norm(coords[chosen] - coords[i], axis=1).max() <= sixth + 1e-9
        assert set(same[dist < sixth - 1e-9]) <= set(chosen)
        ties += int(np.isclose(dist, sixth).sum() > np.isclose(np.sort(dist)[:6], sixth).sum())
    assert ties > 0  # the lattice does exercise tie-breaking


def test_graph_recipe_errors():
    adata = two_slide_adata(np.zeros((192, 1), dtype=np.float32))
    with pytest.raises(ValueError, match="graphs must be one of"):
        adaptive_median_filter(adata, graphs="squidpy")
    with pytest.raises(ValueError, match="6 \\(hexagonal array\\) or 8"):
        adaptive_median_filter(adata, n_neighs=4, graphs="original")

"""Moran's I: agreement with the plain double-sum formula, squidpy, and its behaviour on known patterns."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from spared.graph import spatial_graph
from spared.pp.moran import moran_genes, morans_i, select_top_moran, slide_morans_i


def hex_coords(n_rows: int, n_cols: int) -> np.ndarray:
    r, c = np.divmod(np.arange(n_rows * n_cols), n_cols)
    return np.column_stack([2.0 * c + (r % 2), np.sqrt(3.0) * r])


def make_adata(values: np.ndarray, shapes=((15, 12), (10, 9))) -> ad.AnnData:
    coords = np.vstack([hex_coords(*s) for s in shapes])
    sizes = [a * b for a, b in shapes]
    slides = np.repeat([f"slide{k}" for k in range(len(shapes))], sizes)
    obs = pd.DataFrame({"slide_id": slides}, index=[f"s{i}" for i in range(slides.size)])
    var = pd.DataFrame(index=[f"g{j}" for j in range(values.shape[1])])
    return ad.AnnData(obs=obs, var=var, obsm={"spatial": coords}, layers={"d_log1p": values})


def reference_moran(values: np.ndarray, adjacency: sp.spmatrix, groups: np.ndarray) -> np.ndarray:
    """I = n / S0 * sum_ij w_ij z_i z_j / sum_i z_i^2 per slide (plain loops), averaged over slides."""
    dense = adjacency.toarray()
    result = []
    for g in range(values.shape[1]):
        per_slide = []
        for slide in dict.fromkeys(groups.tolist()):
            idx = [i for i in range(len(groups)) if groups[i] == slide]
            x = [float(values[i, g]) for i in idx]
            if max(x) == min(x):
                continue
            mean = sum(x) / len(x)
            z = [v - mean for v in x]
            w = [[float(dense[i, j]) for j in idx] for i in idx]
            w = [[v / sum(row) for v in row] if sum(row) else row for row in w]
            s0 = sum(sum(row) for row in w)
            num = sum(w[a][b] * z[a] * z[b] for a in range(len(idx)) for b in range(len(idx)))
            per_slide.append(len(idx) / s0 * num / sum(v * v for v in z))
        result.append(sum(per_slide) / len(per_slide) if per_slide else float("nan"))
    return np.array(result)


def test_matches_plain_formula():
    rng = np.random.default_rng(1)
    n = 180 + 90
    coords = np.vstack([hex_coords(15, 12), hex_coords(10, 9)])
    smooth = np.sin(coords[:, :1] / 4.0) + np.cos(coords[:, 1:] / 6.0)
    values = np.hstack([rng.random((n, 5)), smooth + 0.3 * rng.random((n, 5))]).astype(np.float32)
    values[rng.random(values.shape) < 0.3] = 0
    values[180:, 2] = 1.5  # constant on the second slide: only the first slide counts
    values[:, 3] = 0  # constant everywhere: NaN
    adata = make_adata(values)
    groups = adata.obs["slide_id"].to_numpy()
    for n_neighs in (6, 8):
        adjacency = spatial_graph(adata, n_neighs=n_neighs)
        got = morans_i(values, adjacency, groups)
        want = reference_moran(values, adjacency, groups)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    assert np.isnan(got[3])
    labels, per_slide = slide_morans_i(values, adjacency, groups)
    assert labels.tolist() == ["slide0", "slide1"]
    assert np.isnan(per_slide[1, 2]) and got[2] == per_slide[0, 2]


def test_weighted_graph_with_isolated_spot():
    rng = np.random.default_rng(2)
    n = 40
    dense = np.triu(rng.random((n, n)) < 0.15, 1) * rng.random((n, n))
    dense[7, :] = 0  # a spot without out-going edges (S0 < n)
    adjacency = sp.csr_matrix(dense)
    values = rng.normal(size=(n, 4))
    groups = np.zeros(n, dtype=int)
    np.testing.assert_allclose(morans_i(values, adjacency, groups),
                               reference_moran(values, adjacency, groups), rtol=1e-6)


def test_matches_squidpy():
    sq = pytest.importorskip("squidpy")
    rng = np.random.default_rng(3)
    coords = hex_coords(15, 12)
    values = (np.sin(coords[:, :1] / 5.0) + rng.random((180, 6))).astype(np.float32)
    adata = make_adata(values, shapes=((15, 12),))
    adjacency = spatial_graph(adata)
    adata.obsp["spatial_connectivities"] = adjacency
    table = sq.gr.spatial_autocorr(adata, mode="moran", layer="d_log1p", transformation=True, n_perms=None,
                                   copy=True, show_progress_bar=False)
    want = table["I"].reindex(adata.var_names).to_numpy()
    got = morans_i(values, adjacency, adata.obs["slide_id"].to_numpy())
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


def test_smooth_pattern_near_one_noise_near_expectation():
    rng = np.random.default_rng(4)
    coords = hex_coords(20, 20)
    n = coords.shape[0]
    smooth = np.sin(coords[:, 0] / 12.0) + np.cos(coords[:, 1] / 12.0)
    values = np.column_stack([smooth, rng.normal(size=(n, 300))])
    adata = make_adata(values, shapes=((20, 20),))
    moran_genes(adata, layer="d_log1p")
    scores = adata.var["d_log1p_moran"].to_numpy()
    assert scores[0] > 0.95
    assert abs(scores[1:].mean() + 1 / (n - 1)) < 0.01  # E[I] = -1/(n-1) under no autocorrelation


def test_select_top_moran_orders_and_warns():
    rng = np.random.default_rng(5)
    adata = make_adata(rng.random((270, 6)))
    adata.var["d_log1p_moran"] = [0.1, np.nan, 0.7, 0.3, 0.7, -0.2]
    top = select_top_moran(adata, 3, copy=True)
    assert top.var_names.tolist() == ["g2", "g4", "g3"]
    np.testing.assert_array_equal(top.layers["d_log1p"], adata.layers["d_log1p"][:, [2, 4, 3]])
    assert adata.n_vars == 6  # the input is untouched
    with pytest.warns(UserWarning, match="top 10 Moran genes but only 6"):
        everything = select_top_moran(adata, 10, copy=True)
    assert select_top_moran(adata, 3) is None and adata.var_names.tolist() == ["g2", "g4", "g3"]  # in place
    assert everything.var_names.tolist() == ["g2", "g4", "g3", "g0", "g5", "g1"]


def test_bad_input_raises_clear_errors():
    rng = np.random.default_rng(6)
    adata = make_adata(rng.random((270, 3)))
    values = adata.layers["d_log1p"]
    adjacency = spatial_graph(adata)
    groups = adata.obs["slide_id"].to_numpy()
    nan_values = values.copy()
    nan_values[4, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN/inf \(first at spot 4, gene 1\)"):
        morans_i(nan_values, adjacency, groups)
    with pytest.raises(ValueError, match="270 × 270"):
        morans_i(values, adjacency[:10, :10], groups)
    with pytest.raises(ValueError, match=r"one slide label per spot: expected shape \(270,\)"):
        morans_i(values, adjacency, groups[:5])
    crossing = adjacency.tolil()
    crossing[0, 200] = 1
    with pytest.raises(ValueError, match="join spots of different slides"):
        morans_i(values, crossing.tocsr(), groups)
    with pytest.raises(KeyError, match="layer 'c_d_log1p' not found"):
        moran_genes(adata, layer="c_d_log1p")
    with pytest.raises(KeyError, match="'d_log1p_moran' not found"):
        select_top_moran(adata, 2)
    adata.var["d_log1p_moran"] = 0.0
    with pytest.raises(ValueError, match="n_top must be a positive integer"):
        select_top_moran(adata, 0)

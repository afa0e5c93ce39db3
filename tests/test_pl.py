"""Figures: each function draws what it claims on the axes it returns (or writes the file it is given)."""

import numpy as np
import pandas as pd
import pytest

from spared import pl


def test_qc_figures_draw_the_data(processed_small, tmp_path):
    ax = pl.counts_per_spot(processed_small, show=False)
    assert len(ax.patches) == processed_small.obs["slide_id"].nunique()  # one step histogram per slide
    ax = pl.genes_kept(processed_small, show=False)
    steps = processed_small.uns["spared"]["steps"]
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), steps["n_genes"])
    ax = pl.moran_ranking(processed_small, save=tmp_path / "moran.png")
    assert (tmp_path / "moran.png").stat().st_size > 1000
    y = ax.lines[0].get_ydata()
    assert (np.diff(y) <= 0).all() and y[0] == pytest.approx(processed_small.var["d_log1p_moran"].max())


def test_missing_table_matches_the_layers(processed_small):
    table = pl.missing_table(processed_small)
    slide = table.index[0]
    sel = (processed_small.obs["slide_id"] == slide).to_numpy()
    assert table.loc[slide, "raw"] == pytest.approx((~processed_small.layers["mask"][sel]).mean())
    assert table.loc[slide, "median filter"] == pytest.approx((processed_small.layers["d_log1p"][sel] == 0).mean())
    assert (table["median filter"] <= table["raw"]).all()
    ax = pl.missing_fraction(processed_small, show=False)
    assert len(ax.patches) == table.shape[0] * int((table > 0).any().sum())  # a stage with nothing missing: no bars


def test_spatial_gene_panels_and_errors(processed_small):
    gene = processed_small.var_names[0]
    axes = pl.spatial_gene(processed_small, gene, show=False)
    assert [a.get_title().split("\n")[1] for a in axes] == ["log1p", "d_log1p", "c_true_log1p"]
    slide = processed_small.obs["slide_id"].iloc[0]
    sel = (processed_small.obs["slide_id"] == slide).to_numpy()
    np.testing.assert_allclose(axes[0].collections[0].get_array(), processed_small.layers["log1p"][sel, 0])
    symbol = processed_small.var["gene_symbol"].iloc[0]
    assert len(pl.spatial_gene(processed_small, symbol, layers=["log1p"], show=False)) == 1
    with pytest.raises(KeyError, match="neither a var name"):
        pl.spatial_gene(processed_small, "NOT_A_GENE", show=False)
    with pytest.raises(KeyError, match="not found"):
        pl.spatial_gene(processed_small, gene, layers=["nope"], show=False)


def test_completion_and_benchmark_figures():
    curve = pd.DataFrame({"method": ["a", "a", "b", "b"], "mask_fraction": [0.1, 0.2, 0.1, 0.2],
                          "MSE": [1.0, 2.0, 0.5, 0.7]})
    ax = pl.completion_curve(curve, show=False)
    assert len(ax.lines) >= 2
    with pytest.raises(KeyError, match="need columns"):
        pl.completion_curve(curve.drop(columns="method"), show=False)
    results = pd.DataFrame({"model": ["m1", "m1", "m2", "m2"] * 2, "dataset": ["d"] * 4 + ["e"] * 4,
                            "target": ["raw", "completed"] * 4, "MSE": np.arange(8.0)})
    ax = pl.benchmark_bars(results, dataset="d", show=False)
    heights = sorted(p.get_height() for p in ax.patches)
    assert heights == [0.0, 1.0, 2.0, 3.0]
    ax = pl.benchmark_heatmap(results, target="completed", show=False)
    np.testing.assert_array_equal(ax.images[0].get_array(), [[1.0, 5.0], [3.0, 7.0]])

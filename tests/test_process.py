"""The whole protocol on a simulated collection: layers, invariants, provenance and bad input."""

import json

import numpy as np
import pytest
import scipy.sparse as sp

import spared
from spared.config import ProcessingConfig
from spared.data_model import ValidationError
from spared.pp import process


def test_processed_collection_follows_the_data_model(processed_small, raw_small):
    spared.validate(processed_small, stage="processed", layers=["c_log1p", "c_d_deltas", "true_log1p"])
    assert processed_small.n_vars == 32
    # the mask marks exactly the measured entries, and TPM rows were normalised over the filtered genes
    np.testing.assert_array_equal(processed_small.layers["mask"], processed_small.layers["counts"] != 0)
    np.testing.assert_array_equal(processed_small.layers["mask"], processed_small.layers["tpm"] != 0)
    # the median filter only fills zeros
    real = processed_small.layers["mask"]
    np.testing.assert_array_equal(processed_small.layers["d_log1p"][real], processed_small.layers["log1p"][real])
    assert (processed_small.layers["d_log1p"] == 0).mean() < (processed_small.layers["log1p"] == 0).mean()
    # kept genes are the top Moran genes, in descending order
    moran = processed_small.var["d_log1p_moran"].to_numpy()
    assert (np.diff(moran) <= 0).all()
    # counts of kept spots/genes are the raw counts
    raw = raw_small[processed_small.obs_names, processed_small.var_names].X
    np.testing.assert_array_equal(processed_small.layers["counts"], raw.toarray())
    # sequencing depth: the total over every gene read, and the counts outside the 32-gene panel
    totals = np.asarray(raw_small[processed_small.obs_names].X.sum(axis=1)).ravel()
    np.testing.assert_allclose(processed_small.obs["total_counts"], totals)
    np.testing.assert_allclose(processed_small.obs["offpanel_counts"], totals - raw.toarray().sum(axis=1))
    # no slide crosses splits; fractions reflect the final genes
    assert processed_small.var["glob_exp_frac"].to_numpy() == pytest.approx(real.mean(axis=0), rel=1e-4)


def test_provenance_records_every_step(processed_small):
    info = processed_small.uns["spared"]
    assert json.loads(info["config"])["top_moran_genes"] == 32
    steps = info["steps"]
    assert list(steps["step"])[:4] == ["gene ids", "spot filter", "expression fractions", "gene filter"]
    assert info["genes"]["fraction_mapped"] == 1.0 and info["genes"]["n_genes_read"] == 128
    assert steps["n_genes"][-1] == 32 and (np.asarray(steps["seconds"]) >= 0).all()
    assert 0.67 <= info["raw_zero_fraction"] <= 0.97


def test_truth_is_processed_like_the_data(processed_small):
    real = processed_small.layers["mask"]
    truth, observed = processed_small.layers["true_log1p"], processed_small.layers["log1p"]
    # the truth is the expected expression: nothing is missing from it, and real measurements scatter around it
    assert (truth > 0).all()
    assert np.corrcoef(truth[real], observed[real])[0, 1] > 0.8
    # where values dropped out the truth is lower than where they were measured (dropout hits low expression)
    assert truth[~real].mean() < truth[real].mean()
    assert processed_small.layers["c_true_log1p"].shape == truth.shape


def test_all_zero_genes_are_dropped_and_counts_strict(raw_small):
    raw = raw_small.copy()
    x = raw.X.tolil()
    x[:, 0] = 0
    raw.X = sp.csr_matrix(x)
    out = process(raw, ProcessingConfig(top_moran_genes=16, complete_missing=False), progress=False, copy=True)
    assert raw.var_names[0] not in out.var_names


def test_bad_input_is_rejected_before_work(raw_small):
    cfg = ProcessingConfig(top_moran_genes=16, complete_missing=False)
    bad = raw_small.copy()
    bad.obs_names = ["same"] * bad.n_obs
    with pytest.raises(ValidationError, match="duplicate spot"):
        process(bad, cfg, progress=False)
    with pytest.raises(KeyError, match="combat_key"):
        process(raw_small, cfg.replace(combat_key="batch"), progress=False)
    mouse = cfg.replace(organism="mouse")
    with pytest.raises(ValueError, match="is the organism 'human'"):
        process(raw_small, mouse, progress=False)
    nan = raw_small.copy()
    nan.X = nan.X.astype(np.float32)
    nan.X.data[0] = np.nan
    with pytest.raises(ValidationError, match="NaN"):
        process(nan, cfg, progress=False)


def test_grid_geometry_option_yields_to_the_detected_lattice_with_a_warning(raw_small):
    with pytest.warns(UserWarning, match="hexagonal lattice but hex_geometry=False"):
        out = process(raw_small, ProcessingConfig(top_moran_genes=16, complete_missing=False, hex_geometry=False),
                      progress=False, copy=True)
    assert json.loads(out.uns["spared"]["config"])["hex_geometry"] is False
    assert out.uns["spared"]["geometry"] == "hexagonal" and "6 neighbours" in out.uns["spared"]["warnings"][-1]
    assert out.n_vars == 16


def test_original_spatial_graphs_option_reaches_median_filter_and_moran(raw_small):
    from spared.impute.median import adaptive_median_filter
    from spared.pp.moran import moran_genes

    with pytest.raises(ValueError, match="spatial_graphs must be 'spared'"):
        ProcessingConfig(spatial_graphs="squidpy")
    out = process(raw_small, ProcessingConfig(top_moran_genes=16, complete_missing=False,
                                              spatial_graphs="original"), progress=False, copy=True)
    check = adaptive_median_filter(out, key_added="again", graphs="original", copy=True)
    np.testing.assert_array_equal(check.layers["again"], out.layers["d_log1p"])
    ours = adaptive_median_filter(out, key_added="again", copy=True)
    assert (ours.layers["again"] != out.layers["d_log1p"]).any()  # the lattice's edges: different windows
    moran_genes(check, key_added="moran_again", graphs="original")
    np.testing.assert_allclose(check.var["moran_again"], out.var["d_log1p_moran"], rtol=1e-12)


def test_real_visium_subset_runs_through_the_protocol(realdata, tmp_path):
    from spared.datasets import get_local

    folder = realdata / "visium_spaceranger_v1_subset"
    adata = get_local(folder, ProcessingConfig(complete_missing=False), out_dir=tmp_path, progress=False)
    spared.validate(adata, stage="processed")
    steps = dict(zip(adata.uns["spared"]["steps"]["step"], adata.uns["spared"]["steps"]["n_spots"], strict=True))
    # 100 spots in the scanpy subset; 36 have more than 10 counts over its 100 genes
    assert steps["spot filter"] == 36 and adata.n_obs == 36
    assert adata.var_names.str.startswith("ENSG").all() and adata.var["glob_exp_frac"].mean() >= 0.7
    np.testing.assert_array_equal(adata.layers["mask"], adata.layers["counts"] != 0)

"""Processing steps checked against plain reference computations."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from spared.pp import (
    combat_apply,
    combat_fit,
    compute_mask,
    deltas,
    expression_fractions,
    filter_genes,
    filter_spots,
    log1p,
    noisy_layers,
    offpanel_counts,
    real_data_prefix,
    tpm,
    tpm_matrix,
)


def counts_adata(n=60, g=30, n_slides=3, seed=0, zero_frac=0.6):
    rng = np.random.default_rng(seed)
    x = rng.poisson(rng.gamma(1.0, 4.0, size=(n, g))).astype(np.float32)
    x[rng.random((n, g)) < zero_frac] = 0
    slides = np.repeat([f"s{i}" for i in range(n_slides)], n // n_slides)
    obs = pd.DataFrame({"slide_id": slides, "patient": "p0",
                        "split": np.where(slides == "s0", "train", np.where(slides == "s1", "val", "test"))},
                       index=[f"spot{i}" for i in range(n)])
    from spared.annotation import gene_table

    genes = gene_table("human").index[:g]
    return ad.AnnData(sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=genes))


def test_filter_spots_is_strict_on_both_bounds():
    a = counts_adata()
    totals = np.asarray(a.X.sum(axis=1)).ravel()
    lo, hi = np.sort(totals)[5], np.sort(totals)[-5]
    out = filter_spots(a, lo, hi, copy=True)
    expected = [name for name, t in zip(a.obs_names, totals, strict=True) if lo < t < hi]
    assert list(out.obs_names) == expected


def test_offpanel_counts_are_the_totals_minus_the_panel():
    a = counts_adata()
    kept = filter_spots(a, 0, 1e9, copy=True)
    panel = kept[:, ::3].copy()
    offpanel_counts(panel, layer=None)
    dense = a.X.toarray()
    for i in range(a.n_obs):
        assert panel.obs["total_counts"].iloc[i] == dense[i].sum()
        assert panel.obs["offpanel_counts"].iloc[i] == pytest.approx(dense[i].sum() - dense[i, ::3].sum())
    with pytest.raises(KeyError, match="total_counts"):
        offpanel_counts(a, layer=None)
    panel.obs["total_counts"] = 0.0
    with pytest.raises(ValueError, match="full gene set"):
        offpanel_counts(panel, layer=None)


def test_filter_spots_rejects_everything_with_clear_error():
    with pytest.raises(ValueError, match="no spot has total counts"):
        filter_spots(counts_adata(), 1e9, 1e10)


def test_expression_fractions_match_a_plain_loop():
    a = counts_adata()
    expression_fractions(a)
    x = a.X.toarray()
    for j in range(a.n_vars):
        per_slide = [np.mean(x[(a.obs.slide_id == s).to_numpy(), j] > 0) for s in ("s0", "s1", "s2")]
        assert a.var["exp_frac"].iloc[j] == pytest.approx(min(per_slide))
        assert a.var["glob_exp_frac"].iloc[j] == pytest.approx(np.mean(x[:, j] > 0))


def test_expression_fractions_are_exact_and_genes_at_the_cut_are_kept():
    """700 of 1,000 spots is exactly 0.7, as the original library counts it: both such genes meet a 70 % cut
    (a float32 mean gives 0.69999456 and dropped them)."""
    n = 1000
    x = np.zeros((n, 3), dtype=np.float32)
    x[:700, 0] = 1
    x[300:, 1] = 2
    x[:100, 2] = 5
    obs = pd.DataFrame({"slide_id": np.repeat(["s0", "s1"], n // 2)}, index=[f"spot{i}" for i in range(n)])
    from spared.annotation import gene_table

    a = ad.AnnData(sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=gene_table("human").index[:3]))
    expression_fractions(a)
    np.testing.assert_array_equal(a.var["glob_exp_frac"].to_numpy(), [700 / n, 700 / n, 100 / n])
    np.testing.assert_array_equal(a.var["exp_frac"].to_numpy(), [200 / 500, 200 / 500, 0.0])
    out = filter_genes(a, real_data_percentage=0.7, copy=True)
    assert list(out.var_names) == list(a.var_names[:2])


def test_real_data_prefix_is_the_longest_prefix_meeting_the_threshold():
    rng = np.random.default_rng(1)
    for _ in range(50):
        exp = rng.random(20)
        glob = rng.random(20)
        kept = real_data_prefix(exp, glob, 0.5)
        order = sorted(range(20), key=lambda i: -exp[i])
        best = 0
        for m in range(1, 21):
            if np.mean([glob[i] for i in order[:m]]) >= 0.5:
                best = m
        assert list(kept) == order[:best]


def test_filter_genes_keeps_at_least_the_requested_real_fraction():
    a = counts_adata(zero_frac=0.5)
    out = filter_genes(a, min_counts=0, real_data_percentage=0.55, copy=True)
    assert 0 < out.n_vars < a.n_vars
    assert out.var["glob_exp_frac"].mean() >= 0.55
    assert (np.asarray(out.X.sum(axis=1)).ravel() > 0).all()


def test_filter_genes_wildcards_keep_exactly_the_list_and_reject_unknown():
    a = counts_adata()
    wanted = list(a.var_names[[3, 1, 7]])
    assert list(filter_genes(a, wildcard_genes=wanted, copy=True).var_names) == wanted
    with pytest.raises(KeyError, match="not in the data"):
        filter_genes(a, wildcard_genes=["ENSG_NOT_A_GENE"])


def test_tpm_formula_and_row_sums():
    a = counts_adata()
    a.X[0, :] = 0
    a.X.eliminate_zeros()
    out = tpm(a, "human", layer=None, copy=True)
    with pytest.raises(KeyError, match="layer=None"):
        tpm(a, "human", layer="nope")
    assert out.n_obs == a.n_obs - 1  # the all-zero spot is dropped
    t = out.layers["tpm"].toarray().astype(np.float64)
    np.testing.assert_allclose(t.sum(axis=1), 1e6, rtol=1e-5)
    x = out.X.toarray()
    rate = x / out.var["gene_length"].to_numpy()
    np.testing.assert_allclose(t, rate / rate.sum(axis=1, keepdims=True) * 1e6, rtol=1e-5)


def test_tpm_drops_unannotated_genes_and_rejects_all_unknown():
    a = counts_adata()
    names = list(a.var_names)
    names[0] = "ENSG_UNKNOWN"
    a.var_names = names
    from spared.annotation import GeneMappingWarning

    with pytest.warns(GeneMappingWarning, match=r"dropping 1 of 30 gene\(s\).*'ENSG_UNKNOWN'"):
        out = tpm(a, "human", layer=None, copy=True)
    assert out.n_vars == a.n_vars - 1 and out.uns["spared"]["tpm_dropped_genes"] == 1
    a.var_names = [f"NOPE{i}" for i in range(a.n_vars)]
    with pytest.raises(ValueError, match="Ensembl ids"):
        tpm(a, "human", layer=None)


def test_tpm_matrix_dense_and_sparse_agree():
    rng = np.random.default_rng(2)
    x = rng.poisson(2, size=(10, 6)).astype(float) + 1
    lengths = rng.integers(100, 5000, 6)
    np.testing.assert_allclose(tpm_matrix(sp.csr_matrix(x), lengths).toarray(), tpm_matrix(x, lengths))
    with pytest.raises(ValueError, match="positive"):
        tpm_matrix(x, -lengths)


def test_log1p_is_exactly_log2_plus_one():
    a = counts_adata()
    a.layers["tpm"] = a.X.copy()
    log1p(a)
    np.testing.assert_array_equal(a.layers["log1p"].toarray(),
                                  np.log2(a.X.toarray().astype(np.float64) + 1).astype(np.float32))


def test_combat_matches_inmoose_pycombat():
    inmoose = pytest.importorskip("inmoose.pycombat")
    rng = np.random.default_rng(3)
    batch = np.repeat(["a", "b", "c"], [50, 70, 40])
    x = rng.normal(size=(160, 25)) * np.where(batch == "b", 2.0, 1.0)[:, None] + np.where(batch == "c", 3, 0)[:, None]
    ours = combat_apply(x, batch, combat_fit(x, batch))
    ref = inmoose.pycombat_norm(x.T, list(batch)).T
    np.testing.assert_allclose(ours, ref, atol=1e-10)
    # batch means become equal after correction
    means = [ours[batch == b].mean() for b in "abc"]
    assert np.ptp(means) < 0.1 < np.ptp([x[batch == b].mean() for b in "abc"])


def test_combat_passes_constant_genes_through_and_rejects_unseen_batches():
    rng = np.random.default_rng(4)
    batch = np.repeat(["a", "b"], 30)
    x = rng.normal(size=(60, 5))
    x[:30, 2] = 1.5
    params = combat_fit(x, batch)
    out = combat_apply(x, batch, params)
    np.testing.assert_array_equal(out[:, 2], x[:, 2])
    assert not params.corrected[2] and params.corrected[[0, 1, 3, 4]].all()
    with pytest.raises(ValueError, match="not seen"):
        combat_apply(x, np.repeat(["a", "z"], 30), params)
    with pytest.raises(ValueError, match="at least 2 spots"):
        combat_fit(x, np.r_[["a"] * 59, ["b"]])
    x[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        combat_fit(x, batch)


def test_mask_deltas_and_noisy_layers():
    a = counts_adata()
    a.layers["tpm"] = a.X.toarray()
    a.layers["log1p"] = np.log2(a.layers["tpm"] + 1)
    a.layers["d_log1p"] = a.layers["log1p"] + 0.5 * (a.layers["log1p"] == 0)
    compute_mask(a)
    np.testing.assert_array_equal(a.layers["mask"], a.X.toarray() != 0)
    deltas(a)
    train = (a.obs.split == "train").to_numpy()
    np.testing.assert_allclose(a.var["d_log1p_avg_exp"], a.layers["d_log1p"][train].mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(a.layers["d_deltas"], a.layers["d_log1p"] - a.var["d_log1p_avg_exp"].to_numpy(),
                               rtol=1e-5)
    noisy_layers(a)
    missing = ~a.layers["mask"]
    assert (a.layers["noisy_d_log1p"][missing] == 0).all()
    np.testing.assert_array_equal(a.layers["noisy_d_log1p"][~missing], a.layers["d_log1p"][~missing])
    expected = np.broadcast_to(-a.var["d_log1p_avg_exp"].to_numpy(np.float32), missing.shape)[missing]
    np.testing.assert_allclose(a.layers["noisy_d_deltas"][missing], expected)
    a.obs["split"] = "val"
    with pytest.raises(ValueError, match="training spots"):
        deltas(a)

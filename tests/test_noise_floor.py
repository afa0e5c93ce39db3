"""The counting-noise floor: exact truncated-Poisson variances, and the floor of data drawn from known rates."""

from __future__ import annotations

import math

import anndata as ad
import numpy as np
import pytest

from spared.impute.noise_floor import EXACT_MAX_RATE, noise_floor, noise_floor_entries, truncated_log_variance


def _variance_loop(rate: float, per_count: float, top: int = 3000) -> float:
    """Plain-loop reference: Var[log2(s·C + 1) | C >= 1], C ~ Poisson(rate), summed term by term."""
    if rate == 0:
        return 0.0
    weights, values = [], []
    for k in range(1, top):
        weights.append(math.exp(k * math.log(rate) - rate - math.lgamma(k + 1)))
        values.append(math.log2(per_count * k + 1))
    total = sum(weights)
    mean = sum(w * v for w, v in zip(weights, values, strict=True)) / total
    return sum(w * (v - mean) ** 2 for w, v in zip(weights, values, strict=True)) / total


@pytest.mark.parametrize("rate", [0.0, 1e-4, 0.3, 1.0, 2.5, 7.0, 40.0, EXACT_MAX_RATE])
@pytest.mark.parametrize("per_count", [0.5, 30.0, 2000.0])
def test_truncated_log_variance_matches_a_plain_sum(rate, per_count):
    got = truncated_log_variance(np.array([rate]), np.array([per_count]))[0]
    assert got == pytest.approx(_variance_loop(rate, per_count), rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("rate", [150.0, 600.0])
def test_large_rates_use_the_delta_method_within_its_error(rate):
    got = truncated_log_variance(np.array([rate]), np.array([50.0]))[0]
    assert got == pytest.approx(_variance_loop(rate, 50.0), rel=3 / rate)


def test_truncated_log_variance_keeps_shapes_and_rejects_bad_rates():
    rates = np.array([[0.5, 3.0, 200.0], [1.0, 0.0, 12.0]])
    got = truncated_log_variance(rates, 10.0)
    assert got.shape == rates.shape
    assert got[1, 1] == pytest.approx(0.0, abs=1e-12)
    assert got[0, 1] == pytest.approx(_variance_loop(3.0, 10.0), rel=1e-6)
    with pytest.raises(ValueError, match="finite and >= 0"):
        truncated_log_variance(np.array([-1.0]), 1.0)


def _poisson_collection(seed: int = 0, n_spots: int = 400, n_genes: int = 30):
    """Two slides of Poisson counts from gamma rates (the floor's own model), with an affine 'ComBat' layer.

    Returns the collection, the true rate of every entry and the per-slide, per-gene slope of the layer.
    """
    rng = np.random.default_rng(seed)
    slides = np.repeat(["a", "b"], n_spots // 2)
    factors = rng.lognormal(0, 0.3, n_spots)
    means = rng.lognormal(0.3, 1.0, (2, n_genes))
    theta = rng.gamma(2.0, 1.0, (n_spots, n_genes)) * means[(slides == "b").astype(int)] / 2.0
    rates = factors[:, None] * theta
    counts = rng.poisson(rates).astype(np.float32)
    lengths = rng.uniform(500, 5000, n_genes)
    per_length = counts / lengths
    tpm = (per_length / np.maximum(per_length.sum(axis=1, keepdims=True), 1e-12) * 1e6).astype(np.float32)
    slopes = rng.uniform(0.5, 1.5, (2, n_genes))[(slides == "b").astype(int)]
    offsets = rng.normal(0, 1, (2, n_genes))[(slides == "b").astype(int)]
    adata = ad.AnnData(np.zeros_like(counts), obs={"slide_id": slides})
    adata.layers["counts"], adata.layers["tpm"] = counts, tpm
    adata.layers["c_d_log1p"] = (slopes * np.log2(tpm.astype(np.float64) + 1) + offsets).astype(np.float32)
    return adata, rates, slopes


def test_floor_of_counts_drawn_from_known_rates_matches_the_oracle():
    """Known truth: the oracle's error with the true rates, summed in a plain loop, over many hidden entries."""
    adata, rates, slopes = _poisson_collection()
    counts = adata.layers["counts"]
    hidden = np.zeros(adata.shape, dtype=bool)
    hidden[counts >= 1] = np.random.default_rng(1).random(int((counts >= 1).sum())) < 0.5
    rows, cols = np.nonzero(hidden)
    per_count = adata.layers["tpm"][rows, cols].astype(np.float64) / counts[rows, cols]
    oracle = np.mean([_variance_loop(rates[i, j], s, top=400) * slopes[i, j] ** 2
                      for i, j, s in zip(rows, cols, per_count, strict=True)])
    estimate = noise_floor(adata, hidden)
    assert estimate == pytest.approx(oracle, rel=0.03)
    plug_in = np.mean(truncated_log_variance(counts[rows, cols], per_count) * slopes[rows, cols] ** 2)
    assert abs(estimate - oracle) < abs(plug_in - oracle)


def test_entries_follow_the_hidden_order_and_single_counts_dominate():
    adata, _, _ = _poisson_collection(seed=2)
    hidden = np.asarray(adata.layers["counts"] >= 1)
    entries = noise_floor_entries(adata, hidden)
    counts = adata.layers["counts"][np.nonzero(hidden)]
    assert entries.shape == (int(hidden.sum()),)
    assert np.all(entries >= 0)
    assert entries[counts == 1].mean() > entries[counts >= 20].mean()


def test_floor_rejects_inputs_it_cannot_score():
    adata, _, _ = _poisson_collection()
    real = np.asarray(adata.layers["counts"] >= 1)
    with pytest.raises(ValueError, match="shape"):
        noise_floor(adata, real[:-1])
    with pytest.raises(ValueError, match="count of 0"):
        noise_floor(adata, ~real)
    with pytest.raises(KeyError, match="tpm"):
        noise_floor(ad.AnnData(adata.X, obs=adata.obs, layers={"counts": adata.layers["counts"]}), real)
    adata.layers["sqrt"] = np.sqrt(adata.layers["tpm"])
    with pytest.raises(ValueError, match="not an affine"):
        noise_floor(adata, real, layer="sqrt")


def test_without_slides_the_collection_is_one_slide():
    adata, _, _ = _poisson_collection()
    adata.layers["c_d_log1p"] = np.log2(adata.layers["tpm"] + 1)
    real = np.asarray(adata.layers["counts"] >= 1)
    with_slides = noise_floor(adata, real)
    del adata.obs["slide_id"]
    assert noise_floor(adata, real) == pytest.approx(with_slides, rel=0.1)


def test_evaluate_reports_the_floor_of_its_hidden_entries(processed_small, tmp_path):
    from typer.testing import CliRunner

    from spared.cli import app
    from spared.impute.evaluate import evaluate, hide_values

    table = evaluate(processed_small, ["mean", "knn"], 0.1, 3)
    floor = noise_floor(processed_small, hide_values(processed_small, 0.1, 3))
    assert 0 < floor < table["MSE"].min()
    np.testing.assert_allclose(table["noise_floor"], floor)
    processed_small.write_h5ad(tmp_path / "p.h5ad")
    res = CliRunner().invoke(app, ["evaluate-completion", str(tmp_path / "p.h5ad"), "--methods", "knn",
                                   "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert f"counting-noise floor of the hidden entries: MSE {floor:.4f}" in " ".join(res.output.split())
    from spared.cli.app import console
    from spared.cli.processing import print_completion

    with console.capture() as captured:
        print_completion(table)
    assert f"counting-noise floor of the hidden entries: MSE {floor:.4f}" in " ".join(captured.get().split())


def test_each_masks_floor_is_the_floor_of_its_own_entries(processed_small):
    """Entries' floors are computed once for all masks together; each mask's figure is still its own."""
    from spared.impute.evaluate import evaluate, hide_values

    table = evaluate(processed_small, ["mean"], 0.2, 11, n_masks=3)
    for seed in (11, 12, 13):
        alone = noise_floor(processed_small, hide_values(processed_small, 0.2, seed))
        assert table.loc[table["mask"] == seed, "noise_floor"].item() == pytest.approx(alone, rel=1e-12)
    assert table["noise_floor"].nunique() == 3


def test_evaluate_names_a_missing_floor(processed_small):
    from spared.impute.evaluate import evaluate

    unscaled = processed_small.copy()
    unscaled.layers["c_d_log1p"] = np.sqrt(unscaled.layers["tpm"])
    with pytest.warns(UserWarning, match="no counting-noise floor.*not an affine"):
        table = evaluate(unscaled, ["mean"], 0.1, 0)
    assert np.isnan(table.loc[0, "noise_floor"])
    del unscaled.layers["counts"]
    assert np.isnan(evaluate(unscaled, ["mean"], 0.1, 0).loc[0, "noise_floor"])

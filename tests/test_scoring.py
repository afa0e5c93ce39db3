"""Scoring predictions made anywhere (spared.bench.score, spared score), the checks of ResultsTable.append, and the
two-call loaders where the target decides the loss entries."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import spared
from conftest import TINY_BENCH
from spared.bench import ResultsTable, load_collection
from spared.bench.scoring import METRICS, PROTOCOL, check_row


@pytest.fixture(scope="module")
def collection(bench_data_dir):
    adata, _ = load_collection(TINY_BENCH, bench_data_dir)
    return adata


def frame(adata, layer: str = "c_d_log1p", split: str = "test") -> pd.DataFrame:
    keep = (adata.obs["split"] == split).to_numpy()
    return pd.DataFrame(np.asarray(adata.layers[layer])[keep], index=adata.obs_names[keep],
                        columns=adata.var_names)


def test_true_values_score_zero_in_any_spot_order(collection, bench_data_dir):
    truth = frame(collection)
    row = spared.bench.score(truth, TINY_BENCH, data_dir=bench_data_dir)
    assert row["MSE"] == 0 and row["MAE"] == 0 and row["PCC-Gene"] == pytest.approx(1)
    assert (row["eval_split"], row["layer"], row["scored_entries"], row["protocol"]) == ("test", "c_d_log1p",
                                                                                          "real", PROTOCOL)
    assert row["data_version"] and row["origin"] == "scored" and row["custom"] and check_row(row) == []
    noisy = truth + np.random.default_rng(0).normal(scale=0.3, size=truth.shape)
    first = spared.bench.score(noisy, collection, name="tiny")
    shuffled = noisy.sample(frac=1.0, random_state=1)[list(reversed(noisy.columns))]
    second = spared.bench.score(shuffled, collection, name="tiny")
    assert all(first[m] == pytest.approx(second[m], rel=1e-12) for m in METRICS)
    assert first["run_id"] == second["run_id"]  # the same predictions, whatever their order
    # an independent reference: the MSE over the measured test entries, by hand
    test = (collection.obs["split"] == "test").to_numpy()
    mask = np.asarray(collection.layers["mask"])[test]
    assert first["MSE"] == pytest.approx(((noisy.to_numpy() - truth.to_numpy())[mask] ** 2).mean())
    # gene symbols as columns, and predictions for every spot (other splits ignored) give the same figures
    symbols = noisy.rename(columns=dict(zip(collection.var_names, collection.var["gene_symbol"], strict=True)))
    everywhere = pd.concat([symbols, frame(collection, split="train").set_axis(symbols.columns, axis=1)])
    third = spared.bench.score(everywhere, collection, name="tiny")
    assert third["MSE"] == pytest.approx(first["MSE"]) and third["n_ignored_spots"] == 100
    # on simulated data the same predictions are also scored against the truth, over every entry
    truth_values = np.asarray(collection.layers["c_true_log1p"])[test]
    assert first["MSE vs truth"] == pytest.approx(((noisy.to_numpy() - truth_values) ** 2).mean(), rel=1e-6)


def test_misaligned_or_incomplete_predictions_are_refused(collection):
    truth = frame(collection)
    cases = {
        "lack 1 of the 100 spots": truth.iloc[1:],
        "not in the dataset": truth.rename(index={truth.index[0]: "nowhere"}),
        "unknown gene column": truth.rename(columns={truth.columns[0]: "GENE_X"}),
        "gene\\(s\\) missing": truth.iloc[:, 1:],
        "NaN/inf": truth.where(truth != truth.iloc[3, 0]),
        "twice": pd.concat([truth, truth.iloc[:1]]),
    }
    for message, predictions in cases.items():
        with pytest.raises(ValueError, match=message):
            spared.bench.score(predictions, collection, name="tiny")
    with pytest.raises(TypeError, match="bare array has no spot names"):
        spared.bench.score(truth.to_numpy(), collection)
    with pytest.raises(ValueError, match="target must be one of"):
        spared.bench.score(truth, collection, target="noisy")


def test_cli_scores_a_file_and_records_a_custom_row(collection, tmp_path, bench_data_dir):
    from typer.testing import CliRunner

    from spared.cli import app

    path = tmp_path / "pred.csv"
    (frame(collection) * 0.9).to_csv(path)
    out = tmp_path / "res"
    runner = CliRunner()
    result = runner.invoke(app, ["score", str(path), "--dataset", TINY_BENCH, "--target", "completed", "--model",
                                 "my_net", "--out", str(out), "--data-dir", str(bench_data_dir), "--json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.output)
    assert row["target"] == "completed" and row["layer"] == "c_t_log1p" and row["MSE"] > 0
    (record,) = json.loads(runner.invoke(app, ["results", str(out), "--json"]).output)
    assert record["model"] == "my_net" and record["custom"] and record["n completed"] == 1
    (tmp_path / "bad.csv").write_text("spot,g\nx,1\n")
    bad = runner.invoke(app, ["score", str(tmp_path / "bad.csv"), "--dataset", TINY_BENCH, "--data-dir",
                              str(bench_data_dir)])
    assert bad.exit_code == 1 and "unknown gene column" in " ".join(bad.output.split())


def test_results_table_refuses_rows_it_cannot_compare(tmp_path, results_row):
    table = ResultsTable(tmp_path)
    table.append(results_row("ok"))
    bad = {"layer": ("r1", {"target": "completed", "layer": "c_d_log1p"}),
           "eval_split": ("r2", {"eval_split": "train"}), "scored_entries": ("r3", {"scored_entries": "all"}),
           "protocol": ("r4", {"protocol": "0"}), "metric 'MSE'": ("r5", {"MSE": None}),
           "target must be one of": ("r6", {"target": "noisy"}), "data_version": ("r7", {"data_version": ""}),
           "n_spots_scored": ("r8", {"n_spots_scored": 0})}
    for message, (run_id, change) in bad.items():
        with pytest.raises(ValueError, match=message):
            table.append(results_row(run_id, **change))
    with pytest.raises(ValueError, match="lacks 'target'"):
        table.append({"run_id": "x", "model": "m", "dataset": "d", "status": "done"})
    assert list(table.load()["run_id"]) == ["ok"]  # nothing refused was written


@pytest.mark.parametrize("target", ["raw", "median", "completed", "c_t_log1p"])
def test_loaders_in_two_calls_take_the_loss_entries_from_the_target(target, collection, bench_data_dir):
    train, _val, test, module = spared.bench.loaders(collection, target=target, batch_size=32, patch_size=32,
                                                    data_dir=bench_data_dir / "patches_of_anndata")
    batch = next(iter(train))
    everything = target != "raw"
    assert bool(batch["loss_mask"].all()) == everything
    if not everything:
        assert bool((batch["loss_mask"] == batch["mask"]).all()) and not bool(batch["mask"].all())
    layer = "c_d_log1p" if target in ("raw", "median") else "c_t_log1p"
    np.testing.assert_array_equal(batch["target"].numpy(),
                                  np.asarray(collection.layers[layer])[batch["index"].numpy()])
    assert module.eval_split == "test" and len(test.dataset) == 100 and batch["image"].shape[-1] == 32
    assert "loss_weight" not in batch


def test_loaders_from_a_dataset_name_with_a_weight(bench_data_dir):
    loaders = spared.bench.loaders(TINY_BENCH, "completed", input_kind="slide", slide_spots=50, imputed_weight=0.5,
                                   patch_size=32, data_dir=bench_data_dir)
    batch = next(iter(loaders.train))
    assert batch["slide"].unique().numel() == 1 and batch["index"].shape[0] == 50
    weight, mask = batch["loss_weight"].numpy(), batch["mask"].numpy()
    assert set(np.unique(weight[mask])) == {1.0} and set(np.unique(weight[~mask])) == {0.5}

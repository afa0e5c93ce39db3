"""The authors' published figures (package data), our rows beside them, the preset column and the CLI."""

from __future__ import annotations

import csv
import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from spared.bench.provenance import data_preset, data_provenance
from spared.bench.published import beside_published, published_results
from spared.bench.results import ResultsTable, aggregate
from spared.cli import app


def test_published_figures_carry_their_source():
    table = published_results()
    assert table["source"].str.startswith("https://bcv-uniandes.github.io/spared_webpage/Datasets_Pages/").all()
    lung = published_results("villacampa_lung_organoid", "shufflenet").iloc[0]
    assert (lung["MSE"], lung["PCC-Gene"], lung["MSE text"]) == (0.7798, 0.3673, "0.7798")
    assert lung["source"].endswith("/VLO/dataset_VLO.html#Leaderboards")
    assert table["dataset"].nunique() == 26 and len(table) == 26 * 10 - 25  # Hist2ST: organoids only; 1 HisToGene gap


def test_published_figures_are_every_number_of_the_authors_table(realdata):
    """Every number of the authors' table (the shared reference copy) is shipped exactly as published."""
    reference = realdata.parent / "reference" / "spared_webpage_results.csv"
    if not reference.is_file():
        pytest.skip(f"{reference} not found (the shared reference tables sit beside the realdata folder)")
    with open(reference, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    by_abbr = published_results().set_index(["abbreviation", "model"])
    names = {"ShuffleNet": "shufflenet", "STNet": "stnet", "EGN": "egn", "EGGN": "eggn", "HisToGene": "histogene",
             "ViT-B": "vit_b", "ViT-B+&#916": "vit_b_delta", "SEPAL": "sepal", "BLEEP": "bleep", "Hist2ST": "hist2st"}
    checked = 0
    for row in rows:
        for column, model in names.items():
            for metric, prefix in (("MSE", "MSE_"), ("PCC-Gene", "PCC_")):
                text = row[prefix + column]
                key = (row["abbr"], model)
                if text == "-":
                    assert key not in by_abbr.index or by_abbr.loc[key, f"{metric} text"] is None
                else:
                    assert by_abbr.loc[key, f"{metric} text"] == text
                    checked += 1
    assert checked == 470


def test_published_results_reject_unknown_names():
    with pytest.raises(ValueError, match="no published figure for dataset 'her2st'; published datasets: "):
        published_results("her2st")
    with pytest.raises(ValueError, match="no published figure for model 'uni_probe'"):
        published_results(model="uni_probe")


def _processed_file(path, preset: str | None, config: dict | None = None, dataset: str = "villacampa_lung_organoid"):
    adata = ad.AnnData(np.ones((3, 2), dtype=np.float32))
    adata.uns["spared"] = {"dataset": dataset, **({"preset": preset} if preset else {}),
                           **({"config": json.dumps(config)} if config is not None else {})}
    adata.write_h5ad(path)
    return str(path)


def test_provenance_of_catalogue_names_files_and_simulated_data(tmp_path):
    assert data_provenance("villacampa_lung_organoid") == {"catalogue_key": "villacampa_lung_organoid",
                                                           "preset": "spared"}
    assert data_preset("villacampa_lung_organoid:spatial_graphs=original") == "original"
    assert data_preset("villacampa_lung_organoid:preset=original,top_moran_genes=64") == "original"
    assert data_provenance("simulated:n_slides=3") == {"catalogue_key": "", "preset": "spared"}
    recorded = _processed_file(tmp_path / "a.h5ad", "original")
    assert data_provenance(recorded) == {"catalogue_key": "villacampa_lung_organoid", "preset": "original"}
    older = _processed_file(tmp_path / "b.h5ad", None, {"spatial_graphs": "original"})
    assert data_preset(older) == "original"  # files written before the preset was recorded: told by their config
    assert data_preset(str(tmp_path / "gone.h5ad")) == "unknown"


def test_processing_records_its_preset(tmp_path):
    """``spared process --preset original`` (the ProcessingConfig.preset expansion) is recorded in the output."""
    from spared.synthetic import make_collection

    raw = make_collection(n_slides=3, n_spots=150, n_genes=120, seed=0, image=False)
    raw.write_h5ad(tmp_path / "raw.h5ad")
    res = CliRunner().invoke(app, ["process", str(tmp_path / "raw.h5ad"), str(tmp_path / "out.h5ad"), "--preset",
                                   "original", "--set", "top_moran_genes=16", "--set", "complete_missing=false"])
    assert res.exit_code == 0, res.output
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    assert out.uns["spared"]["preset"] == "original"
    assert json.loads(out.uns["spared"]["config"])["spatial_graphs"] == "original"
    assert data_preset(str(tmp_path / "out.h5ad")) == "original"
    res = CliRunner().invoke(app, ["process", str(tmp_path / "raw.h5ad"), str(tmp_path / "x.h5ad"), "--preset",
                                   "authors"])
    assert res.exit_code == 1 and "'preset' must be one of ['spared', 'original']" in res.output


def _results_folder(tmp_path, lung_file: str, results_row) -> ResultsTable:
    store = ResultsTable(tmp_path / "bench")
    rows = []
    for i, (model, dataset, target, mse, preset) in enumerate([
            ("shufflenet", lung_file, "raw", 0.80, "original"), ("shufflenet", lung_file, "raw", 0.82, "original"),
            ("shufflenet", lung_file, "completed", 0.70, "original"),
            ("stnet", "simulated:n_slides=3", "raw", 1.0, "spared")]):
        rows.append(results_row(f"r{i}", model=model, dataset=dataset, target=target, seed=i, spec_key=f"k{i}",
                                preset=preset, MSE=mse, **{"PCC-Gene": 0.3}))
    store.append(rows)
    return store


def test_our_rows_beside_the_published_figures_with_their_preset(tmp_path, results_row):
    lung = _processed_file(tmp_path / "lung.h5ad", "original")
    store = _results_folder(tmp_path, lung, results_row)
    summary = aggregate(store.dir)
    assert list(summary["preset"]) == ["original", "spared"]
    table = beside_published(summary)
    assert list(table["target"]) == ["raw", "completed"] and set(table["preset"]) == {"original"}
    assert table.loc[0, "MSE published"] == 0.7798 and table.loc[0, "MSE ours"] == pytest.approx(0.81)
    assert table.loc[0, "MSE difference"] == pytest.approx(0.81 - 0.7798)
    assert table.loc[1, "PCC-Gene difference"] == pytest.approx(0.3 - 0.3673)
    assert beside_published(summary[summary["model"] == "stnet"]).empty  # simulated data: nothing published
    old = pd.read_parquet(store.parquet_path).drop(columns=["preset"])
    assert "preset" not in aggregate(old)  # tables written before the column existed still aggregate


def test_cli_results_published(tmp_path, results_row):
    runner = CliRunner()
    res = runner.invoke(app, ["results", "--published"])
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if "villacampa_lung_organoid" in x and "ShuffleNet" in x)
    assert "0.7798" in line and "0.3673" in line
    res = runner.invoke(app, ["results", "--published", "--json"])
    records = json.loads(res.output)
    assert {"dataset": "villacampa_lung_organoid", "abbreviation": "VLO", "model": "shufflenet", "MSE": 0.7798,
            "PCC-Gene": 0.3673} | {"source": records[0]["source"].replace("VMB", "VLO")} in records
    lung = _processed_file(tmp_path / "lung.h5ad", "original")
    store = _results_folder(tmp_path, lung, results_row)
    res = runner.invoke(app, ["results", str(store.dir), "--published"])
    assert res.exit_code == 0 and "published figures" in res.output and "original" in res.output, res.output
    res = runner.invoke(app, ["results", str(store.dir), "--published", "--json"])
    records = json.loads(res.output)
    assert [(r["target"], r["preset"]) for r in records] == [("raw", "original"), ("completed", "original")]
    assert records[0]["MSE difference"] == pytest.approx(0.81 - 0.7798)
    res = runner.invoke(app, ["results"])
    assert res.exit_code == 1 and "--published" in res.output


def test_report_shows_our_rows_beside_the_published_figures(tmp_path, results_row):
    from spared.report import build_report

    lung = _processed_file(tmp_path / "lung.h5ad", "original")
    store = _results_folder(tmp_path, lung, results_row)
    page = build_report(store.dir).read_text()
    assert "Beside the published figures" in page and "0.7798" in page and "+0.030" in page
    assert "dataset_VLO.html#Leaderboards" in page and "Preset of our data" in page

"""`spared bench`: specs validated before any work, non-zero exit on failure, runs keyed on the data's content."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import spared.bench.train
from spared.bench import ResultsTable, RunSpec, aggregate, make_specs, run_benchmark
from spared.bench.checks import check_specs
from spared.bench.runs import dataset_labels
from spared.cli import app
from spared.io.atomic import write_h5ad

runner = CliRunner()
CRASHING = {"shufflenet"}


def said(result) -> str:
    return " ".join(result.output.split())


def no_traceback(result) -> bool:
    return "Traceback" not in result.output and (result.exception is None or isinstance(result.exception,
                                                                                          SystemExit))


@pytest.fixture
def fake_training(monkeypatch, results_row):
    """Replace training by a stand-in whose MSE is the number of genes of the file read (bookkeeping tests).

    Returns the list of run ids trained; a run of a model named in ``CRASHING`` raises as a failed run would.
    """
    import anndata as ad

    calls: list[str] = []

    def run_one(spec, out_dir, data_dir=None, progress=False):
        calls.append(spec.run_id)
        if spec.model in CRASHING:
            raise RuntimeError("simulated crash")
        name = spec.dataset
        n_genes = ad.read_h5ad(name).n_vars if name.endswith(".h5ad") else 7
        run_dir = Path(out_dir) / "runs" / spec.run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.json").write_text("{}")
        return results_row(spec.run_id, model=spec.model, dataset=spec.dataset, target=spec.target,
                           seed=spec.seed, MSE=float(n_genes), seconds=0.0, **{"PCC-Gene": 0.5})

    monkeypatch.setattr(spared.bench.train, "run_one", run_one)
    return calls


@pytest.fixture(scope="module")
def processed_file(tmp_path_factory, processed_small):
    path = tmp_path_factory.mktemp("data") / "sample.h5ad"
    write_h5ad(processed_small, path)
    return path


# -------------------------------------------------------------------------------------- 2. validated up front


def test_bench_validates_names_files_and_layers_before_any_work(tmp_path, processed_file, raw_small,
                                                               fake_training):
    raw = tmp_path / "raw.h5ad"
    raw_small.write_h5ad(raw)
    broken = tmp_path / "broken.h5ad"
    broken.write_bytes(b"not hdf5")
    cases = {
        "no_such_model": ["--models", "no_such_model", "--datasets", str(processed_file), "--targets", "raw"],
        "raw.h5ad": ["--models", "shufflenet", "--datasets", str(raw), "--targets", "raw"],
        "missing.h5ad": ["--models", "shufflenet", "--datasets", str(tmp_path / "missing.h5ad")],
        "broken.h5ad": ["--models", "shufflenet", "--datasets", str(broken)],
        "not_a_dataset": ["--models", "shufflenet", "--datasets", "not_a_dataset"],
        "n_slidez": ["--models", "shufflenet", "--datasets", "simulated:n_slidez=3"],
        "n_slides": ["--models", "shufflenet", "--datasets", "simulated:n_slides=abc"],
        "c_t_log1p": ["--models", "shufflenet", "--datasets", str(processed_file), "--targets", "completed"],
        "complete_missing": ["--models", "shufflenet", "--datasets", "simulated:complete_missing=no",
                             "--targets", "completed"],
        "augmentz": ["--models", "shufflenet", "--datasets", str(processed_file), "--targets", "raw",
                     "--model-config", "MODEL_CONFIG"],
        "no_weights.pt": ["--models", "shufflenet", "--datasets", str(processed_file), "--targets", "raw",
                          "--backbone-weights", str(tmp_path / "no_weights.pt")],
    }
    config = tmp_path / "models.json"
    config.write_text(json.dumps({"shufflenet": {"augmentz": True}}))
    for needle, args in cases.items():
        args = [str(config) if a == "MODEL_CONFIG" else a for a in args]
        out = tmp_path / f"res_{needle}"
        result = runner.invoke(app, ["bench", *args, "--out", str(out)], env={"COLUMNS": "200"})
        assert result.exit_code == 1, (needle, result.output)
        assert needle in said(result) and no_traceback(result), (needle, result.output)
        assert not (out / "results.parquet").exists()
    assert fake_training == []  # nothing was trained


def test_check_specs_lists_every_problem(processed_file):
    specs = [RunSpec("no_such_model", str(processed_file), "raw"), RunSpec("stnet", "not_a_dataset", "raw"),
             RunSpec("stnet", str(processed_file), "raw")]
    problems = check_specs(specs)
    assert len(problems) == 2
    assert any("no_such_model" in p for p in problems) and any("not_a_dataset" in p for p in problems)


def test_bench_exits_nonzero_when_a_run_fails(tmp_path, processed_file, fake_training):
    args = ["bench", "--models", "shufflenet,stnet", "--datasets", str(processed_file), "--targets", "raw",
            "--out", str(tmp_path / "res")]
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 1 and no_traceback(result), result.output
    assert "simulated crash" in said(result) and "1 of 2 runs failed" in said(result)
    table = pd.read_parquet(tmp_path / "res" / "results.parquet")
    assert sorted(table["status"]) == ["done", "failed"]


def test_every_run_failing_exits_nonzero(tmp_path, processed_file, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("could not download: network unreachable")

    monkeypatch.setattr(spared.bench.train, "run_one", offline)
    result = runner.invoke(app, ["bench", "--models", "stnet", "--datasets", str(processed_file), "--targets",
                                 "raw", "--out", str(tmp_path / "res")], env={"COLUMNS": "200"})
    assert result.exit_code == 1 and "network unreachable" in said(result), result.output


def test_a_later_success_replaces_the_failed_row_of_the_same_spec(tmp_path, processed_small, fake_training):
    path = tmp_path / "late.h5ad"
    early = RunSpec("stnet", str(path), "raw")  # the file does not exist yet: the run fails
    frame = run_benchmark([early], tmp_path / "res", data_dir=tmp_path / "cache")
    assert frame["status"].tolist() == ["failed"]
    write_h5ad(processed_small, path)
    late = RunSpec("stnet", str(path), "raw")
    assert late.run_id != early.run_id  # the data it ran on differs ...
    frame = run_benchmark([late], tmp_path / "res", data_dir=tmp_path / "cache")
    stored = ResultsTable(tmp_path / "res").load()
    assert stored["status"].tolist() == ["done"] and stored["run_id"].tolist() == [late.run_id]  # ... same spec
    assert aggregate(tmp_path / "res")["failed"].tolist() == [0]


# ------------------------------------------------------------------------------------------ 3. stale results


def test_reprocessed_file_is_run_again_and_shows_new_numbers(tmp_path, processed_small, fake_training):
    path = tmp_path / "data" / "sample.h5ad"
    write_h5ad(processed_small, path)
    out = tmp_path / "res"
    args = ["bench", "--models", "stnet", "--datasets", str(path), "--targets", "raw", "--out", str(out)]
    first = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert first.exit_code == 0, first.output
    assert f"{processed_small.n_vars:.4f}" in said(first)
    write_h5ad(processed_small[:, :20].copy(), path)  # "re-processed with other settings": 20 genes kept
    second = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert second.exit_code == 0, second.output
    assert len(fake_training) == 2 and "had finished before" not in said(second)
    assert "20.0000" in said(second)
    stored = ResultsTable(out).load()
    assert stored["MSE"].tolist() == [20.0]  # the stale row is replaced by the run on the current data
    shown = runner.invoke(app, ["results", str(out), "--json"])
    assert [r["MSE raw mean"] for r in json.loads(shown.output)] == [20.0]


def test_results_of_changed_data_are_marked_stale(tmp_path, processed_small, fake_training):
    path = tmp_path / "sample.h5ad"
    write_h5ad(processed_small, path)
    run_benchmark(make_specs(["stnet"], [str(path)], ["raw"]), tmp_path / "res")
    write_h5ad(processed_small[:, :20].copy(), path)  # changed after the run, not benchmarked again
    result = runner.invoke(app, ["results", str(tmp_path / "res")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "stale" in said(result) and "changed since" in said(result)
    records = json.loads(runner.invoke(app, ["results", str(tmp_path / "res"), "--json"]).output)
    assert records[0]["stale"] is True


def test_run_id_follows_the_content_not_the_path(tmp_path, processed_small):
    path = tmp_path / "x.h5ad"
    write_h5ad(processed_small, path)
    before = RunSpec("stnet", str(path), "raw")
    assert RunSpec("stnet", str(path), "raw").run_id == before.run_id  # same content: same run
    write_h5ad(processed_small[:, :20].copy(), path)
    assert RunSpec("stnet", str(path), "raw").run_id != before.run_id
    assert RunSpec.from_dict(json.loads(json.dumps(before.to_dict()))) == before  # recorded data version kept
    # parameter spellings that mean the same are the same dataset
    assert (RunSpec("stnet", "simulated:complete_missing=no,n_slides=3").run_id
            == RunSpec("stnet", "simulated:n_slides=3.0,complete_missing=false").run_id)


def test_same_file_name_in_two_folders_are_two_rows(tmp_path, processed_small, fake_training):
    paths = []
    for folder, n_genes in (("lab_a", 20), ("lab_b", 24)):
        path = tmp_path / folder / "sample.h5ad"
        write_h5ad(processed_small[:, :n_genes].copy(), path)
        paths.append(str(path))
    run_benchmark(make_specs(["stnet"], paths, ["raw"]), tmp_path / "res")
    labels = dataset_labels(paths)
    assert labels[paths[0]] != labels[paths[1]] and "lab_a" in labels[paths[0]]
    result = runner.invoke(app, ["results", str(tmp_path / "res")], env={"COLUMNS": "200"})
    assert "lab_a/sample" in said(result) and "lab_b/sample" in said(result)
    assert dataset_labels(["a/x.h5ad", "b/y.h5ad", "simulated"]) == {"a/x.h5ad": "x", "b/y.h5ad": "y",
                                                                     "simulated": "simulated"}
    assert np.unique(list(dataset_labels(["p/a/x.h5ad", "q/a/x.h5ad"]).values())).size == 2


def test_repeated_seeds_are_merged_with_a_note(tmp_path, processed_file, fake_training):
    args = ["bench", "--models", "stnet,stnet", "--datasets", str(processed_file), "--targets", "raw",
            "--seeds", "0,0,1", "--out", str(tmp_path / "res")]
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "--seeds repeats 0; each value counts once (2 of 3)" in said(result)
    assert "--models repeats stnet" in said(result) and "2 runs →" in said(result)
    assert len(fake_training) == 2  # as many runs as announced

"""The benchmark runner: run ids, batches, local and Ray executors, results table, aggregation, CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from spared.bench import (
    LocalExecutor,
    RayExecutor,
    ResultsTable,
    RunSpec,
    SpotDataModule,
    TrainingConfig,
    aggregate,
    load_table,
    make_specs,
    run_benchmark,
)
from spared.bench.data import IMAGENET_MEAN, IMAGENET_STD
from spared.bench.results import METRICS

#: A tiny simulated collection: 3 slides (one per split) of 100 spots, 16 genes kept, a short SpaCKLE fit.
TINY = "simulated:n_slides=3,n_spots=100,n_genes=48,top_moran_genes=16,spackle_max_steps=20"
#: A tiny ShuffleNet (a few thousand weights) trained for a few steps on 32-px patches.
TINY_SHUFFLENET = {"backbone_kwargs": {"stages_repeats": [1, 1, 1], "stages_out_channels": [8, 16, 16, 16, 32]}}
#: A one-layer ViT on 32-px patches (ViT-B+Δ, SEPAL's stage 1).
TINY_VIT = {"image_size": 32, "patch_size": 8, "num_layers": 1, "num_heads": 2, "hidden_dim": 16, "mlp_dim": 32}
FAST = TrainingConfig(max_steps=6, batch_size=16, patch_size=32, val_every=3, lr=1e-2, num_threads=1,
                      backbone_weights="none")


def tiny_specs(**changes) -> list[RunSpec]:
    """Two fast runs: the tiny ShuffleNet on raw and on completed targets."""
    return make_specs(["shufflenet"], [TINY], ["raw", "completed"], [0], {"shufflenet": TINY_SHUFFLENET},
                      changes.get("training", FAST))


@pytest.fixture(scope="module")
def data_dir(bench_data_dir):
    """Dataset cache shared by the benchmark tests (the tiny collection is simulated and processed once)."""
    return bench_data_dir


@pytest.fixture(scope="module")
def table(data_dir):
    return load_table(TINY, "c_d_log1p", data_dir, patch_size=32)


@pytest.fixture(scope="module")
def local_results(tmp_path_factory, data_dir):
    """The two tiny runs through the local executor: (results folder, table, rows reported)."""
    out = tmp_path_factory.mktemp("bench_local")
    reported: list[dict] = []
    frame = run_benchmark(tiny_specs(), out, LocalExecutor(), on_result=reported.append, data_dir=data_dir)
    return out, frame, reported


# ------------------------------------------------------------------------------------------------------ run ids


def test_run_id_stable_and_distinct():
    spec = RunSpec("stnet", "simulated:n_slides=3,n_spots=50", "raw", 0, {"augment": False},
                   TrainingConfig(max_steps=10))
    same = RunSpec("stnet", "simulated:n_spots=50,n_slides=3", "raw", 0, {"augment": False},
                   {"max_steps": 10, "num_workers": 2})
    assert spec.run_id == same.run_id
    assert spec.run_id.startswith("stnet-simulated-raw-s0-")
    variants = [
        RunSpec("sepal", spec.dataset, "raw", 0, {"augment": False}, spec.training),
        RunSpec("stnet", "simulated:n_slides=4,n_spots=50", "raw", 0, {"augment": False}, spec.training),
        RunSpec("stnet", spec.dataset, "completed", 0, {"augment": False}, spec.training),
        RunSpec("stnet", spec.dataset, "raw", 1, {"augment": False}, spec.training),
        RunSpec("stnet", spec.dataset, "raw", 0, {"augment": True}, spec.training),
        RunSpec("stnet", spec.dataset, "raw", 0, {"augment": False}, TrainingConfig(max_steps=11)),
    ]
    ids = {spec.run_id, *(v.run_id for v in variants)}
    assert len(ids) == 1 + len(variants)
    assert RunSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_run_spec_rejects_bad_input():
    with pytest.raises(ValueError, match="target"):
        RunSpec("stnet", "simulated", "noisy")
    with pytest.raises(ValueError, match="seed"):
        RunSpec("stnet", "simulated", "raw", -1)
    with pytest.raises(KeyError, match="unknown training setting"):
        RunSpec("stnet", "simulated", training={"max_stepz": 3})
    with pytest.raises(ValueError, match="max_steps"):
        TrainingConfig(max_steps=0)
    with pytest.raises(ValueError, match="loggers"):
        TrainingConfig(loggers=("csv", "neptune"))
    with pytest.raises(ValueError, match="key=value"):
        RunSpec("stnet", "simulated:n_slides").run_id  # noqa: B018


# -------------------------------------------------------------------------------------------------------- data


def test_patch_batches_follow_the_contract(table, data_dir):
    data = SpotDataModule(table, "patch", batch_size=16, seed=0)
    train = np.flatnonzero(table.split == "train")
    seen = []
    for batch in data.train_dataloader():
        assert set(batch) == {"image", "target", "mask", "loss_mask", "coords", "slide", "index", "counts",
                              "size_factor"}
        b = batch["index"].shape[0]
        assert b == 16  # full batches only while training
        assert batch["image"].shape == (b, 3, 32, 32) and batch["image"].dtype.is_floating_point
        assert batch["target"].shape == (b, table.n_genes) and batch["mask"].dtype == torch_bool()
        idx = batch["index"].numpy()
        np.testing.assert_array_equal(batch["target"].numpy(), table.target[idx])
        np.testing.assert_array_equal(batch["mask"].numpy(), table.mask[idx])
        np.testing.assert_array_equal(batch["loss_mask"].numpy(), table.mask[idx])  # a layer name: measured only
        np.testing.assert_array_equal(batch["coords"].numpy(), table.coords[idx])
        np.testing.assert_array_equal(batch["slide"].numpy(), table.slide[idx])
        np.testing.assert_array_equal(batch["counts"].numpy(), table.counts[idx])
        seen.extend(idx.tolist())
    assert set(seen) <= set(train.tolist())  # split isolation
    assert len(seen) == len(train) // 16 * 16
    # normalisation: ImageNet mean/std of the stored uint8 patch
    first = next(iter(data.val_dataloader()))
    raw = table.store[first["index"].numpy()[:1]][0].astype(np.float32) / 255.0
    expected = (raw - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(first["image"][0].permute(1, 2, 0).numpy(), expected, atol=1e-5)
    # evaluation covers the held-out split exactly once; the completed target puts every entry in the loss
    completed = SpotDataModule(load_table(TINY, "completed", data_dir, patch_size=32), "patch", batch_size=16)
    assert completed.eval_split == "test"
    test_idx = np.concatenate([b["index"].numpy() for b in completed.test_dataloader()])
    np.testing.assert_array_equal(np.sort(test_idx), np.flatnonzero(table.split == "test"))
    assert all(bool(b["loss_mask"].all()) for b in completed.test_dataloader())


def test_slide_batches_hold_one_slide(table):
    data = SpotDataModule(table, "slide", slide_spots=40, seed=1)
    train = set(np.flatnonzero(table.split == "train").tolist())
    batches = list(data.train_dataloader())
    assert len(batches) == 3  # ceil(100 / 40) groups for the one training slide
    for batch in batches:
        assert batch["slide"].unique().numel() == 1
        assert batch["index"].shape[0] == 40
        assert set(batch["index"].tolist()) <= train
        # contiguous: the spots nearest one centre, so the group spans far less than the slide
        pos = table.positions[batch["index"].numpy()]
        assert np.ptp(pos, axis=0).max() < np.ptp(table.positions[list(train)], axis=0).max()
    val = [b["index"].numpy() for b in data.val_dataloader()]
    assert all(v.size <= 40 for v in val)
    np.testing.assert_array_equal(np.sort(np.concatenate(val)), np.flatnonzero(table.split == "val"))


def test_table_errors_are_clear(table, data_dir):
    with pytest.raises(ValueError, match="input_kind"):
        SpotDataModule(table, "graphs")
    with pytest.raises(ValueError, match="local-graph settings"):
        SpotDataModule(table, "graph")
    with pytest.raises(KeyError, match="layer 'c_x_log1p' is missing"):
        load_table(TINY, "c_x_log1p", data_dir, patch_size=32)
    with pytest.raises(KeyError, match="unknown simulated dataset parameter"):
        load_table("simulated:n_slidez=3", "c_d_log1p", data_dir, patch_size=32)


def torch_bool():
    import torch

    return torch.bool


# --------------------------------------------------------------------------------------------------- executors


def test_local_executor_writes_runs_and_table(local_results):
    out, frame, reported = local_results
    assert len(reported) == 2 and list(frame["status"]) == ["done", "done"]
    assert set(frame["target"]) == {"raw", "completed"}
    for row in frame.itertuples():
        run_dir = out / "runs" / row.run_id
        for name in ("config.json", "metrics.json", "predictions.npz", "checkpoints/best.ckpt",
                     "logs/version_0/metrics.csv"):
            assert (run_dir / name).is_file(), name
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["MSE"] == pytest.approx(row.MSE) and row.eval_split == "test" and row.steps == 6
        preds = np.load(run_dir / "predictions.npz")
        assert preds["prediction"].shape == preds["target"].shape == (100, row.n_genes)
        from spared.metrics import compute

        assert compute(preds["target"], preds["prediction"], preds["mask"])["MSE"] == pytest.approx(row.MSE)
        log = pd.read_csv(run_dir / "logs/version_0/metrics.csv")
        assert "val_MSE" in log and log["val_MSE"].notna().sum() == 2
    stored = pd.read_parquet(out / "results.parquet")
    assert set(stored["run_id"]) == set(frame["run_id"])
    assert set(pd.read_csv(out / "results.csv")["run_id"]) == set(frame["run_id"])
    for metric in METRICS:
        assert np.isfinite(stored[metric]).all()
    # raw targets are scored against c_d_log1p, completed targets against c_t_log1p (real entries only)
    layers = dict(zip(stored["target"], stored["layer"], strict=True))
    assert layers == {"raw": "c_d_log1p", "completed": "c_t_log1p"}
    assert set(stored["preset"]) == {"spared"}  # every row says which processing preset made its data


def test_second_invocation_skips_and_force_reruns(local_results, data_dir):
    out, frame, _ = local_results
    stamps = {rid: (out / "runs" / rid / "metrics.json").stat().st_mtime_ns for rid in frame["run_id"]}
    reported: list[dict] = []
    again = run_benchmark(tiny_specs(), out, on_result=reported.append, data_dir=data_dir)
    assert reported == []
    pd.testing.assert_frame_equal(again, frame)
    assert stamps == {rid: (out / "runs" / rid / "metrics.json").stat().st_mtime_ns for rid in frame["run_id"]}
    forced = run_benchmark(tiny_specs()[:1], out, force=True, on_result=reported.append, data_dir=data_dir)
    assert [r["run_id"] for r in reported] == [frame["run_id"][0]]
    assert (out / "runs" / frame["run_id"][0] / "metrics.json").stat().st_mtime_ns > stamps[frame["run_id"][0]]
    assert forced["MSE"][0] == pytest.approx(frame["MSE"][0], rel=1e-5)  # seeded: the same run again
    assert len(pd.read_parquet(out / "results.parquet")) == 2


def test_failed_run_is_recorded_and_others_go_on(tmp_path, data_dir):
    good = tiny_specs()[0]
    bad = RunSpec("no_such_model", TINY, "raw", 0, {}, FAST)
    broken = RunSpec("shufflenet", TINY, "raw", 0, {"backbone_kwargs": {"stages_repeats": [1]}}, FAST)
    frame = run_benchmark([bad, good, broken], tmp_path, data_dir=data_dir)
    status = dict(zip(frame["run_id"], frame["status"], strict=True))
    assert status == {bad.run_id: "failed", good.run_id: "done", broken.run_id: "failed"}
    errors = dict(zip(frame["run_id"], frame["error"], strict=True))
    assert "unknown model 'no_such_model'" in errors[bad.run_id]
    assert errors[broken.run_id]
    assert set(frame["preset"]) == {"spared"}  # failed rows too
    assert (tmp_path / "runs" / bad.run_id / "error.txt").read_text().startswith("Traceback")
    assert not (tmp_path / "runs" / bad.run_id / "metrics.json").exists()
    # failed runs are not 'finished': the next invocation tries them again (and records them failed again)
    reported: list[dict] = []
    run_benchmark([bad, good], tmp_path, on_result=reported.append, data_dir=data_dir)
    assert [r["run_id"] for r in reported] == [bad.run_id]
    summary = aggregate(tmp_path)
    assert summary.loc[summary["model"] == "no_such_model", "failed"].item() == 1


def test_interrupted_run_restarts_cleanly(tmp_path, data_dir, results_row):
    spec = tiny_specs()[0]
    run_dir = tmp_path / "runs" / spec.run_id
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.json").write_text("{}")
    (run_dir / "checkpoints" / "epoch=0-step=1.ckpt").write_bytes(b"partial")
    # a stale 'done' row whose folder lost metrics.json does not count as finished either
    ResultsTable(tmp_path).append(results_row(spec.run_id, model="shufflenet"))
    frame = run_benchmark([spec], tmp_path, data_dir=data_dir)
    assert frame["status"].item() == "done"
    assert (run_dir / "metrics.json").is_file()
    assert not (run_dir / "checkpoints" / "epoch=0-step=1.ckpt").exists()
    assert json.loads((run_dir / "config.json").read_text())["run_id"] == spec.run_id


def test_ray_executor_matches_local(local_results, tmp_path, data_dir):
    ray = pytest.importorskip("ray")
    from spared.bench.train import stage1_spec

    _, local, _ = local_results
    sepal = RunSpec("sepal", TINY, "raw", 0, {"stage1": {"backbone_kwargs": TINY_VIT}, "preprocess_dims": [8],
                                              "graph_dims": [8]}, FAST)
    events: list[dict] = []
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        executor = RayExecutor(num_cpus_per_run=1, node_cache=str(tmp_path / "node"), progress=events.append)
        broken = RunSpec("shufflenet", TINY, "raw", 0, {"backbone_kwargs": {"stages_repeats": [1]}}, FAST)
        remote = run_benchmark([*tiny_specs(), broken], tmp_path, executor, data_dir=data_dir)
        # SEPAL's task waits for its stage-1 run's task and trains on the run folder that task sent back
        chained = run_benchmark([sepal, stage1_spec(sepal)], tmp_path / "sepal", executor, data_dir=data_dir)
    finally:
        ray.shutdown()
    assert list(chained["status"]) == ["done", "done"], list(chained["error"])
    order = [(e["event"], e["run_id"]) for e in events if e["event"] in ("started", "finished")][-4:]
    assert order == [("started", stage1_spec(sepal).run_id), ("finished", stage1_spec(sepal).run_id),
                     ("started", sepal.run_id), ("finished", sepal.run_id)]
    assert sorted(p.name for p in (tmp_path / "sepal" / "runs").iterdir()) == sorted(chained["run_id"])
    failed = remote.iloc[2]  # a run that raised on its node enters the table as a failed row, like a local one
    assert failed["status"] == "failed" and failed["error"] and failed["node"] and failed["attempts"] == 1
    assert (failed["data_version"], failed["spec_key"], failed["custom"]) == (broken.data_version, broken.spec_key,
                                                                             False)
    remote = remote.iloc[:2]
    assert list(remote["status"]) == ["done", "done"]
    assert list(remote["run_id"]) == list(local["run_id"])
    comparable = ["layer", "eval_split", "scored_entries", "protocol", "custom", "data_version", "spec_key",
                  "imputed_weight", "dataset"]  # what makes rows comparable is the same from Ray
    pd.testing.assert_frame_equal(remote[comparable].reset_index(drop=True), local[comparable].reset_index(drop=True))
    for metric in (*METRICS, "baseline_MSE", "best_val_MSE"):  # one thread each: the same numbers, bit for bit
        np.testing.assert_array_equal(remote[metric], local[metric], err_msg=metric)
    for rid in remote["run_id"]:
        assert (tmp_path / "runs" / rid / "metrics.json").is_file()
        np.testing.assert_array_equal(np.load(tmp_path / "runs" / rid / "predictions.npz")["prediction"],
                                      np.load(local_results[0] / "runs" / rid / "predictions.npz")["prediction"])
    assert len(pd.read_parquet(tmp_path / "results.parquet")) == 3


# ----------------------------------------------------------------------------------------- results and the CLI


@pytest.fixture
def hand_built_rows(results_row):
    rows = []
    values = {("stnet", "raw"): [1.0, 2.0, 4.0], ("stnet", "completed"): [0.5, 0.7],
              ("sepal", "raw"): [0.9], ("sepal", "completed"): [0.4, 0.6]}
    for (model, target), mses in values.items():
        for seed, mse in enumerate(mses):
            rows.append(results_row(f"{model}-{target}-{seed}", model=model, target=target, seed=seed, MSE=mse,
                                    **{"PCC-Gene": 0.1 * (seed + 1)}))
    rows.append({"run_id": "sepal-raw-9", "model": "sepal", "dataset": "simulated", "target": "raw", "seed": 9,
                 "status": "failed", "error": "RuntimeError: out of memory", "data_version": "v1"})
    return rows


def test_aggregate_mean_std_over_seeds(tmp_path, hand_built_rows):
    ResultsTable(tmp_path).append(hand_built_rows)
    summary = aggregate(tmp_path).set_index("model")
    stnet, sepal = summary.loc["stnet"], summary.loc["sepal"]
    assert stnet["MSE raw mean"] == pytest.approx(7 / 3)
    assert stnet["MSE raw std"] == pytest.approx(np.std([1.0, 2.0, 4.0], ddof=1))
    assert stnet["MSE completed mean"] == pytest.approx(0.6)
    assert stnet["MSE completed std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert stnet["n raw"] == 3 and stnet["n completed"] == 2 and stnet["failed"] == 0
    assert stnet["PCC-Gene raw mean"] == pytest.approx(0.2)
    assert sepal["MSE raw mean"] == pytest.approx(0.9) and np.isnan(sepal["MSE raw std"])
    assert sepal["n raw"] == 1 and sepal["failed"] == 1  # the failed seed counts as failed, not in the mean
    with pytest.raises(KeyError, match="R2-Plus"):
        aggregate(tmp_path, metrics=("R2-Plus",))


def test_results_table_rewrites_rows_atomically(tmp_path, results_row):
    table = ResultsTable(tmp_path)
    table.append({"run_id": "a", "model": "stnet", "dataset": "simulated", "target": "raw", "status": "failed",
                  "error": "boom"})
    table.append(results_row("a", MSE=1.5))
    stored = table.load()
    assert len(stored) == 1 and stored["status"].item() == "done" and stored["MSE"].item() == 1.5
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(ValueError, match="status"):
        table.append(results_row("b", status="crashed"))


def test_cli_results_prints_the_table(tmp_path, hand_built_rows):
    from typer.testing import CliRunner

    from spared.cli import app

    ResultsTable(tmp_path).append(hand_built_rows)
    runner = CliRunner()
    result = runner.invoke(app, ["results", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "stnet" in result.output and "sepal" in result.output
    assert "2.333 ± 1.528" in result.output and "0.600 ± 0.141" in result.output
    as_json = runner.invoke(app, ["results", str(tmp_path), "--json"])
    assert as_json.exit_code == 0, as_json.output
    records = {r["model"]: r for r in json.loads(as_json.output)}
    assert records["stnet"]["MSE raw mean"] == pytest.approx(7 / 3) and records["sepal"]["MSE raw std"] is None
    missing = runner.invoke(app, ["results", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and "does not exist" in " ".join(missing.output.split())


def test_cli_bench_runs_and_skips(tmp_path, data_dir):
    from typer.testing import CliRunner

    from spared.cli import app

    config = tmp_path / "models.json"
    config.write_text(json.dumps({"shufflenet": TINY_SHUFFLENET}))
    args = ["bench", "--models", "shufflenet", "--datasets", TINY, "--targets", "raw", "--seeds", "0",
            "--max-steps", "4", "--val-every", "2", "--batch-size", "16", "--patch-size", "32",
            "--backbone-weights", "none", "--model-config", str(config), "--out", str(tmp_path / "res"),
            "--data-dir", str(data_dir)]
    runner = CliRunner()
    first = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert first.exit_code == 0, first.output
    assert "done" in first.output and "shufflenet" in first.output and "MSE raw" in first.output
    assert len(pd.read_parquet(tmp_path / "res" / "results.parquet")) == 1
    second = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert second.exit_code == 0 and "1 runs had finished before" in second.output
    bad = runner.invoke(app, [*args[:3], "--executor", "slurm"])
    assert bad.exit_code == 1 and "--executor must be one of" in " ".join(bad.output.split())

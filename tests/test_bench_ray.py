"""The Ray executor on a real two-node cluster whose nodes share nothing with the driver but Ray.

The cluster (``ray_cluster`` in conftest.py) runs each node in its own working folder with its own temporary
folder; drivers run as separate processes from a third folder, with the cluster's token in their environment.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("ray")

from test_bench import FAST, TINY, TINY_SHUFFLENET

SPARED = [str(Path(sys.executable).with_name("spared"))]
#: Files every finished run folder holds.
RUN_FILES = ("config.json", "metrics.json", "predictions.npz", "checkpoints/best.ckpt", "logs/version_0/metrics.csv")


@pytest.fixture(scope="module")
def tiny_h5ad(tmp_path_factory) -> Path:
    """A processed tiny simulated collection written as a plain ``.h5ad`` (no patch store recorded)."""
    from spared.bench.train import dataset_files

    folder = tmp_path_factory.mktemp("tiny")
    files = dataset_files(TINY, folder / "cache", FAST.patch_size)
    return Path(shutil.copy(files.h5ad, folder / "tiny.h5ad"))


def bench_args(address: str, *more: str) -> list[str]:
    return [*SPARED, "bench", "--models", "shufflenet", "--targets", "raw,completed", "--max-steps", "4",
            "--val-every", "2", "--batch-size", "16", "--patch-size", "32", "--backbone-weights", "none",
            "--model-config", "models.json", "--threads-per-run", "1", "--executor", "ray", "--address", address,
            *more]


def user_folder(root: Path, tiny_h5ad: Path) -> Path:
    """A driver's working folder holding the dataset and the model settings."""
    root.mkdir(parents=True)
    shutil.copy(tiny_h5ad, root / "sim.h5ad")
    (root / "models.json").write_text(json.dumps({"shufflenet": TINY_SHUFFLENET}))
    return root


def test_bench_from_a_third_folder_ships_inputs_retries_and_brings_every_artefact_back(ray_cluster, tiny_h5ad,
                                                                                         tmp_path):
    """Relative --datasets and --out; once a run has started on a node (its inputs fetched there), the driver's
    dataset file and the encoder weights file its model settings name are moved away and that run's worker is
    killed: both runs still finish (the killed one on its second attempt, --retries 1), and every artefact lands
    under --out; a rerun skips both."""
    import torch

    from spared.models import build_model

    user = user_folder(tmp_path / "user", tiny_h5ad)
    (user / "weights").mkdir()
    (user / "weights" / "notes.txt").write_text("weights in a folder only the driver has")
    (user / "encoders").mkdir()
    encoder = build_model("shufflenet", 8, backbone_weights="none", **TINY_SHUFFLENET).encoder
    torch.save(encoder.state_dict(), user / "encoders" / "tiny.pt")
    settings = {"shufflenet": {**TINY_SHUFFLENET, "backbone_weights": "encoders/tiny.pt"}}
    (user / "models.json").write_text(json.dumps(settings))
    args = bench_args(ray_cluster.address, "--datasets", "sim.h5ad", "--out", "out", "--progress", "--retries", "1",
                      "--weights-dir", "weights")
    driver = subprocess.Popen(args, cwd=user, env=ray_cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    killed: list[int] = []
    deadline = time.monotonic() + 300
    while driver.poll() is None and not killed and time.monotonic() < deadline:
        for pid, node in ray_cluster.task_processes("run_on_node").items():
            if list((node / "tmp" / "spared-ray-cache" / "work").glob(".*.tmp")):  # started, inputs fetched
                (user / "sim.h5ad").rename(user / "moved.h5ad")
                (user / "encoders").rename(user / "moved")
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
        time.sleep(0.1)
    stdout, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 0, stdout + stderr
    assert len(killed) == 1 and not (user / "sim.h5ad").exists()
    table = pd.read_parquet(user / "out" / "results.parquet")
    assert list(table["status"]) == ["done", "done"], table["error"].tolist()
    assert sorted(table["attempts"]) == [1, 2]
    assert table["dataset"].unique().tolist() == [str(user / "sim.h5ad")]
    assert (table["node"] != "").all() and table["ray_node_id"].str.len().gt(0).all()
    from spared.bench.runs import TARGET_LAYERS, data_fingerprint
    from spared.bench.scoring import check_row, protocol_fields

    for row in table.to_dict("records"):  # as comparable as a local row: the protocol, the data, the model
        assert check_row(row) == [], row
        expected = protocol_fields(row["target"], TARGET_LAYERS[row["target"]], row["eval_split"])
        assert {k: row[k] for k in expected} == expected
        assert row["data_version"] == data_fingerprint(str(user / "moved.h5ad")) and not row["custom"]
    from spared.metrics import compute

    for row in table.itertuples():
        run_dir = user / "out" / "runs" / row.run_id
        assert row.run_dir == str(run_dir)
        for name in RUN_FILES:
            assert (run_dir / name).is_file(), name
        assert json.loads((run_dir / "metrics.json").read_text())["run_dir"] == str(run_dir)
        preds = np.load(run_dir / "predictions.npz")
        assert compute(preds["target"], preds["prediction"], preds["mask"])["MSE"] == pytest.approx(row.MSE)
    # no scratch folder is left in --out, nothing was written where the nodes run, and their caches hold the
    # shipped inputs, named by content hash
    assert not list((user / "out").glob(".*"))
    for node in ray_cluster.node_dirs:
        assert {p.name for p in node.iterdir()} <= {"tmp", "ray_start.log"}
    cached = {p.name for p in ray_cluster.root.glob("*/tmp/spared-ray-cache/inputs/*/[!.]*")}
    assert cached == {"sim.h5ad", "patches_32_1.h5", "notes.txt", "tiny.pt"}
    for row in table.itertuples():  # --weights-dir was rebuilt on the run's node
        weights_dir = Path(json.loads((Path(row.run_dir) / "config.json").read_text())["training"]["weights_dir"])
        assert (weights_dir / "notes.txt").read_text() == "weights in a folder only the driver has"
        assert weights_dir.is_relative_to(ray_cluster.root)
    assert re.search(r"runs ━+ 2/2", stdout)  # the progress board, as with the local executor

    for row in table.itertuples():  # the run's settings keep the driver's string
        config = json.loads((Path(row.run_dir) / "config.json").read_text())
        assert config["model_config"]["backbone_weights"] == "encoders/tiny.pt"

    (user / "moved.h5ad").rename(user / "sim.h5ad")
    (user / "moved").rename(user / "encoders")
    stamps = {p: p.stat().st_mtime_ns for p in (user / "out" / "runs").glob("*/metrics.json")}
    again = subprocess.run(args, cwd=user, env=ray_cluster.env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 runs had finished before" in again.stdout
    assert stamps == {p: p.stat().st_mtime_ns for p in (user / "out" / "runs").glob("*/metrics.json")}

    from typer.testing import CliRunner

    from spared.cli import app

    report = CliRunner().invoke(app, ["report", str(user / "out")])
    assert report.exit_code == 0, report.output
    assert "shufflenet" in (user / "out" / "report.html").read_text()


def test_a_request_no_node_meets_fails_within_seconds(ray_cluster, tiny_h5ad, tmp_path):
    user = user_folder(tmp_path / "user", tiny_h5ad)
    start = time.monotonic()
    done = subprocess.run(bench_args(ray_cluster.address, "--datasets", "sim.h5ad", "--gpus-per-run", "1"),
                          cwd=user, env=ray_cluster.env, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    message = " ".join(done.stderr.split())
    assert done.returncode == 1, done.stdout + done.stderr
    assert "no node of the Ray cluster has 1 GPU (the most any node has: 0 GPU)" in message
    assert "--gpus-per-run" in message and elapsed < 30
    assert not (user / "results").exists() or not list((user / "results").glob("runs/*"))


TIMEOUT_DRIVER = """
import json, os, sys, time
from spared.cluster.session import Job, RaySettings, connect, run_tasks

def task(seconds, prerequisite, events):  # defined in __main__: Ray ships it by value
    events({"event": "started", "node": "here"})
    time.sleep(seconds)
    return [seconds, open("note.txt").read(), os.environ["SPARED_NOTE"]]  # the runtime environment's

settings = RaySettings(os.environ["ADDRESS"], timeout=2.0,
                       runtime_env={"working_dir": "shipped", "env_vars": {"SPARED_NOTE": "env"}})
connect(settings)
start = time.monotonic()
out = {o.key: [repr(o.error), o.value, o.attempts, round(time.monotonic() - start, 1)]
       for o in run_tasks(task, [Job("slow", (600,)), Job("quick", (0,))], settings)}
print(json.dumps(out))
"""


def test_a_run_past_its_time_limit_is_stopped(ray_cluster, tmp_path):
    """Through Ray Client (ray://), the form for drivers outside the cluster, with a runtime environment (a local
    working folder uploaded for the tasks, an environment variable)."""
    if not ray_cluster.client_address:
        pytest.skip("Ray Client is not installed: pip install 'spared[ray]'")
    (tmp_path / "shipped").mkdir()
    (tmp_path / "shipped" / "note.txt").write_text("folder")
    done = subprocess.run([sys.executable, "-c", TIMEOUT_DRIVER], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={**ray_cluster.env, "ADDRESS": ray_cluster.client_address})
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["quick"][:3] == ["None", [0, "folder", "env"], 1]
    error, value, attempts, seconds = out["slow"]
    assert "TimeoutError" in error and "stopped after 2 s" in error and value is None and attempts == 1
    assert seconds < 30
    assert not ray_cluster.task_processes("task")  # the stopped task's worker is gone


def test_a_driver_without_the_token_is_told_how_to_connect(ray_cluster, tiny_h5ad, tmp_path):
    user = user_folder(tmp_path / "user", tiny_h5ad)
    env = {k: v for k, v in ray_cluster.env.items() if not k.startswith("RAY_AUTH")}
    env["RAY_gcs_server_port_wait_time_s"] = "1"  # one connection attempt instead of Ray's 20
    done = subprocess.run(bench_args(ray_cluster.address, "--datasets", "sim.h5ad"), cwd=user, env=env,
                          capture_output=True, text=True, timeout=120)
    message = " ".join(done.stderr.split())
    assert done.returncode == 1
    assert f"could not connect to the Ray cluster at {ray_cluster.address}" in message
    assert "RAY_AUTH_MODE=token" in message and "RAY_AUTH_TOKEN" in message


def test_prepare_builds_catalogue_datasets_on_the_cluster(ray_cluster, realdata, tmp_path, monkeypatch):
    """Two real catalogue datasets prepared at once, one per node, from a folder both nodes read; the caches come
    back (through a storage location) to the driver's relative --data-dir; a rerun finds them there.

    Each cache comes back under the key of the raw files its node read, with its patch store beside it as the
    .h5ad records it and the record of its key material: the driver, which holds no raw files, finds it (get,
    the benchmark's data version and collection), reads its patches by the recorded relative path, and a local
    prepare that links the same raw files here finds it by its key instead of building anew."""
    user = tmp_path / "user"
    user.mkdir()
    names = ["villacampa_kidney_organoid", "villacampa_lung_organoid"]
    source = realdata / "villacampa_xjtv62ncwr"
    settings = ["--set", "top_moran_genes=16", "--set", "complete_missing=false", "--set", "patch_size=32"]
    args = [*SPARED, "prepare", *names, "--executor", "ray", "--address", ray_cluster.address, "--data-dir", "data",
            "--from", str(source), *settings, "--storage", str(tmp_path / "store")]
    env = {**ray_cluster.env, "SPARED_DATA": str(tmp_path / "unused")}
    done = subprocess.run(args, cwd=user, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "note:" not in done.stdout  # no raw files on the driver: nothing makes another key here
    from spared.bench.runs import RunSpec
    from spared.bench.train import load_collection
    from spared.datasets import cache_paths, get, inputs_file
    from spared.io.patch_paths import read_h5ad
    from spared.io.patches import PatchStore
    from spared.io.sniff import sha256sum

    config = {"top_moran_genes": 16, "complete_missing": False, "patch_size": 32}
    monkeypatch.setenv("SPARED_DATA", str(user / "data"))
    for name in names:
        h5ad, patches = cache_paths(name, config, user / "data")
        assert h5ad.is_file() and patches.is_file() and inputs_file(h5ad).is_file(), name
        # the files came back through the storage location (every node reads it), named by content hash
        assert sha256sum(tmp_path / "store" / "spared-objects" / sha256sum(h5ad) / h5ad.name) == sha256sum(h5ad)
        plain = read_h5ad(h5ad)  # the store recorded relative to the .h5ad is the one beside it
        assert PatchStore.from_adata(plain).path == patches and len(PatchStore.from_adata(plain)) == plain.n_obs
        adata = get(name, config, data_dir=user / "data", progress=False)  # read from the cache shipped back
        assert adata.n_vars == 16 and adata.uns["spared"]["dataset"] == name
        dataset = f"{name}:top_moran_genes=16,complete_missing=false,patch_size=32"
        assert RunSpec("shufflenet", dataset).data_version == f"cache-{h5ad.stem}"
        assert load_collection(dataset, tmp_path / "bench")[0].n_obs == adata.n_obs
    assert not (tmp_path / "unused").exists() and not (user / "data" / "villacampa_xjtv62ncwr").exists()
    again = subprocess.run(args, cwd=user, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count("loaded ") == 2, again.stdout + again.stderr
    local = subprocess.run([*SPARED, "prepare", names[1], "--data-dir", "data", "--from", str(source), *settings],
                           cwd=user, env=env, capture_output=True, text=True, timeout=300)
    assert local.returncode == 0 and f"loaded {names[1]}" in local.stdout, local.stdout + local.stderr
    assert len(list((user / "data" / names[1] / "processed").glob("*.h5ad"))) == 1

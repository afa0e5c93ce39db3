"""Cluster plumbing that needs no running cluster: files shipped through a storage location and cached by content
hash, run folders packed and unpacked, resource requests against node offers, runtime environments, option
parsing, connection messages, the progress board, and datasets staged for a run."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest

from spared.cluster.session import (
    AUTH_HELP,
    RaySettings,
    TaskResources,
    connection_help,
    merge_runtime_env,
    unmet_request,
)
from spared.cluster.transfer import (
    Shipper,
    TransferError,
    archive_folders,
    fetch,
    fetch_files,
    fetch_folder,
    fetch_path,
    pack_dirs,
    receive,
    send_back,
    ship_folder,
    ship_path,
    unpack_dir,
)


def test_storage_location_ships_once_and_nodes_cache_by_content(tmp_path):
    data = tmp_path / "driver" / "data.h5ad"
    data.parent.mkdir()
    data.write_bytes(np.random.default_rng(0).bytes(100_000))
    shipper = Shipper(str(tmp_path / "store"))
    ref = shipper.ship(data)
    assert ref.ref is None and ref.data is None and ref.size == 100_000
    stored = tmp_path / "store" / "spared-objects" / ref.sha256 / "data.h5ad"
    assert stored.read_bytes() == data.read_bytes()
    assert shipper.ship(data) == ref  # the same content is shipped once
    copy = tmp_path / "driver" / "copy.h5ad"
    shutil.copy(data, copy)
    assert shipper.ship(copy).uri == ref.uri.replace("copy.h5ad", "data.h5ad")

    node = tmp_path / "node"
    data.unlink()  # the node never reads the driver's path
    local = fetch(ref, node)
    assert local == node / "inputs" / ref.sha256 / "data.h5ad" and local.read_bytes() == stored.read_bytes()
    stamp = local.stat().st_mtime_ns
    assert fetch(ref, node).stat().st_mtime_ns == stamp  # cached: not fetched again

    stored.write_bytes(b"x" * 100_000)  # damaged in the storage location
    with pytest.raises(TransferError, match="arrived damaged"):
        fetch(ref, tmp_path / "other_node")
    assert not list((tmp_path / "other_node" / "inputs" / ref.sha256).glob("[!.]*"))  # nothing half-written kept


def test_results_come_back_inline_or_through_storage(tmp_path):
    result = tmp_path / "node" / "result.bin"
    result.parent.mkdir()
    result.write_bytes(b"metrics" * 1000)
    inline = send_back(result)
    assert inline.data is not None and inline.uri is None
    assert receive(inline, tmp_path / "driver" / "a.bin").read_bytes() == result.read_bytes()
    stored = send_back(result, str(tmp_path / "store"))
    assert stored.data is None and stored.uri.startswith(str(tmp_path / "store"))
    assert receive(stored, tmp_path / "driver" / "b.bin").read_bytes() == result.read_bytes()


def test_folders_are_rebuilt_on_the_node_from_shipped_files(tmp_path):
    weights = tmp_path / "weights"
    (weights / "uni").mkdir(parents=True)
    (weights / "resnet50-0676ba61.pth").write_bytes(b"r" * 5000)
    (weights / "uni" / "pytorch_model.bin").write_bytes(b"u" * 7000)
    files = ship_folder(weights, Shipper(str(tmp_path / "store")))
    assert [name for name, _ in files] == ["resnet50-0676ba61.pth", "uni/pytorch_model.bin"]
    shutil.rmtree(weights)
    local = fetch_files(files, tmp_path / "node")
    assert (local / "uni" / "pytorch_model.bin").read_bytes() == b"u" * 7000
    assert (local / "resnet50-0676ba61.pth").read_bytes() == b"r" * 5000
    assert fetch_files(files, tmp_path / "node") == local  # once per listing
    with pytest.raises(TransferError, match="no such folder on the driver"):
        ship_folder(tmp_path / "absent", Shipper(str(tmp_path / "store")))


def test_weights_named_in_a_runs_settings_are_found_shipped_and_staged(tmp_path, monkeypatch):
    """Strings naming driver files or folders (by their setting's name, a slash or a weights suffix) are
    shipped; inside the run's staging block the settings read the node's copies, the spec keeps the strings."""
    from spared.bench.executors import path_settings
    from spared.bench.runs import RunSpec, TrainingConfig
    from spared.bench.train import local_settings, staged_paths

    monkeypatch.chdir(tmp_path)
    for folder in ("enc", "stage1_weights", "resnet50"):
        (tmp_path / folder).mkdir()
    (tmp_path / "enc" / "vit.pt").write_bytes(b"v" * 300)
    (tmp_path / "head.safetensors").write_bytes(b"h" * 200)
    (tmp_path / "backbone.pth").write_bytes(b"b" * 100)
    config = {"backbone_weights": "enc/vit.pt", "arch": "resnet50", "extra": "head.safetensors",
              "missing": "gone/x.pt", "stage1": {"weights_dir": "stage1_weights", "layers": [1, 2]},
              "bank": ["enc/vit.pt", "resnet50"]}
    spec = RunSpec("shufflenet", "simulated", model_config=config,
                   training=TrainingConfig(backbone_weights="backbone.pth", weights_dir="absent_dir"))
    # "resnet50" is a folder here, but neither its setting's name nor its value says it is a path
    assert path_settings(spec) == {"enc/vit.pt", "head.safetensors", "stage1_weights", "backbone.pth",
                                   "absent_dir"}
    assert path_settings(RunSpec("shufflenet", "simulated", training=TrainingConfig(backbone_weights="none"))) == set()

    shipper = Shipper(str(tmp_path / "store"))
    shipped = {path: ship_path(path, shipper) for path in path_settings(spec) - {"absent_dir"}}
    with pytest.raises(TransferError, match="no such file or folder on the driver"):
        ship_path("absent_dir", shipper)
    for name in ("enc", "stage1_weights"):
        shutil.rmtree(tmp_path / name)
    for name in ("head.safetensors", "backbone.pth"):
        (tmp_path / name).unlink()
    local = {path: fetch_path(item, tmp_path / "node") for path, item in shipped.items()}
    assert local["enc/vit.pt"].read_bytes() == b"v" * 300 and local["stage1_weights"].is_dir()
    assert local["backbone.pth"].is_relative_to(tmp_path / "node")

    assert local_settings(config) == config  # outside a staging block: unchanged
    with staged_paths(local):
        seen = local_settings(config)
        assert local_settings("backbone.pth") == str(local["backbone.pth"])
    assert seen["backbone_weights"] == str(local["enc/vit.pt"]) and seen["extra"] == str(local["head.safetensors"])
    assert seen["stage1"] == {"weights_dir": str(local["stage1_weights"]), "layers": [1, 2]}
    assert seen["bank"] == [str(local["enc/vit.pt"]), "resnet50"]
    assert (seen["arch"], seen["missing"]) == ("resnet50", "gone/x.pt")
    assert spec.model_config["backbone_weights"] == "enc/vit.pt"


def test_run_folders_pack_and_unpack(tmp_path):
    runs = tmp_path / "runs"
    for name in ("run-a", "run-b"):
        (runs / name / "checkpoints").mkdir(parents=True)
        (runs / name / "metrics.json").write_text(json.dumps({"run": name}))
        (runs / name / "checkpoints" / "best.ckpt").write_bytes(name.encode() * 100)
    archive = pack_dirs(runs, ["run-a", "run-b"], tmp_path / "runs.tar")
    assert archive_folders(archive) == ["run-a", "run-b"]
    dest = tmp_path / "driver" / "runs" / "run-b"
    dest.mkdir(parents=True)
    (dest / "error.txt").write_text("an earlier failed attempt")
    unpack_dir(archive, "run-b", dest)  # replaces the folder there
    assert sorted(p.name for p in dest.rglob("*")) == ["best.ckpt", "checkpoints", "metrics.json"]
    assert (dest / "checkpoints" / "best.ckpt").read_bytes() == b"run-b" * 100


def test_a_source_folder_missing_on_the_node_is_a_clear_error(tmp_path):
    assert fetch_folder(str(tmp_path), tmp_path / "cache") == tmp_path
    with pytest.raises(TransferError, match=r"does not exist on node .*every node can read"):
        fetch_folder(str(tmp_path / "absent"), tmp_path / "cache")
    (tmp_path / "remote" / "sub").mkdir(parents=True)
    (tmp_path / "remote" / "sub" / "f.txt").write_text("raw")
    local = fetch_folder(f"file://{tmp_path / 'remote'}", tmp_path / "cache")
    assert (local / "sub" / "f.txt").read_text() == "raw"


def test_a_folder_in_a_storage_location_is_copied_anew_when_it_changed(tmp_path):
    """A node's copy of a storage folder (`--from s3://...`) follows the folder: a file changed or added there
    is a new copy (the raw files' content checks then see it), an unchanged folder is copied once."""
    fsspec = pytest.importorskip("fsspec")
    memory = fsspec.filesystem("memory")
    root = f"/raw-{tmp_path.name}"
    memory.pipe(f"{root}/sub/f.txt", b"raw")
    first = fetch_folder(f"memory://{root}", tmp_path / "node")
    assert (first / "sub" / "f.txt").read_text() == "raw"
    assert fetch_folder(f"memory://{root}", tmp_path / "node") == first  # unchanged: the same copy
    memory.pipe(f"{root}/sub/f.txt", b"edited")
    second = fetch_folder(f"memory://{root}", tmp_path / "node")
    assert second != first and (second / "sub" / "f.txt").read_text() == "edited"
    memory.pipe(f"{root}/more.txt", b"new")
    assert (fetch_folder(f"memory://{root}", tmp_path / "node") / "more.txt").read_text() == "new"
    memory.rm(root, recursive=True)
    with pytest.raises(TransferError, match=f"memory://{root} does not exist"):
        fetch_folder(f"memory://{root}", tmp_path / "node")
    memory.mkdir(root)
    with pytest.raises(TransferError, match="holds no files"):
        fetch_folder(f"memory://{root}", tmp_path / "node")


def test_requests_are_checked_against_every_node():
    nodes = {"10.0.0.1": {"CPU": 8.0, "memory": 32 * 2.0**30}, "10.0.0.2": {"CPU": 4.0, "GPU": 1.0}}
    assert unmet_request(TaskResources(cpus=2).request(), nodes) is None
    assert unmet_request(TaskResources(cpus=4, gpus=1).request(), nodes) is None
    gpu = unmet_request(TaskResources(gpus=2).request(), nodes)
    assert gpu.startswith("no node of the Ray cluster has 2 GPU (the most any node has: 1 GPU)")
    assert "10.0.0.2: 4 CPU, 1 GPU" in gpu and "--gpus-per-run" in gpu
    both = unmet_request(TaskResources(cpus=6, gpus=1).request(), nodes)
    assert both.startswith("no single node of the Ray cluster has all of 6 CPU, 1 GPU at once")
    memory = unmet_request(TaskResources(memory=64 * 2**30).request(), nodes)
    assert "64.0 GiB memory (the most any node has: 32.0 GiB memory)" in memory
    custom = unmet_request(TaskResources(custom={"A100": 1}).request(), nodes)
    assert "1 A100 (the most any node has: 0 A100)" in custom
    assert unmet_request({"CPU": 1.0}, {}) == "the Ray cluster has no live node"
    assert TaskResources(2, 0.5, 2**30, {"A100": 1}).options() == {
        "num_cpus": 2, "num_gpus": 0.5, "memory": 2**30, "resources": {"A100": 1}}
    with pytest.raises(ValueError, match="CPUs per task must be > 0"):
        TaskResources(cpus=0)
    with pytest.raises(ValueError, match="retries must be a non-negative integer"):
        RaySettings(retries=-1)
    with pytest.raises(ValueError, match="timeout must be a positive"):
        RaySettings(timeout=0)


def test_runtime_environments_merge_into_one():
    merged = merge_runtime_env({"pip": ["a"], "env_vars": {"X": "1"}}, None,
                               {"pip": ["b", "a"], "env_vars": {"Y": "2"}, "working_dir": "/w"},
                               {"py_modules": ["/m"]})
    assert merged == {"pip": ["a", "b"], "env_vars": {"X": "1", "Y": "2"}, "working_dir": "/w", "py_modules": ["/m"]}


def test_connection_errors_say_how_to_connect():
    try:
        try:
            raise RuntimeError("RPC error: InvalidAuthToken: Authentication token is missing or incorrect")
        except RuntimeError as inner:
            raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379") from inner
    except ConnectionError as err:
        message = connection_help("10.0.0.1:6379", err)
    assert message.startswith("could not connect to the Ray cluster at 10.0.0.1:6379 (Failed to connect")
    assert "rejected this driver's authentication token" in message and AUTH_HELP in message
    assert "RAY_AUTH_MODE=token" in message and "ray://HEAD:10001" in message
    client = connection_help("ray://head:10001", ImportError("Ray Client requires pip package `ray[client]`"))
    assert "pip install 'spared[ray]'" in client and "rejected" not in client


def test_cli_options_parse_or_fail_clearly(tmp_path):
    from spared.cli.cluster import parse_bytes, parse_resources, parse_runtime_env

    assert parse_bytes("8GiB") == 8 * 2**30 and parse_bytes("500MB") == 500 * 10**6 and parse_bytes("1024") == 1024
    for bad in ("8 parsecs", "-1GB", "0"):
        with pytest.raises(ValueError, match="--memory-per-run takes a positive size"):
            parse_bytes(bad)
    assert parse_resources(["accelerator_type:A100=0.001", "disk=2"]) == {"accelerator_type:A100": 0.001, "disk": 2}
    with pytest.raises(ValueError, match="--resource takes NAME=AMOUNT"):
        parse_resources(["A100"])
    (tmp_path / "env.toml").write_text('pip = ["a"]\n[env_vars]\nX = "1"\n')
    env = parse_runtime_env(str(tmp_path / "env.toml"), tmp_path, ["b"])
    assert env == {"pip": ["a", "b"], "env_vars": {"X": "1"}, "working_dir": str(tmp_path.resolve())}
    assert parse_runtime_env('{"env_vars": {"A": "1"}}', None, None) == {"env_vars": {"A": "1"}}
    with pytest.raises(ValueError, match=r"must be JSON text or a \.json/\.toml file"):
        parse_runtime_env("{oops", None, None)
    with pytest.raises(ValueError, match="is not a folder"):
        parse_runtime_env(None, tmp_path / "absent", None)


def test_ray_options_need_the_ray_executor(tmp_path):
    from typer.testing import CliRunner

    from spared.cli import app

    result = CliRunner().invoke(app, ["bench", "--models", "stnet", "--retries", "1", "--timeout", "60",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "--retries, --timeout only apply to --executor ray" in " ".join(result.output.split())


def test_progress_board_follows_the_events():
    from rich.console import Console

    from spared.bench.progress import ProgressBoard

    board = ProgressBoard(Console(file=io.StringIO()))
    board({"event": "submitted", "count": 3})
    board({"event": "started", "run_id": "a", "node": "n1", "attempt": 1})
    board({"event": "step", "run_id": "a", "step": 4, "total": 10})
    task = board.progress.tasks[board.tasks["a"]]
    assert (task.completed, task.total, task.fields["node"]) == (4, 10, "n1")
    board({"event": "started", "run_id": "a", "node": "n2", "attempt": 2})  # retried on another node
    assert board.progress.tasks[board.tasks["a"]].fields["node"] == "n2 (attempt 2)"
    assert board.progress.tasks[board.tasks["a"]].completed == 0
    board({"event": "finished", "run_id": "a", "status": "done"})
    assert "a" not in board.tasks
    overall = board.progress.tasks[board.overall]
    assert (overall.completed, overall.total) == (1, 3)


def test_load_table_reads_the_staged_copy(tmp_path):
    from spared.bench.train import dataset_files, load_table, staged_datasets

    dataset = "simulated:n_slides=3,n_spots=40,n_genes=24,top_moran_genes=8,complete_missing=false"
    files = dataset_files(dataset, tmp_path / "cache", patch_size=16)
    node = tmp_path / "node"
    node.mkdir()
    h5ad, patches = shutil.copy(files.h5ad, node / "x.h5ad"), shutil.copy(files.store.path, node / "p.h5")
    shutil.rmtree(tmp_path / "cache")
    path = str(tmp_path / "gone" / "data.h5ad")  # a driver path this node does not have
    with staged_datasets({(path, 16, 1.0): (h5ad, patches)}):
        table = load_table(path, "c_d_log1p", tmp_path / "unused", patch_size=16)
    assert table.store.path == node / "p.h5" and table.target.shape == files.adata.shape
    np.testing.assert_array_equal(table.target, files.adata.layers["c_d_log1p"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_table(path, "c_d_log1p", tmp_path / "unused", patch_size=16)  # outside the block: the path itself

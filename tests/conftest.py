"""Shared fixtures: small simulated collections, raw and processed (built once per session)."""

import os
import subprocess
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
# as ``import spared`` does, but before any test module imports torch (see spared/__init__.py)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def raw_small():
    """Three simulated slides, ~300 spots each, 128 genes (raw counts, with the known truth)."""
    from spared.synthetic import make_collection

    return make_collection(n_slides=3, n_spots=300, n_genes=128, seed=0)


@pytest.fixture(scope="session")
def processed_small(raw_small):
    """``raw_small`` through the SpaRED protocol (32 genes kept, no SpaCKLE training)."""
    from spared.config import ProcessingConfig
    from spared.pp import process

    return process(raw_small, ProcessingConfig(top_moran_genes=32, complete_missing=False), progress=False, copy=True)


@pytest.fixture(scope="session")
def realdata() -> Path:
    """The real public data folder (``$SPARED_REALDATA``); tests using it skip with a reason when absent."""
    root = os.environ.get("SPARED_REALDATA")
    if not root or not Path(root).is_dir():
        pytest.skip("real data not available: set SPARED_REALDATA to the shared realdata folder (see README)")
    return Path(root)


@pytest.fixture
def small_disk(tmp_path):
    """Make a small tmpfs under ``tmp_path``: ``small_disk("1m")`` (root only: skipped otherwise, or when the
    mount fails); ``small_disk.read_only(path)`` remounts one read-only. All are unmounted at teardown."""
    if os.geteuid() != 0:
        pytest.skip("this test mounts a small tmpfs, which needs root")
    mounted: list[Path] = []

    def mount(*args: str) -> None:
        done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")

    def make(size: str) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where))
        mounted.append(where)
        return where

    make.read_only = lambda where: mount("-o", "remount,ro", str(where))
    yield make
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture(scope="session")
def results_row():
    """Builder of valid ``done`` results rows (every field the results table checks); keywords override."""
    from spared.bench.scoring import METRICS, protocol_fields
    from spared.bench.targets import TARGETS

    def build(run_id: str = "r", **fields):
        target = fields.get("target", "raw")
        row = {"run_id": run_id, "model": "stnet", "dataset": "simulated", "seed": 0, "status": "done", "error": "",
               **{m: 0.5 for m in METRICS}, "data_version": "v1", "n_spots_scored": 10.0,
               **protocol_fields(target, TARGETS[target].layer if target in TARGETS else "?", "test")}
        return {**row, **fields}

    return build


#: A tiny simulated benchmark collection: 3 slides (one per split) of 100 spots, 16 genes kept, a short SpaCKLE fit.
TINY_BENCH = "simulated:n_slides=3,n_spots=100,n_genes=48,top_moran_genes=16,spackle_max_steps=20"


@pytest.fixture(scope="session")
def bench_data_dir(tmp_path_factory):
    """Dataset cache shared by the benchmark tests (``TINY_BENCH`` is simulated and processed once)."""
    return tmp_path_factory.mktemp("bench_data")


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A real Ray cluster of two nodes on this machine (1 CPU each, own working folder, temporary folder and
    ports, token authentication), stopped at the end of the module by the ids of the processes it started
    (``tests/ray_cluster.py``; never ``ray stop``, which would stop every Ray instance of the user)."""
    pytest.importorskip("ray")
    from ray_cluster import LocalRayCluster

    with LocalRayCluster(tmp_path_factory.mktemp("ray_cluster"), nodes=2, cpus=1) as cluster:
        yield cluster

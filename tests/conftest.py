"""Shared fixtures: small simulated collections, raw and processed (built once per session)."""

import os
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

    return process(raw_small, ProcessingConfig(top_moran_genes=32, complete_missing=False), progress=False)


@pytest.fixture(scope="session")
def realdata() -> Path:
    """The real public data folder (``$SPARED_REALDATA``); tests using it skip with a reason when absent."""
    root = os.environ.get("SPARED_REALDATA")
    if not root or not Path(root).is_dir():
        pytest.skip("real data not available: set SPARED_REALDATA to the shared realdata folder (see README)")
    return Path(root)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A real Ray cluster of two nodes on this machine (1 CPU each, own working folder, temporary folder and
    ports, token authentication), stopped at the end of the module by the ids of the processes it started
    (``tests/ray_cluster.py``; never ``ray stop``, which would stop every Ray instance of the user)."""
    pytest.importorskip("ray")
    from ray_cluster import LocalRayCluster

    with LocalRayCluster(tmp_path_factory.mktemp("ray_cluster"), nodes=2, cpus=1) as cluster:
        yield cluster

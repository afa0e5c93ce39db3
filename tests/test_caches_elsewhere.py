"""Caches built on another machine (a Ray node) and datasets built on first use, where cache keys hold the raw
files' content: a cache shipped back is found where the raw files are not, keeps its patches beside it, and where
the raw files here differ, says how; a benchmark's run ids are those of the data its runs build."""

from __future__ import annotations

import json
import os
import shutil

import pytest

import spared
from spared.cluster.prepare import install, prepare_on_node
from spared.cluster.session import NodeSettings
from spared.datasets import cache_paths, download, inputs_file, key_differences, prepare
from spared.io.download import checksums_path, dataset_dir
from spared.io.local import LocalSourceError
from spared.io.patch_paths import read_h5ad, store_file
from spared.io.patches import PatchStore
from test_cache_keys import catalogue_copy  # noqa: F401 (fixture)
from test_datasets import genes  # noqa: F401 (fixture)
from test_local_links import KIDNEY, LUNG, organoid_copy
from test_readers import write_visium_outs

CONFIG = {"top_moran_genes": 8, "complete_missing": False, "patch_size": 16}


def node_settings(cache) -> NodeSettings:
    """A node whose cache is ``cache`` (its data folder ``cache/data``), results sent back inline."""
    return NodeSettings(spared.__version__, None, str(cache))


def test_a_cache_built_on_a_node_is_found_where_the_raw_files_are_not(catalogue_copy, genes, tmp_path):  # noqa: F811
    spec, _ = catalogue_copy  # the node's raw files, in tmp_path/data
    events: list[dict] = []
    result = prepare_on_node(spec.key, CONFIG, False, True, None, False, node_settings(tmp_path), None,
                             events.append)
    built = cache_paths(spec.key, CONFIG, tmp_path / "data")[0]
    assert result["h5ad"].name == built.name and result["inputs"] == json.loads(inputs_file(built).read_text())
    assert events[0]["event"] == "started" and events[0]["dataset"] == spec.key

    driver = tmp_path / "driver"  # holds no raw files
    h5ad, patches = install(result, driver / spec.key / "processed")
    assert h5ad.name == built.name and patches == store_file(h5ad) and inputs_file(h5ad).is_file()
    assert cache_paths(spec.key, CONFIG, driver) == (h5ad, patches)
    assert key_differences(spec.key, CONFIG, driver, h5ad) == []
    store = PatchStore.from_adata(read_h5ad(h5ad))  # the store the .h5ad records, relative to it
    assert store.path == patches and len(store) > 0
    done = prepare(spec.key, CONFIG, data_dir=driver, progress=False)
    assert not done.built and done.h5ad == h5ad and done.adata.uns["spared"]["patches"]["path"] == str(patches)
    assert not dataset_dir(spec, driver).exists()  # nothing downloaded: the cache stands for the raw files

    other = tmp_path / "other"  # a driver whose raw files hold other counts for one slide
    shutil.copytree(tmp_path / "data" / spec.group / "raw", other / spec.group / "raw", symlinks=True)
    write_visium_outs(other / spec.group / "raw" / spec.slides[1].path, genes=genes, seed=9)
    download(spec.key, data_dir=other, progress=False)  # checked: their hashes recorded
    h5ad, _ = install(result, other / spec.key / "processed")
    changed = f"raw file {spec.slides[1].path}/filtered_feature_bc_matrix.h5 changed"
    assert any(line.startswith(changed) for line in key_differences(spec.key, CONFIG, other, h5ad))
    assert cache_paths(spec.key, CONFIG, other)[0] != h5ad
    shutil.rmtree(other / spec.group / "raw")  # gone, but their recorded hashes still count
    assert checksums_path(spec, other).is_file()
    assert cache_paths(spec.key, CONFIG, other)[0] != h5ad
    assert any(line.startswith(changed) for line in key_differences(spec.key, CONFIG, other, h5ad))


def test_benchmark_run_ids_are_those_of_the_data_the_runs_build(catalogue_copy, tmp_path):  # noqa: F811
    """Raw files never checked yet (as after a first download or a copy): the specs are keyed on the data the
    runs build, so the Ray executor's change check passes and a rerun finds the runs."""
    from spared.bench.executors import _ship_dataset
    from spared.bench.runs import TrainingConfig, data_fingerprint, make_specs
    from spared.cluster.transfer import Shipper

    spec, _ = catalogue_copy
    dataset = f"{spec.key}:top_moran_genes=8,complete_missing=false"
    unchecked = data_fingerprint(dataset)
    run = make_specs(["shufflenet"], [dataset], ["raw"], [0], training=TrainingConfig(patch_size=16))[0]
    assert run.data_version != unchecked  # the raw files were checked first
    h5ad, store = _ship_dataset(run, tmp_path / "bench", Shipper(str(tmp_path / "store")))  # built here
    assert data_fingerprint(dataset) == run.data_version == f"cache-{h5ad.name.removesuffix('.h5ad')}"
    assert store.size > 0
    again = make_specs(["shufflenet"], [dataset], ["raw"], [0], training=TrainingConfig(patch_size=16))[0]
    assert again.run_id == run.run_id


def test_a_real_organoid_built_on_a_node_stands_beside_the_other_organoid(realdata, tmp_path):
    """The node honours --allow-external-links; its lung organoid cache is found on a driver whose data folder
    holds only the kidney organoid's part of the archive both share (none of the lung's raw files)."""
    mine = organoid_copy(realdata, tmp_path / "mine")
    outside = tmp_path / "unrelated"
    outside.mkdir()
    (outside / "notes.txt").write_text("not part of the dataset")
    os.symlink(outside, mine / "data/lungorganoid/V19D02-088_A1/docs")
    config = {"top_moran_genes": 8, "complete_missing": False}
    node = node_settings(tmp_path / "node")
    with pytest.raises(LocalSourceError, match="--allow-external-links"):
        prepare_on_node(LUNG, config, False, False, str(mine), False, node, None, lambda event: None)
    result = prepare_on_node(LUNG, config, False, False, str(mine), True, node, None, lambda event: None)
    assert result["patches"] is None and result["summary"]["n_vars"] == 8

    driver = tmp_path / "driver"
    download(KIDNEY, source=organoid_copy(realdata, tmp_path / "kidney", ("kidneyorganoid",)), data_dir=driver,
             progress=False)
    h5ad, _ = install(result, driver / LUNG / "processed")
    assert cache_paths(LUNG, config, driver)[0] == h5ad and key_differences(LUNG, config, driver, h5ad) == []
    done = prepare(LUNG, config, data_dir=driver, patches=False, progress=False)
    assert not done.built and done.h5ad == h5ad

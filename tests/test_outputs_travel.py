"""Outputs that travel: a processed .h5ad keeps its patch store beside it wherever it goes; patches cut on demand
are cached once (issue 30, item 2)."""

from __future__ import annotations

import shutil

import anndata as ad
import numpy as np
import pytest
from typer.testing import CliRunner

from spared.cli import app
from spared.io.patch_paths import file_of, read_h5ad, store_path
from spared.io.patches import PatchStore
from spared.synthetic import make_collection

runner = CliRunner()
FAST = ["--set", "complete_missing=false", "--set", "top_moran_genes=16", "--set", "patch_size=16"]


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    """``spared process IN OUT`` on a simulated collection with images: OUT and its patch store."""
    folder = tmp_path_factory.mktemp("made")
    raw = folder / "raw.h5ad"
    make_collection(n_slides=2, n_spots=120, n_genes=80, seed=4).write_h5ad(raw)
    out = folder / "sample.h5ad"
    result = runner.invoke(app, ["process", str(raw), str(out), *FAST])
    assert result.exit_code == 0, result.output
    return out


def test_process_cuts_patches_beside_the_output_and_records_them_relative(processed):
    store = processed.with_name("sample.patches.h5")
    assert store.is_file()
    assert ad.read_h5ad(processed).uns["spared"]["patches"]["path"] == "sample.patches.h5"  # as written on disk
    adata = read_h5ad(processed)
    assert store_path(adata) == store.resolve() and file_of(adata) == processed.resolve()
    patches = PatchStore.from_adata(adata)
    assert len(patches) == adata.n_obs and patches.size == 16 and patches.obs_names.equals(adata.obs_names)


def test_a_moved_dataset_keeps_its_patches_and_a_missing_store_is_named(processed, tmp_path):
    before = PatchStore.from_adata(read_h5ad(processed))[[0, 5, 7]]
    moved = tmp_path / "elsewhere" / "deeper"
    moved.mkdir(parents=True)
    for name in ("sample.h5ad", "sample.patches.h5"):
        shutil.copy2(processed.with_name(name), moved / name)
    adata = read_h5ad(moved / "sample.h5ad")
    np.testing.assert_array_equal(PatchStore.from_adata(adata)[[0, 5, 7]], before)
    assert store_path(adata).parent == moved.resolve()
    plain = ad.read_h5ad(moved / "sample.h5ad")  # read without spared: the .h5ad's place must be given
    with pytest.raises(FileNotFoundError, match=r"relative to the folder of its \.h5ad"):
        PatchStore.from_adata(plain)
    assert len(PatchStore.from_adata(plain, h5ad=moved / "sample.h5ad")) == adata.n_obs
    (moved / "sample.patches.h5").unlink()
    with pytest.raises(FileNotFoundError, match=r"patch store .*deeper/sample\.patches\.h5 not found"):
        PatchStore.from_adata(read_h5ad(moved / "sample.h5ad"))


def test_writing_elsewhere_puts_the_store_beside_the_new_file(processed, tmp_path):
    done = tmp_path / "out" / "completed.h5ad"
    result = runner.invoke(app, ["complete", str(processed), str(done), "--method", "mean"])
    assert result.exit_code == 0, result.output
    assert ad.read_h5ad(done).uns["spared"]["patches"]["path"] == "completed.patches.h5"
    store = done.with_name("completed.patches.h5")
    assert store.is_file() and store.stat().st_size == processed.with_name("sample.patches.h5").stat().st_size
    shutil.move(str(done.parent), str(tmp_path / "moved"))
    adata = read_h5ad(tmp_path / "moved" / "completed.h5ad")
    assert len(PatchStore.from_adata(adata)) == adata.n_obs


def test_no_patches_option_and_input_without_image(tmp_path):
    raw = tmp_path / "raw.h5ad"
    make_collection(n_slides=2, n_spots=80, n_genes=60, seed=5).write_h5ad(raw)
    result = runner.invoke(app, ["process", str(raw), str(tmp_path / "a.h5ad"), "--no-patches", *FAST])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "a.patches.h5").exists() and "patches" not in read_h5ad(tmp_path / "a.h5ad").uns["spared"]
    blind = tmp_path / "blind.h5ad"
    make_collection(n_slides=2, n_spots=80, n_genes=60, seed=5, image=False).write_h5ad(blind)
    result = runner.invoke(app, ["process", str(blind), str(tmp_path / "b.h5ad"), *FAST])
    assert result.exit_code == 0 and "no slide image" in result.output, result.output
    assert not (tmp_path / "b.patches.h5").exists()


def test_patches_cut_on_demand_are_cached_once_beside_the_dataset(processed, tmp_path, monkeypatch):
    import spared.io.patches
    from spared.bench.data import patch_store

    local = tmp_path / "copy.h5ad"
    shutil.copy2(processed, local)
    shutil.copy2(processed.with_name("sample.patches.h5"), tmp_path / "sample.patches.h5")  # the name recorded
    adata = read_h5ad(local)
    recorded = dict(adata.uns["spared"]["patches"])
    first = patch_store(adata, 8, 1.5)
    assert first.path == tmp_path / "copy.patches_8_1.5.h5" and len(first) == adata.n_obs
    assert adata.uns["spared"]["patches"] == recorded  # the collection's own store is unchanged

    def boom(*args, **kwargs):
        raise AssertionError("patches were cut again")

    monkeypatch.setattr(spared.io.patches, "extract_patches", boom)
    again = patch_store(read_h5ad(local), 8, 1.5)
    assert again.path == first.path
    np.testing.assert_array_equal(again[[1, 2]], first[[1, 2]])
    assert patch_store(adata, 16, 1.0).path == store_path(adata)  # the recorded size: the recorded store


def test_patches_of_a_collection_never_written_are_cached_in_the_data_folder(tmp_path, monkeypatch):
    from spared.bench.data import patch_store

    monkeypatch.setenv("SPARED_DATA", str(tmp_path / "data"))
    adata = make_collection(n_slides=1, n_spots=40, n_genes=30, seed=6)
    first = patch_store(adata, 8, 1.0)
    assert first.path.is_relative_to(tmp_path / "data" / "patches") and first.path.name == "patches_8_1.h5"
    assert patch_store(adata.copy(), 8, 1.0).path == first.path  # same spots and images: found again
    assert len(list((tmp_path / "data" / "patches").iterdir())) == 1


def test_info_describes_a_processed_file_and_a_raw_one(processed, tmp_path):
    import json

    result = runner.invoke(app, ["info", str(processed), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["kind"] == "processed" and summary["spots"] > 0 and summary["genes"] == 16
    assert {row["slide"] for row in summary["slides"]} == {"slide0", "slide1"}
    assert set(summary["splits"]) <= {"train", "val", "test"} and summary["splits"]["train"]["slides"] >= 1
    layers = {row["name"]: row["meaning"] for row in summary["layers"]}
    assert layers["c_d_log1p"].startswith("d_log1p after ComBat") and "mask" in layers
    assert layers["noisy_c_d_log1p"].startswith("c_d_log1p with missing entries")
    assert 0 < summary["missing"]["kept_genes"] < 1 and summary["missing"]["raw_all_genes"] > 0
    assert summary["processing"]["parameters"]["top_moran_genes"] == 16
    assert summary["processing"]["preset"] == "spared"  # as recorded: the catalogue graphs, not "default"
    assert summary["patches"] == {**summary["patches"], "recorded": True, "present": True, "size": 16}
    assert summary["completion"] is None  # processed with complete_missing=false
    text = runner.invoke(app, ["info", str(processed)])
    assert text.exit_code == 0 and "layers" in text.output and "present" in text.output, text.output
    alone = tmp_path / "alone.h5ad"
    shutil.copy2(processed, alone)  # without its store
    summary = json.loads(runner.invoke(app, ["info", str(alone), "--json"]).output)
    assert summary["patches"]["present"] is False and summary["patches"]["path"].endswith("sample.patches.h5")
    assert "MISSING" in runner.invoke(app, ["info", str(alone)]).output
    raw = tmp_path / "raw.h5ad"
    make_collection(n_slides=1, n_spots=50, n_genes=40, seed=7).write_h5ad(raw)
    summary = json.loads(runner.invoke(app, ["info", str(raw), "--json"]).output)
    assert summary["kind"] == "raw" and summary["processing"] is None and summary["patches"] == {"recorded": False}
    assert summary["slides"][0]["image"] == "hires" and 0 < summary["missing"]["X_zero_fraction"] < 1

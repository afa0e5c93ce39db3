"""``spared.datasets``: read → process → patches → cache, on a Visium folder written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spared.annotation import gene_table
from spared.data_model import validate
from spared.datasets import get, get_local
from spared.io.patches import PatchStore
from test_readers import write_visium_outs

SMALL = {"top_moran_genes": 12, "complete_missing": False, "patch_size": 32}


@pytest.fixture(scope="module")
def genes() -> list[tuple[str, str]]:
    table = gene_table("human")
    coding = table[table["gene_type"] == "protein_coding"].head(40)
    return list(zip(coding.index, coding["gene_symbol"], strict=True))


def test_get_local_builds_then_loads_from_cache(tmp_path, genes):
    outs = tmp_path / "my_slide"
    write_visium_outs(outs, genes=genes)
    cache = tmp_path / "cache"
    adata = get_local(outs, SMALL, out_dir=cache, progress=False)
    validate(adata, stage="processed")
    assert adata.obs["slide_id"].unique().tolist() == ["my_slide"]
    assert adata.n_vars == 12 and adata.var_names.str.startswith("ENSG").all()
    store = PatchStore.from_adata(adata)
    assert len(store) == adata.n_obs and store.size == 32
    assert list(store.obs_names) == list(adata.obs_names)
    h5ad = sorted(cache.glob("*.h5ad"))
    assert len(h5ad) == 1 and Path(adata.uns["spared"]["patches"]["path"]).parent == cache
    assert not list(cache.glob(".*"))  # no temporary files left behind
    stamp = h5ad[0].stat().st_mtime_ns

    again = get_local(outs, SMALL, out_dir=cache, progress=False)
    assert h5ad[0].stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(again.layers["c_d_log1p"], adata.layers["c_d_log1p"])
    assert again.uns["spared"]["reader"]["slides"]["my_slide"]["n_spots"] > 0

    other = get_local(outs, {**SMALL, "top_moran_genes": 8}, out_dir=cache, progress=False, patches=False)
    assert other.n_vars == 8 and len(list(cache.glob("*.h5ad"))) == 2
    get_local(outs, SMALL, out_dir=cache, progress=False, force=True)
    assert h5ad[0].stat().st_mtime_ns != stamp


def test_get_local_accepts_a_raw_anndata(tmp_path, genes):
    from spared.io.readers import read

    write_visium_outs(tmp_path / "S9", genes=genes)
    raw = read("visium_spaceranger", tmp_path, ["S9"], "human")
    adata = get_local(raw, SMALL, out_dir=tmp_path / "cache", progress=False)
    assert len(PatchStore.from_adata(adata)) == adata.n_obs
    with pytest.raises(Exception, match="obsm\\['spatial'\\] is missing"):
        bad = raw.copy()
        del bad.obsm["spatial"]
        get_local(bad, SMALL, out_dir=tmp_path / "cache", progress=False)


@pytest.fixture
def catalogue_copy(tmp_path, genes, monkeypatch):
    """A real catalogue entry (its pins dropped) with stand-in Space Ranger files placed where the download step
    looks (no network); ``$SPARED_DATA`` points at them. Returns (spec, raw folder)."""
    import dataclasses
    import tarfile

    import spared.catalog

    pinned = spared.catalog.load_spec("10xgenomic_human_breast_cancer")
    spec = dataclasses.replace(pinned, files=tuple(dataclasses.replace(f, sha256="") for f in pinned.files))
    monkeypatch.setattr(spared.catalog, "load_spec", lambda key: spec if key == spec.key else pinned)
    raw = tmp_path / "data" / spec.group / "raw"
    for k, slide in enumerate(spec.slides):
        write_visium_outs(raw / slide.path, genes=genes, seed=k)
        archive = next(f for f in spec.files if f.unpack and f.filename.startswith(f"{slide.path}/"))
        with tarfile.open(raw / archive.filename, "w:gz") as tar:
            tar.add(raw / slide.path / "spatial", arcname="spatial")
    monkeypatch.setenv("SPARED_DATA", str(tmp_path / "data"))
    return spec, raw


def test_get_end_to_end_with_the_catalogue(tmp_path, catalogue_copy, monkeypatch):
    """A real catalogue spec; its files are placed by hand where the download step looks (no network). The
    catalogue pins the real files' sha256, so the stand-ins written here are checked as unpinned files."""
    spec, raw = catalogue_copy
    assert all((raw / f.filename).is_file() for f in spec.files)

    config = {"top_moran_genes": 8, "complete_missing": False, "patch_size": 32}
    adata = get(spec.key, config, progress=False)
    validate(adata, stage="processed")
    assert adata.obs.groupby("slide_id", observed=True)["split"].first().to_dict() == {
        "V1_Breast_Cancer_Block_A_Section_1": "train", "V1_Breast_Cancer_Block_A_Section_2": "val"}
    assert adata.uns["spared"]["dataset"] == spec.key
    assert adata.uns["spared"]["sources"]["url"][0] == spec.files[0].url
    assert list(adata.uns["spared"]["sources"]["check"]) == ["first use"] * len(spec.files)
    processed = tmp_path / "data" / spec.key / "processed"
    assert sorted(p.name.split(".", 1)[1] for p in processed.iterdir()) == ["h5ad", "inputs.json", "patches.h5"]
    inputs = adata.uns["spared"]["inputs"]
    assert sorted(inputs["file"]) == sorted(f.filename for f in spec.files)
    assert all(len(c) == 64 for c in inputs["content"])  # the verified sha256 of each raw file
    store = PatchStore.from_adata(adata)
    assert len(store) == adata.n_obs and Path(store.path).parent == processed

    monkeypatch.setattr("spared.pp.process", None)  # a cached call must neither fetch, read nor process
    again = get(spec.key, config, progress=False)
    assert list(again.obs_names) == list(adata.obs_names)
    np.testing.assert_array_equal(again.layers["c_d_log1p"], adata.layers["c_d_log1p"])

    from typer.testing import CliRunner

    from spared.cli import app

    args = ["process", spec.key, "--set", "top_moran_genes=8", "--set", "complete_missing=false",
            "--set", "patch_size=32"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"loaded {spec.key}: {adata.n_obs} spots" in " ".join(result.output.split())

"""Catalogue extras beyond SpaRED's 26 (legacy ST: her2st, ST-Net, cSCC), their validation, folds and CLI."""

import dataclasses
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spared.catalog import DatasetSpec, SpecError, all_specs, list_datasets, load_spec, validate_spec
from spared.io.download import sha256sum

# key -> (sections, patients) as the issue and the papers give them
EXTRAS = {"andersson_human_breast_cancer": (36, 8), "he_human_breast_cancer": (68, 23),
          "ji_human_squamous_cell_carcinoma": (12, 4)}


def test_extras_are_listed_only_when_asked():
    assert len(list_datasets()) == 26 and not set(EXTRAS) & set(list_datasets())
    assert set(list_datasets(include_extras=True)) == set(list_datasets()) | set(EXTRAS)
    assert [s.key for s in all_specs(include_extras=True) if s.extra] == sorted(EXTRAS)
    assert all(not s.extra and s.technology == "visium" and s.geometry == "hex" for s in all_specs())


@pytest.mark.parametrize("key", sorted(EXTRAS))
def test_extra_specs_are_valid_legacy_st_collections_split_by_patient(key):
    spec = load_spec(key)
    assert validate_spec(spec) is spec and spec.extra
    assert (len(spec.slides), len(spec.patients)) == EXTRAS[key]
    assert (spec.format, spec.technology, spec.geometry, spec.technology_name) == ("st", "st", "square", "ST")
    assert spec.processing_config().n_neighs == 8 and spec.processing_config().combat_key == "patient"
    assert {"train", "val", "test"} == set(spec.splits)
    split_of_patient: dict[str, set] = {}
    for slide in spec.slides:
        split_of_patient.setdefault(slide.patient, set()).add(slide.split)
        assert slide.counts and slide.spots and slide.image
    assert all(len(splits) == 1 for splits in split_of_patient.values())
    assert len(spec.folds()) == EXTRAS[key][1] and len(spec.folds("loso")) == EXTRAS[key][0]
    again = DatasetSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec


def test_spec_validation_of_technology_and_reader_options():
    spec = load_spec("ji_human_squamous_cell_carcinoma")
    assert dict(spec.reader) == {"spot_diameter_um": 110.0, "spot_pitch_um": 150.0}
    with pytest.raises(SpecError, match="technology 'st' arrays are square grids"):
        validate_spec(dataclasses.replace(spec, processing={"hex_geometry": True}))
    with pytest.raises(SpecError, match=r"unknown \[reader\] option\(s\) \['spot_size'\] for format 'st'"):
        validate_spec(dataclasses.replace(spec, reader={"spot_size": 1}))
    with pytest.raises(SpecError, match="format 'st' reads legacy ST sections, but technology is 'visium'"):
        validate_spec(dataclasses.replace(spec, technology="visium", processing={}))
    with pytest.raises(SpecError, match="extra must be true or false"):
        validate_spec(dataclasses.replace(spec, extra="yes"))


def her2st_subset(sections: list[str], images: tuple[str, ...] = ("B4", "C2", "C3", "C4", "C5", "C6")) -> DatasetSpec:
    """The her2st spec restricted to some sections and their files (images only for the sections shared here)."""
    spec = load_spec("andersson_human_breast_cancer")
    slides = tuple(s if s.id in images else dataclasses.replace(s, image=None) for s in spec.slides
                   if s.id in sections)
    names = {name for s in slides for name in (s.counts, s.spots, s.image) if name}
    return dataclasses.replace(spec, slides=slides, files=tuple(f for f in spec.files if f.filename in names))


def link_her2st(realdata: Path, folder: Path, spec: DatasetSpec) -> None:
    """Place the shared her2st files where the spec's file names say, as a download would (symlinks)."""
    for f in spec.files:
        target = folder / f.filename
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(realdata / "her2st" / f.filename.removeprefix("data/"), target)


def test_her2st_spec_hashes_match_the_published_files(realdata):
    spec = load_spec("andersson_human_breast_cancer")
    checked = 0
    for f in spec.files:
        local = realdata / "her2st" / f.filename.removeprefix("data/")
        if local.is_file():
            assert f.sha256 == sha256sum(local) and f.size_bytes == local.stat().st_size
            checked += 1
        else:
            assert f.filename.startswith("data/ST-imgs/") and f.sha256 == ""
    assert checked == 36 + 36 + 6


@pytest.mark.slow
def test_her2st_catalogue_dataset_builds_end_to_end(realdata, tmp_path, monkeypatch):
    import spared.catalog
    from spared.datasets import get
    from spared.io.download import dataset_dir

    spec = her2st_subset(["A1", "B4", "C2", "D1"])
    link_her2st(realdata, dataset_dir(spec, tmp_path), spec)
    monkeypatch.setattr(spared.catalog, "load_spec", lambda key: spec)
    adata = get(spec.key, {"complete_missing": False, "split_scheme": "lopo:B"}, data_dir=tmp_path,
                patches=False, progress=False)
    splits = adata.obs.groupby("slide_id", observed=True)["split"].first().to_dict()
    assert splits == {"A1": "train", "B4": "test", "C2": "val", "D1": "train"}
    assert adata.n_vars == 256 and adata.obs["slide_id"].nunique() == 4
    reader = adata.uns["spared"]["reader"]["slides"]
    assert reader["A1"]["n_spots"] == 346 and reader["B4"]["files"]["image"].endswith("BT10737_D2_HE.jpg")
    assert json.loads(adata.uns["spared"]["config"])["hex_geometry"] is False
    from spared.report.html import dataset_summary

    summary = dataset_summary(adata, spec.key)
    assert (summary["technology"], summary["geometry"]) == ("ST", "square (8)")


def test_cli_lists_extras_with_technology_and_folds():
    from spared.cli import app

    runner = CliRunner()
    default = json.loads(runner.invoke(app, ["datasets", "--json"]).output)
    everything = json.loads(runner.invoke(app, ["datasets", "--all", "--json"]).output)
    assert len(default) == 26 and len(everything) == 29
    extra = {r["name"]: r for r in everything if r["extra"]}
    assert set(extra) == set(EXTRAS)
    assert {(r["technology"], r["geometry"]) for r in extra.values()} == {("ST", "square")}
    assert {(r["technology"], r["geometry"]) for r in default} == {("Visium", "hex")}
    table = runner.invoke(app, ["datasets", "--all"], env={"COLUMNS": "200"}).output
    assert "SpaRED datasets (26 + 3 extra)" in table and "(extra)" in table and "square (8)" in table
    folds = runner.invoke(app, ["folds", "andersson_human_breast_cancer", "--plain"])
    assert folds.exit_code == 0 and folds.output.split() == [f"lopo:{p}" for p in "ABCDEFGH"]
    bad = runner.invoke(app, ["folds", "andersson_human_breast_cancer", "--scheme", "kfold"])
    assert bad.exit_code == 1 and "kind must be one of" in bad.output

"""The dataset catalogue: the 26 shipped specs, validation errors, round trips and processing overrides."""

import dataclasses
import json

import pytest

from spared.catalog import (
    KNOWN_FORMATS,
    SPLITS,
    DatasetSpec,
    FileSpec,
    SlideSpec,
    SpecError,
    UnknownDatasetError,
    all_specs,
    list_datasets,
    load_spec,
    parse_spec,
    validate_spec,
)
from spared.config import ProcessingConfig

# SPEC §1: key -> (slides, patients, ComBat key, top Moran genes, organism)
SPEC_TABLE = {
    "10xgenomic_human_brain": (2, 1, "slide_id", 128, "human"),
    "10xgenomic_human_breast_cancer": (2, 1, "slide_id", 128, "human"),
    "10xgenomic_mouse_brain_coronal": (2, 1, "slide_id", 128, "mouse"),
    "10xgenomic_mouse_brain_sagittal_anterior": (2, 1, "slide_id", 128, "mouse"),
    "10xgenomic_mouse_brain_sagittal_posterior": (2, 1, "slide_id", 128, "mouse"),
    "abalo_human_squamous_cell_carcinoma": (4, 1, "slide_id", 128, "human"),
    "erickson_human_prostate_cancer_p1": (7, 1, "slide_id", 128, "human"),
    "erickson_human_prostate_cancer_p2": (10, 1, "slide_id", 128, "human"),
    "fan_mouse_brain_coronal": (2, 1, "slide_id", 128, "mouse"),
    "fan_mouse_olfatory_bulb": (2, 1, "slide_id", 128, "mouse"),
    "mirzazadeh_human_colon_p1": (2, 1, "slide_id", 32, "human"),
    "mirzazadeh_human_colon_p2": (2, 2, "patient", 32, "human"),
    "mirzazadeh_human_pediatric_brain_tumor_p1": (4, 1, "slide_id", 128, "human"),
    "mirzazadeh_human_pediatric_brain_tumor_p2": (2, 1, "slide_id", 32, "human"),
    "mirzazadeh_human_prostate_cancer": (4, 2, "patient", 128, "human"),
    "mirzazadeh_human_small_intestine": (4, 2, "patient", 32, "human"),
    "mirzazadeh_mouse_bone": (4, 1, "slide_id", 128, "mouse"),
    "mirzazadeh_mouse_brain": (8, 2, "patient", 128, "mouse"),
    "mirzazadeh_mouse_brain_p1": (4, 1, "slide_id", 128, "mouse"),
    "mirzazadeh_mouse_brain_p2": (4, 1, "slide_id", 128, "mouse"),
    "parigi_mouse_intestine": (2, 2, "patient", 128, "mouse"),
    "vicari_human_striatium": (4, 1, "slide_id", 32, "human"),
    "vicari_mouse_brain": (14, 4, "patient", 128, "mouse"),
    "villacampa_kidney_organoid": (3, 1, "slide_id", 128, "human"),
    "villacampa_lung_organoid": (4, 1, "slide_id", 128, "human"),
    "villacampa_mouse_brain": (5, 2, "patient", 32, "mouse"),
}


def test_catalogue_has_exactly_the_26_datasets():
    assert list_datasets() == sorted(SPEC_TABLE)
    assert [s.key for s in all_specs()] == sorted(SPEC_TABLE)


@pytest.mark.parametrize("key", sorted(SPEC_TABLE))
def test_every_spec_is_valid_and_matches_the_spec_table(key):
    spec = load_spec(key)
    assert validate_spec(spec) is spec
    n_slides, n_patients, combat, top, organism = SPEC_TABLE[key]
    assert (len(spec.slides), len(spec.patients), spec.organism) == (n_slides, n_patients, organism)
    cfg = spec.processing_config()
    assert (cfg.combat_key, cfg.top_moran_genes, cfg.organism) == (combat, top, organism)
    assert spec.format in KNOWN_FORMATS
    assert spec.files and all(f.url.startswith("https://") for f in spec.files)
    assert all(s.split in SPLITS for s in spec.slides)
    assert len({s.id for s in spec.slides}) == n_slides
    assert {"train", "val"} <= set(spec.splits)
    assert spec.approx_spots > 0


def test_shared_download_groups_are_consistent():
    by_group: dict[str, list[DatasetSpec]] = {}
    for spec in all_specs():
        by_group.setdefault(spec.group, []).append(spec)
    for group, specs in by_group.items():
        assert group == specs[0].key or group not in SPEC_TABLE, f"group {group} collides with a dataset key"
        files = {s.key: {(f.filename, f.url, f.sha256, f.unpack) for f in s.files} for s in specs}
        assert len({frozenset(v) for v in files.values()}) == 1, f"group {group}: datasets list different files"


@pytest.mark.parametrize("key", sorted(SPEC_TABLE))
def test_to_dict_from_dict_round_trip(key):
    spec = load_spec(key)
    data = json.loads(json.dumps(spec.to_dict()))
    again = DatasetSpec.from_dict(data)
    assert again == spec
    assert again.to_dict() == spec.to_dict()


def test_processing_overrides_are_applied_on_top_of_a_base_config():
    spec = load_spec("mirzazadeh_human_small_intestine")
    cfg = spec.processing_config()
    assert (cfg.cell_min_counts, cfg.top_moran_genes, cfg.combat_key) == (800, 32, "patient")
    base = ProcessingConfig(patch_size=112, seed=7)
    cfg = spec.processing_config(base)
    assert (cfg.patch_size, cfg.seed, cfg.cell_min_counts, cfg.top_moran_genes) == (112, 7, 800, 32)
    mouse = load_spec("mirzazadeh_mouse_bone").processing_config(base)
    assert (mouse.organism, mouse.top_moran_genes, mouse.cell_min_counts) == ("mouse", 128, 10)


def test_shipped_specs_cannot_be_mutated():
    spec = load_spec("mirzazadeh_human_small_intestine")
    with pytest.raises(TypeError):
        spec.processing["top_moran_genes"] = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.organism = "mouse"


def _good(**changes) -> DatasetSpec:
    spec = DatasetSpec(
        key="toy", title="Toy", organism="human", tissue="skin", format="visium_spaceranger", source="10x",
        files=(FileSpec(url="https://example.org/toy.zip", filename="toy.zip", unpack=True),),
        slides=(SlideSpec(id="A", patient="p1", split="train", path="toy/A"),
                SlideSpec(id="B", patient="p1", split="val", path="toy/B")),
        processing={"top_moran_genes": 32},
    )
    return dataclasses.replace(spec, **changes)


def test_a_minimal_spec_is_valid():
    assert validate_spec(_good()).processing_config().top_moran_genes == 32


@pytest.mark.parametrize(("changes", "expected"), [
    ({"slides": (SlideSpec("A", "p1", "train", "A"), SlideSpec("B", "p1", "holdout", "B"),
                 SlideSpec("C", "p1", "val", "C"))},
     ["slide 'B' is in no split", "'holdout'"]),
    ({"slides": (SlideSpec("A", "p1", "train", "A"), SlideSpec("A", "p1", "val", "A2"))},
     ["slide 'A' is listed 2 times (splits ['train', 'val'])"]),
    ({"slides": (SlideSpec("A", "p1", "train", "A"),)}, ["no slide in the 'val' split"]),
    ({"organism": "zebrafish"}, ["organism 'zebrafish' is not one of ['human', 'mouse']"]),
    ({"format": "visium_magic"}, ["format 'visium_magic' is not one of", "visium_spaceranger"]),
    ({"files": ()}, ["no [[files]] listed"]),
    ({"files": (FileSpec(url="http://example.org/a.h5", filename="a.h5"),)}, ["must start with https://"]),
    ({"files": (FileSpec(url="https://x.org/a", filename="../a.h5"),)}, ["no '..'"]),
    ({"files": (FileSpec(url="https://x.org/a", filename="a.h5", sha256="abc"),)}, ["64 lower-case hex"]),
    ({"files": (FileSpec(url="https://x.org/a", filename="a.h5", unpack=True),)}, ["not a .tar.gz/.tgz/.tar/.zip"]),
    ({"processing": {"top_moran_gene": 32}}, ["unknown [processing] key(s) 'top_moran_gene'",
                                              "did you mean 'top_moran_genes'"]),
    ({"processing": {"top_moran_genes": 0}}, ["[processing] values are invalid", "top_moran_genes must be >= 1"]),
    ({"processing": {"organism": "mouse"}}, ["contradicts organism 'human'"]),
])
def test_bad_specs_raise_clear_errors(changes, expected):
    with pytest.raises(SpecError) as info:
        validate_spec(_good(**changes))
    message = str(info.value)
    assert "spec 'toy' is invalid" in message
    for text in expected:
        assert text in message


def test_validation_lists_every_problem_at_once():
    with pytest.raises(SpecError) as info:
        validate_spec(_good(organism="fish", format="nope"))
    assert "organism 'fish'" in str(info.value) and "format 'nope'" in str(info.value)


def test_from_dict_rejects_missing_and_unknown_fields():
    data = _good().to_dict()
    del data["organism"]
    data["colour"] = "red"
    with pytest.raises(SpecError, match=r"missing required field\(s\) \['organism'\]; unknown field\(s\) \['colour'\]"):
        DatasetSpec.from_dict(data)
    data = _good().to_dict()
    data["slides"][0]["spilt"] = "train"
    with pytest.raises(SpecError, match=r"slide #1: unknown field\(s\) \['spilt'\]"):
        DatasetSpec.from_dict(data)


def test_parse_spec_reports_invalid_toml_and_invalid_content():
    with pytest.raises(SpecError, match="is not valid TOML"):
        parse_spec("key = ", where="broken.toml")
    text = load_spec("parigi_mouse_intestine").to_dict()
    text["organism"] = "rat"
    with pytest.raises(SpecError, match="organism 'rat'"):
        validate_spec(DatasetSpec.from_dict(text))


def test_unknown_dataset_lists_close_matches():
    with pytest.raises(UnknownDatasetError) as info:
        load_spec("10xgenomic_human_breast")
    message = str(info.value)
    assert "unknown dataset '10xgenomic_human_breast'" in message
    assert "'10xgenomic_human_breast_cancer'" in message
    with pytest.raises(LookupError, match=r"'spared datasets --all' lists all 29"):
        load_spec("nothing_like_it_at_all")


def test_the_ten_x_files_are_pinned_and_the_rest_trusted_on_first_use():
    from spared.io.download import checksum_label

    pinned = {f.sha256 for s in all_specs() if s.key.startswith("10xgenomic_") for f in s.files}
    assert len(pinned) == 30 and "" not in pinned  # squidpy's registry: h5, spatial.tar.gz, image.tif per section
    labels = {s.key: checksum_label(s) for s in all_specs()}
    assert {k for k, v in labels.items() if v == "pinned"} == {k for k in labels if k.startswith("10xgenomic_")}
    assert {v for k, v in labels.items() if not k.startswith("10xgenomic_")} == {"first use"}


def _fan_original_rule(name: str, slide: str) -> bool:
    """The authors' Fan image criterion, restated: a .jpg naming 'modif', renamed from its last two '_' parts
    (``<HC|MOB><digit>_<slot>.jpg``) to ``<HC|MOB>_<slot>.jpg``, which must name the slide."""
    if not name.endswith(".jpg") or "modif" not in name or name.count("_") < 2:
        return False
    organ, slot = name.split("_")[-2:]
    return f"{organ[:-1]}_{slot}" == f"{slide}.jpg"


@pytest.mark.parametrize("key", ["fan_mouse_brain_coronal", "fan_mouse_olfatory_bulb"])
def test_fan_image_patterns_follow_the_original_criterion(key):
    from spared.io.scan import pattern_matches

    names = ["ExST_modified_HC1_A1.jpg", "ExST_modif_HC2_B1.jpg", "modif_HC3_B1.jpg", "ExST_HC2_B1.jpg",
             "ExST_modified_MOB1_C1.jpg", "X_modif_MOB2_D1.jpg", "X_modif_MOB7_D1.jpg", "X_modif_MOB2_D1.png",
             "X_modif_MOB2_D1_small.jpg"]
    for slide in load_spec(key).slides:
        pattern = slide.image.rsplit("/", 1)[1]
        for name in names:
            assert pattern_matches(pattern, name) == _fan_original_rule(name, slide.id), (slide.id, name)

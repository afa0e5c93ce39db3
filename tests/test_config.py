"""ProcessingConfig: `--set` values parsed to each field's type, fields validated, config files named in errors."""

import pytest
from typer.testing import CliRunner

from spared.cli import app
from spared.config import ProcessingConfig, parse_field


@pytest.mark.parametrize("text", ["no", "No", "false", "False", "off", "OFF", "0", "n", "f"])
def test_false_spellings_are_false(text):
    cfg = ProcessingConfig().with_overrides([f"complete_missing={text}", f"hex_geometry={text}"])
    assert cfg.complete_missing is False and cfg.hex_geometry is False and cfg.n_neighs == 8


@pytest.mark.parametrize("text", ["yes", "True", "on", "1", "y", "t"])
def test_true_spellings_are_true(text):
    cfg = ProcessingConfig(complete_missing=False).with_overrides([f"complete_missing={text}"])
    assert cfg.complete_missing is True


@pytest.mark.parametrize("assignment, key", [
    ("top_moran_genes=abc", "top_moran_genes"), ("cell_min_counts=abc", "cell_min_counts"),
    ("complete_missing=maybe", "complete_missing"), ("top_moran_genes=1.5", "top_moran_genes"),
    ("patch_size=true", "patch_size"), ("seed=[1,2]", "seed"), ("extra=notjson", "extra"),
    ("real_data_percentage=nan", "real_data_percentage"),
])
def test_values_that_do_not_convert_are_rejected_naming_the_key(assignment, key):
    with pytest.raises(ValueError, match=key):
        ProcessingConfig().with_overrides([assignment])


def test_numbers_lists_and_none_convert_to_the_field_types():
    cfg = ProcessingConfig().with_overrides([
        "top_moran_genes=64", "cell_min_counts=1e3", "patch_scale=2", "spackle_max_steps=1e2",
        "wildcard_genes=ENSG01,ENSG02", "combat_key=none", 'extra={"note": "x"}', "organism=mouse"])
    assert cfg.top_moran_genes == 64 and isinstance(cfg.top_moran_genes, int)
    assert cfg.cell_min_counts == 1000.0 and isinstance(cfg.cell_min_counts, float)
    assert cfg.patch_scale == 2.0 and isinstance(cfg.patch_scale, float)
    assert cfg.spackle_max_steps == 100 and isinstance(cfg.spackle_max_steps, int)
    assert cfg.wildcard_genes == ("ENSG01", "ENSG02")  # a list, not its characters
    assert cfg.combat_key is None and cfg.extra == {"note": "x"} and cfg.organism == "mouse"
    assert ProcessingConfig().with_overrides(['wildcard_genes=["A", "B"]']).wildcard_genes == ("A", "B")
    assert ProcessingConfig().with_overrides(["wildcard_genes=A"]).wildcard_genes == ("A",)
    # the same settings spelled differently are one configuration (one cache entry)
    assert (ProcessingConfig().with_overrides(["cell_min_counts=10"]).hash()
            == ProcessingConfig(cell_min_counts=10.0).hash() == ProcessingConfig().hash())


def test_parse_field_follows_any_annotation():
    assert parse_field("3", int, "k") == 3
    assert parse_field("off", bool | None, "k") is False and parse_field("null", bool | None, "k") is None
    assert parse_field("2,3", tuple[int, ...], "k") == (2, 3)
    assert parse_field("2,3", list[float], "k") == [2.0, 3.0]
    from typing import Literal

    assert parse_field("b", Literal["a", "b"], "k") == "b"
    with pytest.raises(ValueError, match="'k' must be one of"):
        parse_field("c", Literal["a", "b"], "k")
    with pytest.raises(ValueError, match="'k' must be an integer, got 'none'"):
        parse_field("none", int, "k")
    with pytest.raises(ValueError, match=r"'k'.*None is not allowed"):
        parse_field(None, int, "k")


@pytest.mark.parametrize("changes, key", [
    ({"cell_min_counts": -1}, "cell_min_counts"), ({"gene_min_counts": -5}, "gene_min_counts"),
    ({"cell_min_counts": 10, "cell_max_counts": 5}, "cell_max_counts"), ({"patch_size": 0}, "patch_size"),
    ({"patch_scale": 0}, "patch_scale"), ({"median_max_hops": 0}, "median_max_hops"),
    ({"spackle_max_steps": 0}, "spackle_max_steps"), ({"seed": -1}, "seed"), ({"min_exp_frac": 1.5}, "min_exp_frac"),
    ({"slide_key": ""}, "slide_key"), ({"top_moran_genes": 0}, "top_moran_genes"),
])
def test_processing_config_validates_its_fields(changes, key):
    with pytest.raises(ValueError, match=key):
        ProcessingConfig(**changes)


def test_config_file_errors_name_the_file(tmp_path):
    bad_toml = tmp_path / "broken.toml"
    bad_toml.write_text("top_moran_genes = = 3\n")
    with pytest.raises(ValueError, match=r"broken\.toml"):
        ProcessingConfig.from_file(bad_toml)
    bad_json = tmp_path / "broken.json"
    bad_json.write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json"):
        ProcessingConfig.from_file(bad_json)
    wrong_type = tmp_path / "typed.toml"
    wrong_type.write_text('top_moran_genes = "abc"\n')
    with pytest.raises(ValueError, match=r"typed.toml.*top_moran_genes"):
        ProcessingConfig.from_file(wrong_type)
    strings = tmp_path / "strings.toml"
    strings.write_text('complete_missing = "no"\ntop_moran_genes = "12"\n')
    cfg = ProcessingConfig.from_file(strings)
    assert cfg.complete_missing is False and cfg.top_moran_genes == 12
    not_table = tmp_path / "list.json"
    not_table.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"list\.json"):
        ProcessingConfig.from_file(not_table)


def test_cli_set_errors_exit_1_naming_the_key(tmp_path):
    runner = CliRunner()
    raw = tmp_path / "raw.h5ad"
    assert runner.invoke(app, ["simulate", str(raw), "--slides", "2", "--spots", "60", "--genes", "40"]).exit_code == 0
    for assignment, key in (("top_moran_genes=abc", "top_moran_genes"), ("cell_min_counts=abc", "cell_min_counts"),
                            ("complete_missing=maybe", "complete_missing"), ("patch_size=0", "patch_size")):
        result = runner.invoke(app, ["process", str(raw), str(tmp_path / "o.h5ad"), "--set", assignment])
        assert result.exit_code == 1, result.output
        assert key in result.output and "Traceback" not in result.output
    config = tmp_path / "c.toml"
    config.write_text("top_moran_genes = [")
    result = runner.invoke(app, ["process", str(raw), str(tmp_path / "o.h5ad"), "--config", str(config)])
    assert result.exit_code == 1 and "c.toml" in result.output
    assert not (tmp_path / "o.h5ad").exists()


def test_processing_presets_expand_into_fields_and_are_recognised(tmp_path):
    from spared.config import PROCESSING_PRESETS, preset_of

    original = ProcessingConfig.preset("original")
    assert original.spatial_graphs == "original" and original.preset_name == "original"
    assert ProcessingConfig().preset_name == "spared"
    assert original == ProcessingConfig().replace(preset="original") == ProcessingConfig().with_overrides(
        ["preset=original"])
    assert ProcessingConfig.preset("original", top_moran_genes=32).top_moran_genes == 32  # dataset settings kept
    assert ProcessingConfig.preset("original", spatial_graphs="spared").preset_name == "spared"  # fields win
    assert "preset" not in original.to_dict() and original.hash() != ProcessingConfig().hash()  # cache keys differ
    path = tmp_path / "settings.toml"
    path.write_text('preset = "original"\ntop_moran_genes = 64\n')
    assert ProcessingConfig.from_file(path).preset_name == "original"
    assert preset_of({"spatial_graphs": "original", "seed": 3}) == "original" and preset_of({}) == "spared"
    with pytest.raises(ValueError, match="'preset' must be one of \\['spared', 'original'\\], got 'authors'"):
        ProcessingConfig.preset("authors")
    assert set(PROCESSING_PRESETS) == {"spared", "original"}

"""A processed cache (and a benchmark run on it) is valid only for its inputs: raw-file content, every setting, the
protocol. A changed input builds a new cache and `spared prepare` says what changed; `--from` is checked even when
a cache exists; a read-only cache without patches says what to do."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from typer.testing import CliRunner

from spared.cli import app
from spared.datasets import cache_paths, get
from test_datasets import catalogue_copy, genes  # noqa: F401 (fixtures)
from test_local_links import KIDNEY, LUNG, organoid_copy, said
from test_readers import write_visium_outs

runner = CliRunner()
SMALL = ["--set", "top_moran_genes=8", "--set", "complete_missing=false", "--no-patches"]


def test_settings_and_raw_content_make_new_caches_and_prepare_says_what_changed(catalogue_copy, genes):  # noqa: F811
    from spared.bench.runs import RunSpec

    spec, raw = catalogue_copy
    first = runner.invoke(app, ["prepare", spec.key, *SMALL])
    assert first.exit_code == 0, first.output
    assert f"built {spec.key}" in said(first)
    again = runner.invoke(app, ["prepare", spec.key, *SMALL])
    assert f"loaded {spec.key}" in said(again)
    version = RunSpec("stnet", f"{spec.key}:top_moran_genes=8,complete_missing=false").data_version

    other = runner.invoke(app, ["prepare", spec.key, *SMALL, "--set", "top_moran_genes=6"])
    assert f"built {spec.key}: " in said(other) and "setting top_moran_genes: 8 → 6" in said(other), other.output

    matrix = raw / spec.slides[1].path / "filtered_feature_bc_matrix.h5"
    write_visium_outs(raw / spec.slides[1].path, genes=genes, seed=9)  # other counts in the downloaded file
    refused = runner.invoke(app, ["prepare", spec.key, *SMALL])
    assert refused.exit_code == 1 and "--recheck" in said(refused) and str(matrix) in said(refused)
    assert runner.invoke(app, ["download", spec.key, "--recheck", "--no-progress"]).exit_code == 0
    rebuilt = runner.invoke(app, ["prepare", spec.key, *SMALL])
    text = said(rebuilt)
    assert rebuilt.exit_code == 0 and f"built {spec.key}" in text, rebuilt.output
    assert f"raw file {spec.slides[1].path}/filtered_feature_bc_matrix.h5 changed" in text
    assert RunSpec("stnet", f"{spec.key}:top_moran_genes=8,complete_missing=false").data_version != version
    assert len(list((raw.parent.parent / spec.key / "processed").glob("*.h5ad"))) == 3


def test_an_organism_override_is_refused_not_dropped(catalogue_copy):  # noqa: F811
    spec, _ = catalogue_copy
    result = runner.invoke(app, ["prepare", spec.key, *SMALL, "--set", "organism=mouse"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"dataset '{spec.key}' is human (catalogue); organism='mouse'" in said(result)
    with pytest.raises(ValueError, match="organism='mouse'"):
        cache_paths(spec.key, {"organism": "mouse"})


def test_from_is_checked_even_when_a_cache_exists(catalogue_copy, tmp_path):  # noqa: F811
    spec, _ = catalogue_copy
    assert runner.invoke(app, ["prepare", spec.key, *SMALL]).exit_code == 0
    missing = runner.invoke(app, ["prepare", spec.key, *SMALL, "--from", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and "nowhere: no such folder" in said(missing)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    result = runner.invoke(app, ["prepare", spec.key, *SMALL, "--from", str(a_file)])
    assert result.exit_code == 1 and "is a file, not a folder" in said(result)


def test_a_read_only_cache_without_patches_says_what_to_do(catalogue_copy, small_disk):  # noqa: F811
    spec, raw = catalogue_copy
    data = raw.parent.parent
    get(spec.key, {"top_moran_genes": 8, "complete_missing": False}, patches=False, progress=False)
    disk = small_disk("64m")
    assert spec.group == spec.key  # one folder: raw files, their hashes and the processed caches
    shutil.copytree(data / spec.key, disk / spec.key, symlinks=True)
    small_disk.read_only(disk)
    config = {"top_moran_genes": 8, "complete_missing": False}
    loaded = get(spec.key, config, data_dir=disk, patches=False, progress=False)  # checked, then loaded
    assert loaded.n_obs > 0
    with pytest.raises(OSError, match=r"has no patch store .* and its folder cannot be written, .*--no-patches"):
        get(spec.key, config, data_dir=disk, progress=False)
    result = runner.invoke(app, ["prepare", spec.key, "--data-dir", str(disk), *SMALL[:4]])
    assert result.exit_code == 1 and "Traceback" not in result.output and "--no-patches" in said(result)


@pytest.mark.slow
def test_real_organoid_data_changed_and_rechecked_builds_anew(realdata, tmp_path, monkeypatch):
    """The reported case on a copy of the kidney organoid slides: the cache follows an edit of the user's files
    once --recheck accepts it, and says which file changed."""
    monkeypatch.setenv("SPARED_DATA", str(tmp_path / "data"))
    mine = organoid_copy(realdata, tmp_path / "mine", ("kidneyorganoid",))
    args = ["prepare", KIDNEY, *SMALL]
    first = runner.invoke(app, [*args, "--from", str(mine)])
    assert first.exit_code == 0 and f"built {KIDNEY}: 1355 spots" in said(first), first.output
    positions = mine / "data/kidneyorganoid/V19D02-085_B1/spatial/tissue_positions_list.csv"
    table = pd.read_csv(positions, header=None)
    table.loc[table.index[table[1] == 1][:100], 1] = 0  # 100 spots of one slide taken out of the tissue
    table.to_csv(positions, header=False, index=False)
    refused = runner.invoke(app, args)
    assert refused.exit_code == 1 and f"your file {positions.resolve()}" in said(refused) and "--recheck" in \
        said(refused)
    assert runner.invoke(app, ["download", KIDNEY, "--recheck", "--no-progress"]).exit_code == 0
    rebuilt = runner.invoke(app, args)
    text = said(rebuilt)
    assert rebuilt.exit_code == 0 and f"built {KIDNEY}: " in text and "1355 spots" not in text, rebuilt.output
    assert "raw file xjtv62ncwr_data.tar.gz changed" in text and str(positions.resolve()) in text
    assert LUNG not in text
    pristine = organoid_copy(realdata, tmp_path / "pristine", ("kidneyorganoid",))
    back = runner.invoke(app, [*args, "--from", str(pristine)])  # used although a cache exists: relinked, and ...
    assert back.exit_code == 0 and f"loaded {KIDNEY}: 1355 spots" in said(back), back.output  # ... the same content


"""Local sources checked like downloads: formats and hashes of linked files, links re-made or reported, links
that leave the source, loops, nothing half made, datasets sharing a download folder, concurrent fetches.

Cases about real files use copies of the shared organoid slides altered in a temporary folder."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spared.catalog import load_spec
from spared.cli import app
from spared.io.download import (
    ChecksumError,
    DownloadError,
    FormatError,
    checksums_path,
    dataset_dir,
    fetch_dataset,
    file_records,
    input_fingerprints,
    status,
)
from spared.io.local import LocalFileChanged, LocalSourceError, manifest_path
from test_local_sources import DATA, IMAGES, tar_gz, toy_spec, write_tree

VILLACAMPA = "villacampa_xjtv62ncwr"
LUNG, KIDNEY = "villacampa_lung_organoid", "villacampa_kidney_organoid"
runner = CliRunner()


def said(result) -> str:
    return " ".join(result.output.split())


def organoid_copy(realdata: Path, dest: Path, organs: tuple[str, ...] = ("lungorganoid",)) -> Path:
    """A writable copy of the shared archive contents (``data/<organ>/<slide>/...``) for the given organs."""
    for organ in organs:
        shutil.copytree(realdata / VILLACAMPA / "data" / organ, dest / "data" / organ,
                        copy_function=shutil.copyfile)
    for root, dirs, _ in os.walk(dest):
        for name in dirs:
            os.chmod(Path(root, name), 0o755)
    return dest


def linked_listing(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): os.path.realpath(p) for p in sorted(folder.rglob("*")) if p.is_symlink()}


# --- formats and hashes of linked files ------------------------------------------------------------------------


def test_an_html_page_named_like_a_matrix_is_refused_and_nothing_is_linked(realdata, tmp_path):
    mine = organoid_copy(realdata, tmp_path / "mine")
    matrix = mine / "data/lungorganoid/V19D02-088_B1/filtered_feature_bc_matrix.h5"
    matrix.write_text("<!DOCTYPE html><html><body>Sign in</body></html>")
    spec = load_spec(LUNG)
    with pytest.raises(FormatError, match=r"filtered_feature_bc_matrix\.h5 should be an HDF5 file .* an HTML page; "
                                          r"it would be linked as .*nothing was linked"):
        fetch_dataset(spec, tmp_path / "data", progress=False, source=mine)
    folder = dataset_dir(spec, tmp_path / "data")
    assert linked_listing(folder) == {} and not manifest_path(spec.files[0], folder).exists()
    assert status(spec, tmp_path / "data") == "absent"


def test_linked_files_are_hashed_edits_are_caught_and_recheck_records_them(realdata, tmp_path):
    mine = organoid_copy(realdata, tmp_path / "mine")
    spec, data = load_spec(LUNG), tmp_path / "data"
    fetch_dataset(spec, data, progress=False, source=mine)
    folder = dataset_dir(spec, data)
    manifest = json.loads(manifest_path(spec.files[0], folder).read_text())
    positions = mine / "data/lungorganoid/V19D02-088_A1/spatial/tissue_positions_list.csv"
    record = manifest["files"]["data/lungorganoid/V19D02-088_A1/spatial/tissue_positions_list.csv"]
    assert record["source"] == str(positions.resolve()) and len(record["sha256"]) == 64
    assert len(manifest["files"]) == sum(p.is_file() for p in mine.rglob("*"))  # every file, each hashed
    before = input_fingerprints(spec, data)["xjtv62ncwr_data.tar.gz"]
    assert before.startswith("local:")
    positions.write_text(positions.read_text().replace(",1,", ",0,", 50))  # an in-place edit of the user's file
    assert input_fingerprints(spec, data)["xjtv62ncwr_data.tar.gz"] != before  # the key sees it before any hashing
    with pytest.raises(LocalFileChanged, match=rf"your file {positions.resolve()} \(linked as .*\) changed since it "
                                               rf"was linked.*--recheck"):
        fetch_dataset(spec, data, progress=False, images=False)
    result = runner.invoke(app, ["download", LUNG, "--data-dir", str(data), "--recheck", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"recorded the new content of your file {positions.resolve()}" in said(result)
    fetch_dataset(spec, data, progress=False, images=False)  # accepted now
    datasets = runner.invoke(app, ["datasets", "--json", "--data-dir", str(data)])
    record = next(r for r in json.loads(datasets.output) if r["name"] == LUNG)
    assert record["checksums"] == "local folder"  # not "first use": these are the user's files, hashed


def test_a_moved_source_is_reported_and_a_deleted_link_is_made_again(realdata, tmp_path):
    mine = organoid_copy(realdata, tmp_path / "mine")
    spec, data = load_spec(LUNG), tmp_path / "data"
    fetch_dataset(spec, data, progress=False, source=mine)
    folder = dataset_dir(spec, data)
    link = folder / "xjtv62ncwr_data/data/lungorganoid/V19D02-088_C1/filtered_feature_bc_matrix.h5"
    link.unlink()  # removed by hand: made again from the recorded user file
    fetch_dataset(spec, data, progress=False, images=False)
    assert link.is_symlink() and os.path.realpath(link) == str((mine / link.relative_to(folder /
                                                                                        "xjtv62ncwr_data")).resolve())
    moved = mine.rename(tmp_path / "elsewhere")
    with pytest.raises(LocalSourceError, match=r"(?s)linked from a local folder and are gone .*mine/data/lungorganoid"
                                               r".*--from FOLDER.*delete .*\.spared-local\.xjtv62ncwr_data\.tar\.gz"):
        fetch_dataset(spec, data, progress=False, images=False)
    fetch_dataset(spec, data, progress=False, source=moved)  # the recovery the message gives
    assert all(target.startswith(str(moved)) for target in linked_listing(folder).values())


def test_a_new_from_replaces_a_bad_earlier_file(tmp_path):
    """An archive linked from one folder is linked anew from another (and recorded anew), never kept because it
    was "already there"."""
    spec, data = toy_spec(), tmp_path / "data"
    first, second = tmp_path / "first", tmp_path / "second"
    write_tree(first, {"toy_data.tar.gz": tar_gz({k: b"old" for k in DATA}), "toy_images.tar.gz": tar_gz(IMAGES)})
    write_tree(second, {"toy_data.tar.gz": tar_gz(DATA), "toy_images.tar.gz": tar_gz(IMAGES)})
    folder = fetch_dataset(spec, data, progress=False, source=first)
    old = json.loads(checksums_path(spec, data).read_text())["toy_data.tar.gz"]["sha256"]
    fetch_dataset(spec, data, progress=False, source=second)
    assert os.path.realpath(folder / "toy_data.tar.gz") == str(second / "toy_data.tar.gz")
    sums = json.loads(checksums_path(spec, data).read_text())["toy_data.tar.gz"]
    assert sums["sha256"] != old and sums["source"] == str(second / "toy_data.tar.gz")
    name = next(iter(DATA))
    assert (folder / "toy_data" / name).read_bytes() == DATA[name]  # unpacked again from the new archive
    records = {r["filename"]: r for r in file_records(spec, data)}
    assert records["toy_data.tar.gz"]["source"] == str(second / "toy_data.tar.gz")


def test_a_downloaded_file_that_differs_from_from_is_named_not_replaced(tmp_path):
    spec, data = toy_spec(), tmp_path / "data"
    folder = dataset_dir(spec, data)
    write_tree(folder, {"toy_data.tar.gz": tar_gz(DATA)})
    mine = tmp_path / "mine"
    write_tree(mine, {"toy_data.tar.gz": tar_gz({k: b"other" for k in DATA})})
    with pytest.raises(LocalSourceError, match=r"toy_data\.tar\.gz is already in the dataset folder .* differs from "
                                               r".*mine/toy_data\.tar\.gz; spared never deletes it"):
        fetch_dataset(spec, data, progress=False, source=mine)
    assert not (folder / "toy_data.tar.gz").is_symlink()


# --- links inside the source ------------------------------------------------------------------------------------


def test_a_folder_link_leaving_the_source_is_refused_unless_allowed(realdata, tmp_path):
    mine = organoid_copy(realdata, tmp_path / "mine")
    outside = tmp_path / "unrelated"
    write_tree(outside, {f"doc{i}.txt": b"x" for i in range(5)})
    (mine / "data/lungorganoid/V19D02-088_A1/docs").symlink_to(outside)
    spec, data = load_spec(LUNG), tmp_path / "data"
    with pytest.raises(LocalSourceError, match=r"V19D02-088_A1/docs leads to .*unrelated, outside the folder .*"
                                               r"--allow-external-links"):
        fetch_dataset(spec, data, progress=False, source=mine)
    assert linked_listing(dataset_dir(spec, data)) == {}
    result = runner.invoke(app, ["download", LUNG, "--data-dir", str(data), "--from", str(mine), "--no-progress",
                                 "--allow-external-links"])
    assert result.exit_code == 0, result.output
    assert any(t.startswith(str(outside)) for t in linked_listing(dataset_dir(spec, data)).values())


def test_a_link_loop_is_an_error_naming_the_link_and_nothing_is_half_made(realdata, tmp_path):
    mine = organoid_copy(realdata, tmp_path / "mine")
    slide = mine / "data/lungorganoid/V19D02-088_D1"
    (slide / "a").symlink_to(slide / "b")
    (slide / "b").symlink_to(slide / "a")
    spec, data = load_spec(LUNG), tmp_path / "data"
    result = runner.invoke(app, ["download", LUNG, "--data-dir", str(data), "--from", str(mine), "--no-progress"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "V19D02-088_D1/a is a symbolic link in a loop" in said(result)
    folder = dataset_dir(spec, data)
    assert linked_listing(folder) == {} and not any(folder.rglob(".*tmp*")) and not any(folder.rglob(".*part*"))
    (slide / "a").unlink()
    (slide / "b").unlink()
    (slide / "up").symlink_to(slide.parent)  # a folder link back to one of its parents: a loop as well
    with pytest.raises(LocalSourceError, match=r"V19D02-088_D1/up is a link back to .*lungorganoid, one of the "
                                               r"folders it lies in \(a loop\)"):
        fetch_dataset(spec, data, progress=False, source=mine)


# --- datasets sharing a download folder, --from FILE, checksums.json ---------------------------------------------


def test_lung_and_kidney_each_take_their_own_from(realdata, tmp_path):
    both = organoid_copy(realdata, tmp_path / "both", ("lungorganoid", "kidneyorganoid"))
    kidney_only = organoid_copy(realdata, tmp_path / "kidney", ("kidneyorganoid",))
    data = tmp_path / "data"
    lung, kidney = load_spec(LUNG), load_spec(KIDNEY)
    fetch_dataset(lung, data, progress=False, source=both)
    assert status(kidney, data) == "downloaded"  # the first --from brings the whole archive's content ...
    assert status(load_spec("villacampa_mouse_brain"), data) == "absent"  # ... which has no mouse brain slides
    before = input_fingerprints(lung, data)
    fetch_dataset(kidney, data, progress=False, source=kidney_only)  # not ignored as "already there"
    links = linked_listing(dataset_dir(kidney, data))
    kidney_links = {k: v for k, v in links.items() if "kidneyorganoid/V19D02" in k}  # its slides: its own parts
    lung_links = {k: v for k, v in links.items() if "lungorganoid/" in k}
    assert kidney_links and all(v.startswith(str(kidney_only)) for v in kidney_links.values())
    assert lung_links and all(v.startswith(str(both)) for v in lung_links.values())
    assert input_fingerprints(lung, data) == before  # lung's inputs are untouched


def test_from_a_file_or_a_missing_folder_says_what_to_give(tmp_path):
    spec = toy_spec()
    archive = tmp_path / "toy_data.tar.gz"
    archive.write_bytes(tar_gz(DATA))
    with pytest.raises(DownloadError, match=rf"--from {archive} is a file, not a folder; it is one of the dataset's "
                                            rf"files: give the folder that holds it, --from {tmp_path}"):
        fetch_dataset(spec, tmp_path / "data", progress=False, source=archive)
    with pytest.raises(DownloadError, match=r"--from .*nowhere: no such folder"):
        fetch_dataset(spec, tmp_path / "data", progress=False, source=tmp_path / "nowhere")


@pytest.mark.parametrize("content", ["[1, 2]", '{"toy_data.tar.gz": "abc"}', '{"toy_data.tar.gz": {"url": 3}}'])
def test_checksums_file_of_the_wrong_shape_is_a_clear_error(tmp_path, content):
    spec = toy_spec()
    path = checksums_path(spec, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(content)
    write_tree(dataset_dir(spec, tmp_path), {"toy_data.tar.gz": tar_gz(DATA), "toy_images.tar.gz": tar_gz(IMAGES)})
    with pytest.raises(ChecksumError, match=r"checksums\.json is not a spared checksums file: .*Move it away"):
        fetch_dataset(spec, tmp_path, progress=False)
    result = runner.invoke(app, ["datasets", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0  # the catalogue listing does not read checksums of datasets it does not show


def test_concurrent_fetches_of_one_dataset_wait_for_each_other(tmp_path, capsys):
    spec, data = toy_spec(), tmp_path / "data"
    mine = tmp_path / "mine"
    write_tree(mine / "toy_data", DATA)
    write_tree(mine / "toy_images", IMAGES)
    start, errors = threading.Barrier(3), []

    def fetch() -> None:
        start.wait()
        try:
            fetch_dataset(spec, data, progress=False, source=mine)
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and status(spec, data) == "downloaded"
    folder = dataset_dir(spec, data)
    assert len(linked_listing(folder)) == len(DATA) + len(IMAGES)

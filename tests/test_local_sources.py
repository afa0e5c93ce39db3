"""Local sources (``spared download NAME --from PATH``) and checksums that check (format first, never deleting)."""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spared.catalog import DatasetSpec, FileSpec, SlideSpec
from spared.io.archive import unpack_archive
from spared.io.download import (
    DownloadError,
    FormatError,
    checksums_path,
    dataset_dir,
    fetch_dataset,
    file_records,
    resolve_layout,
    status,
)
from spared.io.sniff import check_format, sniff

VILLACAMPA = "villacampa_xjtv62ncwr"


def tar_gz(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


DATA = {f"data/organ/{s}/spatial/scalefactors_json.json": f'{{"slide": "{s}"}}'.encode() for s in ("A", "B")}
IMAGES = {f"images/{s}.jpg": b"\xff\xd8\xff\xe0" + s.encode() for s in ("A", "B")}


def toy_spec() -> DatasetSpec:
    """Two archives as in the Villacampa catalogue entries: slide data, and full-resolution images."""
    files = (FileSpec(url="https://example.org/files/1/file_downloaded", filename="toy_data.tar.gz", unpack=True),
             FileSpec(url="https://example.org/files/2/file_downloaded", filename="toy_images.tar.gz", unpack=True))
    slides = tuple(SlideSpec(s, "p", split, path=f"toy_data/data/organ/{s}", image=f"toy_images/images/{s}.jpg")
                   for s, split in (("A", "train"), ("B", "val")))
    return DatasetSpec(key="toy", title="Toy", organism="human", tissue="organ", format="visium_spaceranger",
                       source="mendeley", files=files, slides=slides)


def write_tree(root: Path, entries: dict[str, bytes]) -> None:
    for name, data in entries.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def listing(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("layout", ["archives", "unpacked_folders", "archive_contents"])
def test_local_source_layouts_give_the_downloaded_dataset(tmp_path, layout, capsys):
    spec = toy_spec()
    source = tmp_path / "mine"
    if layout == "archives":
        write_tree(source, {"toy_data.tar.gz": tar_gz(DATA), "toy_images.tar.gz": tar_gz(IMAGES)})
    elif layout == "unpacked_folders":
        write_tree(source / "toy_data", DATA)
        write_tree(source / "toy_images", IMAGES)
    else:
        write_tree(source, {**DATA, **IMAGES, "__MACOSX/data/._x": b"\x00", ".DS_Store": b"\x00"})
    before = listing(source)
    folder = fetch_dataset(spec, tmp_path / "data", progress=False, source=source)
    assert status(spec, tmp_path / "data") == "downloaded"
    slides, notes = resolve_layout(spec, folder)
    assert notes == [] and [s.image for s in slides] == ["toy_images/images/A.jpg", "toy_images/images/B.jpg"]
    for name, data in {**DATA, **IMAGES}.items():
        where = folder / ("toy_data" if name.startswith("data") else "toy_images") / name
        assert where.read_bytes() == data
        if layout != "archives":
            assert where.is_symlink()  # used in place, not copied
    assert not list(folder.rglob("__MACOSX")) and not list(folder.rglob(".DS_Store"))
    assert listing(source) == before  # the user's folder is never written to
    states = [r["state"] for r in file_records(spec, tmp_path / "data")]
    assert states == (["first use"] * 2 if layout == "archives" else ["local folder"] * 2)
    assert fetch_dataset(spec, tmp_path / "data", progress=False) == folder  # later calls need no source
    if layout == "archives":
        assert "trust on first use" in capsys.readouterr().err


def no_network_expected(*args, **kwargs):
    raise AssertionError("no download should be attempted")


def test_missing_images_archive_is_a_warning_and_an_empty_source_an_error(tmp_path, capsys, monkeypatch):
    spec = toy_spec()
    source = tmp_path / "mine"
    write_tree(source, DATA)
    folder = fetch_dataset(spec, tmp_path / "data", progress=False, source=source)
    err = capsys.readouterr().err
    assert "toy_images.tar.gz" in err and "full-resolution images only" in err and "hires" in err
    assert status(spec, tmp_path / "data") == "downloaded"
    slides, notes = resolve_layout(spec, folder)
    assert [s.image for s in slides] == [None, None] and "no full-resolution image" in notes[0]
    monkeypatch.setattr("spared.io.download._download", no_network_expected)
    assert fetch_dataset(spec, tmp_path / "data", progress=False, images=False) == folder
    assert capsys.readouterr().err == ""  # no network, no repeated warning
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DownloadError, match=r"holds none of the 2 files of dataset 'toy'.*toy_data.tar.gz.*"
                                            r"data/organ/A"):
        fetch_dataset(spec, tmp_path / "other", progress=False, source=empty)


def test_real_organoid_folders_from_the_shared_copy(realdata, tmp_path):
    """The shared folder holds the data archive's contents; the Python equivalent of --from reads every slide."""
    from spared.catalog import load_spec
    from spared.datasets import download
    from spared.io.readers import read

    for key in ("villacampa_kidney_organoid", "villacampa_lung_organoid"):
        with pytest.warns(UserWarning, match="no full-resolution image"):
            folder = download(key, source=realdata / VILLACAMPA, data_dir=tmp_path, progress=False)
    spec = load_spec("villacampa_kidney_organoid")
    slides, _ = resolve_layout(spec, folder)
    raw = read(spec.format, folder, slides, spec.organism)
    assert raw.n_obs == 413 + 475 + 469 and raw.n_vars == 33538  # every in-tissue spot of the filtered matrices
    linked = [p for p in (folder / "xjtv62ncwr_data").rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert len(linked) == 41 and all(p.is_symlink() for p in linked)  # used in place, nothing copied


def test_local_files_found_below_a_folder_of_the_catalogue_layout(realdata, tmp_path):
    """her2st's shared copy is the repository's ``data/`` folder: the catalogue's ``data/ST-cnts/A1.tsv.gz`` is
    found as ``ST-cnts/A1.tsv.gz`` under it; files the folder lacks (most H&E images) are reported, not fatal."""
    from spared.catalog import load_spec
    from spared.datasets import download
    from spared.io.download import file_records

    with pytest.warns(UserWarning, match="no full-resolution image"):
        download("andersson_human_breast_cancer", source=realdata / "her2st", data_dir=tmp_path, progress=False)
    records = file_records(load_spec("andersson_human_breast_cancer"), tmp_path)
    linked = {r["filename"] for r in records if r.get("source", "").startswith(str(realdata / "her2st"))}
    assert "data/ST-cnts/A1.tsv.gz" in linked and "data/ST-spotfiles/H3_selection.tsv" in linked
    assert len(linked) == 36 * 2 + len(list((realdata / "her2st" / "ST-imgs").rglob("*.jpg")))


@pytest.mark.slow
def test_prepare_gives_the_authors_spot_counts(realdata, tmp_path, monkeypatch):
    """`spared download --from` then `spared prepare`: 1,832 and 1,355 spots, as on the SpaRED page."""
    from spared.cli import app

    monkeypatch.setenv("SPARED_DATA", str(tmp_path))
    runner = CliRunner()
    result = runner.invoke(app, ["download", "villacampa_lung_organoid", "--from", str(realdata / VILLACAMPA),
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.stdout.split())
    assert "1 of 2 file(s) ready" in said and "from your folder" in said
    monkeypatch.setattr("spared.io.download._download", no_network_expected)  # later builds stay offline
    for key, spots in (("villacampa_lung_organoid", 1832), ("villacampa_kidney_organoid", 1355)):
        start = time.perf_counter()
        result = runner.invoke(app, ["prepare", key, "--set", "complete_missing=false", "--set", "patch_size=32"])
        assert result.exit_code == 0, result.output
        text = " ".join(result.stdout.split())
        assert f"built {key}: {spots} spots × 128 genes" in text, text
        assert "patches cut from the hires image" in text
        print(f"{key}: prepared in {time.perf_counter() - start:.1f} s")
    import anndata as ad

    h5ad = next((tmp_path / "villacampa_kidney_organoid" / "processed").glob("*.h5ad"))
    adata = ad.read_h5ad(h5ad)
    sources = adata.uns["spared"]["patches"]["sources"]
    assert {s["image"] for s in sources.values()} == {"hires"}
    assert 0.2 < adata.uns["spared"]["missing_fraction_before"] < 0.45


# --- checksums that check ------------------------------------------------------------------------------------


def test_random_bytes_are_refused_before_anything_is_recorded_and_never_deleted(tmp_path):
    spec = toy_spec()
    folder = dataset_dir(spec, tmp_path)
    folder.mkdir(parents=True)
    archive = folder / "toy_data.tar.gz"
    archive.write_bytes(os.urandom(4096))
    (folder / "toy_images.tar.gz").write_bytes(tar_gz(IMAGES))
    with pytest.raises(FormatError, match=r"toy_data.tar.gz should be gzip data .* but its content is unrecognised "
                                          r"bytes.*left in place"):
        fetch_dataset(spec, tmp_path, progress=False)
    assert archive.is_file() and not checksums_path(spec, tmp_path).exists()
    archive.write_bytes(tar_gz(DATA))  # the valid archive placed by hand, as the message advises
    fetch_dataset(spec, tmp_path, progress=False)
    sums = json.loads(checksums_path(spec, tmp_path).read_text())
    assert sums["toy_data.tar.gz"]["origin"] == "first use" and status(spec, tmp_path) == "downloaded"


def test_replaced_archive_needs_recheck_then_is_unpacked_again(tmp_path):
    from spared.catalog import load_spec
    from spared.cli import app

    spec = load_spec("villacampa_kidney_organoid")
    folder = dataset_dir(spec, tmp_path)
    folder.mkdir(parents=True)
    archive = folder / "xjtv62ncwr_data.tar.gz"
    contents = {f"data/kidneyorganoid/{s.id}/note.txt": b"first" for s in spec.slides}
    archive.write_bytes(tar_gz(contents))
    args = ["download", spec.key, "--data-dir", str(tmp_path), "--no-progress", "--from", str(tmp_path / "src")]
    (tmp_path / "src").mkdir()  # a local source without the images archive: no network is tried
    runner = CliRunner()
    assert runner.invoke(app, args).exit_code == 0
    first = json.loads(checksums_path(spec, tmp_path).read_text())["xjtv62ncwr_data.tar.gz"]["sha256"]
    archive.write_bytes(tar_gz({name: b"second" for name in contents}))  # another archive, same name
    refused = runner.invoke(app, args)
    assert refused.exit_code == 1 and "--recheck" in refused.stderr and first in " ".join(refused.stderr.split())
    assert archive.is_file()
    result = runner.invoke(app, [*args, "--recheck"])
    assert result.exit_code == 0, result.output
    assert f"replacing {first}" in " ".join(result.stderr.split())
    note = folder / "xjtv62ncwr_data" / next(iter(contents))
    assert note.read_bytes() == b"second"  # the unpack marker is keyed by the archive's hash


def test_unpack_marker_is_keyed_by_the_archives_hash(tmp_path):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tar_gz({"d/x.txt": b"one"}))
    target = unpack_archive(archive, tmp_path / "out")
    marker = json.loads(next(target.glob(".spared-unpacked.*")).read_text())
    assert len(marker["sha256"]) == 64
    archive.write_bytes(tar_gz({"d/x.txt": b"two"}))  # same name, other content
    unpack_archive(archive, target)
    assert (target / "d/x.txt").read_bytes() == b"two"


def test_downloaded_error_page_is_discarded_and_nothing_recorded(tmp_path, monkeypatch):
    import spared.io.download as download

    spec = toy_spec()

    def fake_download(f, path, expected, progress, timeout):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"<!DOCTYPE html><html><body>Sign in to Mendeley Data</body></html>")

    monkeypatch.setattr(download, "_download", fake_download)
    with pytest.raises(FormatError, match=r"should be gzip data .* an HTML page.*discarded, nothing was recorded"):
        fetch_dataset(spec, tmp_path, progress=False)
    assert not (dataset_dir(spec, tmp_path) / "toy_data.tar.gz").exists()
    assert not checksums_path(spec, tmp_path).exists()


def test_format_sniffing_recognises_each_kind(tmp_path):
    import h5py
    import numpy as np
    import pandas as pd
    import tifffile
    from PIL import Image

    with h5py.File(tmp_path / "m.h5", "w") as f:
        f["x"] = [1]
    tifffile.imwrite(tmp_path / "i.tif", np.zeros((8, 8, 3), np.uint8), photometric="rgb")
    Image.new("RGB", (4, 4)).save(tmp_path / "i.jpg")
    Image.new("RGB", (4, 4)).save(tmp_path / "i.png")
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "t.parquet", engine="pyarrow")
    (tmp_path / "a.tar.gz").write_bytes(tar_gz({"x": b"y"}))
    with tarfile.open(tmp_path / "a.tar", "w") as tar:
        tar.add(tmp_path / "m.h5", arcname="m.h5")
    import zipfile

    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.writestr("x", "y")
    (tmp_path / "s.csv").write_text("barcode,in_tissue\nAAAC-1,1\n")
    expected = {"m.h5": "hdf5", "i.tif": "tiff", "i.jpg": "jpeg", "i.png": "png", "t.parquet": "parquet",
                "a.tar.gz": "gzip", "a.tar": "tar", "a.zip": "zip", "s.csv": "text"}
    for name, kind in expected.items():
        assert sniff(tmp_path / name) == kind and check_format(tmp_path / name) == kind
    (tmp_path / "fake.tif").write_bytes((tmp_path / "i.png").read_bytes())
    with pytest.raises(FormatError, match=r"fake.tif should be a TIFF image .* but its content is a PNG image"):
        check_format(tmp_path / "fake.tif")

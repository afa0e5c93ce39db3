"""Downloads (local HTTP server), checksums, offline errors, safe unpacking and the datasets/download CLI."""

import functools
import hashlib
import io
import json
import socket
import stat
import tarfile
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spared.catalog import DatasetSpec, FileSpec, SlideSpec
from spared.io.archive import ArchiveError, is_unpacked, unpack_archive
from spared.io.download import (
    ChecksumError,
    DownloadError,
    LayoutError,
    checksums_path,
    data_dir,
    dataset_dir,
    fetch_dataset,
    processed_dir,
    resolve_layout,
    resolve_slides,
    status,
)


class _Handler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass

    def do_GET(self):
        if self.path == "/truncated.bin":  # promises 1 MB, sends 1 kB, hangs up
            self.send_response(200)
            self.send_header("Content-Length", str(1 << 20))
            self.end_headers()
            self.wfile.write(b"x" * 1024)
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    """A local HTTP server serving ``tmp_path / "www"``; yields ``(base_url, folder)``."""
    www = tmp_path / "www"
    www.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", www
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def dead_url():
    """A URL on a localhost port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _spec(*files: FileSpec, slides=None, nested=()) -> DatasetSpec:
    slides = slides or (SlideSpec("A", "p", "train", "A"), SlideSpec("B", "p", "val", "B"))
    return DatasetSpec(key="toy", title="Toy", organism="human", tissue="skin", format="visium_spaceranger",
                       source="10x", files=files, slides=slides, unpack_nested=nested)


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.is_file() and p.name.startswith("tmp")]


def test_data_dir_honours_spared_data(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARED_DATA", str(tmp_path / "cache"))
    assert data_dir() == tmp_path / "cache"
    monkeypatch.delenv("SPARED_DATA")
    assert data_dir().name == "spared"


def hdf5_bytes(tmp_path: Path, value: int = 1) -> bytes:
    """The bytes of a small valid HDF5 file."""
    import h5py

    path = tmp_path / f"made-{value}.h5"
    with h5py.File(path, "w") as f:
        f["x"] = [value]
    data = path.read_bytes()
    path.unlink()
    return data


def test_download_with_known_hash_then_resume_offline(server, dead_url, tmp_path):
    base, www = server
    payload = hdf5_bytes(tmp_path)
    (www / "a.h5").write_bytes(payload)
    spec = _spec(FileSpec(url=f"{base}/a.h5", filename="A/a.h5", sha256=_sha(payload)))
    root = tmp_path / "data"
    assert status(spec, root) == "absent"
    folder = fetch_dataset(spec, root, progress=False, timeout=5)
    assert folder == dataset_dir(spec, root) == root / "toy" / "raw"
    assert (folder / "A" / "a.h5").read_bytes() == payload
    assert status(spec, root) == "downloaded"
    record = json.loads(checksums_path(spec, root).read_text())["A/a.h5"]
    assert (record["sha256"], record["origin"]) == (_sha(payload), "catalogue")  # a verification, not a first use
    offline = _spec(FileSpec(url=f"{dead_url}/a.h5", filename="A/a.h5", sha256=_sha(payload)))
    assert fetch_dataset(offline, root, progress=False, timeout=5) == folder  # verified file: no network needed
    (processed_dir(spec, root)).mkdir(parents=True)
    (processed_dir(spec, root) / "abc.h5ad").write_bytes(b"")
    assert status(spec, root) == "processed"


def test_wrong_hash_raises_and_leaves_no_file(server, tmp_path):
    base, www = server
    (www / "a.h5").write_bytes(b"tampered")
    wrong = "0" * 64
    spec = _spec(FileSpec(url=f"{base}/a.h5", filename="A/a.h5", sha256=wrong))
    with pytest.raises(ChecksumError) as info:
        fetch_dataset(spec, tmp_path, progress=False, timeout=5)
    message = str(info.value)
    assert "a.h5" in message and wrong in message and _sha(b"tampered") in message
    target = dataset_dir(spec, tmp_path) / "A" / "a.h5"
    assert not target.exists()
    assert _no_temp_files(dataset_dir(spec, tmp_path))


def test_interrupted_download_leaves_no_partial_file(server, tmp_path):
    base, _ = server
    spec = _spec(FileSpec(url=f"{base}/truncated.bin", filename="t.bin"))
    with pytest.raises(DownloadError) as info:
        fetch_dataset(spec, tmp_path, progress=False, timeout=5)
    target = dataset_dir(spec, tmp_path) / "t.bin"
    assert str(target) in str(info.value)
    assert not target.exists()
    assert _no_temp_files(dataset_dir(spec, tmp_path))


def test_http_error_is_listed_with_url_and_path(server, tmp_path):
    base, _ = server
    spec = _spec(FileSpec(url=f"{base}/missing.h5", filename="missing.h5"))
    with pytest.raises(DownloadError) as info:
        fetch_dataset(spec, tmp_path, progress=False, timeout=5)
    message = str(info.value)
    assert f"{base}/missing.h5" in message and "404" in message
    assert str(dataset_dir(spec, tmp_path) / "missing.h5") in message


def test_unknown_hash_is_recorded_then_enforced(server, tmp_path, capsys):
    base, www = server
    (www / "a.csv").write_bytes(b"first version")
    spec = _spec(FileSpec(url=f"{base}/a.csv", filename="a.csv"))
    fetch_dataset(spec, tmp_path, progress=False, timeout=5)
    sums = json.loads(checksums_path(spec, tmp_path).read_text())
    assert sums["a.csv"]["url"] == f"{base}/a.csv" and sums["a.csv"]["sha256"] == _sha(b"first version")
    assert sums["a.csv"]["origin"] == "first use"
    err = capsys.readouterr().err
    assert f"recorded sha256 {_sha(b'first version')} of a.csv" in err and "trust on first use" in err
    fetch_dataset(spec, tmp_path, progress=False, timeout=5)  # same file: accepted silently
    assert "recorded" not in capsys.readouterr().err
    local = dataset_dir(spec, tmp_path) / "a.csv"
    local.write_bytes(b"corrupted")
    with pytest.raises(ChecksumError) as info:
        fetch_dataset(spec, tmp_path, progress=False, timeout=5)
    assert _sha(b"first version") in str(info.value) and _sha(b"corrupted") in str(info.value)
    assert "recorded in" in str(info.value) and "--recheck" in str(info.value)
    assert local.read_bytes() == b"corrupted"  # a file found on disk is never deleted
    fetch_dataset(spec, tmp_path, progress=False, timeout=5, recheck=True)  # the user vouches for it
    assert f"replacing {_sha(b'first version')}" in capsys.readouterr().err
    assert json.loads(checksums_path(spec, tmp_path).read_text())["a.csv"]["sha256"] == _sha(b"corrupted")
    local.unlink()
    (www / "a.csv").write_bytes(b"changed upstream")
    with pytest.raises(ChecksumError, match="no file was left"):
        fetch_dataset(spec, tmp_path, progress=False, timeout=5)
    assert not local.exists()


def test_offline_error_lists_every_url_and_path_then_manual_placement_works(dead_url, tmp_path):
    good = b"placed by hand"
    spec = _spec(FileSpec(url=f"{dead_url}/one.csv", filename="A/one.csv", sha256=_sha(good)),
                 FileSpec(url=f"{dead_url}/two.csv", filename="B/two.csv"))
    with pytest.raises(DownloadError) as info:
        fetch_dataset(spec, tmp_path, progress=False, timeout=2)
    message = str(info.value)
    folder = dataset_dir(spec, tmp_path)
    assert "could not download 2 of 2 file(s) of dataset 'toy' (network unreachable" in message
    for url, path in ((f"{dead_url}/one.csv", folder / "A/one.csv"), (f"{dead_url}/two.csv", folder / "B/two.csv")):
        assert url in message and f"-> {path}" in message
    assert _sha(good) in message
    assert not (folder / "A/one.csv").exists() and not (folder / "B/two.csv").exists()
    (folder / "A").mkdir(parents=True, exist_ok=True)
    (folder / "B").mkdir(parents=True, exist_ok=True)
    (folder / "A/one.csv").write_bytes(b"wrong content")
    (folder / "B/two.csv").write_bytes(b"x,y\n")
    with pytest.raises(ChecksumError, match=_sha(good)):
        fetch_dataset(spec, tmp_path, progress=False, timeout=2)
    assert (folder / "A/one.csv").read_bytes() == b"wrong content"  # left in place for the user to look at
    (folder / "A/one.csv").write_bytes(good)
    assert fetch_dataset(spec, tmp_path, progress=False, timeout=2) == folder
    assert status(spec, tmp_path) == "downloaded"


def _tar_bytes(entries: dict[str, bytes], links: dict[str, str] | None = None, gz: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buf.getvalue()


def _zip_bytes(entries: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


def test_archives_are_unpacked_with_nested_archives_and_slides_resolved(server, tmp_path):
    base, www = server
    inner = _tar_bytes({f"colon/{s}/filtered_feature_bc_matrix.h5": b"h5" for s in ("S1", "S2")})
    (www / "bundle.zip").write_bytes(_zip_bytes({"Supp Data 1 long name/spaceranger_output/colon.tar.gz": inner,
                                                 "Supp Data 1 long name/images/S1_full.jpg": b"jpg1",
                                                 "Supp Data 1 long name/images/S2_full.jpg": b"jpg2"}))
    (www / "S1_spatial.tar.gz").write_bytes(_tar_bytes({"spatial/scalefactors_json.json": b"{}"}))
    slides = tuple(SlideSpec(s, "p", split, path=f"bundle/Supp Data*/spaceranger_output/colon/colon/{s}",
                             image=f"bundle/Supp Data*/images/{s}*") for s, split in (("S1", "train"), ("S2", "val")))
    spec = _spec(FileSpec(url=f"{base}/bundle.zip", filename="bundle.zip", unpack=True),
                 FileSpec(url=f"{base}/S1_spatial.tar.gz", filename="S1/S1_spatial.tar.gz", unpack=True,
                          unpack_to="S1"),
                 slides=slides, nested=("bundle/Supp Data*/spaceranger_output/colon.tar.gz",))
    folder = fetch_dataset(spec, tmp_path, progress=False, timeout=5)
    assert (folder / "S1/spatial/scalefactors_json.json").read_bytes() == b"{}"
    resolved = resolve_slides(spec, folder)
    assert resolved[0].path == "bundle/Supp Data 1 long name/spaceranger_output/colon/colon/S1"
    assert resolved[1].image == "bundle/Supp Data 1 long name/images/S2_full.jpg"
    assert (folder / resolved[0].path / "filtered_feature_bc_matrix.h5").read_bytes() == b"h5"
    assert status(spec, tmp_path) == "downloaded"
    edited = folder / resolved[0].path / "filtered_feature_bc_matrix.h5"
    edited.write_bytes(b"edited")
    fetch_dataset(spec, tmp_path, progress=False, timeout=5)  # idempotent: nothing unpacked again
    assert edited.read_bytes() == b"edited"
    nested_marker = next(folder.glob("bundle/*/spaceranger_output/colon/.spared-unpacked.colon.tar.gz"))
    nested_marker.unlink()
    assert status(spec, tmp_path) == "absent"
    fetch_dataset(spec, tmp_path, progress=False, timeout=5)  # the unfinished nested unpack is redone
    assert edited.read_bytes() == b"h5" and status(spec, tmp_path) == "downloaded"


def test_resolve_slides_reports_missing_and_chooses_among_ambiguous_patterns(tmp_path):
    (tmp_path / "x2").mkdir()
    (tmp_path / "x1").mkdir()
    spec = _spec(FileSpec(url="https://e.org/a", filename="a"),
                 slides=(SlideSpec("A", "p", "train", "x*"), SlideSpec("B", "p", "val", "y", image="B/*.jpg")))
    with pytest.raises(LayoutError) as info:
        resolve_slides(spec, tmp_path)
    message = str(info.value)
    assert "slide 'B': path 'y' matches no folder" in message
    assert "x*" not in message and "image" not in message  # an ambiguity is resolved; a missing image is not fatal
    (tmp_path / "y").mkdir()
    with pytest.warns(UserWarning) as caught:
        slides = resolve_slides(spec, tmp_path)
    assert [s.path for s in slides] == ["x1", "y"] and slides[1].image is None
    notes = [str(w.message) for w in caught]
    assert "slide 'A': path 'x*' matches 2 entries; using 'x1'" in notes[0] and "'x2'" in notes[0]
    assert "slide 'B': image 'B/*.jpg' matches no file: no full-resolution image" in notes[1]


@pytest.mark.parametrize(("kind", "content", "why"), [
    ("tar", {"../evil.txt": b"x"}, "contains a '..' component"),
    ("tar", {"ok/../../evil.txt": b"x"}, "contains a '..' component"),
    ("tar", {"/tmp/spared-abs-evil.txt": b"x"}, "is an absolute path"),
    ("zip", {"../evil.txt": b"x"}, "contains a '..' component"),
    ("zip", {"/abs-evil.txt": b"x"}, "is an absolute path"),
])
def test_archives_with_escaping_paths_are_rejected(tmp_path, kind, content, why):
    archive = tmp_path / f"bad.{'tar.gz' if kind == 'tar' else 'zip'}"
    archive.write_bytes(_tar_bytes(content) if kind == "tar" else _zip_bytes(content))
    target = tmp_path / "out" / "inside"
    with pytest.raises(ArchiveError) as info:
        unpack_archive(archive, target)
    assert why in str(info.value) and "nothing was written" in str(info.value)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "evil.txt").exists()
    assert not Path("/tmp/spared-abs-evil.txt").exists()
    assert not any(target.iterdir()) and not is_unpacked(archive, target)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["inside"]  # staging folder cleaned up


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_escaping_symlinks_are_rejected(tmp_path, kind):
    links = {"data/link": "../../outside.txt"}
    entries = {"data/file.txt": b"x"}
    archive = tmp_path / f"links.{'tar.gz' if kind == 'tar' else 'zip'}"
    archive.write_bytes(_tar_bytes(entries, links) if kind == "tar" else _zip_bytes(entries, links))
    target = tmp_path / "out"
    with pytest.raises(ArchiveError, match=r"symlink to '\.\./\.\./outside\.txt', outside the target"):
        unpack_archive(archive, target)
    assert not any(target.iterdir())


def test_symlink_chain_escaping_on_disk_is_rejected(tmp_path):
    archive = tmp_path / "chain.zip"  # 'up/..' looks inside lexically but 'up' -> '.' makes it the parent
    archive.write_bytes(_zip_bytes({"f.txt": b"x"}, {"up": ".", "esc": "up/.."}))
    with pytest.raises(ArchiveError, match="outside the target"):
        unpack_archive(archive, tmp_path / "out")
    assert not any((tmp_path / "out").iterdir())


def test_escaping_hardlink_is_rejected(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("hard")
        info.type = tarfile.LNKTYPE
        info.linkname = "../secret"
        tar.addfile(info)
    archive = tmp_path / "hard.tar"
    archive.write_bytes(buf.getvalue())
    with pytest.raises(ArchiveError, match="hard link"):
        unpack_archive(archive, tmp_path / "out")


def test_internal_symlinks_are_kept_and_unpacking_is_idempotent(tmp_path):
    archive = tmp_path / "ok.tar.gz"
    archive.write_bytes(_tar_bytes({"d/file.txt": b"hello"}, {"d/alias.txt": "file.txt"}))
    target = unpack_archive(archive, tmp_path / "out")
    assert (target / "d/alias.txt").is_symlink() and (target / "d/alias.txt").read_bytes() == b"hello"
    assert is_unpacked(archive, target)
    (target / "d/file.txt").write_bytes(b"changed")
    unpack_archive(archive, target)
    assert (target / "d/file.txt").read_bytes() == b"changed"


@pytest.mark.parametrize(("data", "match"), [
    (b"<html>Not found</html>", "neither a zip nor a tar"),
    (None, "corrupt or truncated"),
])
def test_broken_archives_give_clear_errors(tmp_path, data, match):
    archive = tmp_path / "broken.tar.gz"
    if data is None:
        full = _tar_bytes({"big.bin": bytes(range(256)) * 4000}, gz=False)
        data = full[: len(full) // 2]
    archive.write_bytes(data)
    with pytest.raises(ArchiveError, match=match):
        unpack_archive(archive, tmp_path / "out")


@pytest.fixture
def no_network(monkeypatch):
    """Make every outgoing connection fail as on a machine without network (loopback included)."""
    import urllib3.util.connection

    def refuse(*args, **kwargs):
        raise OSError("network disabled for this test")

    monkeypatch.setattr(urllib3.util.connection, "create_connection", refuse)


def test_cli_datasets_json_lists_26_entries(tmp_path):
    from spared.cli import app

    result = CliRunner().invoke(app, ["datasets", "--json", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert len(records) == 26
    first = records[0]
    assert first["name"] == "10xgenomic_human_brain" and first["organism"] == "human"
    assert (first["slides"], first["spots"], first["status"]) == (2, 9900, "absent")
    table = CliRunner().invoke(app, ["datasets", "--data-dir", str(tmp_path)])
    assert table.exit_code == 0 and "SpaRED datasets (26)" in table.stdout


def test_cli_download_without_network_prints_urls_and_paths(tmp_path, no_network):
    from spared.catalog import load_spec
    from spared.cli import app

    result = CliRunner().invoke(app, ["download", "10xgenomic_human_breast_cancer", "--data-dir", str(tmp_path),
                                      "--timeout", "5", "--no-progress"])
    assert result.exit_code != 0
    spec = load_spec("10xgenomic_human_breast_cancer")
    for f in spec.files:
        assert f.url in result.stderr
        assert str(dataset_dir(spec, tmp_path) / f.filename) in result.stderr
    assert "network unreachable" in result.stderr


def test_cli_download_unknown_name_suggests_close_matches(tmp_path):
    from spared.cli import app

    result = CliRunner().invoke(app, ["download", "vicari_mouse", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "unknown dataset 'vicari_mouse'" in result.stderr and "vicari_mouse_brain" in result.stderr


def test_cli_download_proceeds_offline_once_files_are_placed_by_hand(tmp_path, no_network):
    from spared.catalog import load_spec
    from spared.cli import app

    spec = load_spec("villacampa_kidney_organoid")  # no published hashes: trust on first use
    folder = dataset_dir(spec, tmp_path)
    folder.mkdir(parents=True)
    slides = {f"data/kidneyorganoid/{s.id}/spatial/scalefactors_json.json": b"{}" for s in spec.slides}
    (folder / "xjtv62ncwr_data.tar.gz").write_bytes(_tar_bytes(slides))
    result = CliRunner().invoke(app, ["download", spec.key, "--data-dir", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert result.stderr.count("recorded sha256") == 1 and "trust on first use" in result.stderr
    assert "xjtv62ncwr_images.tar.gz" in result.stderr and "hires" in result.stderr  # images missing: a warning
    assert "1 trust on first use" in " ".join(result.stdout.split())
    slides, notes = resolve_layout(spec, folder)
    for slide in slides:
        assert (folder / slide.path / "spatial" / "scalefactors_json.json").is_file()
    assert len(notes) == 3 and all("no full-resolution image" in n for n in notes)
    assert status(spec, tmp_path) == "downloaded"
    listing = json.loads(CliRunner().invoke(app, ["datasets", "--json", "--data-dir", str(tmp_path)]).stdout)
    assert {r["name"]: r["status"] for r in listing}[spec.key] == "downloaded"
    labels = {r["name"]: r["checksums"] for r in listing}
    assert labels[spec.key] == "first use" and labels["10xgenomic_human_brain"] == "pinned"


def test_cli_download_rejects_a_wrong_file_for_a_pinned_hash_and_keeps_it(tmp_path, no_network):
    from spared.catalog import load_spec
    from spared.cli import app

    spec = load_spec("10xgenomic_human_breast_cancer")
    h5 = dataset_dir(spec, tmp_path) / spec.files[0].filename
    h5.parent.mkdir(parents=True)
    h5.write_bytes(hdf5_bytes(tmp_path))
    result = CliRunner().invoke(app, ["download", spec.key, "--data-dir", str(tmp_path), "--no-progress"])
    assert result.exit_code == 1
    message = " ".join(result.stderr.split())
    assert spec.files[0].sha256 in message and "catalogue pins this hash" in message
    assert h5.is_file() and not checksums_path(spec, tmp_path).exists()


def test_macos_debris_never_matches_a_slide_or_nested_pattern(tmp_path):
    """Researcher-made zips carry __MACOSX/ and ._* twins of every entry; patterns must not see them."""
    inner = _tar_bytes({"S1/filtered_feature_bc_matrix.h5": b"h5"})
    spec = _spec(FileSpec(url="https://e.org/b.zip", filename="bundle.zip", unpack=True),
                 slides=(SlideSpec("S1", "p", "train", "bundle/*/out/S1", image="bundle/*/images/*S1*.jpg"),
                         SlideSpec("S2", "p", "val", "bundle/*/out/S1")),
                 nested=("bundle/*/out.tar.gz",))
    folder = dataset_dir(spec, tmp_path)
    folder.mkdir(parents=True)
    (folder / "bundle.zip").write_bytes(_zip_bytes({
        "Supp/out.tar.gz": inner, "__MACOSX/Supp/._out.tar.gz": b"\x00\x05\x16\x07",
        "Supp/images/S1.jpg": b"\xff\xd8\xff", "Supp/images/._S1.jpg": b"\x00\x05\x16\x07",
        "__MACOSX/Supp/images/._S1.jpg": b"\x00\x05\x16\x07"}))
    fetch_dataset(spec, tmp_path, progress=False)
    slides, notes = resolve_layout(spec, folder)
    assert notes == [] and slides[0].path == "bundle/Supp/out/S1" and slides[0].image == "bundle/Supp/images/S1.jpg"
    assert not (folder / "bundle/__MACOSX/Supp/out").exists()  # the AppleDouble twin was not unpacked

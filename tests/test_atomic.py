"""Atomic writes: results get the usual file modes (respecting the umask); stale temporary files are cleaned."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time

import pandas as pd
import pytest

from spared.io import atomic
from spared.io.atomic import atomic_dir, atomic_path, remove_stale_temps, temp_sibling, write_h5ad, write_text


@pytest.fixture
def umask():
    """Run a test under a chosen umask, restoring the old one."""
    old = os.umask(0o022)
    yield lambda value: os.umask(value)
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_results_get_the_usual_modes(umask, tmp_path, processed_small, mask, file_mode, dir_mode, results_row):
    umask(mask)
    assert mode(write_text(tmp_path / "a.txt", "x")) == file_mode
    assert mode(write_h5ad(processed_small, tmp_path / "p.h5ad")) == file_mode
    with atomic_path(tmp_path / "b.bin") as tmp:  # a writer that creates its file private, as mkstemp does
        tmp.write_bytes(b"1")
        tmp.chmod(0o600)
    assert mode(tmp_path / "b.bin") == file_mode
    with atomic_dir(tmp_path / "folder") as tmp:
        (tmp / "inside.txt").write_text("y")
    assert mode(tmp_path / "folder") == dir_mode and mode(tmp_path / "folder" / "inside.txt") == file_mode
    from spared.bench.results import ResultsTable

    ResultsTable(tmp_path / "res").append(results_row("a"))
    assert mode(tmp_path / "res" / "results.parquet") == file_mode and mode(tmp_path / "res") == dir_mode


def test_spackle_checkpoint_and_report_are_readable(umask, tmp_path, processed_small):
    umask(0o022)
    from spared.impute.spackle import SpackleConfig, SpackleModel, SpackleNetwork
    from spared.report import build_report

    config = SpackleConfig(num_neighs=2, max_steps=1)
    model = SpackleModel(SpackleNetwork.from_config(config, 3), config, ["a", "b", "c"])
    path = model.save(tmp_path / "ckpt")
    assert mode(path) == 0o755
    assert {p.name: mode(p) for p in path.iterdir()} == {"model.safetensors": 0o644, "config.json": 0o644}
    model.save(path)  # replacing keeps the modes and leaves nothing behind
    assert mode(path) == 0o755 and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    results = tmp_path / "results"
    results.mkdir()
    assert mode(build_report(results)) == 0o644


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporary_files_are_removed_and_live_ones_kept(tmp_path):
    host = atomic.host_tag()
    dead = _dead_pid()
    stale_file = tmp_path / f".out.h5ad.{dead}@{host}.tmp.h5ad"
    stale_part = tmp_path / f".big.tar.gz.{dead}@{host}.part"
    stale_dir = tmp_path / f".ckpt.{dead}@{host}.tmp"
    live = tmp_path / f".out.h5ad.{os.getpid()}@{host}.tmp.h5ad"   # this process: alive
    remote_fresh = tmp_path / f".out.h5ad.{dead}@elsewhere-7.tmp"  # another machine, still being written
    remote_old = tmp_path / f".old.h5ad.{dead}@elsewhere-7.tmp"    # another machine, untouched for days
    foreign = tmp_path / ".out.h5ad.notapid.tmp"                   # not one of our names
    user_file = tmp_path / "notes.tmp"
    for path in (stale_file, stale_part, live, remote_fresh, remote_old, foreign, user_file):
        path.write_bytes(b"partial")
    stale_dir.mkdir()
    (stale_dir / "model.safetensors").write_bytes(b"partial")
    days_ago = time.time() - 3 * 86400
    os.utime(remote_old, (days_ago, days_ago))
    removed = remove_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == sorted(p.name for p in (stale_file, stale_part, stale_dir, remote_old))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (live, remote_fresh, foreign,
                                                                                 user_file))


def test_the_next_write_cleans_what_a_killed_writer_left(tmp_path):
    script = ("import os, sys; from spared.io.atomic import atomic_path\n"
              "with atomic_path(sys.argv[1]) as tmp:\n"
              "    tmp.write_bytes(b'half'); os.kill(os.getpid(), 9)\n")
    target = tmp_path / "table.csv"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, "-c", script, str(target)], env=env)
    assert result.returncode == -9
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".table.csv.") and not target.exists()
    pd.DataFrame({"a": [1]}).to_csv(write_text(target, "a\n1\n"), index=False)
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_temp_names_are_recognised(tmp_path):
    for suffix in ("", ".h5ad", ".npz"):
        name = temp_sibling(tmp_path / "x.h5ad", suffix)
        assert atomic.parse_temp_name(name.name) is not None
        assert name.parent == tmp_path and name.name.startswith(".x.h5ad.")
    assert atomic.parse_temp_name("x.h5ad") is None and atomic.parse_temp_name(".x.tmp") is None


def test_downloads_are_readable_and_killed_downloads_are_cleaned(umask, tmp_path):
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from spared.catalog import DatasetSpec, FileSpec, SlideSpec
    from spared.io.download import dataset_dir, fetch_dataset

    umask(0o022)
    www = tmp_path / "www"
    www.mkdir()
    (www / "notes.txt").write_text("spots\n")

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(www)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/notes.txt"
        spec = DatasetSpec(key="toy", title="toy", organism="human", tissue="x",
                           format="visium_spaceranger", files=(FileSpec(url=url, filename="notes.txt"),),
                           slides=(SlideSpec(id="s1", patient="p1", split="train", path="."),))
        folder = dataset_dir(spec, tmp_path / "data")
        folder.mkdir(parents=True)
        killed = folder / "tmpab12_x9z"  # what pooch leaves when the process is killed mid-download
        killed.write_bytes(b"half")
        hours_ago = time.time() - 7200
        os.utime(killed, (hours_ago, hours_ago))
        fetch_dataset(spec, tmp_path / "data", progress=False, timeout=5)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert mode(folder / "notes.txt") == 0o644
    assert not killed.exists()

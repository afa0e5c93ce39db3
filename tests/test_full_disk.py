"""A full disk is one clear error from every writer (patches, unpacking, caches, benchmark runs): it names the
folder and the space needed, leaves no temporary file, never blames the input, and never crashes the process.

The disks are small tmpfs mounts (``small_disk`` in conftest.py: root only, skipped otherwise)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

from spared.io.atomic import DiskFullError, write_h5ad
from spared.io.patches import extract_patches


def leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def no_space_allowed_check(monkeypatch) -> None:
    """Let writers start without checking the free space first, so that the disk fills while they write."""
    import spared.io.archive
    import spared.io.atomic

    for module in (spared.io.atomic, spared.io.archive):
        monkeypatch.setattr(module, "require_space", lambda folder, needed, what: None)


def test_patches_refused_before_writing_when_they_cannot_fit(small_disk, processed_small):
    disk = small_disk("1m")
    with pytest.raises(DiskFullError, match=rf"no space left on the device of {disk} while writing p\.h5: it needs "
                                            r"about \d+\.\d MB, and .* is free there\. Nothing was written \(nothing "
                                            r"is wrong with the input\)"):
        extract_patches(processed_small.copy(), disk / "p.h5", patch_size=48, progress=False)
    assert leftovers(disk) == []


def test_a_disk_filling_while_patches_are_cut_is_an_error_not_a_crash(small_disk, tmp_path):
    """HDF5 crashed the process (exit 139) when it closed a file after a failed write: the patch store is
    written through a file object that lets HDF5 close, then the error is raised."""
    disk = small_disk("1m")
    script = textwrap.dedent(f"""
        import spared.io.atomic
        spared.io.atomic.require_space = lambda folder, needed, what: None  # let the disk fill while writing
        from spared.io.atomic import DiskFullError
        from spared.io.patches import extract_patches
        from spared.synthetic import make_collection
        adata = make_collection(n_slides=1, n_spots=300, n_genes=16, seed=0)
        try:
            extract_patches(adata, {str(disk / 'p.h5')!r}, patch_size=64, progress=False)
        except DiskFullError as exc:
            print("caught:", exc)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"caught: no space left on the device of {disk} while writing p.h5" in done.stdout
    assert "it needs about" in done.stdout and "The partial output was removed" in done.stdout
    assert "Traceback" not in done.stderr
    assert leftovers(disk) == []


def incompressible_archive(path: Path, size: int) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("data/slide/big.bin")
        info.size = size
        tar.addfile(info, io.BytesIO(os.urandom(size)))
    return path


def test_unpacking_onto_a_full_disk_never_calls_the_archive_corrupt(small_disk, tmp_path, monkeypatch):
    from spared.io.archive import ArchiveError, unpack_archive

    disk = small_disk("1m")
    archive = incompressible_archive(tmp_path / "a.tar.gz", 3 << 20)
    with pytest.raises(DiskFullError, match=r"while unpacking a\.tar\.gz: it needs about 3\.1 MB") as refused:
        unpack_archive(archive, disk / "out")
    assert "corrupt" not in str(refused.value)
    no_space_allowed_check(monkeypatch)
    with pytest.raises(DiskFullError, match=r"while unpacking a\.tar\.gz: it needs more than the .* written when "
                                            r"the disk filled") as filled:
        unpack_archive(archive, disk / "out")
    assert not isinstance(filled.value, ArchiveError) and "corrupt" not in str(filled.value)
    assert leftovers(disk) in ([], ["out"])  # the staging folder is gone, the (empty) target may stay
    assert unpack_archive(archive, tmp_path / "roomy").joinpath("data/slide/big.bin").stat().st_size == 3 << 20


def test_download_unpacking_onto_a_full_disk_is_one_clear_message(small_disk, tmp_path, monkeypatch):
    """`spared download --from` with the data folder on a full disk: exit 1, the folder and the space named."""
    from typer.testing import CliRunner

    import spared.catalog
    from spared.cli import app
    from test_local_sources import toy_spec

    spec = toy_spec()
    monkeypatch.setattr(spared.catalog, "load_spec", lambda key: spec)
    source = tmp_path / "mine"
    source.mkdir()
    incompressible_archive(source / "toy_data.tar.gz", 3 << 20)
    disk = small_disk("1m")
    result = CliRunner().invoke(app, ["download", "toy", "--from", str(source), "--data-dir", str(disk),
                                      "--no-progress"])
    text = " ".join(result.output.split())
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "no space left on the device of" in text and "while unpacking toy_data.tar.gz" in text
    assert "corrupt" not in text and "delete it" not in text
    assert (source / "toy_data.tar.gz").stat().st_size > 3 << 20  # the user's archive is untouched


def test_a_cache_that_cannot_fit_is_refused_and_one_that_fills_the_disk_leaves_nothing(small_disk,
                                                                                        processed_small, monkeypatch):
    disk = small_disk("256k")
    with pytest.raises(DiskFullError, match=r"while writing c\.h5ad: it needs about"):
        write_h5ad(processed_small, disk / "c.h5ad")
    no_space_allowed_check(monkeypatch)
    with pytest.raises(DiskFullError, match=r"while writing c\.h5ad: it needs about .*The partial output was "
                                            r"removed"):
        write_h5ad(processed_small, disk / "c.h5ad")  # anndata's own writer crashed the process here
    assert leftovers(disk) == []


@pytest.mark.slow
def test_a_benchmark_run_filling_the_disk_stops_with_one_message(small_disk, tmp_path):
    """torch.save says only 'unexpected pos' on a full disk: the run's folder device being full names it."""
    from spared.bench import make_specs, run_benchmark
    from test_bench import FAST, TINY, TINY_SHUFFLENET

    out = small_disk("96k")
    spec = make_specs(["shufflenet"], [TINY], ["raw"], [0], {"shufflenet": TINY_SHUFFLENET}, FAST)[0]
    with pytest.raises(DiskFullError, match=rf"no space left on the device of {out}/runs/{spec.run_id} while "
                                            rf"writing the outputs of run {spec.run_id}"):
        run_benchmark([spec], out, data_dir=tmp_path / "data")
    assert not (out / "runs" / spec.run_id).exists()  # the partial run folder is removed

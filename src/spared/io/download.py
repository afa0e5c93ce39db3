"""Download a catalogue dataset: hash-checked, resumable, offline-friendly, archives unpacked safely.

Layout under :func:`data_dir` (see docs/formats.md)::

    <group>/checksums.json      sha256 recorded on first download of files the catalogue has no hash for
    <group>/raw/<filename>      downloaded files; archives unpacked beside them (the *dataset folder*)
    <key>/processed/*.h5ad      processed caches

``<group>`` is the spec's ``download_group`` (datasets sharing archives share it), else its key.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from spared.catalog import DatasetSpec, FileSpec, SlideSpec
from spared.catalog.spec import strip_archive_suffix
from spared.io.archive import ArchiveError, is_unpacked, unpack_archive
from spared.io.atomic import remove_stale_temps, usual_mode, write_text

Status = Literal["absent", "downloaded", "processed"]
_GLOB_CHARS = re.compile(r"[*?\[]")
#: pooch downloads into ``tempfile.NamedTemporaryFile`` names beside the target (``0600``, left behind if killed).
_POOCH_TEMP = re.compile(r"tmp[a-z0-9_]{8}")


class DownloadError(OSError):
    """Files could not be fetched; the message lists each URL and the exact path to place it at by hand."""


class ChecksumError(ValueError):
    """A file's sha256 differs from the expected one; the bad file has been removed."""


class LayoutError(FileNotFoundError):
    """Unpacked files are not where the catalogue says a slide's files are."""


class _FetchFailed(Exception):
    """One file could not be fetched (``offline`` when the network or server is unreachable)."""

    def __init__(self, reason: str, offline: bool):
        super().__init__(reason)
        self.reason, self.offline = reason, offline


def data_dir() -> Path:
    """Root of downloaded and processed data: ``$SPARED_DATA``, else the platform's user data folder."""
    env = os.environ.get("SPARED_DATA")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("spared", appauthor=False))


def _root(root: str | Path | None) -> Path:
    return Path(root).expanduser() if root is not None else data_dir()


def dataset_dir(spec: DatasetSpec, root: str | Path | None = None) -> Path:
    """The folder a dataset's files are downloaded and unpacked into (slide paths are relative to it)."""
    return _root(root) / spec.group / "raw"


def processed_dir(spec: DatasetSpec, root: str | Path | None = None) -> Path:
    """The folder holding a dataset's processed ``*.h5ad`` caches."""
    return _root(root) / spec.key / "processed"


def checksums_path(spec: DatasetSpec, root: str | Path | None = None) -> Path:
    """The ``checksums.json`` recording hashes of files the catalogue has none for."""
    return _root(root) / spec.group / "checksums.json"


def sha256sum(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class _Missing:
    file: FileSpec
    path: Path
    reason: str


class _Checksums:
    """``checksums.json``: filename → {url, sha256} for files whose hash the catalogue lacks."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, dict[str, str]] = {}
        if path.is_file():
            try:
                self.data = json.loads(path.read_text())
            except ValueError as exc:
                raise ChecksumError(f"{path} is not valid JSON ({exc}); delete it to record the hashes again") from exc

    def get(self, f: FileSpec) -> str:
        entry = self.data.get(f.filename)
        return entry["sha256"] if entry and entry.get("url") == f.url else ""

    def record(self, f: FileSpec, sha: str) -> None:
        self.data[f.filename] = {"url": f.url, "sha256": sha}
        write_text(self.path, json.dumps(self.data, indent=1, sort_keys=True))


def _say(message: str) -> None:
    print(message, file=sys.stderr)


@contextlib.contextmanager
def _quiet_pooch() -> Iterator[None]:
    import pooch

    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_existing(path: Path, f: FileSpec, expected: str, recorded: bool, where: Path) -> str:
    """Hash a file already on disk; on mismatch remove it and raise :class:`ChecksumError`."""
    found = sha256sum(path)
    if expected and found != expected:
        path.unlink()
        origin = f"recorded in {where} at its first download" if recorded else "given by the catalogue"
        raise ChecksumError(f"{path} has sha256 {found}, but {expected} was expected ({origin}); the file was "
                            f"removed. Download it again from {f.url} (run the same command) or place the right "
                            f"file there by hand.")
    return found


def _download(f: FileSpec, path: Path, expected: str, progress: bool, timeout: float) -> None:
    """Fetch one file with pooch (temp file + rename, hash-checked when ``expected``)."""
    import pooch
    import requests

    downloader = pooch.HTTPDownloader(progressbar=progress, timeout=timeout)
    try:
        with _quiet_pooch():
            pooch.retrieve(f.url, known_hash=expected or None, fname=path.name, path=path.parent,
                           downloader=downloader, progressbar=progress)
        usual_mode(path)
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise _FetchFailed(f"{type(exc).__name__}: {exc}", offline=True) from exc
    except (requests.RequestException, OSError) as exc:
        raise _FetchFailed(f"{type(exc).__name__}: {exc}", offline=False) from exc
    except ValueError as exc:
        if "hash" not in str(exc).lower():
            raise
        found = re.search(r"got\s+'?([0-9a-f]{64})", str(exc))
        raise ChecksumError(f"{path.name} downloaded from {f.url} has sha256 "
                            f"{found.group(1) if found else '(unreadable)'}, but {expected} was expected; the "
                            f"download was discarded and no file was left at {path}. The file may have changed "
                            f"upstream or been corrupted in transit: try again, and report it if it persists.") from exc


def _download_error(spec: DatasetSpec, missing: list[_Missing], offline: str | None) -> DownloadError:
    head = f"could not download {len(missing)} of {len(spec.files)} file(s) of dataset {spec.key!r}"
    if offline:
        head += f" (network unreachable: {offline})"
    lines = [head + ".", "Fetch each URL by hand (browser, curl, another machine) and place the file at the path "
             f"shown, then run `spared download {spec.key}` again:"]
    for m in missing:
        lines.append(f"  {m.file.url}")
        lines.append(f"    -> {m.path}")
        if m.file.sha256:
            lines.append(f"       (sha256 {m.file.sha256})")
        if not offline or not m.reason.startswith("not attempted"):
            lines.append(f"       [{m.reason}]")
    return DownloadError("\n".join(lines))


def fetch_dataset(spec: DatasetSpec, data_dir: str | Path | None = None, progress: bool = True,
                  timeout: float = 60.0) -> Path:
    """Download every file of ``spec`` (skipping verified ones), then unpack its archives.

    Parameters
    ----------
    spec
        The catalogue entry.
    data_dir
        Root folder (default :func:`data_dir`).
    progress
        Show progress bars.
    timeout
        Seconds to wait for the server to connect or send data.

    Returns
    -------
    pathlib.Path
        The dataset folder, against which the spec's slide paths resolve.

    Raises
    ------
    DownloadError
        Some files could not be fetched: the message lists each URL and the exact path to place it at.
    ChecksumError
        A file's sha256 differs from the catalogue's (or the one recorded at first download); it was removed.
    ArchiveError
        An archive is corrupt or has unsafe entries.
    """
    folder = dataset_dir(spec, data_dir)
    remove_stale_temps(folder, abandoned=(_POOCH_TEMP, 3600))  # partial downloads of killed runs
    sums = _Checksums(checksums_path(spec, data_dir))
    missing: list[_Missing] = []
    offline: str | None = None
    for f in spec.files:
        path = folder / f.filename
        expected = f.sha256 or sums.get(f)
        if path.is_file():
            found = _check_existing(path, f, expected, recorded=not f.sha256, where=sums.path)
        elif offline is not None:
            missing.append(_Missing(f, path, "not attempted: network unreachable"))
            continue
        else:
            if progress:
                _say(f"downloading {f.url} -> {path}")
            try:
                _download(f, path, expected, progress, timeout)
            except _FetchFailed as exc:
                if exc.offline:
                    offline = exc.reason.split(":", 1)[0]
                missing.append(_Missing(f, path, exc.reason))
                continue
            found = "" if expected else sha256sum(path)
        if not expected:
            sums.record(f, found)
            _say(f"recorded sha256 {found} of {f.filename} in {sums.path} (the catalogue has no hash for it yet; "
                 f"later runs check the file against it)")
    if missing:
        raise _download_error(spec, missing, offline)
    unpack_dataset(spec, folder)
    return folder


def unpack_dataset(spec: DatasetSpec, folder: Path) -> None:
    """Unpack a downloaded dataset's archives (``unpack = true`` files, then ``unpack_nested`` patterns)."""
    for f in spec.files:
        if f.unpack:
            unpack_archive(folder / f.filename, folder / f.target)
    for pattern in spec.unpack_nested:
        matches = sorted(p for p in folder.glob(pattern) if p.is_file())
        if not matches:
            raise ArchiveError(f"dataset {spec.key!r}: no nested archive matches {pattern!r} under {folder}; the "
                               f"archive layout differs from the catalogue's (see docs/formats.md)")
        for archive in matches:
            unpack_archive(archive, archive.parent / strip_archive_suffix(archive.name))


def status(spec: DatasetSpec, data_dir: str | Path | None = None) -> Status:
    """``"processed"`` (a processed h5ad cache exists), ``"downloaded"`` (every file present, archives unpacked)
    or ``"absent"``."""
    processed = processed_dir(spec, data_dir)
    if processed.is_dir() and any(processed.glob("*.h5ad")):
        return "processed"
    folder = dataset_dir(spec, data_dir)
    for f in spec.files:
        path = folder / f.filename
        if not path.is_file() or (f.unpack and not is_unpacked(path, folder / f.target)):
            return "absent"
    for pattern in spec.unpack_nested:
        nested = [p for p in folder.glob(pattern) if p.is_file()]
        if not nested or not all(is_unpacked(p, p.parent / strip_archive_suffix(p.name)) for p in nested):
            return "absent"
    return "downloaded"


def _resolve(folder: Path, pattern: str, want_dir: bool, what: str) -> tuple[str | None, str | None]:
    """``(relative path, None)`` for the single match of ``pattern``, else ``(None, problem)``."""
    if _GLOB_CHARS.search(pattern):
        matches = sorted(p for p in folder.glob(pattern) if (p.is_dir() if want_dir else p.is_file()))
    else:
        p = folder / pattern
        matches = [p] if (p.is_dir() if want_dir else p.is_file()) else []
    if len(matches) == 1:
        return matches[0].relative_to(folder).as_posix(), None
    kind = "folder" if want_dir else "file"
    if not matches:
        return None, f"{what} {pattern!r} matches no {kind}"
    shown = ", ".join(repr(m.relative_to(folder).as_posix()) for m in matches[:5])
    return None, f"{what} {pattern!r} matches {len(matches)} {kind}s ({shown})"


def resolve_slides(spec: DatasetSpec, folder: str | Path) -> tuple[SlideSpec, ...]:
    """The spec's slides with every glob pattern (``path``, ``image``, ``hires_image``, ``counts``, ``spots``)
    replaced by its single match under ``folder`` (the dataset folder); raise :class:`LayoutError` listing each
    pattern that matches nothing or several entries."""
    folder = Path(folder)
    resolved, problems = [], []
    for slide in spec.slides:
        changes: dict[str, str] = {}
        for name, want_dir in (("path", True), ("image", False), ("hires_image", False), ("counts", False),
                               ("spots", False)):
            pattern = getattr(slide, name)
            if pattern is None:
                continue
            found, problem = _resolve(folder, pattern, want_dir, f"slide {slide.id!r}: {name}")
            if problem:
                problems.append(problem)
            else:
                changes[name] = found
        resolved.append(replace(slide, **changes))
    if problems:
        listing = "\n  - ".join(problems)
        raise LayoutError(f"the files of dataset {spec.key!r} under {folder} are not laid out as the catalogue "
                          f"says:\n  - {listing}\nCheck the unpacked folders (docs/formats.md describes the "
                          f"expected layout) and re-download if an archive was incomplete.")
    return tuple(resolved)

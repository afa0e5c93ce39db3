"""Download a catalogue dataset: format- and hash-checked, resumable, offline-friendly, archives unpacked safely.

Layout under :func:`data_dir` (see docs/formats.md)::

    <group>/checksums.json      hashes of the files seen: trust-on-first-use records for files the catalogue
                                has no published sha256 for, and the last verification of every file
    <group>/raw/<filename>      downloaded files (or links to a local copy); archives unpacked beside them
                                (the *dataset folder*)
    <key>/processed/*.h5ad      processed caches

``<group>`` is the spec's ``download_group`` (datasets sharing archives share it), else its key.

Files come from the catalogue URLs or, with ``source=PATH`` (``spared download NAME --from PATH``), from a local
folder holding the archives, their unpacked folders, or one archive's contents; local files are linked, never
copied, and never modified or deleted (see :mod:`spared.io.local`). Processes fetching one dataset (one
``<group>``) wait for each other (a file lock ``<group>/.spared.lock``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from spared.catalog import DatasetSpec, FileSpec, SlideSpec
from spared.catalog.spec import strip_archive_suffix
from spared.io.archive import ArchiveError, is_unpacked, unpack_archive
from spared.io.atomic import DiskFullError, is_disk_full, remove_stale_temps, usual_mode, write_text
from spared.io.errors import ChecksumError, DownloadError
from spared.io.local import (
    LocalFileChanged,
    LocalSourceError,
    _say,
    link_local_source,
    linked_files,
    provided_locally,
    read_manifest,
    tree_fingerprint,
    verify_links,
)
from spared.io.scan import choose, is_glob, pattern_under, visible_glob
from spared.io.sniff import FormatError, check_format, sha256sum

__all__ = ["ChecksumError", "DownloadError", "FormatError", "LayoutError", "LocalFileChanged", "LocalSourceError",
           "checksum_label", "checksum_state", "checksums_path", "data_dir", "dataset_dir", "dataset_lock",
           "fetch_dataset", "file_records", "image_only_files", "input_fingerprints", "linked_inputs", "processed_dir",
           "raw_status", "resolve_layout", "resolve_slides", "sha256sum", "status", "unpack_dataset"]

Status = Literal["absent", "downloaded", "processed"]
#: pooch downloads into ``tempfile.NamedTemporaryFile`` names beside the target (``0600``, left behind if killed).
_POOCH_TEMP = re.compile(r"tmp[a-z0-9_]{8}")
FIRST_USE = "first use"
CATALOGUE = "catalogue"


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
    """The ``checksums.json`` holding trust-on-first-use hashes and the last verification of each file."""
    return _root(root) / spec.group / "checksums.json"


def image_only_files(spec: DatasetSpec) -> set[str]:
    """Filenames of the files that hold nothing but full-resolution images (slides' ``image`` entries).

    Without them the expression pipeline still runs (patches come from the hires image), so they are optional.
    """
    out = set()
    for f in spec.files:
        where = f.target if f.unpack else f.filename
        used = [name for s in spec.slides for name in ("path", "image", "hires_image")
                if getattr(s, name) and pattern_under(getattr(s, name), where) is not None]
        if used and set(used) == {"image"}:
            out.add(f.filename)
    return out


def checksum_label(spec: DatasetSpec) -> str:
    """``"pinned"`` (every file has a published sha256 in the catalogue), ``"first use"`` (none has: hashes are
    recorded at the first download and only guard against later changes) or ``"partly pinned"``."""
    pinned = sum(bool(f.sha256) for f in spec.files)
    return "pinned" if pinned == len(spec.files) else FIRST_USE if pinned == 0 else "partly pinned"


@dataclass(frozen=True)
class _Missing:
    file: FileSpec
    path: Path
    reason: str


class _Checksums:
    """``checksums.json``: filename → {url, sha256, origin, size, mtime_ns[, source]}.

    ``origin`` is ``"first use"`` for hashes recorded because the catalogue has none (trust on first use) and
    ``"catalogue"`` for verified pinned files; size and modification time let an unchanged file skip re-hashing.
    """

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, dict[str, Any]] = {}
        if path.is_file():
            try:
                self.data = json.loads(path.read_text())
            except ValueError as exc:
                raise ChecksumError(f"{path} is not valid JSON ({exc}); delete it to record the hashes again") from exc
            problem = _checksums_problem(self.data)
            if problem:
                raise ChecksumError(f"{path} is not a spared checksums file: {problem}. Move it away (or delete it) "
                                    f"and run the command again: the hashes are then recorded anew (files the "
                                    f"catalogue pins are still checked against their published sha256)")

    def recorded(self, f: FileSpec) -> str:
        """The trust-on-first-use hash recorded for ``f`` (``""`` when none, or recorded for another URL)."""
        entry = self.data.get(f.filename)
        if not entry or entry.get("url") != f.url or entry.get("origin", FIRST_USE) != FIRST_USE:
            return ""
        return entry["sha256"]

    def unchanged(self, f: FileSpec, path: Path, sha: str) -> bool:
        """Whether ``path`` was verified as ``sha`` and its size, modification time (and, for a link, the file it
        leads to) have not changed since."""
        entry = self.data.get(f.filename) or {}
        st = path.stat()
        source = os.path.realpath(path) if path.is_symlink() else None
        return (entry.get("url") == f.url and entry.get("sha256") == sha and entry.get("size") == st.st_size
                and entry.get("mtime_ns") == st.st_mtime_ns and entry.get("source") == source)

    def record(self, f: FileSpec, path: Path, sha: str, origin: str) -> None:
        st = path.stat()
        entry = {"url": f.url, "sha256": sha, "origin": origin, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        if path.is_symlink():
            entry["source"] = os.path.realpath(path)
        if self.data.get(f.filename) != entry:
            self.data[f.filename] = entry
            write_text(self.path, json.dumps(self.data, indent=1, sort_keys=True))


def _checksums_problem(data: Any) -> str:
    """What is wrong with the parsed content of a ``checksums.json`` (``""`` when it has the expected shape)."""
    if not isinstance(data, dict):
        return f"expected a JSON object mapping file names to records, found a {type(data).__name__}"
    for name, entry in data.items():
        if not isinstance(entry, dict):
            return f"the record of {name!r} should be an object, found {entry!r}"
        bad = [k for k, kind in (("url", str), ("sha256", str), ("origin", str), ("size", int), ("mtime_ns", int))
               if k in entry and not isinstance(entry[k], kind)]
        if "sha256" not in entry or bad:
            return f"the record of {name!r} lacks a sha256 or has values of the wrong type ({entry!r})"
    return ""


def describe_file(path: Path) -> str:
    """``path``, and the user's file behind it when it is a link (a local source): messages name both."""
    return f"{path} (a link to your file {os.path.realpath(path)})" if path.is_symlink() else str(path)


@contextlib.contextmanager
def dataset_lock(spec: DatasetSpec, root: str | Path | None = None) -> Iterator[None]:
    """Hold the lock of ``spec``'s download folder: processes fetching one dataset (or datasets sharing a download
    group) wait for each other, with a message when they have to. A folder that cannot be written (a read-only
    data folder) is used without a lock: nothing can be fetched into it anyway."""
    from filelock import FileLock, Timeout

    folder = _root(root) / spec.group
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(folder / ".spared.lock"))
        try:
            lock.acquire(timeout=0.5)
        except Timeout:
            _say(f"waiting for another spared process fetching {spec.group!r} (lock {folder / '.spared.lock'})")
            lock.acquire()
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        yield
        return
    try:
        yield
    finally:
        lock.release()


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


def _verify_present(spec: DatasetSpec, f: FileSpec, path: Path, sums: _Checksums, recheck: bool,
                    accept: bool = False) -> str:
    """Check a file found on disk (format, then sha256) and return its hash; the file is never deleted.

    ``recheck`` hashes the file again whatever its size and time; ``accept`` (a file just given with ``--from``)
    records a new content instead of refusing it when the catalogue pins no hash (an unchanged file is not hashed
    again)."""
    try:
        check_format(path, f.filename)
    except FormatError as exc:
        if path.is_symlink():
            raise FormatError(f"{exc}. It is a link to your file {os.path.realpath(path)}: replace that file with the "
                              f"right one (from {f.url}) and give its folder to --from again") from exc
        raise FormatError(f"{exc}. The file was left in place: replace it with the file from {f.url} (or move it "
                          f"away and run `spared download {spec.key}` to fetch it again)") from exc
    recorded = sums.recorded(f)
    expected = f.sha256 or ("" if recheck else recorded)
    if expected and not recheck and sums.unchanged(f, path, expected):
        return expected
    if accept and not f.sha256:
        expected = ""
    found = sha256sum(path)
    if expected and found != expected:
        if f.sha256:
            advice = (f"the catalogue pins this hash (published for the file at {f.url}): replace the file with "
                      f"the right one, or move it away and run `spared download {spec.key}` to fetch it again")
        elif path.is_symlink():
            advice = (f"that hash was recorded in {sums.path} when your file was linked. If the change is intended, "
                      f"run `spared download {spec.key} --recheck` (or give --from again) to record the new "
                      f"content; otherwise restore the file")
        else:
            advice = (f"that hash was recorded in {sums.path} when the file was first seen (trust on first use, "
                      f"never verified against a published value). If this file is the right one, run `spared "
                      f"download {spec.key} --recheck` to record its hash instead; otherwise move it away and run "
                      f"`spared download {spec.key}` to fetch it again")
        raise ChecksumError(f"{describe_file(path)} has sha256 {found}, but {expected} was expected; the file was "
                            f"left in place. {advice[0].upper()}{advice[1:]}.")
    if not f.sha256 and found != recorded:
        _say_recorded(f, found, sums, previous=recorded)
    sums.record(f, path, found, CATALOGUE if f.sha256 else FIRST_USE)
    return found


def _say_recorded(f: FileSpec, sha: str, sums: _Checksums, previous: str = "") -> None:
    again = f" (replacing {previous})" if previous else ""
    _say(f"recorded sha256 {sha} of {f.filename} in {sums.path}{again}: trust on first use, the catalogue has no "
         f"published hash for this file, so this copy becomes the reference (not verified against the source); "
         f"later runs check the file against it")


def _download(f: FileSpec, path: Path, expected: str, progress: bool, timeout: float) -> None:
    """Fetch one file with pooch (temp file + rename, hash-checked when ``expected``)."""
    import pooch
    import requests

    downloader = pooch.HTTPDownloader(progressbar=progress, timeout=timeout)
    before = set(path.parent.iterdir()) if path.parent.is_dir() else set()
    try:
        with _quiet_pooch():
            pooch.retrieve(f.url, known_hash=expected or None, fname=path.name, path=path.parent,
                           downloader=downloader, progressbar=progress)
        usual_mode(path)
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise _FetchFailed(f"{type(exc).__name__}: {exc}", offline=True) from exc
    except (requests.RequestException, OSError) as exc:
        if is_disk_full(exc):  # pooch's partial file is ours (the dataset lock is held): removed
            for leftover in set(path.parent.iterdir()) - before:
                if _POOCH_TEMP.fullmatch(leftover.name):
                    leftover.unlink(missing_ok=True)
            raise DiskFullError(path.parent, f"downloading {f.url}", written=0) from exc
        raise _FetchFailed(f"{type(exc).__name__}: {exc}", offline=False) from exc
    except ValueError as exc:
        if "hash" not in str(exc).lower():
            raise
        found = re.search(r"got\s+'?([0-9a-f]{64})", str(exc))
        raise ChecksumError(f"{path.name} downloaded from {f.url} has sha256 "
                            f"{found.group(1) if found else '(unreadable)'}, but {expected} was expected; the "
                            f"download was discarded and no file was left at {path}. The file may have changed "
                            f"upstream or been corrupted in transit: try again, and report it if it persists.") from exc


def _check_download(f: FileSpec, path: Path) -> None:
    """Format check of a file this call downloaded; a wrong file (ours) is removed so the next run fetches again."""
    try:
        check_format(path, f.filename)
    except FormatError as exc:
        path.unlink()
        raise FormatError(f"{exc}; it was downloaded from {f.url} (the server may have answered with an error or "
                          f"login page) and has been discarded, nothing was recorded. Try again later, or fetch the "
                          f"file by hand and place it at {path}") from exc


def _download_error(spec: DatasetSpec, missing: list[_Missing], offline: str | None,
                    source: Path | None) -> DownloadError:
    if source is not None:
        head = (f"{len(missing)} of {len(spec.files)} file(s) of dataset {spec.key!r} are neither in {source} nor "
                f"already in the dataset folder")
    else:
        head = f"could not download {len(missing)} of {len(spec.files)} file(s) of dataset {spec.key!r}"
        if offline:
            head += f" (network unreachable: {offline})"
    lines = [head + ".", "Fetch each URL by hand (browser, curl, another machine) and place the file at the path "
             f"shown (or in the folder given to --from), then run `spared download {spec.key}` again:"]
    for m in missing:
        lines.append(f"  {m.file.url}")
        lines.append(f"    -> {m.path}")
        if m.file.sha256:
            lines.append(f"       (sha256 {m.file.sha256})")
        if source is None and (not offline or not m.reason.startswith("not attempted")):
            lines.append(f"       [{m.reason}]")
    return DownloadError("\n".join(lines))


def _warn_missing_images(spec: DatasetSpec, missing: list[_Missing]) -> None:
    for m in missing:
        _say(f"warning: {m.file.filename} of dataset {spec.key!r} (full-resolution images only) is missing "
             f"[{m.reason}]; patches will be cut from the hires images instead, at lower resolution. To use the "
             f"full-resolution images, fetch {m.file.url} and place it at {m.path}, then rebuild with --force.")


def fetch_dataset(spec: DatasetSpec, data_dir: str | Path | None = None, progress: bool = True,
                  timeout: float = 60.0, *, source: str | Path | None = None, recheck: bool = False,
                  images: bool = True, allow_external_links: bool = False) -> Path:
    """Make every file of ``spec`` available (download, or link from ``source``), check it, unpack archives.

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
    source
        A local folder holding the dataset's files, used instead of the network: the archives themselves, their
        unpacked folders, or the contents of one archive (see :mod:`spared.io.local`). Nothing is copied. Given
        again (or another folder), it is compared with what is linked and linked anew where it differs; its
        files are checked and their hashes recorded anew (pinned files must still match the catalogue).
    recheck
        Re-hash every file present (linked files too) and record trust-on-first-use hashes again (files the
        catalogue pins must still match); archives whose hash changed are unpacked again.
    images
        Try to fetch missing files that hold only full-resolution images; ``False`` uses what is there (no
        network for them, no warning: patches then come from the hires image).
    allow_external_links
        Follow links inside ``source`` that lead out of it (refused otherwise).

    Returns
    -------
    pathlib.Path
        The dataset folder, against which the spec's slide paths resolve.

    Raises
    ------
    DownloadError
        Required files could not be fetched (or are not in ``source``): the message lists each URL and the path
        to place it at. Missing full-resolution-image files only give a warning (patches fall back to hires).
        A local source that cannot be used (a link leaving it, a loop, a user file gone) is a
        :class:`~spared.io.local.LocalSourceError`, a kind of ``DownloadError``.
    DiskFullError
        The disk filled up (nothing half-written is left).
    FormatError
        A file's content is not what its name says (an HTML page saved as ``.tar.gz``, ...).
    ChecksumError
        A file's sha256 differs from the catalogue's or from the one recorded when it was first seen.
    ArchiveError
        An archive is corrupt or has unsafe entries.
    """
    with dataset_lock(spec, data_dir):
        return _fetch(spec, data_dir, progress, timeout, source, recheck, images, allow_external_links)


def _fetch(spec: DatasetSpec, data_dir: str | Path | None, progress: bool, timeout: float,
           source: str | Path | None, recheck: bool, images: bool, allow_external_links: bool) -> Path:
    folder = dataset_dir(spec, data_dir)
    remove_stale_temps(folder, abandoned=(_POOCH_TEMP, 3600))  # partial downloads of killed runs
    sums = _Checksums(checksums_path(spec, data_dir))
    local = Path(source).expanduser().resolve() if source is not None else None
    fresh: set[str] = set()  # files just linked from ``source``: the user's current files, recorded anew
    optional = image_only_files(spec)
    if local is not None:
        fresh = link_local_source(spec, folder, local, allow_external_links, optional).fresh
    verify_links(spec, folder, accept_changes=recheck or local is not None, rehash=recheck)
    hashes: dict[str, str] = {}
    missing: list[_Missing] = []
    offline: str | None = None
    for f in spec.files:
        path = folder / f.filename
        if path.is_symlink() and not path.exists():
            raise LocalSourceError(f"{path} is a link to your file {os.path.realpath(path)}, which is gone (moved or "
                                   f"deleted): put it back, or run `spared download {spec.key} --from FOLDER` with "
                                   f"the folder that holds it now (the link is made anew)")
        if path.is_file():
            hashes[f.filename] = _verify_present(spec, f, path, sums, recheck, accept=f.filename in fresh)
        elif f.unpack and provided_locally(f, folder, spec):
            continue
        elif not images and f.filename in optional:
            continue
        elif local is not None:
            missing.append(_Missing(f, path, f"not found in {local}"))
        elif offline is not None:
            missing.append(_Missing(f, path, "not attempted: network unreachable"))
        else:
            expected = f.sha256 or sums.recorded(f)
            if progress:
                _say(f"downloading {f.url} -> {path}")
            try:
                _download(f, path, expected, progress, timeout)
            except _FetchFailed as exc:
                if exc.offline:
                    offline = exc.reason.split(":", 1)[0]
                missing.append(_Missing(f, path, exc.reason))
                continue
            _check_download(f, path)
            found = expected or sha256sum(path)
            if not f.sha256 and not expected:
                _say_recorded(f, found, sums)
            sums.record(f, path, found, CATALOGUE if f.sha256 else FIRST_USE)
            hashes[f.filename] = found
    required = [m for m in missing if m.file.filename not in optional]
    if required:
        raise _download_error(spec, missing, offline, local)
    _warn_missing_images(spec, missing)
    unpack_dataset(spec, folder, hashes)
    return folder


def unpack_dataset(spec: DatasetSpec, folder: Path, hashes: dict[str, str] | None = None) -> None:
    """Unpack a dataset's archives (``unpack = true`` files present, then ``unpack_nested`` patterns).

    ``hashes`` (filename → sha256, when already computed) key the unpack markers: an archive replaced by
    another is unpacked again. Archives provided as unpacked folders by a local source are skipped.
    """
    hashes = hashes or {}
    for f in spec.files:
        if f.unpack and (folder / f.filename).is_file():
            unpack_archive(folder / f.filename, folder / f.target, sha256=hashes.get(f.filename))
    for pattern in spec.unpack_nested:
        matches = visible_glob(folder, pattern, want_dir=False)
        if not matches:
            raise ArchiveError(f"dataset {spec.key!r}: no nested archive matches {pattern!r} under {folder}; the "
                               f"archive layout differs from the catalogue's (see docs/formats.md)")
        for archive in matches:
            target = archive.parent / strip_archive_suffix(archive.name)
            if archive.is_symlink() and target.is_dir() and not is_unpacked(archive, target):
                continue  # a local source that already holds this archive unpacked beside it
            unpack_archive(archive, target)


# --- what is on disk ----------------------------------------------------------------------------------------


def file_records(spec: DatasetSpec, data_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """How each file of ``spec`` stands on disk (no hashing): filename, url, ``state`` and ``sha256``.

    ``state`` is ``"pinned"`` (catalogue hash, verified), ``"first use"`` (hash recorded when first seen:
    trust on first use, not verified against a published value), ``"local folder"`` (unpacked content linked
    from a local source, each file hashed when linked), ``"unchecked"`` (present, not yet verified) or
    ``"missing"``. Files linked from a local source have ``source`` (the user's file or folder) and ``linked``.
    """
    folder = dataset_dir(spec, data_dir)
    sums = _Checksums(checksums_path(spec, data_dir))
    optional = image_only_files(spec)
    out = []
    for f in spec.files:
        path = folder / f.filename
        entry = sums.data.get(f.filename) or {}
        record = {"filename": f.filename, "url": f.url, "sha256": f.sha256 or entry.get("sha256", ""),
                  "optional": f.filename in optional}
        if path.is_file():
            verified = entry.get("url") == f.url and sums.unchanged(f, path, entry.get("sha256", ""))
            state = (CATALOGUE if f.sha256 else FIRST_USE) if verified else "unchecked"
            record["state"] = "pinned" if state == CATALOGUE else state
        elif f.unpack and provided_locally(f, folder, spec):
            manifest = read_manifest(f, folder) or {}
            record.update(state="local folder", source=manifest.get("source", ""), linked=True,
                          n_files=len(manifest.get("files", {})))
        else:
            record["state"] = "missing"
        if path.is_symlink():
            record.update(source=os.path.realpath(path), linked=True)
        out.append(record)
    return out


def checksum_state(spec: DatasetSpec, data_dir: str | Path | None = None) -> str:
    """:func:`checksum_label`, or ``"local folder"`` when files of ``spec`` are linked from the user's folder
    (hashed when linked, changes detected) and the catalogue pins none of them."""
    label = checksum_label(spec)
    if label != "pinned" and any(r.get("linked") for r in file_records(spec, data_dir)):
        return "local folder"
    return label


def input_fingerprints(spec: DatasetSpec, data_dir: str | Path | None = None) -> dict[str, str]:
    """What each file of ``spec`` holds, as recorded (no hashing): the verified sha256 (the catalogue's, or the
    one recorded when the file was first seen), ``local:<hash>`` for an archive's content linked from a local
    folder (the recorded hashes of the files ``spec`` uses), ``"absent"`` for a file that is not there, and
    ``changed:<size>:<mtime>`` for a file changed since it was verified (verify it with :func:`fetch_dataset`).

    When the dataset folder does not exist (raw files deleted after processing), the recorded hashes stand for
    the files. Processed caches are keyed on this (see :func:`spared.datasets.cache_paths`).
    """
    folder = dataset_dir(spec, data_dir)
    sums = _Checksums(checksums_path(spec, data_dir))
    present = folder.is_dir()
    out = {}
    for f in spec.files:
        path = folder / f.filename
        entry = sums.data.get(f.filename) or {}
        recorded = entry.get("sha256", "") if entry.get("url") == f.url else ""
        tree = tree_fingerprint(spec, f, folder) if f.unpack and not path.exists() else None
        if tree is not None:
            out[f.filename] = tree
        elif path.is_file():
            st = path.stat()
            out[f.filename] = recorded if recorded and sums.unchanged(f, path, recorded) else \
                f"changed:{st.st_size}:{st.st_mtime_ns}"
        else:
            out[f.filename] = "absent" if present or not recorded else recorded
    return out


def linked_inputs(spec: DatasetSpec, data_dir: str | Path | None = None) -> dict[str, str]:
    """Every user file linked for ``spec`` (a local source) → its recorded sha256: what messages name when the
    content behind an input changed."""
    folder = dataset_dir(spec, data_dir)
    sums = _Checksums(checksums_path(spec, data_dir))
    out = {}
    for f in spec.files:
        if f.unpack:
            out.update(linked_files(spec, f, folder))
        entry = sums.data.get(f.filename) or {}
        if entry.get("source"):
            out[entry["source"]] = entry.get("sha256", "")
    return out


def status(spec: DatasetSpec, data_dir: str | Path | None = None) -> Status:
    """``"processed"`` (a processed h5ad cache exists), ``"downloaded"`` (every required file present or linked,
    archives unpacked; full-resolution image files may be missing) or ``"absent"``."""
    processed = processed_dir(spec, data_dir)
    if processed.is_dir() and any(processed.glob("*.h5ad")):
        return "processed"
    return raw_status(spec, data_dir)


def raw_status(spec: DatasetSpec, data_dir: str | Path | None = None) -> Status:
    """``"downloaded"`` or ``"absent"``: :func:`status` without looking at processed caches."""
    folder = dataset_dir(spec, data_dir)
    optional = image_only_files(spec)
    for f in spec.files:
        path = folder / f.filename
        if f.unpack and provided_locally(f, folder, spec):
            continue
        if not path.is_file():
            if f.filename in optional:
                continue
            return "absent"
        if f.unpack and not is_unpacked(path, folder / f.target):
            return "absent"
    for pattern in spec.unpack_nested:
        nested = visible_glob(folder, pattern, want_dir=False)
        if not nested or not all(is_unpacked(p, p.parent / strip_archive_suffix(p.name))
                                 or (p.is_symlink() and (p.parent / strip_archive_suffix(p.name)).is_dir())
                                 for p in nested):
            return "absent"
    return "downloaded"


def _resolve(folder: Path, pattern: str, want_dir: bool, what: str,
             stems: tuple[str, ...]) -> tuple[str | None, str | None, str | None]:
    """``(relative path, note, problem)``: the match of ``pattern`` (several: one chosen, with a note)."""
    if is_glob(pattern):
        matches = visible_glob(folder, pattern, want_dir=want_dir)
    else:
        p = folder / pattern
        matches = [p] if (p.is_dir() if want_dir else p.is_file()) else []
    if not matches:
        return None, None, f"{what} {pattern!r} matches no {'folder' if want_dir else 'file'}"
    chosen, note = choose(matches, stems=(*stems, PurePosixPath(pattern).name), what=f"{what} {pattern!r}")
    return chosen.relative_to(folder).as_posix(), note, None


def resolve_layout(spec: DatasetSpec, folder: str | Path) -> tuple[tuple[SlideSpec, ...], list[str]]:
    """The spec's slides with every glob pattern (``path``, ``image``, ``hires_image``, ``counts``, ``spots``)
    replaced by its match under ``folder`` (the dataset folder), and notes on what was chosen or is missing.

    Hidden entries (``.*``, ``__MACOSX``) never match. A pattern matching several entries resolves to one
    (exact stem, then ``.jpg``, then sorted first) with a note; a full-resolution ``image`` matching nothing is
    dropped with a note (patches then come from the hires image). Raises :class:`LayoutError` listing every
    slide folder or hires image that matches nothing.
    """
    folder = Path(folder)
    resolved, problems, notes = [], [], []
    for slide in spec.slides:
        changes: dict[str, str | None] = {}
        for name, want_dir in (("path", True), ("image", False), ("hires_image", False), ("counts", False),
                               ("spots", False)):
            pattern = getattr(slide, name)
            if pattern is None:
                continue
            found, note, problem = _resolve(folder, pattern, want_dir, f"slide {slide.id!r}: {name}", (slide.id,))
            if note:
                notes.append(note)
            if problem and name == "image":
                notes.append(f"{problem}: no full-resolution image, patches will come from the hires or lowres "
                             f"image if there is one, else be skipped")
                changes[name] = None
            elif problem:
                problems.append(problem)
            else:
                changes[name] = found
        resolved.append(replace(slide, **changes))
    if problems:
        listing = "\n  - ".join(problems)
        raise LayoutError(f"the files of dataset {spec.key!r} under {folder} are not laid out as the catalogue "
                          f"says:\n  - {listing}\nCheck the unpacked folders (docs/formats.md describes the "
                          f"expected layout) and re-download if an archive was incomplete.")
    return tuple(resolved), notes


def resolve_slides(spec: DatasetSpec, folder: str | Path) -> tuple[SlideSpec, ...]:
    """:func:`resolve_layout`'s slides; its notes are issued as ``UserWarning``."""
    slides, notes = resolve_layout(spec, folder)
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    return slides

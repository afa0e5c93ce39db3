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
copied, and never modified or deleted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from spared.catalog import DatasetSpec, FileSpec, SlideSpec
from spared.catalog.spec import strip_archive_suffix
from spared.io.archive import ArchiveError, is_unpacked, unpack_archive
from spared.io.atomic import remove_stale_temps, usual_mode, write_text
from spared.io.scan import MACOS_FOLDER, choose, pattern_under, visible_glob
from spared.io.sniff import FormatError, check_format, sha256sum

__all__ = ["ChecksumError", "DownloadError", "FormatError", "LayoutError", "checksum_label", "checksums_path",
           "data_dir", "dataset_dir", "fetch_dataset", "file_records", "image_only_files", "processed_dir",
           "resolve_layout", "resolve_slides", "sha256sum", "status", "unpack_dataset"]

Status = Literal["absent", "downloaded", "processed"]
_GLOB_CHARS = re.compile(r"[*?\[]")
#: pooch downloads into ``tempfile.NamedTemporaryFile`` names beside the target (``0600``, left behind if killed).
_POOCH_TEMP = re.compile(r"tmp[a-z0-9_]{8}")
LOCAL_PREFIX = ".spared-local."
FIRST_USE = "first use"
CATALOGUE = "catalogue"


class DownloadError(OSError):
    """Files could not be fetched; the message lists each URL and the exact path to place it at by hand."""


class ChecksumError(ValueError):
    """A file's sha256 differs from the expected one (a file found on disk is left in place)."""


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

    def recorded(self, f: FileSpec) -> str:
        """The trust-on-first-use hash recorded for ``f`` (``""`` when none, or recorded for another URL)."""
        entry = self.data.get(f.filename)
        if not entry or entry.get("url") != f.url or entry.get("origin", FIRST_USE) != FIRST_USE:
            return ""
        return entry["sha256"]

    def unchanged(self, f: FileSpec, path: Path, sha: str) -> bool:
        """Whether ``path`` was verified as ``sha`` and its size and modification time have not changed since."""
        entry = self.data.get(f.filename) or {}
        st = path.stat()
        return (entry.get("url") == f.url and entry.get("sha256") == sha and entry.get("size") == st.st_size
                and entry.get("mtime_ns") == st.st_mtime_ns)

    def record(self, f: FileSpec, path: Path, sha: str, origin: str) -> None:
        st = path.stat()
        entry = {"url": f.url, "sha256": sha, "origin": origin, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        if path.is_symlink():
            entry["source"] = str(path.resolve())
        if self.data.get(f.filename) != entry:
            self.data[f.filename] = entry
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


def _verify_present(spec: DatasetSpec, f: FileSpec, path: Path, sums: _Checksums, recheck: bool) -> str:
    """Check a file found on disk (format, then sha256) and return its hash; the file is never deleted."""
    try:
        check_format(path, f.filename)
    except FormatError as exc:
        raise FormatError(f"{exc}. The file was left in place: replace it with the file from {f.url} (or move it "
                          f"away and run `spared download {spec.key}` to fetch it again)") from exc
    recorded = sums.recorded(f)
    expected = f.sha256 or ("" if recheck else recorded)
    if expected and not recheck and sums.unchanged(f, path, expected):
        return expected
    found = sha256sum(path)
    if expected and found != expected:
        if f.sha256:
            advice = (f"the catalogue pins this hash (published for the file at {f.url}): replace the file with "
                      f"the right one, or move it away and run `spared download {spec.key}` to fetch it again")
        else:
            advice = (f"that hash was recorded in {sums.path} when the file was first seen (trust on first use, "
                      f"never verified against a published value). If this file is the right one, run `spared "
                      f"download {spec.key} --recheck` to record its hash instead; otherwise move it away and run "
                      f"`spared download {spec.key}` to fetch it again")
        raise ChecksumError(f"{path} has sha256 {found}, but {expected} was expected; the file was left in place. "
                            f"{advice[0].upper()}{advice[1:]}.")
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
                  images: bool = True) -> Path:
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
        unpacked folders, or the contents of one archive (see :func:`link_local_source`). Nothing is copied.
    recheck
        Re-hash every file present and record trust-on-first-use hashes again (files the catalogue pins must
        still match); archives whose hash changed are unpacked again.
    images
        Try to fetch missing files that hold only full-resolution images; ``False`` uses what is there (no
        network for them, no warning: patches then come from the hires image).

    Returns
    -------
    pathlib.Path
        The dataset folder, against which the spec's slide paths resolve.

    Raises
    ------
    DownloadError
        Required files could not be fetched (or are not in ``source``): the message lists each URL and the path
        to place it at. Missing full-resolution-image files only give a warning (patches fall back to hires).
    FormatError
        A file's content is not what its name says (an HTML page saved as ``.tar.gz``, ...).
    ChecksumError
        A file's sha256 differs from the catalogue's or from the one recorded when it was first seen.
    ArchiveError
        An archive is corrupt or has unsafe entries.
    """
    folder = dataset_dir(spec, data_dir)
    remove_stale_temps(folder, abandoned=(_POOCH_TEMP, 3600))  # partial downloads of killed runs
    sums = _Checksums(checksums_path(spec, data_dir))
    local = Path(source).expanduser().resolve() if source is not None else None
    if local is not None:
        link_local_source(spec, folder, local)
    optional = image_only_files(spec)
    hashes: dict[str, str] = {}
    missing: list[_Missing] = []
    offline: str | None = None
    for f in spec.files:
        path = folder / f.filename
        if path.is_file():
            hashes[f.filename] = _verify_present(spec, f, path, sums, recheck)
        elif f.unpack and provided_locally(f, folder):
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


# --- local sources -------------------------------------------------------------------------------------------


def _local_marker(f: FileSpec, folder: Path) -> Path:
    return folder / f.target / f"{LOCAL_PREFIX}{PurePosixPath(f.filename).name}"


def provided_locally(f: FileSpec, folder: Path) -> bool:
    """Whether the unpacked content of archive ``f`` was linked from a local folder (and is still there)."""
    marker = _local_marker(f, folder)
    if not marker.is_file():
        return False
    try:
        entries = json.loads(marker.read_text())["entries"]
    except (ValueError, KeyError, TypeError):
        return False
    target = folder / f.target
    return bool(entries) and all((target / name).exists() for name in entries)


def _candidates(f: FileSpec, source: Path) -> list[Path]:
    """Where a file may lie in a local folder: its catalogue path or any trailing part of it (``a/b/c.tsv``,
    ``b/c.tsv``, ``c.tsv``: the user may point at a folder inside the catalogue's layout), the URL's last
    component."""
    parts = PurePosixPath(f.filename).parts
    names = [str(PurePosixPath(*parts[i:])) for i in range(len(parts))]
    names.append(PurePosixPath(f.url.split("?", 1)[0]).name)
    return [source / n for n in dict.fromkeys(names) if n and (source / n).is_file()]


def _patterns_under(spec: DatasetSpec, target: str) -> list[tuple[str, str]]:
    """``(field, rest)`` of every slide pattern that lies strictly below ``target``."""
    out = []
    for s in spec.slides:
        for name in ("path", "image", "hires_image"):
            value = getattr(s, name)
            rest = pattern_under(value, target) if value else None
            if rest:
                out.append((name, rest))
    return out


def _exists(folder: Path, pattern: str) -> bool:
    if _GLOB_CHARS.search(pattern):
        return bool(visible_glob(folder, pattern))
    return (folder / pattern).exists()


def _unpacked_source(spec: DatasetSpec, f: FileSpec, source: Path) -> tuple[Path, list[str]] | None:
    """Where ``source`` holds archive ``f`` unpacked, and which of its top-level entries to link.

    Either ``source/<unpack folder>`` (the archive unpacked beside itself) or ``source`` itself holding the
    archive's contents (every slide pattern below the unpack folder resolves in it).
    """
    for candidate in dict.fromkeys([source / f.target, source / PurePosixPath(f.target).name]):
        if candidate.is_dir() and candidate != source:
            return candidate, _visible_entries(candidate)
    rests = _patterns_under(spec, f.target)
    if rests and all(_exists(source, rest) for _, rest in rests):
        tops = {PurePosixPath(rest).parts[0] for _, rest in rests}
        entries = sorted({p.name for top in tops for p in visible_glob(source, top)})
        return source, entries
    return None


def _visible_entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and p.name != MACOS_FOLDER)


def _mirror(src: Path, dest: Path) -> int:
    """Recreate ``src``'s folders under ``dest`` and link each visible file (a link farm; nothing is copied)."""
    n = 0
    if src.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            dest.symlink_to(src)
            n += 1
        return n
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(src, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != MACOS_FOLDER]
        out = dest / Path(dirpath).relative_to(src)
        out.mkdir(parents=True, exist_ok=True)
        for name in filenames:
            if name.startswith(".") or (out / name).exists() or (out / name).is_symlink():
                continue
            (out / name).symlink_to(Path(dirpath, name).resolve())
            n += 1
    return n


def link_local_source(spec: DatasetSpec, folder: Path, source: Path) -> list[str]:
    """Make the files of a local folder available in the dataset folder without copying them.

    For each catalogue file not yet in ``folder``: the file itself in ``source`` (by its catalogue path, its
    name or the URL's last component) is linked; for an archive, its unpacked folder in ``source``, or
    ``source`` itself when it holds the archive's contents, is mirrored as folders of links (so that files
    spared writes beside them, e.g. decompressed ``.gz``, stay in the dataset folder). Returns a line per file
    found; raises :class:`DownloadError` when ``source`` holds none of the dataset's files.
    """
    from spared.io.atomic import write_text as atomic_write

    if not source.is_dir():
        raise DownloadError(f"--from {source}: no such folder")
    found: list[str] = []
    for f in spec.files:
        path = folder / f.filename
        if path.is_file() or (f.unpack and provided_locally(f, folder)):
            found.append(f"{f.filename}: already in the dataset folder")
            continue
        files = _candidates(f, source)
        if files:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_symlink():
                path.unlink()  # a dangling link from an earlier --from
            path.symlink_to(files[0])
            found.append(f"{f.filename}: linked to {files[0]}")
            continue
        unpacked = _unpacked_source(spec, f, source) if f.unpack else None
        if unpacked is None:
            continue
        where, entries = unpacked
        target = folder / f.target
        n = sum(_mirror(where / name, target / name) for name in entries)
        atomic_write(_local_marker(f, folder), json.dumps({"archive": f.filename, "source": str(where),
                                                           "entries": entries, "linked_files": n}, indent=1))
        found.append(f"{f.filename}: unpacked content linked from {where} ({n} files)")
    if not found:
        from spared.io.readers.common import examples

        names = examples(PurePosixPath(f.filename).name for f in spec.files)
        folders = examples(sorted({f.target for f in spec.files if f.unpack}))
        example = next((rest for f in spec.files for _, rest in _patterns_under(spec, f.target)), "")
        layout = examples(f.filename for f in spec.files)
        raise DownloadError(f"{source} holds none of the {len(spec.files)} files of dataset {spec.key!r}. Expected "
                            f"the files ({names}) in the catalogue's layout ({layout}) or flat"
                            + (f", the archives' unpacked folders ({folders})" if folders else "")
                            + (f", or an archive's contents (e.g. {example})" if example else "") + ".")
    for line in found:
        _say(f"{spec.key}: {line}")
    return found


# --- what is on disk ----------------------------------------------------------------------------------------


def file_records(spec: DatasetSpec, data_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """How each file of ``spec`` stands on disk (no hashing): filename, url, ``state`` and ``sha256``.

    ``state`` is ``"pinned"`` (catalogue hash, verified), ``"first use"`` (hash recorded when first seen:
    trust on first use, not verified against a published value), ``"local folder"`` (unpacked content linked
    from a local source, not hashed), ``"unchecked"`` (present, not yet verified) or ``"missing"``.
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
        elif f.unpack and provided_locally(f, folder):
            record["state"] = "local folder"
            record["source"] = json.loads(_local_marker(f, folder).read_text()).get("source", "")
        else:
            record["state"] = "missing"
        if path.is_symlink():
            record["source"] = str(path.resolve())
        out.append(record)
    return out


def status(spec: DatasetSpec, data_dir: str | Path | None = None) -> Status:
    """``"processed"`` (a processed h5ad cache exists), ``"downloaded"`` (every required file present or linked,
    archives unpacked; full-resolution image files may be missing) or ``"absent"``."""
    processed = processed_dir(spec, data_dir)
    if processed.is_dir() and any(processed.glob("*.h5ad")):
        return "processed"
    folder = dataset_dir(spec, data_dir)
    optional = image_only_files(spec)
    for f in spec.files:
        path = folder / f.filename
        if f.unpack and provided_locally(f, folder):
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
    if _GLOB_CHARS.search(pattern):
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

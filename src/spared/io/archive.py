"""Safe, idempotent unpacking of zip and tar(.gz) archives.

Every member is checked before anything is written: absolute paths, ``..`` components, device files and links
that point outside the target are rejected. Members are extracted into a temporary folder beside the target
(after checking that the device has room for their total size), checked again on disk (symlinks must resolve
inside it), then renamed into place. A full disk is a :class:`~spared.io.atomic.DiskFullError` (the archive is
not blamed) and leaves nothing behind. A marker file records the archive's sha256 (and size and modification
time): a second call with the same archive is a no-op, an archive replaced by another of the same name is
unpacked again.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path
from typing import Any

from spared.io.atomic import is_disk_full, remove_stale_temps, require_space, staged, temp_sibling, write_text
from spared.io.sniff import sha256sum

MARKER_PREFIX = ".spared-unpacked."


class ArchiveError(ValueError):
    """An archive is unreadable or has an entry that would escape the target folder."""


def marker_path(archive: Path, target: Path) -> Path:
    """The marker that records ``archive`` as unpacked into ``target``."""
    return Path(target) / f"{MARKER_PREFIX}{Path(archive).name}"


def _stat_key(archive: Path) -> dict[str, int]:
    st = archive.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _marker(archive: Path, target: Path) -> dict[str, Any] | None:
    marker = marker_path(archive, target)
    if not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text())
        entries = data["entries"]
    except (ValueError, KeyError, TypeError):
        return None
    if not all((target / name).exists() or (target / name).is_symlink() for name in entries):
        return None
    return data


def is_unpacked(archive: str | Path, target: str | Path, sha256: str | None = None) -> bool:
    """Whether this very ``archive`` was fully unpacked into ``target``: marker present, every entry still there,
    and the marker's sha256 equal to ``sha256`` (when given; else the archive's size and modification time
    equal to the marker's, a cheap check that no other file replaced it)."""
    archive, target = Path(archive), Path(target)
    data = _marker(archive, target)
    if data is None or "sha256" not in data or not archive.is_file():
        return False
    if sha256 is not None:
        return data["sha256"] == sha256
    return all(data.get(k) == v for k, v in _stat_key(archive).items())


def unpack_archive(archive: str | Path, target: str | Path, sha256: str | None = None) -> Path:
    """Unpack a zip or tar(.gz/.bz2/.xz) archive into ``target`` safely; a no-op when already unpacked.

    Parameters
    ----------
    archive
        The archive file (its kind is detected from its content, not its name).
    target
        Folder to unpack into (created if needed). Top-level entries of the archive replace same-named entries.
    sha256
        The archive's hash when already known (computed otherwise); the unpack marker is keyed by it.

    Returns
    -------
    pathlib.Path
        ``target``.

    Raises
    ------
    ArchiveError
        When the file is not an archive, is corrupt, or has an unsafe entry (nothing is written then).
    """
    archive, target = Path(archive), Path(target)
    if not archive.is_file():
        raise ArchiveError(f"archive {archive} does not exist; download it first")
    sha256 = sha256 or sha256sum(archive)
    if is_unpacked(archive, target, sha256):
        _refresh_marker(archive, target)
        return target
    target.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target.parent)  # what a killed unpacking left
    staging = temp_sibling(target.parent / f"unpacking-{archive.name}", kind="part")
    with staged(staging, target.parent, f"unpacking {archive.name}"):
        staging.mkdir()
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, staging)
        elif _is_tar(archive):
            _extract_tar(archive, staging)
        else:
            raise ArchiveError(f"{describe(archive)} is neither a zip nor a tar archive (it may be truncated or an "
                               f"HTML error page): {_replace_advice(archive)}")
        _check_links_on_disk(staging, archive)
        entries = sorted(p.name for p in staging.iterdir())
        for name in entries:
            dest = target / name
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            elif dest.exists() or dest.is_symlink():
                dest.unlink()
            os.replace(staging / name, dest)
        write_text(marker_path(archive, target), json.dumps({"archive": archive.name, "sha256": sha256,
                                                             **_stat_key(archive), "entries": entries}, indent=1))
        shutil.rmtree(staging, ignore_errors=True)
    return target


def describe(archive: Path) -> str:
    """``archive``, and the file it links to when it is a link (a local source's file, named in messages)."""
    return f"{archive} (a link to {os.path.realpath(archive)})" if archive.is_symlink() else str(archive)


def _replace_advice(archive: Path) -> str:
    if archive.is_symlink():
        return (f"replace your file {os.path.realpath(archive)} with a complete copy (spared never modifies or "
                f"deletes it), then run the command again")
    return "delete it and download it again"


def _refresh_marker(archive: Path, target: Path) -> None:
    """Record the archive's current size and time in its marker (same content, e.g. copied or touched)."""
    data = _marker(archive, target)
    if data is not None and any(data.get(k) != v for k, v in _stat_key(archive).items()):
        write_text(marker_path(archive, target), json.dumps({**data, **_stat_key(archive)}, indent=1))


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except (OSError, EOFError, tarfile.TarError):
        return False


def _unsafe_name(name: str) -> str | None:
    """Why a member name is unsafe, or ``None`` when it stays inside the target."""
    norm = name.replace("\\", "/")
    if not norm.strip("/"):
        return "has an empty name"
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        return "is an absolute path"
    if ".." in norm.split("/"):
        return "contains a '..' component"
    return None


def _link_escapes(member: str, link: str, relative_to_member: bool) -> bool:
    """Whether ``link`` (a symlink target or hardlink name) points outside the extraction folder."""
    link = link.replace("\\", "/")
    if link.startswith("/") or re.match(r"^[A-Za-z]:", link):
        return True
    base = posixpath.dirname(member.replace("\\", "/")) if relative_to_member else ""
    resolved = posixpath.normpath(posixpath.join(base, link))
    return resolved == ".." or resolved.startswith("../")


def _reject(archive: Path, member: str, why: str) -> ArchiveError:
    return ArchiveError(f"refusing to unpack {describe(archive)}: entry {member!r} {why}; the archive is malformed "
                        f"or malicious, nothing was written ({_replace_advice(archive)})")


def _corrupt(archive: Path, exc: BaseException) -> ArchiveError:
    return ArchiveError(f"{describe(archive)} is corrupt or truncated ({exc}): {_replace_advice(archive)}")


def _extract_tar(archive: Path, dest: Path) -> None:
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for m in members:
                if (why := _unsafe_name(m.name)) is not None:
                    raise _reject(archive, m.name, why)
                if m.issym() and _link_escapes(m.name, m.linkname, relative_to_member=True):
                    raise _reject(archive, m.name, f"is a symlink to {m.linkname!r}, outside the target")
                if m.islnk() and (_unsafe_name(m.linkname) or _link_escapes(m.name, m.linkname, False)):
                    raise _reject(archive, m.name, f"is a hard link to {m.linkname!r}, outside the target")
                if m.ischr() or m.isblk() or m.isfifo():
                    raise _reject(archive, m.name, "is a device or FIFO")
            require_space(dest.parent, sum(m.size for m in members if m.isfile()), f"unpacking {archive.name}")
            tar.extractall(dest, members=members, filter="data")
    except tarfile.FilterError as exc:
        raise ArchiveError(f"refusing to unpack {describe(archive)}: {exc}; nothing was written") from exc
    except (tarfile.TarError, EOFError, OSError) as exc:
        if is_disk_full(exc):
            raise  # the archive is fine: the disk is full (see spared.io.atomic.staged)
        raise _corrupt(archive, exc) from exc


def _extract_zip(archive: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            links: list[tuple[str, str]] = []
            for info in infos:
                if (why := _unsafe_name(info.filename)) is not None:
                    raise _reject(archive, info.filename, why)
                if stat.S_ISLNK(info.external_attr >> 16):
                    link = zf.read(info).decode("utf-8", errors="replace")
                    if _link_escapes(info.filename, link, relative_to_member=True):
                        raise _reject(archive, info.filename, f"is a symlink to {link!r}, outside the target")
                    links.append((info.filename, link))
            link_names = {name for name, _ in links}
            require_space(dest.parent, sum(i.file_size for i in infos if i.filename not in link_names),
                          f"unpacking {archive.name}")
            for info in infos:
                if info.filename not in link_names:
                    zf.extract(info, dest)
            for name, link in links:
                path = dest / name.rstrip("/")
                path.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(link, path)
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        if is_disk_full(exc):
            raise
        raise _corrupt(archive, exc) from exc


def _check_links_on_disk(staging: Path, archive: Path) -> None:
    """Every symlink unpacked into ``staging`` must resolve inside it (catches chains of links)."""
    root = staging.resolve()
    for dirpath, dirnames, filenames in os.walk(staging):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                real = Path(os.path.realpath(path))
                if real != root and root not in real.parents:
                    raise _reject(archive, str(path.relative_to(staging)),
                                  f"is a symlink resolving to {real}, outside the target")

"""Atomic file writes: a temporary file beside the target, then a rename, so a half-written file is never read.

Temporary names are ``.{target}.{pid}@{host}.tmp{suffix}`` (or ``.part``): a later write into the same folder
removes those its own machine's dead processes left (a killed run), and those of other machines untouched for
:data:`STALE_AFTER` seconds; a live writer's file is never touched. Results get the usual modes (``0666`` for
files and ``0777`` for folders, less the umask), whatever mode the writer created them with.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

#: Seconds after which another machine's untouched temporary file counts as abandoned.
STALE_AFTER = 24 * 3600
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)@(?P<host>[A-Za-z0-9-]+)\.(?:tmp|part)(?:\.[A-Za-z0-9]+)?$")


class TempName(NamedTuple):
    """What a temporary name says: the file it becomes, and the process (pid on host) writing it."""

    target: str
    pid: int
    host: str


def host_tag() -> str:
    """This machine's name as it appears in temporary names (letters, digits and ``-`` only)."""
    return re.sub(r"[^A-Za-z0-9-]+", "-", socket.gethostname().split(".")[0]).strip("-")[:40] or "host"


def temp_sibling(path: str | Path, suffix: str = "", kind: str = "tmp") -> Path:
    """The temporary name this process uses for ``path``: ``.{name}.{pid}@{host}.{kind}{suffix}`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}@{host_tag()}.{kind}{suffix}")


def parse_temp_name(name: str) -> TempName | None:
    """The parts of one of our temporary names, or ``None`` for any other name."""
    match = _TEMP_NAME.match(name)
    return None if match is None else TempName(match["target"], int(match["pid"]), match["host"])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(path: Path, now: float | None = None) -> bool:
    """True for one of our temporary names whose writer is gone: a dead process of this machine, or another
    machine's file not modified for :data:`STALE_AFTER` seconds."""
    parts = parse_temp_name(path.name)
    if parts is None:
        return False
    if parts.host == host_tag():
        return parts.pid != os.getpid() and not _alive(parts.pid)
    try:
        age = (now or time.time()) - path.lstat().st_mtime
    except FileNotFoundError:
        return False
    return age > STALE_AFTER


def remove_stale_temps(folder: str | Path, abandoned: tuple[re.Pattern[str], float] | None = None) -> list[Path]:
    """Remove the stale temporary files and folders (see :func:`is_stale`) directly inside ``folder``.

    ``abandoned=(pattern, seconds)`` also removes files whose whole name matches ``pattern`` and that were not
    modified for ``seconds`` (the temporary names of a library that writes into our folders, such as pooch's).
    """
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return removed
    now = time.time()
    for entry in entries:
        if not (is_stale(entry, now) or (abandoned is not None and abandoned[0].fullmatch(entry.name)
                                         and entry.is_file() and now - entry.stat().st_mtime > abandoned[1])):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except FileNotFoundError:
            continue
        except OSError:
            continue  # not ours to remove after all (permissions): leave it
        removed.append(entry)
    return removed


def _umask() -> int:
    """The process umask, read without changing it where ``/proc`` says it (Linux), else by setting it back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def usual_mode(path: str | Path) -> None:
    """Give ``path`` (and, for a folder, everything in it) the mode a plain ``open``/``mkdir`` would:
    ``0666``/``0777`` less the umask (writers such as ``mkstemp`` or safetensors create files ``0600``)."""
    path = Path(path)
    mask = _umask()
    if not path.is_dir():
        os.chmod(path, 0o666 & ~mask)
        return
    os.chmod(path, 0o777 & ~mask)
    for root, dirs, files in os.walk(path):
        for names, base in ((dirs, 0o777), (files, 0o666)):
            for name in names:
                entry = os.path.join(root, name)
                if not os.path.islink(entry):  # a link's mode is its target's: never change what lies elsewhere
                    os.chmod(entry, base & ~mask)


class OutputPathError(ValueError):
    """An output path that cannot be written (checked before the work starts)."""


def _existing_ancestor(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path.cwd()


def _probe(folder: Path, target: Path) -> None:
    """Create and remove a temporary file in ``folder``: the one test of writability that holds everywhere."""
    probe = temp_sibling(folder / f"write-test-{target.name}")
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError as err:
        raise OutputPathError(f"cannot write {target}: {folder} is not writable ({err.strerror}); choose another "
                              f"location or fix its permissions") from err
    probe.unlink(missing_ok=True)


def check_writable_file(path: str | Path) -> Path:
    """Check, before any work, that the file ``path`` can be written; raise :class:`OutputPathError` if not.

    Refused: an existing folder at ``path``, a file where a parent folder should be, and a folder that does not
    accept a new file. Missing parent folders are fine (they are created at the write); nothing is created here.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{path} is a folder; give the path of a file to write, e.g. {path / 'out.h5ad'}")
    ancestor = _existing_ancestor(path.parent)
    if not ancestor.is_dir():
        raise OutputPathError(f"cannot write {path}: {ancestor} is a file, not a folder")
    _probe(ancestor, path)
    return path


def check_writable_dir(path: str | Path) -> Path:
    """Check, before any work, that files can be written in the folder ``path`` (created later if missing)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{path} is a file, not a folder; give a folder for the outputs")
    ancestor = _existing_ancestor(path)
    if not ancestor.is_dir():
        raise OutputPathError(f"cannot create the folder {path}: {ancestor} is a file, not a folder")
    _probe(ancestor, path)
    return path


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (parents created); on success it replaces ``path``.

    On any error the temporary file is removed and ``path`` is left as it was. ``suffix`` ends the temporary
    name, for writers that insist on an extension (``.npz``, ``.h5ad``). Stale temporary files in the folder
    (left by killed runs) are removed first; the result gets the usual mode.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    tmp = temp_sibling(path, suffix)
    try:
        yield tmp
        usual_mode(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it becomes ``path`` (replacing a folder there).

    On any error the temporary folder is removed and ``path`` is left as it was. The folder gets the usual mode
    (``mkdtemp`` would leave it ``0700``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    tmp = temp_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
        usual_mode(tmp)
        if path.exists():
            old = temp_sibling(path, kind="old")  # not a name cleaned automatically: kept if we die here
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_h5ad(adata: Any, path: str | Path, compression: str | None = None) -> Path:
    """Write ``adata`` to ``path`` atomically; returns the path.

    A recorded patch store travels with the file: it is placed beside ``path`` and recorded relative to it
    (:func:`spared.io.patch_paths.portable_store`).
    """
    from spared.io.patch_paths import portable_store

    with portable_store(adata, path), atomic_path(path, ".h5ad") as tmp:
        adata.write_h5ad(tmp, compression=compression)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)

"""Atomic file writes: a temporary file beside the target, then a rename, so a half-written file is never read.

Temporary names are ``.{target}.{pid}@{host}.tmp{suffix}`` (or ``.part``): a later write into the same folder
removes those its own machine's dead processes left (a killed run), and those of other machines untouched for
:data:`STALE_AFTER` seconds; a live writer's file is never touched. Results get the usual modes (``0666`` for
files and ``0777`` for folders, less the umask), whatever mode the writer created them with.

Every writer of spared goes through :func:`staged` (directly, or through :func:`atomic_path`, :func:`atomic_dir`,
:func:`atomic_h5`): a full disk (``ENOSPC``, or a quota) becomes one :class:`DiskFullError` naming the folder, the
space needed and the space free, after the temporary output is removed; it never blames the input.
"""

from __future__ import annotations

import errno
import gc
import os
import re
import shutil
import socket
import sys
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


class DiskFullError(OSError):
    """A write ran out of space (``ENOSPC`` or a quota): the message names the folder, the space needed (or written
    before the disk filled) and the space free. The temporary output was removed; the input is not at fault.

    Attributes
    ----------
    folder
        The folder written to.
    needed, written, free
        Bytes: the space the output needs (``None`` when not known beforehand), written when the disk filled
        (``None`` when refused before writing) and free after the partial output was removed.
    """

    def __init__(self, folder: str | Path, what: str, needed: int | None = None, written: int | None = None,
                 free: int | None = None):
        self.folder, self.what, self.needed, self.written = Path(folder), what, needed, written
        self.free = free if free is not None else free_space(folder)
        super().__init__(errno.ENOSPC, self._message())

    def _message(self) -> str:
        if self.needed is not None:
            size = f"it needs about {human_size(self.needed)}"
        elif self.written:
            size = f"it needs more than the {human_size(self.written)} written when the disk filled"
        else:
            size = "it needs more space"
        done = "Nothing was written" if self.written is None else "The partial output was removed"
        return (f"no space left on the device of {self.folder} while {self.what}: {size}, and "
                f"{human_size(self.free)} is free there. {done} (nothing is wrong with the input). Free some space "
                f"on that device, or write to another folder (datasets: --data-dir or $SPARED_DATA; benchmarks: "
                f"--out), then run the command again.")

    def __str__(self) -> str:
        return self.strerror

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.folder, self.what, self.needed, self.written, self.free)


_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
#: Free bytes under which a failed write counts as a full disk even when the writer's error does not say so
#: (torch.save reports only "unexpected pos ..."): no output fits in less.
FULL_MARGIN = 1 << 20
#: How HDF5 (through h5py) and other C libraries spell a full disk in messages that carry no ``errno``.
_FULL_TEXT = re.compile(r"No space left on device|Disk quota exceeded|errno = (28|122)\b")


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) reports a full disk or an exhausted quota."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
            return True
        if _FULL_TEXT.search(str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _full(exc: BaseException, folder: str | Path) -> bool:
    """Whether a failed write into ``folder`` failed for want of space: said by the error, or (an error of a
    writer that does not say why) the device has less than :data:`FULL_MARGIN` left."""
    if isinstance(exc, DiskFullError):
        return False
    return is_disk_full(exc) or (isinstance(exc, Exception) and free_space(folder) < FULL_MARGIN)


def human_size(n: int | float | None) -> str:
    """``1536`` → ``"1.5 kB"`` (decimal units, as ``df -H`` prints them)."""
    if n is None:
        return "an unknown amount"
    value = float(n)
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def free_space(folder: str | Path) -> int:
    """Bytes free to this user on the device of ``folder`` (or of its nearest existing parent)."""
    try:
        return shutil.disk_usage(_existing_ancestor(Path(folder))).free
    except OSError:
        return 0


def require_space(folder: str | Path, needed: int, what: str) -> None:
    """Raise :class:`DiskFullError` before any work when ``folder``'s device has less than ``needed`` bytes free."""
    free = free_space(folder)
    if needed > free:
        raise DiskFullError(folder, what, needed=needed, free=free)


def size_on_disk(path: str | Path) -> int:
    """Bytes of a file, or of every file below a folder (links not followed); 0 when there is nothing."""
    path = Path(path)
    try:
        if not path.is_dir() or path.is_symlink():
            return path.lstat().st_size
    except OSError:
        return 0
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def remove_path(path: str | Path) -> None:
    """Remove a file, link or folder tree if it exists (a missing path is fine)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _swallow_full_disk(unraisable: Any) -> None:
    """An unraisable-exception hook that drops the close errors HDF5 objects raise once the disk is full."""
    if not is_disk_full(unraisable.exc_value):
        sys.__unraisablehook__(unraisable)


def _disk_full(exc: BaseException, folder: str | Path, what: str, needed: int | None,
               discard: Path | None) -> DiskFullError:
    """The :class:`DiskFullError` of ``exc``, once the partial output ``discard`` is measured and removed (and
    the objects the failed write left half closed, h5py's, are collected quietly)."""
    written = size_on_disk(discard) if discard is not None else 0
    previous, sys.unraisablehook = sys.unraisablehook, _swallow_full_disk
    try:
        gc.collect()
    finally:
        sys.unraisablehook = previous
    if discard is not None:
        remove_path(discard)
    return DiskFullError(folder, what, needed=needed, written=written)


@contextmanager
def staged(temp: str | Path, folder: str | Path, what: str, needed: int | None = None) -> Iterator[Path]:
    """The one error path of spared's writers: run the block that writes ``temp`` (a file or folder), and on any
    error remove it; a full disk becomes :class:`DiskFullError` naming ``folder`` and ``what`` was being written.

    ``needed`` (bytes, when known) is checked against the free space before the block runs. Objects left half
    closed by the failed write (h5py's) are collected here, so their close errors do not surface later.
    """
    temp = Path(temp)
    if needed is not None:
        require_space(folder, needed, what)
    try:
        yield temp
    except BaseException as exc:
        if not _full(exc, folder):
            remove_path(temp)
            raise
        raise _disk_full(exc, folder, what, needed, temp) from exc


@contextmanager
def full_disk_errors(folder: str | Path, what: str, discard: str | Path | None = None) -> Iterator[None]:
    """For writers whose outputs stay on other errors (a benchmark run's folder): inside the block, a full disk
    becomes :class:`DiskFullError` naming ``folder``, after the partial output ``discard`` is removed."""
    try:
        yield
    except Exception as exc:
        if not _full(exc, folder):
            raise
        raise _disk_full(exc, folder, what, None, Path(discard) if discard is not None else None) from exc


@contextmanager
def atomic_path(path: str | Path, suffix: str = "", needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (parents created); on success it replaces ``path``.

    On any error the temporary file is removed and ``path`` is left as it was; a full disk is a
    :class:`DiskFullError` (``needed``: bytes the file will take, checked first when given). ``suffix`` ends the
    temporary name, for writers that insist on an extension (``.npz``, ``.h5ad``). Stale temporary files in the
    folder (left by killed runs) are removed first; the result gets the usual mode.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    with staged(temp_sibling(path, suffix), path.parent, f"writing {path.name}", needed) as tmp:
        yield tmp
        usual_mode(tmp)
        os.replace(tmp, path)


@contextmanager
def atomic_dir(path: str | Path, needed: int | None = None) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it becomes ``path`` (replacing a folder there).

    On any error the temporary folder is removed and ``path`` is left as it was (a full disk: a
    :class:`DiskFullError`). The folder gets the usual mode (``mkdtemp`` would leave it ``0700``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    with staged(temp_sibling(path), path.parent, f"writing {path.name}", needed) as tmp:
        tmp.mkdir()
        yield tmp
        usual_mode(tmp)
        if path.exists():
            old = temp_sibling(path, kind="old")  # not a name cleaned automatically: kept if we die here
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            tmp.rename(path)


class _GuardedFile:
    """A binary file for h5py's file-object driver that never fails a write: the first error is kept and later
    writes are dropped, so that HDF5 can still close the file (HDF5 closing a file after a failed write crashes
    the process) and the error is raised afterwards."""

    def __init__(self, path: Path):
        self._fh = open(path, "w+b", buffering=0)
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        if self.error is None:
            try:
                return self._fh.write(data)
            except OSError as exc:
                self.error = exc
        return len(memoryview(data))

    def readinto(self, buffer: Any) -> int:
        return self._fh.readinto(buffer)

    def read(self, size: int = -1) -> bytes:
        return self._fh.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def truncate(self, size: int | None = None) -> int:
        if self.error is None:
            try:
                return self._fh.truncate(size)
            except OSError as exc:
                self.error = exc
        return size if size is not None else self.tell()

    def flush(self) -> None:
        """Unbuffered: nothing to flush."""

    def close(self) -> None:
        self._fh.close()


@contextmanager
def atomic_h5(path: str | Path, needed: int | None = None) -> Iterator[Any]:
    """Yield an ``h5py.File`` open for writing a temporary file beside ``path``; on success it replaces ``path``.

    As :func:`atomic_path`, with one more guarantee: a write that fails inside HDF5 (a full disk) never leaves
    HDF5 half closed (which crashes the process later); it is raised once the file is closed, as a
    :class:`DiskFullError` when the disk is full.
    """
    import h5py

    with atomic_path(path, needed=needed) as tmp:
        raw = _GuardedFile(tmp)
        try:
            with h5py.File(raw, "w") as handle:
                yield handle
        finally:
            raw.close()
        if raw.error is not None:
            raise raw.error


def _anndata_nbytes(adata: Any) -> int:
    """About the bytes an uncompressed h5ad of ``adata`` takes (its arrays, tables and images)."""
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    def size(value: Any) -> int:
        if sp.issparse(value):
            return sum(getattr(value, a).nbytes for a in ("data", "indices", "indptr") if hasattr(value, a))
        if isinstance(value, np.ndarray):
            return value.nbytes
        if isinstance(value, pd.DataFrame):
            return int(value.memory_usage(deep=True, index=True).sum())
        if isinstance(value, dict):
            return sum(size(v) for v in value.values())
        return 0

    parts = [adata.X, adata.obs, adata.var, dict(adata.layers), dict(adata.obsm), dict(adata.obsp),
             dict(adata.varm), dict(adata.uns)]
    return sum(size(p) for p in parts if p is not None)


def write_h5ad(adata: Any, path: str | Path, compression: str | None = None) -> Path:
    """Write ``adata`` to ``path`` atomically; returns the path.

    A recorded patch store travels with the file: it is placed beside ``path`` and recorded relative to it
    (:func:`spared.io.patch_paths.portable_store`). The h5ad is written as anndata's ``write_h5ad`` does (strings
    as categoricals, anndata's element encoding), through :func:`atomic_h5`: the free space is checked first
    (uncompressed size) and a disk that fills up is a :class:`DiskFullError`, never a crash. A backed AnnData is
    written by anndata itself.
    """
    from spared.io.patch_paths import portable_store

    needed = None if compression else _anndata_nbytes(adata)
    with portable_store(adata, path):
        if adata.isbacked:
            with atomic_path(path, ".h5ad", needed=needed) as tmp:
                adata.write_h5ad(tmp, compression=compression)
            return Path(path)
        try:
            from anndata.io import write_elem
        except ImportError:  # anndata < 0.11
            from anndata.experimental import write_elem

        adata.strings_to_categoricals()
        with atomic_h5(path, needed=needed) as handle:
            write_elem(handle, "/", adata, dataset_kwargs={"compression": compression} if compression else {})
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)

"""Files between the driver and Ray nodes that share no filesystem, cached on each node by content hash.

A file leaves the driver as a :class:`FileRef`: its name, size and sha256 plus where its bytes are, either an
object of Ray's object store (put once per content by :class:`Shipper`) or a copy under a *storage location*
every node can read (``--storage``: a path or URI; ``s3://``, ``gs://``, ``hdfs://``, ``file://`` through
pyarrow's filesystems, any other scheme through fsspec when its plugin is installed), for files too large for
the object store. A node fetches it once into its cache (:func:`fetch`, keyed by the hash and checked against
it); later runs on that node read the cached copy. Results travel back the same way (:func:`send_back` on the
node, :func:`receive` on the driver): inline in the task's return value, or through the storage location.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spared.io.atomic import atomic_dir, atomic_path
from spared.io.sniff import sha256sum

#: Environment variable naming a node's cache folder (default: ``<temporary folder>/spared-ray-cache``).
NODE_CACHE_ENV = "SPARED_NODE_CACHE"
#: Folder of the storage location that holds shipped files, by content hash.
STORAGE_OBJECTS = "spared-objects"


class TransferError(OSError):
    """A file could not be shipped, fetched or checked (the message names the file, the place and the fix)."""


@dataclass(frozen=True)
class FileRef:
    """A file on its way between machines.

    Attributes
    ----------
    name
        File name (kept by the copy).
    sha256, size
        Content hash and size in bytes; a copy is checked against both.
    ref
        ``[ObjectRef]`` of the bytes in Ray's object store (in a list so that Ray hands the reference over
        instead of fetching the bytes into every task), or ``None``.
    uri
        The file in the storage location, or ``None``.
    data
        The bytes themselves (a ``uint8`` array; results coming back inline), or ``None``.
    """

    name: str
    sha256: str
    size: int
    ref: list[Any] | None = None
    uri: str | None = None
    data: np.ndarray | None = None


def open_storage(location: str) -> tuple[Any, str]:
    """``(pyarrow filesystem, path inside it)`` of a storage location (a local path or a URI)."""
    from pyarrow import fs

    try:
        return fs.FileSystem.from_uri(location if "://" in location else str(Path(location).expanduser().resolve()))
    except Exception as err:  # pyarrow raises ArrowInvalid for schemes it does not know
        try:
            from fsspec.core import url_to_fs
        except ImportError:
            raise TransferError(f"storage location {location!r} is not a path or a URI pyarrow reads ({err}); "
                                f"for other schemes install fsspec and its plugin") from err
        try:
            filesystem, path = url_to_fs(location)
        except (ImportError, ValueError) as exc:
            raise TransferError(f"storage location {location!r}: {exc}") from exc
        return fs.PyFileSystem(fs.FSSpecHandler(filesystem)), path


def storage_uri(location: str, sha256: str, name: str) -> str:
    """Where a file of content ``sha256`` lies in the storage location."""
    return f"{location.rstrip('/')}/{STORAGE_OBJECTS}/{sha256}/{name}"


def upload(path: Path, uri: str, size: int) -> None:
    """Copy ``path`` to ``uri`` unless a file of that size is there already (the name holds its hash)."""
    from pyarrow import fs

    filesystem, target = open_storage(uri)
    info = filesystem.get_file_info(target)
    if info.type == fs.FileType.File and info.size == size:
        return
    filesystem.create_dir(target.rsplit("/", 1)[0], recursive=True)
    partial = f"{target}.{os.getpid()}.part"
    with open(path, "rb") as source, filesystem.open_output_stream(partial) as sink:
        shutil.copyfileobj(source, sink, 1 << 22)
    filesystem.move(partial, target)


def node_cache(root: str | Path | None = None) -> Path:
    """This node's cache folder: ``root``, else ``$SPARED_NODE_CACHE``, else ``<temp>/spared-ray-cache``."""
    chosen = root or os.environ.get(NODE_CACHE_ENV) or Path(tempfile.gettempdir()) / "spared-ray-cache"
    path = Path(chosen).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


class Shipper:
    """Driver side: turns local files into :class:`FileRef` s, each content shipped once.

    Parameters
    ----------
    storage
        Storage location every node reads (files are copied there); ``None``: Ray's object store.
    """

    def __init__(self, storage: str | None = None) -> None:
        self.storage = storage
        self._shipped: dict[str, FileRef] = {}

    def ship(self, path: str | Path, sha256: str | None = None) -> FileRef:
        """The :class:`FileRef` of ``path`` (``sha256``: its hash when already known)."""
        path = Path(path)
        if not path.is_file():
            raise TransferError(f"cannot ship {path}: no such file on the driver")
        digest = sha256 or sha256sum(path)
        if digest in self._shipped:
            return dataclasses.replace(self._shipped[digest], name=path.name)
        size = path.stat().st_size
        if self.storage is not None:
            uri = storage_uri(self.storage, digest, path.name)
            upload(path, uri, size)
            ref = FileRef(path.name, digest, size, uri=uri)
        else:
            import ray

            ref = FileRef(path.name, digest, size, ref=[ray.put(np.fromfile(path, dtype=np.uint8))])
        self._shipped[digest] = ref
        return ref


def ship_folder(folder: str | Path, shipper: Shipper) -> list[tuple[str, FileRef]]:
    """Driver side: every file under ``folder`` as (path relative to it, :class:`FileRef`)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise TransferError(f"cannot ship {folder}: no such folder on the driver")
    return [(path.relative_to(folder).as_posix(), shipper.ship(path))
            for path in sorted(folder.rglob("*")) if path.is_file()]


def fetch_files(files: list[tuple[str, FileRef]], cache: Path) -> Path:
    """Node side: the folder of a :func:`ship_folder` listing rebuilt in ``cache/folders/`` (files linked from the
    cache of shipped inputs), once per listing."""
    import hashlib

    from filelock import FileLock

    listing = hashlib.sha256("\n".join(f"{name} {ref.sha256}" for name, ref in files).encode()).hexdigest()[:16]
    folder = cache / "folders" / listing
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not (folder / ".complete").is_file():
            (folder / "data").mkdir(exist_ok=True)  # an empty folder stays a folder
            for name, ref in files:
                target = folder / "data" / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.unlink(missing_ok=True)
                os.link(fetch(ref, cache), target)
            (folder / ".complete").write_text(listing)
    return folder / "data"


def ship_path(path: str | Path, shipper: Shipper) -> tuple[str, Any]:
    """Driver side: a file (``("file", FileRef)``) or a folder (``("folder", listing)``, :func:`ship_folder`)."""
    path = Path(path).expanduser()
    if path.is_dir():
        return "folder", ship_folder(path, shipper)
    if not path.is_file():
        raise TransferError(f"cannot ship {path}: no such file or folder on the driver")
    return "file", shipper.ship(path)


def fetch_path(shipped: tuple[str, Any], cache: Path) -> Path:
    """Node side: the local copy of what :func:`ship_path` shipped."""
    kind, content = shipped
    return fetch_files(content, cache) if kind == "folder" else fetch(content, cache)


def fetch(ref: FileRef, cache: Path) -> Path:
    """Node side: the local copy of ``ref`` in ``cache/inputs/<sha256>/``, fetched and checked on first use."""
    from filelock import FileLock

    folder = cache / "inputs" / ref.sha256
    target = folder / ref.name
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / ".lock")):
        if target.is_file() and target.stat().st_size == ref.size:
            return target
        with atomic_path(target) as tmp:
            _copy_in(ref, tmp)
            found = sha256sum(tmp)
            if found != ref.sha256:
                raise TransferError(f"{ref.name} arrived damaged on this node (sha256 {found[:12]}…, expected "
                                    f"{ref.sha256[:12]}…); run again, and check the storage location if it persists")
    return target


def fetch_folder(location: str, cache: Path) -> Path:
    """Node side: a local copy of a folder in a storage location (``s3://bucket/raw``, ...), copied into
    ``cache/folders/`` once per state of the folder (its files' names, sizes and modification times: a folder
    changed in the storage location is copied anew, never served stale); a local path is returned as it is (it
    must exist on this node)."""
    import hashlib

    from filelock import FileLock
    from pyarrow import fs

    if "://" not in location or location.startswith("file://"):
        path = Path(location.removeprefix("file://")).expanduser()
        if not path.exists():
            raise TransferError(f"{path} does not exist on node {socket.gethostname()}: on a cluster, give a folder "
                                f"every node can read (a network mount) or a storage URI (s3://..., gs://...)")
        return path
    filesystem, path = open_storage(location)
    try:
        infos = filesystem.get_file_info(fs.FileSelector(path, recursive=True))
    except FileNotFoundError as err:
        raise TransferError(f"{location} does not exist (seen from node {socket.gethostname()}); give the folder "
                            f"that holds the dataset's raw files") from err
    except OSError as err:
        raise TransferError(f"cannot list {location} from node {socket.gethostname()} ({err})") from err
    listing = sorted((info.path.removeprefix(path).lstrip("/"), info.size, info.mtime_ns) for info in infos
                     if info.type == fs.FileType.File)
    if not listing:
        raise TransferError(f"{location} holds no files (seen from node {socket.gethostname()}); give the folder "
                            f"that holds the dataset's raw files")
    state = hashlib.sha256(repr([location, listing]).encode()).hexdigest()[:16]
    folder = cache / "folders" / state
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not (folder / ".complete").is_file():
            shutil.rmtree(folder / "data", ignore_errors=True)  # what an interrupted copy left
            try:
                fs.copy_files(path, str(folder / "data"), source_filesystem=filesystem,
                              destination_filesystem=fs.LocalFileSystem())
            except OSError as err:
                raise TransferError(f"cannot copy {location} to node {socket.gethostname()} ({err})") from err
            (folder / ".complete").write_text(location)
    return folder / "data"


def _copy_in(ref: FileRef, tmp: Path) -> None:
    """Write the bytes of ``ref`` to ``tmp`` from wherever they are."""
    if ref.data is not None:
        _write_bytes(ref.data, tmp)
    elif ref.ref is not None:
        import ray

        _write_bytes(ray.get(ref.ref[0]), tmp)
    elif ref.uri is not None:
        filesystem, source = open_storage(ref.uri)
        try:
            with filesystem.open_input_stream(source) as stream, open(tmp, "wb") as sink:
                shutil.copyfileobj(stream, sink, 1 << 22)
        except OSError as err:
            raise TransferError(f"cannot read {ref.uri} on this node ({err}); the storage location must be "
                                f"readable from every node") from err
    else:
        raise TransferError(f"{ref.name}: the file reference holds neither bytes, an object nor a URI")


def _write_bytes(data: np.ndarray, path: Path) -> None:
    with open(path, "wb") as sink:
        sink.write(memoryview(np.ascontiguousarray(data)))


def send_back(path: str | Path, storage: str | None = None) -> FileRef:
    """Node side: a :class:`FileRef` of a result file for the driver (its bytes inline, or via ``storage``)."""
    path = Path(path)
    digest, size = sha256sum(path), path.stat().st_size
    if storage is not None:
        uri = storage_uri(storage, digest, path.name)
        upload(path, uri, size)
        return FileRef(path.name, digest, size, uri=uri)
    return FileRef(path.name, digest, size, data=np.fromfile(path, dtype=np.uint8))


def receive(ref: FileRef, dest: str | Path) -> Path:
    """Driver side: write the file of ``ref`` at ``dest`` (atomically, checked against its hash)."""
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        _copy_in(ref, tmp)
        if sha256sum(tmp) != ref.sha256:
            raise TransferError(f"{ref.name} arrived damaged at the driver (sha256 mismatch); run again")
    return dest


def pack_dirs(root: Path, names: list[str], archive: Path) -> Path:
    """Write an uncompressed tar of the folders ``root/name`` (checkpoints do not compress) at ``archive``."""
    with tarfile.open(archive, mode="w") as tar:
        for name in names:
            tar.add(root / name, arcname=name)
    return archive


def archive_folders(archive: Path) -> list[str]:
    """The top-level folders of a :func:`pack_dirs` archive."""
    with tarfile.open(archive, mode="r") as tar:
        return sorted({m.name.split("/", 1)[0] for m in tar.getmembers()})


def unpack_dir(archive: Path, name: str, dest: Path) -> Path:
    """Write the folder ``name`` of a :func:`pack_dirs` archive at ``dest`` atomically (replacing a folder there)."""
    with tarfile.open(archive, mode="r") as tar, atomic_dir(dest) as tmp:
        members = [m for m in tar.getmembers() if m.name.startswith(f"{name}/")]
        for member in members:
            member.name = member.name.split("/", 1)[1]
        tar.extractall(tmp, members=members, filter="data")
    return dest

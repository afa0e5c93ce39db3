"""What a file is (from its first bytes) and its sha256: checked before a download is trusted or unpacked.

A server that answers with an HTML login page, a proxy error or a truncated transfer leaves a file whose name
says ``.tar.gz`` but whose bytes say otherwise; recording its hash as the reference (trust on first use) would
then reject the real file later. :func:`check_format` compares the kind the name promises with the kind the
bytes show.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

#: Kind each file-name suffix promises (longest suffix first).
SUFFIX_KINDS: tuple[tuple[str, str], ...] = (
    (".tar.gz", "gzip"), (".tgz", "gzip"), (".gz", "gzip"), (".zip", "zip"), (".tar", "tar"),
    (".h5", "hdf5"), (".hdf5", "hdf5"), (".h5ad", "hdf5"),
    (".tif", "tiff"), (".tiff", "tiff"), (".btf", "tiff"), (".jpg", "jpeg"), (".jpeg", "jpeg"), (".png", "png"),
    (".parquet", "parquet"), (".json", "text"), (".csv", "text"), (".tsv", "text"), (".txt", "text"),
    (".mtx", "text"),
)
_DESCRIPTION = {"gzip": "gzip data (.gz, .tar.gz)", "zip": "a zip archive", "tar": "a tar archive",
                "hdf5": "an HDF5 file", "tiff": "a TIFF image", "jpeg": "a JPEG image", "png": "a PNG image",
                "parquet": "a Parquet table", "text": "text", "html": "an HTML page", "empty": "an empty file",
                "bzip2": "bzip2 data", "xz": "xz data", "pdf": "a PDF document"}
_HDF5 = b"\x89HDF\r\n\x1a\n"


def sha256sum(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class FormatError(ValueError):
    """A file's content is not what its name says (e.g. an HTML page saved as ``.tar.gz``)."""


def expected_kind(name: str) -> str | None:
    """The kind of file a name promises (``"gzip"``, ``"hdf5"``, ``"tiff"``, ...), or ``None`` when unknown."""
    lower = name.lower()
    for suffix, kind in SUFFIX_KINDS:
        if lower.endswith(suffix):
            return kind
    return None


def sniff(path: str | Path) -> str | None:
    """The kind of file the first bytes of ``path`` show, or ``None`` when unrecognised."""
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if not head:
        return "empty"
    for magic, kind in ((b"\x1f\x8b", "gzip"), (b"PK\x03\x04", "zip"), (b"PK\x05\x06", "zip"),
                        (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"), (b"II+\x00", "tiff"), (b"MM\x00+", "tiff"),
                        (b"\xff\xd8\xff", "jpeg"), (b"\x89PNG\r\n\x1a\n", "png"), (b"PAR1", "parquet"),
                        (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"%PDF", "pdf")):
        if head.startswith(magic):
            return kind
    if any(head[offset:offset + 8] == _HDF5 for offset in (0, 512, 1024, 2048)):
        return "hdf5"
    if head[257:262] == b"ustar":
        return "tar"
    start = head.lstrip()[:64].lower()
    if start.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
        return "html"
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError:
            return None
        return "text"
    return None


def check_format(path: str | Path, name: str | None = None) -> str | None:
    """Raise :class:`FormatError` when ``path``'s bytes are not the kind its name (or ``name``) promises.

    Returns the kind found (``None`` for names that promise nothing checkable). Text files are accepted when the
    first 4 kB decode as UTF-8 (a UTF-8 character cut at the 4 kB boundary is tolerated).
    """
    path = Path(path)
    want = expected_kind(name or path.name)
    if want is None:
        return None
    found = sniff(path)
    if found == want or (want == "text" and found is None and _text_cut_at_boundary(path)):
        return found
    with open(path, "rb") as fh:
        head = fh.read(24)
    what = _DESCRIPTION.get(found or "", f"unrecognised bytes (first bytes {head!r})")
    raise FormatError(f"{path} should be {_DESCRIPTION[want]} (from its name) but its content is {what}")


def _text_cut_at_boundary(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if b"\x00" in head:
        return False
    try:
        head[:-3].decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True

"""Finding files in unpacked archives: hidden entries skipped, several matches resolved deterministically.

Researcher-made archives carry macOS debris (``__MACOSX/`` folders, ``._name`` AppleDouble files, ``.DS_Store``)
that ``pathlib`` globbing matches like real files. Every pattern and folder scan of spared goes through
:func:`visible_glob` / :func:`visible_files`, which skip any entry whose path *below the scanned folder* has a
component starting with ``.`` or named ``__MACOSX`` (the folder itself may lie anywhere, e.g. under ``~/.local``).
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

MACOS_FOLDER = "__MACOSX"
_GZ = ".gz"


def is_hidden(path: Path, root: Path) -> bool:
    """Whether ``path`` (below ``root``) is hidden: a component starting with ``.`` or a ``__MACOSX`` folder."""
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        parts = path.parts
    return any(part.startswith(".") or part == MACOS_FOLDER for part in parts)


def visible_files(root: Path) -> list[Path]:
    """Every regular file below ``root`` (recursively, links followed), hidden entries skipped, sorted."""
    out: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a link back up the tree: walk each real folder once
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != MACOS_FOLDER)
        base = Path(dirpath)
        out.extend(base / name for name in filenames if not name.startswith(".") and (base / name).is_file())
    return sorted(out)


def is_glob(pattern: str) -> bool:
    """Whether ``pattern`` holds a glob character (``*``, ``?`` or ``[``), i.e. is matched rather than named."""
    return any(c in pattern for c in "*?[")


def visible_glob(folder: Path, pattern: str, want_dir: bool | None = None) -> list[Path]:
    """Matches of ``pattern`` under ``folder`` that are not hidden, sorted; ``want_dir`` keeps only folders
    (True) or only files (False)."""
    found = []
    for p in folder.glob(pattern):
        if is_hidden(p, folder):
            continue
        if want_dir is not None and (p.is_dir() if want_dir else p.is_file()) is False:
            continue
        found.append(p)
    return sorted(found)


def pattern_matches(pattern: str, path: str) -> bool:
    """Whether the relative POSIX ``path`` matches the glob ``pattern`` component by component."""
    pat, parts = PurePosixPath(pattern).parts, PurePosixPath(path).parts
    return len(pat) == len(parts) and all(fnmatch.fnmatchcase(p, q) for p, q in zip(parts, pat, strict=True))


def pattern_under(pattern: str, folder: str) -> str | None:
    """The rest of ``pattern`` below ``folder`` when the pattern's leading components match the folder's (``""``
    for the folder itself), else ``None``."""
    pat, parts = PurePosixPath(pattern).parts, PurePosixPath(folder).parts
    if len(pat) < len(parts) or not all(fnmatch.fnmatchcase(p, q) for p, q in zip(parts, pat, strict=False)):
        return None
    return PurePosixPath(*pat[len(parts):]).as_posix() if len(pat) > len(parts) else ""


def _stem(path: Path) -> str:
    name = path.name
    return name[: name.index(".")] if "." in name.lstrip(".") else name


def choose(matches: Sequence[Path], stems: Iterable[str] = (), what: str = "pattern") -> tuple[Path, str | None]:
    """One of several matches, chosen deterministically, and a warning naming the others (``None`` if unique).

    A file and its gzipped twin (``x.tif``, ``x.tif.gz``, as left by decompressing beside the original) count as
    one, the decompressed file winning silently. Otherwise the order is: a match whose stem (name before the first
    dot) equals one of ``stems`` (e.g. the slide id), then a ``.jpg``, then the first in sorted order.
    """
    if not matches:
        raise ValueError("choose() needs at least one match")
    names = {p.name for p in matches}
    unique = sorted(p for p in matches if not (p.name.endswith(_GZ) and p.name[: -len(_GZ)] in names))
    if len(unique) == 1:
        return unique[0], None
    wanted = {s.lower() for s in stems if s}
    ranked = sorted(unique, key=lambda p: (_stem(p).lower() not in wanted,
                                           not p.name.lower().endswith((".jpg", ".jpeg")), str(p)))
    chosen = ranked[0]
    others = ", ".join(repr(p.name) for p in ranked[1:6]) + (", ..." if len(ranked) > 6 else "")
    return chosen, (f"{what} matches {len(unique)} entries; using {chosen.name!r} (exact stem, then .jpg, then "
                    f"sorted first), not {others}")

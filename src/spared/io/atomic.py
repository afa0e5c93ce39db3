"""Atomic file writes: a temporary file beside the target, then a rename, so a half-written file is never read."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (parents created); on success it replaces ``path``.

    On any error the temporary file is removed and ``path`` is left as it was. ``suffix`` ends the temporary
    name, for writers that insist on an extension (``.npz``, ``.h5ad``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_h5ad(adata: Any, path: str | Path, compression: str | None = None) -> Path:
    """Write ``adata`` to ``path`` atomically; returns the path."""
    with atomic_path(path, ".h5ad") as tmp:
        adata.write_h5ad(tmp, compression=compression)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)

"""Atomic file writes: a temporary file beside the target, then a rename, so a half-written file is never read."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any


def write_h5ad(adata: Any, path: str | Path, compression: str | None = None) -> Path:
    """Write ``adata`` to ``path`` atomically (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".h5ad.part", dir=path.parent)
    os.close(fd)
    try:
        adata.write_h5ad(tmp, compression=compression)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path

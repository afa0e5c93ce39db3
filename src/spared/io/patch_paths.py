"""Where a collection's patch store lives, so that it travels with the ``.h5ad`` (path policy).

The rule, stated once (``docs/data_model.md``):

- A processed ``NAME.h5ad`` keeps its patches in ``NAME.patches.h5`` **beside it**, and records that file in
  ``uns["spared"]["patches"]["path"]`` **relative to the folder of the .h5ad** (normally just its name). Moving
  or copying the two files together (another folder, another machine) keeps the patches.
- In memory the path is absolute: :func:`read_h5ad` resolves it against the file read, and
  :func:`spared.io.atomic.write_h5ad` writes it relative to the new file, first placing the store beside the
  new file (a hard link, else a copy) when it lies elsewhere. A collection read with plain ``anndata`` keeps
  the relative path; :func:`store_path` then needs the ``.h5ad``'s location (``h5ad=``) and says so.
- Patches of another size or scale, cut on demand, are cached once beside the ``.h5ad`` as
  ``NAME.patches_<size>_<scale>.h5`` (:func:`on_demand_file`); for a collection that was never written (or
  whose folder is read-only) under ``$SPARED_DATA/patches/<content digest>/``.
- A missing store is a ``FileNotFoundError`` naming the file expected and where it came from.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

STORE_SUFFIX = ".patches.h5"

_FILES: dict[int, tuple[weakref.ReferenceType, Path]] = {}


def store_file(h5ad: str | Path, size: int | None = None, scale: float | None = None) -> Path:
    """The store beside ``h5ad``: ``NAME.patches.h5``, or ``NAME.patches_<size>_<scale>.h5`` for another size."""
    h5ad = Path(h5ad)
    stem = h5ad.name.removesuffix(".h5ad")
    if size is None:
        return h5ad.with_name(stem + STORE_SUFFIX)
    return h5ad.with_name(f"{stem}.patches_{int(size)}_{float(scale if scale is not None else 1.0):g}.h5")


def remember_file(adata: Any, path: str | Path) -> None:
    """Record (in memory, for as long as ``adata`` lives) that ``adata`` was read from or written to ``path``."""
    key = id(adata)

    def forget(ref: weakref.ReferenceType) -> None:
        if _FILES.get(key, (None,))[0] is ref:
            del _FILES[key]

    _FILES[key] = (weakref.ref(adata, forget), Path(path).resolve())


def file_of(adata: Any) -> Path | None:
    """The ``.h5ad`` ``adata`` was last read from or written to by spared, or ``None``."""
    entry = _FILES.get(id(adata))
    return entry[1] if entry is not None and entry[0]() is adata else None


def recorded(adata: Any) -> dict[str, Any]:
    """``uns["spared"]["patches"]`` as a dict (empty when no store is recorded)."""
    spared = adata.uns.get("spared", {})
    return dict(spared.get("patches", {})) if hasattr(spared, "get") else {}


def store_path(adata: Any, h5ad: str | Path | None = None, must_exist: bool = True) -> Path:
    """The absolute path of the patch store recorded in ``adata``.

    A relative record is resolved against the folder of ``h5ad``, else of the file spared read ``adata`` from.
    Raises ``KeyError`` when no store is recorded and ``FileNotFoundError`` naming the store (and how it was
    found) when it is missing and ``must_exist``.
    """
    entry = recorded(adata)
    if not entry.get("path"):
        raise KeyError("adata.uns['spared']['patches'] is missing: no patch store is recorded; cut patches with "
                       "`spared process IN OUT` (when the input has an image), spared.datasets.get, or "
                       "spared.io.patches.extract_patches")
    path = Path(str(entry["path"]))
    source = Path(h5ad).resolve() if h5ad is not None else file_of(adata)
    if not path.is_absolute():
        if source is None:
            raise FileNotFoundError(
                f"the patch store is recorded as {str(path)!r}, relative to the folder of its .h5ad, but where this "
                f"AnnData was read from is unknown; read it with spared.io.patch_paths.read_h5ad(PATH) (or pass "
                f"h5ad=PATH) so that the store beside the file is found")
        path = source.parent / path
    if must_exist and not path.is_file():
        origin = f" (recorded beside {source})" if source is not None else ""
        raise FileNotFoundError(f"patch store {path} not found{origin}: copy it along with the .h5ad (it belongs "
                                f"beside it, as {store_file(source or path).name}), or cut the patches again "
                                f"(`spared process RAW OUT`, or spared.io.patches.extract_patches)")
    return path


def read_h5ad(path: str | Path) -> Any:
    """Read a spared ``.h5ad``; its patch store's path, recorded relative to the file, becomes absolute."""
    import anndata as ad

    adata = ad.read_h5ad(path)
    remember_file(adata, path)
    entry = recorded(adata)
    if entry.get("path") and not Path(str(entry["path"])).is_absolute():
        adata.uns["spared"]["patches"] = {**entry, "path": str(store_path(adata, path, must_exist=False))}
    return adata


@contextmanager
def portable_store(adata: Any, out: str | Path) -> Iterator[None]:
    """While ``adata`` is written to ``out``: its store beside ``out`` and recorded relative to ``out``'s folder.

    A store elsewhere (another folder) is hard-linked, else copied, to ``store_file(out)``; a missing one is
    recorded relative anyway (reading it later names the file). The in-memory record stays absolute.
    """
    entry = recorded(adata)
    if not entry.get("path"):
        yield
        return
    out = Path(out).resolve()
    current = store_path(adata, must_exist=False)
    target = current
    if current.is_file() and current.parent != out.parent:
        target = store_file(out)
        _link_or_copy(current, target)
    adata.uns["spared"]["patches"] = {**entry, "path": os.path.relpath(target, out.parent)}
    try:
        yield
    finally:
        adata.uns["spared"]["patches"] = {**entry, "path": str(target)}
    remember_file(adata, out)


def _link_or_copy(source: Path, target: Path) -> None:
    """Make ``target`` hold ``source``'s bytes: a hard link when the file system allows it, else a copy."""
    from spared.io.atomic import atomic_path

    if target.exists() and os.path.samefile(source, target):
        return
    with atomic_path(target) as tmp:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


def on_demand_file(adata: Any, size: int, scale: float) -> Path:
    """Where patches of ``size`` and ``scale`` cut on demand are cached: beside the collection's ``.h5ad``
    (or its recorded store) when that folder is writable, else under ``$SPARED_DATA/patches/<digest>/``."""
    from spared.io.atomic import OutputPathError, check_writable_dir
    from spared.io.download import data_dir

    home = file_of(adata)
    if home is None and recorded(adata).get("path"):
        try:
            store = store_path(adata)
            home = store.with_name(store.name.removesuffix(STORE_SUFFIX) + ".h5ad")
        except (FileNotFoundError, KeyError):
            home = None
    if home is not None:
        try:
            check_writable_dir(home.parent)
            return store_file(home, size, scale)
        except OutputPathError:
            pass
    return data_dir() / "patches" / content_digest(adata) / f"patches_{int(size)}_{float(scale):g}.h5"


def content_digest(adata: Any) -> str:
    """A digest of what patches depend on: spot names and coordinates, and each slide's image (its file path
    and size, or the bytes of its hires/lowres image) with its scale factors."""
    digest = hashlib.sha256()
    digest.update("\0".join(map(str, adata.obs_names)).encode())
    if "spatial" in adata.obsm:
        digest.update(np.ascontiguousarray(adata.obsm["spatial"], dtype=np.float64).tobytes())
    for slide, entry in sorted(dict(adata.uns.get("spatial", {})).items()):
        digest.update(str(slide).encode())
        digest.update(repr(sorted(dict(entry.get("scalefactors", {})).items())).encode())
        fullres = entry.get("fullres_path")
        if fullres:
            stat = Path(fullres).stat() if Path(fullres).is_file() else None
            digest.update(f"{fullres}:{stat.st_size if stat else -1}:{stat.st_mtime_ns if stat else -1}".encode())
        for kind, image in sorted(dict(entry.get("images", {})).items()):
            digest.update(kind.encode())
            digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()[:16]

"""Ready-to-use SpaRED collections: download → read → process → patches, cached by a hash of the parameters.

>>> adata = spared.datasets.get("villacampa_lung_organoid")        # doctest: +SKIP
>>> spared.datasets.download("villacampa_lung_organoid", source="/shared/xjtv62ncwr")  # doctest: +SKIP
>>> adata = spared.datasets.get_local("path/to/spaceranger/outs")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spared.config import ProcessingConfig
from spared.io.atomic import write_h5ad
from spared.io.patch_paths import read_h5ad

__all__ = ["CacheError", "cache_paths", "download", "get", "get_local"]


def _digest(payload: dict[str, Any]) -> str:
    from spared import __version__
    from spared.pp.protocol import PROTOCOL_REVISION

    blob = json.dumps({**payload, "spared": __version__, "protocol": PROTOCOL_REVISION}, sort_keys=True,
                      default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _resolve_config(spec: Any, config: ProcessingConfig | dict[str, Any] | None) -> ProcessingConfig:
    """``None``: the dataset's settings; a dict: overrides of them; a ProcessingConfig: used as given."""
    if isinstance(config, ProcessingConfig):
        return config.replace(organism=spec.organism)
    return spec.processing_config(None).replace(**(config or {}))


def cache_paths(name: str, config: ProcessingConfig | dict[str, Any] | None = None,
                data_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Where :func:`get` caches ``name`` processed with ``config``: ``(h5ad, patch store)``.

    The file stem is a hash of the dataset key, the full processing configuration, the spared version and the
    protocol revision.
    """
    from spared.catalog import load_spec

    spec = load_spec(name)
    return _cache_paths(spec.key, _resolve_config(spec, config), data_dir)


def _cache_paths(key: str, cfg: ProcessingConfig, data_dir: str | Path | None) -> tuple[Path, Path]:
    from spared.io.download import data_dir as default_data_dir

    root = Path(data_dir) if data_dir is not None else default_data_dir()
    stem = _digest({"dataset": key, "config": cfg.to_dict()})
    folder = root / key / "processed"
    return folder / f"{stem}.h5ad", folder / f"{stem}.patches.h5"


class CacheError(OSError):
    """A processed cache file that cannot be read (damaged); rebuilding it with ``force=True`` fixes it."""


def _load_cached(h5ad: Path, patch_file: Path, patches: bool, cfg: ProcessingConfig,
                 rebuild: str = "force=True") -> Any | None:
    if not h5ad.is_file():
        return None
    try:
        adata = read_h5ad(h5ad)
    except Exception as exc:  # h5py/anndata raise many types for a damaged file
        raise CacheError(f"the processed cache {h5ad} cannot be read ({type(exc).__name__}: {exc}); it is damaged "
                         f"(interrupted copy, full disk?). Rebuild it with {rebuild}") from exc
    if not patches:
        return adata
    if not patch_file.is_file():
        return _add_patches(adata, h5ad, patch_file, cfg)
    recorded = dict(adata.uns.setdefault("spared", {}).get("patches", {}))
    adata.uns["spared"]["patches"] = {**recorded, "path": str(patch_file.resolve()), "size": cfg.patch_size,
                                      "scale": cfg.patch_scale}
    return adata


def _add_patches(adata: Any, h5ad: Path, patch_file: Path, cfg: ProcessingConfig, progress: bool = True) -> Any:
    """:func:`add_patches` with the configuration's size and scale, then write the AnnData to ``h5ad``."""
    add_patches(adata, patch_file, cfg.patch_size, cfg.patch_scale, cfg.slide_key, progress)
    write_h5ad(adata, h5ad)
    return adata


def add_patches(adata: Any, patch_file: str | Path, patch_size: int = 224, patch_scale: float = 1.0,
                slide_key: str = "slide_id", progress: bool = True) -> bool:
    """Cut patches from the best image of each slide into ``patch_file`` and record them in ``adata``.

    With no image at all for some slide, patches are skipped (recorded in ``uns['spared']['warnings']``) and
    ``False`` is returned; the expression data stays usable.
    """
    from spared.io.patches import extract_patches, image_source
    from spared.io.provenance import record_warning

    spatial = adata.uns.get("spatial", {})
    blind = sorted(str(s) for s in adata.obs[slide_key].astype(str).unique()
                   if image_source(spatial.get(s, {})) is None)
    if blind:
        record_warning(adata, f"patches skipped: slide(s) {', '.join(blind)} have no image (no full-resolution "
                              f"image, no hires or lowres image with its scale factor); the expression data is "
                              f"complete, but image-based models cannot use this collection until an image is "
                              f"added (then rebuild with force=True / --force)")
        return False
    extract_patches(adata, patch_file, patch_size=patch_size, patch_scale=patch_scale, progress=progress)
    return True


def _reader_warnings(raw: Any, notes: list[str]) -> None:
    """Record layout notes and the readers' per-slide warnings in ``uns['spared']['warnings']``."""
    from spared.io.provenance import record_warning

    slides = raw.uns.get("spared", {}).get("reader", {}).get("slides", {})
    for message in [*notes, *(w for report in slides.values() for w in report.get("warnings", []))]:
        record_warning(raw, str(message))


def _build(read_raw: Callable[[], Any], cfg: ProcessingConfig, dataset: str, h5ad: Path, patch_file: Path,
           patches: bool, sources: list[dict[str, Any]], progress: bool, allow_non_integer: bool = False) -> Any:
    from spared.pp import process

    adata = read_raw()
    process(adata, cfg, progress=progress, dataset=dataset, allow_non_integer=allow_non_integer)
    adata.uns["spared"]["sources"] = {"url": [s.get("url", "") for s in sources],
                                      "sha256": [s.get("sha256") or "" for s in sources],
                                      "check": [s.get("state", "") for s in sources]}
    if patches:
        return _add_patches(adata, h5ad, patch_file, cfg, progress)
    write_h5ad(adata, h5ad)
    return adata


def download(name: str, source: str | Path | None = None, data_dir: str | Path | None = None,
             recheck: bool = False, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download catalogue dataset ``name`` (or take its files from a local folder) and check its layout.

    Parameters
    ----------
    name
        Catalogue key.
    source
        A local folder holding the dataset's archives, their unpacked folders, or one archive's contents; its
        files are linked into the data folder (nothing copied, no network). The result is the dataset a
        download gives: later :func:`get` calls find it.
    data_dir
        Data root (default ``$SPARED_DATA``).
    recheck
        Re-hash every file and record trust-on-first-use hashes again (see ``spared download --recheck``).
    progress, timeout
        Progress bars; seconds to wait for a server.

    Returns
    -------
    pathlib.Path
        The dataset folder. Raises :class:`spared.io.download.LayoutError` when the files are not laid out as
        the catalogue says.
    """
    from spared.catalog import load_spec
    from spared.io.download import fetch_dataset, resolve_slides

    spec = load_spec(name)
    folder = fetch_dataset(spec, data_dir=data_dir, progress=progress, timeout=timeout, source=source,
                           recheck=recheck)
    resolve_slides(spec, folder)
    return folder


def get(name: str, config: ProcessingConfig | dict[str, Any] | None = None, data_dir: str | Path | None = None,
        force: bool = False, patches: bool = True, progress: bool = True, source: str | Path | None = None) -> Any:
    """A processed SpaRED collection, built on first use and then loaded from the cache.

    Parameters
    ----------
    name
        Catalogue key (``spared datasets`` lists them).
    config
        ``None``: the dataset's SpaRED settings; a dict: overrides of them (e.g. ``{"top_moran_genes": 64}``);
        a :class:`~spared.config.ProcessingConfig`: used as given (its organism set from the catalogue).
    data_dir
        Cache root (default: ``spared.io.download.data_dir()``, i.e. ``$SPARED_DATA``).
    force
        Rebuild even when a cached result exists.
    patches
        Also cut image patches (``uns['spared']['patches']`` points to the store). Without any image for a
        slide, patches are skipped with a warning recorded in ``uns['spared']['warnings']``.
    progress
        Show progress bars.
    source
        Take the raw files from this local folder instead of downloading them (as :func:`download`).

    Returns
    -------
    anndata.AnnData
        Processed collection (see ``docs/data_model.md``), cached at
        ``<data_dir>/<key>/processed/<hash>.h5ad`` with its patch store ``<hash>.patches.h5`` beside it.
    """
    from spared.catalog import load_spec
    from spared.io.download import fetch_dataset, file_records, resolve_layout, status
    from spared.io.readers import read

    spec = load_spec(name)
    cfg = _resolve_config(spec, config)
    h5ad, patch_file = _cache_paths(spec.key, cfg, data_dir)
    if not force:
        cached = _load_cached(h5ad, patch_file, patches, cfg,
                              f"`spared prepare {spec.key} --force` (Python: force=True)")
        if cached is not None:
            return cached

    records: list[dict[str, Any]] = []  # filled once the files are fetched (how each file was checked)

    def read_raw() -> Any:
        # image-only files missing from a dataset already downloaded were tried then: no network for them now
        first = source is not None or status(spec, data_dir) == "absent"
        folder = fetch_dataset(spec, data_dir=data_dir, progress=progress, source=source, images=first)
        records.extend(file_records(spec, data_dir))
        slides, notes = resolve_layout(spec, folder)
        raw = read(spec.format, folder, slides, spec.organism, options=spec.reader)
        _reader_warnings(raw, notes)
        return raw

    # the catalogue's files are what they are: values that are not integer counts are processed with a warning
    return _build(read_raw, cfg, spec.key, h5ad, patch_file, patches, records, progress, allow_non_integer=True)


def get_local(path_or_adata: str | Path | Any, config: ProcessingConfig | dict[str, Any] | None = None, *,
              format: str = "visium_spaceranger", slide_id: str | None = None, patient: str | None = None,
              split: str = "train", organism: str | None = None, out_dir: str | Path | None = None,
              force: bool = False, patches: bool = True, progress: bool = True,
              allow_non_integer: bool = False) -> Any:
    """Process your own Visium slide (a Space Ranger ``outs`` folder) or a raw AnnData, with caching.

    Parameters
    ----------
    path_or_adata
        A folder in one of the reader formats (one slide), or an AnnData that already follows the raw data
        model (``spared.validate(adata, "raw")``).
    config
        :class:`~spared.config.ProcessingConfig` or a dict of overrides of the defaults.
    format
        Reader format of the folder (see :data:`spared.io.readers.READERS`). ``"st"`` and ``"hest"`` data
        (and AnnData whose reader recorded a square grid) default to ``hex_geometry=False`` unless ``config``
        sets it.
    slide_id, patient, split
        How to label the slide (default id: the folder name; patient: the slide id).
    organism
        ``"human"`` or ``"mouse"``; overrides ``config.organism``.
    out_dir
        Where to cache the result (default: ``<data_dir>/local``).
    force, patches, progress
        As in :func:`get`.
    allow_non_integer
        Process an ``X`` that is not integer counts anyway (with a warning); see :func:`spared.pp.process`.
    """
    from spared.io.readers import read

    base = ProcessingConfig()
    cfg = base.replace(**config) if isinstance(config, dict) else (config or base)
    if organism is not None:
        cfg = cfg.replace(organism=organism)
    if not isinstance(config, ProcessingConfig) and "hex_geometry" not in (config or {}):
        layout = _local_geometry(path_or_adata, format, slide_id)
        if layout is not None:
            cfg = cfg.replace(hex_geometry=layout == "hex")
    if out_dir is None:
        from spared.io.download import data_dir

        out_dir = data_dir() / "local"
    if isinstance(path_or_adata, str | Path):
        folder = Path(path_or_adata).resolve()
        if not folder.exists():
            raise FileNotFoundError(f"{folder} does not exist; give a Space Ranger outs folder or an AnnData")
        slide = {"id": slide_id or folder.name, "patient": patient or slide_id or folder.name, "split": split}
        name = slide["id"]
        identity: dict[str, Any] = {"path": str(folder), "format": format, "slide": slide}

        def read_raw() -> Any:
            raw = read(format, folder.parent if folder.is_dir() else folder, [{**slide, "path": folder.name}],
                       cfg.organism)
            _reader_warnings(raw, [])
            return raw
    else:
        from spared.data_model import validate

        adata = path_or_adata
        validate(adata, stage="raw")
        name = str(adata.uns.get("spared", {}).get("dataset", "") or "local")
        identity = {"adata": _fingerprint(adata)}

        def read_raw() -> Any:
            return adata
    stem = _digest({**identity, "config": cfg.to_dict()})
    h5ad, patch_file = Path(out_dir) / f"{stem}.h5ad", Path(out_dir) / f"{stem}.patches.h5"
    if not force:
        cached = _load_cached(h5ad, patch_file, patches, cfg)
        if cached is not None:
            return cached
    return _build(read_raw, cfg, name, h5ad, patch_file, patches, [], progress, allow_non_integer)


def _local_geometry(path_or_adata: Any, format: str, slide_id: str | None) -> str | None:
    """The spot layout of local data when known before processing: legacy ST is a square grid; a HEST sample's
    metadata names its technology; an AnnData carries what its reader recorded."""
    if not isinstance(path_or_adata, str | Path):
        from spared.io.readers import geometry

        found = geometry(path_or_adata)
        return found if found in ("hex", "square") else None
    if format == "st":
        return "square"
    if format == "hest":
        from spared.io.readers.hest import sample_geometry

        folder = Path(path_or_adata).resolve()
        return sample_geometry(folder, slide_id or folder.name)
    return None


def _fingerprint(adata: Any) -> str:
    """A content hash of a raw AnnData (names, counts, coordinates)."""
    import numpy as np
    import scipy.sparse as sp

    h = hashlib.sha256()
    for names in (adata.obs_names, adata.var_names):
        h.update("\x00".join(map(str, names)).encode())
    x = adata.X
    for part in ((x.data, x.indices, x.indptr) if sp.issparse(x) else (np.asarray(x),)):
        h.update(np.ascontiguousarray(part).tobytes())
    h.update(np.ascontiguousarray(adata.obsm["spatial"]).tobytes())
    return h.hexdigest()

"""Ready-to-use SpaRED collections: download → read → process → patches, cached by a hash of their inputs.

A processed cache is valid only for what went into it: its key hashes the dataset's catalogue entry, the
content of its raw files (their verified sha256; for an archive's content linked from a local folder, the
recorded sha256 of each linked file), every processing parameter, the protocol revision and the spared
version. A changed input makes a new cache; :func:`prepare` says what changed since the last build (each cache's
key material is kept beside it as ``<hash>.inputs.json``).

>>> adata = spared.datasets.get("villacampa_lung_organoid")        # doctest: +SKIP
>>> spared.datasets.download("villacampa_lung_organoid", source="/shared/xjtv62ncwr")  # doctest: +SKIP
>>> adata = spared.datasets.get_local("path/to/spaceranger/outs")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spared.config import ProcessingConfig
from spared.io.atomic import write_h5ad, write_text
from spared.io.patch_paths import read_h5ad

__all__ = ["CacheError", "Prepared", "cache_paths", "download", "get", "get_local", "inputs_file", "key_differences",
           "prepare"]

#: Suffix of the file beside each processed cache that holds what its key was made of.
INPUTS_SUFFIX = ".inputs.json"


def _key_material(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with the spared version and protocol revision: everything a cache key hashes."""
    from spared import __version__
    from spared.pp.protocol import PROTOCOL_REVISION

    return json.loads(json.dumps({**payload, "spared": __version__, "protocol": PROTOCOL_REVISION},
                                 sort_keys=True, default=str))


def _digest(material: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def _resolve_config(spec: Any, config: ProcessingConfig | dict[str, Any] | None) -> ProcessingConfig:
    """``None``: the dataset's settings; a dict: overrides of them; a ProcessingConfig: used as given (its
    organism set from the catalogue). An override of the organism that contradicts the catalogue is an error."""
    if isinstance(config, ProcessingConfig):
        return config.replace(organism=spec.organism)
    cfg = spec.processing_config(None).replace(**(config or {}))
    check_organism(spec, cfg)
    return cfg


def check_organism(spec: Any, cfg: ProcessingConfig) -> None:
    """Refuse a configuration whose organism is not the catalogue's for ``spec`` (its genes would not map)."""
    if cfg.organism != spec.organism:
        raise ValueError(f"dataset {spec.key!r} is {spec.organism} (catalogue); organism={cfg.organism!r} would read "
                         f"its genes as {cfg.organism} genes. Remove the organism setting (it comes from the "
                         f"catalogue)")


def _catalogue_hash(spec: Any) -> str:
    """A hash of a catalogue entry (files, slides, splits, reader options): a changed entry is a new dataset."""
    blob = json.dumps(_plain(spec), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _plain(value: Any) -> Any:
    """Dataclasses, mappings and sequences as plain JSON-able values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def cache_paths(name: str, config: ProcessingConfig | dict[str, Any] | None = None,
                data_dir: str | Path | None = None, fetch: bool = False) -> tuple[Path, Path]:
    """Where :func:`get` caches ``name`` processed with ``config``: ``(h5ad, patch store)``.

    The file stem is a hash of the catalogue entry, the content of the raw files, the full processing
    configuration, the spared version and the protocol revision. The raw files count as they are recorded now
    (no hashing: see :func:`spared.io.download.input_fingerprints`); where they are not on this machine, a cache
    built from them elsewhere stands for them (see :func:`prepare`). With ``fetch``, the raw files are first
    made known as :func:`prepare` does (checked when present; downloaded when neither they nor a cache
    standing for them are here), so that the key is the one a build here gives.
    """
    from spared.catalog import load_spec
    from spared.io.download import fetch_dataset

    spec = load_spec(name)
    cfg = _resolve_config(spec, config)
    if fetch:
        _, h5ad, patch_file, _ = _settle(spec, cfg, data_dir, lambda images: fetch_dataset(
            spec, data_dir=data_dir, images=images))
        return h5ad, patch_file
    h5ad, patch_file, _ = _cache_location(spec, cfg, data_dir)
    return h5ad, patch_file


def inputs_file(h5ad: str | Path) -> Path:
    """The file beside a processed cache ``h5ad`` that records what its key was made of (its key material)."""
    h5ad = Path(h5ad)
    return h5ad.with_name(h5ad.name.removesuffix(".h5ad") + INPUTS_SUFFIX)


def _cache_location(spec: Any, cfg: ProcessingConfig, data_dir: str | Path | None, status: str | None = None
                    ) -> tuple[Path, Path, dict[str, Any]]:
    """The cache files of ``spec`` processed with ``cfg`` and their key material; where the raw files are not
    here and no cache has the key they make, the newest cache that stands for them (:func:`_standing_cache`).
    ``status``: the raw files' :func:`~spared.io.download.raw_status` when already known (else found here)."""
    from spared.io.download import input_fingerprints, processed_dir, raw_status

    material = _key_material({"dataset": spec.key, "catalogue": _catalogue_hash(spec), "config": cfg.to_dict(),
                              "inputs": input_fingerprints(spec, data_dir)})
    stem = _digest(material)
    folder = processed_dir(spec, data_dir)
    if not (folder / f"{stem}.h5ad").is_file() and (status or raw_status(spec, data_dir)) != "downloaded":
        standing = _standing_cache(folder, material)
        if standing is not None:
            stem, material = standing
    return folder / f"{stem}.h5ad", folder / f"{stem}.patches.h5", material


def _standing_cache(folder: Path, material: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """``(stem, key material)`` of the newest cache in ``folder`` that can stand for raw files this machine does
    not hold (built on a Ray node, or here before the raw files were deleted): its recorded key material equals
    ``material`` in everything but the raw files, and each raw file's fingerprint equals the one recorded here
    wherever one is (``"absent"``: none). ``None`` when there is no such cache."""
    best: tuple[int, str, dict[str, Any]] | None = None
    for record in sorted(folder.glob(f"*{INPUTS_SUFFIX}")) if folder.is_dir() else ():
        stem = record.name.removesuffix(INPUTS_SUFFIX)
        try:
            data = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        key = {k: v for k, v in data.items() if k != "linked"} if isinstance(data, dict) else {}
        theirs = key.get("inputs")
        if (not isinstance(theirs, dict) or set(theirs) != set(material["inputs"])
                or any(key.get(k) != v for k, v in material.items() if k != "inputs")
                or any(v != "absent" and theirs[f] != v for f, v in material["inputs"].items())
                or _digest(key) != stem or not (folder / f"{stem}.h5ad").is_file()):
            continue
        mtime = record.stat().st_mtime_ns
        if best is None or mtime > best[0]:
            best = (mtime, stem, key)
    return None if best is None else (best[1], best[2])


def _settle(spec: Any, cfg: ProcessingConfig, data_dir: str | Path | None, fetch: Callable[[bool], Path],
            source: str | Path | None = None) -> tuple[Path | None, Path, Path, dict[str, Any]]:
    """Make the raw files' content known, then locate the cache: ``(raw folder, h5ad, patch store, key
    material)``. ``fetch(images)`` checks (or links from ``source``, or downloads) the raw files; it runs when
    they are here or ``source`` is given, and otherwise only when no cache stands for them (the raw folder is
    then ``None``)."""
    from spared.io.download import raw_status

    status = None if source is not None else raw_status(spec, data_dir)
    folder = fetch(source is not None) if source is not None or status == "downloaded" else None
    # nothing fetched: the raw files are as raw_status found them
    h5ad, patch_file, material = _cache_location(spec, cfg, data_dir, status if folder is None else None)
    if folder is None and not h5ad.is_file():
        folder = fetch(True)
        h5ad, patch_file, material = _cache_location(spec, cfg, data_dir)
    return folder, h5ad, patch_file, material


def _changes(h5ad: Path, material: dict[str, Any], linked: dict[str, str]) -> list[str]:
    """What differs between ``material`` and the key material of the latest other cache of the same dataset
    (``linked``: the user's files behind the inputs, with their sha256, to name those that changed)."""
    folder = h5ad.parent
    caches = [p for p in folder.glob("*.h5ad") if p != h5ad] if folder.is_dir() else []
    others = []
    for cache in caches:
        sidecar = inputs_file(cache)
        try:
            data = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("dataset") == material["dataset"]:
            others.append((sidecar.stat().st_mtime_ns, sidecar, data))
    if not others:
        return [f"the {len(caches)} cache(s) in {folder} were built by an earlier spared that did not record their "
                f"inputs"] if caches else []
    _, path, last = max(others, key=lambda item: item[0])
    lines = _differences(last, material, linked)
    return [f"since the latest cache {path.name.replace(INPUTS_SUFFIX, '.h5ad')}: " + "; ".join(lines)] if lines \
        else []


def _differences(last: dict[str, Any], material: dict[str, Any], linked: dict[str, str]) -> list[str]:
    """What differs from the key material ``last`` (with its ``linked`` files) to ``material``, one line each."""
    lines = [f"raw file {name} changed ({_short(last.get('inputs', {}).get(name))} → {_short(value)})"
             for name, value in material["inputs"].items() if last.get("inputs", {}).get(name) != value]
    old_linked, new_linked = last.get("linked", {}), linked
    edited = sorted(set(old_linked) ^ set(new_linked) | {k for k in old_linked if new_linked.get(k, old_linked[k])
                                                          != old_linked[k]})
    if lines and edited:
        lines.append(f"your file(s) behind it: {', '.join(edited[:3])}{', ...' if len(edited) > 3 else ''}")
    old_config = last.get("config", {})
    lines += [f"setting {key}: {old_config.get(key)!r} → {value!r}" for key, value in material["config"].items()
              if old_config.get(key) != value]
    lines += [f"{what}: {last.get(key)} → {material[key]}" for key, what in
              (("spared", "spared version"), ("protocol", "protocol revision"), ("catalogue", "catalogue entry"))
              if last.get(key) != material[key]]
    return lines


def key_differences(name: str, config: ProcessingConfig | dict[str, Any] | None, data_dir: str | Path | None,
                    h5ad: str | Path) -> list[str]:
    """Why :func:`get` here would not use the cache ``h5ad`` (one built elsewhere, e.g. on a Ray node, and placed
    in this data folder): how the key this data folder gives ``name`` differs from the key material recorded
    beside ``h5ad`` (from the cache's record to here). Empty when ``get`` here finds ``h5ad``."""
    from spared.catalog import load_spec
    from spared.io.download import linked_inputs

    spec = load_spec(name)
    here, _, material = _cache_location(spec, _resolve_config(spec, config), data_dir)
    h5ad = Path(h5ad)
    if here.resolve() == h5ad.resolve():
        return []
    try:
        recorded = json.loads(inputs_file(h5ad).read_text())
    except (OSError, ValueError):
        return [f"{h5ad.name} has no readable record of its inputs ({inputs_file(h5ad).name})"]
    return _differences(recorded, material, linked_inputs(spec, data_dir)) or [f"its key is {here.stem}"]


def _short(value: Any) -> str:
    text = "none" if value is None else str(value)
    return text[:12] + "…" if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else text


class CacheError(OSError):
    """A processed cache file that cannot be read (damaged), or that needs patches it cannot get; the message
    says what to do (e.g. rebuild it with ``force=True``)."""


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
        from spared.io.atomic import OutputPathError, check_writable_dir

        try:
            check_writable_dir(patch_file.parent)
        except OutputPathError as exc:
            raise CacheError(f"the processed cache {h5ad} has no patch store ({patch_file.name} is missing) and its "
                             f"folder cannot be written, so the patches cannot be cut there: use the cache without "
                             f"patches (--no-patches; Python: patches=False), make {patch_file.parent} writable, or "
                             f"build into a writable data folder (--data-dir; $SPARED_DATA)") from exc
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
           patches: bool, sources: list[dict[str, Any]], progress: bool, allow_non_integer: bool = False,
           inputs: dict[str, Any] | None = None) -> Any:
    """Read, process, cut patches and write the cache; ``inputs`` (the key material) is kept beside it and its
    raw-file fingerprints in ``uns['spared']['inputs']`` (``file`` and ``content`` lists)."""
    from spared.pp import process

    adata = read_raw()
    process(adata, cfg, progress=progress, dataset=dataset, allow_non_integer=allow_non_integer)
    adata.uns["spared"]["sources"] = {"url": [s.get("url", "") for s in sources],
                                      "sha256": [s.get("sha256") or "" for s in sources],
                                      "check": [s.get("state", "") for s in sources]}
    if inputs is not None:  # two lists: file names hold "/", which HDF5 keys cannot
        files = inputs.get("inputs", {})
        adata.uns["spared"]["inputs"] = {"file": [str(k) for k in files], "content": [str(v) for v in files.values()]}
    if patches:
        _add_patches(adata, h5ad, patch_file, cfg, progress)
    else:
        write_h5ad(adata, h5ad)
    if inputs is not None:
        write_text(inputs_file(h5ad), json.dumps(inputs, indent=1))
    return adata


def download(name: str, source: str | Path | None = None, data_dir: str | Path | None = None,
             recheck: bool = False, progress: bool = True, timeout: float = 60.0,
             allow_external_links: bool = False) -> Path:
    """Download catalogue dataset ``name`` (or take its files from a local folder) and check its layout.

    Parameters
    ----------
    name
        Catalogue key.
    source
        A local folder holding the dataset's archives, their unpacked folders, or one archive's contents; its
        files are format-checked, hashed and linked into the data folder (nothing copied, no network). The
        result is the dataset a download gives: later :func:`get` calls find it. Given again (or another
        folder), it is compared with what is linked and linked anew where it differs.
    data_dir
        Data root (default ``$SPARED_DATA``).
    recheck
        Re-hash every file and record trust-on-first-use hashes again (see ``spared download --recheck``).
    progress, timeout
        Progress bars; seconds to wait for a server.
    allow_external_links
        Follow links inside ``source`` that lead out of it (refused otherwise).

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
                           recheck=recheck, allow_external_links=allow_external_links)
    resolve_slides(spec, folder)
    return folder


@dataclass
class Prepared:
    """What :func:`prepare` did: the collection, its cache files, whether it was built (else loaded) and, when
    built while other caches of the dataset exist, what changed since the latest of them."""

    adata: Any
    h5ad: Path
    patches: Path
    built: bool
    changes: list[str]


def get(name: str, config: ProcessingConfig | dict[str, Any] | None = None, data_dir: str | Path | None = None,
        force: bool = False, patches: bool = True, progress: bool = True, source: str | Path | None = None,
        allow_external_links: bool = False) -> Any:
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
        Take the raw files from this local folder instead of downloading them (as :func:`download`); checked
        (and used where it differs from what is linked) even when a cache exists.
    allow_external_links
        Follow links inside ``source`` that lead out of it (refused otherwise).

    Returns
    -------
    anndata.AnnData
        Processed collection (see ``docs/data_model.md``), cached at
        ``<data_dir>/<key>/processed/<hash>.h5ad`` with its patch store ``<hash>.patches.h5`` beside it; the
        hash covers the raw files' content (see the module). When it is built while caches of other inputs
        exist, what changed is printed on stderr.
    """
    done = prepare(name, config, data_dir, force, patches, progress, source, allow_external_links)
    if done.built and done.changes:
        print(f"{name}: built a new cache ({'; '.join(done.changes)})", file=sys.stderr)
    return done.adata


def prepare(name: str, config: ProcessingConfig | dict[str, Any] | None = None, data_dir: str | Path | None = None,
            force: bool = False, patches: bool = True, progress: bool = True, source: str | Path | None = None,
            allow_external_links: bool = False) -> Prepared:
    """:func:`get`, reporting where the cache lies, whether it was built, and what changed since the last build.

    The raw files are checked first whenever they are there (cheaply: a file whose size and modification time
    are unchanged is not hashed again) or a ``source`` is given, so that the cache key holds their current
    content; a dataset whose raw files were deleted after processing is keyed on their recorded hashes. Where
    the raw files are not on this machine and nothing records their hashes here (a cache built on a Ray node
    and shipped back, or linked files whose records went with the raw folder), the newest cache whose own
    record of its inputs agrees with everything else (dataset, catalogue entry, settings, version, protocol,
    and any hash recorded here) stands for them; only without one are the raw files downloaded.
    """
    from spared.catalog import load_spec
    from spared.io.atomic import check_writable_dir
    from spared.io.download import fetch_dataset, file_records, linked_inputs, resolve_layout
    from spared.io.readers import read

    spec = load_spec(name)
    cfg = _resolve_config(spec, config)

    def fetch(images: bool) -> Path:
        return fetch_dataset(spec, data_dir=data_dir, progress=progress, source=source, images=images,
                             allow_external_links=allow_external_links)

    folder, h5ad, patch_file, material = _settle(spec, cfg, data_dir, fetch, source)
    if not force:
        cached = _load_cached(h5ad, patch_file, patches, cfg,
                              f"`spared prepare {spec.key} --force` (Python: force=True)")
        if cached is not None:
            return Prepared(cached, h5ad, patch_file, False, [])
    if folder is None:
        folder = fetch(True)
        h5ad, patch_file, material = _cache_location(spec, cfg, data_dir)
    check_writable_dir(h5ad.parent)
    linked = linked_inputs(spec, data_dir)
    changes = _changes(h5ad, material, linked)
    records = file_records(spec, data_dir)

    def read_raw() -> Any:
        slides, notes = resolve_layout(spec, folder)
        raw = read(spec.format, folder, slides, spec.organism, options=spec.reader)
        _reader_warnings(raw, notes)
        return raw

    # the catalogue's files are what they are: values that are not integer counts are processed with a warning
    adata = _build(read_raw, cfg, spec.key, h5ad, patch_file, patches, records, progress, allow_non_integer=True,
                   inputs={**material, "linked": linked})
    return Prepared(adata, h5ad, patch_file, True, changes)


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
        identity: dict[str, Any] = {"path": str(folder), "format": format, "slide": slide,
                                    "content": _folder_fingerprint(folder)}

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
    material = _key_material({**identity, "dataset": name, "config": cfg.to_dict()})
    stem = _digest(material)
    h5ad, patch_file = Path(out_dir) / f"{stem}.h5ad", Path(out_dir) / f"{stem}.patches.h5"
    if not force:
        cached = _load_cached(h5ad, patch_file, patches, cfg)
        if cached is not None:
            return cached
    return _build(read_raw, cfg, name, h5ad, patch_file, patches, [], progress, allow_non_integer, material)


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


def _folder_fingerprint(path: Path) -> str:
    """A hash of the name, size and modification time of every visible file at or below ``path`` (a cheap proxy
    of its content: an edited or replaced file changes it)."""
    from spared.io.scan import visible_files

    files = [path] if path.is_file() else visible_files(path)
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path) if f != path else f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


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

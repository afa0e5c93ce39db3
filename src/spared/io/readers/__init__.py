"""Readers by raw-data format; each returns one AnnData per collection following the spared data model.

Formats (names used by the catalogue's ``format`` field):

- ``visium_spaceranger``: Space Ranger ``outs`` (10x ``.h5`` or ``.mtx`` triplet, ``spatial/``, full-res image).
- ``visium_mtx_folders``: per-slide folders with a ``matrix.mtx`` triplet and spatial files (Mendeley archives).
- ``geo_visium``: GEO supplementary files prefixed ``GSM...`` (10x ``.h5``, triplets or dense tables).
- ``h5ad``: AnnData files per slide or per collection.
- ``st``: legacy Spatial Transcriptomics sections (count table + spot file + H&E image).
- ``hest``: HEST-1k samples (``st/<id>.h5ad``, ``metadata/<id>.json``, ``wsis/<id>.tif``).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from spared.io.readers.common import ReaderError, SlideInfo, min_mapped_fraction
from spared.io.readers.geo import read_geo_visium
from spared.io.readers.h5ad import read_h5ad
from spared.io.readers.hest import read_hest, read_hest_format
from spared.io.readers.st import read_st
from spared.io.readers.visium import read_visium, read_visium_mtx_folders

#: Reader of each format: ``reader(path, slides, organism, **options) -> AnnData``.
READERS: dict[str, Callable[..., Any]] = {
    "visium_spaceranger": read_visium,
    "visium_mtx_folders": read_visium_mtx_folders,
    "geo_visium": read_geo_visium,
    "h5ad": read_h5ad,
    "st": read_st,
    "hest": read_hest_format,
}

#: Technology of the slides each format reads, when the reader does not record it per slide.
FORMAT_TECHNOLOGY: dict[str, str] = {"visium_spaceranger": "Visium", "visium_mtx_folders": "Visium",
                                     "geo_visium": "Visium", "st": "ST"}


def reader_options(format: str) -> tuple[str, ...]:
    """Keyword options the reader of ``format`` accepts beyond ``(path, slides, organism)``."""
    params = list(inspect.signature(READERS[format]).parameters.values())[3:]
    return tuple(p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD or p.kind is p.KEYWORD_ONLY)


def read(format: str, path: str | Path, slides: Sequence[Any], organism: str,
         options: Mapping[str, Any] | None = None, min_mapped_fraction: float = 0.5) -> Any:
    """Read a collection with the reader of ``format``.

    Parameters
    ----------
    format
        One of :data:`READERS`.
    path
        The dataset's folder (as returned by :func:`spared.io.download.fetch_dataset`).
    slides
        Slide descriptions (catalogue slide objects, mappings with ``id``/``patient``/``split``, or ids).
    organism
        ``"human"`` or ``"mouse"``.
    options
        Reader options (the catalogue's ``[reader]`` table), e.g. ``spot_diameter_um`` for ``st``.
    min_mapped_fraction
        Smallest fraction of each slide's genes that must map to Ensembl ids of the organism (symbols are
        mapped with the shipped GENCODE table); below it the read fails naming the organism and examples.
        Unmapped or ambiguous genes are reported in ``uns["spared"]["reader"]`` and by a warning.

    Returns
    -------
    anndata.AnnData
        Raw counts of in-tissue spots, genes indexed by Ensembl id, ``uns["spatial"]`` per slide.
    """
    from spared.data_model import validate
    from spared.io.readers import common

    if organism not in ("human", "mouse"):
        raise ValueError(f"organism must be 'human' or 'mouse', got {organism!r}")
    try:
        reader = READERS[format]
    except KeyError:
        raise ReaderError(f"unknown reader format {format!r}; known formats: {sorted(READERS)}") from None
    unknown = sorted(set(options or {}) - set(reader_options(format)))
    if unknown:
        raise ReaderError(f"reader {format!r} has no option(s) {unknown}; its options: "
                          f"{list(reader_options(format)) or 'none'}")
    with common.min_mapped_fraction(min_mapped_fraction), _one_gene_warning():  # the parameter shadows the function
        adata = reader(Path(path), slides, organism, **dict(options or {}))
    validate(adata, stage="raw")
    return adata


@contextmanager
def _one_gene_warning() -> Iterator[None]:
    """Collect the per-slide gene-mapping warnings of a read and issue them once: a 36-section collection gets one
    line (the first slide's, and how many more slides lost genes), not 36. The per-slide figures stay in
    ``uns["spared"]["reader"]["slides"]``."""
    from spared.annotation import GeneMappingWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    genes = [w for w in caught if issubclass(w.category, GeneMappingWarning)]
    for w in caught:
        if w not in genes:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if genes:
        more = len(genes) - 1
        tail = (f" (and {more} more slide(s) alike; per-slide figures in uns['spared']['reader']['slides'])"
                if more else "")
        warnings.warn(f"{genes[0].message}{tail}", GeneMappingWarning, stacklevel=3)


def _slide_reports(adata: Any) -> dict[str, dict[str, Any]]:
    return dict(adata.uns.get("spared", {}).get("reader", {}).get("slides", {}))


def technology(adata: Any) -> str:
    """The technology of a collection's slides (``"Visium"``, ``"ST"``, ``"Visium (HEST)"``, ...), from the
    reader's provenance; ``"unknown"`` when no reader recorded it (e.g. simulated data)."""
    names = []
    for report in _slide_reports(adata).values():
        name = report.get("technology") or FORMAT_TECHNOLOGY.get(str(report.get("format")), "unknown")
        names.append(f"{name} ({report['source']})" if report.get("source") else str(name))
    return ", ".join(dict.fromkeys(names)) or "unknown"


def geometry(adata: Any, by_format: bool = True) -> str:
    """``"hex"`` or ``"square"``: the spot layout the reader recorded (with ``by_format``, Visium formats count as
    hex); ``"unknown"`` when slides disagree or nothing was recorded."""
    found = {str(r.get("geometry") or ("hex" if by_format and FORMAT_TECHNOLOGY.get(str(r.get("format"))) == "Visium"
                                        else "")) for r in _slide_reports(adata).values()}
    return found.pop() if len(found) == 1 and "" not in found else "unknown"


def geometry_label(adata: Any) -> str:
    """``"hex (6)"`` or ``"square (8)"``: the neighbour graph a processed collection was built with (its
    ``hex_geometry``), else the layout its reader recorded."""
    import json

    config = adata.uns.get("spared", {}).get("config")
    hex_geometry = json.loads(config).get("hex_geometry") if isinstance(config, str) else None
    found = geometry(adata) if hex_geometry is None else "hex" if hex_geometry else "square"
    return {"hex": "hex (6)", "square": "square (8)"}.get(found, found)


__all__ = ["READERS", "ReaderError", "SlideInfo", "geometry", "geometry_label", "min_mapped_fraction", "read",
           "read_hest", "read_st", "reader_options", "technology"]

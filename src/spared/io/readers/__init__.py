"""Readers by raw-data format; each returns one AnnData per collection following the spared data model.

Formats (names used by the catalogue's ``format`` field):

- ``visium_spaceranger``: Space Ranger ``outs`` (10x ``.h5`` or ``.mtx`` triplet, ``spatial/``, full-res image).
- ``visium_mtx_folders``: per-slide folders with a ``matrix.mtx`` triplet and spatial files (Mendeley archives).
- ``geo_visium``: GEO supplementary files prefixed ``GSM...`` (10x ``.h5``, triplets or dense tables).
- ``h5ad``: AnnData files per slide or per collection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from spared.io.readers.common import ReaderError, SlideInfo, min_mapped_fraction
from spared.io.readers.geo import read_geo_visium
from spared.io.readers.h5ad import read_h5ad
from spared.io.readers.visium import read_visium, read_visium_mtx_folders

#: Reader of each format: ``reader(path, slides, organism) -> AnnData``.
READERS: dict[str, Callable[[Path, Sequence[Any], str], Any]] = {
    "visium_spaceranger": read_visium,
    "visium_mtx_folders": read_visium_mtx_folders,
    "geo_visium": read_geo_visium,
    "h5ad": read_h5ad,
}


def read(format: str, path: str | Path, slides: Sequence[Any], organism: str, min_mapped_fraction: float = 0.5) -> Any:
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
    with common.min_mapped_fraction(min_mapped_fraction):  # the parameter shadows the context manager
        adata = reader(Path(path), slides, organism)
    validate(adata, stage="raw")
    return adata


__all__ = ["READERS", "ReaderError", "SlideInfo", "min_mapped_fraction", "read"]

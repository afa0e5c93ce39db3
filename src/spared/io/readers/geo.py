"""GEO supplementary files: one flat folder, every file of a sample named ``GSM<id>_..._<10x name>[.gz]``.

A slide's files are those whose name contains the slide's ``prefix`` (default: its id), e.g.
``GSM5213483_V19S23-097_A1_S1_tissue_positions_list.csv.gz``. Counts may be a 10x ``.h5``, a prefixed
``matrix.mtx``/``barcodes.tsv``/``features.tsv`` triplet, or a dense genes × spots table (``.tsv``/``.csv``).
Images and HDF5 files that GEO gzips are decompressed once beside the original.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spared.io.readers.visium import read_visium_collection


def read_geo_visium(path: str | Path, slides: Sequence[Any], organism: str) -> Any:
    """Read Visium samples deposited on GEO as GSM-prefixed supplementary files.

    Parameters
    ----------
    path
        Folder holding the (unpacked) ``GSE..._RAW`` files, flat or with one sub-folder per slide.
    slides
        Slide descriptions; ``prefix`` (or the id) must occur in every file name of that slide.
    organism
        ``"human"`` or ``"mouse"``; symbol-only tables are mapped to Ensembl ids.
    """
    return read_visium_collection(path, slides, organism, "geo_visium", allow_tables=True, force_prefix=True)

"""Gene annotation: Ensembl ids, symbols and merged exon lengths from GENCODE (v43 human, vM33 mouse).

The shipped tables (``data/*.tsv.gz``) are built from the GENCODE basic GTFs by
``scripts/build_gene_table.py`` (see :func:`spared.annotation.build.build_gene_table`). ``gene_length`` is
the number of bases in the union of a gene's exons over all its transcripts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

__all__ = ["ORGANISMS", "gene_lengths", "gene_table", "strip_version", "symbols_to_ensembl"]

#: Supported organisms and the GENCODE table shipped for each.
ORGANISMS = {"human": "human_gencode_v43.tsv.gz", "mouse": "mouse_gencode_vM33.tsv.gz"}
_VERSION_SUFFIX = r"\.\d+(?:_PAR_Y)?$"


def _check_organism(organism: str) -> str:
    if organism not in ORGANISMS:
        raise ValueError(f"unknown organism {organism!r}; expected one of {sorted(ORGANISMS)}")
    return organism


@cache
def _load(organism: str) -> pd.DataFrame:
    import pandas as pd

    source = resources.files(__name__).joinpath("data", ORGANISMS[organism])
    with resources.as_file(source) as path:
        table = pd.read_csv(
            path, sep="\t", index_col="gene_id",
            dtype={"gene_id": str, "gene_symbol": str, "gene_length": "int64", "gene_type": "category"},
        )
    table.index.name = "gene_id"
    return table


def gene_table(organism: str) -> pd.DataFrame:
    """The gene table of an organism.

    Parameters
    ----------
    organism
        ``"human"`` (GENCODE v43) or ``"mouse"`` (GENCODE vM33).

    Returns
    -------
    pandas.DataFrame
        Index ``gene_id`` (unversioned Ensembl id); columns ``gene_symbol``, ``gene_length`` (int64, merged
        exon bases) and ``gene_type``. The file is read once per process; each call returns a copy.
    """
    return _load(_check_organism(organism)).copy()


def strip_version(ids: str | Iterable[str]) -> str | np.ndarray:
    """Remove the Ensembl version suffix (``ENSG00000141510.17`` → ``ENSG00000141510``).

    A trailing ``_PAR_Y`` after the version is removed too, so Y pseudo-autosomal copies map to the chrX
    gene. Ids without a version are returned unchanged.

    Parameters
    ----------
    ids
        One id or an iterable of ids.

    Returns
    -------
    str or numpy.ndarray
        The stripped id, or an object array of stripped ids in input order.
    """
    import pandas as pd

    if isinstance(ids, str):
        return re.sub(_VERSION_SUFFIX, "", ids)
    return pd.Index(_as_strings(ids, "ids")).str.replace(_VERSION_SUFFIX, "", regex=True).to_numpy(dtype=object)


def _as_strings(values: Iterable[str], name: str) -> list[str]:
    if isinstance(values, str):
        raise TypeError(f"{name} must be an iterable of strings, found a single string {values!r}; wrap it in a list")
    values = list(values)
    bad = [v for v in values if not isinstance(v, str)]
    if bad:
        raise TypeError(f"{name} must all be strings; found {type(bad[0]).__name__} {bad[0]!r}")
    return values


def gene_lengths(gene_ids: Iterable[str], organism: str) -> pd.Series:
    """Merged exon length of each gene.

    Parameters
    ----------
    gene_ids
        Ensembl gene ids, with or without version suffix.
    organism
        ``"human"`` or ``"mouse"``.

    Returns
    -------
    pandas.Series
        ``float64`` lengths named ``gene_length``, indexed by the ids as given; NaN for unknown ids.
    """
    import pandas as pd

    table = _load(_check_organism(organism))
    ids = _as_strings(gene_ids, "gene_ids")
    lengths = table["gene_length"].reindex(strip_version(ids)).to_numpy(dtype="float64")
    return pd.Series(lengths, index=pd.Index(ids, name="gene_id"), name="gene_length")


@cache
def _symbol_map(organism: str) -> pd.Series:
    table = _load(organism)
    ranked = table.assign(_not_coding=table["gene_type"].astype(str) != "protein_coding")
    ranked = ranked.reset_index().sort_values(["gene_symbol", "_not_coding", "gene_id"])
    ranked = ranked.drop_duplicates("gene_symbol", keep="first")
    return ranked.set_index("gene_symbol")["gene_id"]


def symbols_to_ensembl(symbols: Iterable[str], organism: str) -> pd.Series:
    """Map gene symbols to unversioned Ensembl gene ids.

    Matching is exact (case-sensitive: ``TP53`` human, ``Trp53`` mouse). When a symbol names several
    genes, the choice is deterministic: a ``protein_coding`` gene is preferred, then the smallest Ensembl id.

    Parameters
    ----------
    symbols
        Gene symbols.
    organism
        ``"human"`` or ``"mouse"``.

    Returns
    -------
    pandas.Series
        Ensembl ids named ``gene_id``, indexed by the symbols as given; NaN for unknown symbols.
    """
    import pandas as pd

    mapping = _symbol_map(_check_organism(organism))
    symbols = _as_strings(symbols, "symbols")
    ids = mapping.reindex(symbols).to_numpy(dtype=object)
    return pd.Series(ids, index=pd.Index(symbols, name="gene_symbol"), name="gene_id")

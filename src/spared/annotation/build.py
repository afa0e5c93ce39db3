"""Build the compact gene table (id, symbol, merged exon length, type, level, readthrough) from a GENCODE GTF.

Only ``gene`` and ``exon`` records are used. A gene's length is the number of bases covered by the union
of all its exons over all its transcripts (GTF coordinates are 1-based and inclusive). Genes duplicated on
the Y pseudo-autosomal region (ids ending in ``_PAR_Y``) are dropped; the chrX copy is kept. ``level`` (1
verified, 2 manually annotated, 3 automatic) and the ``readthrough_gene`` tag are kept to tell apart genes that
share a symbol (see :func:`spared.annotation.symbols_to_ensembl`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["GTF_COLUMNS", "build_gene_table", "merged_interval_lengths", "read_gtf_features"]

#: Names of the nine tab-separated GTF columns.
GTF_COLUMNS = ("chrom", "source", "feature", "start", "end", "score", "strand", "frame", "attributes")
_PAR_Y_SUFFIX = "_PAR_Y"
_CHUNK_ROWS = 200_000


def _attribute(attributes: pd.Series, key: str) -> pd.Series:
    """Extract the quoted value of ``key`` from GTF attribute strings (NaN where absent)."""
    return attributes.str.extract(rf'(?:^|;)\s*{key} "([^"]*)"', expand=False)


def read_gtf_features(gtf_path: str | os.PathLike[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stream a GTF(.gz) file and return its gene and exon records.

    Parameters
    ----------
    gtf_path
        Path of a GENCODE-style GTF, plain or gzip-compressed (detected from the ``.gz`` suffix).

    Returns
    -------
    genes
        One row per ``gene`` record: ``gene_id`` (as written, with version), ``gene_symbol``,
        ``gene_type``, ``chrom``, ``level`` (GENCODE level, 1–3) and ``readthrough`` (the gene carries the
        ``readthrough_gene`` tag).
    exons
        One row per ``exon`` record: ``gene_id``, ``start``, ``end`` (1-based, inclusive).
    """
    import pandas as pd

    path = os.fspath(gtf_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GTF file not found: {path!r}; pass the path of a GENCODE .gtf or .gtf.gz")
    reader = pd.read_csv(
        path, sep="\t", comment="#", header=None, names=list(GTF_COLUMNS), usecols=[0, 2, 3, 4, 8],
        dtype={"chrom": str, "feature": str, "start": np.int64, "end": np.int64, "attributes": str},
        chunksize=_CHUNK_ROWS, compression="infer",
    )
    gene_parts, exon_parts = [], []
    for chunk in reader:
        genes = chunk[chunk["feature"] == "gene"]
        exons = chunk[chunk["feature"] == "exon"]
        gene_parts.append(pd.DataFrame({
            "gene_id": _attribute(genes["attributes"], "gene_id"),
            "gene_symbol": _attribute(genes["attributes"], "gene_name"),
            "gene_type": _attribute(genes["attributes"], "gene_type"),
            "chrom": genes["chrom"],
            "level": pd.to_numeric(genes["attributes"].str.extract(r"(?:^|;)\s*level (\d+)", expand=False)),
            "readthrough": genes["attributes"].str.contains('tag "readthrough_gene"', regex=False),
        }))
        exon_parts.append(pd.DataFrame({
            "gene_id": _attribute(exons["attributes"], "gene_id"),
            "start": exons["start"],
            "end": exons["end"],
        }))
    if not gene_parts:
        raise ValueError(f"{path!r} holds no GTF records; expected a GENCODE annotation GTF")
    genes = pd.concat(gene_parts, ignore_index=True)
    exons = pd.concat(exon_parts, ignore_index=True)
    for name, frame in (("gene", genes), ("exon", exons)):
        if frame["gene_id"].isna().any():
            raise ValueError(f"{path!r}: some {name} records lack a gene_id attribute; is this a GTF file?")
    return genes, exons


def merged_interval_lengths(group: np.ndarray, start: np.ndarray, end: np.ndarray, n_groups: int) -> np.ndarray:
    """Total length of the union of closed integer intervals ``[start, end]`` per group.

    Parameters
    ----------
    group
        Integer group code in ``[0, n_groups)`` of each interval.
    start, end
        Inclusive interval bounds (``start <= end``).
    n_groups
        Number of groups.

    Returns
    -------
    numpy.ndarray
        ``int64`` array of length ``n_groups``: bases covered by each group's intervals (0 if none).
    """
    group = np.asarray(group, dtype=np.int64)
    start = np.asarray(start, dtype=np.int64)
    end = np.asarray(end, dtype=np.int64)
    if np.any(end < start):
        raise ValueError("every interval needs start <= end; found intervals with end < start")
    if start.size == 0:
        return np.zeros(n_groups, dtype=np.int64)
    # Shift each group into its own disjoint coordinate range so one global running maximum works per group.
    offset = int(max(end.max(), 0)) + 2 - min(int(start.min()), 0)
    order = np.lexsort((start, group))
    s = group[order] * offset + start[order]
    e = group[order] * offset + end[order]
    covered_before = np.empty_like(e)
    covered_before[0] = s[0] - 1
    covered_before[1:] = np.maximum.accumulate(e)[:-1]
    # Bases an interval adds beyond everything to its left: from max(start, covered + 1) to end.
    new_bases = np.maximum(e - np.maximum(s - 1, covered_before), 0)
    return np.bincount(group[order], weights=new_bases, minlength=n_groups).astype(np.int64)


def build_gene_table(gtf_path: str | os.PathLike[str]) -> pd.DataFrame:
    """Parse a GENCODE GTF into one row per gene with its merged exon length.

    Parameters
    ----------
    gtf_path
        Path of a GENCODE GTF (``.gtf`` or ``.gtf.gz``).

    Returns
    -------
    pandas.DataFrame
        Index ``gene_id`` (Ensembl id without version suffix), columns ``gene_symbol``, ``gene_length``
        (``int64``, bases in the union of the gene's exons), ``gene_type``, ``chrom``, ``level`` (``int64``;
        3 where the GTF gives none) and ``readthrough`` (``int64`` 0/1); sorted by ``gene_id``.
    """
    import pandas as pd

    genes, exons = read_gtf_features(gtf_path)
    genes = genes[~genes["gene_id"].str.endswith(_PAR_Y_SUFFIX)]
    exons = exons[~exons["gene_id"].str.endswith(_PAR_Y_SUFFIX)]
    if genes["gene_id"].duplicated().any():
        dup = genes.loc[genes["gene_id"].duplicated(), "gene_id"].unique()[:5].tolist()
        raise ValueError(f"{os.fspath(gtf_path)!r}: gene records repeated for {dup}; expected one per gene")
    gene_index = pd.Index(genes["gene_id"])
    code = gene_index.get_indexer(exons["gene_id"])
    if (code < 0).any():
        orphans = exons.loc[code < 0, "gene_id"].unique()[:5].tolist()
        raise ValueError(f"{os.fspath(gtf_path)!r}: exons of genes without a gene record, e.g. {orphans}")
    lengths = merged_interval_lengths(code, exons["start"].to_numpy(), exons["end"].to_numpy(), len(genes))
    if (lengths == 0).any():
        bare = genes.loc[lengths == 0, "gene_id"].tolist()[:5]
        raise ValueError(f"{os.fspath(gtf_path)!r}: genes without exon records, e.g. {bare}")
    table = pd.DataFrame({
        "gene_id": genes["gene_id"].str.replace(r"\.\d+$", "", regex=True).to_numpy(),
        "gene_symbol": genes["gene_symbol"].to_numpy(),
        "gene_length": lengths,
        "gene_type": genes["gene_type"].to_numpy(),
        "chrom": genes["chrom"].to_numpy(),
        "level": genes["level"].fillna(3).to_numpy(dtype=np.int64),
        "readthrough": genes["readthrough"].to_numpy(dtype=np.int64),
    })
    if table["gene_id"].duplicated().any():
        dup = table.loc[table["gene_id"].duplicated(), "gene_id"].unique()[:5].tolist()
        raise ValueError(f"{os.fspath(gtf_path)!r}: ids {dup} repeat once versions are stripped")
    return table.set_index("gene_id").sort_index()

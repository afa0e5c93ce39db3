"""Gene annotation: Ensembl ids, symbols and merged exon lengths from GENCODE (v43 human, vM33 mouse).

The shipped tables (``data/*.tsv.gz``) are built from the GENCODE basic GTFs by
``scripts/build_gene_table.py`` (see :func:`spared.annotation.build.build_gene_table`). ``gene_length`` is
the number of bases in the union of a gene's exons over all its transcripts.

Gene symbols map to Ensembl ids by :func:`symbols_to_ensembl`; :func:`resolve_gene_ids` does it for a
whole gene list and reports what could not be mapped (unknown or ambiguous symbols, unknown ids).
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

__all__ = ["GENCODE_RELEASES", "ORGANISMS", "GeneMappingError", "GeneMappingWarning", "check_gene_mapping",
           "gene_lengths", "gene_table", "resolve_gene_ids", "strip_version", "symbols_to_ensembl"]

#: Supported organisms and the GENCODE table shipped for each.
ORGANISMS = {"human": "human_gencode_v43.tsv.gz", "mouse": "mouse_gencode_vM33.tsv.gz"}
#: The GENCODE release behind each organism's table.
GENCODE_RELEASES = {"human": "GENCODE v43", "mouse": "GENCODE vM33"}
_VERSION_SUFFIX = r"\.\d+(?:_PAR_Y)?$"
_ENSEMBL_ID = r"^ENS[A-Z]*G\d{6,}"
_EXAMPLES = 10


class GeneMappingWarning(UserWarning):
    """Some genes could not be given an Ensembl id (unknown or ambiguous symbols, ids absent from GENCODE)."""


class GeneMappingError(ValueError):
    """Too few genes could be given an Ensembl id of the organism's annotation."""


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
            dtype={"gene_id": str, "gene_symbol": str, "gene_length": "int64", "gene_type": "category",
                   "level": "int8", "readthrough": "bool"},
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
        exon bases), ``gene_type``, ``level`` (GENCODE level: 1 verified, 2 manual, 3 automatic) and
        ``readthrough`` (bool: a readthrough transcript gene). The file is read once per process; each call
        returns a copy.
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
def _symbol_index(organism: str) -> pd.DataFrame:
    """One row per symbol: the Ensembl id it maps to (``gene_id``) and how many genes carry it (``n_genes``)."""
    table = _load(organism).reset_index()
    ranked = table.assign(_not_coding=table["gene_type"].astype(str) != "protein_coding")
    ranked = ranked.sort_values(["gene_symbol", "readthrough", "_not_coding", "level", "gene_id"])
    n_genes = ranked.groupby("gene_symbol", sort=False).size()
    first = ranked.drop_duplicates("gene_symbol", keep="first").set_index("gene_symbol")
    return first[["gene_id"]].assign(n_genes=n_genes.reindex(first.index).to_numpy())


def symbols_to_ensembl(symbols: Iterable[str], organism: str) -> pd.Series:
    """Map gene symbols to unversioned Ensembl gene ids.

    Matching is exact (case-sensitive: ``TP53`` human, ``Trp53`` mouse). When a symbol names several GENCODE
    genes (about 300 human and 150 mouse symbols, mostly small RNAs and pseudogenes), the choice is
    deterministic: genes that are not readthrough genes first (the readthrough copy of ``TBCE``, ``MATR3``
    or ``HERC3`` joins two neighbouring genes), then protein-coding genes, then the best GENCODE level
    (1 verified, 2 manual, 3 automatic), then the smallest Ensembl id (the oldest entry; ``Aldoa`` →
    ``ENSMUSG00000030695``). :func:`resolve_gene_ids` reports which symbols were ambiguous.

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

    index = _symbol_index(_check_organism(organism))
    symbols = _as_strings(symbols, "symbols")
    ids = index["gene_id"].reindex(symbols).to_numpy(dtype=object)
    return pd.Series(ids, index=pd.Index(symbols, name="gene_symbol"), name="gene_id")


def resolve_gene_ids(ids: Iterable[str] | None, symbols: Iterable[str] | None, organism: str
                     ) -> tuple[np.ndarray, dict]:
    """The unversioned Ensembl id of every gene of a source, and a report of what could not be resolved.

    A gene whose id is an Ensembl id (``ENSG…``/``ENSMUSG…``, version stripped) keeps it; any other gene is
    looked up by its symbol with :func:`symbols_to_ensembl`.

    Parameters
    ----------
    ids, symbols
        Per-gene ids and symbols (either may be ``None``: the other is used for both).
    organism
        ``"human"`` or ``"mouse"``.

    Returns
    -------
    ids
        Object array, one unversioned Ensembl id per gene; ``None`` for a symbol no GENCODE gene carries.
    report
        ``n_genes_read``; ``n_genes_by_symbol`` (looked up by symbol); ``n_genes_unmapped`` and
        ``unmapped_examples`` (symbols not in the annotation); ``n_genes_ambiguous`` and
        ``ambiguous_examples`` (genes whose symbol several annotated genes carry, each example shown as
        ``"SYMBOL -> chosen id (n genes)"``);
        ``n_ids_unknown`` and ``unknown_id_examples`` (Ensembl ids absent from the annotation: retired ids,
        another organism); ``fraction_mapped`` (genes with an id of the annotation); ``annotation``.
    """
    import numpy as np
    import pandas as pd

    _check_organism(organism)
    if ids is None and symbols is None:
        raise ValueError("genes need ids or symbols; both are missing")
    ids = np.asarray(list(ids if ids is not None else symbols), dtype=object).astype(str)
    symbols = np.asarray(list(symbols if symbols is not None else ids), dtype=object).astype(str)
    if ids.shape != symbols.shape:
        raise ValueError(f"{ids.size} gene ids but {symbols.size} gene symbols; expected one of each per gene")
    is_ensembl = pd.Series(ids, dtype=object).str.match(_ENSEMBL_ID).to_numpy(dtype=bool)
    final = np.full(ids.size, None, dtype=object)
    if is_ensembl.any():
        final[is_ensembl] = strip_version(ids[is_ensembl].tolist())
    looked_up = symbols[~is_ensembl]
    index = _symbol_index(organism).reindex(looked_up)
    found = index["gene_id"].notna().to_numpy()
    final[np.flatnonzero(~is_ensembl)[found]] = index["gene_id"].to_numpy()[found]
    ambiguous = (index["n_genes"] > 1).to_numpy()
    unknown_ids = is_ensembl & ~pd.Index(final.astype(str)).isin(_load(organism).index)
    unmapped = looked_up[~found]
    ambiguous_rows = index[ambiguous]
    ambiguous_rows = ambiguous_rows[~ambiguous_rows.index.duplicated()]
    n_mapped = int(ids.size - unmapped.size - unknown_ids.sum())
    report = {
        "annotation": GENCODE_RELEASES[organism],
        "n_genes_read": int(ids.size),
        "n_genes_by_symbol": int(looked_up.size),
        "n_genes_unmapped": int(unmapped.size),
        "unmapped_examples": [str(v) for v in pd.unique(unmapped)[:_EXAMPLES]],
        "n_genes_ambiguous": int(ambiguous.sum()),
        "ambiguous_examples": [f"{sym} -> {row.gene_id} ({int(row.n_genes)} genes)"
                               for sym, row in ambiguous_rows.iloc[:_EXAMPLES].iterrows()],
        "n_ids_unknown": int(unknown_ids.sum()),
        "unknown_id_examples": [str(v) for v in pd.unique(ids[unknown_ids])[:_EXAMPLES]],
        "fraction_mapped": n_mapped / ids.size if ids.size else float("nan"),
    }
    return final, report


def check_gene_mapping(report: dict, organism: str, min_fraction: float = 0.5, source: str = "the data",
                       accept: str = "lower min_mapped_fraction", warn: bool = True) -> None:
    """Warn about unresolved genes of a :func:`resolve_gene_ids` report; fail when too few genes resolved.

    Raises :class:`GeneMappingError` when ``report["fraction_mapped"] < min_fraction`` (the message names the
    organism, the annotation, examples, the other organism when its annotation fits better, and ``accept``:
    how the caller opts in to the loss); otherwise emits one :class:`GeneMappingWarning` when any gene was
    unmapped, ambiguous or unknown (unless ``warn`` is False: the caller reported them already).
    """
    import warnings

    n = report["n_genes_read"]
    lost = report["n_genes_unmapped"] + report["n_ids_unknown"]
    if n and report["fraction_mapped"] < min_fraction:
        examples = (report["unmapped_examples"] + report["unknown_id_examples"])[:_EXAMPLES // 2]
        hint = ""
        other = next(o for o in ORGANISMS if o != organism)
        if other_fraction := _fraction_known(report, other):
            if other_fraction > report["fraction_mapped"]:
                hint = f" {other_fraction:.0%} of the examples are {other} genes: is the organism {other!r}?"
        raise GeneMappingError(
            f"{source}: only {n - lost} of {n} genes ({report['fraction_mapped']:.1%}) have an Ensembl id of the "
            f"{organism} annotation ({report['annotation']}); the minimum is {min_fraction:.0%}. Unresolved "
            f"genes, e.g. {examples}.{hint} Check the organism, give Ensembl ids (e.g. a 'gene_ids' column in "
            f"var), or accept the loss: {accept}")
    if warn and (lost or report["n_genes_ambiguous"]):
        parts = []
        if report["n_genes_unmapped"]:
            parts.append(f"{report['n_genes_unmapped']} symbol(s) unknown to {report['annotation']} dropped "
                         f"(e.g. {report['unmapped_examples'][:3]})")
        if report["n_ids_unknown"]:
            parts.append(f"{report['n_ids_unknown']} Ensembl id(s) absent from {report['annotation']} "
                         f"(e.g. {report['unknown_id_examples'][:3]}; TPM drops them)")
        if report["n_genes_ambiguous"]:
            parts.append(f"{report['n_genes_ambiguous']} symbol(s) shared by several genes, each mapped to one "
                         f"(e.g. {report['ambiguous_examples'][:3]}; rule: spared.annotation.symbols_to_ensembl)")
        warnings.warn(f"{source}: {n - lost} of {n} genes ({report['fraction_mapped']:.1%}) mapped to {organism} "
                      f"Ensembl ids; " + "; ".join(parts), GeneMappingWarning, stacklevel=3)


def _fraction_known(report: dict, organism: str) -> float:
    """Fraction of a report's unresolved examples that ``organism``'s annotation resolves."""
    examples = report["unmapped_examples"] + report["unknown_id_examples"]
    if not examples:
        return 0.0
    ids, _ = resolve_gene_ids(examples, examples, organism)
    known = _load(organism).index
    return sum(i is not None and i in known for i in ids) / len(examples)

"""Gene identifiers: a collection's genes as unversioned Ensembl ids of its organism, before processing.

Collections read by :mod:`spared.io.readers` already have them; an AnnData a user brings (scanpy's
``read_visium`` puts symbols in ``var_names`` and the ids in ``var["gene_ids"]``, GEO tables often give symbols
only) is brought to them here, with the same rules and report as the readers
(:func:`spared.annotation.resolve_gene_ids`).
"""

from __future__ import annotations

from copy import deepcopy
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from spared.inplace import replace, target
from spared.io.readers.common import gene_labels, merge_by_id, symbols_or_gencode

if TYPE_CHECKING:
    from anndata import AnnData


def ensembl_ids(adata: AnnData, organism: str = "human", min_mapped_fraction: float = 0.5,
                copy: bool = False) -> AnnData | None:
    """Index the collection's genes by unversioned Ensembl id, symbols mapped with the shipped GENCODE table.

    Ids come from ``var["gene_ids"]`` (or ``gene_id``, ``ensembl_id``, ``ensembl``) when present, else from
    ``var_names``; symbols from ``var["gene_symbol"]``, else ``var_names``. A gene given an Ensembl id keeps it
    (version stripped); any other is looked up by symbol, a symbol several genes carry going to one of them
    by the rule of :func:`spared.annotation.symbols_to_ensembl`. Unknown symbols are dropped; genes that end up
    with the same id are summed (``X`` and every layer). The report of
    :func:`spared.annotation.resolve_gene_ids` goes to ``uns["spared"]["genes"]`` and unmapped, ambiguous or
    unknown genes raise a :class:`spared.annotation.GeneMappingWarning` (unless a spared reader built the
    collection: it warned about them already).

    Parameters
    ----------
    adata
        Raw collection (counts in ``X``).
    organism
        ``"human"`` or ``"mouse"``.
    min_mapped_fraction
        Smallest fraction of genes that must map to Ensembl ids of the organism; below it a
        :class:`spared.annotation.GeneMappingError` names the organism and examples. ``0`` accepts any loss.
    copy
        Return a new AnnData instead of changing ``adata``.

    Returns
    -------
    ``None`` (``adata`` now has the mapped genes: ``var`` and ``varm`` rows of the first gene of each id,
    ``gene_symbol`` filled), or the new AnnData when ``copy`` is True.
    """
    from anndata import AnnData

    from spared.annotation import check_gene_mapping, resolve_gene_ids

    if not 0 <= min_mapped_fraction <= 1:
        raise ValueError(f"min_mapped_fraction must lie in [0, 1], got {min_mapped_fraction!r}")
    ids, symbols = gene_labels(adata.var)
    final, report = resolve_gene_ids(ids, symbols, organism)
    check_gene_mapping(report, organism, min_mapped_fraction, source="the collection's genes",
                       accept=f"call spared.pp.ensembl_ids(adata, {organism!r}, min_mapped_fraction=0) first",
                       warn="reader" not in adata.uns.get("spared", {}))  # a spared reader warned already
    unique_ids, first, merge = merge_by_id(final)
    if unique_ids.size == adata.n_vars and (adata.var_names == unique_ids).all():
        adata = target(adata, copy)
        adata.uns["spared"] = {**dict(adata.uns.get("spared", {})), "genes": report}
        return adata if copy else None

    def merged(x):
        out = x @ merge if sp.issparse(x) else (merge.T @ np.asarray(x).T).T  # never a dense genes × ids matrix
        return sp.csr_matrix(out, dtype=x.dtype) if sp.issparse(x) else out.astype(x.dtype, copy=False)

    var = adata.var.iloc[first].copy()
    var.index = pd.Index(unique_ids, name=adata.var.index.name)
    var["gene_symbol"] = symbols_or_gencode(unique_ids, symbols[first], organism)
    own = deepcopy if copy else (lambda x: x)  # in place, unchanged fields move over as they are
    out = AnnData(X=merged(adata.X), obs=adata.obs.copy(), var=var,
                  layers={k: merged(v) for k, v in adata.layers.items()},
                  obsm=own(dict(adata.obsm)), obsp=own(dict(adata.obsp)), uns=own(dict(adata.uns)),
                  varm={k: np.asarray(v)[first] for k, v in adata.varm.items()})
    report["n_genes_merged"] = int(pd.notna(final).sum() - unique_ids.size)
    out.uns["spared"] = {**dict(out.uns.get("spared", {})), "genes": report}
    if copy:
        return out
    replace(adata, out)
    return None

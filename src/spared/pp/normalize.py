"""TPM normalisation with merged-exon gene lengths, and log2(x + 1)."""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp

from spared.inplace import subset, target


def tpm_matrix(counts, lengths: np.ndarray):
    """``counts / length`` per gene, then each spot scaled to sum 1e6 (sparse in, sparse out)."""
    lengths = np.asarray(lengths, dtype=np.float64)
    if (lengths <= 0).any() or not np.isfinite(lengths).all():
        raise ValueError("gene lengths must be positive and finite")
    if sp.issparse(counts):
        rate = sp.csr_matrix(counts, dtype=np.float64) @ sp.diags(1.0 / lengths)
        totals = np.asarray(rate.sum(axis=1)).ravel()
        if (totals == 0).any():
            raise ValueError(f"{(totals == 0).sum()} spot(s) have zero counts; TPM is undefined for them")
        return (sp.diags(1e6 / totals) @ rate).tocsr()
    rate = np.asarray(counts, dtype=np.float64) / lengths
    totals = rate.sum(axis=1, keepdims=True)
    if (totals == 0).any():
        raise ValueError(f"{(totals == 0).sum()} spot(s) have zero counts; TPM is undefined for them")
    return rate * (1e6 / totals)


def tpm(adata, organism: str = "human", layer: str | None = "counts", key_added: str = "tpm",
        min_known_fraction: float = 0.5, copy: bool = False):
    """Write ``layers[key_added]`` = TPM of ``layers[layer]``, dropping genes absent from the annotation.

    ``layer=None`` reads ``X``. Gene lengths (union of exons, GENCODE v43 / vM33) come from
    :mod:`spared.annotation` and are stored in ``var['gene_length']``. Genes absent from the annotation are
    dropped with a :class:`spared.annotation.GeneMappingWarning` (count in ``uns['spared']['tpm_dropped_genes']``),
    then spots left with zero counts: from ``adata`` itself (``copy=False``, returns ``None``) or from the copy
    returned (``copy=True``). Fewer than ``min_known_fraction`` of the genes in the annotation is an
    error: ``var_names`` must be Ensembl ids of the organism (map symbols with :func:`spared.pp.ensembl_ids`).
    """
    from spared.annotation import GENCODE_RELEASES, GeneMappingError, GeneMappingWarning, gene_lengths

    if layer is not None and layer not in adata.layers:
        raise KeyError(f"layer {layer!r} not found (layers: {list(adata.layers)}); "
                       f"pass layer=None to use X")
    lengths = gene_lengths(adata.var_names, organism).to_numpy(dtype=np.float64)
    known = np.isfinite(lengths)
    absent, n_genes = list(adata.var_names[~known][:5]), adata.n_vars
    if not known.any() or known.mean() < min_known_fraction:
        raise GeneMappingError(
            f"only {known.sum()} of the {n_genes} genes are in the {organism} annotation "
            f"({GENCODE_RELEASES[organism]}), e.g. not {absent}; var_names must be Ensembl ids of the organism: "
            f"check the organism, and map gene symbols first with spared.pp.ensembl_ids(adata, {organism!r})")
    out = subset(adata, var=None if known.all() else known, copy=copy)
    if not known.all():
        warnings.warn(f"TPM: dropping {(~known).sum()} of {n_genes} gene(s) absent from the {organism} "
                      f"annotation ({GENCODE_RELEASES[organism]}), e.g. {absent}", GeneMappingWarning, stacklevel=2)
    out.uns.setdefault("spared", {})["tpm_dropped_genes"] = int((~known).sum())
    out.var["gene_length"] = lengths[known]
    totals = np.asarray(_layer(out, layer).sum(axis=1)).ravel()
    if (totals == 0).any():
        warnings.warn(f"{int((totals == 0).sum())} spot(s) have no counts left in the annotated genes and were "
                      f"dropped", UserWarning, stacklevel=2)
        subset(out, obs=totals > 0)
    counts = _layer(out, layer)
    out.layers[key_added] = tpm_matrix(counts, out.var["gene_length"].to_numpy()).astype(np.float32)
    return out if copy else None


def log1p(adata, layer: str = "tpm", key_added: str = "log1p", copy: bool = False):
    """Write ``layers[key_added] = log2(layers[layer] + 1)`` (sparsity preserved); ``copy=True`` writes into a copy
    and returns it."""
    x = adata.layers[layer]
    if sp.issparse(x):
        y = x.copy().astype(np.float32)
        y.data = np.log2(y.data.astype(np.float64) + 1.0).astype(np.float32)
    else:
        y = np.log2(np.asarray(x, dtype=np.float64) + 1.0).astype(np.float32)
    adata = target(adata, copy)
    adata.layers[key_added] = y
    return adata if copy else None


def _layer(adata, layer: str | None):
    return adata.X if layer is None else adata.layers[layer]

"""Quality filters of the SpaRED protocol: spots by total counts, genes by counts and expression fractions."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp

from spared.inplace import subset, target

log = logging.getLogger(__name__)


def _counts(adata, layer: str | None):
    x = adata.X if layer is None else adata.layers[layer]
    return x.tocsr() if sp.issparse(x) else sp.csr_matrix(np.asarray(x))


def filter_spots(adata, min_counts: float = 10, max_counts: float = 1e6, layer: str | None = None,
                 copy: bool = False):
    """Keep spots whose total counts lie strictly between ``min_counts`` and ``max_counts``.

    The other spots are dropped from ``adata`` (``copy=False``, returns ``None``) or from the copy returned
    (``copy=True``); each kept spot's total over every gene read goes to ``obs["total_counts"]`` (its
    sequencing depth, kept after the gene filter).
    """
    totals = np.asarray(_counts(adata, layer).sum(axis=1)).ravel()
    keep = (totals > min_counts) & (totals < max_counts)
    if not keep.any():
        raise ValueError(f"no spot has total counts in ({min_counts}, {max_counts}); totals range from "
                         f"{totals.min():g} to {totals.max():g}. Lower cell_min_counts or check the input")
    kept = subset(adata, obs=keep, copy=copy)
    kept.obs["total_counts"] = totals[keep].astype(np.float64)
    return kept if copy else None


def offpanel_counts(adata, layer: str | None = "counts", copy: bool = False):
    """Write ``obs["offpanel_counts"]``: each spot's counts outside the gene panel (``total_counts`` minus the
    counts of the genes kept in ``adata``).

    SpaCKLE reads it as the spot's sequencing depth; it never includes a panel gene, so hiding panel values
    (to score completion) leaves it unchanged. ``copy=True`` writes into a copy and returns it.
    """
    if "total_counts" not in adata.obs:
        raise KeyError("obs['total_counts'] (each spot's counts over every gene read, written by filter_spots) "
                       "not found; run the spot filter on the full gene set first")
    panel = np.asarray(_counts(adata, layer).sum(axis=1), dtype=np.float64).ravel()
    other = adata.obs["total_counts"].to_numpy(dtype=np.float64) - panel
    if (other < -1e-6 * np.maximum(panel, 1)).any():
        raise ValueError("obs['total_counts'] is below the panel's own counts for some spots: it was not "
                         "computed on the full gene set of these counts")
    adata = target(adata, copy)
    adata.obs["offpanel_counts"] = np.maximum(other, 0.0)
    return adata if copy else None


def expression_fractions(adata, slide_key: str = "slide_id", layer: str | None = None, copy: bool = False):
    """Write ``var['exp_frac']`` (minimum over slides of the fraction of spots expressing the gene) and
    ``var['glob_exp_frac']`` (the same fraction over the whole collection).

    Spots are counted exactly (integers), then divided in float64, so a gene expressed in 700 of 1,000 spots
    has a fraction of exactly ``0.7`` and meets a 70 % cut, as in the original library. ``copy=True`` writes
    into a copy and returns it.
    """
    x = _counts(adata, layer)
    expressed = (x > 0).astype(np.int64)
    codes, levels = pd.factorize(adata.obs[slide_key], sort=True)
    membership = sp.csr_matrix((np.ones(codes.size, np.int64), (codes, np.arange(codes.size))),
                               shape=(levels.size, codes.size))
    per_slide = (membership @ expressed).toarray() / np.bincount(codes)[:, None].astype(np.float64)
    adata = target(adata, copy)
    adata.var["exp_frac"] = per_slide.min(axis=0)
    adata.var["glob_exp_frac"] = np.asarray(expressed.sum(axis=0), dtype=np.int64).ravel() / float(x.shape[0])
    return adata if copy else None


def real_data_prefix(exp_frac: np.ndarray, glob_exp_frac: np.ndarray, real_data_percentage: float) -> np.ndarray:
    """Indices of the genes kept by the ``real_data_percentage`` rule.

    Genes are sorted by ``exp_frac`` (descending, stable) and the longest prefix whose mean
    ``glob_exp_frac`` is still at least ``real_data_percentage`` is kept.
    """
    order = np.argsort(-np.asarray(exp_frac), kind="stable")
    running = np.cumsum(np.asarray(glob_exp_frac)[order]) / np.arange(1, order.size + 1)
    ok = np.flatnonzero(running >= real_data_percentage)
    return order[: ok[-1] + 1] if ok.size else order[:0]


def filter_genes(
    adata,
    min_counts: float = 10,
    max_counts: float = 1e6,
    min_exp_frac: float = -1.0,
    min_glob_exp_frac: float = -1.0,
    real_data_percentage: float = 0.7,
    wildcard_genes: list[str] | tuple[str, ...] | None = None,
    slide_key: str = "slide_id",
    copy: bool = False,
):
    """Select genes by the SpaRED rules and drop spots left with zero counts.

    The other genes and spots are dropped from ``adata`` (``copy=False``, returns ``None``) or from the copy
    returned (``copy=True``). ``var["exp_frac"]``/``var["glob_exp_frac"]`` are computed first when absent.

    With ``wildcard_genes`` exactly those genes are kept (all must exist). Otherwise genes need
    ``min_counts < total < max_counts``, ``exp_frac >= min_exp_frac`` and ``glob_exp_frac >= min_glob_exp_frac``,
    then :func:`real_data_prefix` keeps the longest prefix (by ``exp_frac``) with mean ``glob_exp_frac``
    ``>= real_data_percentage``.
    """
    given = adata
    if "exp_frac" not in adata.var or "glob_exp_frac" not in adata.var:
        adata = target(adata, copy)
        expression_fractions(adata, slide_key)
    if wildcard_genes is not None:
        missing = [g for g in wildcard_genes if g not in adata.var_names]
        if missing:
            raise KeyError(f"{len(missing)} wildcard gene(s) are not in the data, e.g. {missing[:5]}; "
                           f"use Ensembl ids without version, as var_names")
        selected = adata.var_names.get_indexer(list(wildcard_genes))
    else:
        totals = np.asarray(_counts(adata, None).sum(axis=0)).ravel()
        var = adata.var
        ok = ((totals > min_counts) & (totals < max_counts) & (var["exp_frac"].to_numpy() >= min_exp_frac)
              & (var["glob_exp_frac"].to_numpy() >= min_glob_exp_frac))
        candidates = np.flatnonzero(ok)
        prefix = real_data_prefix(var["exp_frac"].to_numpy()[candidates],
                                  var["glob_exp_frac"].to_numpy()[candidates], real_data_percentage)
        selected = np.sort(candidates[prefix])
        if selected.size == 0:
            raise ValueError(
                f"no gene passes the filters ({ok.sum()} pass the count/fraction thresholds, none keeps "
                f"{real_data_percentage:.0%} real data); lower real_data_percentage or gene_min_counts")
    nonzero = np.asarray(_counts(adata, None)[:, selected].sum(axis=1)).ravel() > 0
    if not nonzero.all():
        log.info("dropping %d spot(s) with zero counts in the kept genes", (~nonzero).sum())
    out = subset(adata, obs=None if nonzero.all() else nonzero, var=selected, copy=copy and adata is given)
    return out if copy else None

"""ComBat batch correction with parametric empirical-Bayes priors (Johnson, Li & Rabinovic 2007).

The estimator is split into :func:`combat_fit` and :func:`combat_apply` so the same fitted transform can
be applied to another layer of the same spots (e.g. simulated truth). Variances use ``ddof=0``, as the
maintained Python port ``inmoose.pycombat.pycombat_norm`` does; the tests check agreement with it.
Genes that are constant inside any batch cannot be standardised and are passed through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from spared.inplace import target


@dataclass(frozen=True)
class CombatParams:
    """A fitted ComBat transform (genes along the last axis)."""

    batches: np.ndarray  # (B,) batch labels
    stand_mean: np.ndarray  # (G,)
    var_pooled: np.ndarray  # (G,)
    gamma_star: np.ndarray  # (B, G)
    delta_star: np.ndarray  # (B, G)
    corrected: np.ndarray  # (G,) bool: False for genes passed through unchanged


def combat_fit(x: np.ndarray, batch: np.ndarray | pd.Series, conv: float = 1e-4,
               max_iter: int = 10_000) -> CombatParams:
    """Estimate the ComBat location/scale batch effects of ``x`` (spots × genes)."""
    x = np.asarray(x, dtype=np.float64)
    labels = np.asarray(batch)
    if x.ndim != 2 or x.shape[0] != labels.shape[0]:
        raise ValueError(f"x must be (spots, genes) with one batch label per spot; got {x.shape} and "
                         f"{labels.shape[0]} labels")
    if not np.isfinite(x).all():
        raise ValueError("ComBat input contains NaN or inf")
    levels, codes = np.unique(labels, return_inverse=True)
    onehot = np.eye(levels.size)[codes]  # (n, B)
    sizes = onehot.sum(axis=0)
    if (sizes < 2).any():
        too_small = [str(level) for level, size in zip(levels, sizes, strict=True) if size < 2]
        raise ValueError(f"every batch needs at least 2 spots for ComBat; batches {too_small} have fewer. "
                         f"Merge them or choose another combat_key")

    batch_means = onehot.T @ x / sizes[:, None]  # (B, G)
    within_var = onehot.T @ (x * x) / sizes[:, None] - batch_means**2
    corrected = (within_var > 1e-12 * np.maximum(1.0, batch_means**2)).all(axis=0)

    stand_mean = (sizes / sizes.sum()) @ batch_means
    resid = x - batch_means[codes]
    var_pooled = (resid**2).mean(axis=0)
    safe_var = np.where(corrected, var_pooled, 1.0)
    s = (x - stand_mean) / np.sqrt(safe_var)

    gamma_hat = onehot.T @ s / sizes[:, None]
    delta_hat = onehot.T @ (s * s) / sizes[:, None] - gamma_hat**2
    g = gamma_hat[:, corrected]
    d = delta_hat[:, corrected]
    gamma_bar = g.mean(axis=1, keepdims=True)
    t2 = g.var(axis=1, keepdims=True)
    m, s2 = d.mean(axis=1, keepdims=True), d.var(axis=1, keepdims=True)
    a_prior = (2 * s2 + m**2) / s2
    b_prior = (m * s2 + m**3) / s2
    gamma_star, delta_star = _solve_posteriors(s[:, corrected], codes, sizes, g, d, gamma_bar, t2,
                                               a_prior, b_prior, conv, max_iter)
    full_gamma = np.zeros_like(gamma_hat)
    full_delta = np.ones_like(delta_hat)
    full_gamma[:, corrected] = gamma_star
    full_delta[:, corrected] = delta_star
    return CombatParams(levels, stand_mean, var_pooled, full_gamma, full_delta, corrected)


def _solve_posteriors(s, codes, sizes, g_hat, d_hat, g_bar, t2, a, b, conv, max_iter):
    """Iterate each batch's conditional posterior means of gamma and delta to convergence (genes at once)."""
    gamma, delta = np.empty_like(g_hat), np.empty_like(d_hat)
    for j, n in enumerate(sizes):
        sj = s[codes == j]
        ss, ssum = (sj * sj).sum(axis=0), sj.sum(axis=0)
        g_old, d_old = g_hat[j], d_hat[j]
        for _ in range(max_iter):
            g_new = (t2[j] * n * g_hat[j] + d_old * g_bar[j]) / (t2[j] * n + d_old)
            sum2 = ss - 2 * g_new * ssum + n * g_new**2
            d_new = (0.5 * sum2 + b[j]) / (0.5 * n + a[j] - 1)
            # relative change divided by the signed old value, exactly as sva's and inmoose's criterion
            change = max(np.max(np.abs(g_new - g_old) / g_old), np.max(np.abs(d_new - d_old) / d_old))
            g_old, d_old = g_new, d_new
            if change <= conv:
                break
        gamma[j], delta[j] = g_old, d_old
    return gamma, delta


def combat_apply(x: np.ndarray, batch: np.ndarray | pd.Series, params: CombatParams) -> np.ndarray:
    """Apply a fitted ComBat transform to ``x`` (same genes, spots labelled with the fitted batches)."""
    x = np.asarray(x, dtype=np.float64)
    labels = np.asarray(batch)
    unknown = set(np.unique(labels)) - set(params.batches)
    if unknown:
        raise ValueError(f"batches {sorted(unknown)} were not seen when ComBat was fitted")
    codes = np.searchsorted(params.batches, labels)
    safe_var = np.where(params.corrected, params.var_pooled, 1.0)
    s = (x - params.stand_mean) / np.sqrt(safe_var)
    adjusted = (s - params.gamma_star[codes]) / np.sqrt(params.delta_star[codes])
    out = adjusted * np.sqrt(safe_var) + params.stand_mean
    out[:, ~params.corrected] = x[:, ~params.corrected]
    return out


def combat(adata, key: str | None = "slide_id", layer: str = "log1p", key_added: str | None = None,
           copy: bool = False):
    """Batch-correct ``adata.layers[layer]`` with batches ``obs[key]``; writes ``layers[key_added]``.

    ``key_added`` defaults to ``"c_" + layer``. With ``key=None`` or a single batch the layer is copied
    unchanged. ``copy=True`` writes into a copy and returns it (else ``adata`` is changed and ``None`` returned);
    the fitted transform itself comes from :func:`combat_fit` on the same values and labels.
    """
    key_added = key_added or f"c_{layer}"
    if layer not in adata.layers:
        raise KeyError(f"layer {layer!r} not found; available layers: {list(adata.layers)}")
    if key is not None and key not in adata.obs:
        raise KeyError(f"ComBat batch column obs[{key!r}] not found; columns: {list(adata.obs.columns)}")
    values = np.asarray(adata.layers[layer])
    if key is None or adata.obs[key].nunique() < 2:
        corrected = values.astype(np.float32, copy=True)
    else:
        labels = adata.obs[key].astype(str).to_numpy()
        corrected = combat_apply(values, labels, combat_fit(values, labels)).astype(np.float32)
    adata = target(adata, copy)
    adata.layers[key_added] = corrected
    return adata if copy else None

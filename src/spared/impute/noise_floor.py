"""The counting-noise floor of hidden entries: the masked MSE no completion method can go much below.

A real entry of a processed collection is ``log2(s·C + 1)`` of a UMI count ``C >= 1`` (``s``: its TPM per
count), mapped to a completed layer such as ``c_d_log1p`` by ComBat's per-slide, per-gene affine transform.
Even an oracle that knew each entry's expected count ``λ`` could not predict ``C`` itself: its best guess,
the mean of the value under ``C ~ Poisson(λ)`` conditioned on ``C >= 1``, still errs by that value's
variance. :func:`noise_floor` averages this variance over the hidden entries, with ``λ`` drawn from its
posterior given the observed count (a gamma prior per slide and gene fitted to the slide's counts, spot size
factors included). Real counts vary more than Poisson ones, so the true floor is higher: a target that
needs an MSE below this figure cannot be met by any method.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import special, stats

from spared.data_model import dense

#: Rates above this use the delta method (variance ≈ λ·(dy/dC)²; relative error ~1/λ) instead of the exact sum.
EXACT_MAX_RATE = 100.0
#: Equal-probability quantiles of each entry's rate posterior that are averaged.
N_QUANTILES = 16
#: The smallest slope-fit R² (per slide and gene) accepted as "an affine map of log2(TPM + 1)".
AFFINE_R2 = 0.999


def truncated_log_variance(rate: np.ndarray, per_count: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """``Var[log2(s·C + 1) | C >= 1]`` for ``C ~ Poisson(rate)`` and ``s = per_count``, elementwise.

    Exact (a sum over the counts that carry the probability) for rates up to :data:`EXACT_MAX_RATE`, the
    delta method above. A rate of 0 gives 0 (the count is 1 for sure).
    """
    rate, per_count = np.broadcast_arrays(np.asarray(rate, dtype=np.float64),
                                          np.asarray(per_count, dtype=np.float64))
    if np.any(~np.isfinite(rate) | (rate < 0)):
        raise ValueError("rates must be finite and >= 0")
    out = np.empty(rate.shape)
    flat_rate, flat_s, flat_out = rate.ravel(), per_count.ravel(), out.reshape(-1)
    large = flat_rate > EXACT_MAX_RATE
    slope = flat_s[large] / (np.log(2) * (flat_s[large] * flat_rate[large] + 1))
    flat_out[large] = flat_rate[large] * slope**2
    small = np.flatnonzero(~large)
    small = small[np.argsort(flat_rate[small], kind="stable")]
    for start in range(0, small.size, chunk):
        idx = small[start:start + chunk]
        lam = np.maximum(flat_rate[idx], 1e-300)[:, None]
        top = lam.max()
        k = np.arange(1, int(np.ceil(top + 12 * np.sqrt(top) + 25)) + 1, dtype=np.float64)[None, :]
        log_w = k * np.log(lam) - special.gammaln(k + 1)
        w = np.exp(log_w - log_w.max(axis=1, keepdims=True))
        w /= w.sum(axis=1, keepdims=True)
        y = np.log2(flat_s[idx, None] * k + 1) - np.log2(flat_s[idx, None] + 1)
        mean = (w * y).sum(axis=1)
        flat_out[idx] = np.maximum((w * y**2).sum(axis=1) - mean**2, 0.0)
    return out


def noise_floor_entries(adata, hidden: np.ndarray, layer: str = "c_d_log1p", slide_key: str = "slide_id",
                        n_quantiles: int = N_QUANTILES) -> np.ndarray:
    """Per hidden entry (in ``np.nonzero(hidden)`` order): the oracle's expected squared error in ``layer``.

    Parameters
    ----------
    adata
        Processed collection with ``layers["counts"]``, ``layers["tpm"]`` and ``layers[layer]``.
    hidden
        ``(n_obs, n_vars)`` boolean matrix of the scored entries (real ones: count >= 1).
    layer
        The layer the entries are scored in; it must be a per-slide, per-gene affine map of
        ``log2(tpm + 1)`` on the real entries (``log1p``, ``d_log1p``, ``c_d_log1p``, ``c_log1p``).
    slide_key
        ``obs`` column of the slides (ComBat batches and the gamma priors); absent = one slide.
    n_quantiles
        Equal-probability quantiles of each entry's rate posterior averaged.
    """
    missing = [name for name in ("counts", "tpm", layer) if name not in adata.layers]
    if missing:
        raise KeyError(f"the noise floor needs layers {missing}, which this collection lacks (found "
                       f"{sorted(adata.layers)}); collections from spared.pp.process carry them")
    hidden = np.asarray(hidden, dtype=bool)
    if hidden.shape != adata.shape:
        raise ValueError(f"hidden has shape {hidden.shape}, expected the collection's {adata.shape}")
    counts = dense(adata.layers["counts"]).astype(np.float64)
    tpm = dense(adata.layers["tpm"]).astype(np.float64)
    rows, cols = np.nonzero(hidden)
    if np.any(counts[rows, cols] < 1):
        raise ValueError(f"{int((counts[rows, cols] < 1).sum())} hidden entries have a count of 0; the floor "
                         f"is defined for real (measured) entries only")
    slides = (adata.obs[slide_key].astype(str).to_numpy() if slide_key in adata.obs
              else np.zeros(adata.n_obs, dtype=object))
    slopes = _affine_slopes(dense(adata.layers[layer]).astype(np.float64), np.log2(tpm + 1), counts >= 1, slides,
                            layer)
    rates = _posterior_rate_quantiles(counts, slides, rows, cols, n_quantiles)
    per_count = (tpm[rows, cols] / counts[rows, cols])[:, None]
    return truncated_log_variance(rates, per_count).mean(axis=1) * slopes[rows, cols] ** 2


def noise_floor(adata, hidden: np.ndarray, layer: str = "c_d_log1p", slide_key: str = "slide_id") -> float:
    """Mean counting-noise error over the hidden entries (see the module docstring and
    :func:`noise_floor_entries`): no method's masked MSE on these entries can go much below it."""
    return float(np.mean(noise_floor_entries(adata, hidden, layer, slide_key)))


def _affine_slopes(values: np.ndarray, logs: np.ndarray, real: np.ndarray, slides: np.ndarray,
                   layer: str) -> np.ndarray:
    """Per entry, the slope of ``layer`` against ``log2(tpm + 1)`` fitted on its slide's real entries of its gene."""
    slopes = np.ones(values.shape)
    for slide in pd.unique(slides):
        on = slides == slide
        v, x, r = values[on], logs[on], real[on]
        n = r.sum(axis=0)
        mean_v = np.where(r, v, 0).sum(axis=0) / np.maximum(n, 1)
        mean_x = np.where(r, x, 0).sum(axis=0) / np.maximum(n, 1)
        dv, dx = np.where(r, v - mean_v, 0), np.where(r, x - mean_x, 0)
        sxx, svv, sxv = (dx * dx).sum(axis=0), (dv * dv).sum(axis=0), (dx * dv).sum(axis=0)
        fitted = (n >= 3) & (sxx > 1e-12) & (svv > 1e-12)
        r2 = np.divide(sxv**2, sxx * svv, out=np.ones_like(sxx), where=fitted)
        if np.any(r2 < AFFINE_R2):
            worst = int(np.argmin(r2))
            raise ValueError(f"layer {layer!r} is not an affine per-slide map of log2(tpm + 1) on the real entries "
                             f"(slide {slide!r}, gene #{worst}: R² {r2[worst]:.4f}); the counting-noise floor is "
                             f"defined for log1p, d_log1p, c_log1p and c_d_log1p")
        slope = np.divide(sxv, sxx, out=np.ones_like(sxx), where=fitted)
        slopes[on] = slope[None, :]
    return slopes


def _posterior_rate_quantiles(counts: np.ndarray, slides: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                              n_quantiles: int) -> np.ndarray:
    """``(len(rows), n_quantiles)`` equal-probability quantiles of each entry's expected count given its count.

    Model per slide and gene: ``C_ij ~ Poisson(f_i θ_ij)``, ``θ_ij ~ Gamma(α_j, β_j)`` fitted by moments
    (``f_i``: the spot's total count over the slide's mean), so ``θ | C ~ Gamma(α + C, β + f_i)``.
    """
    shape, rate, factors = np.empty(counts.shape), np.empty(counts.shape), np.empty(counts.shape[0])
    for slide in pd.unique(slides):
        on = slides == slide
        totals = counts[on].sum(axis=1)
        f = totals / totals.mean() if totals.mean() > 0 else np.ones(on.sum())
        f = np.where(f > 0, f, 1.0)
        scaled = counts[on] / f[:, None]
        mean = np.maximum(scaled.mean(axis=0), 1e-9)
        between = scaled.var(axis=0) - mean * np.mean(1 / f)
        dispersion = np.maximum(between / mean**2, 1e-3)
        shape[on] = 1 / dispersion
        rate[on] = 1 / (dispersion * mean)
        factors[on] = f
    f = factors[rows]
    q = (np.arange(n_quantiles) + 0.5) / n_quantiles
    theta = stats.gamma.ppf(q[None, :], (shape[rows, cols] + counts[rows, cols])[:, None],
                            scale=1 / (rate[rows, cols] + f)[:, None])
    return theta * f[:, None]

"""Masked regression metrics for gene expression prediction.

All functions take ``y_true`` and ``y_pred`` of shape ``(n_spots, n_genes)`` (numpy arrays or torch
tensors; tensors are converted to ``float64`` numpy) and an optional boolean ``mask`` of the same shape
selecting the entries to score (``None`` scores every entry). NaN or infinite values are an error in
scored entries and ignored elsewhere.

Definitions (``M`` = mask, sums over masked entries only):

- ``MSE`` / ``MAE``: mean squared / absolute error over all masked entries.
- ``PCC-Gene``: Pearson correlation between truth and prediction of each gene over its masked spots,
  averaged over genes. ``PCC-Patch``: the same per spot (patch) over its masked genes, averaged over spots.
- ``R2-Gene`` / ``R2-Patch``: coefficient of determination ``1 - SSE / SST`` per gene / per spot
  (``SST`` around that gene's / spot's masked mean), averaged.
- A gene (spot) is *scored* when it has at least 2 masked entries and its masked truth is not constant.
  Unscored ones are excluded from the averages and counted (``n_genes_scored``, ``n_spots_scored``). A
  scored gene (spot) whose masked prediction is constant has no defined correlation and is left out of the
  PCC average only.
- ``Global`` (our definition of the combined score): the mean of five scores that are each at most 1,
  ``PCC-Gene``, ``PCC-Patch``, ``R2-Gene``, ``R2-Patch`` and the pooled ``1 - MSE / Var(Y[M])``, where
  ``Var(Y[M])`` is the (population) variance of all masked truth values. It is therefore bounded above by 1,
  equals 1 only for a perfect prediction and rewards both correlation and calibration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "BETTER", "compute", "global_score", "mae", "mse", "pcc_gene", "pcc_patch", "per_gene", "r2_gene", "r2_patch",
]

#: Which value of each metric is better: ``"lower"`` (errors) or ``"higher"`` (correlations, scores).
BETTER: dict[str, str] = {"MSE": "lower", "MAE": "lower", "PCC-Gene": "higher", "PCC-Patch": "higher",
                          "R2-Gene": "higher", "R2-Patch": "higher", "Global": "higher"}


def _to_numpy(x: Any, as_float: bool) -> np.ndarray:
    if type(x).__module__.startswith("torch"):
        x = x.detach().cpu()
        x = (x.double() if as_float else x).numpy()
    return np.asarray(x)


def _prepare(y_true: Any, y_pred: Any, mask: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate inputs; return float64 truth and prediction (0 outside the mask) and a boolean mask."""
    arrays = []
    for name, value in (("y_true", y_true), ("y_pred", y_pred)):
        arr = _to_numpy(value, as_float=True)
        if arr.ndim != 2:
            raise ValueError(f"{name} must be 2-D (n_spots, n_genes); found shape {arr.shape}")
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise ValueError(f"{name} must be numeric; found dtype {arr.dtype}")
        arrays.append(arr.astype(np.float64, copy=False))
    yt, yp = arrays
    if yt.shape != yp.shape:
        raise ValueError(f"y_true and y_pred must have the same shape; found {yt.shape} and {yp.shape}")
    if mask is None:
        m = np.ones(yt.shape, dtype=bool)
    else:
        m = _to_numpy(mask, as_float=False)
        if m.shape != yt.shape:
            raise ValueError(f"mask must have the shape of y_true {yt.shape}; found {m.shape}")
        if m.dtype != bool:
            if not np.issubdtype(m.dtype, np.number) or not np.isin(m, (0, 1)).all():
                raise ValueError(f"mask must be boolean (or 0/1); found dtype {m.dtype} with other values")
            m = m.astype(bool)
    if not m.any():
        raise ValueError("mask selects no entries; pass a mask with at least one True entry (or None for all)")
    for name, arr in (("y_true", yt), ("y_pred", yp)):
        bad = m & ~np.isfinite(arr)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{name} has {int(bad.sum())} NaN/infinite values in scored entries (first at {first}); "
                "remove them or exclude them with the mask"
            )
    # Unscored entries are zeroed so that NaN/inf there never reaches a sum.
    return np.where(m, yt, 0.0), np.where(m, yp, 0.0), m


@dataclass(frozen=True)
class _AxisStats:
    """Per-gene (axis 0) or per-spot (axis 1) statistics over masked entries; NaN where undefined."""

    n: np.ndarray
    scored: np.ndarray
    pcc: np.ndarray
    r2: np.ndarray
    mse: np.ndarray


def _axis_stats(yt: np.ndarray, yp: np.ndarray, m: np.ndarray, axis: int) -> _AxisStats:
    """Statistics along ``axis`` of ``yt``/``yp`` that are already zero outside the mask ``m``."""
    rowwise = "ij,ij->j" if axis == 0 else "ij,ij->i"
    n = m.sum(axis=axis)
    safe_n = np.maximum(n, 1)
    t_const = np.where(m, yt, np.inf).min(axis=axis) == np.where(m, yt, -np.inf).max(axis=axis)
    p_const = np.where(m, yp, np.inf).min(axis=axis) == np.where(m, yp, -np.inf).max(axis=axis)
    scored = (n >= 2) & ~t_const
    dt = (yt - np.expand_dims(yt.sum(axis=axis) / safe_n, axis)) * m
    dp = (yp - np.expand_dims(yp.sum(axis=axis) / safe_n, axis)) * m
    sst = np.einsum(rowwise, dt, dt)
    spp = np.einsum(rowwise, dp, dp)
    stp = np.einsum(rowwise, dt, dp)
    diff = yt - yp
    sse = np.einsum(rowwise, diff, diff)
    with np.errstate(divide="ignore", invalid="ignore"):
        pcc = np.where(scored & ~p_const, np.clip(stp / np.sqrt(sst * spp), -1.0, 1.0), np.nan)
        r2 = np.where(scored, 1.0 - sse / sst, np.nan)
        mse_axis = np.where(n > 0, sse / safe_n, np.nan)
    return _AxisStats(n=n, scored=scored, pcc=pcc, r2=r2, mse=mse_axis)


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def mse(y_true: Any, y_pred: Any, mask: Any = None) -> float:
    """Mean squared error over the masked entries."""
    yt, yp, m = _prepare(y_true, y_pred, mask)
    return float(np.mean((yt[m] - yp[m]) ** 2))


def mae(y_true: Any, y_pred: Any, mask: Any = None) -> float:
    """Mean absolute error over the masked entries."""
    yt, yp, m = _prepare(y_true, y_pred, mask)
    return float(np.mean(np.abs(yt[m] - yp[m])))


def pcc_gene(y_true: Any, y_pred: Any, mask: Any = None) -> float:
    """Pearson correlation per gene over its masked spots, averaged over scored genes (NaN if none)."""
    return _nanmean(_axis_stats(*_prepare(y_true, y_pred, mask), axis=0).pcc)


def pcc_patch(y_true: Any, y_pred: Any, mask: Any = None) -> float:
    """Pearson correlation per spot over its masked genes, averaged over scored spots (NaN if none)."""
    return _nanmean(_axis_stats(*_prepare(y_true, y_pred, mask), axis=1).pcc)


def r2_gene(y_true: Any, y_pred: Any, mask: Any = None) -> float:
    """Coefficient of determination per gene over its masked spots, averaged over scored genes."""
    return _nanmean(_axis_stats(*_prepare(y_true, y_pred, mask), axis=0).r2)


def r2_patch(y_true: Any, y_pred: Any, mask: Any = None) -> float:
    """Coefficient of determination per spot over its masked genes, averaged over scored spots."""
    return _nanmean(_axis_stats(*_prepare(y_true, y_pred, mask), axis=1).r2)


def global_score(y_true: Any, y_pred: Any, mask: Any = None) -> float:
    """Combined score (at most 1): see the module docstring for its definition."""
    return compute(y_true, y_pred, mask)["Global"]


def _combine(pcc_g: float, pcc_p: float, r2_g: float, r2_p: float, mse_value: float, var_true: float) -> float:
    pooled_r2 = 1.0 - mse_value / var_true if var_true > 0 else float("nan")
    return float(np.mean([pcc_g, pcc_p, r2_g, r2_p, pooled_r2]))


def compute(y_true: Any, y_pred: Any, mask: Any = None) -> dict[str, float]:
    """All metrics at once.

    Parameters
    ----------
    y_true, y_pred
        Arrays or tensors of shape ``(n_spots, n_genes)``.
    mask
        Boolean array/tensor of the same shape, True for the entries to score; ``None`` scores all.

    Returns
    -------
    dict
        ``MSE``, ``MAE``, ``PCC-Gene``, ``PCC-Patch``, ``R2-Gene``, ``R2-Patch``, ``Global``,
        ``n_genes_scored``, ``n_spots_scored``, ``n_genes_excluded``, ``n_spots_excluded`` (counts as
        floats). Averages with nothing to average are NaN, and then so is ``Global``.
    """
    yt, yp, m = _prepare(y_true, y_pred, mask)
    genes = _axis_stats(yt, yp, m, axis=0)
    spots = _axis_stats(yt, yp, m, axis=1)
    err = yt[m] - yp[m]
    out = {
        "MSE": float(np.mean(err**2)),
        "MAE": float(np.mean(np.abs(err))),
        "PCC-Gene": _nanmean(genes.pcc),
        "PCC-Patch": _nanmean(spots.pcc),
        "R2-Gene": _nanmean(genes.r2),
        "R2-Patch": _nanmean(spots.r2),
    }
    out["Global"] = _combine(out["PCC-Gene"], out["PCC-Patch"], out["R2-Gene"], out["R2-Patch"], out["MSE"],
                             float(np.var(yt[m])))
    out["n_genes_scored"] = float(genes.scored.sum())
    out["n_spots_scored"] = float(spots.scored.sum())
    out["n_genes_excluded"] = float(yt.shape[1] - genes.scored.sum())
    out["n_spots_excluded"] = float(yt.shape[0] - spots.scored.sum())
    return out


def per_gene(y_true: Any, y_pred: Any, mask: Any = None) -> dict[str, np.ndarray]:
    """Per-gene statistics over each gene's masked spots (for plots).

    Returns
    -------
    dict
        Arrays of length ``n_genes``: ``pcc``, ``r2`` (NaN for unscored genes, ``pcc`` also for constant
        predictions), ``mse`` (NaN for genes with no masked entry), ``n`` (masked entries per gene) and
        ``scored`` (bool).
    """
    stats = _axis_stats(*_prepare(y_true, y_pred, mask), axis=0)
    return {"pcc": stats.pcc, "r2": stats.r2, "mse": stats.mse, "n": stats.n, "scored": stats.scored}

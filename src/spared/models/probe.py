"""The HEST-Benchmark linear probe: standardise embeddings, PCA, ridge regression to every gene.

:class:`LinearProbe` follows HEST's ``benchmark.py``/``trainer.py``: a ``StandardScaler`` and a ``PCA`` to
``n_components`` fitted on the training embeddings, then a ridge regression with ``alpha = 100 / (k · G)`` (``k``
PCA components, ``G`` genes). Two choices of this benchmark are documented in the probe recipes: the ridge fits an
intercept (SpaRED reports MSE, and centred PCA scores without one predict expression near 0), and each gene is
fitted on the loss entries of its target (``mask``: its real measurements for the raw target, so that target
never trains on imputed values), optionally weighted (``weight``). PCA is exact (an
eigendecomposition of the covariance) and the ridge is solved in closed form, so the probe equals scikit-learn's
``StandardScaler → PCA(svd_solver="full") → Ridge`` (checked by the tests) without depending on it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spared.io.atomic import atomic_path


class LinearProbe:
    """Standardise → PCA → ridge regression from embeddings ``(n, d)`` to expression ``(n, G)``.

    Parameters
    ----------
    n_components
        PCA components kept (at most ``min(n, d)``).
    alpha
        Ridge penalty, or ``"hest"`` for ``100 / (k · G)``.
    standardize
        Scale every embedding feature to unit variance first (constant features keep scale 1).
    fit_intercept
        Fit a per-gene intercept (centre scores and targets over each gene's training rows).
    """

    def __init__(self, n_components: int = 256, alpha: float | str = "hest", standardize: bool = True,
                 fit_intercept: bool = True) -> None:
        if n_components < 1:
            raise ValueError(f"n_components must be positive, got {n_components}")
        if not (alpha == "hest" or (isinstance(alpha, int | float) and alpha > 0)):
            raise ValueError(f"alpha must be 'hest' or a positive number, got {alpha!r}")
        self.n_components, self.alpha, self.standardize, self.fit_intercept = (n_components, alpha, standardize,
                                                                               fit_intercept)
        self.mean_: np.ndarray | None = None
        self.scale_: np.ndarray | None = None
        self.components_: np.ndarray | None = None
        self.coef_: np.ndarray | None = None
        self.intercept_: np.ndarray | None = None
        self.alpha_: float | None = None

    def fit(self, X: np.ndarray, Y: np.ndarray, mask: np.ndarray | None = None,
            weight: np.ndarray | None = None) -> LinearProbe:
        """Fit on embeddings ``X (n, d)``, targets ``Y (n, G)``, the entries to fit on ``mask (n, G)`` and,
        optionally, each entry's weight ``weight (n, G)`` (weighted least squares; default 1)."""
        X = _matrix(X, "X")
        Y = _matrix(Y, "Y")
        if Y.shape[0] != X.shape[0]:
            raise ValueError(f"X has {X.shape[0]} rows but Y has {Y.shape[0]}")
        mask = np.ones(Y.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        if mask.shape != Y.shape:
            raise ValueError(f"mask must have Y's shape {Y.shape}, got {mask.shape}")
        if weight is not None:
            weight = np.asarray(weight, dtype=np.float64)
            if weight.shape != Y.shape or not (np.isfinite(weight).all() and (weight >= 0).all()):
                raise ValueError(f"weight must be finite, >= 0 and of Y's shape {Y.shape}")
            mask = mask & (weight > 0)
        if not np.isfinite(Y[mask]).all():
            raise ValueError("Y has NaN/inf in fitted entries; leave them out with the mask")
        self.mean_ = X.mean(axis=0)
        scale = X.std(axis=0) if self.standardize else np.ones(X.shape[1])
        self.scale_ = np.where(scale > 0, scale, 1.0)
        Z = (X - self.mean_) / self.scale_
        k = min(self.n_components, *Z.shape)
        eigval, eigvec = np.linalg.eigh(Z.T @ Z)
        comps = eigvec[:, np.argsort(eigval)[::-1][:k]].T
        comps *= np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])[:, None]  # deterministic signs
        self.components_ = comps
        P = Z @ comps.T
        self.alpha_ = 100.0 / (k * Y.shape[1]) if self.alpha == "hest" else float(self.alpha)
        weights = mask.astype(np.float64) if weight is None else np.where(mask, weight, 0.0)
        self.coef_, self.intercept_ = _ridge(P, np.where(mask, Y, 0.0), weights, self.alpha_, self.fit_intercept)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        """PCA scores ``(n, k)`` of embeddings ``X``."""
        self._check_fitted()
        return ((_matrix(X, "X") - self.mean_) / self.scale_) @ self.components_.T

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted expression ``(n, G)``."""
        return self.transform(X) @ self.coef_ + self.intercept_

    def save(self, path: str | Path) -> None:
        """Write the fitted probe to an ``.npz`` file (atomically)."""
        self._check_fitted()
        with atomic_path(Path(path), ".npz") as tmp:
            np.savez_compressed(tmp, mean=self.mean_, scale=self.scale_, components=self.components_,
                                coef=self.coef_, intercept=self.intercept_, alpha=self.alpha_)

    @classmethod
    def load(cls, path: str | Path) -> LinearProbe:
        """A probe written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as data:
            probe = cls(n_components=int(data["components"].shape[0]), alpha=float(data["alpha"]))
            probe.mean_, probe.scale_, probe.components_ = data["mean"], data["scale"], data["components"]
            probe.coef_, probe.intercept_, probe.alpha_ = data["coef"], data["intercept"], float(data["alpha"])
        return probe

    def _check_fitted(self) -> None:
        if self.components_ is None:
            raise RuntimeError("the probe is not fitted: call fit(X, Y, mask) first")


def _matrix(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {a.shape}")
    if not np.isfinite(a).all() and name == "X":
        raise ValueError("X (the embeddings) contains NaN/inf")
    return a


def _ridge(P: np.ndarray, Y: np.ndarray, weight: np.ndarray, alpha: float, intercept: bool
           ) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene weighted ridge ``min Σ_i w_ig (y_ig − b_g − P_i w_g)² + α ||w_g||²``.

    ``weight`` is 0 on rows a gene is not fitted on (``Y`` is 0 there). Genes sharing a weight column share one
    factorisation (one solve when all entries weigh the same); a gene without rows predicts 0.
    """
    k, G = P.shape[1], Y.shape[1]
    coef, bias = np.zeros((k, G)), np.zeros(G)
    columns, group = np.unique(weight, axis=1, return_inverse=True)
    for c in range(columns.shape[1]):
        genes = np.flatnonzero(group.ravel() == c)
        rows = columns[:, c] > 0
        if not rows.any():
            continue
        w = columns[rows, c][:, None]
        Pr, Yr = P[rows], Y[np.ix_(rows, genes)]
        p_mean = (w * Pr).sum(axis=0) / w.sum() if intercept else np.zeros(k)
        y_mean = (w * Yr).sum(axis=0) / w.sum() if intercept else np.zeros(genes.size)
        Pc = Pr - p_mean
        coef[:, genes] = np.linalg.solve(Pc.T @ (w * Pc) + alpha * np.eye(k), Pc.T @ (w * (Yr - y_mean)))
        bias[genes] = y_mean - p_mean @ coef[:, genes]
    return coef, bias

"""Scoring completion methods on real values hidden on purpose (the SpaCKLE paper's protocol)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd

from spared.data_model import dense
from spared.impute.baselines import METHODS, CompletionMethod, make_method
from spared.impute.spackle.config import SpackleConfig
from spared.impute.spackle.inputs import observed_layer, split_rows

EVAL_SPLITS = ("val", "test")
PREDICTION_KEY = "completed"


def scored_spots(adata, split_key: str = "split") -> np.ndarray:
    """Positions of the spots whose values an evaluation hides: the val/test spots, or every spot (with a
    warning) when there are none (one slide, one sample)."""
    rows = split_rows(adata, split_key, EVAL_SPLITS)
    if rows.size:
        return rows
    warnings.warn(f"no val/test spot (obs[{split_key!r}] only has "
                  f"{sorted(adata.obs[split_key].astype(str).unique())}): values of every spot are hidden and "
                  f"scored, as for a single sample", UserWarning, stacklevel=3)
    return np.arange(adata.n_obs)


def hide_values(adata, mask_fraction: float = 0.1, seed: int = 0, split_key: str = "split") -> np.ndarray:
    """Pick ``round(mask_fraction × R)`` of the ``R`` real entries of the val/test spots (of every spot when
    there are none: :func:`scored_spots`), uniformly at random.

    Returns the ``(n, G)`` boolean matrix of hidden entries (the same for a given data set and seed).
    """
    if not 0 < mask_fraction < 1:
        raise ValueError(f"mask_fraction must lie in (0, 1), got {mask_fraction}")
    real = dense(adata.layers["mask"]).astype(bool, copy=False)
    rows = scored_spots(adata, split_key)
    held_out = np.zeros(adata.n_obs, dtype=bool)
    held_out[rows] = True
    candidates = np.flatnonzero(real & held_out[:, None])
    n_hidden = round(mask_fraction * candidates.size)
    if n_hidden == 0:
        raise ValueError(f"mask_fraction={mask_fraction} of the {candidates.size} real val/test entries hides "
                         f"nothing; raise mask_fraction or evaluate a larger collection")
    hidden = np.zeros(real.shape, dtype=bool)
    hidden.flat[np.random.default_rng(seed).choice(candidates, n_hidden, replace=False)] = True
    return hidden


def evaluate(
    adata,
    methods: Sequence[str | CompletionMethod] = METHODS,
    mask_fraction: float = 0.1,
    seed: int = 0,
    layer: str = "c_d_log1p",
    truth_layer: str | None = None,
    spackle_config: SpackleConfig | None = None,
    split_key: str = "split",
) -> pd.DataFrame:
    """Compare completion methods on hidden real values (and on the known truth of simulated data).

    Protocol:

    1. Among the real entries (``layers["mask"]``) of the val/test spots (every spot of a collection without
       val/test slides, e.g. one sample), a fraction ``mask_fraction`` is hidden uniformly at random with
       ``seed`` (:func:`hide_values`); the same entries for every method.
    2. Every method receives a fresh, minimal AnnData: ``obs``, the gene names, ``obsm``, ``layers[layer]``
       with every hidden **and** every originally missing entry set to 0, and ``layers["mask"]`` False on
       both. Nothing else of ``adata`` (other layers, ``var`` statistics) is passed, so no method can see a
       hidden value. SpaCKLE is trained on this AnnData (every spot's known entries as targets; val spots, or
       blocks of spots held out of a single sample, for selection).
    3. Each method's ``fit(data, layer)`` then ``complete(data, layer, "completed")`` fills the unknown
       entries, and the hidden entries are scored against the original values with
       :func:`spared.metrics.compute` (target ``"masked"``).
    4. With ``truth_layer`` (simulated data, e.g. ``"c_true_log1p"``), the originally missing entries of
       the val/test spots are also scored against the true values (target ``"vs truth"``).

    Parameters
    ----------
    adata
        Processed collection (``layers[layer]``, ``layers["mask"]``, ``obs`` slide/split, ``obsm["spatial"]``).
    methods
        Method names (``"spackle"``, ``"median"``, ``"mean"``, ``"knn"``) or objects following
        :class:`~spared.impute.baselines.CompletionMethod`.
    mask_fraction, seed
        Fraction of the val/test real entries hidden, and the seed choosing them.
    layer
        Layer to complete.
    truth_layer
        Layer with the known pre-dropout truth, or ``None``.
    spackle_config
        SpaCKLE hyper-parameters when ``"spackle"`` is among the methods.
    split_key
        ``obs`` column with the train/val/test split.

    Returns
    -------
    One row per method and target: ``method``, ``target``, ``n_entries``, ``seconds`` (fit + complete),
    then the metrics (``MSE``, ``MAE``, ``PCC-Gene``, ``PCC-Patch``, ...), and ``noise_floor``: on the
    ``"masked"`` rows, the counting-noise floor of the hidden entries (:func:`spared.impute.noise_floor.noise_floor`,
    the MSE an oracle knowing every entry's expected count would still make; NaN when the collection lacks
    the ``counts``/``tpm`` layers or ``layer`` is not an affine map of ``log2(tpm + 1)``).
    """
    from spared.metrics import compute

    if not methods:
        raise ValueError(f"no completion method given; choose among {list(METHODS)}")
    observed_layer(adata, layer)
    values = dense(adata.layers[layer])
    if truth_layer is not None and truth_layer not in adata.layers:
        raise KeyError(f"truth layer {truth_layer!r} not found; available layers: {sorted(adata.layers)} "
                       f"(simulated collections carry 'c_true_log1p'); pass truth_layer=None for real data")
    hidden = hide_values(adata, mask_fraction, seed, split_key)
    real = dense(adata.layers["mask"]).astype(bool, copy=False)
    targets = [("masked", values, hidden)]
    if truth_layer is not None:
        held_out = np.zeros(adata.n_obs, dtype=bool)
        with warnings.catch_warnings():  # hide_values said so already
            warnings.simplefilter("ignore", UserWarning)
            held_out[scored_spots(adata, split_key)] = True
        targets.append(("vs truth", dense(adata.layers[truth_layer]), ~real & held_out[:, None]))
    floor = _floor_or_nan(adata, hidden, layer, spackle_config)
    rows = []
    for method in methods:
        impl = make_method(method, spackle_config) if isinstance(method, str) else method
        data = hidden_view(adata, layer, real & ~hidden)
        start = time.perf_counter()
        impl.fit(data, layer)
        impl.complete(data, layer, PREDICTION_KEY)
        seconds = time.perf_counter() - start
        prediction = dense(data.layers[PREDICTION_KEY])
        for target, truth, scored in targets:
            rows.append({"method": impl.name, "target": target, "n_entries": int(scored.sum()),
                         "seconds": seconds, **compute(truth, prediction, scored),
                         "noise_floor": floor if target == "masked" else np.nan})
    return pd.DataFrame(rows)


def _floor_or_nan(adata, hidden: np.ndarray, layer: str, spackle_config: SpackleConfig | None) -> float:
    """The hidden entries' counting-noise floor, or NaN (with a warning when it should exist but cannot)."""
    from spared.impute.noise_floor import noise_floor

    if not {"counts", "tpm"} <= set(adata.layers):
        return np.nan
    slide_key = (spackle_config or SpackleConfig()).slide_key
    try:
        return noise_floor(adata, hidden, layer, slide_key)
    except ValueError as exc:
        warnings.warn(f"no counting-noise floor for the hidden entries: {exc}", UserWarning, stacklevel=3)
        return np.nan


def evaluate_fractions(adata, fractions: Sequence[float] = (0.05, 0.1, 0.2, 0.4),
                       methods: Sequence[str | CompletionMethod] = METHODS, seed: int = 0, **kwargs) -> pd.DataFrame:
    """:func:`evaluate` at several masking fractions: one long table with a ``mask_fraction`` column.

    This is the completion-error-vs-masking curve (``spared.pl.completion_curve``); ``kwargs`` go to
    :func:`evaluate`. Each fraction draws its own hidden entries from ``seed``.
    """
    if not fractions:
        raise ValueError("give at least one masking fraction")
    frames = [evaluate(adata, methods, fraction, seed, **kwargs).assign(mask_fraction=float(fraction))
              for fraction in fractions]
    return pd.concat(frames, ignore_index=True)


def hidden_view(adata, layer: str, known: np.ndarray) -> ad.AnnData:
    """A minimal AnnData for a method: ``layer`` with every entry not ``known`` set to 0, ``mask = known``."""
    values = dense(adata.layers[layer])
    data = ad.AnnData(obs=adata.obs.copy(), var=pd.DataFrame(index=adata.var_names.copy()),
                      obsm={k: np.array(v, copy=True) for k, v in adata.obsm.items()})
    data.layers[layer] = np.where(known, values, values.dtype.type(0))
    data.layers["mask"] = known.copy()
    return data

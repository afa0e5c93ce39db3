"""Scoring completion methods on real values hidden on purpose, under two protocols.

- ``uniform`` (the default, the stricter test): a seeded fraction (10 %) of the real entries of the val/test spots
  is hidden uniformly at random; every method is trained on the collection with those entries unknown.
- ``spared`` (the SpaCKLE authors'): each observed entry of the val/test spots is hidden with its gene's
  probability ``min(1, (1 − f_g) / f_g)`` (``f_g`` = ``var["glob_exp_frac"]``), so a gene is hidden about as often
  as it drops out naturally; several random masks (10) are scored; every method learns once, from the train
  split only, since a mask may hide any observed val/test entry.

Both score every method on the same hidden entries of the layer (:func:`spared.metrics.compute`), beside the
counting-noise floor of those entries (:mod:`spared.impute.noise_floor`). :func:`summarise` gives the mean ± std
over masks.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd

from spared.data_model import dense
from spared.impute.baselines import METHODS, CompletionMethod, SpackleMethod, make_method
from spared.impute.spackle.config import SpackleConfig
from spared.impute.spackle.inputs import observed_layer, split_rows

EVAL_SPLITS = ("val", "test")
PREDICTION_KEY = "completed"
PROTOCOLS = ("uniform", "spared")
#: Masks scored when ``n_masks`` is not given.
DEFAULT_MASKS = {"uniform": 1, "spared": 10}
#: ``obs`` column of the training view that marks the train spots SpaCKLE selects its weights on (``spared``).
SELECTION_KEY = "_spackle_selection"
#: Metrics averaged over masks by :func:`summarise` (those of :func:`spared.metrics.compute` that are present).
SUMMARY_METRICS = ("MSE", "MAE", "PCC-Gene", "PCC-Patch", "R2-Gene", "R2-Patch", "Global")
#: Baselines whose MSE reduction :func:`summarise` reports for every method (column ``below_<name>``).
REFERENCE_BASELINES = ("median", "knn")


def _eval_rows(adata, split_key: str) -> np.ndarray:
    """Positions of the val/test spots for the ``"spared"`` protocol, which fits on the train split and so needs
    other spots to score: an error naming the splits found when there are none."""
    rows = split_rows(adata, split_key, EVAL_SPLITS)
    if rows.size == 0:
        found = sorted(adata.obs[split_key].astype(str).unique())
        raise ValueError(f"the spared protocol fits every method on the train split and hides values of val/test "
                         f"spots, but obs[{split_key!r}] only has {found}: put at least one slide in the val or "
                         f"test split, or use protocol 'uniform' (it scores a single sample on its own spots)")
    return rows


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


def spared_probabilities(adata) -> np.ndarray:
    """Per gene, the ``spared`` protocol's hiding probability ``min(1, (1 − f_g) / f_g)``.

    ``f_g`` is ``var["glob_exp_frac"]`` (the gene's fraction of measured spots over the collection), or the
    fraction of real entries of ``layers["mask"]`` when that column is absent.
    """
    from spared.impute.spackle.masking import glob_exp_frac, mask_probabilities

    real = dense(adata.layers["mask"]).astype(bool, copy=False)
    return mask_probabilities(glob_exp_frac(adata, real), "prob_median")


def hide_spared(adata, seed: int = 0, split_key: str = "split") -> np.ndarray:
    """Hide each real entry of the val/test spots with its gene's probability (:func:`spared_probabilities`).

    Returns the ``(n, G)`` boolean matrix of hidden entries (the same for a given data set and seed).
    """
    real = dense(adata.layers["mask"]).astype(bool, copy=False)
    rows = _eval_rows(adata, split_key)
    draw = np.random.default_rng(seed).random((rows.size, adata.n_vars)) < spared_probabilities(adata)[None, :]
    hidden = np.zeros(real.shape, dtype=bool)
    hidden[rows] = real[rows] & draw
    if not hidden.any():
        raise ValueError(f"the spared protocol hid none of the {int(real[rows].sum())} real val/test entries (every "
                         f"gene is measured in every spot: var['glob_exp_frac'] = 1); use protocol='uniform'")
    return hidden


def hide_entries(adata, protocol: str = "uniform", seed: int = 0, mask_fraction: float = 0.1,
                 split_key: str = "split") -> np.ndarray:
    """The hidden entries of one mask of ``protocol`` (:func:`hide_values` or :func:`hide_spared`)."""
    _check_protocol(protocol)
    if protocol == "spared":
        return hide_spared(adata, seed, split_key)
    return hide_values(adata, mask_fraction, seed, split_key)


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {protocol!r}; choose one of {list(PROTOCOLS)}")


def evaluate(
    adata,
    methods: Sequence[str | CompletionMethod] = METHODS,
    mask_fraction: float = 0.1,
    seed: int = 0,
    layer: str = "c_d_log1p",
    truth_layer: str | None = None,
    spackle_config: SpackleConfig | None = None,
    split_key: str = "split",
    protocol: str = "uniform",
    n_masks: int | None = None,
) -> pd.DataFrame:
    """Compare completion methods on hidden real values (and on the known truth of simulated data).

    Protocol:

    1. ``n_masks`` masks are drawn, mask ``i`` with seed ``seed + i``: under ``"uniform"`` a fraction
       ``mask_fraction`` of the real entries (``layers["mask"]``) of the val/test spots (every spot of a
       collection without val/test slides, e.g. one sample), uniformly at random (:func:`hide_values`); under
       ``"spared"`` each real val/test entry with its gene's probability (:func:`hide_spared`; it needs val/test
       slides). Every method is scored on the same hidden entries.
    2. Every method receives fresh, minimal AnnData objects: ``obs``, the gene names, ``obsm``, ``layers[layer]``
       with every hidden **and** every originally missing entry set to 0, and ``layers["mask"]`` False on both.
       Nothing else of ``adata`` (other layers, ``var`` statistics) is passed, so no method can see a hidden
       value.
    3. Under ``"uniform"`` each method is fitted (``fit(data, layer)``) on each mask's view, so SpaCKLE learns from
       every known entry of every split, the hidden ones excepted (train spots as targets; val spots, or blocks of spots
       held out of a single sample, for selection). Under ``"spared"`` each method is fitted once, on the train-split
       spots alone (any observed val/test entry can be hidden by some mask): SpaCKLE selects its weights on held-out
       entries of up to ``val_max_spots`` train spots (:data:`SELECTION_KEY`), never on a val/test value.
    4. ``complete(data, layer, "completed")`` fills the unknown entries of each mask's view and the hidden ones are
       scored against the original values with :func:`spared.metrics.compute` (target ``"masked"``).
    5. With ``truth_layer`` (simulated data, e.g. ``"c_true_log1p"``), the originally missing entries of the val/test
       spots are also scored against the true values (target ``"vs truth"``).

    Parameters
    ----------
    adata
        Processed collection (``layers[layer]``, ``layers["mask"]``, ``obs`` slide/split, ``obsm["spatial"]``).
    methods
        Method names (``"spackle"``, ``"median"``, ``"mean"``, ``"knn"``) or objects following
        :class:`~spared.impute.baselines.CompletionMethod`.
    mask_fraction
        Fraction of the val/test real entries hidden by a ``"uniform"`` mask (unused by ``"spared"``).
    seed
        Seed of the first mask (mask ``i`` uses ``seed + i``).
    layer
        Layer to complete.
    truth_layer
        Layer with the known pre-dropout truth, or ``None``.
    spackle_config
        SpaCKLE hyper-parameters when ``"spackle"`` is among the methods.
    split_key
        ``obs`` column with the train/val/test split.
    protocol
        ``"uniform"`` or ``"spared"`` (see the module docstring).
    n_masks
        Masks scored; ``None`` = 1 under ``"uniform"``, 10 under ``"spared"``.

    Returns
    -------
    One row per mask, method and target: ``protocol``, ``mask`` (its seed), ``method``, ``target``,
    ``n_entries``, ``fit_seconds`` (the method's fit: per mask under ``"uniform"``, once under ``"spared"``),
    ``seconds`` (fit + complete under ``"uniform"``, complete alone under ``"spared"``), the metrics (``MSE``,
    ``MAE``, ``PCC-Gene``, ``PCC-Patch``, ...), and ``noise_floor``: on the ``"masked"`` rows, the counting-noise
    floor of the hidden entries (:func:`spared.impute.noise_floor.noise_floor`, the MSE an oracle knowing every
    entry's expected count would still make; NaN when the collection lacks the ``counts``/``tpm`` layers or
    ``layer`` is not an affine map of ``log2(tpm + 1)``).
    """
    from spared.metrics import compute

    _check_protocol(protocol)
    n_masks = DEFAULT_MASKS[protocol] if n_masks is None else n_masks
    if isinstance(n_masks, bool) or not isinstance(n_masks, int | np.integer) or n_masks < 1:
        raise ValueError(f"n_masks must be an integer >= 1, got {n_masks!r}")
    if not methods:
        raise ValueError(f"no completion method given; choose among {list(METHODS)}")
    observed_layer(adata, layer)
    values = dense(adata.layers[layer])
    if truth_layer is not None and truth_layer not in adata.layers:
        raise KeyError(f"truth layer {truth_layer!r} not found; available layers: {sorted(adata.layers)} "
                       f"(simulated collections carry 'c_true_log1p'); pass truth_layer=None for real data")
    masks = [hide_entries(adata, protocol, seed + i, mask_fraction, split_key) for i in range(n_masks)]
    real = dense(adata.layers["mask"]).astype(bool, copy=False)
    vs_truth = []
    if truth_layer is not None:
        held_out = np.zeros(adata.n_obs, dtype=bool)
        with warnings.catch_warnings():  # hide_values said so already
            warnings.simplefilter("ignore", UserWarning)
            held_out[scored_spots(adata, split_key) if protocol == "uniform" else _eval_rows(adata, split_key)] = True
        vs_truth.append(("vs truth", dense(adata.layers[truth_layer]), ~real & held_out[:, None]))
    given = [make_method(m, spackle_config) if isinstance(m, str) else m for m in methods]
    snapshots = [copy.deepcopy(m) for m in given] if protocol == "uniform" and n_masks > 1 else None
    fit_seconds = _fit_on_train_split(adata, layer, given, split_key) if protocol == "spared" else None
    floors = _floors_or_nan(adata, masks, layer, spackle_config)
    rows = []
    for i, (hidden, floor) in enumerate(zip(masks, floors, strict=True)):
        targets = [("masked", values, hidden), *vs_truth]
        for j, method in enumerate(given):
            impl = method if i == 0 or snapshots is None else copy.deepcopy(snapshots[j])
            data = hidden_view(adata, layer, real & ~hidden)
            start = time.perf_counter()
            if fit_seconds is None:
                impl.fit(data, layer)
            fitted = time.perf_counter() - start
            impl.complete(data, layer, PREDICTION_KEY)
            seconds = time.perf_counter() - start
            prediction = dense(data.layers[PREDICTION_KEY])
            for target, truth, scored in targets:
                rows.append({"protocol": protocol, "mask": seed + i, "method": impl.name, "target": target,
                             "n_entries": int(scored.sum()),
                             "fit_seconds": fitted if fit_seconds is None else fit_seconds[j],
                             "seconds": seconds, **compute(truth, prediction, scored),
                             "noise_floor": floor if target == "masked" else np.nan})
    return pd.DataFrame(rows)


def training_view(adata, layer: str, split_key: str = "split", seed: int = 0,
                  selection_spots: int = 1024) -> ad.AnnData:
    """The train-split spots with their known entries (:func:`hidden_view`), for fitting under ``"spared"``.

    ``obs[SELECTION_KEY]`` marks a seeded ``min(selection_spots, n_train // 2)`` of them ``"val"`` (the rest
    ``"train"``): SpaCKLE holds out part of those spots' known entries to select its weights.
    """
    rows = split_rows(adata, split_key, ["train"])
    if rows.size < 2:
        raise ValueError(f"the spared protocol fits every method on the train split, but {rows.size} spot(s) have "
                         f"obs[{split_key!r}] == 'train'; put at least one slide in the train split")
    real = dense(adata.layers["mask"]).astype(bool, copy=False)
    data = hidden_view(adata[rows], layer, real[rows])
    chosen = np.random.default_rng(seed).choice(rows.size, min(selection_spots, rows.size // 2), replace=False)
    selection = np.full(rows.size, "train", dtype=object)
    selection[chosen] = "val"
    data.obs[SELECTION_KEY] = pd.Categorical(selection)
    return data


def _fit_on_train_split(adata, layer: str, methods: list[CompletionMethod], split_key: str) -> list[float]:
    """Fit every method once on :func:`training_view`; their fit times. SpaCKLE selects on :data:`SELECTION_KEY`."""
    times = []
    for method in methods:
        config = method.config if isinstance(method, SpackleMethod) else SpackleConfig()
        data = training_view(adata, layer, split_key, config.seed, config.val_max_spots)
        if isinstance(method, SpackleMethod) and method.model is None:
            method.config = config.replace(split_key=SELECTION_KEY)
        start = time.perf_counter()
        method.fit(data, layer)
        times.append(time.perf_counter() - start)
    return times


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over the masks of an :func:`evaluate` table: one row per protocol, method and target.

    Columns: ``protocol``, ``method``, ``target``, ``n_masks``, ``n_entries`` (mean), each metric and ``<metric>_std``,
    ``noise_floor`` and ``noise_floor_std``, ``fit_seconds`` (mean), ``seconds`` (mean per mask), and for every
    method on the ``"masked"`` rows ``below_median`` / ``below_knn`` (with ``_std``): the mean over masks of
    ``1 − MSE / MSE of that baseline`` on the same hidden entries (NaN when the baseline was not evaluated).
    A single mask has NaN standard deviations.
    """
    keys = ["protocol", "method", "target"]
    metrics = [m for m in (*SUMMARY_METRICS, "noise_floor") if m in table]
    grouped = table.groupby(keys, sort=False)
    out = grouped.size().rename("n_masks").to_frame()
    out["n_entries"] = grouped["n_entries"].mean()
    for metric in metrics:
        out[metric] = grouped[metric].mean()
        out[f"{metric}_std"] = grouped[metric].std()
    out["fit_seconds"] = grouped["fit_seconds"].mean()
    out["seconds"] = grouped["seconds"].mean()
    masked = table[table["target"] == "masked"]
    for baseline in REFERENCE_BASELINES:
        base = masked.loc[masked["method"] == baseline, ["protocol", "mask", "MSE"]].rename(columns={"MSE": "base"})
        paired = masked.merge(base, on=["protocol", "mask"])
        stats = (1 - paired["MSE"] / paired["base"]).groupby([paired[k] for k in keys]).agg(["mean", "std"])
        out[f"below_{baseline}"] = stats["mean"]
        out[f"below_{baseline}_std"] = stats["std"]
    return out.reset_index()


def _floors_or_nan(adata, masks: list[np.ndarray], layer: str, spackle_config: SpackleConfig | None) -> list[float]:
    """Each mask's counting-noise floor, or NaNs (with a warning when they should exist but cannot).

    An entry's floor does not depend on the mask, so it is computed once for every entry some mask hides.
    """
    from spared.impute.noise_floor import noise_floor_entries

    if not {"counts", "tpm"} <= set(adata.layers):
        return [np.nan] * len(masks)
    union = np.logical_or.reduce(masks)
    slide_key = (spackle_config or SpackleConfig()).slide_key
    try:
        entries = noise_floor_entries(adata, union, layer, slide_key)
    except ValueError as exc:
        warnings.warn(f"no counting-noise floor for the hidden entries: {exc}", UserWarning, stacklevel=3)
        return [np.nan] * len(masks)
    where = np.flatnonzero(union)
    return [float(np.mean(entries[np.searchsorted(where, np.flatnonzero(hidden))])) for hidden in masks]


def evaluate_fractions(adata, fractions: Sequence[float] = (0.05, 0.1, 0.2, 0.4),
                       methods: Sequence[str | CompletionMethod] = METHODS, seed: int = 0, **kwargs) -> pd.DataFrame:
    """:func:`evaluate` (``"uniform"`` protocol) at several masking fractions: one long table with a
    ``mask_fraction`` column.

    This is the completion-error-vs-masking curve (``spared.pl.completion_curve``); ``kwargs`` go to
    :func:`evaluate`. Each fraction draws its own hidden entries from ``seed``.
    """
    if not fractions:
        raise ValueError("give at least one masking fraction")
    if kwargs.get("protocol", "uniform") != "uniform":
        raise ValueError(f"the masking-fraction curve hides fixed fractions (protocol 'uniform'); the "
                         f"{kwargs['protocol']!r} protocol sets how much it hides itself")
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

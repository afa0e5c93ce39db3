"""Derived layers: the missing-value mask, deltas from train means, and noisy (unimputed) layers."""

from __future__ import annotations

import numpy as np

from spared.data_model import dense
from spared.inplace import target

#: Log layers and the name of their delta layer.
DELTA_NAMES = {"log1p": "deltas", "d_log1p": "d_deltas", "c_log1p": "c_deltas", "c_d_log1p": "c_d_deltas",
               "c_t_log1p": "c_t_deltas"}


def compute_mask(adata, layer: str = "tpm", key_added: str = "mask", copy: bool = False):
    """``layers[key_added] = layers[layer] != 0``: True marks a real measurement, False a missing one.

    ``copy=True`` writes into a copy and returns it (else ``adata`` is changed and ``None`` returned).
    """
    mask = dense(adata.layers[layer]) != 0
    adata = target(adata, copy)
    adata.layers[key_added] = mask
    return adata if copy else None


def deltas(adata, layers: list[str] | None = None, split_key: str = "split", reference_split: str = "train",
           copy: bool = False):
    """For each log layer L: ``var[f"{L}_avg_exp"]`` = per-gene mean over the train split, and the delta layer
    (:data:`DELTA_NAMES`) = L − that mean.

    ``copy=True`` writes into a copy and returns it (else ``adata`` is changed and ``None`` returned).
    """
    train = (adata.obs[split_key] == reference_split).to_numpy()
    if not train.any():
        raise ValueError(f"no spot has obs[{split_key!r}] == {reference_split!r}; deltas need training spots")
    adata = target(adata, copy)
    for name in layers or [name for name in DELTA_NAMES if name in adata.layers]:
        values = dense(adata.layers[name]).astype(np.float32)
        mean = values[train].mean(axis=0, dtype=np.float64).astype(np.float32)
        adata.var[f"{name}_avg_exp"] = mean
        adata.layers[DELTA_NAMES[name]] = values - mean
    return adata if copy else None


def noisy_layers(adata, mask_key: str = "mask", copy: bool = False):
    """``noisy_<L>`` for every imputed layer: missing entries set to 0 (log layers) or −mean (delta layers).

    ``copy=True`` writes into a copy and returns it (else ``adata`` is changed and ``None`` returned).
    """
    adata = target(adata, copy)
    missing = ~dense(adata.layers[mask_key])
    for name in ("d_log1p", "c_d_log1p", "c_t_log1p"):
        if name in adata.layers:
            out = dense(adata.layers[name]).copy()
            out[missing] = 0.0
            adata.layers[f"noisy_{name}"] = out
        delta = DELTA_NAMES[name]
        if delta in adata.layers:
            out = dense(adata.layers[delta]).copy()
            out[missing] = np.broadcast_to(-adata.var[f"{name}_avg_exp"].to_numpy(np.float32), out.shape)[missing]
            adata.layers[f"noisy_{delta}"] = out
    return adata if copy else None

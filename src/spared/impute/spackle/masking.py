"""SpaCKLE's self-supervised masking: which real entries are hidden from the model during training.

Each gene ``g`` gets a probability ``p_g`` from its global expression fraction ``f_g`` (the fraction of
spots of the collection where it was measured, ``var["glob_exp_frac"]``):

- ``mask_prob``: ``p_g = mask_prob / f_g`` (so about ``mask_prob`` of all entries of the gene are hidden),
- ``prob_median``: ``p_g = (1 - f_g) / f_g`` (hides as many real entries as the gene has missing ones),
- ``scale_factor``: ``p_g = 0.8 (1 - f_g) / f_g``,
- ``uniform``: ``p_g = mask_prob`` for every gene (so the loss weighs genes as an evaluation that hides a fixed
  fraction of the known entries does),

each capped at 1. A mask draw hides each **real** entry of the whole ``(1 + k) × G`` input (the spot and its
neighbours) independently with probability ``p_g`` (the neighbours' with ``p_g`` times a ratio, 1 by default,
see :func:`row_probabilities`); missing entries are never "masked" (there is nothing
to learn from them). Hidden and missing entries enter the model as 0; the loss is the MSE on the hidden
entries of row 0 (the spot being completed). Masking the neighbours as well mirrors completion, where the
neighbours' own missing entries are zeros too.
"""

from __future__ import annotations

import numpy as np
import torch

from spared.impute.spackle.config import MASK_METHODS

SCALE_FACTOR = 0.8


def glob_exp_frac(adata, real: np.ndarray) -> np.ndarray:
    """``var["glob_exp_frac"]`` when present (and valid), else the fraction of real entries per gene."""
    if "glob_exp_frac" in adata.var:
        frac = adata.var["glob_exp_frac"].to_numpy(dtype=np.float64)
        if frac.shape != (real.shape[1],) or not np.all((frac >= 0) & (frac <= 1)):
            raise ValueError("var['glob_exp_frac'] must hold one fraction in [0, 1] per gene; drop the column "
                             "to have it recomputed from layers['mask']")
        return frac
    return real.mean(axis=0, dtype=np.float64)


def mask_probabilities(frac: np.ndarray, method: str = "mask_prob", mask_prob: float = 0.3) -> np.ndarray:
    """Per-gene masking probability from global expression fractions (see the module docstring).

    Genes never measured (``f = 0``) get probability 1; they have no real entry to hide anyway.
    """
    frac = np.asarray(frac, dtype=np.float64)
    if method not in MASK_METHODS:
        raise ValueError(f"unknown masking method {method!r}; choose one of {MASK_METHODS}")
    with np.errstate(divide="ignore"):
        if method == "mask_prob":
            raw = mask_prob / frac
        elif method == "uniform":
            raw = np.full_like(frac, mask_prob)
        else:
            raw = (1.0 - frac) / frac * (SCALE_FACTOR if method == "scale_factor" else 1.0)
    return np.minimum(np.where(frac > 0, raw, 1.0), 1.0)


def row_probabilities(probs: np.ndarray, n_rows: int, neighbour_ratio: float = 1.0) -> np.ndarray:
    """Per-row, per-gene masking probabilities ``(n_rows, G)``: the spot's row ``probs``, its neighbours'
    ``neighbour_ratio × probs``."""
    probs = np.asarray(probs, dtype=np.float64)
    rows = np.tile(probs * neighbour_ratio, (n_rows, 1))
    rows[0] = probs
    return rows


def sample_mask(real: torch.Tensor, probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Hide each real entry of ``real`` (``(..., G)`` bool) with its gene's probability ``probs`` (``(G,)``, or
    ``(1 + k, G)`` per row of a neighbourhood).

    With a ``generator`` the draw happens on that generator's device (CPU for a fixed validation mask)
    and is moved to ``real``'s device; otherwise the global RNG of ``real``'s device is used.
    """
    device = real.device if generator is None else generator.device
    draw = torch.rand(real.shape, generator=generator, device=device).to(real.device)
    return real & (draw < probs)

"""Which spots SpaCKLE learns from and which select its weights: the val split, or held-out blocks of spots.

With val (or test) slides, a subset of their spots supplies the validation entries. A collection without any
(one slide, a single sample, every slide in train) gives up spatially separated square blocks of its own spots
instead: the blocks' spots are never training targets, and a held-out spot's neighbours are mostly spots of
its own block, so validation asks for what completion asks for (values of spots the network was not fitted
on), not for values it was fitted on next door.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from spared.graph import knn_indices
from spared.impute.spackle.config import SpackleConfig
from spared.impute.spackle.inputs import split_rows, spot_layout

#: Fraction of a collection's spots held out in blocks when it has no val/test slide.
BLOCK_FRACTION = 0.15
#: Side of a block in spot spacings (Visium: about 55 spots; a spot's 18 nearest neighbours lie within 2).
BLOCK_SIDE = 8.0


@dataclass(frozen=True)
class Selection:
    """The training targets, the validation spots and how they were chosen (``description``, for the user)."""

    targets: np.ndarray
    validation: np.ndarray
    description: str


def selection_spots(adata, config: SpackleConfig) -> Selection:
    """The spots whose known entries are training targets and the spots whose held-out entries select weights.

    Validation spots are (at most ``config.val_max_spots`` of) the val split, else the test split; targets are
    every spot (``train_on="all"``) or the train split. Without val and test spots, :func:`held_out_blocks`
    supplies the validation spots, which are then left out of the targets, and a ``UserWarning`` says so.
    """
    train = split_rows(adata, config.split_key, ["train"])
    if config.train_on == "train" and train.size == 0:
        raise ValueError(f"no spot has obs[{config.split_key!r}] == 'train'; SpaCKLE learns from the train "
                         f"split with train_on='train', so assign slides to splits first (or use train_on='all')")
    pool = train if config.train_on == "train" else np.arange(adata.n_obs)
    for split in ("val", "test"):
        val = split_rows(adata, config.split_key, [split])
        if val.size:
            if val.size > config.val_max_spots:
                rng = np.random.default_rng(config.seed)
                val = np.sort(rng.choice(val, config.val_max_spots, replace=False))
            return Selection(pool, val, f"{val.size} spots of the {split} split")
    slides, coords = spot_layout(adata, config.slide_key, config.spatial_key)
    blocks = held_out_blocks(slides, coords, min(BLOCK_FRACTION, config.val_max_spots / adata.n_obs), config.seed)
    validation = np.flatnonzero(blocks >= 0)
    if validation.size == 0:
        raise ValueError(f"no val/test slide, and the {adata.n_obs} spots are too few to hold out a block of "
                         f"{BLOCK_SIDE:g} × {BLOCK_SIDE:g} spot spacings for selecting SpaCKLE's weights; put a "
                         f"slide in the val split, or complete with another method (median, mean, knn)")
    targets = np.setdiff1d(pool, validation)
    n_slides = pd.unique(slides[validation]).size
    description = (f"{validation.size} spots ({validation.size / adata.n_obs:.0%}) in {np.unique(blocks).size - 1} "
                   f"spatially separated blocks held out of {n_slides} slide(s)")
    warnings.warn(f"no val/test slide: SpaCKLE selects its weights on {description} (never training targets)",
                  UserWarning, stacklevel=3)
    return Selection(targets, validation, description)


def held_out_blocks(slides: np.ndarray, coords: np.ndarray, fraction: float = BLOCK_FRACTION,
                    seed: int = 0, side: float = BLOCK_SIDE) -> np.ndarray:
    """Square blocks of spots, no two touching, holding about ``fraction`` of each slide's spots.

    Each slide is cut into square cells of ``side`` spot spacings (the median distance from a spot to its
    nearest spot on that slide); cells are visited in a seeded random order and taken while the slide has
    fewer than ``fraction`` of its spots in blocks, skipping any cell next to (8-neighbourhood) a cell taken,
    and any cell that would put more than twice that many spots in blocks (small slides may give none).

    Returns
    -------
    ``(n,)`` int64: the block number of each spot, ``-1`` for spots outside every block.
    """
    slides = np.asarray(slides)
    coords = np.asarray(coords, dtype=np.float64)
    rng = np.random.default_rng(seed)
    block = np.full(slides.shape[0], -1, dtype=np.int64)
    n_blocks = 0
    for slide in pd.unique(slides):
        idx = np.flatnonzero(slides == slide)
        if idx.size < 2:
            continue
        nearest = knn_indices(coords[idx], np.zeros(idx.size), 1)[:, 0]
        spacing = float(np.median(np.linalg.norm(coords[idx] - coords[idx][nearest], axis=1)))
        if not spacing > 0:
            continue
        cell = np.floor((coords[idx] - coords[idx].min(axis=0)) / (side * spacing)).astype(np.int64)
        cells, which, sizes = np.unique(cell, axis=0, return_inverse=True, return_counts=True)
        which = which.ravel()
        wanted = math.ceil(fraction * idx.size)
        taken: set[tuple[int, int]] = set()
        held = 0
        for c in rng.permutation(len(cells)):
            if held >= wanted:
                break
            i, j = (int(v) for v in cells[c])
            if held + sizes[c] > 2 * wanted or any((i + di, j + dj) in taken for di in (-1, 0, 1)
                                                    for dj in (-1, 0, 1)):
                continue
            taken.add((i, j))
            held += int(sizes[c])
            block[idx[which == c]] = n_blocks
            n_blocks += 1
    return block

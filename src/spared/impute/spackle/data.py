"""Batches of neighbourhoods gathered from one precomputed ``(n, 1 + k)`` index table.

Nothing is materialised per spot ahead of time: a dataset yields spot positions and the collate function
gathers the ``(B, 1 + k, G)`` values and real-masks of those spots' neighbourhoods from tensors of the
whole layer (``O(n·G + n·k)`` memory in total, ``O(B·k·G)`` per batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from spared.impute.spackle.inputs import neighbour_table, observed_layer, spot_depth


@dataclass
class Neighbourhoods:
    """A collection ready for SpaCKLE: observed values, real mask, neighbour table, optional extras.

    ``distances`` (``(n, 1 + k)``, in units of the slide's spot spacing; 0 for the spot itself) is present
    when the network reads neighbour distances; ``visual`` holds per-spot patch embeddings; ``depth``
    (``(n,)``, log counts outside the panel) each spot's sequencing depth.
    """

    values: torch.Tensor
    real: torch.Tensor
    neighbours: torch.Tensor
    visual: torch.Tensor | None = None
    distances: torch.Tensor | None = None
    depth: torch.Tensor | None = None

    @property
    def n_genes(self) -> int:
        return self.values.shape[1]

    def gather(self, spots: torch.Tensor) -> dict[str, torch.Tensor]:
        """Inputs of ``spots``: ``x`` ``(B, 1+k, G)`` (missing = 0), ``real`` ``(B, 1+k, G)``, ``visual``,
        ``distance`` ``(B, 1+k)``, ``depth`` ``(B, 1+k)``."""
        rows = self.neighbours[spots]
        batch = {"x": self.values[rows], "real": self.real[rows]}
        if self.visual is not None:
            batch["visual"] = self.visual[spots]
        if self.distances is not None:
            batch["distance"] = self.distances[spots]
        if self.depth is not None:
            batch["depth"] = self.depth[rows]
        return batch

    def hold_out(self, spots: np.ndarray, fraction: float, seed: int) -> tuple[Neighbourhoods, HeldOut]:
        """Hide ``fraction`` of the known entries of ``spots`` (uniformly, seeded) from a copy of the collection.

        Returns the reduced collection (held-out entries become unknown: value 0, ``real`` False, so training
        never reads them) and the :class:`HeldOut` entries with their values, for validation.
        """
        spots = torch.as_tensor(np.asarray(spots, dtype=np.int64))
        known = self.real[spots]
        candidates = torch.nonzero(known.reshape(-1)).squeeze(1)
        n_held = max(1, round(fraction * candidates.numel())) if candidates.numel() else 0
        generator = torch.Generator().manual_seed(seed)
        chosen = candidates[torch.randperm(candidates.numel(), generator=generator)[:n_held]]
        hidden = torch.zeros(known.numel(), dtype=torch.bool)
        hidden[chosen] = True
        hidden = hidden.reshape(known.shape)
        real = self.real.clone()
        real[spots] = known & ~hidden
        values = self.values.masked_fill(~real, 0.0)
        held = HeldOut(spots, hidden, self.values[spots].masked_fill(~hidden, 0.0))
        return Neighbourhoods(values, real, self.neighbours, self.visual, self.distances, self.depth), held


@dataclass
class HeldOut:
    """Entries held out for validation: ``hidden`` ``(m, G)`` of the spots ``spots`` with their ``values``."""

    spots: torch.Tensor
    hidden: torch.Tensor
    values: torch.Tensor

    @property
    def n_entries(self) -> int:
        return int(self.hidden.sum())


def neighbourhoods(adata, layer: str, num_neighs: int, genes: list[str] | None = None,
                   visual_key: str | None = None, slide_key: str = "slide_id",
                   spatial_key: str = "spatial", distances: bool = False,
                   depth_key: str | None = None) -> Neighbourhoods:
    """Check ``adata`` and build its :class:`Neighbourhoods` (genes reordered to ``genes`` when given).

    With ``distances``, each neighbour's distance to its spot is stored in units of its slide's spot spacing
    (the median distance from a spot to its nearest neighbour), so slides imaged at other scales compare.
    """
    values, real = observed_layer(adata, layer, genes)
    table = neighbour_table(adata, num_neighs, slide_key, spatial_key)
    visual = None
    if visual_key is not None:
        if visual_key not in adata.obsm:
            raise KeyError(f"obsm[{visual_key!r}] with patch embeddings not found; available: "
                           f"{list(adata.obsm)}; compute the embeddings or set visual_key=None")
        emb = np.asarray(adata.obsm[visual_key], dtype=np.float32)
        if emb.ndim != 2 or not np.isfinite(emb).all():
            raise ValueError(f"obsm[{visual_key!r}] must be a finite (n_spots, dim) array, found shape "
                             f"{emb.shape}{'' if np.isfinite(emb).all() else ' with NaN/inf'}")
        visual = torch.from_numpy(np.ascontiguousarray(emb))
    spacing = None
    if distances:
        coords = np.asarray(adata.obsm[spatial_key], dtype=np.float64)
        dist = np.linalg.norm(coords[table] - coords[:, None, :], axis=-1)
        slides = pd.Series(np.asarray(adata.obs[slide_key]))
        nearest = pd.Series(dist[:, 1]).groupby(slides.to_numpy()).transform("median").to_numpy()
        spacing = torch.from_numpy((dist / np.where(nearest > 0, nearest, 1.0)[:, None]).astype(np.float32))
    depth = None if depth_key is None else torch.from_numpy(spot_depth(adata, depth_key))
    return Neighbourhoods(torch.from_numpy(values), torch.from_numpy(real), torch.from_numpy(table), visual,
                          spacing, depth)


class SpotDataset(Dataset):
    """Positions of the spots to predict, indexed by whole batches (a list of positions at a time)."""

    def __init__(self, spots: np.ndarray) -> None:
        self.spots = torch.as_tensor(np.asarray(spots, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.spots)

    def __getitem__(self, batch: list[int]) -> torch.Tensor:
        return self.spots[batch]


class GatherCollate:
    """Turn a tensor of spot positions into a batch of gathered neighbourhoods."""

    def __init__(self, data: Neighbourhoods) -> None:
        self.data = data

    def __call__(self, spots: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.data.gather(spots)


class HeldOutCollate:
    """Turn positions in a :class:`HeldOut` into neighbourhoods plus the held-out entries and their values."""

    def __init__(self, data: Neighbourhoods, held: HeldOut) -> None:
        self.data, self.held = data, held

    def __call__(self, positions: torch.Tensor) -> dict[str, torch.Tensor]:
        batch = self.data.gather(self.held.spots[positions])
        batch["hidden"] = self.held.hidden[positions]
        batch["target"] = self.held.values[positions]
        return batch


def loader(data: Neighbourhoods, spots: np.ndarray, batch_size: int, shuffle: bool = False,
           seed: int = 0) -> DataLoader:
    """A single-process loader of the neighbourhoods of ``spots`` (seeded order when shuffled)."""
    dataset = SpotDataset(spots)
    order = (RandomSampler(dataset, generator=torch.Generator().manual_seed(seed)) if shuffle
             else SequentialSampler(dataset))
    return DataLoader(dataset, sampler=BatchSampler(order, batch_size, drop_last=False), batch_size=None,
                      collate_fn=GatherCollate(data), num_workers=0)


def held_out_loader(data: Neighbourhoods, held: HeldOut, batch_size: int) -> DataLoader:
    """A fixed-order loader of the held-out validation entries (inputs read from ``data``)."""
    order = SequentialSampler(SpotDataset(np.arange(len(held.spots))))
    return DataLoader(SpotDataset(np.arange(len(held.spots))), sampler=BatchSampler(order, batch_size, False),
                      batch_size=None, collate_fn=HeldOutCollate(data, held), num_workers=0)

"""Batches of neighbourhoods gathered from one precomputed ``(n, 1 + k)`` index table.

Nothing is materialised per spot ahead of time: a dataset yields spot positions and the collate function
gathers the ``(B, 1 + k, G)`` values and real-masks of those spots' neighbourhoods from tensors of the
whole layer (``O(n·G + n·k)`` memory in total, ``O(B·k·G)`` per batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from spared.impute.spackle.inputs import neighbour_table, observed_layer


@dataclass
class Neighbourhoods:
    """A collection ready for SpaCKLE: observed values, real mask, neighbour table, optional embeddings."""

    values: torch.Tensor
    real: torch.Tensor
    neighbours: torch.Tensor
    visual: torch.Tensor | None = None

    @property
    def n_genes(self) -> int:
        return self.values.shape[1]

    def gather(self, spots: torch.Tensor) -> dict[str, torch.Tensor]:
        """Inputs of ``spots``: ``x`` ``(B, 1+k, G)`` (missing = 0), ``real`` ``(B, 1+k, G)``, ``visual``."""
        rows = self.neighbours[spots]
        batch = {"x": self.values[rows], "real": self.real[rows]}
        if self.visual is not None:
            batch["visual"] = self.visual[spots]
        return batch


def neighbourhoods(adata, layer: str, num_neighs: int, genes: list[str] | None = None,
                   visual_key: str | None = None, slide_key: str = "slide_id",
                   spatial_key: str = "spatial") -> Neighbourhoods:
    """Check ``adata`` and build its :class:`Neighbourhoods` (genes reordered to ``genes`` when given)."""
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
    return Neighbourhoods(torch.from_numpy(values), torch.from_numpy(real), torch.from_numpy(table), visual)


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


def loader(data: Neighbourhoods, spots: np.ndarray, batch_size: int, shuffle: bool = False,
           seed: int = 0) -> DataLoader:
    """A single-process loader of the neighbourhoods of ``spots`` (seeded order when shuffled)."""
    dataset = SpotDataset(spots)
    order = (RandomSampler(dataset, generator=torch.Generator().manual_seed(seed)) if shuffle
             else SequentialSampler(dataset))
    return DataLoader(dataset, sampler=BatchSampler(order, batch_size, drop_last=False), batch_size=None,
                      collate_fn=GatherCollate(data), num_workers=0)

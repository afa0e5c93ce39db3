"""Batches for the prediction models (the contract of :mod:`spared.models.base`) from a processed AnnData.

A :class:`SpotDataset` holds one split's spots: patches come from a :class:`~spared.io.patches.PatchStore` and are
normalised with the ImageNet mean/std (training patches optionally under a random flip/90° rotation); targets,
masks, raw counts, array positions and slide codes come from the AnnData. Patch-level models get batches of
independent spots; slide-level models get batches drawn from one slide at a time (:class:`SlideBatchSampler`);
graph models (SEPAL's second stage) get independent centre spots with their local graphs of cached stage-1
embeddings (:meth:`SpotTable.attach_stage1`). :class:`SpotDataModule` wires the splits into Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from spared.data_model import dense

#: ImageNet channel statistics used to normalise patches.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "val", "test")


def normalise_images(patches: np.ndarray, size: int | None = None) -> torch.Tensor:
    """``uint8 (k, H, W, 3)`` patches → ``float32 (k, 3, size, size)`` ImageNet-normalised tensors."""
    images = torch.from_numpy(np.ascontiguousarray(patches)).permute(0, 3, 1, 2).float().div_(255.0)
    if size is not None and images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


class SpotTable:
    """The per-spot arrays of a collection that batches are built from (whole collection, obs order).

    The target decides the loss entries of every batch (:mod:`spared.bench.targets`): ``"raw"`` puts the measured
    entries in the loss, ``"median"`` and ``"completed"`` every entry; batches always carry that ``"loss_mask"``
    (and ``"loss_weight"`` when ``imputed_weight`` weighs unmeasured entries less), so a completed-target
    experiment can never train the raw one by accident.

    Parameters
    ----------
    adata
        Processed AnnData with the target's layer, ``layers["mask"]``, ``obs`` ``slide_id``/``split``/
        ``array_row``/``array_col``.
    target
        ``"raw"``, ``"median"``, ``"completed"``, an absolute layer name (e.g. ``"c_t_log1p"``, see
        :func:`~spared.bench.targets.get_target`) or a :class:`~spared.bench.targets.Target`.
    store
        Patch store of the collection (obs order), or ``None`` to use/extract the one in ``uns``.
    patch_size, patch_scale
        Size the images are delivered at, and the crop scale used when patches must be extracted.
    patch_dir
        Folder for patches extracted because no store exists (default: a temporary folder).
    imputed_weight
        Loss weight of unmeasured entries relative to measured ones (targets whose loss uses every entry).

    Attributes
    ----------
    target_def
        The :class:`~spared.bench.targets.Target`; ``layer`` its layer.
    target, mask, loss_mask, loss_weight
        ``(n_obs, G)`` target values, measured entries, loss entries and their weights (``None``: all 1).
    truth
        The simulated truth (``layers["c_true_log1p"]``) or ``None``.
    """

    def __init__(self, adata: Any, target: Any = "raw", store: Any = None, patch_size: int | None = None,
                 patch_scale: float = 1.0, patch_dir: str | Path | None = None, imputed_weight: float = 1.0) -> None:
        from spared.bench.targets import TRUTH_LAYER, get_target, loss_entries

        missing = [c for c in ("slide_id", "split", "array_row", "array_col") if c not in adata.obs]
        if missing:
            raise KeyError(f"obs lacks {missing}; batches need a processed collection (docs/data_model.md)")
        self.target_def = get_target(target)
        layer = self.target_def.layer
        for name in (layer, "mask"):
            if name not in adata.layers:
                hint = (" (it is written by SpaCKLE completion: process with complete_missing=True)"
                        if name.startswith("c_t_") else "")
                raise KeyError(f"layer {name!r} is missing{hint}; available: {sorted(adata.layers)}")
        self.layer = layer
        self.target = _dense(adata.layers[layer], np.float32)
        self.mask = _dense(adata.layers["mask"], bool)
        self.loss_mask, self.loss_weight = loss_entries(self.mask, self.target_def, imputed_weight)
        self.truth = _dense(adata.layers[TRUTH_LAYER], np.float32) if TRUTH_LAYER in adata.layers else None
        self.coords = adata.obs[["array_row", "array_col"]].to_numpy(dtype=np.int64)
        self.positions = (np.asarray(adata.obsm["spatial"], dtype=np.float64) if "spatial" in adata.obsm
                          else self.coords.astype(np.float64))
        slide = adata.obs["slide_id"].astype("category")
        self.slide_names = [str(s) for s in slide.cat.categories]
        self.slide = slide.cat.codes.to_numpy().astype(np.int64)
        self.split = adata.obs["split"].astype(str).to_numpy()
        unknown = sorted(set(self.split) - set(SPLITS))
        if unknown:
            raise ValueError(f"obs['split'] has values {unknown} besides {list(SPLITS)}")
        self.obs_names = adata.obs_names.to_numpy(dtype=str)
        self.var_names = adata.var_names.to_numpy(dtype=str)
        self.store = store if store is not None else patch_store(adata, patch_size or 224, patch_scale, patch_dir)
        if len(self.store) != adata.n_obs:
            raise ValueError(f"patch store {self.store.path} holds {len(self.store)} patches for {adata.n_obs} spots; "
                             f"it was cut for another collection")
        self.image_size = patch_size
        self.counts = _dense(adata.layers["counts"], np.float32) if "counts" in adata.layers else None
        self.size_factor = None if self.counts is None else _size_factors(self.counts, self.slide)
        self.embedding: np.ndarray | None = None
        self.stage1: np.ndarray | None = None
        self._graphs: dict[tuple, Any] = {}

    def attach_stage1(self, embedding: np.ndarray, deltas: np.ndarray) -> None:
        """Per-spot stage-1 embeddings ``(n_obs, D)`` and deltas ``(n_obs, G)`` that graph batches carry."""
        embedding, deltas = np.asarray(embedding, np.float32), np.asarray(deltas, np.float32)
        n = self.target.shape[0]
        if embedding.ndim != 2 or embedding.shape[0] != n or deltas.shape != (n, self.n_genes):
            raise ValueError(f"stage-1 values must be ({n}, D) embeddings and ({n}, {self.n_genes}) deltas; got "
                             f"{embedding.shape} and {deltas.shape}")
        if not (np.isfinite(embedding).all() and np.isfinite(deltas).all()):
            raise ValueError("stage-1 embeddings or deltas contain NaN/inf; the stage-1 model diverged")
        self.embedding, self.stage1 = embedding, deltas

    def local_graphs(self, n_hops: int, neighbor_radius: float = 2.01, hex_geometry: bool = True):
        """:class:`~spared.models.layers.LocalGraphs` of every spot, built per slide (computed once per setting)."""
        from spared.models.layers import lattice_edges, local_subgraphs

        key = (n_hops, neighbor_radius, hex_geometry)
        if key not in self._graphs:
            parts = []
            for code in np.unique(self.slide):
                idx = np.flatnonzero(self.slide == code)
                local = lattice_edges(torch.from_numpy(self.coords[idx]), neighbor_radius, hex_geometry).numpy()
                parts.append(idx[local])
            edges = np.concatenate(parts, axis=1) if parts else np.zeros((2, 0), np.int64)
            self._graphs[key] = local_subgraphs(edges, self.target.shape[0], n_hops)
        return self._graphs[key]

    @property
    def n_genes(self) -> int:
        return int(self.target.shape[1])

    def indices(self, split: str) -> np.ndarray:
        """Obs positions of the spots of ``split``."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        return np.flatnonzero(self.split == split)

    def batch(self, idx: np.ndarray, graph: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
        """The batch of obs positions ``idx`` (any order) following the batch contract, with the target's loss
        entries (``"loss_mask"``, and ``"loss_weight"`` when unmeasured entries weigh less).

        ``graph`` (``n_hops``, ``neighbor_radius``, ``hex_geometry``) gives a graph batch: each spot's local graph
        of stage-1 embeddings (:meth:`attach_stage1`) instead of its image.
        """
        idx = np.asarray(idx, dtype=np.int64)
        out = {
            "target": torch.from_numpy(self.target[idx]),
            "mask": torch.from_numpy(self.mask[idx]),
            "loss_mask": torch.from_numpy(self.loss_mask[idx]),
            "coords": torch.from_numpy(self.coords[idx]),
            "slide": torch.from_numpy(self.slide[idx]),
            "index": torch.from_numpy(idx),
        }
        if graph is None:
            out["image"] = normalise_images(self.store[idx], self.image_size)
        else:
            out.update(self._graph_batch(idx, graph))
        if self.counts is not None:
            out["counts"] = torch.from_numpy(self.counts[idx])
            out["size_factor"] = torch.from_numpy(self.size_factor[idx])
        if self.loss_weight is not None:
            out["loss_weight"] = torch.from_numpy(self.loss_weight[idx])
        return out

    def _graph_batch(self, idx: np.ndarray, graph: dict[str, Any]) -> dict[str, torch.Tensor]:
        if self.embedding is None or self.stage1 is None:
            raise RuntimeError("graph batches need the stage-1 embeddings and deltas: call attach_stage1 first")
        spots, owner, edges, _ = self.local_graphs(**graph).select(idx)
        return {"embedding": torch.from_numpy(self.embedding[spots]),
                "offset": torch.from_numpy(self.coords[spots] - self.coords[idx][owner]),
                "graph": torch.from_numpy(owner), "edges": torch.from_numpy(edges),
                "stage1": torch.from_numpy(self.stage1[idx])}


def patch_store(adata: Any, patch_size: int, patch_scale: float = 1.0, patch_dir: str | Path | None = None):
    """The collection's patch store, cutting one (once, then cached) when none of the right size exists.

    Order of preference: the store recorded in ``uns['spared']['patches']`` when it has ``patch_size`` and
    ``patch_scale``; patches of that size and scale cut earlier for these spots, in ``patch_dir`` as
    ``patches_{size}_{scale}.h5`` or, without ``patch_dir``, beside the collection's ``.h5ad`` as
    ``NAME.patches_{size}_{scale}.h5`` (:func:`spared.io.patch_paths.on_demand_file`: under
    ``$SPARED_DATA/patches/`` for a collection never written or in a read-only folder); a new extraction from the
    slide images into that file with :func:`spared.io.patches.extract_patches`; and, when the images are not
    available, the recorded store of another size (its patches are resized as they are read).
    """
    from spared.io.patch_paths import on_demand_file, recorded, store_path
    from spared.io.patches import PatchStore, extract_patches
    from spared.io.readers.common import ReaderError

    entry = recorded(adata)
    try:
        path = store_path(adata) if entry.get("path") else None
    except FileNotFoundError:
        path = None
    if path is not None and int(entry.get("size", -1)) == patch_size and float(entry.get("scale", -1)) == patch_scale:
        return PatchStore(path)
    target = (Path(patch_dir) / f"patches_{patch_size}_{patch_scale:g}.h5" if patch_dir is not None
              else on_demand_file(adata, patch_size, patch_scale))
    if target.is_file():
        store = PatchStore(target)
        if len(store) == adata.n_obs and store.obs_names.equals(adata.obs_names):
            return store
    try:
        # record=False: the collection's uns keeps its own store (and warnings)
        return PatchStore(extract_patches(adata, target, patch_size=patch_size, patch_scale=patch_scale,
                                          progress=False, record=False))
    except ReaderError:
        if path is not None:
            return PatchStore(path)
        raise


def _dense(x: Any, dtype: type) -> np.ndarray:
    return np.ascontiguousarray(dense(x), dtype=dtype)


def _size_factors(counts: np.ndarray, slide: np.ndarray) -> np.ndarray:
    """Each spot's total count divided by the median total of its slide (1 where that median is 0)."""
    total = counts.sum(axis=1, dtype=np.float64)
    out = np.ones_like(total)
    for code in np.unique(slide):
        sel = slide == code
        median = float(np.median(total[sel]))
        if median > 0:
            out[sel] = total[sel] / median
    return out.astype(np.float32)


def _collate(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Batches are built whole by :meth:`SpotDataset.__getitems__`; nothing is left to collate."""
    return batch


class SpotDataset(Dataset):
    """The spots of one split; item ``i`` is the ``i``-th spot of the split, batches are read in one go.

    Parameters
    ----------
    table
        The collection's :class:`SpotTable`.
    split
        ``"train"``, ``"val"`` or ``"test"``.
    augment
        ``"dihedral"``: each image under an independent random flip/90° rotation (training); ``"none"``.
    graph
        Local-graph settings for graph batches (see :meth:`SpotTable.batch`), or ``None`` for images.
    """

    def __init__(self, table: SpotTable, split: str, augment: str = "none",
                 graph: dict[str, Any] | None = None) -> None:
        if augment not in ("none", "dihedral"):
            raise ValueError(f"augment must be 'none' or 'dihedral', got {augment!r}")
        self.table = table
        self.split = split
        self.idx = table.indices(split)
        self.augment = augment
        self.graph = graph

    def __len__(self) -> int:
        return int(self.idx.size)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([i]).items()}

    def __getitems__(self, items: list[int]) -> dict[str, torch.Tensor]:
        out = self.table.batch(self.idx[np.asarray(items, dtype=np.int64)], self.graph)
        if self.augment == "dihedral" and "image" in out:
            from spared.models.layers import random_dihedral

            out["image"] = random_dihedral(out["image"])
        return out

    def slide_groups(self) -> list[np.ndarray]:
        """Dataset positions grouped by slide."""
        slides = self.table.slide[self.idx]
        return [np.flatnonzero(slides == s) for s in np.unique(slides)]


class SlideBatchSampler(Sampler[list[int]]):
    """Batches of one slide each: the whole slide, or spatially contiguous groups of at most ``max_spots``.

    With ``shuffle`` (training) every slide yields ``ceil(n / max_spots)`` groups per epoch, each the
    ``max_spots`` spots nearest a random spot, in a random slide order; without it the slide is cut by
    recursive median bisection into contiguous groups that cover every spot exactly once.
    """

    def __init__(self, dataset: SpotDataset, max_spots: int, shuffle: bool, seed: int = 0) -> None:
        if max_spots < 1:
            raise ValueError(f"max_spots must be >= 1, got {max_spots}")
        self.groups = dataset.slide_groups()
        self.positions = dataset.table.positions[dataset.idx]
        self.max_spots = max_spots
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the random draws of ``epoch`` (Lightning calls this every epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        if self.shuffle:
            return sum(math.ceil(g.size / self.max_spots) for g in self.groups)
        return sum(len(_bisect(self.positions[g], self.max_spots)) for g in self.groups)

    def __iter__(self) -> Iterator[list[int]]:
        if not self.shuffle:
            for group in self.groups:
                for part in _bisect(self.positions[group], self.max_spots):
                    yield group[part].tolist()
            return
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        batches = []
        for group in self.groups:
            if group.size <= self.max_spots:
                batches.append(group[rng.permutation(group.size)])
                continue
            pos = self.positions[group]
            for centre in rng.choice(group.size, math.ceil(group.size / self.max_spots), replace=False):
                dist = np.linalg.norm(pos - pos[centre], axis=1)
                batches.append(group[np.argpartition(dist, self.max_spots - 1)[:self.max_spots]])
        for b in rng.permutation(len(batches)):
            yield batches[b].tolist()


def _bisect(pos: np.ndarray, max_spots: int) -> list[np.ndarray]:
    """Split points into contiguous groups of at most ``max_spots`` by halving along the wider axis."""
    pending, out = [np.arange(pos.shape[0])], []
    while pending:
        part = pending.pop()
        if part.size <= max_spots:
            out.append(part)
            continue
        axis = int(np.ptp(pos[part], axis=0).argmax())
        order = part[np.argsort(pos[part, axis], kind="stable")]
        half = order.size // 2
        pending.extend([order[half:], order[:half]])
    return out


class SpotDataModule(L.LightningDataModule):
    """Train/val/test loaders for one model kind on one collection.

    Parameters
    ----------
    table
        The collection's :class:`SpotTable` (its target decides the loss entries of the batches).
    input_kind
        The model's ``input_kind``: ``"slide"`` batches by slide, every other kind by independent spots
        (``"graph"``: with their local graphs, see ``graph``).
    batch_size
        Spots per batch of patch-level (and graph) models.
    slide_spots
        Most spots per batch of slide-level models.
    seed
        Seed of the training batch order.
    num_workers
        DataLoader worker processes.
    augment
        Augmentation of the training images (``"none"`` or ``"dihedral"``); validation, test and ``prepare``
        batches are never augmented.
    graph
        Local-graph settings of graph models (``Predictor.graph_spec()``); required for ``"graph"``.
    """

    def __init__(self, table: SpotTable, input_kind: str, batch_size: int = 64, slide_spots: int = 512,
                 seed: int = 0, num_workers: int = 0, augment: str = "none",
                 graph: dict[str, Any] | None = None) -> None:
        super().__init__()
        from spared.models.base import INPUT_KINDS

        if input_kind not in INPUT_KINDS:
            raise ValueError(f"input_kind must be one of {list(INPUT_KINDS)}, got {input_kind!r}")
        self.table = table
        self.input_kind = input_kind
        self.batch_size = batch_size
        self.slide_spots = slide_spots
        self.seed = seed
        self.num_workers = num_workers
        if input_kind == "graph" and graph is None:
            raise ValueError("graph models need their local-graph settings (graph=model.graph_spec())")
        graph = graph if input_kind == "graph" else None
        self.datasets = {s: SpotDataset(table, s, graph=graph) for s in SPLITS}
        self.train_dataset = SpotDataset(table, "train", augment, graph)
        for split in ("train", "val"):
            if len(self.datasets[split]) == 0:
                raise ValueError(f"the collection has no {split} spots; training selects on val and fits on train")

    @property
    def eval_split(self) -> str:
        """The split reported: ``test``, or ``val`` when there is no test split."""
        from spared.bench.scoring import eval_split_of

        return eval_split_of(self.table.split)

    def loader(self, split: str, shuffle: bool = False) -> DataLoader:
        """Loader over ``split``; ``shuffle`` gives training batches (random order, full batches only, augmented)."""
        dataset = self.train_dataset if shuffle and split == "train" else self.datasets[split]
        if len(dataset) == 0:
            raise ValueError(f"the collection has no {split} spots")
        workers = {"num_workers": self.num_workers, "persistent_workers": self.num_workers > 0}
        if self.input_kind == "slide":
            sampler = SlideBatchSampler(dataset, self.slide_spots, shuffle=shuffle, seed=self.seed)
            return DataLoader(dataset, batch_sampler=sampler, collate_fn=_collate, **workers)
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, generator=generator,
                          drop_last=shuffle and len(dataset) > self.batch_size, collate_fn=_collate, **workers)

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader(self.eval_split)

    def predict_dataloader(self) -> DataLoader:
        return self.loader(self.eval_split)

    def prepare_batches(self) -> DataLoader:
        """The training split in order, without shuffling (what ``Predictor.prepare`` reads)."""
        return self.loader("train")

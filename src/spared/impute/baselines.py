"""Completion methods behind one small interface: SpaCKLE and the baselines it is compared with.

Every method reads ``adata.layers[layer]`` and treats the entries where ``adata.layers["mask"]`` is False as
unknown (it never looks at their values), then writes a completed copy of the layer in which only those
entries changed. ``fit`` learns whatever the method needs from the same data (train-split statistics,
SpaCKLE's weights) and returns the method; ``complete`` writes ``adata.layers[key_added]`` in place and returns
``None`` (the in-place convention of ``docs/data_model.md``).

- ``median``: the adaptive median filter (:func:`spared.impute.median.adaptive_median`) run on the layer with
  the unknown entries set to 0, so each is recomputed from its spatial neighbours.
- ``mean``: the gene's mean over the real values of the train-split spots.
- ``knn``: the mean of the real values of the gene over the spot's ``k`` nearest spots of the same slide
  (the gene's train mean when none of them has a real value).
- ``spackle``: :mod:`spared.impute.spackle` (trained by ``fit``, or loaded from a checkpoint).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from spared.data_model import dense
from spared.graph import spatial_graph
from spared.impute.spackle.config import SpackleConfig
from spared.impute.spackle.inputs import neighbour_table, observed_layer, split_rows, spot_layout

METHODS = ("spackle", "median", "mean", "knn")


@runtime_checkable
class CompletionMethod(Protocol):
    """What :func:`spared.impute.evaluate.evaluate` and ``spared complete`` need from a method."""

    name: str

    def fit(self, adata, layer: str) -> CompletionMethod: ...

    def complete(self, adata, layer: str, key_added: str) -> None: ...


def _write(adata, layer: str, key_added: str, filled: np.ndarray) -> None:
    """Store the layer with its missing entries replaced by ``filled`` (real entries kept bit for bit)."""
    values = dense(adata.layers[layer])
    adata.layers[key_added] = np.where(dense(adata.layers["mask"]), values,
                                       filled.astype(values.dtype, copy=False))


class MedianBaseline:
    """Adaptive median filter (SPEC §2.6) recomputing every missing entry from its spatial neighbours.

    Parameters
    ----------
    n_neighs
        Spatial graph degree: 6 (hexagonal Visium array) or 8 (legacy-ST square grid); ``None`` (default) reads
        the lattice off the spot coordinates (:func:`spared.graph.detect_geometry`), as the processing protocol
        does, and uses 6 when it cannot be told.
    max_hops
        Largest window in hops.
    slide_key
        ``obs`` column with slide labels.
    """

    name = "median"

    def __init__(self, n_neighs: int | None = None, max_hops: int = 4, slide_key: str = "slide_id") -> None:
        self.n_neighs, self.max_hops, self.slide_key = n_neighs, max_hops, slide_key

    def fit(self, adata, layer: str) -> MedianBaseline:
        """Nothing to learn; checks the inputs."""
        observed_layer(adata, layer)
        return self

    def graph_degree(self, adata) -> int:
        """``n_neighs``, or 8 when the coordinates form a square grid and 6 otherwise."""
        from spared.graph import GRAPH_DEGREE, detect_geometry

        slides, coords = spot_layout(adata, self.slide_key)
        if self.n_neighs is not None:
            return self.n_neighs
        return GRAPH_DEGREE[detect_geometry(coords, slides) or "hexagonal"]

    def complete(self, adata, layer: str, key_added: str) -> None:
        from spared.impute.median import adaptive_median

        values, _ = observed_layer(adata, layer)
        graph = spatial_graph(adata, n_neighs=self.graph_degree(adata), slide_key=self.slide_key)
        filled = adaptive_median(values, graph, adata.obs[self.slide_key].to_numpy(), self.max_hops)
        _write(adata, layer, key_added, filled)


class GeneMeanBaseline:
    """Each missing entry becomes its gene's mean over the real values of the train-split spots.

    A gene without any real train value falls back to 0.
    """

    name = "mean"

    def __init__(self, split_key: str = "split", reference_split: str = "train") -> None:
        self.split_key, self.reference_split = split_key, reference_split
        self.means: np.ndarray | None = None
        self.genes: list[str] | None = None

    def fit(self, adata, layer: str) -> GeneMeanBaseline:
        values, real = observed_layer(adata, layer)
        rows = split_rows(adata, self.split_key, [self.reference_split])
        if rows.size == 0:
            raise ValueError(f"no spot has obs[{self.split_key!r}] == {self.reference_split!r}; the gene means "
                             f"are learnt on that split")
        counts = real[rows].sum(axis=0)
        sums = values[rows].sum(axis=0, dtype=np.float64)
        self.means = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0).astype(np.float32)
        self.genes = [str(g) for g in adata.var_names]
        return self

    def gene_means(self, adata) -> np.ndarray:
        """The fitted means, checked against ``adata``'s genes."""
        if self.means is None or self.genes is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call .fit(adata, layer) first")
        if list(map(str, adata.var_names)) != self.genes:
            raise ValueError("the data's genes differ from (or are ordered unlike) those the means were fitted "
                             "on; fit on the same collection")
        return self.means

    def complete(self, adata, layer: str, key_added: str) -> None:
        filled = np.broadcast_to(self.gene_means(adata), (adata.n_obs, adata.n_vars))
        _write(adata, layer, key_added, filled)


class KnnMeanBaseline(GeneMeanBaseline):
    """Each missing entry becomes the mean real value of its gene over the spot's ``k`` same-slide neighbours.

    Where none of the ``k`` neighbours has a real value for the gene, the gene's train-split mean is used.

    Parameters
    ----------
    k
        Neighbours per spot.
    chunk
        Spots gathered at a time (memory ``O(chunk · k · G)``).
    """

    name = "knn"

    def __init__(self, k: int = 6, slide_key: str = "slide_id", spatial_key: str = "spatial",
                 split_key: str = "split", chunk: int = 4096) -> None:
        super().__init__(split_key)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k, self.slide_key, self.spatial_key, self.chunk = k, slide_key, spatial_key, chunk

    def complete(self, adata, layer: str, key_added: str) -> None:
        fallback = self.gene_means(adata)
        values, real = observed_layer(adata, layer)
        neighbours = neighbour_table(adata, self.k, self.slide_key, self.spatial_key)[:, 1:]
        filled = np.empty_like(values)
        for start in range(0, adata.n_obs, self.chunk):
            nb = neighbours[start:start + self.chunk]
            sums = values[nb].sum(axis=1, dtype=np.float64)
            counts = real[nb].sum(axis=1)
            filled[start:start + self.chunk] = np.where(counts > 0, sums / np.maximum(counts, 1), fallback)
        _write(adata, layer, key_added, filled)


class SpackleMethod:
    """SpaCKLE behind the common interface: ``fit`` trains it (unless a trained model was given).

    Parameters
    ----------
    config
        Training hyper-parameters (``None`` = defaults).
    model
        An already trained :class:`~spared.impute.spackle.SpackleModel`; ``fit`` then only checks the genes.
    run_dir
        Passed to :func:`spared.impute.spackle.fit` (CSV logs and the best checkpoint).
    """

    name = "spackle"

    def __init__(self, config: SpackleConfig | None = None, model=None, run_dir: str | Path | None = None) -> None:
        self.config, self.model, self.run_dir = config or SpackleConfig(), model, run_dir

    def fit(self, adata, layer: str) -> SpackleMethod:
        from spared.impute import spackle

        if self.model is None:
            self.model = spackle.fit(adata, layer, self.config, self.run_dir)
        return self

    def complete(self, adata, layer: str, key_added: str) -> None:
        from spared.impute import spackle

        if self.model is None:
            raise RuntimeError("SpackleMethod is not fitted; call .fit(adata, layer) or pass a trained model")
        spackle.complete(adata, self.model, layer, key_added)


def make_method(name: str, spackle_config: SpackleConfig | None = None) -> CompletionMethod:
    """A fresh method by name: ``"spackle"``, ``"median"``, ``"mean"`` or ``"knn"``."""
    factories = {"spackle": lambda: SpackleMethod(spackle_config), "median": MedianBaseline,
                 "mean": GeneMeanBaseline, "knn": KnnMeanBaseline}
    if name not in factories:
        raise ValueError(f"unknown completion method {name!r}; choose among {list(METHODS)}")
    return factories[name]()

"""SEPAL (Mejia et al., *SEPAL: Spatial Gene Expression Prediction from Local Graphs*, ICCV Workshops 2023;
github.com/BCV-Uniandes/SEPAL).

SEPAL is trained in two stages, as published. Stage 1 is the benchmark's ViT-B+Δ (``vit_b_delta``: a ViT-B/16
with ImageNet V1 weights regressing each patch's deltas from the train-split gene means); the runner trains it
(or reuses its finished run), freezes it and caches, per spot, its 768-d image embedding and its predicted
deltas. Stage 2 is this module, trained on those cached values: for every spot, the graph of the spots within
``n_hops`` of it on its slide (centre first; edges join nodes within ``n_hops`` of each other, the authors'
``A + A² + …`` neighbourhood matrix); each node's feature is ``[embedding, 2-D sine/cosine encoding of its array
offset from the centre]`` (offsets shifted to be non-negative, as the authors' look-up table); an MLP (→512,
ELU), GCN layers (512→256→128, each followed by ELU), SAGPooling keeping one node per graph (GraphConv score,
``x·tanh(score)``) and a linear layer to the genes followed by ELU (the authors' MLP applies its activation after
every layer) give a correction added to the centre's stage-1 deltas; prediction = means + deltas; MSE loss.
Recipe (``recipes/sepal.toml``): Adam 1e-5, 256 graphs per step, 300 epochs.

Batches are of input kind ``"graph"`` (see :mod:`spared.models.base`): no images, only the cached stage-1
values of each centre's neighbourhood. Memory is that of a small GNN (a few MiB per step at the default
settings; ``benchmarks/bench_models.py`` measures it).
Deviation: local graphs join exact lattice neighbours within a slide (the authors: squidpy's 6-nearest-neighbour
graph; the same on complete Visium lattices); masked MSE (SpaRED protocol).
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from spared.models.backbones import Weights
from spared.models.base import Batch, Predictor
from spared.models.layers import GCNConv, mlp, sincos_2d


class SEPAL(Predictor):
    """Stage 2 of SEPAL: a GNN over each spot's local graph of frozen stage-1 embeddings, correcting its deltas.

    Parameters
    ----------
    n_genes
        Genes predicted.
    embedding_dim
        Width of the stage-1 embeddings (768 for ViT-B/16).
    n_hops
        Local graph radius in hops (1 in the released Visium configuration).
    preprocess_dims, graph_dims
        Widths of the preprocessing MLP and of the GCN layers.
    neighbor_radius, hex_geometry
        Spatial lattice: see :func:`~spared.models.layers.lattice_edges`; the data module builds the graphs with
        them (:meth:`graph_spec`).
    backbone_weights, weights_dir
        Accepted for a uniform interface; the image backbone belongs to stage 1 (``vit_b_delta``).
    """

    name = "sepal"
    input_kind = "graph"
    predicts_deltas = True

    def __init__(self, n_genes: int, embedding_dim: int = 768, n_hops: int = 1,
                 preprocess_dims: tuple[int, ...] = (512,), graph_dims: tuple[int, ...] = (256, 128),
                 neighbor_radius: float = 2.01, hex_geometry: bool = True, backbone_weights: Weights = "imagenet",
                 weights_dir: str | None = None) -> None:
        super().__init__(n_genes)
        if n_hops < 1:
            raise ValueError(f"sepal: n_hops must be >= 1, got {n_hops}")
        self.embedding_dim = embedding_dim
        self.n_hops, self.neighbor_radius, self.hex_geometry = n_hops, neighbor_radius, hex_geometry
        # the largest |array offset| inside an n_hops neighbourhood: columns step by 2 on a hexagonal lattice
        self.position_shift = (2 if hex_geometry else 1) * n_hops
        self.preprocess = nn.Sequential(mlp([2 * embedding_dim, *preprocess_dims]), nn.ELU())
        widths = [preprocess_dims[-1], *graph_dims]
        self.convs = nn.ModuleList([GCNConv(a, b) for a, b in itertools.pairwise(widths)])
        self.act = nn.ELU()
        self.score_root = nn.Linear(widths[-1], 1, bias=False)
        self.score_rel = nn.Linear(widths[-1], 1)
        self.head = nn.Sequential(nn.Linear(widths[-1], n_genes), nn.ELU())

    def graph_spec(self) -> dict[str, float | int | bool]:
        """How the data module builds the local graphs for this model."""
        return {"n_hops": self.n_hops, "neighbor_radius": self.neighbor_radius, "hex_geometry": self.hex_geometry}

    def deltas(self, batch: Batch) -> torch.Tensor:
        """Predicted deltas ``(B, G)`` of the batch's centre spots: stage-1 deltas + graph correction."""
        self.check_prepared()
        emb = batch["embedding"].float()
        if emb.shape[1] != self.embedding_dim:
            raise ValueError(f"sepal: embeddings have {emb.shape[1]} features, the model expects "
                             f"{self.embedding_dim} (embedding_dim must match stage 1)")
        positions = sincos_2d(batch["offset"] + self.position_shift, self.embedding_dim)
        x = self.preprocess(torch.cat([emb, positions], 1))
        edges = batch["edges"]
        for conv in self.convs:
            x = self.act(conv(x, edges))
        n = batch["stage1"].shape[0]
        return batch["stage1"].float() + self.head(self._sag_pool(x, edges, batch["graph"], n))

    def _sag_pool(self, x: torch.Tensor, edges: torch.Tensor, graph_of: torch.Tensor, n: int) -> torch.Tensor:
        """SAGPooling with one node kept per graph: ``x_top · tanh(score_top)``, ``(n, C)``."""
        neigh = x.new_zeros(x.shape).index_add_(0, edges[1], x[edges[0]])
        score = (self.score_root(x) + self.score_rel(neigh)).squeeze(1)
        best = score.new_full((n,), float("-inf")).scatter_reduce(0, graph_of, score, "amax")
        node = torch.arange(x.shape[0], device=x.device)
        candidates = torch.where(score == best[graph_of], node, x.shape[0])
        top = torch.full((n,), x.shape[0], device=x.device).scatter_reduce(0, graph_of, candidates, "amin")
        return x[top] * torch.tanh(score[top])[:, None]

    def forward(self, batch: Batch) -> torch.Tensor:
        """Absolute predictions ``(B, G)`` of the batch's centre spots."""
        return self.add_mean(self.deltas(batch))

"""SEPAL (Mejia et al., *SEPAL: Spatial Gene Expression Prediction from Local Graphs*, ICCV Workshops 2023;
github.com/BCV-Uniandes/SEPAL).

Faithful: SEPAL predicts deltas from the train-split gene means. Stage 1 is an image encoder (ViT-B/16,
ImageNet-pretrained when asked) with a linear head regressing each patch's deltas. Stage 2 builds, for every
spot, the local graph of the spots within ``n_hops`` of it on the spatial lattice (centre first, induced
edges); each node's feature is ``[stage-1 embedding, 2-D sine/cosine encoding of its array offset from the
centre]``; an MLP (→512), GCN layers (512→256→128, ELU), SAGPooling keeping one node per graph (GraphConv
score, ``x·tanh(score)``) and a linear head give a correction that is added to the centre's stage-1 deltas;
prediction = means + deltas; MSE loss.
Simplified: the two stages are trained together (the total loss is the stage-1 loss plus the graph loss)
instead of one after the other, and the graph stage sees detached embeddings and stage-1 predictions, as
with the authors' frozen encoder; graphs are built inside a slide batch from array coordinates (exact
lattice neighbours; the authors used squidpy's 6-NN graph); masked MSE (SpaRED protocol).
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from spared.models.backbones import Weights, build_backbone
from spared.models.base import Batch, Predictor, masked_mse
from spared.models.layers import GCNConv, lattice_edges, local_subgraphs, mlp, sincos_2d


class SEPAL(Predictor):
    """Image encoder predicting deltas, refined by a GNN over each spot's local graph.

    Parameters
    ----------
    n_genes
        Genes predicted.
    backbone, backbone_weights, backbone_kwargs
        Stage-1 image encoder (ViT-B/16 in the paper's best configuration).
    n_hops
        Local graph radius in hops (1 in the released Visium configuration).
    preprocess_dims, graph_dims
        Widths of the preprocessing MLP and of the GCN layers.
    neighbor_radius, hex_geometry
        Spatial lattice: see :func:`~spared.models.layers.lattice_edges`.
    """

    name = "sepal"
    input_kind = "slide"
    predicts_deltas = True

    def __init__(self, n_genes: int, backbone: str = "vit_b_16", backbone_weights: Weights = None,
                 backbone_kwargs: dict | None = None, n_hops: int = 1, preprocess_dims: tuple[int, ...] = (512,),
                 graph_dims: tuple[int, ...] = (256, 128), neighbor_radius: float = 2.01,
                 hex_geometry: bool = True) -> None:
        super().__init__(n_genes)
        self.encoder = build_backbone(backbone, backbone_weights, **(backbone_kwargs or {}))
        dim = self.encoder.out_dim
        self.n_hops, self.neighbor_radius, self.hex_geometry = n_hops, neighbor_radius, hex_geometry
        self.stage1_head = nn.Linear(dim, n_genes)
        self.preprocess = mlp([2 * dim, *preprocess_dims])
        widths = [preprocess_dims[-1], *graph_dims]
        self.convs = nn.ModuleList([GCNConv(a, b) for a, b in itertools.pairwise(widths)])
        self.act = nn.ELU()
        self.score_root = nn.Linear(widths[-1], 1, bias=False)
        self.score_rel = nn.Linear(widths[-1], 1)
        self.head = nn.Linear(widths[-1], n_genes)

    def _predict(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage-1 deltas of every spot and the final deltas, both ``(B, G)``."""
        self.check_prepared()
        self.check_one_slide(batch, self.name)
        emb = self.encoder(batch["image"])
        stage1 = self.stage1_head(emb)
        emb, base = emb.detach(), stage1.detach()
        n = emb.shape[0]
        graph_of, spot_of, edges, _ = local_subgraphs(
            lattice_edges(batch["coords"], self.neighbor_radius, self.hex_geometry), n, self.n_hops)
        offsets = batch["coords"][spot_of] - batch["coords"][graph_of]
        x = self.preprocess(torch.cat([emb[spot_of], sincos_2d(offsets, emb.shape[1])], 1))
        for conv in self.convs:
            x = self.act(conv(x, edges))
        return stage1, base + self.head(self._sag_pool(x, edges, graph_of, n))

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
        """Absolute predictions ``(B, G)`` for the spots of one slide."""
        return self.add_mean(self._predict(batch)[1])

    def loss(self, batch: Batch) -> torch.Tensor:
        """Stage-1 masked MSE plus the graph stage's masked MSE."""
        stage1, final = self._predict(batch)
        return masked_mse(self.add_mean(stage1), batch) + masked_mse(self.add_mean(final), batch)

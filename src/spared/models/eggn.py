"""EGGN (Yang et al., *Spatial Transcriptomics Analysis of Gene Expression Prediction using Exemplar Guided
Graph Neural Network*, Pattern Recognition 2024; github.com/Yan98/EGN, version 2).

Faithful: spots are described by a frozen ResNet-18 with ImageNet V1 weights (512-d, the authors'
``build_exemplar.py`` and ``--mdim 512``; nothing image-side is trained). Per
slide, a heterogeneous graph has *window* nodes (the slide's spots, joined to their spatial lattice
neighbours) and *example* nodes (the union of every spot's ``numk`` nearest training exemplars from other
training slides, carrying ``[feature, expression]``, joined to their 3 nearest exemplars), with
example→window "refer" edges. Inputs are projected to 512-d (bias-free linear, LeakyReLU(0.2) MLP); each of
``num_layers=4`` heterogeneous layers runs GraphSAGE on window–window and example–example edges and the
Exemplar-Guided Bridging block on refer edges in both directions (sigmoid gates from the difference of the
two ends' attention projections scale ``[exemplar feature, exemplar expression, window]`` messages, mean
aggregated), relation outputs averaged per node type, LeakyReLU; a CSRA-style pooling adds to each window
the per-channel softmax-attended sum of its exemplars (learned λ, T=0.1); a linear layer gives the genes.
Loss: ``MSE + pcc_weight · (1 − mean per-gene Pearson correlation)`` (0.5). Recipe (``recipes/eggn.toml``):
AdamW 5e-4, weight decay 1e-4, no schedule, 300 epochs.
Deviations: a batch is one contiguous window of at most 512 spots of a slide instead of the whole slide, and
the window graph is built in the batch from array coordinates; exemplar expressions enter the bridging block
through their own projection of the raw expressions; masked MSE and correlation (SpaRED protocol); a spot is
never its own exemplar.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spared.models.backbones import Weights, build_backbone
from spared.models.base import Batch, masked_mse
from spared.models.layers import (
    ExemplarBank,
    ExemplarPredictor,
    SAGEConv,
    exemplar_loss_weight,
    knn_edges,
    lattice_edges,
    masked_pcc_loss,
    scatter_mean,
    scatter_softmax,
)


class ExemplarGuidedBridging(nn.Module):
    """EGB block on example→window edges; returns updated ``(example, window)`` features."""

    def __init__(self, dim: int, score_dim: int = 128) -> None:
        super().__init__()
        if (3 * dim) % score_dim:
            raise ValueError("eggn: 3·hidden must be a multiple of score_dim")
        self.dim, self.score_dim = dim, score_dim
        self.lin_src = nn.Linear(dim, dim, bias=False)
        self.lin_dst = nn.Linear(dim, dim, bias=False)
        self.lin_y = nn.Linear(dim, dim, bias=False)
        self.att = nn.Sequential(nn.LeakyReLU(0.2), nn.Linear(dim, score_dim, bias=False))
        self.score = nn.Sequential(nn.LeakyReLU(0.2), nn.Linear(score_dim, 2 * score_dim))
        self.bias_src = nn.Parameter(torch.zeros(dim))
        self.bias_dst = nn.Parameter(torch.zeros(dim))
        self.out_src = nn.Linear(dim, dim)
        self.out_dst = nn.Linear(dim, dim)
        for lin in (self.lin_src, self.lin_dst, self.lin_y, self.att[1], self.score[1], self.out_src,
                    self.out_dst):
            nn.init.trunc_normal_(lin.weight, std=0.02)

    def _message(self, a: torch.Tensor, b: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        x = torch.cat([a, b], -1) * gate.repeat_interleave(3 * self.dim // self.score_dim, -1)
        return x.view(-1, 3, self.dim).mean(1)

    def forward(self, example: torch.Tensor, window: torch.Tensor, example_y: torch.Tensor,
                edges: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``edges`` ``(2, E)`` = ``[example, window]``."""
        src, dst = edges
        xs, xd, ys = self.lin_src(example), self.lin_dst(window), self.lin_y(example_y)
        gates = self.score(self.att(xs)[src] - self.att(xd)[dst]).sigmoid()
        gate_dst, gate_src = gates.split(self.score_dim, -1)
        exemplar = torch.cat([xs, ys], -1)[src]
        to_window = scatter_mean(self._message(exemplar, xd[dst], gate_dst), dst, window.shape[0])
        to_example = scatter_mean(self._message(xd[dst], exemplar, gate_src), src, example.shape[0])
        return self.out_src(to_example + self.bias_src), self.out_dst(to_window + self.bias_dst)


class HeteroLayer(nn.Module):
    """One heterogeneous layer: SAGE on window–window and example–example, EGB on refer edges, mean per type."""

    def __init__(self, dim: int, score_dim: int) -> None:
        super().__init__()
        self.window_conv = SAGEConv(dim, dim)
        self.example_conv = SAGEConv(dim, dim)
        self.bridge = ExemplarGuidedBridging(dim, score_dim)

    def forward(self, window: torch.Tensor, example: torch.Tensor, example_y: torch.Tensor,
                edges: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Updated ``(window, example)`` features."""
        to_example, to_window = self.bridge(example, window, example_y, edges["refer"])
        window = (self.window_conv(window, edges["near"]) + to_window) / 2
        example = (self.example_conv(example, edges["close"]) + to_example) / 2
        return F.leaky_relu(window, 0.2), F.leaky_relu(example, 0.2)


class EGGN(ExemplarPredictor):
    """Exemplar-guided heterogeneous graph network over the spots of one slide.

    Parameters
    ----------
    n_genes
        Genes predicted.
    hidden
        Node width (512).
    num_layers
        Heterogeneous layers (4).
    numk
        Exemplars per spot.
    example_knn
        Neighbours of each exemplar among the batch's exemplars (3).
    score_dim
        Width of the bridging block's gate scores (128; ``3·hidden`` must be a multiple of it).
    neighbor_radius, hex_geometry
        Window graph: see :func:`~spared.models.layers.lattice_edges`.
    retrieval_backbone, backbone_weights, weights_dir, backbone_kwargs
        Frozen feature extractor (ResNet-18 with ImageNet V1 weights in the authors' code).
    pcc_weight
        Weight of the correlation term of the loss (``None``: the recipe's).
    """

    name = "eggn"
    input_kind = "slide"

    def __init__(self, n_genes: int, hidden: int = 512, num_layers: int = 4, numk: int = 6,
                 example_knn: int = 3, neighbor_radius: float = 2.01, hex_geometry: bool = True,
                 score_dim: int = 128, retrieval_backbone: str = "resnet18", backbone_weights: Weights = "imagenet",
                 weights_dir: str | None = None, backbone_kwargs: dict | None = None,
                 pcc_weight: float | None = None) -> None:
        super().__init__(n_genes)
        self.pcc_weight = exemplar_loss_weight(self.name, pcc_weight)
        self.numk, self.example_knn = numk, example_knn
        self.neighbor_radius, self.hex_geometry = neighbor_radius, hex_geometry
        self.bank = ExemplarBank(build_backbone(retrieval_backbone, backbone_weights, weights_dir,
                                                **(backbone_kwargs or {})), n_genes)
        mdim = self.bank.encoder.out_dim
        self.pre_window = nn.Linear(mdim, hidden, bias=False)
        self.pre_example = nn.Linear(mdim + n_genes, hidden, bias=False)
        self.pre_y = nn.Linear(n_genes, hidden, bias=False)
        self.post = nn.Sequential(nn.LeakyReLU(0.2), nn.Linear(hidden, hidden, bias=False), nn.LeakyReLU(0.2))
        self.layers = nn.ModuleList([HeteroLayer(hidden, score_dim) for _ in range(num_layers)])
        self.pool_head = nn.Linear(hidden, hidden)
        self.pool_lam = nn.Parameter(torch.tensor(0.1))
        self.pool_temperature = 0.1
        self.head = nn.Linear(hidden, n_genes)

    @property
    def requires_prepare(self) -> bool:
        """EGGN always needs the training exemplar bank."""
        return True

    def graph(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Window features, bank rows of the example nodes and the three edge sets of the batch's graph."""
        self.check_prepared()
        self.check_one_slide(batch, self.name)
        feats = self.bank.encode(batch["image"])
        rows = self.bank.nearest(feats, batch["slide"], batch["index"], self.numk)
        examples, inverse = torch.unique(rows.flatten(), return_inverse=True)
        window_of = torch.arange(rows.shape[0], device=rows.device).repeat_interleave(rows.shape[1])
        example_x = torch.cat([self.bank.feats[examples], self.bank.exprs[examples]], 1)
        edges = {"near": lattice_edges(batch["coords"], self.neighbor_radius, self.hex_geometry),
                 "refer": torch.stack([inverse, window_of]),
                 "close": knn_edges(example_x, self.example_knn)}
        return feats, examples, edges

    def forward(self, batch: Batch) -> torch.Tensor:
        """Predictions ``(B, G)`` for the ``B`` spots of one slide."""
        feats, examples, edges = self.graph(batch)
        expr = self.bank.exprs[examples]
        window = self.post(self.pre_window(feats))
        example = self.post(self.pre_example(torch.cat([self.bank.feats[examples], expr], 1)))
        example_y = self.pre_y(expr)
        for layer in self.layers:
            window, example = layer(window, example, example_y, edges)
        return self.head(self.pool(window, example, edges["refer"]))

    def loss(self, batch: Batch) -> torch.Tensor:
        """Masked MSE plus ``pcc_weight`` × (1 − mean per-gene Pearson correlation)."""
        pred = self(batch)
        return masked_mse(pred, batch) + self.pcc_weight * masked_pcc_loss(pred, batch)

    def pool(self, window: torch.Tensor, example: torch.Tensor, refer: torch.Tensor) -> torch.Tensor:
        """CSRA-style pooling: ``head(w_i) + λ Σ_j softmax_j(T (e_j − head(w_i))) e_j`` over i's exemplars."""
        base = self.pool_head(window)
        src, dst = refer
        alpha = scatter_softmax((example[src] - base[dst]) * self.pool_temperature, dst, window.shape[0])
        attended = window.new_zeros(base.shape).index_add_(0, dst, example[src] * alpha)
        return base + self.pool_lam * attended

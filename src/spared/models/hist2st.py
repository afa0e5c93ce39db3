"""Hist2ST (Zeng et al., *Spatial transcriptomics prediction from histology jointly through Transformer and
graph neural networks*, Briefings in Bioinformatics 2022; github.com/biomed-AI/Hist2ST).

Faithful: per spot, a 112-px patch goes through a strided 7×7 convolution (32 channels) and a Convmixer
(``depth1=2`` blocks: two depthwise 5×5 conv/BN/GELU with a residual, then pointwise conv/GELU/BN), a 1×1
reduction to ``channel/8`` maps flattened to ``dim = (112/7)²·32/8 = 1024``; learned embeddings of the two
array coordinates are added; a Transformer (``depth2=8``, 16 heads of 64, MLP ``dim``) runs over all spots of
the slide; a GraphSAGE stack (``depth3=4`` layers, GCN-style mean over spatial neighbours, ReLU, L2
normalisation) follows, its layer outputs fused by a 2-layer LSTM (jumping knowledge, averaged over layers);
a LayerNorm + linear head gives the genes. Training adds the BAKE self-distillation (``bake`` augmented views:
random grayscale, rotation, horizontal flip; their predictions fused by softmax weights from a small
coefficient MLP; ``lamb · MSE(fused, prediction)``) and the ZINB head: three linear maps of the spot
representation give the mean (``exp``, clamped to [1e-5, 1e6]), dispersion (softplus, clamped to [1e-4, 1e4])
and dropout probability (sigmoid) of a zero-inflated negative binomial fitted to the spot's raw counts scaled by
its size factor (total counts of the kept genes / the slide's median), weighted ``zinb``. Loss weights come from
the recipe (``recipes/hist2st.toml``: MSE + 0.25 ZINB + 0.5 BAKE; Adam 1e-5 with StepLR(50 epochs, 0.9), 350
epochs). Batches must carry ``"counts"`` and ``"size_factor"`` when ``zinb > 0``.
Deviations: a batch is one contiguous window of at most 512 spots of a slide instead of the whole slide; the
spatial graph joins the lattice neighbours of each spot (Hist2ST: 4 nearest within 2 grid units on ST
arrays); an isolated spot keeps a zero neighbour mean instead of NaN; ``n_pos=128`` (Visium); masked MSE
(SpaRED protocol).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spared.models.backbones import Weights, check_no_backbone
from spared.models.base import Batch, Predictor, masked_mse
from spared.models.histogene import position_indices, resize
from spared.models.layers import gene_head, lattice_edges, scatter_mean, transformer


class ConvMixerBlock(nn.Module):
    """Depthwise (two conv/BN/GELU, residual) then pointwise (conv/GELU/BN) mixing."""

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        self.depthwise = nn.Sequential(
            nn.Conv2d(channels, channels, kernel, groups=channels, padding="same"), nn.BatchNorm2d(channels),
            nn.GELU(),
            nn.Conv2d(channels, channels, kernel, groups=channels, padding="same"), nn.BatchNorm2d(channels),
            nn.GELU())
        self.pointwise = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.GELU(), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` → ``(N, C, H, W)``."""
        return self.pointwise(self.depthwise(x) + x)


def zinb_nll(counts: torch.Tensor, mean: torch.Tensor, disp: torch.Tensor, pi: torch.Tensor,
             eps: float = 1e-10) -> torch.Tensor:
    """Mean negative log-likelihood of ``counts`` under ZINB(``mean``, ``disp``, ``pi``) (Hist2ST's ZINB loss).

    Negative binomial with mean ``μ`` and size ``r``: ``P(x) = Γ(x+r)/(Γ(r) x!) (r/(r+μ))^r (μ/(r+μ))^x``; a zero
    has probability ``π + (1−π) (r/(r+μ))^r``, a positive count ``(1−π) P(x)``.
    """
    nb = (torch.lgamma(disp + eps) + torch.lgamma(counts + 1.0) - torch.lgamma(counts + disp + eps)
          + (disp + counts) * torch.log1p(mean / (disp + eps))
          + counts * (torch.log(disp + eps) - torch.log(mean + eps)))
    positive = nb - torch.log(1.0 - pi + eps)
    zero = -torch.log(pi + (1.0 - pi) * torch.pow(disp / (disp + mean + eps), disp) + eps)
    return torch.where(counts <= 1e-8, zero, positive).mean()


class GraphSAGEBlock(nn.Module):
    """Hist2ST's ``gs_block`` (GCN variant): ``normalize(relu(W · mean_{j∈N(i)} h_j))``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Linear(dim, dim, bias=False)
        nn.init.xavier_uniform_(self.weight.weight)

    def forward(self, h: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        """``(N, dim)`` → ``(N, dim)``."""
        agg = scatter_mean(h[edges[0]], edges[1], h.shape[0])
        return F.normalize(F.relu(self.weight(agg)), p=2, dim=1)


class Hist2ST(Predictor):
    """Convmixer + Transformer + GraphSAGE over the spots of one slide, with BAKE self-distillation.

    Parameters
    ----------
    n_genes
        Genes predicted.
    fig_size, patch_size, channel, kernel_size
        Patch side, stem stride, Convmixer channels and kernel; ``dim = (fig_size // patch_size)² · channel/8``.
    depth1, depth2, depth3
        Convmixer blocks, Transformer layers, GraphSAGE layers.
    heads, dim_head
        Attention heads and their width.
    dropout
        Dropout (embedding and transformer).
    n_pos
        Size of each coordinate embedding table.
    bake
        Number of augmented views for self-distillation.
    lamb, zinb
        Loss weights of the self-distillation and ZINB terms (``None``: the recipe's; 0 disables).
    neighbor_radius, hex_geometry
        Spatial graph: see :func:`~spared.models.layers.lattice_edges`.
    backbone_weights, weights_dir
        Hist2ST has no pretrained image backbone: ``"none"``/``"imagenet"`` are accepted (nothing to load), a
        weights file is an error.
    """

    name = "hist2st"
    input_kind = "slide"

    def __init__(self, n_genes: int, fig_size: int = 112, patch_size: int = 7, channel: int = 32,
                 kernel_size: int = 5, depth1: int = 2, depth2: int = 8, depth3: int = 4, heads: int = 16,
                 dim_head: int = 64, dropout: float = 0.2, n_pos: int = 128, bake: int = 5,
                 lamb: float | None = None, zinb: float | None = None, neighbor_radius: float = 2.01,
                 hex_geometry: bool = True, backbone_weights: Weights = "none", weights_dir: str | None = None) -> None:
        super().__init__(n_genes)
        from spared.models.recipe import recipe

        check_no_backbone(self.name, backbone_weights)
        lamb = recipe(self.name).loss_weight("bake") if lamb is None else lamb
        zinb = recipe(self.name).loss_weight("zinb") if zinb is None else zinb
        if channel % 8:
            raise ValueError("hist2st: channel must be a multiple of 8")
        dim = (fig_size // patch_size) ** 2 * channel // 8
        self.fig_size, self.n_pos, self.bake, self.lamb, self.zinb = fig_size, n_pos, bake, lamb, zinb
        self.neighbor_radius, self.hex_geometry = neighbor_radius, hex_geometry
        self.patch_embedding = nn.Conv2d(3, channel, patch_size, patch_size)
        self.row_embed = nn.Embedding(n_pos, dim)
        self.col_embed = nn.Embedding(n_pos, dim)
        self.dropout = nn.Dropout(dropout)
        self.mixer = nn.Sequential(*[ConvMixerBlock(channel, kernel_size) for _ in range(depth1)])
        self.down = nn.Sequential(nn.Conv2d(channel, channel // 8, 1), nn.Flatten())
        self.transformer = transformer(dim, depth2, heads, dim_head, dim, dropout)
        self.gnn = nn.ModuleList([GraphSAGEBlock(dim) for _ in range(depth3)])
        self.jknet = nn.LSTM(dim, dim, num_layers=2)
        self.head = gene_head(dim, n_genes)
        self.coef = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 1)) if bake > 0 else None
        self.zinb_mean = nn.Linear(dim, n_genes) if zinb > 0 else None
        self.zinb_disp = nn.Linear(dim, n_genes) if zinb > 0 else None
        self.zinb_pi = nn.Linear(dim, n_genes) if zinb > 0 else None

    @property
    def needs_counts(self) -> bool:
        """Whether batches must carry raw ``"counts"`` and ``"size_factor"`` (the ZINB term)."""
        return self.zinb > 0

    def embed(self, images: torch.Tensor, pos: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        """Spot representations ``(B, dim)`` before the gene head."""
        x = self.dropout(self.patch_embedding(resize(images, self.fig_size)))
        x = self.down(self.mixer(x))
        g = self.transformer((x + self.row_embed(pos[:, 0]) + self.col_embed(pos[:, 1]))[None])[0]
        layers = []
        for block in self.gnn:
            g = block(g, edges)
            layers.append(g)
        return self.jknet(torch.stack(layers))[0].mean(0)

    def _inputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_one_slide(batch, self.name)
        pos = position_indices(batch["coords"], self.n_pos, self.name)
        return pos, lattice_edges(batch["coords"], self.neighbor_radius, self.hex_geometry)

    def forward(self, batch: Batch) -> torch.Tensor:
        """Predictions ``(B, G)`` for the ``B`` spots of one slide."""
        return self.head(self.embed(batch["image"], *self._inputs(batch)))

    def loss(self, batch: Batch) -> torch.Tensor:
        """Masked MSE plus ``lamb`` × the BAKE self-distillation loss plus ``zinb`` × the ZINB count loss."""
        pos, edges = self._inputs(batch)
        h = self.embed(batch["image"], pos, edges)
        pred = self.head(h)
        loss = masked_mse(pred, batch)
        if self.zinb > 0:
            loss = loss + self.zinb * self.count_loss(h, batch)
        if self.bake > 0 and self.lamb > 0:
            views, weights = [], []
            for _ in range(self.bake):
                h = self.embed(self._augment(batch["image"]), pos, edges)
                views.append(self.head(h))
                weights.append(self.coef(h))
            fused = (torch.stack(views) * torch.softmax(torch.stack(weights), dim=0)).sum(0)
            loss = loss + self.lamb * F.mse_loss(fused, pred)
        return loss

    def count_loss(self, h: torch.Tensor, batch: Batch) -> torch.Tensor:
        """ZINB negative log-likelihood of the batch's raw counts given spot representations ``h``."""
        if "counts" not in batch or "size_factor" not in batch:
            raise ValueError("hist2st's ZINB term needs raw counts: batches must carry 'counts' and 'size_factor' "
                             "(a collection with layers['counts']), or set zinb=0")
        mean = self.zinb_mean(h).exp().clamp(1e-5, 1e6) * batch["size_factor"].to(h.dtype)[:, None]
        disp = F.softplus(self.zinb_disp(h)).clamp(1e-4, 1e4)
        return zinb_nll(batch["counts"].to(h.dtype), mean, disp, torch.sigmoid(self.zinb_pi(h)))

    @staticmethod
    def _augment(images: torch.Tensor) -> torch.Tensor:
        """Hist2ST's view: random grayscale (p=0.1), rotation in ±90°, horizontal flip (p=0.2), one per slide."""
        from torchvision.transforms import v2

        return v2.Compose([v2.RandomGrayscale(0.1), v2.RandomRotation(90), v2.RandomHorizontalFlip(0.2)])(images)

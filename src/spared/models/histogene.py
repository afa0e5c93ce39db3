"""HisToGene (Pang, Su & Li, *Leveraging information in spatial transcriptomics to predict super-resolution
gene expression from histology images in tumors*, bioRxiv 2021; github.com/maxpmx/HisToGene).

Faithful: every spot of a slide is one token: its patch (112 px) flattened and linearly embedded to
``dim=1024``, plus learned embeddings of its two array coordinates; a ViT encoder (depth 8, 16 heads of 64,
MLP ``2·dim``, dropout 0.1, pre-norm blocks) attends over all spots of the batch at once; a LayerNorm + linear
head predicts the ``G`` genes of each token; MSE loss. Recipe (``recipes/histogene.toml``): Adam 1e-5, 100
epochs, no augmentation, PyTorch's initialisation.
Deviations: a batch is one contiguous window of at most 512 spots of a slide instead of the whole slide
(attention over every spot of a 4,000-spot Visium slide does not fit the benchmark's memory budget); patches of
other sizes are resized to ``patch_px`` (SpaRED patches are 224 px; HisToGene cropped 112 px) and
ImageNet-normalised; the position tables have ``n_pos=128`` entries (Visium array indices reach 127; ST used
64); the loss is masked to real entries (SpaRED protocol).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spared.models.backbones import Weights, check_no_backbone
from spared.models.base import Batch, Predictor
from spared.models.layers import gene_head, transformer


def position_indices(coords: torch.Tensor, n_pos: int, model: str) -> torch.Tensor:
    """Array coordinates as embedding indices ``(B, 2)``; raise when outside ``[0, n_pos)``."""
    pos = coords.long()
    if pos.numel() and (int(pos.min()) < 0 or int(pos.max()) >= n_pos):
        raise ValueError(f"{model}: array coordinates must lie in [0, {n_pos}); got {int(pos.min())}.."
                         f"{int(pos.max())} (raise n_pos)")
    return pos


def resize(images: torch.Tensor, px: int) -> torch.Tensor:
    """Resize square patches to ``px`` pixels (bilinear) when they have another size."""
    if images.shape[-1] == px and images.shape[-2] == px:
        return images
    return F.interpolate(images, size=(px, px), mode="bilinear", align_corners=False)


class HisToGene(Predictor):
    """ViT over the spots of one slide with learned spot-position embeddings.

    Parameters
    ----------
    n_genes
        Genes predicted.
    patch_px
        Side the patches are resized to before flattening.
    dim, depth, heads, dim_head
        Transformer width, layers, attention heads and head width.
    dropout
        Embedding/attention/MLP dropout.
    n_pos
        Size of each coordinate embedding table.
    backbone_weights, weights_dir
        HisToGene has no pretrained image backbone: ``"none"``/``"imagenet"`` are accepted (nothing to load), a
        weights file is an error.
    """

    name = "histogene"
    input_kind = "slide"

    def __init__(self, n_genes: int, patch_px: int = 112, dim: int = 1024, depth: int = 8, heads: int = 16,
                 dim_head: int = 64, dropout: float = 0.1, n_pos: int = 128, backbone_weights: Weights = "none",
                 weights_dir: str | None = None) -> None:
        super().__init__(n_genes)
        check_no_backbone(self.name, backbone_weights)
        self.patch_px = patch_px
        self.n_pos = n_pos
        self.patch_embedding = nn.Linear(3 * patch_px * patch_px, dim)
        self.row_embed = nn.Embedding(n_pos, dim)
        self.col_embed = nn.Embedding(n_pos, dim)
        self.dropout = nn.Dropout(dropout)
        self.vit = transformer(dim, depth, heads, dim_head, 2 * dim, dropout)
        self.head = gene_head(dim, n_genes)

    def forward(self, batch: Batch) -> torch.Tensor:
        """Predictions ``(B, G)`` for the ``B`` spots of one slide."""
        self.check_one_slide(batch, self.name)
        pos = position_indices(batch["coords"], self.n_pos, self.name)
        tokens = self.patch_embedding(resize(batch["image"], self.patch_px).flatten(1))
        tokens = tokens + self.row_embed(pos[:, 0]) + self.col_embed(pos[:, 1])
        return self.head(self.vit(self.dropout(tokens)[None]))[0]

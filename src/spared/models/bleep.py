"""BLEEP (Xie et al., *Spatially Resolved Gene Expression Prediction from H&E Histology Images via Bi-modal
Contrastive Learning*, NeurIPS 2023; github.com/bowang-lab/BLEEP).

Faithful: a ResNet-50 image encoder (ImageNet V1 weights by default, trainable) and the spot's expression
vector each go through a projection head (``Linear → GELU → Linear → Dropout``, residual, LayerNorm; 256-d,
dropout 0.1); training minimises BLEEP's CLIP-style loss with soft targets
``softmax((S_img + S_spot) / 2 / τ)`` (``τ = 1``), averaged over both directions. Prediction is by
retrieval: the query image embedding is compared with the embeddings of every training expression (the
bank, projected with the current spot head) by cosine similarity, and the prediction is the plain average
of the ``top_k`` (50) most similar training expressions.
Recipe (``recipes/bleep.toml``): AdamW 1e-3, weight decay 1e-3, batch 256, random flips and 90° rotations.
Simplified: the bank stores training expressions and re-projects them at prediction time (always in sync
with the trained head); the loss ignores ``mask`` (the contrastive objective uses whole expression vectors).
Deviations: torchvision's ResNet-50 V1 weights instead of timm's default ``resnet50`` weights (the repository
pins no timm version, and timm's default changed between releases); expression vectors enter the spot
projection centred on the train-split gene means. Centring only re-parametrises the projection's first linear
layer (``W(x − μ) + b`` spans the same functions as ``Wx + b``) but conditions it: SpaRED's log2(TPM+1) targets
carry a common offset many times their spread, which made every spot embedding nearly the same, whereas the
authors' input (log-normalised HVG counts, mostly zeros) has none.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spared.models.backbones import Weights, build_backbone
from spared.models.base import Batch, Predictor
from spared.models.layers import ProjectionHead


class BLEEP(Predictor):
    """Bi-modal contrastive image/expression embedding with prediction by nearest-expression retrieval.

    Parameters
    ----------
    n_genes
        Genes predicted.
    backbone, backbone_weights, weights_dir, backbone_kwargs
        Image encoder (ResNet-50 in the paper).
    projection_dim, dropout
        Shared embedding size and projection-head dropout.
    temperature
        Contrastive temperature ``τ``.
    top_k
        Training expressions averaged per prediction.
    """

    name = "bleep"
    input_kind = "retrieval"
    _resizable = ("gene_mean", "bank")

    def __init__(self, n_genes: int, backbone: str = "resnet50", backbone_weights: Weights = "imagenet",
                 weights_dir: str | None = None, backbone_kwargs: dict | None = None, projection_dim: int = 256,
                 dropout: float = 0.1, temperature: float = 1.0, top_k: int = 50) -> None:
        super().__init__(n_genes)
        self.encoder = build_backbone(backbone, backbone_weights, weights_dir, **(backbone_kwargs or {}))
        self.image_projection = ProjectionHead(self.encoder.out_dim, projection_dim, dropout)
        self.spot_projection = ProjectionHead(n_genes, projection_dim, dropout)
        self.temperature = temperature
        self.top_k = top_k
        self.register_buffer("bank", torch.zeros(0, n_genes))
        self._bank_parts: list[torch.Tensor] = []

    def image_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """Projected image embeddings ``(B, projection_dim)``."""
        return self.image_projection(self.encoder(images))

    def spot_embedding(self, expression: torch.Tensor) -> torch.Tensor:
        """Projected expression embeddings ``(B, projection_dim)`` of expressions centred on the train means."""
        return self.spot_projection(torch.nan_to_num(expression.float()) - self.gene_mean)

    def loss(self, batch: Batch) -> torch.Tensor:
        """BLEEP's symmetric contrastive loss with soft targets."""
        img = self.image_embedding(batch["image"])
        spot = self.spot_embedding(batch["target"])
        logits = spot @ img.T / self.temperature
        targets = F.softmax((img @ img.T + spot @ spot.T) / 2 / self.temperature, dim=-1)
        spots_loss = -(targets * F.log_softmax(logits, dim=-1)).sum(-1)
        images_loss = -(targets.T * F.log_softmax(logits.T, dim=-1)).sum(-1)
        return ((spots_loss + images_loss) / 2).mean()

    def retrieve(self, batch: Batch) -> torch.Tensor:
        """Bank rows ``(B, top_k)`` of the training expressions most similar to each query image."""
        self.check_prepared()
        query = F.normalize(self.image_embedding(batch["image"]), dim=-1)
        keys = F.normalize(self.spot_embedding(self.bank), dim=-1)
        return (query @ keys.T).topk(min(self.top_k, self.bank.shape[0]), dim=-1).indices

    def forward(self, batch: Batch) -> torch.Tensor:
        """Average of the ``top_k`` retrieved training expressions ``(B, G)``."""
        return self.bank[self.retrieve(batch)].mean(1)

    def prepare_step(self, batch: Batch) -> None:
        """Collect the training expressions of the bank."""
        super().prepare_step(batch)
        self._bank_parts.append(torch.nan_to_num(batch["target"].float()))

    def prepare_end(self) -> None:
        """Stack the bank."""
        super().prepare_end()
        self.bank = torch.cat(self._bank_parts)
        self._bank_parts = []

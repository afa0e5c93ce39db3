"""EGN (Yang et al., *Exemplar Guided Deep Neural Network for Spatial Transcriptomics Analysis of Gene
Expression Prediction*, WACV 2023; github.com/Yan98/EGN, version 1).

Faithful: exemplars are retrieved in the feature space of a frozen ImageNet ResNet-50 (global pooled, 2048-d):
the ``numk=6`` nearest training spots by Euclidean distance, from other training slides. A ViT backbone
(patch 32, ``dim=1024``, depth 8, 16 heads of 64, MLP 4096, learned position embedding added at the input
and before every attention) carries the patch; a projector maps the query's frozen feature and each
exemplar's ``[feature, expression]`` to ``dim`` and refines them with ``player=2`` pre-norm MLPs; every
``bfre=2``-th layer an Exemplar Bridging block updates the query from the exemplars (gated by
``MLP([q − k, k])`` against the projected exemplar expressions), gates the image tokens spatially with a
per-head map computed from the query, and feeds the gated tokens back into the query. The output is
``[CSRA pooling of the tokens, query]`` through LayerNorm + linear to the genes, trained with
``MSE + pcc_weight · (1 − mean per-gene Pearson correlation)`` (0.5 in the authors' code). Recipe
(``recipes/egn.toml``): AdamW 5e-4, weight decay 1e-4, cosine schedule with 100 warm-up steps restarting every
half epoch down to lr/5, batch 32, 50 epochs.
Deviations: 224-px input (the authors' 256-px windows), so the token grid is 7×7 instead of 8×8; no min-max
expression scaling (targets are already log-normalised); masked MSE and correlation (SpaRED protocol); the
query is never its own exemplar.
"""

from __future__ import annotations

import torch
from torch import nn

from spared.models.backbones import Weights, build_backbone
from spared.models.base import Batch, masked_mse
from spared.models.histogene import resize
from spared.models.layers import (
    Attention,
    ExemplarBank,
    ExemplarPredictor,
    PreNorm,
    exemplar_loss_weight,
    feed_forward,
    gene_head,
    masked_pcc_loss,
)


class Projector(nn.Module):
    """Maps the query feature and exemplar ``[feature, expression]`` pairs to ``dim`` and mixes them."""

    def __init__(self, mdim: int, n_genes: int, dim: int, player: int, linear_projection: bool,
                 dropout: float) -> None:
        super().__init__()
        self.proq = nn.Linear(mdim, dim)
        self.proe = nn.Linear(mdim + n_genes, dim)
        self.layers = nn.ModuleList([PreNorm(dim, feed_forward(dim, dim, dropout)) for _ in range(player)])
        self.to_v = (nn.Linear(n_genes, dim) if linear_projection
                     else nn.Sequential(nn.Linear(n_genes, dim), nn.GELU(), nn.Linear(dim, dim)))

    def forward(self, q: torch.Tensor, oq: torch.Tensor, oq_v: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``q (B, 1, mdim)``, ``oq (B, k, mdim)``, ``oq_v (B, k, G)`` → the three in ``dim``."""
        x = torch.cat([self.proq(q), self.proe(torch.cat([oq, oq_v], -1))], 1)
        for ff in self.layers:
            x = ff(x) + x
        q, oq = x.split([q.shape[1], oq.shape[1]], 1)
        return q, oq, self.to_v(oq_v)


class Update(nn.Module):
    """Query/exemplar update of the EB block: gates from ``[q − k, k]`` applied to exemplar values."""

    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.query = nn.Sequential(nn.Linear(2 * dim, inner), nn.SiLU(), nn.Linear(inner, 2 * dim))
        self.value = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """New query ``(B, 1, dim)`` and exemplar keys ``(B, k, dim)``."""
        value = self.value(v)
        gate_q, gate_k = self.query(torch.cat([(q - k), k], -1)).chunk(2, -1)
        return (gate_q.sigmoid() * value).mean(1, keepdim=True) + q, self.norm(gate_k.sigmoid() * value + k)


class ExemplarBridging(nn.Module):
    """EB block: exemplar-updated query → per-head spatial gates on the image tokens, tokens → query."""

    def __init__(self, dim: int, heads: int, dim_head: int, grid: int) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads, self.grid = heads, grid
        self.update = Update(dim, 4 * dim_head)
        self.to_x = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, inner))
        self.to_k = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, grid * grid * heads))
        self.to_v = nn.Linear(inner, dim, bias=False)
        self.to_n = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, q: torch.Tensor, oq: torch.Tensor, oq_v: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokens ``x (B, n, dim)`` (``n = grid²``), query, exemplar keys and values → updated x, q, keys."""
        b, n, _ = x.shape
        new_q, new_k = self.update(q, oq, oq_v)
        gate = self.to_k(new_q).reshape(b, self.heads, n, 1).sigmoid()
        value = self.to_x(x).reshape(b, n, self.heads, -1).transpose(1, 2) * gate
        x = self.to_v(value.transpose(1, 2).reshape(b, n, -1)) + x
        q = self.to_n(value.mean(2).reshape(b, 1, -1)) + q
        return x, q, new_k


class CSRA(nn.Module):
    """Class-specific residual attention pooling: ``mean(s) + λ · Σ softmax(T s) s`` over tokens."""

    def __init__(self, dim: int, temperature: float = 0.1, lam: float = 0.5) -> None:
        super().__init__()
        self.head = nn.Linear(dim, dim)
        self.temperature, self.lam = temperature, lam

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, n, dim)`` → ``(B, dim)``."""
        score = self.head(x)
        return score.mean(1) + self.lam * (score * torch.softmax(score * self.temperature, dim=1)).sum(1)


class EGN(ExemplarPredictor):
    """Exemplar-guided ViT.

    Parameters
    ----------
    n_genes
        Genes predicted.
    image_size, patch_size
        ViT input side (patches are resized to it) and token patch side.
    dim, depth, heads, dim_head, mlp_dim, dropout
        ViT sizes.
    bhead, bdim, bfre
        EB heads, head width and frequency (an EB block after every ``bfre``-th attention).
    player, linear_projection
        Projector depth and whether exemplar expressions are projected linearly.
    numk
        Exemplars per spot.
    retrieval_backbone, backbone_weights, weights_dir, backbone_kwargs
        Frozen encoder of the exemplar search (ResNet-50 with ImageNet V1 weights in the authors' code).
    pcc_weight
        Weight of the correlation term of the loss (``None``: the recipe's).
    """

    name = "egn"
    input_kind = "exemplar"

    def __init__(self, n_genes: int, image_size: int = 224, patch_size: int = 32, dim: int = 1024,
                 depth: int = 8, heads: int = 16, dim_head: int = 64, mlp_dim: int = 4096, dropout: float = 0.0,
                 bhead: int = 8, bdim: int = 64, bfre: int = 2, player: int = 2, linear_projection: bool = True,
                 numk: int = 6, retrieval_backbone: str = "resnet50", backbone_weights: Weights = "imagenet",
                 weights_dir: str | None = None, backbone_kwargs: dict | None = None,
                 pcc_weight: float | None = None) -> None:
        super().__init__(n_genes)
        self.pcc_weight = exemplar_loss_weight(self.name, pcc_weight)
        if image_size % patch_size:
            raise ValueError("egn: image_size must be a multiple of patch_size")
        grid = image_size // patch_size
        self.image_size, self.patch_size, self.numk = image_size, patch_size, numk
        self.bank = ExemplarBank(build_backbone(retrieval_backbone, backbone_weights, weights_dir,
                                                **(backbone_kwargs or {})), n_genes)
        mdim = self.bank.encoder.out_dim
        self.to_patch_embedding = nn.Linear(3 * patch_size * patch_size, dim)
        self.pos_embedding = nn.Parameter(torch.randn(1, grid * grid, dim))
        self.dropout = nn.Dropout(dropout)
        self.projector = Projector(mdim, n_genes, dim, player, linear_projection, dropout)
        self.attn = nn.ModuleList([PreNorm(dim, Attention(dim, heads, dim_head, dropout)) for _ in range(depth)])
        self.ff = nn.ModuleList([PreNorm(dim, feed_forward(dim, mlp_dim, dropout)) for _ in range(depth)])
        self.eb = nn.ModuleDict({str(i): ExemplarBridging(dim, bhead, bdim, grid)
                                 for i in range(depth) if (i + 1) % bfre == 0})
        self.pool = CSRA(dim)
        self.head = gene_head(2 * dim, n_genes)

    def exemplars(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query feature ``(B, 1, mdim)``, exemplar features ``(B, k, mdim)`` and expressions ``(B, k, G)``."""
        self.check_prepared()
        feats = self.bank.encode(batch["image"])
        rows = self.bank.nearest(feats, batch["slide"], batch["index"], self.numk)
        return feats[:, None], self.bank.feats[rows], self.bank.exprs[rows]

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` → ``(B, grid², 3·p²)`` non-overlapping patch vectors."""
        p = self.patch_size
        x = resize(images, self.image_size).unfold(2, p, p).unfold(3, p, p)
        return x.permute(0, 2, 3, 4, 5, 1).flatten(3).flatten(1, 2)

    def forward(self, batch: Batch) -> torch.Tensor:
        """Predictions ``(B, G)``."""
        q, oq, oq_v = self.exemplars(batch)
        q, oq, oq_v = self.projector(q, oq, oq_v)
        x = self.dropout(self.to_patch_embedding(self.patchify(batch["image"])) + self.pos_embedding)
        for i, (attn, ff) in enumerate(zip(self.attn, self.ff, strict=True)):
            x = attn(x + self.pos_embedding) + x
            if str(i) in self.eb:
                x, q, oq = self.eb[str(i)](x, q, oq, oq_v)
            x = ff(x) + x
        return self.head(torch.cat([self.pool(x), q[:, 0]], 1))

    def loss(self, batch: Batch) -> torch.Tensor:
        """Masked MSE plus ``pcc_weight`` × (1 − mean per-gene Pearson correlation)."""
        pred = self(batch)
        return masked_mse(pred, batch) + self.pcc_weight * masked_pcc_loss(pred, batch)

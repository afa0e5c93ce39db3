"""ViT-B baselines of SpaRED (Dosovitskiy et al., *An Image is Worth 16x16 Words*, ICLR 2021; used as the
image encoder and baselines of SEPAL, Mejia et al. 2023, and SpaRED, Ruiz et al. 2024/2025).

Faithful: torchvision's ViT-B/16 with its ImageNet V1 weights on each patch resized to its 224-px input, the
class token mapped by a freshly initialised linear layer to the ``G`` genes, trained end to end with masked MSE
(recipe: Adam 1e-4, batch 320, 50 epochs, random flips and 90° rotations, as SEPAL's stage 1).
``vit_b`` predicts absolute expression; ``vit_b_delta`` (ViT-B+Δ) predicts deltas from the train-split gene
means (learned through ``prepare``) and reports ``means + deltas``: SEPAL's first stage. Both heads keep
PyTorch's initialisation, so on the same batch ViT-B starts near 0 and ViT-B+Δ near the train means; that
difference is the ViT-B vs ViT-B+Δ contrast the benchmark reports.
Simplified: patches of another size are resized to 224 px rather than re-interpolating position embeddings.
"""

from __future__ import annotations

from spared.models.layers import BackboneRegressor


class ViTB(BackboneRegressor):
    """ViT-B/16 + linear head per patch (absolute expression)."""

    name = "vit_b"
    arch = "vit_b_16"


class ViTBDelta(ViTB):
    """ViT-B/16 + linear head predicting deltas from the train gene means (ViT-B+Δ)."""

    name = "vit_b_delta"
    predicts_deltas = True

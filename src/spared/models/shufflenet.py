"""ShuffleNet baseline (Ma et al., *ShuffleNet V2*, ECCV 2018), the light CNN column of the SpaRED benchmark.

Faithful: torchvision's ShuffleNetV2 x0.5 with its ImageNet V1 weights, as the SpaRED authors' image encoder
builds it (``spared/models/models.py``), its ``fc`` replaced by a freshly initialised linear layer to the ``G``
genes, trained end to end with masked MSE on absolute expression, one patch at a time. The recipe
(``recipes/shufflenet.toml``) is the SpaRED authors' image-encoder recipe: Adam 1e-4, batch 320, 50 epochs,
random flips and 90° rotations.
"""

from __future__ import annotations

from spared.models.layers import BackboneRegressor


class ShuffleNet(BackboneRegressor):
    """ShuffleNetV2 x0.5 + linear head per patch (absolute expression)."""

    name = "shufflenet"
    arch = "shufflenet_v2_x0_5"

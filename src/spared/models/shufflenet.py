"""ShuffleNet baseline (Ma et al., *ShuffleNet V2*, ECCV 2018), the light CNN column of the SpaRED benchmark.

Faithful: torchvision's ShuffleNetV2 x1.0 (ImageNet-pretrained when asked), its ``fc`` replaced by a linear
layer to the ``G`` genes, trained end to end with masked MSE on absolute expression, one patch at a time.
Simplified: nothing beyond the SpaRED baseline (no augmentation by default).
"""

from __future__ import annotations

from spared.models.layers import BackboneRegressor


class ShuffleNet(BackboneRegressor):
    """ShuffleNetV2 x1.0 + linear head per patch (absolute expression)."""

    name = "shufflenet"
    arch = "shufflenet_v2_x1_0"

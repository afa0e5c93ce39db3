"""ST-Net (He et al., *Integrating spatial gene expression and breast tumour morphology via deep learning*,
Nature Biomedical Engineering 2020).

Faithful: a DenseNet-121 (ImageNet-pretrained when ``backbone_weights="imagenet"``) applied to each spot's
patch independently, its classifier replaced by a linear layer to the ``G`` genes, trained end to end with
MSE on absolute (log) expression; random 90° rotations and flips of training patches.
Simplified: no test-time averaging over symmetries; the loss is masked to real entries (SpaRED protocol).
"""

from __future__ import annotations

from spared.models.layers import BackboneRegressor


class STNet(BackboneRegressor):
    """DenseNet-121 + linear head per patch (absolute expression)."""

    name = "stnet"
    arch = "densenet121"
    default_augment = True

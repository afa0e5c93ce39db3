"""ST-Net (He et al., *Integrating spatial gene expression and breast tumour morphology via deep learning*,
Nature Biomedical Engineering 2020; github.com/bryanhe/ST-Net).

Faithful: a DenseNet-121 (ImageNet V1 weights by default) applied to each spot's patch independently, its
classifier replaced by a linear layer to the ``G`` genes whose weight starts at 0 and bias at the train-split
gene means (``head_init="train_mean"``, the authors' initialisation), trained end to end with MSE on absolute
(log) expression. The recipe (``recipes/stnet.toml``) adds the authors' training: SGD lr 1e-6 momentum 0.9,
batch 32, 50 epochs, random flips and 90° rotations of the training patches, and predictions averaged over the
8 symmetries of each patch at evaluation.
Deviations (recipe ``[[deviations]]``): patches are ImageNet-normalised instead of with per-dataset
statistics; targets are the SpaRED layers and the loss is masked to real measurements (SpaRED protocol).
"""

from __future__ import annotations

from spared.models.layers import BackboneRegressor


class STNet(BackboneRegressor):
    """DenseNet-121 + linear head per patch (absolute expression)."""

    name = "stnet"
    arch = "densenet121"

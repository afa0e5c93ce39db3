"""Histology → expression prediction models behind one interface (:class:`~spared.models.base.Predictor`).

``build_model(name, n_genes, backbone_weights=None, **config)`` builds any of :data:`MODEL_NAMES` (the ten
columns of the SpaRED results page); :data:`MODEL_INFO` describes them without importing torch. The batch
contract is documented in :mod:`spared.models.base`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from spared.models.base import Predictor


class ModelInfo(NamedTuple):
    """What a model is: its column label, paper, year, how it is batched and what it regresses."""

    label: str
    paper: str
    year: int
    input_kind: str
    target: str


MODEL_INFO: dict[str, ModelInfo] = {
    "shufflenet": ModelInfo("ShuffleNet", "Ma et al., ShuffleNet V2 (ECCV)", 2018, "patch", "absolute"),
    "stnet": ModelInfo("STNet", "He et al., ST-Net (Nature Biomedical Engineering)", 2020, "patch", "absolute"),
    "egn": ModelInfo("EGN", "Yang et al., EGN (WACV)", 2023, "exemplar", "absolute"),
    "eggn": ModelInfo("EGGN", "Yang et al., EGGN (Pattern Recognition)", 2024, "slide", "absolute"),
    "histogene": ModelInfo("HisToGene", "Pang et al., HisToGene (bioRxiv)", 2021, "slide", "absolute"),
    "vit_b": ModelInfo("ViT-B", "Dosovitskiy et al., ViT (ICLR)", 2021, "patch", "absolute"),
    "vit_b_delta": ModelInfo("ViT-B+Δ", "Mejia et al., SEPAL (ICCV Workshops)", 2023, "patch", "deltas"),
    "sepal": ModelInfo("SEPAL", "Mejia et al., SEPAL (ICCV Workshops)", 2023, "slide", "deltas"),
    "bleep": ModelInfo("BLEEP", "Xie et al., BLEEP (NeurIPS)", 2023, "retrieval", "absolute"),
    "hist2st": ModelInfo("Hist2ST", "Zeng et al., Hist2ST (Briefings in Bioinformatics)", 2022, "slide",
                         "absolute"),
}
MODEL_NAMES: tuple[str, ...] = tuple(MODEL_INFO)

_CLASSES = {
    "shufflenet": ("spared.models.shufflenet", "ShuffleNet"),
    "stnet": ("spared.models.stnet", "STNet"),
    "egn": ("spared.models.egn", "EGN"),
    "eggn": ("spared.models.eggn", "EGGN"),
    "histogene": ("spared.models.histogene", "HisToGene"),
    "vit_b": ("spared.models.vit", "ViTB"),
    "vit_b_delta": ("spared.models.vit", "ViTBDelta"),
    "sepal": ("spared.models.sepal", "SEPAL"),
    "bleep": ("spared.models.bleep", "BLEEP"),
    "hist2st": ("spared.models.hist2st", "Hist2ST"),
}
_LAZY = {"Predictor": "spared.models.base", "build_backbone": "spared.models.backbones",
         "PredictorModule": "spared.models.lightning"}

__all__ = ["MODEL_INFO", "MODEL_NAMES", "ModelInfo", "build_model", "model_class", *_LAZY]


def model_class(name: str) -> type[Predictor]:
    """The :class:`~spared.models.base.Predictor` subclass registered as ``name``."""
    if name not in _CLASSES:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODEL_NAMES)}")
    module, cls = _CLASSES[name]
    return getattr(importlib.import_module(module), cls)


def build_model(name: str, n_genes: int, backbone_weights: str | Path | None = None, **config: Any) -> Predictor:
    """Build model ``name`` predicting ``n_genes`` genes.

    Parameters
    ----------
    name
        One of :data:`MODEL_NAMES`.
    n_genes
        Genes per spot.
    backbone_weights
        ``None`` (random init, offline), ``"imagenet"`` (torchvision's weights; a clear error when they cannot
        be fetched) or a local ``state_dict`` file for the model's torchvision backbone. HisToGene and Hist2ST
        have no pretrained backbone and accept only ``None``.
    **config
        Model sizes and options (see each class), e.g. ``depth``/``dim`` or ``backbone_kwargs`` for tiny nets.
    """
    cls = model_class(name)
    if backbone_weights is not None:
        config["backbone_weights"] = backbone_weights
    return cls(n_genes, **config)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'spared.models' has no attribute {name!r}")

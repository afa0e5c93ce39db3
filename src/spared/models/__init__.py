"""Histology → expression prediction models behind one interface (:class:`~spared.models.base.Predictor`).

``build_model(name, n_genes, **config)`` builds any of :data:`TRAINED_MODELS` (the ten columns of the SpaRED
results page); :data:`PROBE_MODELS` are frozen foundation encoders with a linear probe
(:mod:`spared.models.foundation`, :mod:`spared.models.probe`). :data:`MODEL_INFO` describes every model without
importing torch, and :func:`spared.models.recipe.recipe` gives how its authors trained it. The batch contract
is documented in :mod:`spared.models.base`.
"""

from __future__ import annotations

import importlib
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
    "sepal": ModelInfo("SEPAL", "Mejia et al., SEPAL (ICCV Workshops)", 2023, "graph", "deltas"),
    "bleep": ModelInfo("BLEEP", "Xie et al., BLEEP (NeurIPS)", 2023, "retrieval", "absolute"),
    "hist2st": ModelInfo("Hist2ST", "Zeng et al., Hist2ST (Briefings in Bioinformatics)", 2022, "slide",
                         "absolute"),
    "uni_probe": ModelInfo("UNI (probe)", "Chen et al., UNI (Nature Medicine)", 2024, "probe", "absolute"),
    "conch_probe": ModelInfo("CONCH (probe)", "Lu et al., CONCH (Nature Medicine)", 2024, "probe", "absolute"),
    "hoptimus0_probe": ModelInfo("H-optimus-0 (probe)", "Saillard et al., H-optimus-0 (Bioptimus)", 2024, "probe",
                                 "absolute"),
    "virchow_probe": ModelInfo("Virchow (probe)", "Vorontsov et al., Virchow (Nature Medicine)", 2024, "probe",
                               "absolute"),
    "resnet50_probe": ModelInfo("ResNet-50 (probe)", "Jaume et al., HEST-1k (NeurIPS Datasets and Benchmarks)",
                                2024, "probe", "absolute"),
}
MODEL_NAMES: tuple[str, ...] = tuple(MODEL_INFO)
#: Models trained by gradient descent (the SpaRED columns).
TRAINED_MODELS: tuple[str, ...] = tuple(n for n, i in MODEL_INFO.items() if i.input_kind != "probe")
#: Frozen foundation encoders + linear probe (HEST-Benchmark protocol).
PROBE_MODELS: tuple[str, ...] = tuple(n for n, i in MODEL_INFO.items() if i.input_kind == "probe")

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

__all__ = ["MODEL_INFO", "MODEL_NAMES", "PROBE_MODELS", "TRAINED_MODELS", "ModelInfo", "build_model", "model_class",
           *_LAZY]


def model_class(name: str) -> type[Predictor]:
    """The :class:`~spared.models.base.Predictor` subclass registered as ``name``."""
    if name in PROBE_MODELS:
        raise ValueError(f"{name} is a frozen encoder with a linear probe, not a trained Predictor: use "
                         f"spared.models.foundation.build_encoder and spared.models.probe.LinearProbe")
    if name not in _CLASSES:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODEL_NAMES)}")
    module, cls = _CLASSES[name]
    return getattr(importlib.import_module(module), cls)


def build_model(name: str, n_genes: int, **config: Any) -> Predictor:
    """Build model ``name`` predicting ``n_genes`` genes.

    Parameters
    ----------
    name
        One of :data:`TRAINED_MODELS`.
    n_genes
        Genes per spot.
    **config
        Model options (see each class). ``backbone_weights``: ``"imagenet"`` (the default of every model with an
        image backbone: the ImageNet V1 weights its authors used, from ``weights_dir``, the torch hub cache or
        torchvision's URL; a clear error naming the file when they cannot be had), ``"none"`` (random
        initialisation) or a local ``state_dict`` file. HisToGene and Hist2ST have no pretrained backbone. Sizes
        such as ``depth``/``dim`` or ``backbone_kwargs`` build tiny nets for tests.
    """
    return model_class(name)(n_genes, **config)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'spared.models' has no attribute {name!r}")

"""spared's own models, registered through the public :func:`spared.models.registry.register` like any other.

Registration is lazy (classes are named by import reference with their input kind), so listing models imports
no torch. Each has a recipe file in ``spared/models/recipes/`` (how its authors trained it).
"""

from __future__ import annotations

from spared.models.registry import register

#: name: (class reference, label, paper, year, input kind, predicts deltas)
BUILTIN_MODELS = (
    ("shufflenet", "spared.models.shufflenet:ShuffleNet", "ShuffleNet", "Ma et al., ShuffleNet V2 (ECCV)", 2018,
     "patch", False),
    ("stnet", "spared.models.stnet:STNet", "STNet", "He et al., ST-Net (Nature Biomedical Engineering)", 2020,
     "patch", False),
    ("egn", "spared.models.egn:EGN", "EGN", "Yang et al., EGN (WACV)", 2023, "exemplar", False),
    ("eggn", "spared.models.eggn:EGGN", "EGGN", "Yang et al., EGGN (Pattern Recognition)", 2024, "slide", False),
    ("histogene", "spared.models.histogene:HisToGene", "HisToGene", "Pang et al., HisToGene (bioRxiv)", 2021,
     "slide", False),
    ("vit_b", "spared.models.vit:ViTB", "ViT-B", "Dosovitskiy et al., ViT (ICLR)", 2021, "patch", False),
    ("vit_b_delta", "spared.models.vit:ViTBDelta", "ViT-B+Δ", "Mejia et al., SEPAL (ICCV Workshops)", 2023, "patch",
     True),
    ("sepal", "spared.models.sepal:SEPAL", "SEPAL", "Mejia et al., SEPAL (ICCV Workshops)", 2023, "graph", True),
    ("bleep", "spared.models.bleep:BLEEP", "BLEEP", "Xie et al., BLEEP (NeurIPS)", 2023, "retrieval", False),
    ("hist2st", "spared.models.hist2st:Hist2ST", "Hist2ST", "Zeng et al., Hist2ST (Briefings in Bioinformatics)",
     2022, "slide", False),
    ("uni_probe", "spared.models.foundation:FoundationEncoder", "UNI (probe)", "Chen et al., UNI (Nature Medicine)",
     2024, "probe", False),
    ("conch_probe", "spared.models.foundation:FoundationEncoder", "CONCH (probe)",
     "Lu et al., CONCH (Nature Medicine)", 2024, "probe", False),
    ("hoptimus0_probe", "spared.models.foundation:FoundationEncoder", "H-optimus-0 (probe)",
     "Saillard et al., H-optimus-0 (Bioptimus)", 2024, "probe", False),
    ("virchow_probe", "spared.models.foundation:FoundationEncoder", "Virchow (probe)",
     "Vorontsov et al., Virchow (Nature Medicine)", 2024, "probe", False),
    ("resnet50_probe", "spared.models.foundation:FoundationEncoder", "ResNet-50 (probe)",
     "Jaume et al., HEST-1k (NeurIPS Datasets and Benchmarks)", 2024, "probe", False),
)


def register_builtins() -> None:
    """Register the ten trained models of the SpaRED results page and the five foundation-encoder probes."""
    for name, ref, label, paper, year, kind, deltas in BUILTIN_MODELS:
        register(name, ref, input_kind=kind, label=label, paper=paper, year=year, predicts_deltas=deltas,
                 origin="builtin")

"""Data loaders in two calls: from a dataset (catalogue name or processed AnnData) to train/val/test loaders.

>>> adata = spared.datasets.get("villacampa_lung_organoid")                      # doctest: +SKIP
>>> train, val, test = spared.bench.loaders(adata, target="completed", batch_size=32)  # doctest: +SKIP

Batches follow the contract of :mod:`spared.models.base`. The **target** decides what each batch trains on
(:mod:`spared.bench.targets`): ``"raw"`` puts the measured entries of ``c_d_log1p`` in ``"loss_mask"``,
``"median"`` every entry of ``c_d_log1p``, ``"completed"`` every entry of ``c_t_log1p``, and a layer name that
layer (every entry for completed ``c_t_*`` layers, the measured ones otherwise), so a completed-target experiment
cannot silently train the raw one. ``test`` is the split the benchmark scores: ``test``, or ``val`` for
collections without test slides. Patches come from the collection's patch store, cut from the slide images when
it has none of the requested size (:func:`spared.bench.data.patch_store`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple


class Loaders(NamedTuple):
    """Training (shuffled, augmented as asked), validation and evaluation loaders, and their data module."""

    train: Any
    val: Any
    test: Any
    data_module: Any


def data_module(data: Any, target: Any = "raw", *, input_kind: str = "patch", batch_size: int = 64,
                slide_spots: int = 512, imputed_weight: float = 1.0, patch_size: int = 224, patch_scale: float = 1.0,
                augment: str = "none", seed: int = 0, num_workers: int = 0, data_dir: str | Path | None = None,
                graph: dict[str, Any] | None = None) -> Any:
    """A Lightning :class:`~spared.bench.data.SpotDataModule` of a dataset for ``target``.

    Parameters
    ----------
    data
        A processed AnnData, or a dataset string as ``spared bench`` takes it: a catalogue key (processed on first
        use, :func:`spared.datasets.get`), ``"simulated[:key=value,...]"`` or a processed ``.h5ad`` path.
    target
        ``"raw"``, ``"median"``, ``"completed"``, an absolute layer name, or a :class:`~spared.bench.targets.Target`.
    input_kind
        How batches are drawn (:data:`spared.models.registry.INPUT_KINDS`; a model's ``input_kind``): ``"slide"``
        gives windows of at most ``slide_spots`` spots of one slide, the others batches of ``batch_size`` spots;
        ``"graph"`` also needs ``graph`` (``model.graph_spec()``) and stage-1 embeddings attached to the table.
    imputed_weight
        Loss weight of unmeasured entries (``"loss_weight"`` in the batches) for targets whose loss uses every
        entry; 1 is a plain MSE.
    patch_size, patch_scale
        Side of the images delivered, and the crop scale in spot diameters when patches must be cut.
    augment
        ``"dihedral"``: random flips and 90° rotations of training images; ``"none"``.
    seed, num_workers
        Training batch order, DataLoader worker processes.
    data_dir
        Cache of dataset strings (simulated and processed collections, their patches); default
        ``$SPARED_DATA/bench``. For an AnnData without a patch store of the right size, where patches are cut
        (default: beside its ``.h5ad``, else under ``$SPARED_DATA/patches/``; see
        :func:`spared.bench.data.patch_store`), once.
    """
    from spared.bench.data import SpotDataModule, SpotTable

    if isinstance(data, str | Path):
        from spared.bench.scoring import default_cache
        from spared.bench.train import load_table

        table = load_table(str(data), target, Path(data_dir) if data_dir else default_cache(), patch_size,
                           patch_scale, imputed_weight)
    else:
        table = SpotTable(data, target, patch_size=patch_size, patch_scale=patch_scale, patch_dir=data_dir,
                          imputed_weight=imputed_weight)
    return SpotDataModule(table, input_kind, batch_size=batch_size, slide_spots=slide_spots, seed=seed,
                          num_workers=num_workers, augment=augment, graph=graph)


def loaders(data: Any, target: Any = "raw", **options: Any) -> Loaders:
    """``(train, val, test, data_module)``: the loaders of :func:`data_module` (same arguments). ``train`` shuffles
    and keeps full batches only; ``test`` covers the evaluation split (``test``, else ``val``) once."""
    module = data_module(data, target, **options)
    return Loaders(module.train_dataloader(), module.val_dataloader(), module.test_dataloader(), module)

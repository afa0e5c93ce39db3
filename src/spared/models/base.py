"""The one interface every prediction model implements, and the batch contract it consumes.

Batch contract
--------------
A batch is a ``dict[str, torch.Tensor]`` with ``B`` spots and ``G`` genes:

``"image"``
    ``float32 (B, 3, H, W)``, normalised with the ImageNet mean/std. Any square size; models that need a fixed
    size (ViT-B: 224, HisToGene/Hist2ST: 112) resize internally.
``"target"``
    ``float32 (B, G)``: the target layer (e.g. ``c_d_log1p`` or ``c_t_log1p``), absolute values, never deltas.
    Delta models add the train-split gene means themselves.
``"mask"``
    ``bool (B, G)``: ``True`` on real measurements (the ``mask`` layer). Metrics use it.
``"loss_mask"``
    ``bool (B, G)``: the entries the training loss uses, decided by the target (:mod:`spared.bench.targets`):
    ``"mask"`` for ``raw``, all ``True`` for ``median`` and ``completed``. Defaults to ``"mask"`` when absent.
    Entries whose target is not finite are always left out of the loss.
``"loss_weight"`` (optional)
    ``float32 (B, G)``: weight of each loss entry (1 on measured entries, ``imputed_weight`` on the others) when
    unmeasured entries weigh less; the losses are then weighted means. Absent: every loss entry weighs 1.
``"coords"``
    ``(B, 2)`` integer array positions ``(array_row, array_col)``.
``"slide"``
    ``int64 (B,)`` slide code (the same code always means the same slide).
``"index"``
    ``int64 (B,)`` spot index in the collection (obs position); exemplar models use it to keep a spot out of
    its own exemplars.
``"counts"``, ``"size_factor"`` (when the collection has ``layers["counts"]``)
    ``float32 (B, G)`` raw UMI counts of the genes and ``float32 (B,)`` each spot's total count over the genes
    divided by the median total of its slide (Hist2ST's ZINB term).

How the runner batches a model depends on :attr:`Predictor.input_kind`:

``"patch"``
    any batch of independent spots.
``"slide"``
    every batch holds spots of one slide only: all of them, or a spatially contiguous subset (e.g. the ``N``
    spots nearest to a random centre); models build their spot graph from ``"coords"`` inside the batch.
``"exemplar"`` / ``"retrieval"``
    batches of independent spots, like ``"patch"``, and :meth:`Predictor.prepare` must see the training split
    first (exemplar bank / retrieval bank).
``"graph"`` (SEPAL's second stage)
    batches of independent centre spots without ``"image"``: each brings the local graph of the spots within
    ``n_hops`` of it on its slide, as one disjoint union of ``M`` nodes: ``"embedding"`` ``float32 (M, D)`` and
    ``"offset"`` ``int64 (M, 2)`` (array position minus its centre's) of every node, ``"graph"`` ``int64 (M,)``
    (row of the node's centre in the batch), ``"edges"`` ``int64 (2, E)`` and the centres' stage-1 deltas
    ``"stage1"`` ``float32 (B, G)``; the other keys describe the centres.

Whenever :attr:`Predictor.requires_prepare` is true (exemplar and retrieval models, delta models, EGGN) the
runner calls ``model.prepare(batches)`` once before training with an iterable over the *training split* in
the same batch format (unshuffled, no augmentation); what it stores is kept in the model's state dict, so a
checkpoint reloads with its bank.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from spared.models.registry import INPUT_KINDS  # noqa: F401 (re-exported: the kinds of this contract)

Batch = Mapping[str, torch.Tensor]



def to_device(batch: Batch, device: torch.device) -> dict[str, torch.Tensor]:
    """Move every tensor of ``batch`` to ``device`` (other values are kept as they are)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def loss_mask(batch: Batch) -> torch.Tensor:
    """The entries the loss uses: ``"loss_mask"`` (or ``"mask"``) and a finite target."""
    target = batch["target"]
    mask = batch.get("loss_mask", batch.get("mask"))
    finite = torch.isfinite(target)
    return finite if mask is None else mask.bool() & finite


def loss_weights(batch: Batch, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Weight of every entry in the loss: 0 outside :func:`loss_mask`, else ``"loss_weight"`` (default 1)."""
    mask = loss_mask(batch)
    weight = batch.get("loss_weight")
    if weight is None:
        return mask.to(dtype)
    return torch.where(mask, weight.to(dtype), torch.zeros((), dtype=dtype, device=mask.device))


def masked_mse(pred: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Mean squared error over the loss entries of ``batch``, weighted by ``"loss_weight"`` when present (0 when
    there are none)."""
    weight = loss_weights(batch, pred.dtype)
    diff = torch.where(weight > 0, pred - torch.nan_to_num(batch["target"]).to(pred.dtype), torch.zeros_like(pred))
    return (weight * diff.square()).sum() / weight.sum().clamp_min(torch.finfo(pred.dtype).tiny)


class ResizableBuffers(nn.Module):
    """Module whose listed buffers take the shape stored in a state dict when loaded (banks, gene means)."""

    _resizable: ClassVar[tuple[str, ...]] = ()

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        for name in self._resizable:
            key = prefix + name
            if key in state_dict and getattr(self, name) is not None:
                setattr(self, name, torch.empty_like(state_dict[key], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class Predictor(ResizableBuffers):
    """Histology → expression predictor.

    Subclasses declare :attr:`input_kind` (how the runner batches them), set :attr:`predicts_deltas` when the
    network regresses deltas, and implement :meth:`forward`; they may override :meth:`loss` (default: masked MSE
    of :meth:`forward` over the target's loss entries) and extend :meth:`prepare_step` / :meth:`prepare_end` to
    build banks from the training split. Optional class attributes describe a model registered with
    :func:`spared.models.register`: :attr:`label`, :attr:`paper`, :attr:`year` and :attr:`recipe` (training
    settings, completed by the default recipe).

    Parameters
    ----------
    n_genes
        Number of genes ``G`` predicted per spot.
    """

    name: ClassVar[str] = ""
    input_kind: ClassVar[str] = "patch"
    predicts_deltas: ClassVar[bool] = False
    #: Column label, citation and year shown by ``spared models``, the results and the report.
    label: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    year: ClassVar[int | None] = None
    #: Training settings of a registered model (``{"lr": 3e-4, "epochs": 20, ...}``); ``None``: the default recipe.
    recipe: ClassVar[Any] = None
    #: Whether batches must carry ``"counts"`` and ``"size_factor"``.
    needs_counts: bool = False
    _resizable = ("gene_mean",)

    def __init__(self, n_genes: int) -> None:
        super().__init__()
        if n_genes < 1:
            raise ValueError(f"n_genes must be positive, got {n_genes}")
        self.n_genes = n_genes
        self.register_buffer("gene_mean", torch.zeros(n_genes))
        self.register_buffer("prepared", torch.tensor(False))
        self._mean_sum: torch.Tensor | None = None
        self._mean_count: torch.Tensor | None = None

    @property
    def requires_prepare(self) -> bool:
        """Whether :meth:`prepare` must see the training split before training."""
        return self.predicts_deltas or self.input_kind in ("exemplar", "retrieval")

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters/buffers."""
        return self.gene_mean.device

    def forward(self, batch: Batch) -> torch.Tensor:
        """Predicted expression ``(B, G)`` on the scale of ``batch["target"]`` (absolute, not deltas)."""
        raise NotImplementedError

    def loss(self, batch: Batch) -> torch.Tensor:
        """Scalar training loss of ``batch``."""
        return masked_mse(self(batch), batch)

    def predict(self, batch: Batch) -> torch.Tensor:
        """Predictions ``(B, G)`` in evaluation mode without gradients (the training mode is restored)."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                return self(to_device(batch, self.device))
        finally:
            self.train(was_training)

    def prepare(self, train_batches: Iterable[Batch]) -> None:
        """See the training split once (batches in the contract's format) and store what the model needs."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                seen = False
                for batch in train_batches:
                    self.prepare_step(to_device(batch, self.device))
                    seen = True
                if not seen:
                    raise ValueError(f"{self.name}: prepare() received no training batches")
                self.prepare_end()
        finally:
            self.train(was_training)
        self.prepared.fill_(True)

    def prepare_step(self, batch: Batch) -> None:
        """Accumulate one training batch (base: per-gene sums for the train-split mean)."""
        target = batch["target"].float()
        finite = torch.isfinite(target)
        s = torch.where(finite, target, torch.zeros_like(target)).sum(0)
        c = finite.sum(0)
        self._mean_sum = s if self._mean_sum is None else self._mean_sum + s
        self._mean_count = c if self._mean_count is None else self._mean_count + c

    def prepare_end(self) -> None:
        """Finish :meth:`prepare` (base: store the train-split gene means used by delta models)."""
        self.gene_mean = (self._mean_sum / self._mean_count.clamp_min(1)).to(self.gene_mean)
        self._mean_sum = self._mean_count = None

    def check_prepared(self) -> None:
        """Raise when the model needs :meth:`prepare` and has not had it."""
        if self.requires_prepare and not bool(self.prepared):
            raise RuntimeError(f"{self.name} needs the training split first: call model.prepare(train_batches)")

    def add_mean(self, deltas: torch.Tensor) -> torch.Tensor:
        """Absolute prediction from predicted deltas (``deltas + train gene means``)."""
        return deltas + self.gene_mean

    @staticmethod
    def check_one_slide(batch: Batch, model: str) -> None:
        """Raise unless every spot of ``batch`` comes from the same slide (slide-level models)."""
        slide = batch.get("slide")
        if slide is not None and slide.numel() and bool((slide != slide[0]).any()):
            raise ValueError(f"{model} is a slide-level model: every batch must hold spots of one slide only")

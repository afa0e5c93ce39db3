"""Lightning wrapper around any :class:`~spared.models.base.Predictor`.

Training minimises ``model.loss(batch)``; validation and test collect ``model.predict``-style predictions,
targets and masks and, at the end of the epoch, log every metric of :func:`spared.metrics.compute` (over the
real entries, ``batch["mask"]``) as ``val_<metric>`` / ``test_<metric>`` (e.g. ``val_MSE``,
``val_PCC-Gene``); the last values are also kept in :attr:`PredictorModule.metrics`. Models that need the
training split must have had ``model.prepare(...)`` before ``Trainer.fit`` (checked at fit start).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch

from spared.models.base import Batch, Predictor

OPTIMIZERS = ("adam", "adamw", "sgd")


class PredictorModule(L.LightningModule):
    """LightningModule training a :class:`Predictor`.

    Parameters
    ----------
    model
        The predictor.
    lr, weight_decay
        Optimiser learning rate and weight decay.
    optimizer
        ``"adam"``, ``"adamw"`` or ``"sgd"`` (momentum 0.9).
    """

    def __init__(self, model: Predictor, lr: float = 1e-4, weight_decay: float = 0.0,
                 optimizer: str = "adam") -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        self.model = model
        self.lr, self.weight_decay, self.optimizer_name = lr, weight_decay, optimizer
        self.save_hyperparameters(ignore=["model"])
        self.metrics: dict[str, float] = {}
        self._outputs: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {"val": [], "test": []}

    def forward(self, batch: Batch) -> torch.Tensor:
        """Predictions ``(B, G)``."""
        return self.model(batch)

    def on_fit_start(self) -> None:
        """Fail early when the model needs ``prepare`` and did not get it."""
        self.model.check_prepared()

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """``model.loss`` of the batch, logged as ``train_loss``."""
        loss = self.model.loss(batch)
        self.log("train_loss", loss, prog_bar=True, batch_size=batch["target"].shape[0])
        return loss

    def _collect(self, stage: str, batch: Batch) -> None:
        with torch.no_grad():
            pred = self.model(batch)
        mask = batch.get("mask")
        mask = torch.ones_like(pred, dtype=torch.bool) if mask is None else mask.bool()
        self._outputs[stage].append((batch["target"].float().cpu().numpy(), pred.float().cpu().numpy(),
                                     mask.cpu().numpy()))

    def _finish(self, stage: str) -> None:
        from spared.metrics import compute

        outputs, self._outputs[stage] = self._outputs[stage], []
        if not outputs:
            return
        y_true, y_pred, mask = (np.concatenate(a) for a in zip(*outputs, strict=True))
        values = compute(y_true, y_pred, mask=mask)
        self.metrics.update({f"{stage}_{k}": float(v) for k, v in values.items()})
        for key, value in values.items():
            self.log(f"{stage}_{key}", float(value), prog_bar=key in ("MSE", "PCC-Gene"))

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Collect predictions, targets and masks."""
        self._collect("val", batch)

    def on_validation_epoch_end(self) -> None:
        """Log ``val_<metric>`` for every metric of :func:`spared.metrics.compute`."""
        self._finish("val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        """Collect predictions, targets and masks."""
        self._collect("test", batch)

    def on_test_epoch_end(self) -> None:
        """Log ``test_<metric>`` for every metric of :func:`spared.metrics.compute`."""
        self._finish("test")

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        """``{"prediction": (B, G)}`` plus the batch's ``"index"`` when present."""
        out = {"prediction": self.model(batch)}
        if "index" in batch:
            out["index"] = batch["index"]
        return out

    def configure_optimizers(self) -> Any:
        """The configured optimiser over the trainable parameters."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=0.9, weight_decay=self.weight_decay)
        cls = torch.optim.AdamW if self.optimizer_name == "adamw" else torch.optim.Adam
        return cls(params, lr=self.lr, weight_decay=self.weight_decay)

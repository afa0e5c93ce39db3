"""Lightning wrapper around any :class:`~spared.models.base.Predictor`.

Training minimises ``model.loss(batch)`` with the configured optimiser and per-step learning-rate schedule
(:func:`lr_factor`); validation and test collect predictions (averaged over the 8 flips/rotations of each patch
with ``tta="dihedral"``), targets and masks and, at the end of the epoch, log every metric of
:func:`spared.metrics.compute` (over the real entries, ``batch["mask"]``) as ``val_<metric>`` /
``test_<metric>`` (e.g. ``val_MSE``, ``val_PCC-Gene``); the last values are also kept in
:attr:`PredictorModule.metrics`. Models that need the training split must have had ``model.prepare(...)`` before
``Trainer.fit`` (checked at fit start).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import numpy as np
import torch

from spared.models.base import Batch, Predictor
from spared.models.recipe import AUGMENTATIONS, OPTIMIZERS, SCHEDULES


def lr_factor(schedule: Mapping[str, Any], steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of the base learning rate at each optimiser step for a recipe ``schedule``.

    ``constant``: 1. ``step``: ``gamma ** (epoch // step_epochs)`` (PyTorch's StepLR stepped once per epoch).
    ``cosine_warm_restarts``: cycles of ``cycle_epochs`` epochs (at least 2 steps); in each, a linear warm-up from
    ``min_lr_ratio`` to 1 over ``warmup_steps`` (capped at the cycle length − 1) then a half cosine back to
    ``min_lr_ratio`` (the ``CosineAnnealingWarmupRestarts`` schedule EGN uses, with ``cycle_mult`` 1).
    """
    name = schedule.get("name", "constant")
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}")
    steps_per_epoch = max(1, int(steps_per_epoch))
    if name == "step":
        every = max(1, round(schedule["step_epochs"] * steps_per_epoch))
        gamma = float(schedule["gamma"])
        return lambda step: gamma ** (step // every)
    if name == "cosine_warm_restarts":
        cycle = max(2, int(schedule["cycle_epochs"] * steps_per_epoch))
        warm = min(int(schedule["warmup_steps"]), cycle - 1)
        low = float(schedule["min_lr_ratio"])

        def cosine(step: int) -> float:
            t = step % cycle
            if t < warm:
                return low + (1 - low) * t / warm
            return low + (1 - low) * (1 + math.cos(math.pi * (t - warm) / (cycle - warm))) / 2

        return cosine
    return lambda step: 1.0


class PredictorModule(L.LightningModule):
    """LightningModule training a :class:`Predictor`.

    Parameters
    ----------
    model
        The predictor.
    lr, weight_decay
        Optimiser learning rate and weight decay.
    optimizer
        ``"adam"``, ``"adamw"`` or ``"sgd"``.
    momentum
        SGD momentum (ignored by Adam/AdamW).
    schedule
        Learning-rate schedule of a recipe (see :func:`lr_factor`); default constant.
    steps_per_epoch
        Optimiser steps per epoch (the schedule's time unit).
    tta
        ``"dihedral"``: predictions at validation, test and prediction are the mean over the 8 symmetries of each
        patch (ST-Net); ``"none"``.
    """

    def __init__(self, model: Predictor, lr: float = 1e-4, weight_decay: float = 0.0, optimizer: str = "adam",
                 momentum: float = 0.0, schedule: Mapping[str, Any] | None = None, steps_per_epoch: int = 1,
                 tta: str = "none") -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        if tta not in AUGMENTATIONS:
            raise ValueError(f"unknown tta {tta!r}; valid: {', '.join(AUGMENTATIONS)}")
        self.model = model
        self.lr, self.weight_decay, self.optimizer_name = lr, weight_decay, optimizer
        self.momentum, self.tta = momentum, tta
        self.schedule = dict(schedule or {"name": "constant"})
        self.steps_per_epoch = steps_per_epoch
        self._factor = lr_factor(self.schedule, steps_per_epoch)
        self.save_hyperparameters(ignore=["model"])
        self.metrics: dict[str, float] = {}
        self._outputs: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {"val": [], "test": []}

    def forward(self, batch: Batch) -> torch.Tensor:
        """Predictions ``(B, G)`` (averaged over the 8 symmetries of each patch with ``tta="dihedral"``)."""
        if self.tta == "dihedral" and "image" in batch:
            from spared.models.layers import DIHEDRAL, dihedral

            image = batch["image"]
            return torch.stack([self.model({**batch, "image": dihedral(image, g)})
                                for g in range(len(DIHEDRAL))]).mean(0)
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
            pred = self(batch)
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
        out = {"prediction": self(batch)}
        if "index" in batch:
            out["index"] = batch["index"]
        return out

    def configure_optimizers(self) -> Any:
        """The configured optimiser over the trainable parameters and its per-step schedule."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.optimizer_name == "sgd":
            optimizer = torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        else:
            cls = torch.optim.AdamW if self.optimizer_name == "adamw" else torch.optim.Adam
            optimizer = cls(params, lr=self.lr, weight_decay=self.weight_decay)
        if self.schedule["name"] == "constant":
            return optimizer
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

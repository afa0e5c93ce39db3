"""Training SpaCKLE with Lightning: self-supervised masking of real values, best weights by validation MSE."""

from __future__ import annotations

import logging
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.warnings import PossibleUserWarning

from spared.impute.spackle.config import SpackleConfig
from spared.impute.spackle.data import loader, neighbourhoods
from spared.impute.spackle.inputs import split_rows
from spared.impute.spackle.masking import glob_exp_frac, mask_probabilities, sample_mask
from spared.impute.spackle.model import SpackleModel, SpackleNetwork


class SpackleTask(L.LightningModule):
    """Lightning wrapper: masked-MSE training, validation on a fixed seeded mask, best weights in memory.

    The validation mask of batch ``b`` is drawn from a CPU generator seeded with ``val_seed + b`` and the
    validation loader is not shuffled, so every validation scores the same hidden entries. The validation
    MSE is pooled over all hidden entries of row 0 (not averaged over batches).
    """

    def __init__(self, network: SpackleNetwork, probs: np.ndarray, lr: float, val_seed: int) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("probs", torch.as_tensor(probs, dtype=torch.float32), persistent=False)
        self.lr = lr
        self.val_seed = val_seed
        self.history: dict[str, list[tuple[int, float]]] = {"train": [], "val": []}
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_step: int | None = None
        self.best_val_mse = float("inf")
        self._sse = 0.0
        self._count = 0

    def _squared_errors(self, batch: dict[str, torch.Tensor], hidden: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = batch["x"].masked_fill(hidden, 0.0)
        pred = self.network(x, batch.get("visual"), batch["real"] & ~hidden)
        scored = hidden[:, 0]
        sq = (pred - batch["x"][:, 0]).square() * scored
        return sq.sum(), scored.sum()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        sse, count = self._squared_errors(batch, sample_mask(batch["real"], self.probs))
        loss = sse / count.clamp(min=1)
        self.log("train_mse", loss, prog_bar=True, batch_size=len(batch["x"]))
        self.history["train"].append((int(self.global_step) + 1, float(loss.detach())))
        return loss

    def on_validation_epoch_start(self) -> None:
        self._sse, self._count = 0.0, 0

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        generator = torch.Generator().manual_seed(self.val_seed + batch_idx)
        sse, count = self._squared_errors(batch, sample_mask(batch["real"], self.probs.cpu(), generator))
        self._sse += float(sse)
        self._count += int(count)

    def on_validation_epoch_end(self) -> None:
        mse = self._sse / self._count if self._count else float("nan")
        self.log("val_mse", mse, prog_bar=True)
        step = int(self.global_step)
        self.history["val"].append((step, mse))
        if mse < self.best_val_mse:
            self.best_val_mse, self.best_step = mse, step
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.network.state_dict().items()}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.network.parameters(), lr=self.lr)


def fit(adata, layer: str = "c_d_log1p", config: SpackleConfig | None = None,
        run_dir: str | Path | None = None) -> SpackleModel:
    """Train SpaCKLE on ``adata.layers[layer]`` and return the model with the best validation weights.

    Targets are the train-split spots (their neighbours come from the whole slide, whatever its split);
    validation uses the val split (the test split when there is no val split), at most
    ``config.val_max_spots`` of them, with one seeded mask reused at every validation. Only real entries
    (``layers["mask"]``) are ever hidden or scored.

    Parameters
    ----------
    adata
        Collection with ``layers[layer]``, boolean ``layers["mask"]``, ``obs`` slide and split columns and
        ``obsm`` coordinates; ``var["glob_exp_frac"]`` is used for the masking probabilities when present.
    layer
        Layer to learn (a log-expression layer).
    config
        Hyper-parameters; ``None`` = :class:`SpackleConfig` defaults.
    run_dir
        When given, Lightning's CSV logs go to ``run_dir/logs`` and the best model to ``run_dir/checkpoint``.

    Returns
    -------
    The trained :class:`SpackleModel` (gene order = ``adata.var_names``).
    """
    config = config or SpackleConfig()
    data = neighbourhoods(adata, layer, config.num_neighs, None, config.visual_key, config.slide_key,
                          config.spatial_key)
    train_spots, val_spots = _split_spots(adata, config)
    probs = mask_probabilities(glob_exp_frac(adata, data.real.numpy()), config.mask_method, config.mask_prob)
    visual_dim = None if data.visual is None else int(data.visual.shape[1])
    with _quiet_lightning():
        L.seed_everything(config.seed, workers=True, verbose=False)
        network = SpackleNetwork.from_config(config, data.n_genes, visual_dim)
        network.init_scaling(*_real_stats(data.values[train_spots].numpy(), data.real[train_spots].numpy()))
        task = SpackleTask(network, probs, config.lr, val_seed=config.seed)
        trainer = _trainer(config, run_dir)
        train_loader = loader(data, train_spots, config.batch_size, shuffle=True, seed=config.seed)
        val_loader = loader(data, val_spots, config.batch_size)
        trainer.fit(task, train_loader, val_loader)
        if task.best_state is None:
            trainer.validate(task, val_loader, verbose=False)
    network.load_state_dict(task.best_state)
    model = SpackleModel(network.cpu().eval(), config, [str(g) for g in adata.var_names], layer,
                         task.history, task.best_step, task.best_val_mse)
    if run_dir is not None:
        model.save(Path(run_dir) / "checkpoint")
    return model


def _real_stats(values: np.ndarray, real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and standard deviation of the real values (0 and 1 for a gene without any)."""
    counts = real.sum(axis=0)
    kept = np.where(real, values, 0.0).astype(np.float64)
    mean = np.divide(kept.sum(axis=0), counts, out=np.zeros(values.shape[1]), where=counts > 0)
    sq = np.where(real, (values - mean) ** 2, 0.0).sum(axis=0)
    std = np.sqrt(np.divide(sq, counts, out=np.ones(values.shape[1]), where=counts > 1))
    return mean, np.where(std > 0, std, 1.0)


def _split_spots(adata, config: SpackleConfig) -> tuple[np.ndarray, np.ndarray]:
    train = split_rows(adata, config.split_key, ["train"])
    if train.size == 0:
        raise ValueError(f"no spot has obs[{config.split_key!r}] == 'train'; SpaCKLE learns from the train "
                         f"split, so assign slides to splits first")
    val = split_rows(adata, config.split_key, ["val"])
    if val.size == 0:
        val = split_rows(adata, config.split_key, ["test"])
    if val.size == 0:
        raise ValueError(f"no spot has obs[{config.split_key!r}] == 'val' or 'test'; SpaCKLE selects its "
                         f"weights on held-out slides, so put at least one slide in the val split")
    if val.size > config.val_max_spots:
        rng = np.random.default_rng(config.seed)
        val = np.sort(rng.choice(val, config.val_max_spots, replace=False))
    return train, val


def _trainer(config: SpackleConfig, run_dir: str | Path | None) -> L.Trainer:
    progress = sys.stderr.isatty() if config.progress is None else config.progress
    logger = CSVLogger(Path(run_dir), name="logs") if run_dir is not None else False
    accelerator = "gpu" if config.accelerator == "cuda" else config.accelerator
    return L.Trainer(max_steps=config.max_steps, max_epochs=-1, val_check_interval=config.val_every,
                     check_val_every_n_epoch=None, accelerator=accelerator, devices=1, logger=logger,
                     log_every_n_steps=config.val_every, enable_checkpointing=False,
                     enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
                     deterministic="warn", default_root_dir=run_dir)


@contextmanager
def _quiet_lightning():
    """Silence Lightning's start-up banners and data-loader hints (we load in-process on purpose)."""
    names = ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
             "lightning.fabric.utilities.seed")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=PossibleUserWarning)
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


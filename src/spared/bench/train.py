"""Run one benchmark run: load the dataset, train with Lightning, select on val, score the held-out split.

Each model trains as its authors trained it: its recipe (:mod:`spared.models.recipe`) gives the optimiser,
learning rate, schedule, budget in epochs, batch size, augmentation, test-time augmentation, loss terms and head
initialisation, and :class:`~spared.bench.runs.TrainingConfig` overrides any of them (``max_steps`` replaces the
epoch budget for smoke runs); :func:`training_plan` resolves the two. Backbones start from the ImageNet V1
weights by default. SEPAL trains on the frozen outputs of its stage-1 run (:func:`stage1_values`). Linear-probe
models embed every patch once with a frozen foundation encoder (cached) and fit the HEST probe (no Lightning).

The run folder ``{out_dir}/runs/{run_id}/`` holds ``config.json``, ``checkpoints/best.ckpt``, the logs
(``logs/version_0/metrics.csv`` with the default CSV logger), ``predictions.npz`` and, written last,
``metrics.json``: a folder without ``metrics.json`` is an unfinished run and is started again from scratch.

Every model trains on and is scored against the absolute log layer of its target (``c_d_log1p`` for ``raw`` and
``median``, ``c_t_log1p`` for ``completed``), with the target's loss entries (:mod:`spared.bench.targets`), as the
batch contract of :mod:`spared.models.base` says: delta models (SEPAL, ViT-B+Δ) regress deltas internally and add
back the train-split gene means they collect in ``Predictor.prepare`` (the values of ``var[f"{layer}_avg_exp"]``).
``prepare`` is called for every model before training. Scoring follows :mod:`spared.bench.scoring`: the measured
entries (``layers["mask"]``) of the evaluation split (test, or val without a test split), and on simulated data
every entry against the truth.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import inspect
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from spared.bench.progress import Progress, report
from spared.bench.results import METRICS_FILE, RUNS
from spared.bench.runs import RunSpec, TrainingConfig, canonical_dataset, data_fingerprint, parse_dataset
from spared.bench.scoring import eval_split_of, protocol_fields, score_arrays
from spared.io.atomic import atomic_path, full_disk_errors, write_h5ad, write_text
from spared.training_runtime import quiet_lightning, torch_threads

DATA_CACHE = "_data"
#: Lightning warnings a benchmark run silences: tips about logging intervals, our batch sampler (it covers every
#: spot) and frozen encoders left in eval mode on purpose.
BENCH_NOISE = (".*smaller than the logging interval.*", ".*custom batch sampler.*", ".*module\\(s\\) in eval mode.*")
SIMULATED = "simulated"


def run_one(spec: RunSpec, out_dir: str | Path, data_dir: str | Path | None = None,
            progress: Progress = False) -> dict[str, Any]:
    """Train and evaluate one run, write its folder, and return its results row.

    Parameters
    ----------
    spec
        The run.
    out_dir
        Benchmark folder; the run writes ``runs/{run_id}``.
    data_dir
        Dataset cache (processed collections and patch stores); default ``out_dir/_data``.
    progress
        ``True``: Lightning's progress bar; a callable: receives the run's step events
        (:mod:`spared.bench.progress`).

    Returns
    -------
    dict
        The row for the results table: the spec's fields, ``status="done"``, the metrics of
        :func:`spared.metrics.compute` on the evaluation split (real entries only, log space), the train-mean
        baseline's MSE, the best validation MSE, sizes, timings and the run folder.
    """
    run_dir = Path(out_dir) / RUNS / spec.run_id
    with torch_threads(spec.training.num_threads or torch.get_num_threads()), \
            full_disk_errors(run_dir, f"writing the outputs of run {spec.run_id}", discard=run_dir):
        return _run(spec, Path(out_dir), Path(data_dir) if data_dir else Path(out_dir) / DATA_CACHE, progress)


@dataclass(frozen=True)
class TrainingPlan:
    """What a trained run applies: its model's recipe with the :class:`TrainingConfig` overrides.

    The budget is ``epochs`` (from the recipe or ``training.epochs``) unless ``training.max_steps`` is set, which
    replaces it (smoke runs). ``batch_size`` is spots per batch: the patch batch of patch/exemplar/retrieval/graph
    models, the window of slide models (``training.slide_spots`` overrides it there, ``training.batch_size``
    elsewhere).
    """

    model: str
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    schedule: dict[str, Any]
    epochs: int | None
    max_steps: int | None
    batch_size: int
    augment: str
    tta: str
    loss: dict[str, float]
    head_init: str
    backbone_weights: str
    recipe_origin: str = "authors"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def training_plan(model: str, training: TrainingConfig) -> TrainingPlan:
    """The :class:`TrainingPlan` of ``model`` under ``training``; ``recipe_origin`` says whose recipe it applies
    (``"authors"``: a built-in recipe file; ``"custom"``: settings given with a registered model, the rest from
    the default recipe; ``"default"``: spared's default recipe)."""
    from spared.models import registry
    from spared.models.recipe import recipe_origin

    entry = registry.get(model)
    rec = entry.recipe()
    if rec.kind != "trained":
        raise ValueError(f"{model} is a linear probe; it has no training plan")
    override = training.slide_spots if entry.input_kind == "slide" else training.batch_size
    return TrainingPlan(
        model=model, optimizer=rec.optimizer, lr=training.lr if training.lr is not None else rec.lr,
        momentum=rec.momentum,
        weight_decay=training.weight_decay if training.weight_decay is not None else rec.weight_decay,
        schedule=dict(rec.schedule), epochs=None if training.max_steps else (training.epochs or rec.epochs),
        max_steps=training.max_steps, batch_size=override or rec.batch_size, augment=rec.augment, tta=rec.tta,
        loss=dict(rec.loss), head_init=rec.head_init, backbone_weights=training.backbone_weights,
        recipe_origin=recipe_origin(rec))


def _run(spec: RunSpec, out_dir: Path, data_dir: Path, progress: Progress) -> dict[str, Any]:
    from spared.models import registry

    if registry.ensure(spec.model, spec.custom_model).input_kind == "probe":
        return _run_probe(spec, out_dir, data_dir, progress)
    return _run_trained(spec, out_dir, data_dir, progress)


@dataclass
class RunParts:
    """Everything a trained run fits: its plan, table, model (prepared), data module and Lightning module."""

    plan: TrainingPlan
    table: Any
    model: Any
    data: Any
    module: Any
    steps_per_epoch: int
    total_steps: int
    val_every: int


def prepare_run(spec: RunSpec, out_dir: str | Path, data_dir: str | Path | None = None,
                progress: Progress = False) -> RunParts:
    """Assemble a trained run: resolve its plan, load the table (and stage-1 values), build and prepare the model,
    the data module and the Lightning module with the plan's optimiser, schedule and test-time augmentation."""
    from spared.bench.data import SpotDataModule
    from spared.models import registry
    from spared.models.lightning import PredictorModule

    out_dir = Path(out_dir)
    data_dir = Path(data_dir) if data_dir else out_dir / DATA_CACHE
    tc = spec.training
    plan = training_plan(spec.model, tc)
    table = load_table(spec.dataset, spec.target, data_dir, tc.patch_size, tc.patch_scale, spec.imputed_weight)
    cls = registry.ensure(spec.model, spec.custom_model).load()
    shared = {"backbone_weights": tc.backbone_weights, "weights_dir": tc.weights_dir}
    config = local_settings({**{k: v for k, v in shared.items() if registry.accepts(cls, k)}, **spec.model_config})
    config.pop("stage1", None)  # settings of the stage-1 model (stage1_spec)
    if recipe_stage1(spec.model):
        embedding, deltas = stage1_values(spec, out_dir, data_dir, table, progress)
        table.attach_stage1(embedding, deltas)
        config.setdefault("embedding_dim", int(embedding.shape[1]))
    L.seed_everything(spec.seed, workers=True, verbose=False)
    model = cls(table.n_genes, **config)
    if model.needs_counts and table.counts is None:
        raise ValueError(f"{spec.model} needs raw counts (its ZINB loss term) but the collection has no "
                         f"layers['counts']; reprocess it with spared, or set zinb=0 in its model config")
    data = SpotDataModule(table, model.input_kind, batch_size=plan.batch_size, slide_spots=plan.batch_size,
                          seed=spec.seed, num_workers=tc.num_workers, augment=plan.augment,
                          graph=model.graph_spec() if model.input_kind == "graph" else None)
    model.prepare(data.prepare_batches())  # every model sees the training split (banks, gene means)
    steps_per_epoch = len(data.train_dataloader())
    total = plan.max_steps or plan.epochs * steps_per_epoch
    module = PredictorModule(model, lr=plan.lr, weight_decay=plan.weight_decay, optimizer=plan.optimizer,
                             momentum=plan.momentum, schedule=plan.schedule, steps_per_epoch=steps_per_epoch,
                             tta=plan.tta)
    return RunParts(plan, table, model, data, module, steps_per_epoch, total,
                    min(tc.val_every or steps_per_epoch, total))


class StepReporter(L.Callback):
    """Reports a training run's optimiser steps as ``step`` events, at most once per ``every`` seconds."""

    def __init__(self, progress: Callable[[dict[str, Any]], None], run_id: str, every: float = 1.0) -> None:
        self.progress, self.run_id, self.every = progress, run_id, every
        self._last = float("-inf")

    def _send(self, trainer: L.Trainer, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= self.every:
            self._last = now
            report(self.progress, "step", run_id=self.run_id, step=int(trainer.global_step),
                   total=int(trainer.max_steps))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._send(trainer, force=True)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._send(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._send(trainer, force=True)


def lightning_progress(progress: Progress, run_id: str) -> tuple[bool, list[L.Callback]]:
    """``(enable_progress_bar, callbacks)`` of a Lightning trainer for a run's ``progress`` setting."""
    return progress is True, [StepReporter(progress, run_id)] if callable(progress) else []


def _run_trained(spec: RunSpec, out_dir: Path, data_dir: Path, progress: Progress) -> dict[str, Any]:
    start = time.perf_counter()
    tc = spec.training
    parts = prepare_run(spec, out_dir, data_dir, progress)
    plan, table, data, module, total = parts.plan, parts.table, parts.data, parts.module, parts.total_steps
    run_dir = _fresh_run_dir(spec, out_dir, {"plan": plan.to_dict()})
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best",
                                                     monitor="val_MSE", mode="min", save_top_k=1)
    progress_bar, reporters = lightning_progress(progress, spec.run_id)
    with quiet_lightning(BENCH_NOISE):
        trainer = L.Trainer(
            max_steps=total, max_epochs=-1, val_check_interval=parts.val_every, check_val_every_n_epoch=None,
            num_sanity_val_steps=0, callbacks=[checkpoint, *reporters],
            logger=make_loggers(tc.loggers, run_dir, spec.run_id, out_dir), default_root_dir=run_dir,
            accelerator=tc.accelerator, devices=1, precision=tc.precision,
            deterministic="warn" if tc.deterministic else False, log_every_n_steps=min(10, total),
            enable_progress_bar=progress_bar, enable_model_summary=False,
        )
        trainer.fit(module, datamodule=data)
        if not checkpoint.best_model_path:
            raise RuntimeError(f"no checkpoint was selected: validation never ran in {total} steps")
        outputs = trainer.predict(module, datamodule=data, ckpt_path=checkpoint.best_model_path)
    train_seconds = time.perf_counter() - start

    index = torch.cat([o["index"] for o in outputs]).numpy()
    order = np.argsort(index, kind="stable")
    pred = torch.cat([o["prediction"] for o in outputs]).float().numpy()[order]
    extra = {
        "best_val_MSE": float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else np.nan,
        "eval_split": data.eval_split, "n_train": len(data.datasets["train"]), "n_val": len(data.datasets["val"]),
        "steps": int(trainer.global_step), "epochs": float(trainer.global_step / max(parts.steps_per_epoch, 1)),
        "train_seconds": train_seconds, "device": str(trainer.strategy.root_device),
        "recipe": json.dumps(plan.to_dict(), sort_keys=True), "recipe_origin": plan.recipe_origin,
    }
    return _finish(spec, run_dir, table, index[order], pred, start, extra)


def recipe_stage1(model: str) -> str | None:
    """The model whose frozen outputs ``model`` trains on (SEPAL: ``vit_b_delta``), or ``None``."""
    from spared.models.recipe import recipe

    return getattr(recipe(model), "stage1", None)


def stage1_spec(spec: RunSpec, model_config: dict[str, Any] | None = None) -> RunSpec | None:
    """The run whose frozen outputs ``spec`` trains on (SEPAL: a ViT-B+Δ run), or ``None`` for other models.

    It has the same dataset (and data version), target, seed and training settings; its model settings are
    ``model_config``, by default ``spec``'s ``stage1`` setting plus its backbone weight settings (the image
    backbone belongs to stage 1, so a per-model weights setting is meant for it).
    """
    model = recipe_stage1(spec.model)
    if model is None:
        return None
    if model_config is None:
        inherited = {k: spec.model_config[k] for k in ("backbone_weights", "weights_dir") if k in spec.model_config}
        model_config = {**inherited, **(spec.model_config.get("stage1") or {})}
    return RunSpec(model, spec.dataset, spec.target, spec.seed, model_config, spec.training,
                   data_version=spec.data_version)


def stage1_values(spec: RunSpec, out_dir: Path, data_dir: Path, table: Any, progress: Progress = False,
                  model_config: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-spot embeddings and deltas of the stage-1 model of ``spec`` (SEPAL's frozen ViT-B+Δ).

    Stage 1 is an ordinary benchmark run, :func:`stage1_spec` (``model_config`` for its model): its finished run
    folder is reused, otherwise it is run first (and then serves as that model's own benchmark run too). Its best
    checkpoint is applied once to every spot; the values are cached in ``stage1.npz`` of its folder, keyed by the
    checkpoint's sha256.
    """
    from filelock import FileLock

    from spared.models.backbones import sha256_of

    stage1 = stage1_spec(spec, model_config)
    if stage1 is None:
        raise ValueError(f"{spec.model} has no stage-1 model")
    run_dir = out_dir / RUNS / stage1.run_id
    (out_dir / ".locks").mkdir(parents=True, exist_ok=True)
    with FileLock(str(out_dir / ".locks" / f"{stage1.run_id}.lock")):
        if not (run_dir / METRICS_FILE).is_file():
            run_one(stage1, out_dir, data_dir, progress)
        ckpt = run_dir / "checkpoints" / "best.ckpt"
        key = sha256_of(ckpt)
        cache = run_dir / "stage1.npz"
        if cache.is_file():
            with np.load(cache, allow_pickle=False) as stored:
                if str(stored["checkpoint_sha256"]) == key and np.array_equal(stored["obs_names"], table.obs_names):
                    return stored["embedding"], stored["deltas"]
        embedding, deltas = _apply_stage1(stage1, ckpt, table)
        _atomic_npz(cache, embedding=embedding, deltas=deltas, obs_names=table.obs_names,
                    checkpoint_sha256=np.array(key))
    return embedding, deltas


def _apply_stage1(stage1: RunSpec, ckpt: Path, table: Any, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings (encoder output) and deltas (head output) of a trained delta model for every spot."""
    from spared.models import build_model

    config = {**stage1.model_config, "backbone_weights": "none"}  # every weight comes from the checkpoint
    model = build_model(stage1.model, table.n_genes, **config)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    if not (model.predicts_deltas and hasattr(model, "encoder") and hasattr(model, "head")):
        raise ValueError(f"stage 1 ({stage1.model}) must be an image encoder with a linear head predicting deltas")
    device = torch.device("cuda" if torch.cuda.is_available() and stage1.training.accelerator != "cpu" else "cpu")
    model = model.to(device).eval()
    embeddings, deltas = [], []
    with torch.no_grad():
        for begin in range(0, table.target.shape[0], chunk):
            batch = table.batch(np.arange(begin, min(begin + chunk, table.target.shape[0])))
            emb = model.encoder(batch["image"].to(device))
            embeddings.append(emb.float().cpu().numpy())
            deltas.append(model.head(emb).float().cpu().numpy())
    return np.concatenate(embeddings), np.concatenate(deltas)


def _run_probe(spec: RunSpec, out_dir: Path, data_dir: Path, progress: Progress) -> dict[str, Any]:
    """A frozen foundation encoder's cached embeddings + the HEST linear probe, fitted on train, scored on eval."""
    from spared.models.foundation import build_encoder, collection_embeddings
    from spared.models.probe import LinearProbe
    from spared.models.recipe import recipe, recipe_origin

    start = time.perf_counter()
    tc = spec.training
    rec = recipe(spec.model)
    table = load_table(spec.dataset, spec.target, data_dir, tc.patch_size, tc.patch_scale, spec.imputed_weight)
    run_dir = _fresh_run_dir(spec, out_dir, {"recipe": rec.to_dict()})
    config = dict(spec.model_config)
    if "weights" not in config and tc.backbone_weights != "imagenet":
        config["weights"] = tc.backbone_weights  # "none" (random encoder) or a weights file
    encoder = build_encoder(spec.model, weights_dir=local_settings(tc.weights_dir), **local_settings(config))
    device = "cuda" if torch.cuda.is_available() and tc.accelerator != "cpu" else "cpu"
    embeddings = collection_embeddings(table, encoder, data_dir / "embeddings", device=device,
                                       progress=progress is True)
    train = table.indices("train")
    eval_split = eval_split_of(table.split)
    index = table.indices(eval_split)
    weight = None if table.loss_weight is None else table.loss_weight[train]
    probe = LinearProbe(n_components=rec.pca_components, alpha=rec.ridge_alpha, standardize=rec.standardize,
                        fit_intercept=rec.fit_intercept).fit(embeddings[train], table.target[train],
                                                             table.loss_mask[train], weight)
    probe.save(run_dir / "probe.npz")
    pred = probe.predict(embeddings[index]).astype(np.float32)
    extra = {"best_val_MSE": np.nan, "eval_split": eval_split, "n_train": int(train.size),
             "n_val": int(table.indices("val").size), "steps": 0, "epochs": 0.0,
             "train_seconds": time.perf_counter() - start, "device": device,
             "recipe": json.dumps({**rec.settings(), "encoder_weights": encoder.weights_source}, sort_keys=True),
             "recipe_origin": recipe_origin(rec)}
    return _finish(spec, run_dir, table, index, pred, start, extra)


def _fresh_run_dir(spec: RunSpec, out_dir: Path, extra: dict[str, Any]) -> Path:
    """The run's folder, emptied, with its ``config.json``."""
    run_dir = out_dir / RUNS / spec.run_id
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    _write_json(run_dir / "config.json", {**spec.to_dict(), "layer": spec.layer, "versions": _versions(), **extra})
    return run_dir


def _finish(spec: RunSpec, run_dir: Path, table: Any, index: np.ndarray, pred: np.ndarray, start: float,
            extra: dict[str, Any]) -> dict[str, Any]:
    """Score the predictions of the spots ``index`` (:mod:`spared.bench.scoring`), write ``predictions.npz`` then
    ``metrics.json``, return the row."""
    target, mask = table.target[index], table.mask[index]
    scores = score_arrays(target, pred, mask, table.target[table.indices("train")].mean(axis=0),
                          None if table.truth is None else table.truth[index])
    _atomic_npz(run_dir / "predictions.npz", prediction=pred, target=target, mask=mask, index=index,
                obs_names=table.obs_names[index], var_names=table.var_names)
    row = {
        "run_id": spec.run_id, "model": spec.model, "dataset": canonical_dataset(spec.dataset),
        "target": spec.target, "seed": spec.seed, "status": "done", "error": "", **scores,
        "best_val_MSE": extra.pop("best_val_MSE"), "imputed_weight": spec.imputed_weight,
        **protocol_fields(spec.target, spec.layer, extra.pop("eval_split")), "origin": "bench",
        "custom": bool(spec.custom_model), "model_ref": spec.custom_model.get("ref", ""),
        "n_genes": table.n_genes,
        "n_train": extra.pop("n_train"), "n_val": extra.pop("n_val"), "n_eval": int(index.size),
        "steps": extra.pop("steps"), "seconds": time.perf_counter() - start, **extra,
        "run_dir": str(run_dir.resolve()),
        "model_config": json.dumps(dict(spec.model_config), sort_keys=True),
        "training": json.dumps(spec.training.to_dict(), sort_keys=True),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    _write_json(run_dir / METRICS_FILE, row)
    return row


@dataclass(frozen=True)
class DatasetFiles:
    """A dataset string's processed collection (read) and the files it lives in: the ``.h5ad`` and the patch
    store the runs read (what the Ray executor ships to the nodes)."""

    adata: Any
    h5ad: Path
    store: Any


def dataset_files(dataset: str, cache_dir: str | Path, patch_size: int = 224, patch_scale: float = 1.0
                  ) -> DatasetFiles:
    """The :class:`DatasetFiles` of a dataset string, building (and caching) what is missing.

    The collection comes from :func:`load_collection`. Patches come from the collection's store when it has one of
    the right size, else they are extracted into the collection's cache folder.
    """
    from filelock import FileLock

    from spared.bench.data import patch_store

    adata, folder, h5ad = _collection(dataset, cache_dir)
    with FileLock(str(folder / ".lock")):
        store = patch_store(adata, patch_size, patch_scale, patch_dir=folder)
    return DatasetFiles(adata, h5ad, store)


def load_collection(dataset: str, cache_dir: str | Path) -> tuple[Any, Path]:
    """The processed AnnData of a dataset string and its cache folder (no patches are read or cut).

    ``"simulated[:key=value,...]"``: :func:`spared.synthetic.make_collection` (keys of its signature) processed by
    :func:`spared.pp.process` with SpaCKLE completion (keys of :class:`~spared.config.ProcessingConfig`; ``seed``
    seeds both), cached in ``cache_dir`` by a hash of the parameters. A path ending in ``.h5ad``: a processed
    collection. Anything else: a catalogue key for :func:`spared.datasets.get` (``name:key=value`` overrides
    processing parameters). A file lock keeps parallel runs from building the same entry twice.
    """
    adata, folder, _ = _collection(dataset, cache_dir)
    return adata, folder


def _collection(dataset: str, cache_dir: str | Path) -> tuple[Any, Path, Path]:
    """:func:`load_collection`, and the ``.h5ad`` the collection was read from."""
    from filelock import FileLock

    name, params = parse_dataset(dataset)
    key = hashlib.sha256(json.dumps([canonical_dataset(dataset), _versions()["spared"], _source_stamp(dataset)],
                                    sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(cache_dir) / f"{Path(name).name.removesuffix('.h5ad')}-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / ".lock")):
        if name == SIMULATED:
            h5ad = folder / "processed.h5ad"
            adata = _simulated(params, h5ad)
        elif name.endswith(".h5ad"):
            h5ad = Path(name)
            adata = _read_h5ad(h5ad)
        else:
            adata, h5ad = _catalogue(name, params)
    return adata, folder, h5ad


#: Local copies of datasets staged in this process (:func:`staged_datasets`).
_STAGED: ContextVar[dict[tuple[str, int, float], tuple[Path, Path]] | None] = ContextVar("spared_staged",
                                                                                         default=None)


#: Local copies of files and folders named by run settings, staged in this process (:func:`staged_paths`).
_PATHS: ContextVar[dict[str, str] | None] = ContextVar("spared_staged_paths", default=None)


@contextmanager
def _staging(var: ContextVar[Any], value: Any) -> Iterator[None]:
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


def staged_datasets(files: dict[tuple[str, int, float], tuple[Path, Path]]) -> AbstractContextManager[None]:
    """Within this block, :func:`load_table` reads the given local copies ``(h5ad, patch store)`` of the datasets
    ``(dataset string, patch size, patch scale)`` instead of resolving the strings (the Ray executor ships a
    run's dataset to the run's node and stages it there)."""
    return _staging(_STAGED, dict(files))


def staged_paths(paths: Mapping[str, str | Path]) -> AbstractContextManager[None]:
    """Within this block, a run setting equal to a key of ``paths`` (a weights file or folder named in the model
    settings or ``--backbone-weights``, as the driver wrote it) means the local copy it maps to
    (:func:`local_settings`); the run's identity and its ``config.json`` keep the driver's string."""
    return _staging(_PATHS, {key: str(value) for key, value in paths.items()})


def local_settings(value: Any) -> Any:
    """``value`` with every string staged by :func:`staged_paths` replaced by its local copy (in nested mappings
    and lists too); unchanged outside such a block."""
    paths = _PATHS.get()
    if not paths:
        return value
    if isinstance(value, Mapping):
        return {key: local_settings(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(local_settings(item) for item in value)
    return paths.get(value, value) if isinstance(value, str) else value


def load_table(dataset: str, target: Any, cache_dir: str | Path, patch_size: int = 224, patch_scale: float = 1.0,
               imputed_weight: float = 1.0):
    """The :class:`~spared.bench.data.SpotTable` of a dataset string for ``target`` (a target name, a layer name or
    a :class:`~spared.bench.targets.Target`): its staged copy (:func:`staged_datasets`), else
    :func:`dataset_files` (built and cached in ``cache_dir`` when missing). ``imputed_weight`` weighs the loss
    entries that are not measurements (:func:`spared.bench.targets.loss_entries`).
    """
    from spared.bench.data import SpotTable

    staged = (_STAGED.get() or {}).get((dataset, patch_size, float(patch_scale)))
    if staged is not None:
        import anndata as ad

        from spared.io.patches import PatchStore

        adata, store = ad.read_h5ad(staged[0]), PatchStore(staged[1])
    else:
        files = dataset_files(dataset, cache_dir, patch_size, patch_scale)
        adata, store = files.adata, files.store
    return SpotTable(adata, target, store=store, patch_size=patch_size, imputed_weight=imputed_weight)


def _source_stamp(dataset: str) -> list[Any]:
    """What a dataset's cache entry depends on besides its name: an h5ad source's size and modification time, a
    catalogue dataset's content fingerprint (its raw files and settings); a changed source is a new entry."""
    name, _ = parse_dataset(dataset)
    path = Path(name)
    if name.endswith(".h5ad") and path.is_file():
        stat = path.stat()
        return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]
    if name != SIMULATED and not name.endswith(".h5ad"):
        return [data_fingerprint(dataset)]
    return []


def _simulated(params: dict[str, Any], path: Path):
    """The processed simulated collection of ``params`` (read from ``path`` when it was built before)."""
    from spared.config import ProcessingConfig
    from spared.pp import process
    from spared.synthetic import make_collection

    if path.is_file():
        return _read_h5ad(path)
    sim_keys = set(inspect.signature(make_collection).parameters)
    proc_keys = set(ProcessingConfig().to_dict())
    unknown = set(params) - sim_keys - proc_keys
    if unknown:
        raise KeyError(f"unknown simulated dataset parameter(s) {sorted(unknown)}; valid: simulation "
                       f"{sorted(sim_keys)}, processing {sorted(proc_keys - {'extra'})}")
    raw = make_collection(**{k: v for k, v in params.items() if k in sim_keys})
    config = ProcessingConfig(complete_missing=True).replace(**{k: v for k, v in params.items() if k in proc_keys})
    process(raw, config, progress=False, dataset=SIMULATED)
    write_h5ad(raw, path)
    return raw


def _read_h5ad(path: Path):
    from spared.io.patch_paths import read_h5ad

    if not path.is_file():
        raise FileNotFoundError(f"dataset file {path} does not exist")
    return read_h5ad(path)


def _catalogue(name: str, params: dict[str, Any]) -> tuple[Any, Path]:
    """A catalogue dataset through :func:`spared.datasets.prepare` (``params`` override its processing settings),
    with the cache file it was read from or built into (its name follows the raw files' content)."""
    from spared import datasets

    done = datasets.prepare(name, config=params or None, progress=False)
    return done.adata, done.h5ad


def make_loggers(names: tuple[str, ...], run_dir: Path, run_id: str, out_dir: Path) -> list[Any]:
    """Lightning loggers by name (CSV always available; the others need their package installed)."""
    from importlib.util import find_spec

    from lightning.pytorch import loggers

    needs = {"tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",), "wandb": ("wandb",)}
    out = []
    for name in names:
        if name in needs and not any(find_spec(p) for p in needs[name]):
            raise ImportError(f"the {name} logger needs the {needs[name][0]!r} package: pip install {needs[name][0]}")
        if name == "csv":
            out.append(loggers.CSVLogger(run_dir, name="logs", version=0))
        elif name == "tensorboard":
            out.append(loggers.TensorBoardLogger(run_dir, name="tensorboard", version=0))
        elif name == "mlflow":
            uri = os.environ.get("MLFLOW_TRACKING_URI") or (out_dir / "mlruns").resolve().as_uri()
            out.append(loggers.MLFlowLogger(experiment_name="spared-bench", run_name=run_id, tracking_uri=uri))
        elif name == "wandb":
            out.append(loggers.WandbLogger(project="spared-bench", name=run_id, save_dir=str(run_dir)))
    return out


def _versions() -> dict[str, str]:
    from spared import __version__

    return {"spared": __version__}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _atomic_npz(path: Path, **arrays: np.ndarray) -> None:
    with atomic_path(path, ".npz") as tmp:
        np.savez_compressed(tmp, **arrays)

"""Run one benchmark run: load the dataset, train with Lightning, select on val, score the held-out split.

The run folder ``{out_dir}/runs/{run_id}/`` holds ``config.json``, ``checkpoints/best.ckpt``, the logs
(``logs/version_0/metrics.csv`` with the default CSV logger), ``predictions.npz`` and, written last,
``metrics.json``: a folder without ``metrics.json`` is an unfinished run and is started again from scratch.

Every model trains on and is scored against the absolute log layer of its target (``c_d_log1p`` raw,
``c_t_log1p`` completed), as the batch contract of :mod:`spared.models.base` says: delta models (SEPAL, ViT-B+Δ)
regress deltas internally and add back the train-split gene means they collect in ``Predictor.prepare``
(the values of ``var[f"{layer}_avg_exp"]``). ``prepare`` is called for every model before training. Metrics are
computed on the real entries (``layers["mask"]``) of the evaluation split (test, or val without a test split).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import inspect
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from spared.bench.results import METRICS, METRICS_FILE, RUNS
from spared.bench.runs import RunSpec, canonical_dataset, parse_dataset
from spared.io.atomic import atomic_path, write_h5ad, write_text

DATA_CACHE = "_data"
SIMULATED = "simulated"


def run_one(spec: RunSpec, out_dir: str | Path, data_dir: str | Path | None = None,
            progress: bool = False) -> dict[str, Any]:
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
        Show Lightning's progress bar.

    Returns
    -------
    dict
        The row for the results table: the spec's fields, ``status="done"``, the metrics of
        :func:`spared.metrics.compute` on the evaluation split (real entries only, log space), the train-mean
        baseline's MSE, the best validation MSE, sizes, timings and the run folder.
    """
    import torch

    threads = torch.get_num_threads()
    if spec.training.num_threads is not None:
        torch.set_num_threads(spec.training.num_threads)
    try:
        return _run(spec, Path(out_dir), Path(data_dir) if data_dir else Path(out_dir) / DATA_CACHE, progress)
    finally:
        torch.set_num_threads(threads)


def _run(spec: RunSpec, out_dir: Path, data_dir: Path, progress: bool) -> dict[str, Any]:
    import lightning as L
    import torch

    from spared.bench.data import SpotDataModule
    from spared.metrics import compute
    from spared.models import build_model
    from spared.models.lightning import PredictorModule

    start = time.perf_counter()
    run_dir = out_dir / RUNS / spec.run_id
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    tc = spec.training
    _write_json(run_dir / "config.json", {**spec.to_dict(), "layer": spec.layer, "versions": _versions()})

    table = load_table(spec.dataset, spec.layer, data_dir, tc.patch_size, tc.patch_scale)
    L.seed_everything(spec.seed, workers=True, verbose=False)
    model = build_model(spec.model, table.n_genes, backbone_weights=tc.backbone_weights, **spec.model_config)
    data = SpotDataModule(table, model.input_kind, batch_size=tc.batch_size, slide_spots=tc.slide_spots,
                          full_loss_mask=spec.target == "completed", seed=spec.seed, num_workers=tc.num_workers)
    model.prepare(data.prepare_batches())  # every model sees the training split (banks, gene means)
    module = PredictorModule(model, **({} if tc.lr is None else {"lr": tc.lr}), weight_decay=tc.weight_decay)
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best",
                                                     monitor="val_MSE", mode="min", save_top_k=1)
    with _quiet_lightning():
        trainer = L.Trainer(
            max_steps=tc.max_steps, max_epochs=-1, val_check_interval=min(tc.val_every, tc.max_steps),
            check_val_every_n_epoch=None, num_sanity_val_steps=0, callbacks=[checkpoint],
            logger=make_loggers(tc.loggers, run_dir, spec.run_id, out_dir), default_root_dir=run_dir,
            accelerator=tc.accelerator, devices=1, precision=tc.precision,
            deterministic="warn" if tc.deterministic else False, log_every_n_steps=min(10, tc.max_steps),
            enable_progress_bar=progress, enable_model_summary=False,
        )
        trainer.fit(module, datamodule=data)
        if not checkpoint.best_model_path:
            raise RuntimeError(f"no checkpoint was selected: validation never ran in {tc.max_steps} steps")
        outputs = trainer.predict(module, datamodule=data, ckpt_path=checkpoint.best_model_path)
    train_seconds = time.perf_counter() - start

    index = torch.cat([o["index"] for o in outputs]).numpy()
    order = np.argsort(index, kind="stable")
    index = index[order]
    pred = torch.cat([o["prediction"] for o in outputs]).float().numpy()[order]
    target, mask = table.target[index], table.mask[index]
    metrics = compute(target, pred, mask)
    train_mean = table.target[table.indices("train")].mean(axis=0)
    baseline = compute(target, np.broadcast_to(train_mean, target.shape), mask)["MSE"]
    _atomic_npz(run_dir / "predictions.npz", prediction=pred, target=target, mask=mask, index=index,
                obs_names=table.obs_names[index], var_names=table.var_names)
    row = {
        "run_id": spec.run_id, "model": spec.model, "dataset": canonical_dataset(spec.dataset),
        "target": spec.target, "seed": spec.seed, "status": "done", "error": "",
        **{m: float(metrics[m]) for m in METRICS},
        "n_genes_scored": float(metrics["n_genes_scored"]), "n_spots_scored": float(metrics["n_spots_scored"]),
        "baseline_MSE": float(baseline),
        "best_val_MSE": float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else np.nan,
        "layer": spec.layer, "eval_split": data.eval_split, "n_genes": table.n_genes,
        "n_train": len(data.datasets["train"]), "n_val": len(data.datasets["val"]), "n_eval": int(index.size),
        "steps": int(trainer.global_step), "seconds": time.perf_counter() - start, "train_seconds": train_seconds,
        "device": str(trainer.strategy.root_device), "run_dir": str(run_dir.resolve()),
        "model_config": json.dumps(dict(spec.model_config), sort_keys=True),
        "training": json.dumps(spec.training.to_dict(), sort_keys=True),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    _write_json(run_dir / METRICS_FILE, {**row, "metrics": metrics})
    return row


def load_table(dataset: str, layer: str, cache_dir: str | Path, patch_size: int = 224, patch_scale: float = 1.0):
    """The :class:`~spared.bench.data.SpotTable` of a dataset string, building (and caching) what is missing.

    ``"simulated[:key=value,...]"``: :func:`spared.synthetic.make_collection` (keys of its signature) processed by
    :func:`spared.pp.process` with SpaCKLE completion (keys of :class:`~spared.config.ProcessingConfig`; ``seed``
    seeds both), cached in ``cache_dir`` by a hash of the parameters. A path ending in ``.h5ad``: a processed
    collection. Anything else: a catalogue key for :func:`spared.datasets.get` (``name:key=value`` overrides
    processing parameters). Patches come from the collection's store when it has one of the right size, else
    they are extracted into ``cache_dir``. A file lock keeps parallel runs from building the same entry twice.
    """
    from filelock import FileLock

    from spared.bench.data import SpotTable, patch_store

    name, params = parse_dataset(dataset)
    key = hashlib.sha256(json.dumps([canonical_dataset(dataset), _versions()["spared"], _source_stamp(name)],
                                    sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(cache_dir) / f"{Path(name).name.removesuffix('.h5ad')}-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / ".lock")):
        if name == SIMULATED:
            adata = _simulated(params, folder / "processed.h5ad")
        elif name.endswith(".h5ad"):
            adata = _read_h5ad(Path(name))
        else:
            adata = _catalogue(name, params)
        store = patch_store(adata, patch_size, patch_scale, patch_dir=folder)
    return SpotTable(adata, layer, store=store, patch_size=patch_size)


def _source_stamp(name: str) -> list[Any]:
    """Size and modification time of an h5ad source (a changed file is a new cache entry)."""
    path = Path(name)
    if name.endswith(".h5ad") and path.is_file():
        stat = path.stat()
        return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]
    return []


def _simulated(params: dict[str, Any], path: Path):
    """The processed simulated collection of ``params`` (read from ``path`` when it was built before)."""
    import anndata as ad

    from spared.config import ProcessingConfig
    from spared.pp import process
    from spared.synthetic import make_collection

    if path.is_file():
        return ad.read_h5ad(path)
    sim_keys = set(inspect.signature(make_collection).parameters)
    proc_keys = set(ProcessingConfig().to_dict())
    unknown = set(params) - sim_keys - proc_keys
    if unknown:
        raise KeyError(f"unknown simulated dataset parameter(s) {sorted(unknown)}; valid: simulation "
                       f"{sorted(sim_keys)}, processing {sorted(proc_keys - {'extra'})}")
    raw = make_collection(**{k: v for k, v in params.items() if k in sim_keys})
    config = ProcessingConfig(complete_missing=True).replace(**{k: v for k, v in params.items() if k in proc_keys})
    adata = process(raw, config, progress=False, dataset=SIMULATED)
    write_h5ad(adata, path)
    return adata


def _read_h5ad(path: Path):
    import anndata as ad

    if not path.is_file():
        raise FileNotFoundError(f"dataset file {path} does not exist")
    return ad.read_h5ad(path)


def _catalogue(name: str, params: dict[str, Any]):
    """A catalogue dataset through :func:`spared.datasets.get` (``params`` override its processing settings)."""
    from spared import datasets

    return datasets.get(name, config=params or None, progress=False)


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


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence Lightning's informational messages and tips during a run (warnings of substance stay)."""
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")
            warnings.filterwarnings("ignore", message=".*custom batch sampler.*")  # ours covers every spot
            yield
    finally:
        logger.setLevel(level)


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

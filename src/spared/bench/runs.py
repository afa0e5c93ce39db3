"""One benchmark run = (model, dataset, target, seed) plus its model and training settings, with a stable id."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from itertools import product
from pathlib import Path
from typing import Any

from spared.bench.targets import TARGET_LAYERS, TARGETS, check_imputed_weight, weight_applies

#: Loggers a run can write to (each but ``csv`` needs its package installed).
LOGGERS = ("csv", "tensorboard", "mlflow", "wandb")
#: Training fields that change how a run executes but not what it computes (left out of the run id).
_EXECUTION_ONLY = frozenset({"num_workers", "num_threads", "loggers", "weights_dir"})
#: The dataset name of simulated collections (``simulated[:key=value,...]``).
SIMULATED = "simulated"


@dataclass(frozen=True)
class TrainingConfig:
    """How a model is trained and evaluated: its recipe (``spared.models.recipe``) unless overridden here.

    Attributes
    ----------
    max_steps
        Optimiser steps; ``None`` = the budget in epochs (``epochs`` or the recipe's). Set it for smoke runs.
    epochs
        Training epochs; ``None`` = the recipe's.
    batch_size
        Spots per batch for patch-level models (exemplar, retrieval and graph models too); ``None`` = the recipe's.
    slide_spots
        Most spots in one batch of a slide-level model (a spatially contiguous subset when the slide is bigger);
        ``None`` = the recipe's.
    lr
        Learning rate; ``None`` = the recipe's.
    weight_decay
        Weight decay of the optimiser; ``None`` = the recipe's.
    val_every
        Validate every this many training steps (``None``: once per epoch); the checkpoint with the lowest
        validation MSE is kept.
    patch_size, patch_scale
        Side of the patches in pixels and the crop side in spot diameters.
    backbone_weights
        ``"imagenet"`` (the ImageNet V1 weights the authors used), ``"none"`` (random initialisation) or a local
        weights file.
    weights_dir
        Folder searched first for weight files (ImageNet files by their torchvision name; foundation encoders in
        a subfolder named after the model).
    accelerator
        Lightning accelerator (``"auto"``, ``"cpu"``, ``"gpu"``).
    precision
        Lightning precision.
    deterministic
        Ask Lightning/torch for deterministic algorithms.
    num_workers
        DataLoader worker processes.
    num_threads
        torch intra-op threads during the run (``None``: leave torch's setting). CPU results depend slightly on
        it (reduction order), so fix it to compare executors bit for bit.
    loggers
        Any of :data:`LOGGERS`; CSV is the default.
    imputed_weight
        Loss weight of the entries that are not measurements (median fills for the ``median`` target, SpaCKLE
        completions for ``completed``) relative to measured ones (:func:`spared.bench.targets.loss_entries`):
        1 (default) is a plain MSE over every loss entry, 0 keeps the measured entries only (as ``raw``). No
        effect on ``raw``, whose loss has measured entries only.
    """

    max_steps: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    slide_spots: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    val_every: int | None = None
    patch_size: int = 224
    patch_scale: float = 1.0
    backbone_weights: str = "imagenet"
    weights_dir: str | None = None
    accelerator: str = "auto"
    precision: str = "32-true"
    deterministic: bool = True
    num_workers: int = 0
    num_threads: int | None = None
    loggers: tuple[str, ...] = ("csv",)
    imputed_weight: float = 1.0

    def __post_init__(self) -> None:
        for name in ("max_steps", "epochs", "batch_size", "slide_spots", "val_every", "patch_size"):
            value = getattr(self, name)
            if value is None and name != "patch_size":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"training.{name} must be a positive integer, got {value!r}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"training.lr must be > 0 (or None for the recipe's), got {self.lr}")
        if self.weight_decay is not None and not self.weight_decay >= 0:
            raise ValueError(f"training.weight_decay must be >= 0 (or None for the recipe's), got {self.weight_decay}")
        if self.backbone_weights is None:
            object.__setattr__(self, "backbone_weights", "none")
        if not self.patch_scale > 0:
            raise ValueError(f"training.patch_scale must be > 0, got {self.patch_scale}")
        if self.num_workers < 0:
            raise ValueError(f"training.num_workers must be >= 0, got {self.num_workers}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"training.num_threads must be >= 1 (or None), got {self.num_threads}")
        loggers = (self.loggers,) if isinstance(self.loggers, str) else tuple(self.loggers)
        unknown = [name for name in loggers if name not in LOGGERS]
        if unknown or not loggers:
            raise ValueError(f"training.loggers must be a non-empty subset of {list(LOGGERS)}, got {list(loggers)}")
        object.__setattr__(self, "loggers", loggers)
        object.__setattr__(self, "imputed_weight", check_imputed_weight(self.imputed_weight))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["loggers"] = list(self.loggers)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingConfig:
        """Build from a mapping; unknown keys are an error naming the valid ones."""
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - valid
        if unknown:
            raise KeyError(f"unknown training setting(s) {sorted(unknown)}; valid: {', '.join(sorted(valid))}")
        return cls(**data)


@dataclass(frozen=True)
class RunSpec:
    """A benchmark run.

    Attributes
    ----------
    model
        A registered model name (``spared models``) or a custom model's ``"module:Class"`` reference.
    dataset
        ``"simulated"`` or ``"simulated:key=value,..."``, the path of a processed ``.h5ad``, or a catalogue key
        (optionally ``"name:key=value,..."`` with processing overrides).
    target
        ``"raw"``, ``"median"`` or ``"completed"`` (:data:`spared.bench.targets.TARGETS`: the layer trained on and
        the entries its loss uses).
    seed
        Seed of weights, batch order and augmentation.
    model_config
        Keyword arguments of ``spared.models.build_model`` (JSON values).
    training
        :class:`TrainingConfig` (a mapping is converted).
    data_version
        Fingerprint of the dataset's content (:func:`data_fingerprint`), part of the run id so that a run on
        re-processed data is a new run; computed when the spec is made unless given (specs read back from disk).
    custom_model
        For a model not built into spared, its registry entry (:meth:`spared.models.registry.ModelEntry.to_spec`:
        import reference, input kind, labels, resolved recipe), so that any process (a Ray worker) rebuilds it and
        the run id changes with its recipe; filled when the spec is made, empty for built-in models.
    """

    model: str
    dataset: str
    target: str = "raw"
    seed: int = 0
    model_config: Mapping[str, Any] = field(default_factory=dict)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data_version: str = ""
    custom_model: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model must be a non-empty name, got {self.model!r}")
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ValueError(f"dataset must be a non-empty string, got {self.dataset!r}")
        if self.dataset.endswith(".h5ad"):  # resolved where the spec is made: workers elsewhere get the same path
            object.__setattr__(self, "dataset", canonical_dataset(self.dataset))
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {list(TARGETS)}, got {self.target!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.training, TrainingConfig):
            object.__setattr__(self, "training", TrainingConfig.from_dict(dict(self.training)))
        config = dict(self.model_config)
        try:
            json.dumps(config, sort_keys=True)
        except TypeError as err:
            raise ValueError(f"model_config must hold JSON values only ({err})") from err
        object.__setattr__(self, "model_config", config)
        if not self.data_version:
            object.__setattr__(self, "data_version", data_fingerprint(self.dataset))
        object.__setattr__(self, "custom_model", dict(self.custom_model) or custom_entry(self.model))

    @property
    def layer(self) -> str:
        """The absolute layer the run trains on and is scored against."""
        return TARGET_LAYERS[self.target]

    @property
    def imputed_weight(self) -> float:
        """The loss weight of unmeasured entries that applies to this run (1 where the target has none)."""
        return self.training.imputed_weight if weight_applies(self.target, self.training.imputed_weight) else 1.0

    def identity(self) -> dict[str, Any]:
        """Everything that determines the run's outcome (what :attr:`run_id` hashes), the data's content included.

        ``imputed_weight`` counts only where it changes the loss, so runs made before it existed keep their ids.
        """
        training = {k: v for k, v in self.training.to_dict().items() if k not in _EXECUTION_ONLY}
        if not weight_applies(self.target, self.training.imputed_weight):
            training.pop("imputed_weight")
        identity = {"model": self.model, "dataset": canonical_dataset(self.dataset), "target": self.target,
                    "seed": self.seed, "model_config": dict(self.model_config), "training": training,
                    "data": self.data_version}
        if self.custom_model:
            identity["custom_model"] = dict(self.custom_model)
        return identity

    @property
    def spec_key(self) -> str:
        """Hash of the settings without the data's content: runs of one spec on successive versions of its data
        share it (a later run replaces the earlier rows of its spec in the results table)."""
        identity = {k: v for k, v in self.identity().items() if k != "data"}
        return hashlib.sha256(json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]

    @property
    def run_id(self) -> str:
        """``{model}-{dataset}-{target}-s{seed}-{hash}``: readable, and equal only for equal runs on equal data."""
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":")).encode()
        digest = hashlib.sha256(blob).hexdigest()[:10]
        slug = re.sub(r"[^A-Za-z0-9]+", "_", dataset_label(self.dataset)).strip("_")[:40] or "dataset"
        model = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.model)
        return f"{model}-{slug}-{self.target}-s{self.seed}-{digest}"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "dataset": self.dataset, "target": self.target, "seed": self.seed,
                "model_config": dict(self.model_config), "training": self.training.to_dict(),
                "data_version": self.data_version, "custom_model": dict(self.custom_model), "run_id": self.run_id}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSpec:
        """Inverse of :meth:`to_dict` (``run_id`` is recomputed and checked when present)."""
        fields = {k: v for k, v in data.items() if k != "run_id"}
        spec = cls(**{**fields, "training": TrainingConfig.from_dict(fields.get("training", {}))})
        if "run_id" in data and data["run_id"] != spec.run_id:
            raise ValueError(f"run_id {data['run_id']!r} does not match the settings (expected {spec.run_id!r})")
        return spec


def custom_entry(model: str) -> dict[str, Any]:
    """What a run spec of ``model`` carries about it: nothing for a built-in model, the registry entry of any other
    (:meth:`~spared.models.registry.ModelEntry.to_spec`); nothing either when ``model`` does not resolve (the
    pre-run check, :func:`spared.bench.checks.check_specs`, reports why)."""
    from spared.models import registry

    try:
        entry = registry.get(model)
        return {} if entry.builtin else entry.to_spec()
    except (ImportError, ValueError, TypeError, KeyError, FileNotFoundError):
        return {}


def make_specs(models: Iterable[str], datasets: Iterable[str], targets: Iterable[str] = ("raw", "completed"),
               seeds: Iterable[int] = (0,), model_config: Mapping[str, Mapping[str, Any]] | None = None,
               training: TrainingConfig | None = None, fetch_data: bool = True) -> list[RunSpec]:
    """The grid models × datasets × targets × seeds (``model_config`` maps a model name to its settings).

    Each dataset's content is fingerprinted once (:func:`data_fingerprint`) and recorded in its specs; with
    ``fetch_data`` (default), a catalogue dataset's raw files are first made known (checked, or downloaded when
    neither they nor a cache standing for them are here), so that the fingerprint, and with it the run ids, is
    the one the runs' build gives and a rerun finds the runs.
    """
    model_config = model_config or {}
    training = training or TrainingConfig()
    datasets = list(datasets)
    versions = {d: data_fingerprint(d, fetch=fetch_data) for d in datasets}
    return [RunSpec(model=m, dataset=d, target=t, seed=s, model_config=model_config.get(m, {}), training=training,
                    data_version=versions[d])
            for m, d, t, s in product(list(models), datasets, list(targets), list(seeds))]


def parse_dataset(text: str) -> tuple[str, dict[str, Any]]:
    """Split ``"name:key=value,key=value"`` into the name and its parameters.

    Values are parsed as JSON when possible, then converted to the type of the parameter they set (a
    :class:`~spared.config.ProcessingConfig` field, or an argument of :func:`spared.synthetic.make_collection`
    for simulated data): ``complete_missing=no`` is ``False``, ``n_slides=3.0`` is ``3``; a value that does not
    convert is a ``ValueError`` naming the key. A path to an ``.h5ad`` file is returned whole with no parameters.
    """
    from spared.config import parse_field

    if text.endswith(".h5ad"):
        return text, {}
    name, _, rest = text.partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"dataset {text!r}: expected key=value after ':', got {item!r}")
        try:
            params[key.strip()] = json.loads(raw.strip())
        except json.JSONDecodeError:
            params[key.strip()] = raw.strip()
    if not name:
        raise ValueError(f"dataset {text!r} has no name before ':'")
    hints = parameter_types(name == SIMULATED)
    try:
        params = {k: parse_field(v, hints[k], k) if k in hints else v for k, v in params.items()}
    except ValueError as err:
        raise ValueError(f"dataset {text!r}: {err}") from None
    return name, params


@cache
def parameter_types(simulated: bool) -> dict[str, Any]:
    """Types of the parameters a dataset string may set: processing fields, plus the simulation's arguments."""
    import anndata

    from spared.config import ProcessingConfig

    hints = dict(typing.get_type_hints(ProcessingConfig))
    if simulated:
        from spared.synthetic import make_collection

        sim = typing.get_type_hints(make_collection, localns={"anndata": anndata})
        hints = {**{k: v for k, v in sim.items() if k != "return"}, **hints}
    return hints


def canonical_dataset(text: str) -> str:
    """The dataset string with its parameters sorted and typed (``a=1,b=2`` and ``b=2.0,a=1`` are one dataset);
    a file path is made absolute (one file reached from two working folders is one dataset)."""
    name, params = parse_dataset(text)
    if name.endswith(".h5ad"):
        return str(Path(name).expanduser().resolve())
    if not params:
        return name
    return name + ":" + ",".join(f"{k}={json.dumps(params[k])}" for k in sorted(params))


def dataset_label(text: str) -> str:
    """A short name for a dataset: the catalogue key, or a file's name without folder and ``.h5ad``."""
    name, _ = parse_dataset(text)
    return name.rsplit("/", 1)[-1].removesuffix(".h5ad")


def dataset_labels(datasets: Iterable[str]) -> dict[str, str]:
    """Short names that tell the given datasets apart: a file's name, with as many of its folders as needed when
    two files share a name (``lab_a/sample`` and ``lab_b/sample``); catalogue keys and simulated specs whole."""
    datasets = list(dict.fromkeys(datasets))
    parts = {d: (Path(parse_dataset(d)[0]).with_suffix("").parts if d.endswith(".h5ad") else (d,))
             for d in datasets}
    depth = {d: 1 for d in datasets}
    while True:
        labels = {d: "/".join(parts[d][-depth[d]:]) for d in datasets}
        clashes = {d for d in datasets if list(labels.values()).count(labels[d]) > 1 and depth[d] < len(parts[d])}
        if not clashes:
            return labels
        for d in clashes:
            depth[d] += 1


#: Fingerprints of files already hashed, keyed by (path, size, modification time).
_FILE_FINGERPRINTS: dict[tuple[str, int, int], str] = {}


def file_fingerprint(path: str | Path) -> str:
    """A hash of a file's content (first 16 hex digits of its sha256), computed once per (path, size, mtime);
    ``"missing"`` when there is no such file."""
    path = Path(path).expanduser()
    try:
        stat = path.stat()
    except OSError:
        return "missing"
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_FINGERPRINTS:
        try:
            with open(path, "rb") as handle:
                _FILE_FINGERPRINTS[key] = hashlib.file_digest(handle, "sha256").hexdigest()[:16]
        except OSError:
            return "unreadable"
    return _FILE_FINGERPRINTS[key]


def data_fingerprint(dataset: str, fetch: bool = False) -> str:
    """What the content of a dataset is keyed on: a processed file's content hash; for simulated data the spared
    version that simulates and processes it; for a catalogue dataset its processed cache's key (dataset, raw
    files' content, processing parameters and spared version; ``fetch``: the raw files made known first, see
    :func:`spared.datasets.cache_paths`). ``"unknown"`` when the dataset cannot be resolved."""
    from spared import __version__

    try:
        name, params = parse_dataset(dataset)
    except ValueError:
        return "unknown"
    if name.endswith(".h5ad"):
        return file_fingerprint(name)
    if name == SIMULATED:
        return f"spared-{__version__}"
    try:
        from spared.datasets import cache_paths

        return "cache-" + cache_paths(name, params or None, fetch=fetch)[0].stem
    except (LookupError, ValueError, TypeError, OSError):
        return "unknown"

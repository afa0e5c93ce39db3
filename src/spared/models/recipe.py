"""Training recipes: how each model's authors trained it, as data.

Every benchmark model has one TOML file in ``spared/models/recipes/``. Each setting is a table with its
``value``, the ``source`` it was read from (paper section or repository path and line) and an optional ``note``;
``[[deviations]]`` list what this benchmark does differently and why. Two kinds exist:

``kind = "trained"`` (:class:`TrainRecipe`)
    optimiser, learning rate, momentum, weight decay, schedule, epochs, batch size, augmentation, test-time
    augmentation, loss terms, head initialisation, backbone weights, and for SEPAL the ``stage1`` model.
``kind = "probe"`` (:class:`ProbeRecipe`)
    a frozen foundation encoder and the HEST-Benchmark linear probe (standardise, PCA, ridge).

:func:`recipe` reads (and caches) one; :data:`RECIPE_NAMES` lists every file. Loading needs no torch.
"""

from __future__ import annotations

import dataclasses
import functools
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

OPTIMIZERS = ("adam", "adamw", "sgd")
#: Learning-rate schedules and their parameters (``cycle_epochs`` may be a fraction of an epoch).
SCHEDULES: dict[str, tuple[str, ...]] = {
    "constant": (),
    "step": ("step_epochs", "gamma"),
    "cosine_warm_restarts": ("cycle_epochs", "warmup_steps", "min_lr_ratio"),
}
AUGMENTATIONS = ("none", "dihedral")
HEAD_INITS = ("default", "train_mean")
LOSS_TERMS = ("mse", "pcc", "zinb", "bake", "contrastive")
POOLS = ("model", "cls_mean", "attn_pool")


@dataclass(frozen=True)
class Deviation:
    """Something this benchmark does differently from the authors, and why."""

    what: str
    why: str


@dataclass(frozen=True)
class _Recipe:
    model: str
    sources: Mapping[str, str] = field(repr=False)
    notes: Mapping[str, str] = field(repr=False)
    deviations: tuple[Deviation, ...] = field(repr=False)

    def settings(self) -> dict[str, Any]:
        """The recipe's values by name (no sources; unset optional settings left out)."""
        skip = {"model", "kind", "sources", "notes", "deviations"}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in skip and getattr(self, f.name) is not None}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description: each setting with its value, source and note, plus the deviations."""
        out: dict[str, Any] = {"model": self.model, "kind": self.kind}
        for name, value in self.settings().items():
            entry = {"value": _plain(value), "source": self.sources.get(name, "")}
            if name in self.notes:
                entry["note"] = self.notes[name]
            out[name] = entry
        out["deviations"] = [dataclasses.asdict(d) for d in self.deviations]
        return out


@dataclass(frozen=True)
class TrainRecipe(_Recipe):
    """How a trained model is trained (see the module docstring for the meaning of each field)."""

    kind: str = "trained"
    optimizer: str = "adam"
    lr: float = 1e-4
    momentum: float = 0.0
    weight_decay: float = 0.0
    schedule: Mapping[str, Any] = field(default_factory=lambda: {"name": "constant"})
    epochs: int = 1
    batch_size: int = 1
    augment: str = "none"
    tta: str = "none"
    loss: Mapping[str, float] = field(default_factory=lambda: {"mse": 1.0})
    head_init: str = "default"
    backbone_weights: str = "none"
    architecture: str | None = None
    stage1: str | None = None

    def __post_init__(self) -> None:
        where = f"recipe {self.model!r}"
        _check_choice(self.optimizer, OPTIMIZERS, f"{where}: optimizer")
        _check_choice(self.augment, AUGMENTATIONS, f"{where}: augment")
        _check_choice(self.tta, AUGMENTATIONS, f"{where}: tta")
        _check_choice(self.head_init, HEAD_INITS, f"{where}: head_init")
        name = self.schedule.get("name")
        _check_choice(name, tuple(SCHEDULES), f"{where}: schedule.name")
        params = set(self.schedule) - {"name"}
        if params != set(SCHEDULES[name]):
            raise ValueError(f"{where}: schedule {name!r} takes {list(SCHEDULES[name])}, got {sorted(params)}")
        unknown = set(self.loss) - set(LOSS_TERMS)
        if unknown:
            raise ValueError(f"{where}: unknown loss term(s) {sorted(unknown)}; valid: {list(LOSS_TERMS)}")
        for key in ("lr", "epochs", "batch_size"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{where}: {key} must be positive, got {getattr(self, key)!r}")
        if self.momentum < 0 or self.weight_decay < 0:
            raise ValueError(f"{where}: momentum and weight_decay must be >= 0")

    def loss_weight(self, term: str) -> float:
        """Weight of loss ``term`` (0 when the recipe does not use it)."""
        return float(self.loss.get(term, 0.0))


@dataclass(frozen=True)
class ProbeRecipe(_Recipe):
    """A frozen foundation encoder and the linear probe fitted on its embeddings."""

    kind: str = "probe"
    encoder: Mapping[str, Any] = field(default_factory=dict)
    standardize: bool = True
    pca_components: int = 256
    ridge_alpha: str | float = "hest"
    fit_intercept: bool = True

    def __post_init__(self) -> None:
        where = f"recipe {self.model!r}"
        missing = {"arch", "kwargs", "pool", "input_size", "mean", "std", "weights_files"} - set(self.encoder)
        if missing:
            raise ValueError(f"{where}: encoder lacks {sorted(missing)}")
        _check_choice(self.encoder["pool"], POOLS, f"{where}: encoder.pool")
        if not (self.ridge_alpha == "hest" or (isinstance(self.ridge_alpha, int | float) and self.ridge_alpha > 0)):
            raise ValueError(f"{where}: ridge_alpha must be 'hest' or a positive number, got {self.ridge_alpha!r}")
        if self.pca_components < 1:
            raise ValueError(f"{where}: pca_components must be positive")


Recipe = TrainRecipe | ProbeRecipe
_KINDS: dict[str, type[_Recipe]] = {"trained": TrainRecipe, "probe": ProbeRecipe}


def _recipe_files() -> dict[str, Any]:
    folder = resources.files("spared.models") / "recipes"
    return {item.name.removesuffix(".toml"): item for item in folder.iterdir() if item.name.endswith(".toml")}


#: Every model with a recipe file.
RECIPE_NAMES: tuple[str, ...] = tuple(sorted(_recipe_files()))
#: Where the default recipe is stated.
DEFAULT_SOURCE = "spared's default recipe for models without their own (docs/models.md#default-recipe)"
#: The recipe of a trained model that brings none (or only some settings): a plain, common setting.
DEFAULT_SETTINGS: dict[str, Any] = {
    "optimizer": "adam", "lr": 1e-4, "momentum": 0.0, "weight_decay": 0.0, "schedule": {"name": "constant"},
    "epochs": 50, "batch_size": 64, "augment": "dihedral", "tta": "none", "loss": {"mse": 1.0},
    "head_init": "default", "backbone_weights": "none",
}
#: Default batch of slide-level models: a window of this many spots of one slide.
DEFAULT_SLIDE_SPOTS = 512
_DEFAULT_NOTES = {
    "loss": "the model's own loss() is trained (Predictor's default: MSE over the target's loss entries)",
    "head_init": "informational: a custom model initialises its own layers",
    "backbone_weights": "informational: the benchmark's --backbone-weights reaches models that accept it",
    "batch_size": f"spots per batch; slide-level models: windows of {DEFAULT_SLIDE_SPOTS} spots",
}


def recipe(model: str) -> Recipe:
    """The recipe of ``model``: its file ``spared/models/recipes/{model}.toml`` for a built-in model, else the
    recipe its registration gave (:func:`spared.models.register`), completed by the default one.

    Raises
    ------
    KeyError
        When ``model`` is neither a recipe file nor a registered model.
    ValueError
        When the file is malformed (a setting without value or source, an unknown key, a bad value).
    """
    if model in RECIPE_NAMES:
        return _file_recipe(model)
    from spared.models import registry

    try:
        entry = registry.get(model)
    except (ValueError, ImportError) as err:
        raise KeyError(f"no recipe for model {model!r}: {err}") from err
    return entry.recipe()


@functools.cache
def _file_recipe(model: str) -> Recipe:
    return parse_recipe(tomllib.loads(_recipe_files()[model].read_text()), f"{model}.toml")


def custom_recipe(model: str, settings: Mapping[str, Any] | str | None, input_kind: str) -> Recipe:
    """The recipe of a model registered with ``settings``, every setting it does not give taken from
    :data:`DEFAULT_SETTINGS` (sourced to :data:`DEFAULT_SOURCE`).

    ``settings`` maps a setting to its value, or to a table ``{"value", "source", "note"}`` as in the recipe
    files; a ``str`` is a TOML file in that layout. A probe model (``input_kind="probe"``) needs a complete probe
    recipe (``kind = "probe"``).
    """
    if isinstance(settings, str):
        from pathlib import Path

        path = Path(settings).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"model {model!r}: recipe file {path} does not exist")
        settings = tomllib.loads(path.read_text())
    data = dict(settings or {})
    data.pop("model", None)
    kind = data.pop("kind", "probe" if input_kind == "probe" else "trained")
    given = {k: v if isinstance(v, Mapping) and "value" in v else {"value": v, "source": "given with the model"}
             for k, v in data.items() if k != "deviations"}
    if kind == "probe":
        return parse_recipe({"model": model, "kind": kind, **given, "deviations": data.get("deviations", [])},
                            f"recipe of {model}")
    defaults = {**DEFAULT_SETTINGS, "batch_size": DEFAULT_SLIDE_SPOTS if input_kind == "slide" else 64}
    merged = {k: {"value": v, "source": DEFAULT_SOURCE, **({"note": _DEFAULT_NOTES[k]} if k in _DEFAULT_NOTES else {})}
              for k, v in defaults.items()}
    merged.update(given)
    return parse_recipe({"model": model, "kind": kind, **merged, "deviations": data.get("deviations", [])},
                        f"recipe of {model}")


def recipe_origin(rec: Recipe) -> str:
    """Where a recipe's settings come from: ``"authors"`` (a built-in recipe file, each value sourced), ``"default"``
    (spared's default recipe throughout) or ``"custom"`` (given with the model, the rest from the default)."""
    if rec.model in RECIPE_NAMES:
        return "authors"
    return "default" if set(rec.sources.values()) <= {DEFAULT_SOURCE} else "custom"


def parse_recipe(data: Mapping[str, Any], origin: str = "recipe") -> Recipe:
    """Build a recipe from the parsed TOML ``data`` (see the module docstring for the layout)."""
    data = dict(data)
    kind = data.pop("kind", None)
    if kind not in _KINDS:
        raise ValueError(f"{origin}: kind must be one of {list(_KINDS)}, got {kind!r}")
    cls = _KINDS[kind]
    model = data.pop("model", None)
    if not isinstance(model, str) or not model:
        raise ValueError(f"{origin}: 'model' must name the model")
    deviations = tuple(_deviation(d, origin) for d in data.pop("deviations", []))
    valid = {f.name for f in dataclasses.fields(cls)} - {"model", "kind", "sources", "notes", "deviations"}
    values, sources, notes = {}, {}, {}
    for key, entry in data.items():
        if key not in valid:
            raise ValueError(f"{origin}: unknown setting {key!r}; valid: {', '.join(sorted(valid))}")
        if not isinstance(entry, Mapping) or "value" not in entry or not str(entry.get("source", "")).strip():
            raise ValueError(f"{origin}: setting {key!r} needs a table with 'value' and a non-empty 'source'")
        extra = set(entry) - {"value", "source", "note"}
        if extra:
            raise ValueError(f"{origin}: setting {key!r} has unknown field(s) {sorted(extra)}")
        values[key] = entry["value"]
        sources[key] = entry["source"]
        if "note" in entry:
            notes[key] = entry["note"]
    required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING} - {"model", "sources",
                                                                                                "notes", "deviations"}
    required |= _REQUIRED[kind]
    missing = required - set(values)
    if missing:
        raise ValueError(f"{origin}: missing setting(s) {sorted(missing)}")
    return cls(model=model, sources=sources, notes=notes, deviations=deviations, **values)


_REQUIRED = {
    "trained": {"optimizer", "lr", "momentum", "weight_decay", "schedule", "epochs", "batch_size", "augment", "tta",
                "loss", "head_init", "backbone_weights"},
    "probe": {"encoder", "standardize", "pca_components", "ridge_alpha", "fit_intercept"},
}


def _deviation(entry: Any, origin: str) -> Deviation:
    if not isinstance(entry, Mapping) or set(entry) != {"what", "why"}:
        raise ValueError(f"{origin}: each [[deviations]] entry needs exactly 'what' and 'why'")
    return Deviation(str(entry["what"]), str(entry["why"]))


def _check_choice(value: Any, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise ValueError(f"{what} must be one of {list(choices)}, got {value!r}")


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def recipe_table(models: list[str] | tuple[str, ...]) -> Any:
    """One row per model: its recipe's key settings and its documented deviations (for reports).

    Returns a ``pandas.DataFrame``; models without a recipe are skipped.
    """
    import pandas as pd

    rows = []
    for name in models:
        try:
            rec = recipe(name)
        except KeyError:
            continue
        if isinstance(rec, TrainRecipe):
            schedule = ", ".join(f"{k}={v}" for k, v in rec.schedule.items())
            training = (f"{rec.optimizer} lr {rec.lr:g}, weight decay {rec.weight_decay:g}, {schedule}; "
                        f"{rec.epochs} epochs of batch {rec.batch_size}; augment {rec.augment}, tta {rec.tta}; "
                        f"loss {', '.join(f'{k} {v:g}' for k, v in rec.loss.items())}; head {rec.head_init}; "
                        f"weights {rec.backbone_weights}" + (f"; stage 1 {rec.stage1}" if rec.stage1 else ""))
        else:
            training = (f"frozen {rec.encoder['arch']} ({rec.encoder['pool']}); standardise, PCA "
                        f"{rec.pca_components}, ridge alpha {rec.ridge_alpha}, intercept {rec.fit_intercept}")
        deviations = "; ".join(f"{d.what} ({d.why})" for d in rec.deviations) or "none"
        rows.append({"model": name, "recipe from": _ORIGIN_WORDS[recipe_origin(rec)], "training (recipe)": training,
                     "deviations from the authors": deviations})
    return pd.DataFrame(rows, columns=["model", "recipe from", "training (recipe)", "deviations from the authors"])


_ORIGIN_WORDS = {"authors": "its authors (a recipe file, each value with its source)",
                 "custom": "the model's registration; settings it does not give: spared's default recipe",
                 "default": "spared's default recipe (the model brings none)"}

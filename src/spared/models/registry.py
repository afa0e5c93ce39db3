"""The open model registry: every benchmark model, built-in or not, is registered the same way.

Three ways in, one table:

- Python: ``spared.models.register("mymodel", MyModel)`` (the ten trained models and five probes of spared are
  registered by :mod:`spared.models.builtin` with this very function);
- an installed package: an entry point in the group ``spared.models`` (``mymodel = "mypkg.models:MyModel"``),
  seen by ``spared models``, ``spared bench`` and Ray workers alike;
- a module path, anywhere a model name is accepted: ``"mypkg.models:MyModel"`` (``spared bench --models
  mypkg.models:MyModel``), imported on first use.

A model class follows the batch contract of :mod:`spared.models.base`: it subclasses
:class:`~spared.models.base.Predictor`, takes ``n_genes`` first, and **declares** its ``input_kind`` (one of
:data:`INPUT_KINDS`; it decides how batches are drawn). Optional class attributes: ``label``, ``paper``, ``year``,
``predicts_deltas`` and ``recipe`` (training settings; every setting not given comes from the default recipe,
:data:`spared.models.recipe.DEFAULT_SETTINGS`, and the run records which). Nothing here imports torch until a
class is loaded.

Custom models reach other processes through their run spec (:meth:`ModelEntry.to_spec`, rebuilt by
:func:`ensure`) and, on Ray, through :func:`ray_runtime_env`, which ships modules that are not installed
packages to the workers.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import re
import sys
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

#: How the runner batches a model (see :mod:`spared.models.base`), plus ``"probe"`` (frozen encoder + ridge).
INPUT_KINDS = ("patch", "slide", "exemplar", "retrieval", "graph")
KINDS = (*INPUT_KINDS, "probe")
#: Entry-point group through which installed packages add models.
ENTRY_POINT_GROUP = "spared.models"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]*$")
_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class ModelEntry:
    """A registered model.

    Attributes
    ----------
    name
        The name runs, tables and the CLI use.
    ref
        Import reference of its class, ``"module:Class"``.
    label, paper, year
        Column label and citation.
    input_kind
        One of :data:`KINDS`.
    target
        ``"absolute"`` or ``"deltas"``: what the network regresses (the batch's target is always absolute).
    origin
        ``"builtin"``, ``"entry point (DIST)"``, ``"python"``, ``"module path"`` or ``"run spec"``.
    recipe_settings
        Training settings given with the model (custom models), or ``None``.
    """

    name: str
    ref: str
    label: str
    paper: str
    year: int | None
    input_kind: str
    target: str
    origin: str
    recipe_settings: Mapping[str, Any] | str | None = field(default=None, repr=False)

    @property
    def builtin(self) -> bool:
        """Whether spared itself registered the model."""
        return self.origin == "builtin"

    def load(self) -> type:
        """The model's class (imported now)."""
        return import_ref(self.ref, self.name)

    def recipe(self) -> Any:
        """The model's :mod:`~spared.models.recipe` recipe: its file for a built-in model, else the settings given
        with it completed by the default recipe."""
        from spared.models.recipe import _file_recipe, custom_recipe

        if self.builtin:
            return _file_recipe(self.name)
        key = (self.name, self.ref, repr(self.recipe_settings))
        if key not in _CUSTOM_RECIPES:
            _CUSTOM_RECIPES[key] = custom_recipe(self.name, self.recipe_settings, self.input_kind)
        return _CUSTOM_RECIPES[key]

    def to_spec(self) -> dict[str, Any]:
        """What a run spec carries so that any process rebuilds this entry (JSON values): the import reference,
        descriptive fields and the resolved recipe settings."""
        from spared.models.recipe import recipe_origin

        rec = self.recipe()
        return {"ref": self.ref, "label": self.label, "paper": self.paper, "year": self.year,
                "input_kind": self.input_kind, "target": self.target,
                "recipe": {k: v for k, v in rec.to_dict().items() if k not in ("model", "deviations")},
                "recipe_origin": recipe_origin(rec)}


_REGISTRY: dict[str, ModelEntry] = {}
_BROKEN: dict[str, str] = {}
_CUSTOM_RECIPES: dict[tuple, Any] = {}
_LOADED = False


def register(name: str, cls: type | str, *, input_kind: str | None = None, label: str | None = None,
             paper: str | None = None, year: int | None = None, predicts_deltas: bool | None = None,
             recipe: Mapping[str, Any] | str | None = None, replace: bool = False,
             origin: str = "python") -> ModelEntry:
    """Register model ``cls`` as ``name`` (for :func:`build_model`, ``spared bench``, the results and the report).

    Parameters
    ----------
    name
        Letters, digits, ``_``, ``.`` and ``-``, starting with a letter.
    cls
        A :class:`~spared.models.base.Predictor` subclass, or its import reference ``"module:Class"`` (imported
        now unless ``input_kind`` is given, which keeps registration lazy).
    input_kind
        One of :data:`KINDS`; default the class's own ``input_kind`` declaration (required: the base class's
        default does not count).
    label, paper, year, predicts_deltas
        Default: the class attributes of the same names (``label`` falls back to ``name``).
    recipe
        Training settings (``{"lr": 3e-4, "epochs": 20}``, or tables with ``value``/``source`` as in the recipe
        files, or a TOML file); default the class's ``recipe`` attribute; settings not given come from the
        default recipe. Built-in models have a recipe file instead.
    replace
        Replace a model registered under ``name`` (otherwise that is an error unless it is the same class).
    origin
        What registered it (``"python"`` for users; ``"builtin"`` is spared's own).

    Returns
    -------
    ModelEntry
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"model name must start with a letter and hold only letters, digits, '_', '.', '-' "
                         f"(a 'module:Class' reference is used as it is, unregistered), got {name!r}")
    if origin != "builtin":
        _ensure_loaded()
    if isinstance(cls, str):
        ref = cls
        if not _REF.match(ref):
            raise ValueError(f"model {name!r}: expected a class or a 'package.module:ClassName' reference, got {ref!r}")
        loaded = None if input_kind is not None else import_ref(ref, name)
    else:
        loaded, ref = cls, class_ref(cls)
    if loaded is not None:
        input_kind = _declared_kind(name, loaded, input_kind)
        declared = _class_fields(loaded, name)
        label = label if label is not None else declared["label"]
        paper = paper if paper is not None else declared["paper"]
        year = year if year is not None else declared["year"]
        predicts_deltas = predicts_deltas if predicts_deltas is not None else declared["predicts_deltas"]
        recipe = recipe if recipe is not None else declared["recipe"]
    if input_kind not in KINDS:
        raise ValueError(f"model {name!r}: input_kind must be one of {list(KINDS)}, got {input_kind!r}")
    entry = ModelEntry(name, ref, label or name, paper or "", year, input_kind,
                       "deltas" if predicts_deltas else "absolute", origin,
                       dict(recipe) if isinstance(recipe, Mapping) else recipe)
    if origin != "builtin":
        _check_recipe(entry)
    old = _REGISTRY.get(name)
    if old is not None and not replace and (old.ref, old.recipe_settings) != (entry.ref, entry.recipe_settings):
        raise ValueError(f"a model named {name!r} is registered already ({old.ref}, {old.origin}); choose another "
                         f"name or pass replace=True")
    _REGISTRY[name] = entry
    _BROKEN.pop(name, None)
    return entry


def _class_fields(cls: type, label: str) -> dict[str, Any]:
    """What a model class declares about itself: ``label`` (``label`` when it declares none), ``paper``, ``year``,
    ``predicts_deltas`` and ``recipe``."""
    return {"label": getattr(cls, "label", "") or label, "paper": getattr(cls, "paper", ""),
            "year": getattr(cls, "year", None), "predicts_deltas": bool(getattr(cls, "predicts_deltas", False)),
            "recipe": getattr(cls, "recipe", None)}


def unregister(name: str) -> None:
    """Remove a model registered from Python (built-in models stay)."""
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ValueError(f"no model named {name!r} is registered")
    if entry.builtin:
        raise ValueError(f"{name!r} is built into spared and cannot be unregistered")
    del _REGISTRY[name]


def get(name: str) -> ModelEntry:
    """The entry of a registered name (built-in, Python, entry point) or of a ``"module:Class"`` reference."""
    _ensure_loaded()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _BROKEN:
        raise ImportError(_BROKEN[name])
    if isinstance(name, str) and _REF.match(name):
        cls = import_ref(name, name)
        kind = _declared_kind(name, cls, None)
        declared = _class_fields(cls, cls.__name__)
        entry = ModelEntry(name, name, declared["label"], declared["paper"], declared["year"], kind,
                           "deltas" if declared["predicts_deltas"] else "absolute", "module path", declared["recipe"])
        _check_recipe(entry)
        _REGISTRY[name] = entry
        return entry
    raise ValueError(f"unknown model {name!r}; valid models: {', '.join(names())} (or a custom model as "
                     f"'package.module:ClassName', see `spared models`)")


def ensure(name: str, spec_entry: Mapping[str, Any] | None = None) -> ModelEntry:
    """The entry of ``name`` in this process, registering it from a run spec's ``custom_model`` when this process
    does not know it (a Ray worker running a model registered in the driver's Python session)."""
    _ensure_loaded()
    if name in _REGISTRY or not spec_entry:
        return get(name)
    if _REF.match(name):  # a module path: its entry as the driver resolved it (the class is imported on use)
        entry = ModelEntry(name, spec_entry["ref"], spec_entry["label"], spec_entry.get("paper", ""),
                           spec_entry.get("year"), spec_entry["input_kind"], spec_entry.get("target", "absolute"),
                           "run spec", spec_entry.get("recipe"))
        _REGISTRY[name] = entry
        return entry
    return register(name, spec_entry["ref"], input_kind=spec_entry["input_kind"], label=spec_entry["label"],
                    paper=spec_entry.get("paper", ""), year=spec_entry.get("year"),
                    predicts_deltas=spec_entry.get("target") == "deltas", recipe=spec_entry.get("recipe"),
                    origin="run spec")


def names(kind: str | None = None) -> tuple[str, ...]:
    """Registered model names (built-in first), optionally of one input kind (``"probe"`` for the probes;
    ``"trained"`` for every kind but probes)."""
    _ensure_loaded()
    keep = [n for n, e in _REGISTRY.items() if kind is None or e.input_kind == kind
            or (kind == "trained" and e.input_kind != "probe")]
    return tuple(sorted(keep, key=lambda n: not _REGISTRY[n].builtin))


def entries() -> Mapping[str, ModelEntry]:
    """A live read-only view of the registry (name → :class:`ModelEntry`)."""
    _ensure_loaded()
    return MappingProxyType(_REGISTRY)


def broken() -> dict[str, str]:
    """Entry points that could not be loaded, with why (``spared models`` lists them)."""
    _ensure_loaded()
    return dict(_BROKEN)


def model_class(name: str) -> type:
    """The :class:`~spared.models.base.Predictor` subclass of a trained model."""
    entry = get(name)
    if entry.input_kind == "probe":
        raise ValueError(f"{name} is a frozen encoder with a linear probe, not a trained Predictor: use "
                         f"spared.models.foundation.build_encoder and spared.models.probe.LinearProbe")
    return entry.load()


def build_model(name: str, n_genes: int, **config: Any) -> Any:
    """Build trained model ``name`` (a registered name or ``"module:Class"``) predicting ``n_genes`` genes.

    ``config`` are the class's keyword arguments. Built-in models take ``backbone_weights`` (``"imagenet"``: the
    ImageNet V1 weights their authors used; ``"none"``: random initialisation; or a local ``state_dict`` file)
    and size settings such as ``depth``/``dim``/``backbone_kwargs`` for tiny test networks.
    """
    return model_class(name)(n_genes, **config)


def accepts(cls: type, key: str) -> bool:
    """Whether ``cls(n_genes, ...)`` takes keyword ``key`` (or any keyword)."""
    params = inspect.signature(cls).parameters.values()
    return any(p.kind is p.VAR_KEYWORD or (p.name == key and p.kind is not p.VAR_POSITIONAL) for p in params)


def class_ref(cls: type) -> str:
    """``"module:QualName"`` of a class."""
    return f"{cls.__module__}:{cls.__qualname__}"


def import_ref(ref: str, name: str) -> Any:
    """The object ``ref`` (``"module:Attr"``) names; the error says what to do when it cannot be imported."""
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(
            f"model {name!r}: cannot import module {module_name!r} ({type(err).__name__}: {err}). A module path is "
            f"imported from the Python path (and, on the command line, the current folder): install its package, "
            f"run from the folder holding it, or add that folder to PYTHONPATH. With --executor ray, modules that "
            f"are not installed packages are shipped from the driver to the workers (Ray runtime_env py_modules); "
            f"an installed package must be installed on every node") from err
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError as err:
        raise ImportError(f"model {name!r}: module {module_name!r} has no {attr!r}") from err
    return obj


def ray_runtime_env(model_refs: Iterable[str], runtime_env: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A Ray ``runtime_env`` that lets workers import the modules of ``model_refs`` (``"module:Class"``).

    Modules of installed distributions, the standard library and spared itself are expected on every node and
    are not shipped; any other module (a file or package found on the driver's path) is added to ``py_modules``
    (a single ``.py`` file or the package folder), merged with those of ``runtime_env`` (its other keys are kept).

    Raises
    ------
    ModuleNotFoundError
        When a module cannot be found on the driver.
    ValueError
        For a class defined in ``__main__`` (workers cannot import a script) or a compiled module file.
    """
    env = dict(runtime_env or {})
    modules = [str(m) for m in env.get("py_modules", [])]
    for ref in dict.fromkeys(model_refs):
        path = _module_to_ship(ref)
        if path is not None and path not in modules:
            modules.append(path)
    if modules:
        env["py_modules"] = modules
    return env


def _module_to_ship(ref: str) -> str | None:
    top = ref.partition(":")[0].split(".")[0]
    if top == "__main__":
        raise ValueError(f"model class {ref} is defined in the script being run (__main__); Ray workers cannot "
                         f"import a script: move the class into a module file and register it from there")
    if top == "spared" or top in sys.stdlib_module_names:
        return None
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise ModuleNotFoundError(f"model {ref}: module {top!r} cannot be found on the driver, so it cannot be "
                                  f"shipped to Ray workers; install its package, or add the folder holding "
                                  f"{top}.py (or {top}/) to PYTHONPATH")
    if top in importlib.metadata.packages_distributions():
        return None  # an installed distribution: expected on every node
    if spec.submodule_search_locations:
        return str(Path(next(iter(spec.submodule_search_locations))).resolve())
    origin = Path(spec.origin or "")
    if origin.suffix != ".py":
        raise ValueError(f"model {ref}: module {top!r} ({origin}) is not a .py file or a package folder; Ray can "
                         f"ship only those: install it as a package on every node")
    return str(origin.resolve())


def _declared_kind(name: str, cls: type, given: str | None) -> str:
    """The input kind ``cls`` declares itself (``given`` when it declares none), checked."""
    from spared.models.base import Predictor

    declared = next((c.__dict__["input_kind"] for c in cls.__mro__
                     if c is not Predictor and "input_kind" in c.__dict__), None)
    if given is not None and declared is not None and given != declared:
        raise ValueError(f"model {name!r}: registered as input_kind {given!r} but the class declares {declared!r}")
    kind = given or declared
    if kind is None:
        raise ValueError(f"model {name!r}: declare how it is batched, e.g. input_kind = 'patch' on the class (one of "
                         f"{list(INPUT_KINDS)}; see spared.models.base), or register(..., input_kind=...)")
    if kind != "probe":
        _check_class(name, cls)
    return kind


def _check_class(name: str, cls: Any) -> None:
    from spared.models.base import Predictor

    if not (isinstance(cls, type) and issubclass(cls, Predictor)):
        raise TypeError(f"model {name!r}: {cls!r} is not a subclass of spared.models.base.Predictor (the batch "
                        f"contract every trained model follows)")
    if cls.forward is Predictor.forward:
        raise TypeError(f"model {name!r}: {cls.__name__} does not implement forward(batch) -> (B, G) predictions")


def _check_recipe(entry: ModelEntry) -> None:
    """Build a custom model's recipe now, so that a bad setting is an error at registration, not mid-run."""
    rec = entry.recipe()
    if entry.input_kind == "graph" and not getattr(rec, "stage1", None):
        raise ValueError(f"model {entry.name!r} is a graph model: it trains on the embeddings of a stage-1 model; "
                         f"give recipe stage1='<model>' (e.g. 'vit_b_delta', as SEPAL)")


def _ensure_loaded() -> None:
    """Register the built-in models, then those of installed packages' entry points (once per process)."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    from spared.models.builtin import register_builtins

    register_builtins()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(getattr(ep, "dist", None), "name", None) or "unknown distribution"
        if ep.name in _REGISTRY:
            warnings.warn(f"entry point {ep.name!r} of {dist} is ignored: a model of that name is registered "
                          f"already ({_REGISTRY[ep.name].origin})", UserWarning, stacklevel=3)
            continue
        try:
            register(ep.name, ep.value, origin=f"entry point ({dist})")
        except Exception as err:  # a broken plugin must not break spared; it is reported when used
            _BROKEN[ep.name] = f"model {ep.name!r} (entry point {ep.value} of {dist}) could not be loaded: {err}"
            warnings.warn(_BROKEN[ep.name], UserWarning, stacklevel=3)

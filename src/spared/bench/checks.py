"""What can be checked about benchmark runs before any of them starts: model names and settings, datasets, layers.

:func:`check_specs` returns every problem found, one line each, so that ``spared bench`` refuses a grid it cannot
run before minutes of training (a run that fails later, e.g. offline, is still recorded as failed).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from spared.bench.runs import SIMULATED, TARGET_LAYERS, RunSpec, parse_dataset

#: obs columns and layers every processed collection has (besides the target layer).
_PROCESSED_OBS = ("slide_id", "split", "array_row", "array_col")
_PROCESSED_LAYERS = ("mask", "c_d_log1p")


def check_specs(specs: Iterable[RunSpec]) -> list[str]:
    """Problems that would make runs of ``specs`` fail, found without training (empty when none).

    Checked: the model exists and accepts its settings; a local backbone weights file exists; the dataset
    resolves (a processed ``.h5ad`` that exists, has spots and holds the target's layer, a known catalogue key,
    or simulated parameters that exist and are valid) and can provide the target (completed targets need SpaCKLE
    completion).
    """
    problems: list[str] = []
    seen_models: set[str] = set()
    seen_datasets: set[tuple[str, str]] = set()
    for spec in specs:
        model_key = spec.model + repr(sorted(spec.model_config.items())) + repr(spec.training.weights_dir)
        if model_key not in seen_models:
            seen_models.add(model_key)
            problems += _model_problems(spec.model, spec.model_config, spec.training)
        if (spec.dataset, spec.target) not in seen_datasets:
            seen_datasets.add((spec.dataset, spec.target))
            problems += _dataset_problems(spec.dataset, spec.target)
        for weights in (spec.training.backbone_weights, spec.model_config.get("backbone_weights")):
            if weights not in (None, "none", "imagenet") and not Path(str(weights)).expanduser().is_file():
                problems.append(f"backbone weights file {weights} does not exist (give 'none', 'imagenet' or a local "
                                f"state_dict file)")
    return list(dict.fromkeys(problems))


def _model_problems(name: str, config: dict[str, Any], training: Any) -> list[str]:
    from spared.models import registry

    try:
        entry = registry.get(name)
        if entry.input_kind == "probe":
            return _probe_problems(name, config, training)
        cls = entry.load()
        entry.recipe()
    except (ValueError, ImportError, TypeError, KeyError, FileNotFoundError) as err:
        return [str(err).strip(chr(34) + chr(39))]
    parameters = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return []
    valid = [k for k, p in parameters.items() if k not in ("self", "n_genes") and p.kind is not p.VAR_POSITIONAL]
    unknown = sorted(set(config) - set(valid))
    return [f"model {name!r} has no setting(s) {unknown}; its settings: {', '.join(valid)}"] if unknown else []


def _probe_problems(name: str, config: dict[str, Any], training: Any) -> list[str]:
    """A probe's settings (``weights``, ``encoder``) and, before any work, whether its encoder weights are there."""
    from spared.models.backbones import WeightsUnavailable
    from spared.models.foundation import imagenet_encoder, locate_encoder_weights
    from spared.models.recipe import recipe

    unknown = sorted(set(config) - {"weights", "encoder"})
    if unknown:
        return [f"model {name!r} has no setting(s) {unknown}; its settings: weights, encoder"]
    weights = config.get("weights")
    if weights is None and training.backbone_weights != "imagenet":
        weights = training.backbone_weights
    if weights == "none":
        return []
    if weights is not None:
        return [] if Path(str(weights)).expanduser().is_file() else [f"{name}: weights file {weights} does not exist"]
    settings = {**recipe(name).encoder, **(config.get("encoder") or {})}
    if imagenet_encoder(settings):
        return []  # torchvision's ImageNet file: found or downloaded as the trained models' backbones are
    try:
        locate_encoder_weights(name, settings, training.weights_dir)
    except WeightsUnavailable as err:
        return [str(err)]
    return []


def _dataset_problems(dataset: str, target: str) -> list[str]:
    try:
        name, params = parse_dataset(dataset)
    except ValueError as err:
        return [str(err)]
    layer = TARGET_LAYERS[target]
    if name.endswith(".h5ad"):
        return _file_problems(Path(name).expanduser(), target, layer)
    if name == SIMULATED:
        return _simulated_problems(dataset, params, target)
    return _catalogue_problems(dataset, name, params, target)


def _file_problems(path: Path, target: str, layer: str) -> list[str]:
    import h5py

    if not path.is_file():
        return [f"dataset file {path} does not exist"]
    try:
        with h5py.File(path, "r") as handle:
            layers = set(handle["layers"].keys()) if "layers" in handle else set()
            obs = set(handle["obs"].keys()) if "obs" in handle else set()
            index = handle["obs"].attrs.get("_index") if "obs" in handle else None
            n_spots = len(handle["obs"][index]) if index in obs else None
    except (OSError, KeyError, TypeError) as err:
        return [f"dataset file {path} is not a readable .h5ad file ({err}); write it again"]
    if n_spots == 0:
        return [f"dataset file {path} holds no spots"]
    lacking = [c for c in _PROCESSED_OBS if c not in obs] + [c for c in _PROCESSED_LAYERS if c not in layers]
    if lacking:
        return [f"dataset file {path} is not a processed collection (it lacks {lacking}); process it first: "
                f"spared process {path} PROCESSED.h5ad"]
    if layer not in layers:
        hint = (" (written by SpaCKLE completion: process with complete_missing=true, or run `spared complete`)"
                if layer.startswith("c_t_") else "")
        return [f"dataset file {path} has no layer {layer!r} for the {target!r} target{hint}; its layers: "
                f"{sorted(layers)}"]
    return []


def _simulated_problems(dataset: str, params: dict[str, Any], target: str) -> list[str]:
    from spared.bench.runs import parameter_types
    from spared.config import ProcessingConfig

    processing = set(ProcessingConfig().to_dict())
    unknown = sorted(set(params) - set(parameter_types(True)))
    if unknown:
        return [f"dataset {dataset!r}: unknown simulated dataset parameter(s) {unknown}; valid: simulation "
                f"{sorted(set(parameter_types(True)) - processing)}, processing {sorted(processing - {'extra'})}"]
    try:
        config = ProcessingConfig(complete_missing=True).replace(**{k: v for k, v in params.items()
                                                                    if k in processing})
    except (KeyError, ValueError) as err:
        return [f"dataset {dataset!r}: {err}"]
    return _completion_problem(dataset, config, target)


def _catalogue_problems(dataset: str, name: str, params: dict[str, Any], target: str) -> list[str]:
    from spared.catalog import load_spec

    try:
        config = load_spec(name).processing_config(None).replace(**params)
    except (LookupError, ValueError, FileNotFoundError) as err:
        return [f"dataset {dataset!r}: {str(err).strip(chr(34) + chr(39))}"]
    return _completion_problem(dataset, config, target)


def _completion_problem(dataset: str, config: Any, target: str) -> list[str]:
    if TARGET_LAYERS[target].startswith("c_t_") and not config.complete_missing:
        return [f"dataset {dataset!r} is processed with complete_missing=false, so it has no completed layer "
                f"(c_t_log1p) for the 'completed' target; drop that target or set complete_missing=true"]
    return []

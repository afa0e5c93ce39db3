"""SpaCKLE checkpoints: a folder with ``model.safetensors`` (weights) and ``config.json`` (everything else).

``config.json`` holds ``format`` (``"spared.spackle"``), ``format_version``, the hyper-parameters, the ordered
gene list, the training layer and the best validation step/MSE. Writes are atomic: the folder is written
under a temporary name next to the target and renamed into place, so a half-written checkpoint never exists.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from spared.impute.spackle.config import SpackleConfig
from spared.impute.spackle.model import SpackleModel, network_from_config
from spared.io.atomic import atomic_dir, check_writable_dir

FORMAT = "spared.spackle"
FORMAT_VERSION = 4
#: Versions read, with the values version 1 implied for parameters added since (it predates them).
READABLE = {1: {"relative_positions": False, "ema_decay": None, "lr_schedule": "constant", "depth_key": None},
            2: {"depth_key": None}, 3: {}, 4: {}}
WEIGHTS = "model.safetensors"
METADATA = "config.json"


def check_destination(path: str | Path, overwrite: bool = True) -> Path:
    """Check, before training, that a checkpoint can be saved at ``path``; raise ``FileExistsError`` if not.

    ``path`` may be absent or an empty folder; an existing SpaCKLE checkpoint is replaced only with
    ``overwrite``; anything else there is never touched. Its location must be writable.
    """
    path = Path(path)
    if path.exists() and not (path.is_dir() and not any(path.iterdir())):
        if not (path.is_dir() and _is_checkpoint(path)):
            raise FileExistsError(f"{path} exists and is not a SpaCKLE checkpoint folder; choose another path")
        if not overwrite:
            raise FileExistsError(f"the SpaCKLE checkpoint {path} exists; choose another path, or replace it "
                                  f"(--overwrite)")
    check_writable_dir(path)
    return path


def save(model: SpackleModel, path: str | Path) -> Path:
    """Write ``model`` to the folder ``path`` (replacing an existing SpaCKLE checkpoint there).

    Raises ``FileExistsError`` when ``path`` exists and is not an (empty or SpaCKLE checkpoint) folder.
    """
    path = check_destination(path)
    with atomic_dir(path) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in model.network.state_dict().items()}
        save_file(state, tmp / WEIGHTS, metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **model.metadata()}
        (tmp / METADATA).write_text(json.dumps(meta, indent=2))
    return path


class CheckpointError(ValueError):
    """A SpaCKLE checkpoint that cannot be used: unreadable, corrupt, truncated or holding non-finite weights."""


def load(path: str | Path) -> SpackleModel:
    """Read a checkpoint folder written by :func:`save` (weights on CPU, network in eval mode).

    Raises ``FileNotFoundError`` when ``path`` is not a checkpoint folder and :class:`CheckpointError` (naming
    the file) when its metadata or weights are unreadable, corrupt, truncated, of another format version, do
    not fit the architecture, or hold NaN/inf.
    """
    path = Path(path)
    if not (path / METADATA).is_file() or not (path / WEIGHTS).is_file():
        raise FileNotFoundError(f"{path} is not a SpaCKLE checkpoint: expected {METADATA} and {WEIGHTS} in it "
                                f"(written by spared.impute.spackle.save or `spared complete --save-checkpoint`)")
    meta = _read_metadata(path / METADATA)
    if meta.get("format_version") not in READABLE:
        raise CheckpointError(f"checkpoint {path} has format version {meta.get('format_version')}, this spared "
                              f"reads versions {sorted(READABLE)}; retrain or use the spared release that wrote it")
    try:
        config = SpackleConfig.from_dict({**READABLE[meta["format_version"]], **meta["config"]})
        network = network_from_config(config, int(meta["n_genes"]), meta["visual_dim"])
        genes, layer = [str(g) for g in meta["genes"]], str(meta["layer"])
        best_step, best_val_mse = meta["best_step"], meta["best_val_mse"]
        selection = str(meta.get("selection", ""))  # absent from checkpoints written before it was recorded
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path / METADATA} does not describe a SpaCKLE model ({type(err).__name__}: "
                              f"{err}); the checkpoint is damaged: save or train it again") from err
    state = _read_weights(path / WEIGHTS)
    try:
        network.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"the weights in {path / WEIGHTS} do not match the architecture in {METADATA}: "
                              f"{err}") from err
    return SpackleModel(network.eval(), config, genes, layer, best_step=best_step, best_val_mse=best_val_mse,
                        selection=selection)


def _read_metadata(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} of the SpaCKLE checkpoint is not readable JSON ({err}); the checkpoint is "
                              f"damaged: save or train it again") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{path} is not a SpaCKLE checkpoint (format {found!r}, expected {FORMAT!r})")
    return meta


def _read_weights(path: Path) -> dict:
    """The tensors of a safetensors file, each checked to be finite."""
    import torch

    try:
        state = load_file(path, device="cpu")
    except Exception as err:  # safetensors raises its own SafetensorError (and OSError) for damaged files
        raise CheckpointError(f"{path} of the SpaCKLE checkpoint is corrupt or truncated ({type(err).__name__}: "
                              f"{err}); save or train the model again") from err
    bad = [name for name, tensor in state.items()
           if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        raise CheckpointError(f"{path} holds non-finite (NaN or inf) weights in {', '.join(sorted(bad)[:5])}"
                              f"{' ...' if len(bad) > 5 else ''}: training diverged or the file was damaged; "
                              f"train the model again")
    return state


def _is_checkpoint(path: Path) -> bool:
    try:
        return json.loads((path / METADATA).read_text()).get("format") == FORMAT
    except (OSError, ValueError):
        return False

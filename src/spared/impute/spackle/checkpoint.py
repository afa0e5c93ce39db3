"""SpaCKLE checkpoints: a folder with ``model.safetensors`` (weights) and ``config.json`` (everything else).

``config.json`` holds ``format`` (``"spared.spackle"``), ``format_version``, the hyper-parameters, the ordered
gene list, the training layer and the best validation step/MSE. Writes are atomic: the folder is written
under a temporary name next to the target and renamed into place, so a half-written checkpoint never exists.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from safetensors.torch import load_file, save_file

from spared.impute.spackle.config import SpackleConfig
from spared.impute.spackle.model import SpackleModel, SpackleNetwork

FORMAT = "spared.spackle"
FORMAT_VERSION = 2
#: Versions read, with the values version 1 implied for parameters added since (it predates them).
READABLE = {1: {"relative_positions": False}, 2: {}}
WEIGHTS = "model.safetensors"
METADATA = "config.json"


def save(model: SpackleModel, path: str | Path) -> Path:
    """Write ``model`` to the folder ``path`` (replacing an existing SpaCKLE checkpoint there).

    Raises ``FileExistsError`` when ``path`` exists and is not an (empty or SpaCKLE checkpoint) folder.
    """
    path = Path(path)
    if path.exists() and not (path.is_dir() and (not any(path.iterdir()) or _is_checkpoint(path))):
        raise FileExistsError(f"{path} exists and is not a SpaCKLE checkpoint folder; choose another path")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.network.state_dict().items()}
        save_file(state, tmp / WEIGHTS, metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **model.metadata()}
        (tmp / METADATA).write_text(json.dumps(meta, indent=2))
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return path


def load(path: str | Path) -> SpackleModel:
    """Read a checkpoint folder written by :func:`save` (weights on CPU, network in eval mode)."""
    path = Path(path)
    if not (path / METADATA).is_file() or not (path / WEIGHTS).is_file():
        raise FileNotFoundError(f"{path} is not a SpaCKLE checkpoint: expected {METADATA} and {WEIGHTS} in it "
                                f"(written by spared.impute.spackle.save or `spared complete --save-checkpoint`)")
    meta = json.loads((path / METADATA).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path / METADATA} is not a SpaCKLE checkpoint (format {meta.get('format')!r}, "
                         f"expected {FORMAT!r})")
    if meta.get("format_version") not in READABLE:
        raise ValueError(f"checkpoint {path} has format version {meta.get('format_version')}, this spared "
                         f"reads versions {sorted(READABLE)}; retrain or use the spared release that wrote it")
    config = SpackleConfig.from_dict({**READABLE[meta["format_version"]], **meta["config"]})
    network = SpackleNetwork.from_config(config, int(meta["n_genes"]), meta["visual_dim"])
    try:
        network.load_state_dict(load_file(path / WEIGHTS, device="cpu"))
    except RuntimeError as err:
        raise ValueError(f"the weights in {path / WEIGHTS} do not match the architecture in {METADATA}: "
                         f"{err}") from err
    return SpackleModel(network.eval(), config, list(meta["genes"]), meta["layer"],
                        best_step=meta["best_step"], best_val_mse=meta["best_val_mse"])


def _is_checkpoint(path: Path) -> bool:
    try:
        return json.loads((path / METADATA).read_text()).get("format") == FORMAT
    except (OSError, ValueError):
        return False

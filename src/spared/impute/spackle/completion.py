"""Apply a trained SpaCKLE to a collection: fill the missing entries, leave every real entry untouched."""

from __future__ import annotations

import numpy as np
import torch

from spared.data_model import dense, require_finite
from spared.impute.spackle.data import loader, neighbourhoods
from spared.impute.spackle.inputs import gene_order
from spared.impute.spackle.model import SpackleModel
from spared.inplace import target
from spared.training_runtime import torch_threads


def resolve_device(device: str | None = None) -> torch.device:
    """``device`` when given, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def complete(adata, model: SpackleModel, layer: str = "c_d_log1p", key_added: str = "c_t_log1p",
             batch_size: int = 1024, device: str | None = None, copy: bool = False):
    """Complete ``adata.layers[layer]`` with ``model`` into ``adata.layers[key_added]``.

    Each spot is read with its ``num_neighs`` nearest spots of the same slide, missing entries
    (``layers["mask"] == False``) set to 0, and with ``obs[depth_key]`` when the model reads sequencing depth;
    the network's row-0 prediction replaces the spot's missing entries only, so real entries are copied bit for
    bit (the layer's dtype is kept). Genes are matched by name (reordered if needed).

    Parameters
    ----------
    adata
        Collection with ``layers[layer]``, ``layers["mask"]``, slide labels and ``obsm`` coordinates.
    model
        A trained or loaded :class:`SpackleModel`.
    layer, key_added
        Layer to complete and the layer written (same dtype and gene order as ``adata``).
    batch_size
        Spots per forward pass (memory grows with it, not with the number of spots).
    device
        Torch device; ``None`` = CUDA when available, else CPU.
    copy
        Write into a copy of ``adata`` and return it instead of changing ``adata``.

    Returns
    -------
    ``None`` (``adata.layers[key_added]`` written), or the completed copy when ``copy`` is True.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cfg = model.config
    data = neighbourhoods(adata, layer, cfg.num_neighs, model.genes, cfg.visual_key, cfg.slide_key,
                          cfg.spatial_key, cfg.relative_positions, cfg.depth_key)
    if cfg.visual_key is not None and data.visual.shape[1] != model.visual_dim:
        raise ValueError(f"obsm[{cfg.visual_key!r}] has {data.visual.shape[1]} features per spot but the model "
                         f"was trained on {model.visual_dim}; use the same patch encoder")
    on = resolve_device(device)
    network = model.network.to(on).eval()
    predictions = np.empty(tuple(data.values.shape), dtype=np.float32)
    with torch.inference_mode(), torch_threads(cfg.threads):
        for start, batch in zip(range(0, adata.n_obs, batch_size),
                                loader(data, np.arange(adata.n_obs), batch_size), strict=True):
            batch = {key: value.to(on) for key, value in batch.items()}
            pred = network(batch["x"], batch.get("visual"), batch["real"], batch.get("distance"), batch.get("depth"))
            predictions[start:start + len(pred)] = pred.float().cpu().numpy()
    order = np.argsort(gene_order(adata.var_names, model.genes))
    values = dense(adata.layers[layer])
    real = dense(adata.layers["mask"])
    completed = np.where(real, values, predictions[:, order].astype(values.dtype, copy=False))
    require_finite(completed, f"layer {key_added!r} completed by SpaCKLE", real)
    adata = target(adata, copy)
    adata.layers[key_added] = completed
    return adata if copy else None

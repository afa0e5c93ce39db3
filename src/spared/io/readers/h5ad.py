"""Collections or slides already stored as ``.h5ad`` (scanpy/squidpy layout), brought to the spared data model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from spared.io.readers.common import (
    ReaderError,
    SlideInfo,
    coerce_slides,
    concat_slides,
    examples,
    gene_labels,
    harmonise_genes,
)


def _slide_from_h5ad(adata: Any, slide: SlideInfo, organism: str, source: str) -> Any:
    import anndata as ad

    if "spatial" not in adata.obsm:
        raise ReaderError(f"{source}: obsm['spatial'] (full-resolution pixel coordinates) is missing")
    missing = [c for c in ("array_row", "array_col") if c not in adata.obs]
    if missing:
        raise ReaderError(f"{source}: obs lacks {missing}; spared needs the spot-array position of every spot")
    ids, symbols = gene_labels(adata.var)
    counts = adata.layers["counts"] if "counts" in adata.layers else adata.X
    matrix, var, report = harmonise_genes(sp.csr_matrix(counts, dtype=np.float32), ids, symbols, organism,
                                          source=f"{source} (slide {slide.id})")
    in_tissue = (adata.obs["in_tissue"].to_numpy(dtype=np.int64) if "in_tissue" in adata.obs
                 else np.ones(adata.n_obs, dtype=np.int64))
    barcodes = adata.obs_names.to_numpy(dtype=str)
    obs = pd.DataFrame({
        "slide_id": slide.id, "patient": slide.patient, "split": slide.split, "barcode": barcodes,
        "array_row": adata.obs["array_row"].to_numpy(dtype=np.int64),
        "array_col": adata.obs["array_col"].to_numpy(dtype=np.int64), "in_tissue": in_tissue,
    }, index=pd.Index([f"{slide.id}_{b}" for b in barcodes]))
    out = ad.AnnData(X=matrix, obs=obs, var=var)
    out.obsm["spatial"] = np.asarray(adata.obsm["spatial"], dtype=np.float64)[:, :2]
    spatial = adata.uns.get("spatial", {})
    if len(spatial) == 1:
        out.uns["spatial"] = {slide.id: dict(next(iter(spatial.values())))}
    elif slide.id in spatial:
        out.uns["spatial"] = {slide.id: dict(spatial[slide.id])}
    else:
        raise ReaderError(f"{source}: uns['spatial'] has entries {examples(spatial)}, none for slide {slide.id!r}")
    out = out[out.obs["in_tissue"] == 1].copy()
    out.uns["spared"] = {"reader": {"slide_id": slide.id, "format": "h5ad", "files": {"h5ad": source},
                                    "n_spots": int(out.n_obs), **report}}
    return out


def read_h5ad(path: str | Path, slides: Sequence[Any], organism: str) -> Any:
    """Read ``.h5ad`` data: one file per slide (``<dataset>/<path or id>[.h5ad]``) or one collection file.

    A collection file must hold ``obs['slide_id']`` naming the catalogue's slides. Counts come from
    ``layers['counts']`` when present, else ``X``; genes are re-indexed by Ensembl id.
    """
    import anndata as ad

    path = Path(path)
    infos = coerce_slides(slides)
    if path.is_file():
        collection = ad.read_h5ad(path)
        if "slide_id" not in collection.obs:
            raise ReaderError(f"{path}: a collection file needs obs['slide_id'] to tell its slides apart")
        present = set(collection.obs["slide_id"].astype(str))
        absent = [s.id for s in infos if s.id not in present]
        if absent:
            raise ReaderError(f"{path}: slides {absent} are not in obs['slide_id'] (found {examples(sorted(present))})")
        parts = []
        for s in infos:
            part = collection[collection.obs["slide_id"].astype(str) == s.id].copy()
            part.obs_names = part.obs_names.str.removeprefix(f"{s.id}_")
            if len(collection.uns.get("spatial", {})) > 1:
                part.uns["spatial"] = {s.id: collection.uns["spatial"][s.id]}
            parts.append(_slide_from_h5ad(part, s, organism, str(path)))
        return concat_slides(parts, organism)
    parts = []
    for s in infos:
        name = s.path or s.id
        candidates = [path / name, path / f"{name}.h5ad"]
        file = next((c for c in candidates if c.is_file()), None)
        if file is None:
            raise ReaderError(f"slide {s.id!r}: none of {[str(c) for c in candidates]} exists")
        parts.append(_slide_from_h5ad(ad.read_h5ad(file), s, organism, str(file)))
    return concat_slides(parts, organism)

"""HEST-1k samples (Jaume et al. 2024, github.com/mahmoodlab/HEST) in HEST's on-disk layout.

A HEST folder holds, per sample id::

    st/<id>.h5ad          counts (X), obs array_row/array_col/in_tissue/pxl_col_in_fullres/pxl_row_in_fullres,
                          obsm['spatial'] (full-resolution x, y), uns['spatial']['ST'] with a downscaled image
    metadata/<id>.json    pixel_size_um_estimated, spot_diameter, inter_spot_dist (µm), st_technology, species,
                          patient, ...
    wsis/<id>.tif         the H&E whole-slide image (pyramidal TIFF)
    patches/<id>.h5       HEST's own patches: datasets img (n, s, s, 3), coords (top-left), barcode

Only ``st/`` and ``metadata/`` are required. The spot diameter in full-resolution pixels is HEST's
``spot_diameter`` (µm) divided by its ``pixel_size_um_estimated`` (µm/px), so spared patches cover one spot
as for the other technologies; that pixel size must agree (within 25 %) with the spot spacing and the sample's
own ``spot_diameter_fullres``. Spots outside the image are dropped with a warning (more than 5 %: an error).
The spot geometry follows ``st_technology`` (Visium: hexagonal, 6 neighbours; legacy ST, Visium HD, Xenium
pseudo-spots: square grid, 8 neighbours).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
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
    drop_spots_off_image,
    examples,
    harmonise_genes,
)

#: HEST ``st_technology`` values and how spared names them and lays their spots out.
TECHNOLOGIES: dict[str, tuple[str, str]] = {
    "visium": ("Visium", "hex"),
    "spatial transcriptomics": ("ST", "square"),
    "visium hd": ("Visium HD", "square"),
    "xenium": ("Xenium", "square"),
}
SPECIES = {"homo sapiens": "human", "mus musculus": "mouse"}
_PIXEL_SIZE_KEYS = ("pixel_size_um_estimated", "pixel_size_um_embedded")
#: Centre-to-centre distance of neighbouring spots (µm) by technology, when the metadata gives no
#: ``inter_spot_dist``.
SPOT_SPACING_UM = {"Visium": 100.0, "ST": 200.0}
#: Largest relative disagreement between the metadata's pixel size and the one the spot spacing (or the sample's
#: own ``spot_diameter_fullres``) implies.
PIXEL_SIZE_TOLERANCE = 0.25
_GENE_ID_COLUMNS = ("gene_ids", "gene_id", "ensembl_id")


def sample_paths(folder: str | Path, sample: str) -> dict[str, Path]:
    """Where HEST keeps each file of ``sample`` under ``folder`` (whether or not they exist)."""
    folder = Path(folder)
    return {"st": folder / "st" / f"{sample}.h5ad", "metadata": folder / "metadata" / f"{sample}.json",
            "wsi": folder / "wsis" / f"{sample}.tif", "patches": folder / "patches" / f"{sample}.h5"}


def read_metadata(path: str | Path) -> dict[str, Any]:
    """A HEST sample's metadata JSON, checked for the fields spared needs (pixel size, spot diameter,
    technology)."""
    path = Path(path)
    if not path.is_file():
        raise ReaderError(f"HEST metadata {path} does not exist; download metadata/<id>.json with the sample")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ReaderError(f"HEST metadata {path} is not valid JSON ({exc}); download it again") from exc
    if not isinstance(meta, dict):
        raise ReaderError(f"HEST metadata {path}: expected a JSON object, found {type(meta).__name__}")
    return meta


def _positive(meta: Mapping[str, Any], key: str) -> float | None:
    value = meta.get(key)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def technology(meta: Mapping[str, Any], path: Path) -> tuple[str, str]:
    """``(technology, geometry)`` of a sample from its ``st_technology``."""
    raw = str(meta.get("st_technology") or "").strip()
    try:
        return TECHNOLOGIES[raw.lower()]
    except KeyError:
        raise ReaderError(f"HEST metadata {path}: st_technology {raw or None!r} is not one of "
                          f"{sorted(v[0] for v in TECHNOLOGIES.values())} (HEST's values: 'Visium', "
                          f"'Spatial Transcriptomics', 'Visium HD', 'Xenium')") from None


def sample_geometry(folder: str | Path, sample: str) -> str:
    """``"hex"`` or ``"square"``: the spot layout of a HEST sample, from its metadata alone."""
    path = sample_paths(folder, sample)["metadata"]
    return technology(read_metadata(path), path)[1]


def sample_organism(meta: Mapping[str, Any], path: Path) -> str | None:
    """``"human"``/``"mouse"`` from HEST's ``species`` (``None`` when absent)."""
    species = meta.get("species")
    if species is None or (isinstance(species, float) and math.isnan(species)):
        return None
    try:
        return SPECIES[str(species).strip().lower()]
    except KeyError:
        raise ReaderError(f"HEST metadata {path}: species {species!r} is not one of "
                          f"{sorted(SPECIES)}; spared annotates human and mouse genes only") from None


def _spot_diameter_px(meta: Mapping[str, Any], adata: Any, path: Path, st_path: Path, coords: np.ndarray,
                      tech: str) -> tuple[float, float]:
    """``(spot diameter in full-res pixels, pixel size in µm)`` from the metadata (h5ad scalefactors as fallback),
    cross-checked against the spot spacing and the sample's own ``spot_diameter_fullres`` (see
    :func:`check_pixel_size`)."""
    key, pixel_size = next(((k, v) for k in _PIXEL_SIZE_KEYS if (v := _positive(meta, k)) is not None),
                           (_PIXEL_SIZE_KEYS[0], None))
    diameter_um = _positive(meta, "spot_diameter")
    factors = next(iter(adata.uns.get("spatial", {}).values()), {}).get("scalefactors", {})
    recorded = _positive(factors, "spot_diameter_fullres")
    if pixel_size is not None and diameter_um is not None:
        check_pixel_size(pixel_size, key, diameter_um, recorded, coords, _positive(meta, "inter_spot_dist")
                         or SPOT_SPACING_UM.get(tech), path, st_path)
        return diameter_um / pixel_size, pixel_size
    if recorded is not None:
        return recorded, pixel_size if pixel_size is not None else float("nan")
    raise ReaderError(f"HEST metadata {path}: expected a positive 'spot_diameter' (µm) and "
                      f"'pixel_size_um_estimated' (µm/px), found spot_diameter={meta.get('spot_diameter')!r}, "
                      f"pixel_size_um_estimated={meta.get('pixel_size_um_estimated')!r}; and {st_path} has no "
                      f"uns['spatial'][...]['scalefactors']['spot_diameter_fullres'] either")


def spot_spacing_px(coords: np.ndarray) -> float | None:
    """The median distance from a spot to its nearest neighbour, in the coordinates' pixels (``None`` with fewer
    than 3 spots)."""
    from scipy.spatial import cKDTree

    if len(coords) < 3:
        return None
    distances, _ = cKDTree(coords).query(coords, k=2)
    nearest = distances[:, 1]
    nearest = nearest[nearest > 0]
    return float(np.median(nearest)) if nearest.size else None


def check_pixel_size(pixel_size: float, key: str, diameter_um: float, recorded_px: float | None,
                     coords: np.ndarray, spacing_um: float | None, path: Path, st_path: Path) -> None:
    """Refuse a pixel size that contradicts the sample's own geometry by more than :data:`PIXEL_SIZE_TOLERANCE`.

    Two checks, each when its data is there: neighbouring spots lie ``spacing_um`` apart (the metadata's
    ``inter_spot_dist``, else the technology's: 100 µm for Visium, 200 µm for ST), so their distance in pixels
    implies a pixel size; and the sample's h5ad may record ``spot_diameter_fullres``, which the metadata's spot
    diameter over the pixel size must reproduce.
    """
    diameter_px = diameter_um / pixel_size
    given = f"{key} = {pixel_size:g} µm/px (a {diameter_um:g} µm spot → {diameter_px:.1f} px)"
    spacing_px = spot_spacing_px(coords) if spacing_um else None
    if spacing_px:
        implied = spacing_um / spacing_px
        if abs(math.log(implied / pixel_size)) > math.log1p(PIXEL_SIZE_TOLERANCE):
            raise ReaderError(f"HEST metadata {path}: {given} contradicts the spot spacing: neighbouring spots of "
                              f"{st_path} lie {spacing_px:.1f} px apart, which for spots {spacing_um:g} µm apart "
                              f"means {implied:.4g} µm/px ({pixel_size / implied:.2f}× the metadata's). Correct "
                              f"{key} (or spot_diameter / inter_spot_dist) in the metadata")
    if recorded_px and abs(math.log(diameter_px / recorded_px)) > math.log1p(PIXEL_SIZE_TOLERANCE):
        raise ReaderError(f"HEST metadata {path}: {given} contradicts {st_path}, whose scalefactors record "
                          f"spot_diameter_fullres = {recorded_px:.1f} px ({diameter_px / recorded_px:.2f}×). Correct "
                          f"{key} or spot_diameter in the metadata")


def _coordinates(adata: Any, st_path: Path) -> np.ndarray:
    if "spatial" in adata.obsm:
        coords = np.asarray(adata.obsm["spatial"], dtype=np.float64)[:, :2]
    elif {"pxl_col_in_fullres", "pxl_row_in_fullres"} <= set(adata.obs):
        coords = adata.obs[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.float64)
    else:
        raise ReaderError(f"{st_path}: expected obsm['spatial'] or obs 'pxl_col_in_fullres'/'pxl_row_in_fullres' "
                          f"(full-resolution pixel coordinates); found obs columns {list(adata.obs.columns)}")
    if not np.isfinite(coords).all():
        raise ReaderError(f"{st_path}: spot pixel coordinates contain NaN or inf")
    return coords


def _array_positions(adata: Any, st_path: Path) -> tuple[np.ndarray, np.ndarray]:
    missing = [c for c in ("array_row", "array_col") if c not in adata.obs]
    if missing:
        raise ReaderError(f"{st_path}: obs lacks {missing}; HEST samples carry the spot-array position of every "
                          f"spot (found obs columns {list(adata.obs.columns)})")
    rows = pd.to_numeric(adata.obs["array_row"], errors="coerce").to_numpy()
    cols = pd.to_numeric(adata.obs["array_col"], errors="coerce").to_numpy()
    if not (np.isfinite(rows).all() and np.isfinite(cols).all()):
        raise ReaderError(f"{st_path}: obs array_row/array_col hold missing or non-numeric values")
    return np.rint(rows).astype(np.int64), np.rint(cols).astype(np.int64)


def read_hest_patches(path: str | Path, images: bool = True) -> dict[str, np.ndarray]:
    """HEST's patch file: ``img`` ``(n, s, s, 3)`` uint8 (left out when ``images`` is False), ``coords``
    ``(n, 2)`` top-left full-resolution pixels and ``barcode`` ``(n,)`` str."""
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("img", "coords", "barcode") if k not in f]
            if missing:
                raise ReaderError(f"HEST patches {path}: datasets {missing} are missing; expected img, coords and "
                                  f"barcode (found {sorted(f)})")
            barcodes = np.asarray(f["barcode"][:]).reshape(-1)
            out = {"coords": np.asarray(f["coords"][:]),
                   "barcode": np.char.decode(barcodes.astype(bytes), "utf-8") if barcodes.dtype.kind in "SO"
                   else barcodes.astype(str)}
            if images:
                out["img"] = f["img"][:]
            return out
    except OSError as exc:
        raise ReaderError(f"HEST patches {path} is not a readable HDF5 file ({exc}); download it again") from exc


def read_hest_sample(folder: str | Path, slide: SlideInfo, organism: str | None = None) -> Any:
    """One HEST sample as an AnnData following the spared raw data model (in-tissue spots only).

    Parameters
    ----------
    folder
        HEST folder (holding ``st/``, ``metadata/``, optionally ``wsis/`` and ``patches/``).
    slide
        Sample id (HEST's ``id``), patient and split.
    organism
        ``"human"``/``"mouse"``; must agree with the metadata's ``species`` when both are known.
    """
    import anndata as ad

    paths = sample_paths(folder, slide.id)
    if not paths["st"].is_file():
        raise ReaderError(f"HEST sample {slide.id!r}: {paths['st']} does not exist; download st/{slide.id}.h5ad "
                          f"(and metadata/{slide.id}.json, wsis/{slide.id}.tif) from HEST-1k")
    meta = read_metadata(paths["metadata"])
    tech, geometry = technology(meta, paths["metadata"])
    species = sample_organism(meta, paths["metadata"])
    if organism is not None and species is not None and species != organism:
        raise ReaderError(f"HEST sample {slide.id!r} is {meta.get('species')} ({paths['metadata']}) but organism "
                          f"{organism!r} was requested")
    organism = organism or species
    if organism is None:
        raise ReaderError(f"HEST sample {slide.id!r}: {paths['metadata']} has no 'species'; give the organism")
    try:
        source = ad.read_h5ad(paths["st"])
    except Exception as exc:  # h5py/anndata raise many types for a broken file
        raise ReaderError(f"{paths['st']} could not be read as h5ad ({type(exc).__name__}: {exc}); download it "
                          f"again") from exc
    coords = _coordinates(source, paths["st"])
    rows, cols = _array_positions(source, paths["st"])
    keep = (pd.to_numeric(source.obs["in_tissue"], errors="coerce").fillna(0).to_numpy() > 0
            if "in_tissue" in source.obs else np.ones(source.n_obs, dtype=bool))
    if not keep.any():
        raise ReaderError(f"{paths['st']}: no spot has in_tissue = 1")
    diameter, pixel_size = _spot_diameter_px(meta, source, paths["metadata"], paths["st"], coords[keep], tech)
    counts = source.layers["counts"] if "counts" in source.layers else source.X
    id_column = next((c for c in _GENE_ID_COLUMNS if c in source.var), None)
    ids = source.var[id_column].to_numpy(dtype=str) if id_column else None
    matrix, var, gene_report = harmonise_genes(sp.csr_matrix(counts, dtype=np.float32)[np.flatnonzero(keep)], ids,
                                               source.var_names.to_numpy(dtype=str), organism)
    if var.empty:
        raise ReaderError(f"{paths['st']}: none of the {gene_report['n_genes_read']} genes maps to a {organism} "
                          f"Ensembl id (e.g. {examples(gene_report['unmapped_examples'])}); check the organism")
    barcodes = source.obs_names.to_numpy(dtype=str)[keep]
    obs = pd.DataFrame({"slide_id": slide.id, "patient": slide.patient, "split": slide.split, "barcode": barcodes,
                        "array_row": rows[keep], "array_col": cols[keep], "in_tissue": 1},
                       index=pd.Index([f"{slide.id}_{b}" for b in barcodes]))
    adata = ad.AnnData(X=matrix, obs=obs, var=var)
    adata.obsm["spatial"] = coords[keep]
    entry = _spatial_entry(source, diameter, tech, paths)
    if paths["wsi"].is_file():
        entry["fullres_path"] = str(paths["wsi"].resolve())
    else:
        import warnings

        fallback = ("patches will be cut from HEST's downscaled image (low resolution)" if entry["images"]
                    else "patches cannot be cut")
        warnings.warn(f"HEST sample {slide.id!r}: {paths['wsi']} is absent; {fallback}. Download "
                      f"wsis/{slide.id}.tif for full-resolution patches", stacklevel=2)
    adata.uns["spatial"] = {slide.id: entry}
    files = {k: str(v) for k, v in paths.items() if v.is_file()}
    report: dict[str, Any] = {
        "slide_id": slide.id, "format": "hest", "technology": tech, "source": "HEST", "geometry": geometry,
        "files": files, "n_spots_in_counts": int(source.n_obs), "n_spots_outside_tissue": int((~keep).sum()),
        "n_spots": int(adata.n_obs), "microns_per_pixel": pixel_size, "spot_diameter_fullres": diameter,
        **gene_report,
    }
    if paths["patches"].is_file():
        with_patch = pd.Index(barcodes).isin(read_hest_patches(paths["patches"], images=False)["barcode"])
        report["n_spots_with_hest_patch"] = int(with_patch.sum())
    adata.uns["spared"] = {"reader": report}
    return drop_spots_off_image(adata, slide.id, "{n} of {total} spots lie", barcodes, prefer_fullres=True)


def _spatial_entry(source: Any, diameter: float, tech: str, paths: dict[str, Path]) -> dict[str, Any]:
    """``uns['spatial'][slide]``: HEST's downscaled image as ``hires`` (or a thumbnail of the WSI)."""
    hest = next(iter(source.uns.get("spatial", {}).values()), {})
    images = hest.get("images", {})
    factors = hest.get("scalefactors", {})
    entry: dict[str, Any] = {"images": {}, "scalefactors": {"spot_diameter_fullres": float(diameter)},
                             "metadata": {"source": str(paths["st"]), "technology": tech}}
    scale = _positive(factors, "tissue_downscaled_fullres_scalef") or _positive(factors, "tissue_hires_scalef")
    image = images.get("downscaled_fullres", images.get("hires"))
    if image is not None and scale is not None:
        from spared.io.readers.images import to_rgb_uint8

        entry["images"]["hires"] = to_rgb_uint8(np.asarray(image))
        entry["scalefactors"]["tissue_hires_scalef"] = float(scale)
    elif paths["wsi"].is_file():
        from spared.io.readers.bigimages import thumbnail

        entry["images"]["hires"], entry["scalefactors"]["tissue_hires_scalef"] = thumbnail(paths["wsi"])
    return entry


def default_splits(samples: Sequence[str], patients: Sequence[str]) -> list[str]:
    """``"val"`` for the samples of the last patient (of the last sample when all share one patient), ``"train"``
    for the others; a single sample is ``"train"``."""
    if len(samples) < 2:
        return ["train"] * len(samples)
    held = [p == patients[-1] for p in patients] if len(set(patients)) > 1 else \
        [i == len(samples) - 1 for i in range(len(samples))]
    return ["val" if h else "train" for h in held]


def read_hest(folder: str | Path, ids: Sequence[str] | str | None = None, organism: str | None = None,
              splits: Mapping[str, str] | None = None, patients: Mapping[str, str] | None = None) -> Any:
    """Read HEST-1k samples from a local HEST folder into one spared raw collection.

    Parameters
    ----------
    folder
        The folder HEST's download tools fill (``st/``, ``metadata/``, ``wsis/``, ``patches/``).
    ids
        Sample ids (e.g. ``["TENX95", "TENX99"]``); default: every ``st/*.h5ad``.
    organism
        ``"human"`` or ``"mouse"``; default: the metadata's ``species`` (all samples must agree).
    splits
        Split per sample id; default: the last patient's samples are ``val``, the others ``train``
        (``ProcessingConfig(split_scheme="lopo:<patient>")`` reassigns them at processing time).
    patients
        Patient per sample id; default: the metadata's ``patient``, else the sample id.

    Returns
    -------
    anndata.AnnData
        Raw counts (genes by Ensembl id), ``obsm['spatial']`` full-resolution pixels, per-slide
        ``uns['spatial']`` with ``spot_diameter_fullres`` from HEST's metadata and ``fullres_path`` = the WSI.

    Examples
    --------
    >>> adata = spared.io.read_hest("hest_data", ["TENX95", "TENX99"])          # doctest: +SKIP
    >>> spared.pp.process(adata, ProcessingConfig(hex_geometry=spared.io.readers.geometry(adata)
    ...                                           == "hex"))                    # doctest: +SKIP
    """
    folder = Path(folder)
    if not (folder / "st").is_dir():
        raise ReaderError(f"{folder} is not a HEST folder: expected {folder / 'st'} holding <id>.h5ad files (and "
                          f"metadata/<id>.json) as HEST-1k's download creates them")
    if ids is None:
        ids = sorted(p.name[: -len(".h5ad")] for p in (folder / "st").glob("*.h5ad"))
        if not ids:
            raise ReaderError(f"{folder / 'st'} holds no .h5ad sample")
    ids = [ids] if isinstance(ids, str) else list(ids)
    meta_paths = {i: sample_paths(folder, i)["metadata"] for i in ids}
    metas = {i: read_metadata(path) for i, path in meta_paths.items()}
    species = {i: sample_organism(metas[i], meta_paths[i]) for i in ids}
    known = {v for v in species.values() if v is not None}
    if organism is None:
        if len(known) != 1:
            raise ReaderError(f"cannot tell the organism from the samples' species ({species}); give "
                              f"organism='human' or 'mouse' and read one organism at a time")
        organism = known.pop()
    patient_of = [str((patients or {}).get(i) or _patient(metas[i]) or i) for i in ids]
    split_of = ([str(splits[i]) if i in splits else "train" for i in ids] if splits is not None
                else default_splits(ids, patient_of))
    slides = [SlideInfo(id=i, patient=p, split=s) for i, p, s in zip(ids, patient_of, split_of, strict=True)]
    return concat_slides([read_hest_sample(folder, s, organism) for s in slides], organism)


def _patient(meta: Mapping[str, Any]) -> str | None:
    value = meta.get("patient")
    if value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip():
        return None
    return str(value)


def read_hest_format(path: str | Path, slides: Sequence[Any], organism: str) -> Any:
    """The catalogue reader of format ``hest``: each slide id is a HEST sample id; its files lie under the
    slide's ``path`` (a HEST folder relative to the dataset folder; default: the dataset folder itself)."""
    dataset_dir = Path(path)
    infos = coerce_slides(slides)
    adatas = []
    for slide in infos:
        folder = dataset_dir / slide.path if slide.path else dataset_dir
        if not (folder / "st").is_dir():
            raise ReaderError(f"slide {slide.id!r}: {folder} is not a HEST folder (no st/ sub-folder); set the "
                              f"slide's path to the folder holding st/, metadata/ and wsis/")
        adatas.append(read_hest_sample(folder, slide, organism))
    return concat_slides(adatas, organism)

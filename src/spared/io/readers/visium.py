"""Visium slides: Space Ranger ``outs`` folders and the per-slide folders that public archives ship.

A slide needs a count matrix (``filtered_feature_bc_matrix.h5``, a ``matrix.mtx`` triplet, else the
``raw_feature_bc_matrix`` of which the in-tissue spots are kept, or, for GEO, a dense table), spot positions
(Space Ranger 1.x ``tissue_positions_list.csv`` without header, 2.x ``tissue_positions.csv`` with one, 3.x
``tissue_positions.parquet``), ``scalefactors_json.json`` and, for patches, an image (full resolution, else
``tissue_hires_image.png``, else ``tissue_lowres_image.png``). Files are found by the end of their name anywhere
under the slide folder (``.gz`` allowed; sample prefixes such as GEO's ``GSM…_`` ignored; hidden files and
``__MACOSX`` skipped), so flat folders, ``outs/`` trees and ``spatial/`` sub-folders all work. Multi-genome
references keep the organism's genome (see :func:`spared.io.readers.mtx.select_genome`).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from spared.io.readers.common import (
    ReaderError,
    SlideInfo,
    collection_slides,
    concat_slides,
    drop_spots_off_image,
    examples,
    harmonise_genes,
)
from spared.io.readers.images import IMAGE_SUFFIXES, read_image
from spared.io.readers.mtx import Counts, read_10x_h5, read_dense_table, read_mtx_triplet, select_genome
from spared.io.scan import choose, visible_files

POSITION_COLUMNS = ("barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres")
REQUIRED_SCALEFACTORS = ("spot_diameter_fullres", "tissue_hires_scalef")
_NOT_FULLRES = ("tissue_hires_image", "tissue_lowres_image", "aligned_fiducials", "detected_tissue_image",
                "cytassist", "aligned_tissue_image")
_NOT_TABLES = ("positions", "barcodes", "features", "genes.tsv", "metrics", "scalefactors", "metadata", "clusters")
#: Positions file names, preferred first (Space Ranger 3.x, 2.x, 1.x; the same table in three encodings).
POSITION_FILES = ("tissue_positions.parquet", "tissue_positions.csv", "tissue_positions_list.csv")
_NOT_COUNTS = ("molecule_info", "probe_bc_matrix", "patches")


def _key(path: Path) -> str:
    return path.name.lower().removesuffix(".gz")


def _positions_table(path: Path) -> pd.DataFrame:
    """The six position columns as read (text), whatever the encoding: parquet, CSV with or without header."""
    if _key(path).endswith(".parquet"):
        try:
            table = pd.read_parquet(path)
        except (ValueError, OSError, ImportError) as exc:
            raise ReaderError(f"{path} could not be read as a Parquet table of spot positions ({exc}); the file "
                              f"is damaged: download it again") from exc
        if "barcode" not in table.columns:
            table = table.reset_index().rename(columns={"index": "barcode"})
        header = True
    else:
        try:
            table = pd.read_csv(path, header=None, dtype=str, compression="infer")
        except (ValueError, OSError, EOFError, pd.errors.ParserError) as exc:
            raise ReaderError(f"{path} could not be parsed as a CSV of spot positions ({exc})") from exc
        header = bool({str(v).strip().lower() for v in table.iloc[0]} & set(POSITION_COLUMNS))
        if header:
            table.columns = [str(c).strip() for c in table.iloc[0]]
            table = table.iloc[1:]
    if header:
        missing = [c for c in POSITION_COLUMNS if c not in table.columns]
        if missing:
            raise ReaderError(f"{path}: the header lacks {missing}; expected the columns {', '.join(POSITION_COLUMNS)} "
                              f"(found {', '.join(map(str, table.columns))})")
        return table[list(POSITION_COLUMNS)].astype(str)
    if table.shape[1] != len(POSITION_COLUMNS):
        raise ReaderError(f"{path}: expected {len(POSITION_COLUMNS)} columns ({', '.join(POSITION_COLUMNS)}), "
                          f"found {table.shape[1]}")
    table.columns = list(POSITION_COLUMNS)
    return table


def read_positions(path: str | Path) -> pd.DataFrame:
    """Read spot positions: Space Ranger 1.x ``tissue_positions_list.csv`` (no header), 2.x
    ``tissue_positions.csv`` (header; also found under the 1.x name) or 3.x ``tissue_positions.parquet``.

    Returns
    -------
    pandas.DataFrame
        Indexed by barcode; integer ``in_tissue``, ``array_row``, ``array_col`` and float
        ``pxl_row_in_fullres``, ``pxl_col_in_fullres``.
    """
    path = Path(path)
    table = _positions_table(path).set_index("barcode")
    if table.empty:
        raise ReaderError(f"{path} lists no spot; the file is empty or damaged: download it again")
    values = table.apply(pd.to_numeric, errors="coerce")
    bad = values.isna().any(axis=1)
    if bad.any():
        rows = [f"{bc} ({', '.join(values.columns[values.loc[bc].isna()])})" for bc in values.index[bad][:5]]
        raise ReaderError(f"{path}: {int(bad.sum())} spot(s) have missing or non-numeric positions, e.g. "
                          f"{'; '.join(rows)}; the file is damaged: download it again")
    if values.index.has_duplicates:
        raise ReaderError(f"{path}: barcodes repeat ({examples(values.index[values.index.duplicated()].unique())})")
    ints = ["in_tissue", "array_row", "array_col"]
    values[ints] = values[ints].astype(np.int64)
    return values


def read_scalefactors(path: str | Path | None, where: Path) -> dict[str, float]:
    """Read ``scalefactors_json.json`` and check the factors spared needs."""
    if path is None:
        raise ReaderError(f"no scalefactors_json.json found under {where}; Space Ranger writes it to outs/spatial/ "
                          f"and patches need its spot_diameter_fullres: add the file (re-download the slide)")
    path = Path(path)
    try:
        with (gzip.open(path, "rt") if path.suffix == ".gz" else open(path)) as fh:
            factors = json.load(fh)
    except (OSError, ValueError, EOFError) as exc:
        raise ReaderError(f"{path} is not valid JSON ({exc}); download it again") from exc
    missing = [k for k in REQUIRED_SCALEFACTORS if k not in factors]
    if missing:
        raise ReaderError(f"{path} lacks {missing}; found keys {sorted(factors)}")
    bad = {k: v for k, v in factors.items() if k in REQUIRED_SCALEFACTORS
           and not (isinstance(v, int | float) and np.isfinite(v) and v > 0)}
    if bad:
        raise ReaderError(f"{path}: scale factors must be positive numbers, found {bad}")
    return {k: float(v) for k, v in factors.items() if isinstance(v, int | float)}


@dataclass
class SlideFiles:
    """Where each file of one slide lies (``None`` when absent)."""

    root: Path
    counts: Path | dict[str, Path] | None = None
    positions: Path | None = None
    scalefactors: Path | None = None
    hires: Path | None = None
    lowres: Path | None = None
    fullres: Path | None = None
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, str]:
        """Paths as strings, for provenance."""
        counts = self.counts["matrix"] if isinstance(self.counts, dict) else self.counts
        items = {"counts": counts, "positions": self.positions, "scalefactors": self.scalefactors,
                 "hires": self.hires, "lowres": self.lowres, "fullres": self.fullres}
        return {k: str(v) for k, v in items.items() if v is not None}


def _single(candidates: list[Path], role: str, root: Path, prefer: tuple[str, ...] = ()) -> Path | None:
    for word in prefer:
        preferred = [p for p in candidates if word in str(p).lower()]
        if preferred:
            candidates = preferred
    if len(candidates) > 1:
        raise ReaderError(f"{root}: several candidate {role} files ({examples(candidates)}); keep one (move the "
                          f"others out of the slide folder), or give the slide a more specific 'prefix'/'path' in "
                          f"the catalogue")
    return candidates[0] if candidates else None


def _matrix_rank(path: Path, root: Path) -> int:
    """0 for a filtered matrix (or one named neither filtered nor raw), 1 for a raw one (every barcode); judged
    on the path below the slide folder."""
    text = path.relative_to(root).as_posix().lower()
    return 1 if "raw" in text and "filtered" not in text else 0


def _triplets(files: list[Path]) -> list[dict[str, Path]]:
    by_dir: dict[Path, dict[str, Path]] = {}
    for p in files:
        k = _key(p)
        role = ("matrix" if k.endswith("matrix.mtx") else "barcodes" if k.endswith("barcodes.tsv")
                else "features" if k.endswith(("features.tsv", "genes.tsv")) else None)
        if role:
            by_dir.setdefault(p.parent, {}).setdefault(role, p)
    return [g for g in by_dir.values() if "matrix" in g]


def _find_counts(files: list[Path], root: Path) -> Path | dict[str, Path] | None:
    """The count matrix: filtered before raw, a 10x ``.h5`` before a triplet of the same kind; two candidates of
    the best kind are an error naming both."""
    keys = {p: _key(p) for p in files}
    h5 = [p for p, k in keys.items() if k.endswith(".h5") and not any(w in k for w in _NOT_COUNTS)]
    triplets = _triplets(files)
    for rank in (0, 1):
        best_h5 = [p for p in h5 if _matrix_rank(p, root) == rank]
        if best_h5:
            return _single(best_h5, "count-matrix .h5", root)
        best_mtx = [g for g in triplets if _matrix_rank(g["matrix"], root) == rank]
        if len(best_mtx) > 1:
            raise ReaderError(f"{root}: several candidate matrix.mtx folders ({examples(g['matrix'] for g in best_mtx)}"
                              f"); keep one (move the others out of the slide folder), or give the slide a more "
                              f"specific 'prefix'/'path' in the catalogue")
        if best_mtx:
            return best_mtx[0]
    return None


def _find_positions(keys: dict[Path, str], root: Path) -> Path | None:
    for name in POSITION_FILES:
        found = _single([p for p, k in keys.items() if k.endswith(name)], "spot-position", root)
        if found is not None:
            return found
    return None


def discover_slide_files(root: Path, prefix: str | None = None, image: Path | None = None,
                         search_images_in: Path | None = None, image_hint: str | None = None,
                         allow_tables: bool = False, hires: Path | None = None) -> SlideFiles:
    """Find a slide's files under ``root`` (recursively), optionally only those whose path contains ``prefix``.

    Parameters
    ----------
    root
        Slide folder (or a flat folder of prefixed files).
    prefix
        Keep only files whose path relative to ``root`` contains this text.
    image, hires
        Explicit full-resolution / hires image (a file, or a folder holding exactly one such image). A missing
        full-resolution image is noted (patches then come from hires), not an error.
    search_images_in, image_hint
        Where to look for a full-resolution image whose name contains ``image_hint`` when ``root`` has none.
    allow_tables
        Accept a dense text table of counts when there is no HDF5 or Matrix Market file.
    """
    if not root.is_dir():
        raise ReaderError(f"slide folder {root} does not exist")
    files = visible_files(root)
    if prefix:
        files = [p for p in files if prefix.lower() in str(p.relative_to(root)).lower()]
    found = SlideFiles(root)
    keys = {p: _key(p) for p in files}
    found.positions = _find_positions(keys, root)
    found.scalefactors = _single([p for p, k in keys.items() if k.endswith("scalefactors_json.json")],
                                 "scalefactors", root)
    found.hires = (_explicit_image(hires, "hires") if hires is not None else
                   _single([p for p, k in keys.items() if k.endswith("tissue_hires_image.png")], "hires", root))
    found.lowres = _single([p for p, k in keys.items() if k.endswith("tissue_lowres_image.png")], "lowres", root)
    found.counts = _find_counts(files, root)
    if found.counts is not None and _matrix_rank(found.counts["matrix"] if isinstance(found.counts, dict)
                                                 else found.counts, root):
        found.notes.append("no filtered matrix: read the raw matrix (every barcode) and kept the in-tissue spots")
    if found.counts is None and allow_tables:
        tables = [p for p, k in keys.items() if k.endswith((".tsv", ".csv", ".txt"))
                  and not any(word in k for word in _NOT_TABLES)]
        found.counts = _single(tables, "count-table", root, prefer=("count",))
    if image is not None and (image.is_file() or image.is_dir()):
        found.fullres = _explicit_image(image, "full-resolution")
    else:
        if image is not None:
            found.notes.append(f"the full-resolution image {image} does not exist")
        found.fullres = _find_fullres(files, root, image_hint, found.notes)
        if found.fullres is None and search_images_in is not None and image_hint:
            others = [p for p in visible_files(search_images_in)
                      if image_hint.lower() in p.name.lower() and root not in p.parents]
            found.fullres = _find_fullres(others, search_images_in, image_hint, found.notes)
    return found


def _explicit_image(path: Path, role: str) -> Path:
    """A catalogue-named image: the file itself, or the single image file (``hires`` preferred) in a folder."""
    if path.is_file():
        return path
    if path.is_dir():
        images = [p for p in visible_files(path) if _key(p).endswith(IMAGE_SUFFIXES)]
        found = _single(images, f"{role} image", path, prefer=("hires",) if role == "hires" else ())
        if found is not None:
            return found
    raise ReaderError(f"the catalogue names {role} image {path}, which does not exist (or holds no image)")


def _find_fullres(files: list[Path], root: Path, hint: str | None, notes: list[str]) -> Path | None:
    images = [p for p in files if _key(p).endswith(IMAGE_SUFFIXES)
              and not any(word in _key(p) for word in _NOT_FULLRES) and "spatial" not in p.parent.name.lower()]
    if len(images) > 1 and hint:
        images = [p for p in images if hint.lower() in p.name.lower()] or images
    if len(images) > 1:
        tiffs = [p for p in images if _key(p).endswith((".tif", ".tiff"))]
        images = tiffs if len(tiffs) == 1 else images
    if not images:
        return None
    chosen, note = choose(images, stems=(hint,) if hint else (), what=f"full-resolution image under {root}")
    if note:
        notes.append(note)
    return chosen


def _read_counts(files: SlideFiles, positions: pd.DataFrame) -> Counts:
    counts = files.counts
    if counts is None:
        raise ReaderError(f"no count matrix under {files.root}: expected filtered_feature_bc_matrix.h5 or a "
                          f"matrix.mtx / barcodes.tsv / features.tsv triplet (optionally .gz)")
    if isinstance(counts, dict):
        return read_mtx_triplet(counts)
    if _key(counts).endswith(".h5"):
        return read_10x_h5(_gunzipped(counts))
    return read_dense_table(counts, positions.index)


def _gunzipped(path: Path) -> Path:
    """A decompressed copy beside a ``.gz`` file (written atomically once); other paths pass through."""
    if path.suffix != ".gz":
        return path
    import shutil

    from spared.io.atomic import DiskFullError, atomic_path

    target = path.with_suffix("")
    if not target.is_file():
        try:
            with atomic_path(target) as tmp, gzip.open(path, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 22)
        except DiskFullError:
            raise  # the file is fine: the disk is full
        except (OSError, EOFError) as exc:
            raise ReaderError(f"{path} could not be decompressed ({exc}); download it again") from exc
    return target


def read_slide(files: SlideFiles, slide: SlideInfo, organism: str, fmt: str = "visium_spaceranger") -> Any:
    """Build one slide's AnnData (in-tissue spots that have counts) following the spared data model."""
    import anndata as ad

    if files.positions is None:
        raise ReaderError(f"no tissue_positions_list.csv / tissue_positions.csv / tissue_positions.parquet found "
                          f"under {files.root}; Space Ranger writes it to outs/spatial/: add it (re-download)")
    positions = read_positions(files.positions)
    scalefactors = read_scalefactors(files.scalefactors, files.root)
    counts = _read_counts(files, positions)
    counts, genome_report = select_genome(counts, organism)
    absent = ~pd.Index(counts.barcodes).isin(positions.index)
    if absent.any():
        raise ReaderError(f"{int(absent.sum())} of {absent.size} barcodes in {counts.source} are absent from "
                          f"{files.positions}: {examples(counts.barcodes[absent])}; the counts and positions come "
                          f"from different slides or runs: put the matching tissue_positions file beside the "
                          f"matrix (both from the same Space Ranger run)")
    pos = positions.loc[counts.barcodes]
    keep = (pos["in_tissue"] == 1).to_numpy()
    if not keep.any():
        raise ReaderError(f"slide {slide.id!r}: none of the {keep.size} spots of {counts.source} is in the tissue "
                          f"according to {files.positions} (in_tissue = 0 everywhere); check the positions file")
    matrix, var, gene_report = harmonise_genes(counts.matrix[keep], counts.gene_ids, counts.gene_symbols, organism)
    if var.empty:
        raise ReaderError(f"{counts.source}: none of the {gene_report['n_genes_read']} genes maps to a {organism} "
                          f"Ensembl id (e.g. {examples(gene_report['unmapped_examples'])}); check the organism")
    pos = pos[keep]
    barcodes = pos.index.to_numpy(dtype=str)
    obs = pd.DataFrame({
        "slide_id": slide.id, "patient": slide.patient, "split": slide.split, "barcode": barcodes,
        "array_row": pos["array_row"].to_numpy(), "array_col": pos["array_col"].to_numpy(),
        "in_tissue": pos["in_tissue"].to_numpy(),
    }, index=pd.Index([f"{slide.id}_{b}" for b in barcodes]))
    adata = ad.AnnData(X=sp.csr_matrix(matrix, dtype=np.float32), obs=obs, var=var)
    adata.obsm["spatial"] = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.float64)
    adata.uns["spatial"] = {slide.id: _spatial_entry(files, scalefactors)}
    adata.uns["spared"] = {"reader": {
        "slide_id": slide.id, "format": fmt, "files": files.describe(),
        "n_spots_in_counts": int(counts.matrix.shape[0]), "n_spots_outside_tissue": int((~keep).sum()),
        "n_spots": int(adata.n_obs), **genome_report, **gene_report,
    }}
    if files.notes:
        adata.uns["spared"]["reader"]["warnings"] = [f"slide {slide.id!r}: {n}" for n in files.notes]
    return drop_spots_off_image(adata, slide.id, f"{{n}} of {{total}} in-tissue spots of {files.positions} lie",
                                barcodes)


def _spatial_entry(files: SlideFiles, scalefactors: dict[str, float]) -> dict[str, Any]:
    images: dict[str, np.ndarray] = {}
    if files.hires is not None:
        images["hires"] = read_image(_gunzipped(files.hires))
    if files.lowres is not None:
        images["lowres"] = read_image(_gunzipped(files.lowres))
    elif "hires" in images and "tissue_lowres_scalef" in scalefactors:
        from PIL import Image

        ratio = scalefactors["tissue_lowres_scalef"] / scalefactors["tissue_hires_scalef"]
        h, w = images["hires"].shape[:2]
        size = (max(1, round(w * ratio)), max(1, round(h * ratio)))
        images["lowres"] = np.asarray(Image.fromarray(images["hires"]).resize(size, Image.Resampling.BILINEAR))
    entry: dict[str, Any] = {"images": images, "scalefactors": scalefactors,
                             "metadata": {"source": str(files.root)}}
    if files.fullres is not None:
        entry["fullres_path"] = str(_gunzipped(files.fullres).resolve())
    return entry


def slide_location(dataset_dir: Path, slide: SlideInfo, n_slides: int) -> tuple[Path, str | None]:
    """The folder holding a slide and the prefix that selects its files there.

    ``dataset_dir/<path or id>`` when that folder exists; the dataset folder itself when it is the only slide;
    else the dataset folder with the slide's prefix (its files are named after it).
    """
    if slide.path:
        if not (dataset_dir / slide.path).is_dir():
            raise ReaderError(f"slide {slide.id!r}: folder {dataset_dir / slide.path} does not exist")
        return dataset_dir / slide.path, slide.prefix
    if (dataset_dir / slide.id).is_dir():
        return dataset_dir / slide.id, slide.prefix
    if n_slides == 1 and slide.prefix is None:
        return dataset_dir, None
    return dataset_dir, slide.prefix or slide.id


def read_visium_collection(path: str | Path, slides: Sequence[Any], organism: str, fmt: str,
                           allow_tables: bool = False, force_prefix: bool = False) -> Any:
    """Read every slide of a collection and concatenate them (genes = intersection)."""
    dataset_dir, infos = collection_slides(path, slides)
    adatas = []
    for slide in infos:
        root, prefix = slide_location(dataset_dir, slide, len(infos))
        if force_prefix and prefix is None and root == dataset_dir:
            prefix = slide.prefix or slide.id
        image = dataset_dir / slide.image if slide.image else None
        hires = dataset_dir / slide.hires_image if slide.hires_image else None
        files = discover_slide_files(root, prefix=prefix, image=image, search_images_in=dataset_dir,
                                     image_hint=slide.id, allow_tables=allow_tables, hires=hires)
        adatas.append(read_slide(files, slide, organism, fmt))
    return concat_slides(adatas, organism)


def read_visium(path: str | Path, slides: Sequence[Any], organism: str) -> Any:
    """Read Space Ranger outputs (``filtered_feature_bc_matrix.h5`` or an ``.mtx`` triplet plus ``spatial/``).

    Parameters
    ----------
    path
        Dataset folder: one sub-folder per slide (named by the slide's ``path`` or id), or the ``outs`` folder
        itself for a single slide, or a flat folder whose file names contain the slide ids.
    slides
        Slide descriptions (id, patient, split, optional path/image/prefix).
    organism
        ``"human"`` or ``"mouse"`` (symbols-only sources are mapped to Ensembl ids).
    """
    return read_visium_collection(path, slides, organism, "visium_spaceranger")


def read_visium_mtx_folders(path: str | Path, slides: Sequence[Any], organism: str) -> Any:
    """Read per-slide folders with a ``matrix.mtx``/``barcodes.tsv``/``features.tsv`` triplet and spatial files.

    Same folder conventions as :func:`read_visium`; the full-resolution image may lie in the slide folder or
    anywhere in the dataset folder with the slide id in its name (e.g. ``images/<slide>.jpg``).
    """
    return read_visium_collection(path, slides, organism, "visium_mtx_folders")

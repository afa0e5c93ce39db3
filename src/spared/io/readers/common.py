"""Pieces every reader shares: slide descriptions, errors, gene-id harmonisation and concatenation."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

ENSEMBL_ID = re.compile(r"^ENS[A-Z]*G\d{6,}")
_MAX_EXAMPLES = 5
#: Largest fraction of a slide's spots that may lie outside its image (dropped with a warning); more is an error.
MAX_OUTSIDE_IMAGE = 0.05


class ReaderError(ValueError):
    """Raised when raw files are missing, malformed or inconsistent; the message says what to do."""


def examples(values: Iterable[Any], limit: int = _MAX_EXAMPLES) -> str:
    """A short, readable list of the first few ``values`` (``'a', 'b', ... (12 in all)``)."""
    values = list(values)
    shown = ", ".join(repr(str(v)) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


@dataclass(frozen=True)
class SlideInfo:
    """One slide of a collection as the readers need it.

    Parameters
    ----------
    id
        Slide (library) id; obs names become ``f"{id}_{barcode}"``.
    patient
        Patient / donor (defaults to the slide id).
    split
        ``"train"``, ``"val"`` or ``"test"``.
    path
        Folder (or file) of the slide relative to the dataset folder; defaults to the slide id.
    image
        Full-resolution image relative to the dataset folder, when it does not sit in the slide folder.
    hires_image
        ``tissue_hires_image.png`` (or a folder holding it) relative to the dataset folder, when elsewhere.
    prefix
        Text that every file of the slide contains (GEO supplementary files); defaults to the slide id.
    counts, spots
        Legacy ST: the count table and the spot file relative to the dataset folder.
    """

    id: str
    patient: str
    split: str = "train"
    path: str | None = None
    image: str | None = None
    hires_image: str | None = None
    prefix: str | None = None
    counts: str | None = None
    spots: str | None = None

    @classmethod
    def coerce(cls, slide: Any) -> SlideInfo:
        """Build from a catalogue slide object, a mapping or a bare slide id."""
        if isinstance(slide, SlideInfo):
            return slide
        if isinstance(slide, str):
            return cls(id=slide, patient=slide)
        get = slide.get if isinstance(slide, Mapping) else lambda name, default=None: getattr(slide, name, default)
        slide_id = get("id") or get("slide_id")
        if not slide_id:
            raise ReaderError(f"a slide description needs an 'id'; found {slide!r}")
        fields = {name: get(name) for name in ("path", "image", "hires_image", "prefix", "counts", "spots")}
        return cls(id=str(slide_id), patient=str(get("patient") or slide_id), split=str(get("split") or "train"),
                   **{k: (str(v) if v is not None else None) for k, v in fields.items()})


def spots_on_image(coords: np.ndarray, size: tuple[float, float] | None, image: str, slide: str, located: str,
                   names: Sequence[str] | None = None, margin: float = 0.0) -> tuple[np.ndarray, str | None]:
    """Which spots lie on their image, and a warning when some do not (they are to be dropped).

    Parameters
    ----------
    coords
        ``(n, 2)`` full-resolution pixel coordinates ``(x, y)`` of the spot centres.
    size
        ``(width, height)`` of the full-resolution image in those pixels; ``None`` when no image is known (then
        only negative coordinates are outside).
    image, slide
        The image and the slide, for messages.
    located
        How the spots are placed, for messages, with ``{n}`` and ``{total}`` (e.g. ``"{n} of {total} spots lie"``).
    names
        Spot names (barcodes), for the example in the warning.
    margin
        Pixels of tolerance beyond each edge (an extent derived from a downscaled image is known to a few pixels).

    Returns
    -------
    The keep mask and ``None``, or the mask and a warning naming the count and an example. More than
    :data:`MAX_OUTSIDE_IMAGE` of the spots outside is a :class:`ReaderError` (wrong image, or wrong coordinates).
    """
    coords = np.asarray(coords, dtype=np.float64)
    width, height = size if size is not None else (np.inf, np.inf)
    outside = ((coords[:, 0] < -margin) | (coords[:, 1] < -margin) | (coords[:, 0] > width + margin)
               | (coords[:, 1] > height + margin))
    n, total = int(outside.sum()), int(outside.size)
    if n == 0:
        return ~outside, None
    spans = (f"pixel coordinates up to x={coords[:, 0].max():.0f}, y={coords[:, 1].max():.0f}, down to "
             f"x={coords[:, 0].min():.0f}, y={coords[:, 1].min():.0f}")
    extent = f"{width:.0f}×{height:.0f} px" if size is not None else "an image starting at pixel (0, 0)"
    if n > MAX_OUTSIDE_IMAGE * total:
        placed = located.format(n=n, total=total)
        raise ReaderError(f"slide {slide!r}: image {image} is {extent}, but {placed} outside it ({spans}; "
                          f"expected an image at least that large): the image is smaller than the spot coordinates "
                          f"imply, or the coordinates are wrong. Use the full-resolution image the spot positions "
                          f"were aligned to, and check the positions file")
    first = int(np.flatnonzero(outside)[0])
    name = names[first] if names is not None else f"#{first}"
    placed = located.format(n=n, total=total)
    return ~outside, (f"slide {slide!r}: {placed} outside {image} ({extent}; e.g. {name} at x="
                      f"{coords[first, 0]:.0f}, y={coords[first, 1]:.0f}): dropped, since no patch can be cut for "
                      f"them; check the positions file if this is unexpected")


def image_extent(entry: Mapping[str, Any], prefer_fullres: bool = False
                 ) -> tuple[str | None, tuple[float, float] | None, float]:
    """The image a slide's full-resolution coordinates refer to (``uns['spatial'][slide]``), its ``(width,
    height)`` in those pixels and the tolerance of that extent.

    The hires (else lowres) image scaled up by its factor (known to one of its pixels), else the full-resolution
    image's own size (first, with ``prefer_fullres``: a HEST WSI is the coordinates' own frame, whereas a Visium
    full-resolution image may be a rescaled copy, see :mod:`spared.io.patches`); ``(None, None, 0)`` without an
    image.
    """
    if prefer_fullres and entry.get("fullres_path"):
        from spared.io.readers.bigimages import image_size

        return entry["fullres_path"], image_size(entry["fullres_path"]), 0.0
    factors = entry.get("scalefactors", {})
    for kind in ("hires", "lowres"):
        image = entry.get("images", {}).get(kind)
        scale = factors.get(f"tissue_{kind}_scalef")
        if image is not None and scale:
            height, width = np.asarray(image).shape[:2]
            return f"the {kind} image scaled by 1/{scale:g}", (width / scale, height / scale), 1.0 / scale
    if entry.get("fullres_path"):
        from spared.io.readers.bigimages import image_size

        return entry["fullres_path"], image_size(entry["fullres_path"]), 0.0
    return None, None, 0.0


def drop_off_image(adata: Any, keep: np.ndarray, warning: str | None, stacklevel: int = 3) -> Any:
    """``adata`` without the spots ``keep`` leaves out; the count goes to the reader report
    (``n_spots_outside_image``, ``spots_dropped``) and the warning is issued (:func:`concat_slides` records it in
    ``uns["spared"]["warnings"]``)."""
    import warnings

    report = adata.uns["spared"]["reader"]
    report["n_spots_outside_image"] = int((~keep).sum())
    if warning is None:
        return adata
    warnings.warn(warning, UserWarning, stacklevel=stacklevel)
    out = adata[keep].copy()
    report = out.uns["spared"]["reader"]
    report["n_spots"] = int(out.n_obs)
    report["spots_dropped"] = [warning]
    report["warnings"] = [*report.get("warnings", []), warning]
    return out


def drop_spots_off_image(adata: Any, slide: str, located: str, names: Sequence[str] | None,
                         prefer_fullres: bool = False) -> Any:
    """A slide read by a reader (``adata`` with ``obsm["spatial"]``, ``uns["spatial"][slide]`` and the reader
    report) without its spots off the image (:func:`image_extent`, :func:`spots_on_image` with ``located`` and
    ``names``, :func:`drop_off_image`); the warning is attributed to the reader's caller."""
    image, size, margin = image_extent(adata.uns["spatial"][slide], prefer_fullres=prefer_fullres)
    keep, warning = spots_on_image(adata.obsm["spatial"], size, image or "any image", slide, located, names, margin)
    return drop_off_image(adata, keep, warning, stacklevel=4)


def collection_slides(path: str | Path, slides: Sequence[Any] | Any) -> tuple[Path, list[SlideInfo]]:
    """A collection's folder (which must exist) and its normalised slide list."""
    dataset_dir = Path(path)
    if not dataset_dir.exists():
        raise ReaderError(f"dataset folder {dataset_dir} does not exist; download the dataset first")
    return dataset_dir, coerce_slides(slides)


def coerce_slides(slides: Sequence[Any] | Any) -> list[SlideInfo]:
    """Normalise a catalogue's slide list; slide ids must be unique."""
    if isinstance(slides, str | Mapping | SlideInfo):
        slides = [slides]
    infos = [SlideInfo.coerce(s) for s in slides]
    if not infos:
        raise ReaderError("no slides were given; list at least one slide (id, patient, split)")
    ids = pd.Index([s.id for s in infos])
    if ids.has_duplicates:
        raise ReaderError(f"slide ids must be unique; repeated: {examples(ids[ids.duplicated()].unique())}")
    return infos


#: ``var`` columns that hold Ensembl ids in AnnData files (scanpy's ``read_visium`` writes ``gene_ids``).
GENE_ID_COLUMNS = ("gene_ids", "gene_id", "ensembl_id", "ensembl")


def gene_labels(var: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene ``(ids, symbols)`` of an AnnData's ``var``.

    Ids come from the first of :data:`GENE_ID_COLUMNS` present, else the index; symbols from
    ``var["gene_symbol"]``, else the index.
    """
    id_column = next((c for c in GENE_ID_COLUMNS if c in var), None)
    ids = var[id_column].to_numpy(dtype=str) if id_column else var.index.to_numpy(dtype=str)
    symbols = var["gene_symbol"].to_numpy(dtype=str) if "gene_symbol" in var else var.index.to_numpy(dtype=str)
    return ids, symbols


#: Smallest fraction of a slide's genes that must map to Ensembl ids of the organism (see :func:`min_mapped_fraction`).
_MIN_MAPPED_FRACTION: ContextVar[float] = ContextVar("spared_min_mapped_fraction", default=0.5)


@contextmanager
def min_mapped_fraction(fraction: float) -> Iterator[None]:
    """Within the block, readers accept slides of which at least ``fraction`` of the genes map (default 0.5).

    ``spared.io.readers.read(..., min_mapped_fraction=f)`` uses it; ``0`` accepts any loss (still warned).
    """
    if not 0 <= fraction <= 1:
        raise ValueError(f"min_mapped_fraction must lie in [0, 1], got {fraction!r}")
    token = _MIN_MAPPED_FRACTION.set(float(fraction))
    try:
        yield
    finally:
        _MIN_MAPPED_FRACTION.reset(token)


def harmonise_genes(counts: sp.csr_matrix, ids: np.ndarray | None, symbols: np.ndarray | None,
                    organism: str, source: str | None = None) -> tuple[sp.csr_matrix, pd.DataFrame, dict[str, Any]]:
    """Index genes by unversioned Ensembl id, mapping symbols where a source has no Ensembl id.

    Genes whose id is not an Ensembl id are looked up by symbol (:func:`spared.annotation.resolve_gene_ids`;
    a symbol several genes carry maps to one of them by the rule of
    :func:`spared.annotation.symbols_to_ensembl`); unknown symbols are dropped. Columns that end up with the
    same Ensembl id (versions, PAR copies, synonyms) are summed. Unmapped, ambiguous or unknown genes are
    reported in the returned report and by a :class:`spared.annotation.GeneMappingWarning`; when fewer than
    the minimum fraction of genes map (0.5, see :func:`min_mapped_fraction`), a :class:`ReaderError` names
    the organism and examples.

    Parameters
    ----------
    counts
        ``(n_spots, n_genes)`` counts.
    ids, symbols
        Per-gene ids and symbols from the source (either may be ``None``).
    organism
        ``"human"`` or ``"mouse"``.
    source
        The file or slide, for messages.

    Returns
    -------
    The counts with one column per Ensembl id, ``var`` (index Ensembl id, column ``gene_symbol``, taken from
    GENCODE when the source gives only ids) and the report of
    :func:`spared.annotation.resolve_gene_ids` plus ``n_genes_merged``.
    """
    from spared.annotation import GeneMappingError, check_gene_mapping, resolve_gene_ids

    n = counts.shape[1]
    if ids is None and symbols is None:
        raise ReaderError(f"{source or 'the count matrix'} has no gene ids and no gene symbols")
    ids = np.asarray(ids if ids is not None else symbols, dtype=object).astype(str)
    symbols = np.asarray(symbols if symbols is not None else ids, dtype=object).astype(str)
    if ids.shape != (n,) or symbols.shape != (n,):
        raise ReaderError(f"{source or 'the count matrix'} has {n} genes but {ids.size} gene ids / "
                          f"{symbols.size} symbols")
    final, report = resolve_gene_ids(ids, symbols, organism)
    try:
        check_gene_mapping(report, organism, _MIN_MAPPED_FRACTION.get(), source or "the count matrix",
                           accept="read(..., min_mapped_fraction=0) or `with min_mapped_fraction(0):`")
    except GeneMappingError as err:
        raise ReaderError(str(err)) from None
    unique_ids, first, merge = merge_by_id(final)
    out = sp.csr_matrix(counts @ merge, dtype=np.float32)
    var = pd.DataFrame({"gene_symbol": symbols_or_gencode(unique_ids, symbols[first], organism)},
                       index=pd.Index(unique_ids, name="gene_id"))
    report["n_genes_merged"] = int(pd.notna(final).sum() - unique_ids.size)
    return out, var, report


def merge_by_id(final: np.ndarray) -> tuple[pd.Index, np.ndarray, sp.csr_matrix]:
    """How to turn per-gene ids (``None``: drop the gene) into one column per id.

    Returns the distinct ids in order of first appearance, the position of each one's first gene, and the
    ``(n_genes, n_ids)`` 0/1 matrix whose product with a matrix of genes as columns sums the columns of an id.
    """
    mapped = pd.notna(final)
    columns = np.flatnonzero(mapped)
    codes, unique_ids = pd.factorize(final[mapped])
    first = pd.Series(columns).groupby(codes).first().to_numpy()
    merge = sp.csr_matrix((np.ones(codes.size, dtype=np.float32), (columns, codes)),
                          shape=(final.size, unique_ids.size))
    return pd.Index(unique_ids.astype(str)), first, merge


def symbols_or_gencode(ids: pd.Index, symbols: np.ndarray, organism: str) -> np.ndarray:
    """The given symbols, except where a source gave an Ensembl id as symbol: GENCODE's symbol for it, if any."""
    from spared.annotation import gene_table

    given = pd.Series(np.asarray(symbols, dtype=object).astype(str), index=ids)
    known = gene_table(organism)["gene_symbol"].reindex(ids)
    return given.where(~given.str.match(ENSEMBL_ID.pattern), known).fillna(given).to_numpy(dtype=object)


def concat_slides(adatas: list, organism: str) -> Any:
    """Concatenate per-slide AnnData objects, keeping the genes every slide measured.

    ``uns["spatial"]`` is merged per slide and ``uns["spared"]["reader"]`` records per-slide reports and how
    many genes the intersection dropped.
    """
    import anndata as ad

    common = adatas[0].var_names
    for a in adatas[1:]:
        common = common.intersection(a.var_names, sort=False)
    if common.empty:
        raise ReaderError("the slides share no gene; check that they come from the same organism and reference")
    union = adatas[0].var_names
    for a in adatas[1:]:
        union = union.union(a.var_names, sort=False)
    parts = [a[:, common] for a in adatas]
    out = parts[0].copy() if len(parts) == 1 else ad.concat(parts, join="inner", merge="first")
    out.X = sp.csr_matrix(out.X, dtype=np.float32)
    for column in ("slide_id", "patient", "split"):
        out.obs[column] = pd.Categorical(out.obs[column].astype(str))
    reports = {a.uns["spared"]["reader"]["slide_id"]: a.uns["spared"]["reader"] for a in adatas}
    out.uns["spatial"] = {sid: a.uns["spatial"][sid] for a in adatas for sid in a.uns["spatial"]}
    out.uns["spared"] = {"reader": {
        "organism": organism,
        "n_genes_dropped_intersection": int(union.size - common.size),
        "slides": {sid: {k: v for k, v in r.items() if k != "slide_id"} for sid, r in reports.items()},
    }}
    dropped = [str(w) for r in reports.values() for w in r.get("spots_dropped", [])]
    if dropped:  # spots the readers dropped: recorded with the data, not only in the per-slide reports
        out.uns["spared"]["warnings"] = dropped
    return out

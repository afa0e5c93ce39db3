"""Legacy Spatial Transcriptomics (Ståhl et al. 2016 arrays): count tables, spot files and H&E images.

A section is three files:

- a **count table** (``.tsv``/``.csv``, optionally ``.gz``): spots × genes with spot names ``XxY`` (array column
  x, row y; e.g. ``10x13``) on the rows, or genes × spots with those names in the header; genes are symbols
  or Ensembl ids;
- a **spot file** from the ST spot detector: columns ``x y new_x new_y pixel_x pixel_y selected`` (tab or
  comma separated, ``selected`` and ``new_*`` optional), or the ST-Net layout (first column ``XxY`` names,
  pixel columns ``X``, ``Y``);
- optionally the full-resolution **H&E image** the spot file was aligned to (JPEG, PNG or TIFF).

Spots are joined on their array position (x, y). Selected spots without counts and counted spots outside the
selection are reported, not hidden. A collection keeps every gene of any section: count tables leave out the
genes a section did not detect, which are zeros there. The spot diameter in pixels comes from the array
itself: a least-squares fit of pixel against array coordinates (the spot detector's sub-spot ``new_x``,
``new_y`` when present) over all selected spots gives the pixel pitch, and the diameter is
``pitch × spot_diameter_um / spot_pitch_um`` (100 µm spots 200 µm apart on the original arrays).
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Sequence
from dataclasses import dataclass
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

#: Spot size and centre-to-centre distance of the original ST arrays (Ståhl et al. 2016), in µm.
SPOT_DIAMETER_UM = 100.0
SPOT_PITCH_UM = 200.0
#: Longer side of the ``hires`` thumbnail stored in ``uns['spatial']`` (as Space Ranger's hires image).
HIRES_MAX_SIDE = 2000

_SPOT_NAME = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*x\s*(-?\d+(?:\.\d+)?)\s*$")
_TABLE_SUFFIXES = (".tsv", ".csv", ".txt")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
_SPOT_WORDS = ("spot", "selection", "position")
_COUNT_WORDS = ("stdata", "count", "cnt", "matrix", "expr")
_PIXEL_COLUMNS = (("pixel_x", "pixel_y"), ("pxl_col_in_fullres", "pxl_row_in_fullres"), ("imagecol", "imagerow"))
_ARRAY_COLUMNS = (("x", "y"), ("array_col", "array_row"))
_GRID_OUTLIER = 0.5
_GRID_RMSE_WARN = 0.25


@dataclass
class STCounts:
    """A count table as read: spots × genes, each spot at integer array position ``(x, y)``."""

    matrix: sp.csr_matrix
    xy: np.ndarray
    genes: np.ndarray
    source: str


def _open_text(path: Path):
    return gzip.open(path, "rt", newline="") if path.name.lower().endswith(".gz") else open(path, newline="")


def _separator_of(first: str, path: Path) -> str:
    """The field separator of a text table (tab, comma or whitespace), judged from its header line."""
    if not first.strip():
        raise ReaderError(f"{path} is empty or starts with a blank line; expected a header line")
    return "\t" if "\t" in first else "," if "," in first else r"\s+"


def _separator(path: Path) -> str:
    try:
        with _open_text(path) as fh:
            first = fh.readline()
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise ReaderError(f"{path} could not be read as text ({exc}); download it again") from exc
    return _separator_of(first, path)


def _split_header(line: str, sep: str) -> list[str]:
    fields = re.split(sep, line.rstrip("\r\n")) if sep == r"\s+" else line.rstrip("\r\n").split(sep)
    return [f.strip().strip('"') for f in fields]


def parse_spot_names(names: Sequence[Any]) -> np.ndarray:
    """Array positions ``(x, y)`` of spot names ``XxY`` (``"10x13"``, ``"10.02x12.97"``), rounded to integers.

    Returns an ``(n, 2)`` int64 array; names that are not coordinates give ``-1`` rows (see :func:`is_spot_name`).
    """
    text = pd.Series(np.asarray(names, dtype=object)).astype(str)
    parts = text.str.extract(_SPOT_NAME)
    values = parts.astype(float).to_numpy()
    bad = np.isnan(values).any(axis=1)
    out = np.full((len(text), 2), -1, dtype=np.int64)
    out[~bad] = np.rint(values[~bad]).astype(np.int64)
    return out


def _is_spot_name(names: Sequence[Any]) -> np.ndarray:
    return pd.Series(np.asarray(names, dtype=object)).astype(str).str.match(_SPOT_NAME).to_numpy()


def _read_bytes(path: Path) -> bytes:
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError) as exc:
        raise ReaderError(f"{path} could not be read ({exc}); the file is truncated or corrupt: download it "
                          f"again") from exc


_DIGIT_OR = np.zeros(256, dtype=bool)
_DIGIT_OR[ord("0"):ord("9") + 1] = True
_CHUNK_BYTES = 1 << 24


def _integer_rows(rows: list[bytes], sep: int, n_cols: int) -> np.ndarray | None:
    """Parse rows of ``sep``-separated non-negative integers (the usual count table) without a per-value Python
    or pandas step; ``None`` when a row holds anything else (decimals, signs, blanks), left to the general parser.

    Rows are parsed in chunks of about 16 MB: the separators give each token's last byte and length, and the
    value is summed digit by digit from the right, one vectorised pass per decimal place.
    """
    allowed = _DIGIT_OR.copy()
    allowed[sep] = True
    out = np.empty((len(rows), n_cols), dtype=np.float32)
    start = 0
    while start < len(rows):
        stop, size = start, 0
        while stop < len(rows) and (size < _CHUNK_BYTES or stop == start):
            size += len(rows[stop]) + 1
            stop += 1
        buf = np.frombuffer(bytes([sep]).join(rows[start:stop]), dtype=np.uint8)
        if not allowed[buf].all():
            return None
        ends = np.append(np.flatnonzero(buf == sep), buf.size)
        lengths = np.diff(ends, prepend=-1) - 1
        if ends.size != (stop - start) * n_cols or lengths.min() < 1 or lengths.max() > 15:
            return None
        values = (buf[ends - 1] - 48).astype(np.float64)
        for place in range(1, int(lengths.max())):
            longer = np.flatnonzero(lengths > place)
            values[longer] += (buf[ends[longer] - 1 - place] - 48) * 10.0 ** place
        out[start:stop] = values.reshape(stop - start, n_cols)
        start = stop
    return out


def _table_values(path: Path, sep: str, n_rows: int, n_cols: int, bodies: list[bytes]) -> np.ndarray:
    values = _integer_rows(bodies, ord(sep), n_cols) if sep in ("\t", ",") else None
    if values is not None:
        return values
    try:
        table = pd.read_csv(path, sep=sep, header=None, skiprows=1, index_col=0, compression="infer",
                            engine="c" if sep != r"\s+" else "python", quotechar='"')
        values = table.to_numpy(dtype=np.float32)
    except (ValueError, TypeError, OSError, EOFError, pd.errors.ParserError) as exc:
        raise ReaderError(f"count table {path}: could not be parsed as numbers ({exc})") from exc
    if values.shape != (n_rows, n_cols):
        raise ReaderError(f"count table {path}: expected {n_rows} rows × {n_cols} values, parsed {values.shape}")
    return values


def read_count_table(path: str | Path) -> STCounts:
    """Read a legacy-ST count table in either orientation (spots × genes or genes × spots).

    The spot axis is the one whose labels are ``XxY`` array coordinates; duplicate gene names are kept (they
    are summed later when they map to one Ensembl id). Integer tables take a vectorised fast path (about 20×
    faster than pandas on the 15,000-column her2st tables); anything else goes through pandas.
    """
    path = Path(path)
    lines = [line.rstrip(b"\r") for line in _read_bytes(path).split(b"\n")]
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise ReaderError(f"count table {path} is empty; expected spots × genes counts")
    first = lines[0].decode("utf-8", "replace")
    sep = _separator_of(first, path)
    header = _split_header(first, sep)
    names, bodies = [], []
    pattern = re.compile(sep.encode()) if sep == r"\s+" else None
    for number, line in enumerate(lines[1:], start=2):
        parts = pattern.split(line.strip(), maxsplit=1) if pattern else line.split(sep.encode(), 1)
        if len(parts) != 2:
            raise ReaderError(f"count table {path}: line {number} has a single field; expected a spot or gene "
                              f"name followed by counts")
        names.append(parts[0].decode("utf-8", "replace").strip().strip('"'))
        bodies.append(parts[1])
    if not names:
        raise ReaderError(f"count table {path} has a header but no data rows; expected spots × genes counts")
    n_cols = len(pattern.split(bodies[0].strip())) if pattern else bodies[0].count(sep.encode()) + 1
    if len(header) not in (n_cols, n_cols + 1):
        raise ReaderError(f"count table {path}: the header has {len(header)} fields but the first row has "
                          f"{n_cols + 1}; the table is damaged")
    columns = header[-n_cols:]
    row_names, col_names = np.asarray(names, dtype=object), np.asarray(columns, dtype=object)
    rows_ok, cols_ok = _is_spot_name(row_names), _is_spot_name(col_names)
    if rows_ok.mean() >= max(cols_ok.mean(), 0.5):
        spots, genes, ok, transpose = row_names, col_names, rows_ok, False
    elif cols_ok.mean() >= 0.5:
        spots, genes, ok, transpose = col_names, row_names, cols_ok, True
    else:
        raise ReaderError(f"count table {path}: expected spot names 'XxY' (array column x row, e.g. '10x13') on "
                          f"the rows (spots × genes) or in the header (genes × spots); found rows "
                          f"{examples(row_names[:3])} and columns {examples(col_names[:3])}")
    if not ok.all():
        axis = "header" if transpose else "first column"
        raise ReaderError(f"count table {path}: {int((~ok).sum())} spot name(s) in the {axis} are not 'XxY' "
                          f"array coordinates: {examples(np.asarray(spots)[~ok])}")
    values = _table_values(path, sep, len(names), n_cols, bodies)
    if not np.isfinite(values).all() or (values < 0).any():
        raise ReaderError(f"count table {path}: counts must be finite and non-negative; found NaN, inf or "
                          f"negative values")
    matrix = sp.csr_matrix(values.T if transpose else values)
    xy = parse_spot_names(spots)
    keys = pd.Index([f"{x}x{y}" for x, y in xy])
    if keys.has_duplicates:
        raise ReaderError(f"count table {path}: spots repeat at the same array position "
                          f"({examples(keys[keys.duplicated()].unique())}); each spot must appear once")
    return STCounts(matrix, xy, np.asarray(genes, dtype=str), str(path))


def read_spot_file(path: str | Path) -> pd.DataFrame:
    """Read an ST spot-detector file (or an ST-Net ``spots_*.csv``) into one row per spot.

    Returns
    -------
    pandas.DataFrame
        Columns ``x``, ``y`` (int64 array position), ``pixel_x``, ``pixel_y`` (float64 full-resolution pixels),
        ``selected`` (bool; all True when the file has no ``selected`` column) and, when the file has them, the
        spot detector's sub-spot array positions ``new_x``, ``new_y``; indexed ``XxY``.
    """
    path = Path(path)
    sep = _separator(path)
    try:
        table = pd.read_csv(path, sep=sep, compression="infer", engine="c" if sep != r"\s+" else "python")
    except (ValueError, OSError, EOFError, pd.errors.ParserError) as exc:
        raise ReaderError(f"spot file {path} could not be parsed as a table ({exc})") from exc
    columns = [str(c).strip() for c in table.columns]
    table.columns = columns
    lower = {c.lower(): c for c in columns}
    names = table.iloc[:, 0].to_numpy(dtype=object) if columns and _is_spot_name(table.iloc[:, 0]).all() else None
    pixel = next(((lower[a], lower[b]) for a, b in _PIXEL_COLUMNS if a in lower and b in lower), None)
    if pixel is None and names is not None and {"X", "Y"} <= set(columns):
        pixel = ("X", "Y")
    array = next(((a, b) for a, b in _ARRAY_COLUMNS if a in columns and b in columns), None)
    if pixel is None or (array is None and names is None):
        missing = ([] if pixel is not None else ["pixel coordinates ('pixel_x', 'pixel_y'; or 'X', 'Y' beside "
                                                 "'XxY' spot names)"]) + \
                  ([] if array is not None or names is not None else ["array coordinates ('x', 'y', or 'XxY' "
                                                                      "spot names in the first column)"])
        raise ReaderError(f"spot file {path}: expected {' and '.join(missing)}; found columns {columns}")
    numeric = table[list(pixel) + (list(array) if array else [])].apply(pd.to_numeric, errors="coerce")
    bad = numeric.isna().any(axis=1).to_numpy()
    if bad.any():
        raise ReaderError(f"spot file {path}: {int(bad.sum())} row(s) have missing or non-numeric coordinates "
                          f"(first at line {int(np.flatnonzero(bad)[0]) + 2}); the file is damaged")
    xy = (np.rint(numeric[list(array)].to_numpy(dtype=np.float64)).astype(np.int64) if array
          else parse_spot_names(names))
    selected = np.ones(len(table), dtype=bool)
    if "selected" in lower:
        flags = pd.to_numeric(table[lower["selected"]], errors="coerce")
        if flags.isna().any() or not flags.isin((0, 1)).all():
            raise ReaderError(f"spot file {path}: column 'selected' must hold 0 or 1; found "
                              f"{examples(pd.unique(table[lower['selected']].astype(str)))}")
        selected = flags.to_numpy() == 1
    out = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1],
                        "pixel_x": numeric[pixel[0]].to_numpy(dtype=np.float64),
                        "pixel_y": numeric[pixel[1]].to_numpy(dtype=np.float64), "selected": selected},
                       index=pd.Index([f"{x}x{y}" for x, y in xy], name="spot"))
    if array == ("x", "y") and {"new_x", "new_y"} <= set(columns):
        refined = table[["new_x", "new_y"]].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
        if np.isfinite(refined).all():
            out["new_x"], out["new_y"] = refined[:, 0], refined[:, 1]
    chosen = out.index[out["selected"]]
    if chosen.has_duplicates:
        raise ReaderError(f"spot file {path}: several selected spots share an array position "
                          f"({examples(chosen[chosen.duplicated()].unique())})")
    return out


@dataclass(frozen=True)
class GridFit:
    """How pixel coordinates follow the spot array: ``pixel = [x, y, 1] @ matrix``."""

    matrix: np.ndarray
    pitch_px: float
    rmse_px: float
    n_spots: int
    n_outliers: int

    @property
    def anisotropy(self) -> float:
        """Relative difference between the pixel pitch along array x and along array y (0 for square pixels)."""
        sx, sy = np.linalg.norm(self.matrix[0]), np.linalg.norm(self.matrix[1])
        return float(abs(sx - sy) / max(sx, sy)) if max(sx, sy) > 0 else 0.0


def fit_array_grid(xy: np.ndarray, pixels: np.ndarray) -> GridFit:
    """Least-squares affine map from array positions to pixel coordinates and the pixel pitch of the array.

    Spots whose residual exceeds half a pitch (a mis-detected spot) are dropped and the map refitted once.
    Sections whose spots lie along one array row or column fit that axis only.

    Parameters
    ----------
    xy
        ``(n, 2)`` array positions (column x, row y).
    pixels
        ``(n, 2)`` pixel coordinates ``(pixel_x, pixel_y)``.
    """
    xy = np.asarray(xy, dtype=np.float64)
    pixels = np.asarray(pixels, dtype=np.float64)
    if xy.shape[0] < 2 or np.ptp(xy, axis=0).max() == 0:
        raise ValueError(f"the pixel pitch of the array needs at least two spots at different array positions; "
                         f"found {xy.shape[0]} spot(s)")
    varying = np.ptp(xy, axis=0) > 0

    def solve(keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        design = np.column_stack([xy[keep][:, varying], np.ones(int(keep.sum()))])
        coef, *_ = np.linalg.lstsq(design, pixels[keep], rcond=None)
        matrix = np.zeros((3, 2))
        matrix[np.flatnonzero(np.append(varying, True))] = coef
        return matrix, pixels - np.column_stack([xy, np.ones(len(xy))]) @ matrix

    keep = np.ones(len(xy), dtype=bool)
    matrix, residual = solve(keep)
    pitch = float(np.mean(np.linalg.norm(matrix[:2][varying], axis=1)))
    outliers = np.linalg.norm(residual, axis=1) > _GRID_OUTLIER * pitch
    if outliers.any() and (~outliers).sum() >= 3:
        keep = ~outliers
        matrix, residual = solve(keep)
        pitch = float(np.mean(np.linalg.norm(matrix[:2][varying], axis=1)))
    rmse = float(np.sqrt(np.mean(np.sum(residual[keep] ** 2, axis=1))))
    return GridFit(matrix, pitch, rmse, int(keep.sum()), int((~keep).sum()))


def _token_match(text: str, token: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9]){re.escape(token)}(?![A-Za-z0-9])", text, re.IGNORECASE) is not None


@dataclass
class STFiles:
    """The files of one ST section (image optional)."""

    counts: Path
    spots: Path
    image: Path | None

    def describe(self) -> dict[str, str]:
        return {k: str(v) for k, v in (("counts", self.counts), ("spots", self.spots), ("image", self.image))
                if v is not None}


def _one(candidates: list[Path], role: str, root: Path, token: str | None, field: str) -> Path | None:
    if len(candidates) > 1 and token:
        candidates = [p for p in candidates if _token_match(p.name, token)] or candidates
    if len(candidates) > 1:
        raise ReaderError(f"{root}: several candidate {role} files for slide {token!r} "
                          f"({examples(p.relative_to(root) for p in candidates)}); name the file with the slide's "
                          f"'{field}' in the catalogue")
    return candidates[0] if candidates else None


def discover_st_files(root: Path, slide: SlideInfo, dataset_dir: Path) -> STFiles:
    """Find a section's count table, spot file and image.

    When the slide names its ``counts`` and ``spots`` (paths relative to the dataset folder, as the catalogue
    does), those are used and the image is the slide's ``image`` or none. Otherwise the files not named are
    searched by name under ``root`` (files whose path contains the slide id or prefix as a whole word when
    ``root`` holds several sections).
    """
    explicit = {name: dataset_dir / value for name in ("counts", "spots", "image")
                if (value := getattr(slide, name, None))}
    for name, path in explicit.items():
        if not path.is_file():
            raise ReaderError(f"slide {slide.id!r}: the catalogue names {name} file {path}, which does not exist")
    found: dict[str, Path | None] = dict(explicit)
    if "counts" in found and "spots" in found:
        found.setdefault("image", None)
    missing = [name for name in ("counts", "spots", "image") if name not in found]
    if missing:
        if not root.is_dir():
            raise ReaderError(f"slide {slide.id!r}: folder {root} does not exist")
        token = slide.prefix or slide.id
        files = sorted(p for p in root.rglob("*") if p.is_file())
        mine = [p for p in files if _token_match(str(p.relative_to(root)), token)]
        files = mine or files
        names = {p: p.name.lower().removesuffix(".gz") for p in files}
        tables = [p for p, n in names.items() if n.endswith(_TABLE_SUFFIXES)]
        spot_files = [p for p in tables if any(w in names[p] for w in _SPOT_WORDS)]
        count_files = [p for p in tables if p not in spot_files and any(w in names[p] for w in _COUNT_WORDS)]
        if not count_files:
            count_files = [p for p in tables if p not in spot_files and not re.search(r"coord|label|meta", names[p])]
        images = [p for p, n in names.items() if n.endswith(_IMAGE_SUFFIXES)]
        candidates = {"counts": (count_files, "count-table"), "spots": (spot_files, "spot"),
                      "image": (images, "image")}
        for name in missing:
            found[name] = _one(candidates[name][0], candidates[name][1], root, token, name)
    for name, what in (("counts", "a count table (spots × genes, 'XxY' spot names)"),
                       ("spots", "a spot file (x, y, pixel_x, pixel_y[, selected])")):
        if found.get(name) is None:
            raise ReaderError(f"slide {slide.id!r}: no {name} file found under {root}; expected {what} whose "
                              f"name contains {slide.prefix or slide.id!r}, or name it with the slide's "
                              f"'{name}' in the catalogue")
    return STFiles(counts=found["counts"], spots=found["spots"], image=found.get("image"))


def _gunzipped(path: Path) -> Path:
    from spared.io.readers.visium import _gunzipped as unpack

    return unpack(path)


def read_st_slide(files: STFiles, slide: SlideInfo, organism: str, spot_diameter_um: float = SPOT_DIAMETER_UM,
                  spot_pitch_um: float = SPOT_PITCH_UM) -> Any:
    """One ST section as an AnnData following the spared raw data model.

    Parameters
    ----------
    files
        The section's count table, spot file and (optional) image.
    slide
        Slide id, patient and split.
    organism
        ``"human"`` or ``"mouse"``.
    spot_diameter_um, spot_pitch_um
        Spot size and centre-to-centre distance of the array (100 and 200 µm on the original ST arrays).
    """
    import warnings

    import anndata as ad

    counts = read_count_table(files.counts)
    spots = read_spot_file(files.spots)
    selected = spots[spots["selected"]]
    if selected.empty:
        raise ReaderError(f"spot file {files.spots}: no spot is selected (column 'selected' is 0 everywhere)")
    counted = pd.Index([f"{x}x{y}" for x, y in counts.xy])
    in_counts = counted.isin(selected.index)
    if not in_counts.any():
        raise ReaderError(f"slide {slide.id!r}: none of the {counted.size} spots of {files.counts} is a selected spot "
                          f"of {files.spots} (counts at {examples(counted[:3])}, spots at "
                          f"{examples(selected.index[:3])}); the files belong to different sections")
    without_counts = selected.index[~selected.index.isin(counted)]
    array = ["new_x", "new_y"] if "new_x" in selected else ["x", "y"]
    try:
        grid = fit_array_grid(selected[array].to_numpy(), selected[["pixel_x", "pixel_y"]].to_numpy())
    except ValueError as exc:
        raise ReaderError(f"spot file {files.spots}: {exc}") from exc
    if grid.rmse_px > _GRID_RMSE_WARN * grid.pitch_px:
        warnings.warn(f"slide {slide.id!r}: the pixel coordinates of {files.spots} follow the array grid loosely "
                      f"(RMS residual {grid.rmse_px:.0f} px for a {grid.pitch_px:.0f} px pitch); check that the "
                      f"spot file belongs to this section", stacklevel=3)
    keys = counted[in_counts]
    pos = selected.loc[keys]
    matrix, var, gene_report = harmonise_genes(counts.matrix[np.flatnonzero(in_counts)], None, counts.genes,
                                               organism)
    if var.empty:
        raise ReaderError(f"{files.counts}: none of the {gene_report['n_genes_read']} genes maps to a {organism} "
                          f"Ensembl id (e.g. {examples(gene_report['unmapped_examples'])}); check the organism")
    scalefactors = {"spot_diameter_fullres": grid.pitch_px * spot_diameter_um / spot_pitch_um}
    entry: dict[str, Any] = {"images": {}, "scalefactors": scalefactors,
                             "metadata": {"source": str(files.counts.parent), "technology": "ST"}}
    if files.image is not None:
        from spared.io.readers.bigimages import thumbnail

        image = _gunzipped(files.image)
        hires, factor = thumbnail(image, HIRES_MAX_SIDE)
        entry["images"]["hires"] = hires
        scalefactors["tissue_hires_scalef"] = factor
        entry["fullres_path"] = str(image.resolve())
    obs = pd.DataFrame({
        "slide_id": slide.id, "patient": slide.patient, "split": slide.split, "barcode": keys.to_numpy(dtype=str),
        "array_row": pos["y"].to_numpy(), "array_col": pos["x"].to_numpy(), "in_tissue": 1,
    }, index=pd.Index([f"{slide.id}_{k}" for k in keys]))
    adata = ad.AnnData(X=sp.csr_matrix(matrix, dtype=np.float32), obs=obs, var=var)
    adata.obsm["spatial"] = pos[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
    adata.uns["spatial"] = {slide.id: entry}
    adata.uns["spared"] = {"reader": {
        "slide_id": slide.id, "format": "st", "technology": "ST", "geometry": "square", "files": files.describe(),
        "n_spots_selected": len(selected), "n_spots_in_counts": int(counted.size),
        "n_selected_without_counts": int(without_counts.size),
        "selected_without_counts": [str(s) for s in without_counts[:10]],
        "n_counted_not_selected": int((~in_counts).sum()), "n_spots": int(adata.n_obs),
        "pixel_pitch": grid.pitch_px, "microns_per_pixel": spot_pitch_um / grid.pitch_px,
        "grid_rmse_px": grid.rmse_px, "grid_outliers": grid.n_outliers, "grid_anisotropy": grid.anisotropy,
        **gene_report,
    }}
    return drop_spots_off_image(adata, slide.id, f"spot file {files.spots} places {{n}} of {{total}} selected spots",
                                keys.to_numpy(dtype=str), prefer_fullres=True)


def read_st(path: str | Path, slides: Sequence[Any], organism: str, spot_diameter_um: float = SPOT_DIAMETER_UM,
            spot_pitch_um: float = SPOT_PITCH_UM) -> Any:
    """Read legacy-ST sections (count table + spot file + optional H&E image each) into one collection.

    Parameters
    ----------
    path
        Dataset folder. A slide's files are its ``counts``, ``spots`` and (optional) ``image`` paths, relative
        to it; a slide that does not name its count table and spot file has them (and its image) found by
        name under its ``path`` (default: its id, else the dataset folder).
    slides
        Slide descriptions (id, patient, split, optional path/prefix/counts/spots/image).
    organism
        ``"human"`` or ``"mouse"``; gene symbols are mapped to Ensembl ids.
    spot_diameter_um, spot_pitch_um
        Spot size and centre-to-centre distance of the array in µm (ST: 100 and 200).

    Returns
    -------
    anndata.AnnData
        Raw counts of the selected spots that have counts; ``obsm['spatial']`` = ``(pixel_x, pixel_y)``;
        ``obs['array_col']``/``['array_row']`` = the spot file's ``x``/``y``; genes indexed by Ensembl id.
    """
    if not (spot_diameter_um > 0 and spot_pitch_um > 0):
        raise ValueError(f"spot_diameter_um and spot_pitch_um must be positive, got {spot_diameter_um}, "
                         f"{spot_pitch_um}")
    dataset_dir, infos = collection_slides(path, slides)
    adatas = []
    for slide in infos:
        root = dataset_dir / slide.path if slide.path else dataset_dir / slide.id
        if not slide.path and not root.is_dir():
            root = dataset_dir
        files = discover_st_files(root, slide, dataset_dir)
        adatas.append(read_st_slide(files, slide, organism, spot_diameter_um, spot_pitch_um))
    return concat_slides(genes_union(adatas), organism)


def genes_union(adatas: list) -> list:
    """The sections with every gene of any section: ST count tables leave out the genes a section did not
    detect, so a gene missing from a table is a measured zero there (not an unmeasured gene to drop)."""
    import anndata as ad

    var = pd.concat([a.var for a in adatas])
    var = var[~var.index.duplicated()]
    out = []
    for a in adatas:
        position = var.index.get_indexer(a.var_names)
        place = sp.csr_matrix((np.ones(a.n_vars, dtype=np.float32), (np.arange(a.n_vars), position)),
                              shape=(a.n_vars, len(var)))
        widened = ad.AnnData(X=sp.csr_matrix(a.X @ place), obs=a.obs, var=var.copy(), obsm=dict(a.obsm),
                             uns=dict(a.uns))
        widened.uns["spared"]["reader"]["n_genes_absent_as_zero"] = int(len(var) - a.n_vars)
        out.append(widened)
    return out

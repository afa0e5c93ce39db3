"""Count matrices: 10x HDF5 (``filtered_feature_bc_matrix.h5``), Matrix Market triplets and dense tables.

Every reader returns :class:`Counts`: a ``(n_spots, n_genes)`` CSR matrix with barcodes, gene ids and symbols.
"""

from __future__ import annotations

import gzip
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

from spared.io.readers.common import ReaderError, examples

GENE_EXPRESSION = "Gene Expression"
_BARCODE = re.compile(r"([ACGTN]{8,}(?:-\d+)?)")


@dataclass
class Counts:
    """Spots × genes counts as read from disk (genes not yet harmonised)."""

    matrix: sp.csr_matrix
    barcodes: np.ndarray
    gene_ids: np.ndarray | None
    gene_symbols: np.ndarray | None
    source: str

    def __post_init__(self) -> None:
        n_spots, n_genes = self.matrix.shape
        if self.barcodes.shape != (n_spots,):
            raise ReaderError(f"{self.source}: the matrix has {n_spots} spots but {self.barcodes.size} barcodes")
        for name in ("gene_ids", "gene_symbols"):
            values = getattr(self, name)
            if values is not None and values.shape != (n_genes,):
                raise ReaderError(f"{self.source}: the matrix has {n_genes} genes but {values.size} {name}")
        dup = pd.Index(self.barcodes)
        if dup.has_duplicates:
            raise ReaderError(f"{self.source}: barcodes repeat ({examples(dup[dup.duplicated()].unique())}); "
                              f"each spot must appear once")


def _strings(values: np.ndarray) -> np.ndarray:
    return np.char.decode(values, "utf-8") if values.dtype.kind == "S" else values.astype(str)


def read_10x_h5(path: str | Path) -> Counts:
    """Read a 10x HDF5 feature-barcode matrix (Cell Ranger / Space Ranger ≥ 3 layout, or the older per-genome one).

    Only ``Gene Expression`` features are kept when feature types are recorded.
    """
    import h5py

    path = Path(path)
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise ReaderError(f"{path} is not a readable HDF5 file ({exc}); it is probably truncated or corrupt: "
                          f"delete it and download it again") from exc
    with handle as f:
        if "matrix" in f:
            group = f["matrix"]
            feats = group.get("features")
            if feats is None:
                raise ReaderError(f"{path}: group 'matrix' has no 'features'; expected a 10x feature-barcode matrix")
            ids, names = _strings(feats["id"][:]), _strings(feats["name"][:])
            types = _strings(feats["feature_type"][:]) if "feature_type" in feats else None
        else:
            genomes = [k for k in f if isinstance(f[k], h5py.Group)]
            if len(genomes) != 1 or "genes" not in f[genomes[0]]:
                raise ReaderError(f"{path}: expected a 10x matrix (group 'matrix', or one genome group with "
                                  f"'genes'), found groups {list(f)}")
            group = f[genomes[0]]
            ids, names, types = _strings(group["genes"][:]), _strings(group["gene_names"][:]), None
        missing = [k for k in ("data", "indices", "indptr", "shape", "barcodes") if k not in group]
        if missing:
            raise ReaderError(f"{path}: the matrix lacks {missing}; the file is incomplete, download it again")
        n_genes, n_spots = (int(v) for v in group["shape"][:2])
        matrix = sp.csr_matrix((group["data"][:].astype(np.float32), group["indices"][:], group["indptr"][:]),
                               shape=(n_spots, n_genes))
        barcodes = _strings(group["barcodes"][:])
    if types is not None and (types != GENE_EXPRESSION).any():
        keep = types == GENE_EXPRESSION
        matrix, ids, names = matrix[:, keep], ids[keep], names[keep]
    return Counts(matrix, barcodes, ids, names, str(path))


def _open_text(path: Path) -> io.TextIOBase:
    return gzip.open(path, "rt") if path.suffix == ".gz" else open(path)


def _table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", header=None, dtype=str, compression="infer", comment=None)


def find_triplet(folder: Path) -> dict[str, Path] | None:
    """The ``matrix.mtx``/``barcodes.tsv``/``features.tsv`` (or ``genes.tsv``) files of a folder, gzipped or not."""
    found: dict[str, Path] = {}
    for role, stems in (("matrix", ("matrix.mtx",)), ("barcodes", ("barcodes.tsv",)),
                        ("features", ("features.tsv", "genes.tsv"))):
        for stem in stems:
            for name in (stem, stem + ".gz"):
                if (folder / name).is_file():
                    found.setdefault(role, folder / name)
    return found if "matrix" in found else None


def read_mtx_triplet(files: dict[str, Path]) -> Counts:
    """Read a Matrix Market triplet (genes × barcodes, as 10x writes it) into spots × genes counts."""
    missing = [r for r in ("matrix", "barcodes", "features") if r not in files]
    if missing:
        where = files["matrix"].parent
        raise ReaderError(f"{where}: found a matrix.mtx but no {' / '.join(missing)} file "
                          f"(expected barcodes.tsv[.gz] and features.tsv[.gz] or genes.tsv[.gz] beside it)")
    try:
        with _open_text(files["matrix"]) as fh:
            matrix = scipy.io.mmread(fh)
    except (ValueError, OSError, EOFError, IndexError) as exc:
        raise ReaderError(f"{files['matrix']} is not a valid Matrix Market file ({exc}); download it again") from exc
    barcodes = _table(files["barcodes"])[0].to_numpy(dtype=str)
    features = _table(files["features"])
    ids = features[0].to_numpy(dtype=str)
    names = features[1].to_numpy(dtype=str) if features.shape[1] > 1 else ids
    matrix = sp.csr_matrix(matrix.T, dtype=np.float32)
    if matrix.shape != (barcodes.size, ids.size):
        raise ReaderError(f"{files['matrix']}: matrix is {matrix.shape[1]} genes × {matrix.shape[0]} barcodes but "
                          f"{files['features'].name} lists {ids.size} genes and {files['barcodes'].name} "
                          f"{barcodes.size} barcodes; the files do not belong together")
    if features.shape[1] > 2:
        keep = features[2].to_numpy(dtype=str) == GENE_EXPRESSION
        matrix, ids, names = matrix[:, keep], ids[keep], names[keep]
    return Counts(matrix, barcodes, ids, names, str(files["matrix"]))


def read_dense_table(path: str | Path, known_barcodes: pd.Index) -> Counts:
    """Read a dense text table of counts (genes × spots or spots × genes, tab or comma separated).

    The spot axis is the one whose labels contain barcodes found in ``known_barcodes`` (the positions file);
    labels such as ``AAACAAGTATCTCCCA-1_1`` are reduced to the barcode they contain.
    """
    path = Path(path)
    name = path.name.removesuffix(".gz")
    sep = "," if name.endswith(".csv") else "\t"
    try:
        table = pd.read_csv(path, sep=sep, index_col=0, compression="infer")
    except (ValueError, OSError, EOFError, pd.errors.ParserError) as exc:
        raise ReaderError(f"{path} could not be parsed as a table of counts ({exc})") from exc

    def barcodes_of(labels: pd.Index) -> pd.Index:
        return pd.Index(labels.astype(str).str.extract(_BARCODE, expand=False))

    cols, rows = barcodes_of(table.columns), barcodes_of(table.index)
    if cols.isin(known_barcodes).mean() >= rows.isin(known_barcodes).mean():
        spots, genes, values = cols, table.index.astype(str), table.to_numpy().T
    else:
        spots, genes, values = rows, table.columns.astype(str), table.to_numpy()
    if spots.isna().any() or not spots.isin(known_barcodes).any():
        raise ReaderError(f"{path}: could not find spot barcodes on either axis of the table (first labels: "
                          f"{examples(table.columns[:3])} / {examples(table.index[:3])})")
    try:
        values = np.asarray(values, dtype=np.float32)
    except ValueError as exc:
        raise ReaderError(f"{path}: the table holds non-numeric values ({exc})") from exc
    genes = genes.to_numpy(dtype=str)
    return Counts(sp.csr_matrix(values), spots.to_numpy(dtype=str), genes, genes, str(path))

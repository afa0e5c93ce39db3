"""Count matrices: 10x HDF5 (``filtered_feature_bc_matrix.h5``), Matrix Market triplets and dense tables.

Every reader returns :class:`Counts`: a ``(n_spots, n_genes)`` CSR matrix with barcodes, gene ids and symbols
(and the genome of each feature where the file records it). :func:`select_genome` keeps the organism's genome of
a multi-genome reference (human + virus, human + mouse) and strips the ``<genome>_`` prefixes of its ids.
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
#: Ensembl gene ids of each organism, and reference names that name it (when ids say nothing).
ORGANISM_IDS = {"human": re.compile(r"^ENSG\d"), "mouse": re.compile(r"^ENSMUSG\d")}
ORGANISM_GENOMES = {"human": re.compile(r"grch|hg\d|human|homo|sapiens|t2t|chm13", re.I),
                    "mouse": re.compile(r"grcm|mm\d|mouse|musculus", re.I)}
_PREFIXED_ID = re.compile(r"^(?P<genome>[^_]+?)_+(?P<rest>ENS[A-Z]*G\d.*)$")


@dataclass
class Counts:
    """Spots × genes counts as read from disk (genes not yet harmonised)."""

    matrix: sp.csr_matrix
    barcodes: np.ndarray
    gene_ids: np.ndarray | None
    gene_symbols: np.ndarray | None
    source: str
    genomes: np.ndarray | None = None

    def __post_init__(self) -> None:
        n_spots, n_genes = self.matrix.shape
        if self.barcodes.shape != (n_spots,):
            raise ReaderError(f"{self.source}: the matrix has {n_spots} spots but {self.barcodes.size} barcodes")
        for name in ("gene_ids", "gene_symbols", "genomes"):
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
            genome = _strings(feats["genome"][:]) if "genome" in feats else None
        else:
            genomes = [k for k in f if isinstance(f[k], h5py.Group)]
            if len(genomes) != 1 or "genes" not in f[genomes[0]]:
                raise ReaderError(f"{path}: expected a 10x matrix (group 'matrix', or one genome group with "
                                  f"'genes'), found groups {list(f)}")
            group = f[genomes[0]]
            ids, names, types = _strings(group["genes"][:]), _strings(group["gene_names"][:]), None
            genome = np.full(ids.size, genomes[0])
        missing = [k for k in ("data", "indices", "indptr", "shape", "barcodes") if k not in group]
        if missing:
            raise ReaderError(f"{path}: the matrix lacks {missing}; the file is incomplete, download it again")
        try:
            n_genes, n_spots = (int(v) for v in group["shape"][:2])
            matrix = sp.csr_matrix((group["data"][:].astype(np.float32), group["indices"][:], group["indptr"][:]),
                                   shape=(n_spots, n_genes))
            barcodes = _strings(group["barcodes"][:])
        except (OSError, ValueError, KeyError) as exc:
            raise ReaderError(f"{path}: the matrix could not be read ({exc}); the file is truncated or corrupt: "
                              f"delete it and download it again") from exc
    if types is not None and (types != GENE_EXPRESSION).any():
        keep = types == GENE_EXPRESSION
        matrix, ids, names = matrix[:, keep], ids[keep], names[keep]
        genome = genome[keep] if genome is not None else None
    return Counts(matrix, barcodes, ids, names, str(path), genome)


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


def _genome_organism(ids: np.ndarray, genome: str) -> str | None:
    """The organism a genome's features belong to: by their Ensembl ids, else by the reference name."""
    hits = {org: int(pd.Series(ids).str.match(rx.pattern).sum()) for org, rx in ORGANISM_IDS.items()}
    best = max(hits, key=hits.get)
    if hits[best] > 0 and hits[best] >= 0.5 * ids.size:
        return best
    named = [org for org, rx in ORGANISM_GENOMES.items() if rx.search(genome)]
    return named[0] if len(named) == 1 and hits[best] == 0 else None


def select_genome(counts: Counts, organism: str) -> tuple[Counts, dict]:
    """Keep the features of ``organism``'s genome in a multi-genome matrix and strip ``<genome>_`` id prefixes.

    Genomes come from the file's ``genome`` field (10x HDF5) or, when absent or uniform, from id prefixes such
    as ``GRCh38__ENSG00000141510`` / ``mm10___ENSMUSG...`` (Matrix Market ``features.tsv``). A genome belongs
    to an organism when most of its ids are that organism's Ensembl ids (``ENSG``/``ENSMUSG``), else when its
    name says so (``GRCh38``, ``hg19``, ``mm10``, ``GRCm39``, ...). Single-genome matrices pass unchanged.

    Returns
    -------
    The kept counts and a report: ``genomes`` (features per genome), ``genome_kept`` and
    ``n_features_other_genomes`` (empty for single-genome matrices).
    """
    if counts.gene_ids is None:
        return counts, {}
    ids = pd.Series(counts.gene_ids, dtype=object).astype(str)
    genomes = None if counts.genomes is None else pd.Series(counts.genomes, dtype=object).astype(str)
    if genomes is None or genomes.nunique() <= 1:
        prefixes = ids.str.extract(_PREFIXED_ID)["genome"]
        if prefixes.isna().all():
            return counts, {}
        known = sorted(prefixes.dropna().unique(), key=len, reverse=True)
        genomes = pd.Series([next((g for g in known if i.startswith(f"{g}_")), "") for i in ids], dtype=object)
    names = pd.Series(counts.gene_symbols if counts.gene_symbols is not None else counts.gene_ids,
                      dtype=object).astype(str)
    for genome in genomes.unique():
        if genome:
            rows = (genomes == genome).to_numpy()
            pattern = f"^{re.escape(genome)}_+"
            ids[rows] = ids[rows].str.replace(pattern, "", regex=True)
            names[rows] = names[rows].str.replace(pattern, "", regex=True)
    sizes = {str(g or "<none>"): int(n) for g, n in genomes.value_counts(sort=False).items()}
    owners = {g: _genome_organism(ids[(genomes == g).to_numpy()].to_numpy(), g) for g in genomes.unique()}
    kept = [g for g, org in owners.items() if org == organism]
    if not kept:
        found = ", ".join(f"{g or '<none>'} ({owners[g] or 'unknown organism'}, {sizes[str(g or '<none>')]} "
                          f"features)" for g in owners)
        raise ReaderError(f"{counts.source}: no genome of this multi-genome matrix belongs to a {organism}: "
                          f"{found}; check the dataset's organism")
    keep = genomes.isin(kept).to_numpy()
    out = Counts(counts.matrix[:, keep], counts.barcodes, ids[keep].to_numpy(dtype=str),
                 names[keep].to_numpy(dtype=str), counts.source, genomes[keep].to_numpy(dtype=str))
    report = {"genomes": sizes, "genome_kept": ", ".join(str(g or "<none>") for g in kept),
              "n_features_other_genomes": int((~keep).sum())}
    return out, report

"""Tests for spared.annotation: GTF parsing, merged exon lengths, shipped tables, lookups."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import spared.annotation as ann
from spared.annotation.build import build_gene_table, merged_interval_lengths

ROOT = Path(__file__).resolve().parents[1]
ANNOTATIONS = Path("/work/shared/data/annotations")
HUMAN_GTF = ANNOTATIONS / "gencode.v43.basic.annotation.gtf.gz"
MOUSE_GTF = ANNOTATIONS / "gencode.vM33.basic.annotation.gtf.gz"


def _gtf_line(chrom: str, feature: str, start: int, end: int, gene_id: str, name: str, gtype: str) -> str:
    attrs = f'gene_id "{gene_id}"; gene_type "{gtype}"; gene_name "{name}"; level 2;'
    if feature != "gene":
        attrs = attrs.replace("level 2;", 'transcript_id "ENST0.1"; level 2;')
    return "\t".join([chrom, "HAVANA", feature, str(start), str(end), ".", "+", ".", attrs])


# (gene_id, symbol, type, chrom, exons); transcripts/CDS are added to be ignored.
TINY_GENES = [
    ("ENSG00000000001.5", "OVL", "protein_coding", "chr1",
     [(100, 200), (150, 250), (251, 260), (300, 310), (300, 310), (305, 308), (400, 400)]),
    ("ENSG00000000002.1", "SINGLE", "lncRNA", "chr2", [(10, 19)]),
    ("ENSG00000000003.12", "PARG", "protein_coding", "chrX", [(1000, 1099), (1200, 1249)]),
    ("ENSG00000000003.12_PAR_Y", "PARG", "protein_coding", "chrY", [(5000, 5999)]),
    ("ENSG00000000004.3", "OVL", "lncRNA", "chr3", [(1, 5), (3, 9)]),
]


def _write_tiny_gtf(path: Path) -> None:
    lines = ["##description: tiny test annotation", "##format: gtf"]
    for gene_id, name, gtype, chrom, exons in TINY_GENES:
        lo, hi = min(s for s, _ in exons), max(e for _, e in exons)
        lines.append(_gtf_line(chrom, "gene", lo, hi, gene_id, name, gtype))
        lines.append(_gtf_line(chrom, "transcript", lo, hi, gene_id, name, gtype))
        for s, e in exons:
            lines.append(_gtf_line(chrom, "exon", s, e, gene_id, name, gtype))
            lines.append(_gtf_line(chrom, "CDS", s, e, gene_id, name, gtype))
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)


def _union_length(exons: list[tuple[int, int]]) -> int:
    covered: set[int] = set()
    for s, e in exons:
        covered.update(range(s, e + 1))
    return len(covered)


@pytest.mark.parametrize("name", ["tiny.gtf", "tiny.gtf.gz"])
def test_build_gene_table_tiny(tmp_path: Path, name: str) -> None:
    gtf = tmp_path / name
    _write_tiny_gtf(gtf)
    table = build_gene_table(gtf)
    expected = {
        gid.split(".")[0]: (sym, _union_length(ex), gtype, chrom)
        for gid, sym, gtype, chrom, ex in TINY_GENES if not gid.endswith("_PAR_Y")
    }
    assert list(table.index) == sorted(expected)
    assert list(table.columns) == ["gene_symbol", "gene_length", "gene_type", "chrom", "level", "readthrough"]
    assert table["gene_length"].dtype == np.int64
    for gid, (sym, length, gtype, chrom) in expected.items():
        assert tuple(table.loc[gid]) == (sym, length, gtype, chrom, 2, 0)
    # The PAR_Y copy is dropped and the chrX copy keeps its own exons.
    assert table.loc["ENSG00000000003", "chrom"] == "chrX"
    assert table.loc["ENSG00000000003", "gene_length"] == 150


def test_build_gene_table_level_and_readthrough_tag(tmp_path: Path) -> None:
    lines = []
    for gid, level, tags in (("ENSG1.1", 1, ""), ("ENSG2.3", 3, 'tag "overlapping_locus"; tag "readthrough_gene";'),
                             ("ENSG3.1", None, 'tag "readthrough_transcript";')):
        gene = _gtf_line("chr1", "gene", 1, 10, gid, "A", "protein_coding")
        gene = gene.replace("level 2;", (f"level {level}; " if level else "") + tags)
        lines += [gene, _gtf_line("chr1", "exon", 1, 10, gid, "A", "protein_coding")]
    gtf = tmp_path / "tags.gtf"
    gtf.write_text("\n".join(lines) + "\n")
    table = build_gene_table(gtf)
    assert table["level"].tolist() == [1, 3, 3]  # no level given: the weakest, 3
    assert table["readthrough"].tolist() == [0, 1, 0]


def test_merged_interval_lengths_random_against_set_union() -> None:
    rng = np.random.default_rng(0)
    n_groups, n = 40, 600
    group = rng.integers(0, n_groups - 3, n)  # the last groups stay empty
    start = rng.integers(1, 500, n)
    end = start + rng.integers(0, 60, n)
    got = merged_interval_lengths(group, start, end, n_groups)
    for g in range(n_groups):
        sel = group == g
        assert got[g] == _union_length(list(zip(start[sel], end[sel], strict=True)))
    assert got[-3:].tolist() == [0, 0, 0]
    assert merged_interval_lengths(np.array([]), np.array([]), np.array([]), 2).tolist() == [0, 0]


def test_merged_interval_lengths_rejects_reversed() -> None:
    with pytest.raises(ValueError, match="end < start"):
        merged_interval_lengths(np.array([0]), np.array([10]), np.array([5]), 1)


def test_build_gene_table_bad_input(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="GTF file not found"):
        build_gene_table(tmp_path / "missing.gtf")
    orphan = tmp_path / "orphan.gtf"
    orphan.write_text(
        _gtf_line("chr1", "gene", 1, 10, "ENSG1.1", "A", "lncRNA") + "\n"
        + _gtf_line("chr1", "exon", 1, 10, "ENSG1.1", "A", "lncRNA") + "\n"
        + _gtf_line("chr1", "exon", 1, 10, "ENSG2.1", "B", "lncRNA") + "\n"
    )
    with pytest.raises(ValueError, match="without a gene record"):
        build_gene_table(orphan)
    bare = tmp_path / "bare.gtf"
    bare.write_text(_gtf_line("chr1", "gene", 1, 10, "ENSG1.1", "A", "lncRNA") + "\n")
    with pytest.raises(ValueError, match="without exon records"):
        build_gene_table(bare)


def _load_script():
    spec = importlib.util.spec_from_file_location("build_gene_table_script", ROOT / "scripts/build_gene_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_checksum_and_atomic_reproducible_output(tmp_path: Path) -> None:
    script = _load_script()
    gtf = tmp_path / "tiny.gtf.gz"
    _write_tiny_gtf(gtf)
    out = tmp_path / "out" / "table.tsv.gz"
    assert script.main([str(gtf), str(out)]) == 0  # no SHA256SUMS: builds without verification
    first = out.read_bytes()
    written = pd.read_csv(out, sep="\t")
    assert list(written.columns) == ["gene_id", "gene_symbol", "gene_length", "gene_type", "level", "readthrough"]
    assert written.set_index("gene_id")["gene_length"].to_dict() == build_gene_table(gtf)["gene_length"].to_dict()
    digest = hashlib.sha256(gtf.read_bytes()).hexdigest()
    (tmp_path / "SHA256SUMS").write_text(f"{digest}  {gtf.name}\n")
    assert script.main([str(gtf), str(out)]) == 0
    assert out.read_bytes() == first  # byte-for-byte reproducible
    assert sorted(p.name for p in out.parent.iterdir()) == ["table.tsv.gz"]  # no temporary left behind
    (tmp_path / "SHA256SUMS").write_text(f"{'0' * 64}  {gtf.name}\n")
    with pytest.raises(SystemExit, match="sha256 mismatch"):
        script.main([str(gtf), str(out)])
    (tmp_path / "SHA256SUMS").write_text(f"{digest}  other.gtf.gz\n")
    with pytest.raises(SystemExit, match=r"does not list tiny\.gtf\.gz"):
        script.main([str(gtf), str(out)])
    assert out.read_bytes() == first


def test_shipped_tables_known_genes() -> None:
    human, mouse = ann.gene_table("human"), ann.gene_table("mouse")
    assert list(human.columns) == ["gene_symbol", "gene_length", "gene_type", "level", "readthrough"]
    assert human.index.is_unique and mouse.index.is_unique
    assert human.index.str.startswith("ENSG").all() and mouse.index.str.startswith("ENSMUSG").all()
    assert not human.index.str.contains(r"[._]").any()
    assert (human["gene_length"] > 0).all() and (mouse["gene_length"] > 0).all()
    assert human.loc["ENSG00000141510", "gene_symbol"] == "TP53"
    assert human.loc["ENSG00000111640", "gene_symbol"] == "GAPDH"
    assert mouse.loc["ENSMUSG00000057666", "gene_symbol"] == "Gapdh"
    assert 60_000 < len(human) < 65_000 and 50_000 < len(mouse) < 60_000


def test_gene_table_returns_copy_and_loads_fast() -> None:
    ann._load.cache_clear()
    ann._symbol_index.cache_clear()
    tic = time.perf_counter()
    table = ann.gene_table("human")
    assert time.perf_counter() - tic < 0.5
    table.loc["ENSG00000141510", "gene_length"] = -1
    assert ann.gene_table("human").loc["ENSG00000141510", "gene_length"] > 0


def test_unknown_organism() -> None:
    for call in (lambda: ann.gene_table("rat"), lambda: ann.gene_lengths(["ENSG1"], "Human"),
                 lambda: ann.symbols_to_ensembl(["TP53"], "zebrafish")):
        with pytest.raises(ValueError, match=r"expected one of \['human', 'mouse'\]"):
            call()


def test_strip_version() -> None:
    assert ann.strip_version("ENSG00000141510.17") == "ENSG00000141510"
    assert ann.strip_version("ENSG00000141510") == "ENSG00000141510"
    assert ann.strip_version("ENSG00000182378.15_PAR_Y") == "ENSG00000182378"
    got = ann.strip_version(pd.Index(["ENSMUSG00000057666.19", "ENSG1", "ENSG2.3"]))
    assert got.tolist() == ["ENSMUSG00000057666", "ENSG1", "ENSG2"]


def test_gene_lengths_versioned_and_unknown() -> None:
    human = ann.gene_table("human")
    ids = ["ENSG00000141510.17", "ENSG00000111640", "ENSG99999999999", "ENSG00000141510"]
    got = ann.gene_lengths(ids, "human")
    assert got.index.tolist() == ids and got.name == "gene_length" and got.dtype == np.float64
    tp53 = human.loc["ENSG00000141510", "gene_length"]
    assert got.iloc[0] == tp53 == got.iloc[3]
    assert got.iloc[1] == human.loc["ENSG00000111640", "gene_length"]
    assert np.isnan(got.iloc[2])
    assert ann.gene_lengths([], "mouse").empty
    with pytest.raises(TypeError, match="single string"):
        ann.gene_lengths("ENSG00000141510", "human")
    with pytest.raises(TypeError, match="must all be strings; found int"):
        ann.gene_lengths(["ENSG00000141510", 5], "human")


def test_symbols_to_ensembl() -> None:
    got = ann.symbols_to_ensembl(["TP53", "GAPDH", "NOT_A_GENE", "tp53"], "human")
    assert got.index.tolist() == ["TP53", "GAPDH", "NOT_A_GENE", "tp53"] and got.name == "gene_id"
    assert got.iloc[:2].tolist() == ["ENSG00000141510", "ENSG00000111640"]
    assert got.iloc[2:].isna().all()
    assert ann.symbols_to_ensembl(["Gapdh"], "mouse").tolist() == ["ENSMUSG00000057666"]


@pytest.mark.parametrize("organism", ["human", "mouse"])
def test_symbols_to_ensembl_ambiguous_rule(organism: str) -> None:
    """Not readthrough, then protein-coding, then the best GENCODE level, then the smallest id: a plain loop."""
    table = ann.gene_table(organism).reset_index()
    counts = table["gene_symbol"].value_counts()
    ambiguous = list(counts[counts > 1].index)
    got = ann.symbols_to_ensembl(ambiguous, organism)
    def rank(r):
        return r.readthrough, r.gene_type != "protein_coding", r.level, r.gene_id

    for symbol, rows in table[table["gene_symbol"].isin(ambiguous)].groupby("gene_symbol"):
        best = min(rows.itertuples(), key=rank)
        assert got[symbol] == best.gene_id
    human = ann.symbols_to_ensembl(["MATR3", "TBCE", "HERC3", "TMSB15B"], "human")
    assert human.tolist() == ["ENSG00000015479", "ENSG00000284770", "ENSG00000138641", "ENSG00000158427"]
    assert ann.symbols_to_ensembl(["Aldoa", "Nnt"], "mouse").tolist() == ["ENSMUSG00000030695",
                                                                        "ENSMUSG00000025453"]


def test_resolve_gene_ids_reports_unmapped_ambiguous_and_unknown() -> None:
    ids = ["ENSG00000141510.17", "MATR3", "ENSMUSG00000057666", "NOT_A_GENE", "GAPDH"]
    symbols = ["TP53", "MATR3", "Gapdh", "NOT_A_GENE", "GAPDH"]
    final, report = ann.resolve_gene_ids(ids, symbols, "human")
    assert final.tolist() == ["ENSG00000141510", "ENSG00000015479", "ENSMUSG00000057666", None, "ENSG00000111640"]
    assert report["n_genes_read"] == 5 and report["n_genes_by_symbol"] == 3
    assert report["n_genes_unmapped"] == 1 and report["unmapped_examples"] == ["NOT_A_GENE"]
    assert report["n_genes_ambiguous"] == 1 and report["ambiguous_examples"] == ["MATR3 -> ENSG00000015479 (2 genes)"]
    assert report["n_ids_unknown"] == 1 and report["unknown_id_examples"] == ["ENSMUSG00000057666"]
    assert report["fraction_mapped"] == pytest.approx(3 / 5)
    with pytest.warns(ann.GeneMappingWarning, match=r"3 of 5 genes \(60.0%\).*1 symbol\(s\) unknown.*MATR3"):
        ann.check_gene_mapping(report, "human", 0.5, source="x.h5")
    with pytest.raises(ann.GeneMappingError, match=r"x.h5: only 3 of 5 genes .*human annotation \(GENCODE v43\)"):
        ann.check_gene_mapping(report, "human", 0.8, source="x.h5")
    _, mouse = ann.resolve_gene_ids(None, ["Gapdh", "Actb", "Trp53", "Xist"], "human")
    with pytest.raises(ann.GeneMappingError, match="is the organism 'mouse'"):
        ann.check_gene_mapping(mouse, "human")


def _subset_gtf(source: Path, gene_ids: list[str], dest: Path) -> None:
    keys = [f'gene_id "{g}.'.encode() for g in gene_ids]
    with gzip.open(source, "rb") as fin, dest.open("wb") as fout:
        fout.writelines(line for line in fin if any(k in line for k in keys))


@pytest.mark.slow
@pytest.mark.parametrize(("organism", "gtf", "genes"), [
    ("human", HUMAN_GTF, ["ENSG00000141510", "ENSG00000111640", "ENSG00000002586"]),
    ("mouse", MOUSE_GTF, ["ENSMUSG00000057666", "ENSMUSG00000059552"]),
])
def test_shipped_lengths_match_real_gtf(tmp_path: Path, organism: str, gtf: Path, genes: list[str]) -> None:
    if not gtf.is_file():
        pytest.skip(f"{gtf} not available")
    subset = tmp_path / "subset.gtf"
    _subset_gtf(gtf, genes, subset)
    rebuilt = build_gene_table(subset)
    assert sorted(rebuilt.index) == sorted(genes)  # PAR_Y copy of CD99 (ENSG00000002586) dropped
    shipped = ann.gene_table(organism).loc[rebuilt.index]
    pd.testing.assert_series_equal(rebuilt["gene_length"], shipped["gene_length"])
    pd.testing.assert_series_equal(rebuilt["gene_symbol"], shipped["gene_symbol"])
    # Independent check against a per-base set union of the exons read straight from the GTF text.
    exons: dict[str, list[tuple[int, int]]] = {}
    for line in subset.read_text().splitlines():
        fields = line.split("\t")
        gid = fields[8].split('"')[1]
        if fields[2] == "exon" and not gid.endswith("_PAR_Y"):
            exons.setdefault(gid.split(".")[0], []).append((int(fields[3]), int(fields[4])))
    for gid, ex in exons.items():
        assert rebuilt.loc[gid, "gene_length"] == _union_length(ex)

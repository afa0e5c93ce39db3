"""Gene identifiers: symbol-indexed collections are mapped to Ensembl ids, reported, never silently emptied."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from spared.annotation import GeneMappingError, GeneMappingWarning
from spared.config import ProcessingConfig
from spared.pp import ensembl_ids, process, tpm


def symbol_indexed(adata: ad.AnnData) -> ad.AnnData:
    out = adata.copy()
    out.var_names = out.var["gene_symbol"].astype(str).to_numpy()
    return out


def test_symbol_indexed_collection_keeps_its_genes(raw_small, processed_small):
    """The same collection indexed by symbols processes to the same genes and layers (it kept 2 of 128 before)."""
    raw = symbol_indexed(raw_small)
    assert not raw.var_names.str.startswith("ENSG").all()
    out = process(raw, ProcessingConfig(top_moran_genes=32, complete_missing=False), progress=False, copy=True)
    assert list(out.var_names) == list(processed_small.var_names)
    np.testing.assert_array_equal(out.layers["d_log1p"], processed_small.layers["d_log1p"])
    report = out.uns["spared"]["genes"]
    assert report["n_genes_read"] == raw.n_vars and report["fraction_mapped"] == 1.0
    assert report["n_genes_unmapped"] == 0


def small_collection(var_names, gene_ids=None, n=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.poisson(4.0, size=(n, len(var_names))).astype(np.float32)
    var = pd.DataFrame(index=pd.Index(var_names))
    if gene_ids is not None:
        var["gene_ids"] = gene_ids
    adata = ad.AnnData(sp.csr_matrix(x), var=var,
                       obs=pd.DataFrame({"slide_id": "s"}, index=[f"c{i}" for i in range(n)]))
    adata.layers["raw"] = x.copy()
    adata.varm["loading"] = np.arange(len(var_names) * 2, dtype=float).reshape(-1, 2)
    return adata


def test_ensembl_ids_maps_symbols_merges_duplicates_and_reports():
    names = ["TP53", "ENSG00000111640.15", "MATR3", "NOT_A_GENE", "TBCE", "TBCE-1"]
    symbols_for = ["TP53", "ENSG00000111640.15", "MATR3", "NOT_A_GENE", "TBCE", "TBCE"]
    adata = small_collection(names)
    adata.var["gene_symbol"] = symbols_for
    with pytest.warns(GeneMappingWarning, match=r"5 of 6 genes \(83.3%\).*NOT_A_GENE.*TBCE -> ENSG00000284770"):
        out = ensembl_ids(adata, "human", copy=True)
    assert list(out.var_names) == ["ENSG00000141510", "ENSG00000111640", "ENSG00000015479", "ENSG00000284770"]
    assert list(out.var["gene_symbol"]) == ["TP53", "GAPDH", "MATR3", "TBCE"]
    x = adata.X.toarray()
    want = np.column_stack([x[:, 0], x[:, 1], x[:, 2], x[:, 4] + x[:, 5]])  # the two TBCE columns summed
    np.testing.assert_array_equal(out.X.toarray(), want)
    np.testing.assert_array_equal(out.layers["raw"], want)
    np.testing.assert_array_equal(out.varm["loading"], adata.varm["loading"][[0, 1, 2, 4]])
    report = out.uns["spared"]["genes"]
    assert (report["n_genes_unmapped"], report["n_genes_ambiguous"], report["n_genes_merged"]) == (1, 3, 1)
    assert report["ambiguous_examples"] == ["MATR3 -> ENSG00000015479 (2 genes)", "TBCE -> ENSG00000284770 (2 genes)"]


def test_ids_column_wins_and_ensembl_collections_pass_unchanged(raw_small):
    """scanpy's read_visium layout: symbols as var_names, ids in var['gene_ids']."""
    adata = small_collection(["TP53", "GAPDH"], gene_ids=["ENSG00000141510", "ENSG00000111640"])
    assert ensembl_ids(adata, "human") is None  # in place
    assert list(adata.var_names) == ["ENSG00000141510", "ENSG00000111640"]
    assert list(adata.var["gene_symbol"]) == ["TP53", "GAPDH"]
    same = ensembl_ids(raw_small, "human", copy=True)
    assert same is not raw_small and (same.var_names == raw_small.var_names).all()


def test_too_few_mapped_genes_fail_unless_accepted(raw_small):
    mouse = small_collection(["Gapdh", "Actb", "Trp53", "Xist", "TP53"])
    with pytest.raises(GeneMappingError, match=r"only 1 of 5 genes \(20.0%\).*human.*is the organism 'mouse'"):
        ensembl_ids(mouse, "human")
    with pytest.warns(GeneMappingWarning, match="1 of 5 genes"):
        assert list(ensembl_ids(mouse, "human", min_mapped_fraction=0, copy=True).var_names) == ["ENSG00000141510"]
    with pytest.raises(GeneMappingError, match="is the organism 'human'"):
        process(raw_small, ProcessingConfig(organism="mouse", complete_missing=False), progress=False)
    with pytest.raises(GeneMappingError, match=r"only 0 of the 5 genes.*spared.pp.ensembl_ids"):
        tpm(mouse, "human", layer=None)
    with pytest.raises(ValueError, match=r"min_mapped_fraction must lie in \[0, 1\]"):
        ensembl_ids(mouse, "human", min_mapped_fraction=50)


@pytest.mark.slow
def test_real_organoid_slides_rewritten_with_symbols_only(realdata, tmp_path):
    """The lung organoid h5 files with every feature id replaced by its symbol give (nearly) the same genes."""
    import shutil

    import h5py

    from spared.io.readers import read

    source = realdata / "villacampa_xjtv62ncwr" / "data" / "lungorganoid"
    if not source.is_dir():
        pytest.skip(f"{source} is absent (see ../shared/realdata/SOURCES.md)")
    slides = [{"id": f"V19D02-088_{s}", "patient": "V19D02-088", "split": split, "path": f"V19D02-088_{s}"}
              for s, split in (("A1", "train"), ("B1", "train"), ("C1", "val"), ("D1", "test"))]
    for slide in slides:
        folder = tmp_path / slide["path"]
        shutil.copytree(source / slide["path"] / "spatial", folder / "spatial")
        with (h5py.File(source / slide["path"] / "filtered_feature_bc_matrix.h5") as fin,
              h5py.File(folder / "filtered_feature_bc_matrix.h5", "w") as fout):
            fin.copy("matrix", fout)
            del fout["matrix/features/id"]
            fout["matrix/features/id"] = fin["matrix/features/name"][:]
    cfg = ProcessingConfig(complete_missing=False)
    with pytest.warns(GeneMappingWarning):
        by_id = process(read("visium_spaceranger", source, slides, "human"), cfg, progress=False, copy=True)
    with pytest.warns(GeneMappingWarning, match="symbol.*unknown to GENCODE v43"):
        raw = read("visium_spaceranger", tmp_path, slides, "human")
    report = raw.uns["spared"]["reader"]["slides"]["V19D02-088_A1"]
    assert report["n_genes_by_symbol"] == 33538
    assert 0.6 < report["fraction_mapped"] < 0.75  # 10x's GENCODE v32 clone names (AL627309.1, ...) are gone in v43
    assert report["n_genes_ambiguous"] > 0 and report["n_genes_merged"] > 0
    by_symbol = process(raw, cfg, progress=False, copy=True)  # every mapped symbol has a v43 id: nothing more to warn
    assert by_symbol.n_obs == by_id.n_obs == 1832
    assert len(set(by_symbol.var_names) & set(by_id.var_names)) >= 125

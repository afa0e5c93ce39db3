"""Visium layouts seen in public data, each rebuilt here from the shared real Space Ranger files.

Every variant (sample-prefixed names, multi-genome references, Space Ranger 1.x/2.x/3.x positions, raw matrix only,
Matrix Market triplets, hires- or lowres-only images, square grids, macOS debris, ambiguous images and bad input)
is written into ``tmp_path`` from ``$SPARED_REALDATA`` and must read as the original layout does.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

from spared.io.readers import ReaderError, read

SUBSET = "visium_spaceranger_v1_subset"
KIDNEY = "villacampa_xjtv62ncwr/data/kidneyorganoid/V19D02-085_B1"
SLIDE = [{"id": "S1", "patient": "P1", "split": "train"}]


@pytest.fixture(scope="module")
def subset(realdata) -> Path:
    return realdata / SUBSET


@pytest.fixture(scope="module")
def reference(subset):
    """The scanpy subset read as Space Ranger wrote it (100 in-tissue spots × 100 genes)."""
    return read("visium_spaceranger", subset, [{**SLIDE[0], "path": "."}], "human")


def copy_outs(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def h5_arrays(path: Path) -> dict:
    with h5py.File(path) as f:
        m = f["matrix"]
        return {"data": m["data"][:], "indices": m["indices"][:], "indptr": m["indptr"][:], "shape": m["shape"][:],
                "barcodes": m["barcodes"][:].astype(str), "id": m["features/id"][:].astype(str),
                "name": m["features/name"][:].astype(str)}


def write_h5(path: Path, counts: sp.csc_matrix, barcodes, ids, names, genomes) -> None:
    """A Space Ranger HDF5 matrix (genes × barcodes, CSC) with a per-feature genome."""
    counts = sp.csc_matrix(counts)
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m["data"], m["indices"], m["indptr"] = counts.data.astype(np.int32), counts.indices, counts.indptr
        m["shape"] = np.array(counts.shape, dtype=np.int32)
        m["barcodes"] = np.array(barcodes, dtype="S")
        feats = m.create_group("features")
        feats["id"], feats["name"] = np.array(ids, dtype="S"), np.array(names, dtype="S")
        feats["feature_type"] = np.array(["Gene Expression"] * len(ids), dtype="S")
        feats["genome"] = np.array(genomes, dtype="S")


def same_slide(a, b) -> None:
    assert list(a.obs_names) == list(b.obs_names) and list(a.var_names) == list(b.var_names)
    np.testing.assert_array_equal(a.X.toarray(), b.X.toarray())
    np.testing.assert_array_equal(a.obsm["spatial"], b.obsm["spatial"])
    np.testing.assert_array_equal(a.obs[["array_row", "array_col"]], b.obs[["array_row", "array_col"]])


def gzip_file(path: Path) -> None:
    with open(path, "rb") as src, gzip.open(path.with_name(path.name + ".gz"), "wb") as dst:
        shutil.copyfileobj(src, dst)
    path.unlink()


def test_sample_prefixed_and_geo_names(subset, reference, tmp_path):
    """``<sample>_filtered_feature_bc_matrix.h5`` and GEO's flat, gzipped ``GSM…_`` files of two samples."""
    prefixed = tmp_path / "prefixed" / "S1"
    prefixed.mkdir(parents=True)
    for p in subset.rglob("*"):
        if p.is_file():
            shutil.copy(p, prefixed / f"Sample_A1_{p.name}")
    same_slide(read("visium_spaceranger", tmp_path / "prefixed", SLIDE, "human"), reference)

    geo = tmp_path / "GSE1_RAW"
    geo.mkdir()
    for gsm in ("GSM5213483_V19S23-097_A1", "GSM5213484_V19S23-097_B1"):
        for p in subset.rglob("*"):
            if p.is_file():
                shutil.copy(p, geo / f"{gsm}_{p.name}")
                gzip_file(geo / f"{gsm}_{p.name}")
    slides = [{"id": "A1", "patient": "m1", "split": "train", "path": "GSE1_RAW", "prefix": "GSM5213483"},
              {"id": "B1", "patient": "m2", "split": "val", "path": "GSE1_RAW", "prefix": "GSM5213484"}]
    both = read("geo_visium", tmp_path, slides, "human")
    assert both.n_obs == 2 * reference.n_obs and both.n_vars == reference.n_vars
    np.testing.assert_array_equal(both[both.obs["slide_id"] == "B1"].X.toarray(), reference.X.toarray())


@pytest.mark.parametrize("encoding", ["v2_csv", "v2_csv_reordered", "v3_parquet"])
def test_positions_of_space_ranger_2_and_3(subset, reference, tmp_path, encoding):
    outs = copy_outs(subset, tmp_path / "S1")
    v1 = outs / "spatial" / "tissue_positions_list.csv"
    table = pd.read_csv(v1, header=None, names=["barcode", "in_tissue", "array_row", "array_col",
                                                "pxl_row_in_fullres", "pxl_col_in_fullres"])
    v1.unlink()
    if encoding == "v2_csv":
        table.to_csv(outs / "spatial" / "tissue_positions.csv", index=False)
    elif encoding == "v2_csv_reordered":
        table[table.columns[::-1]].to_csv(outs / "spatial" / "tissue_positions.csv", index=False)
    else:
        table.to_parquet(outs / "spatial" / "tissue_positions.parquet", engine="pyarrow", index=False)
    adata = read("visium_spaceranger", tmp_path, SLIDE, "human")
    same_slide(adata, reference)
    assert adata.uns["spared"]["reader"]["slides"]["S1"]["files"]["positions"].endswith(
        "tissue_positions.parquet" if encoding == "v3_parquet" else "tissue_positions.csv")


def test_multi_genome_reference_keeps_the_organisms_genome(subset, reference, tmp_path, realdata):
    """Human + mouse + virus features in one matrix, ids prefixed ``GRCh38__``/``mm10___`` as combined references do."""
    from spared.annotation import gene_table

    outs = copy_outs(subset, tmp_path / "S1")
    h5 = h5_arrays(subset / "filtered_feature_bc_matrix.h5")
    human = sp.csc_matrix((h5["data"], h5["indices"], h5["indptr"]), shape=tuple(h5["shape"]))
    mouse_genes = gene_table("mouse").head(30)
    rng = np.random.default_rng(0)
    mouse = sp.csc_matrix(rng.poisson(2.0, size=(30, human.shape[1])))
    virus = sp.csc_matrix(rng.poisson(5.0, size=(2, human.shape[1])))
    ids = ([f"GRCh38__{i}" for i in h5["id"]] + [f"mm10___{i}" for i in mouse_genes.index] + ["ORF1ab", "S"])
    names = ([f"GRCh38__{n}" for n in h5["name"]] + [f"mm10___{n}" for n in mouse_genes["gene_symbol"]]
             + ["ORF1ab", "S"])
    genomes = ["GRCh38"] * human.shape[0] + ["mm10"] * 30 + ["SARS-CoV-2"] * 2
    counts = sp.vstack([human, mouse, virus]).tocsc()
    write_h5(outs / "filtered_feature_bc_matrix.h5", counts, h5["barcodes"], ids, names, genomes)

    adata = read("visium_spaceranger", tmp_path, SLIDE, "human")
    same_slide(adata, reference)
    assert adata.var.loc["ENSG00000186092", "gene_symbol"] == "OR4F5"  # prefix stripped from symbols too
    report = adata.uns["spared"]["reader"]["slides"]["S1"]
    assert report["genome_kept"] == "GRCh38" and report["n_features_other_genomes"] == 32
    assert report["genomes"] == {"GRCh38": 100, "mm10": 30, "SARS-CoV-2": 2}
    mouse_read = read("visium_spaceranger", tmp_path, SLIDE, "mouse")
    assert list(mouse_read.var_names) == list(mouse_genes.index)

    # the same matrix as a Matrix Market triplet: no genome column, genomes inferred from the id prefixes
    (outs / "filtered_feature_bc_matrix.h5").unlink()
    folder = outs / "filtered_feature_bc_matrix"
    folder.mkdir()
    scipy.io.mmwrite(folder / "matrix.mtx", counts.astype(np.int64))
    pd.Series(h5["barcodes"]).to_csv(folder / "barcodes.tsv", header=False, index=False)
    pd.DataFrame({"id": ids, "name": names, "type": "Gene Expression"}).to_csv(
        folder / "features.tsv", sep="\t", header=False, index=False)
    triplet = read("visium_spaceranger", tmp_path, SLIDE, "human")
    same_slide(triplet, reference)
    assert triplet.uns["spared"]["reader"]["slides"]["S1"]["genomes"] == {"GRCh38": 100, "mm10": 30, "<none>": 2}
    with pytest.raises(ReaderError, match=r"no genome .* belongs to a human: .*"):
        ids_mouse_only = [i for i in ids if i.startswith("mm10")]
        pd.DataFrame({"id": ids_mouse_only, "name": ids_mouse_only, "type": "Gene Expression"}).to_csv(
            folder / "features.tsv", sep="\t", header=False, index=False)
        scipy.io.mmwrite(folder / "matrix.mtx", mouse.astype(np.int64))
        read("visium_spaceranger", tmp_path, SLIDE, "human")


def test_triplet_and_raw_matrix_only(subset, reference, tmp_path):
    """A gzipped Matrix Market triplet written from the real h5; then only a raw matrix with out-of-tissue spots."""
    outs = copy_outs(subset, tmp_path / "S1")
    h5 = h5_arrays(subset / "filtered_feature_bc_matrix.h5")
    counts = sp.csc_matrix((h5["data"], h5["indices"], h5["indptr"]), shape=tuple(h5["shape"]))
    (outs / "filtered_feature_bc_matrix.h5").unlink()
    folder = outs / "filtered_feature_bc_matrix"
    folder.mkdir()
    scipy.io.mmwrite(folder / "matrix.mtx", counts.astype(np.int64))
    pd.Series(h5["barcodes"]).to_csv(folder / "barcodes.tsv", header=False, index=False)
    pd.DataFrame({"id": h5["id"], "name": h5["name"], "type": "Gene Expression"}).to_csv(
        folder / "features.tsv", sep="\t", header=False, index=False)
    for name in ("matrix.mtx", "barcodes.tsv", "features.tsv"):
        gzip_file(folder / name)
    same_slide(read("visium_spaceranger", tmp_path, SLIDE, "human"), reference)

    shutil.rmtree(folder)
    positions = pd.read_csv(outs / "spatial" / "tissue_positions_list.csv", header=None, index_col=0)
    outside = positions.index[positions[1] == 0][:300]
    rng = np.random.default_rng(1)
    noise = sp.csc_matrix(rng.poisson(1.0, size=(counts.shape[0], outside.size)))
    write_h5(outs / "raw_feature_bc_matrix.h5", sp.hstack([counts, noise]), [*h5["barcodes"], *outside],
             h5["id"], h5["name"], ["GRCh38"] * counts.shape[0])
    raw = read("visium_spaceranger", tmp_path, SLIDE, "human")
    same_slide(raw, reference)
    report = raw.uns["spared"]["reader"]["slides"]["S1"]
    assert report["n_spots_in_counts"] == reference.n_obs + 300 and report["n_spots_outside_tissue"] == 300
    assert "no filtered matrix: read the raw matrix" in report["warnings"][0]


def test_hires_only_lowres_only_and_no_image(subset, tmp_path):
    from spared.io.patches import PatchStore, extract_patches

    outs = copy_outs(subset, tmp_path / "S1")
    (outs / "spatial" / "tissue_lowres_image.png").unlink()
    hires_only = read("visium_spaceranger", tmp_path, SLIDE, "human")
    assert hires_only.uns["spatial"]["S1"]["images"]["lowres"].shape == (600, 600, 3)  # derived from hires
    shutil.copy(subset / "spatial" / "tissue_lowres_image.png", outs / "spatial")
    (outs / "spatial" / "tissue_hires_image.png").unlink()
    lowres_only = read("visium_spaceranger", tmp_path, SLIDE, "human")
    assert set(lowres_only.uns["spatial"]["S1"]["images"]) == {"lowres"}
    with pytest.warns(UserWarning, match="patches cut from the lowres image"):
        store = PatchStore(extract_patches(lowres_only, tmp_path / "p.h5", patch_size=16, progress=False))
    assert len(store) == lowres_only.n_obs
    assert lowres_only.uns["spared"]["patches"]["sources"]["S1"]["image"] == "lowres"


def test_no_image_at_all_still_writes_the_anndata(realdata, tmp_path):
    from spared.datasets import get_local

    outs = copy_outs(realdata / KIDNEY, tmp_path / "B1")
    (outs / "spatial" / "tissue_hires_image.png").unlink()
    cfg = {"complete_missing": False, "top_moran_genes": 16}
    with pytest.warns(UserWarning, match="patches skipped: slide\\(s\\) B1 have no image"):
        adata = get_local(outs, cfg, out_dir=tmp_path / "cache", progress=False)
    raw = read("visium_spaceranger", tmp_path, [{"id": "B1", "patient": "B1"}], "human")
    assert "patches" not in adata.uns["spared"] and adata.n_obs == int((raw.X.sum(axis=1) > 10).sum())
    assert any("patches skipped" in w for w in adata.uns["spared"]["warnings"])
    assert len(list((tmp_path / "cache").glob("*.h5ad"))) == 1 and not list((tmp_path / "cache").glob("*patches*"))


def test_square_grid_is_detected_and_used_for_the_graphs(realdata, tmp_path):
    """A real slide whose spots are moved onto a square grid: 8-neighbour graphs, with a warning."""
    from spared.config import ProcessingConfig
    from spared.graph import detect_geometry
    from spared.impute.median import adaptive_median_filter
    from spared.pp import process

    outs = copy_outs(realdata / KIDNEY, tmp_path / "B1")
    path = outs / "spatial" / "tissue_positions_list.csv"
    pos = pd.read_csv(path, header=None)
    pos[4], pos[5] = pos[2] * 150.0, (pos[3] // 2) * 150.0  # pixel row, column on a square lattice
    pos.to_csv(path, header=False, index=False)
    raw = read("visium_spaceranger", tmp_path, [{"id": "B1", "patient": "P", "path": "B1"}], "human")
    assert detect_geometry(raw.obsm["spatial"], raw.obs["slide_id"]) == "square"
    with pytest.warns(UserWarning, match="square lattice but hex_geometry=True"):
        adata = process(raw, ProcessingConfig(complete_missing=False, top_moran_genes=16), progress=False,
                        copy=True)
    assert adata.uns["spared"]["geometry"] == "square"
    assert "8 neighbours" in adata.uns["spared"]["warnings"][-1]
    expected = adata.copy()
    adaptive_median_filter(expected, layer="log1p", key_added="check", n_neighs=8)
    np.testing.assert_array_equal(adata.layers["d_log1p"], expected.layers["check"])
    original = read("visium_spaceranger", realdata / KIDNEY.rsplit("/", 1)[0], [{"id": "V19D02-085_B1",
                                                                                 "patient": "P"}], "human")
    assert detect_geometry(original.obsm["spatial"], original.obs["slide_id"]) == "hexagonal"


def test_macos_debris_is_skipped_and_ambiguous_images_resolved(subset, reference, tmp_path):
    outs = copy_outs(subset, tmp_path / "S1")
    (outs / "__MACOSX" / "spatial").mkdir(parents=True)
    for p in [outs / "filtered_feature_bc_matrix.h5", *(outs / "spatial").iterdir()]:
        (p.parent / f"._{p.name}").write_bytes(b"\x00\x05\x16\x07AppleDouble")
        (outs / "__MACOSX" / p.relative_to(outs).parent / f"._{p.name}").write_bytes(b"\x00\x05\x16\x07")
    (outs / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    from PIL import Image

    for name in ("S1.jpg", "S1_small.jpg"):
        Image.new("RGB", (60, 60)).save(outs / name)
    (outs / "._S1.jpg").write_bytes(b"\x00\x05")
    adata = read("visium_spaceranger", tmp_path, SLIDE, "human")
    same_slide(adata, reference)
    assert adata.uns["spatial"]["S1"]["fullres_path"].endswith("/S1.jpg")
    note = adata.uns["spared"]["reader"]["slides"]["S1"]["warnings"][0]
    assert "matches 2 entries; using 'S1.jpg'" in note and "'S1_small.jpg'" in note


def test_bad_inputs_name_the_file_and_what_to_do(subset, tmp_path):
    outs = copy_outs(subset, tmp_path / "S1")
    h5 = outs / "filtered_feature_bc_matrix.h5"
    data = h5.read_bytes()
    h5.write_bytes(data[: len(data) // 2])
    with pytest.raises(ReaderError, match=r"filtered_feature_bc_matrix.h5.*(truncated|corrupt).*download it again"):
        read("visium_spaceranger", tmp_path, SLIDE, "human")
    h5.write_bytes(data)
    shutil.copy(h5, outs / "other_filtered_feature_bc_matrix.h5")
    with pytest.raises(ReaderError, match=r"several candidate count-matrix .h5 files .*filtered_feature_bc_matrix.h5"
                                          r".*other_filtered_feature_bc_matrix.h5.*keep one"):
        read("visium_spaceranger", tmp_path, SLIDE, "human")
    (outs / "other_filtered_feature_bc_matrix.h5").unlink()
    positions = outs / "spatial" / "tissue_positions_list.csv"
    lines = positions.read_text().splitlines()
    positions.write_text("\n".join(line.replace("-1,", "-2,", 1) for line in lines) + "\n")
    with pytest.raises(ReaderError, match=r"100 of 100 barcodes in .*filtered_feature_bc_matrix.h5 are absent from "
                                          r".*tissue_positions_list.csv.*same Space Ranger run"):
        read("visium_spaceranger", tmp_path, SLIDE, "human")
    positions.write_text("\n".join(lines) + "\n")
    hires = outs / "spatial" / "tissue_hires_image.png"
    hires.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    with pytest.raises(ReaderError, match=r"could not read image .*tissue_hires_image.png.*download it again"):
        read("visium_spaceranger", tmp_path, SLIDE, "human")
    assert json.loads((outs / "spatial" / "scalefactors_json.json").read_text())  # inputs left as they were

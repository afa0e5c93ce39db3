"""Readers by format, each on fixtures written here in that format's exact on-disk layout."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp
import tifffile
from PIL import Image

from spared.io.readers import READERS, ReaderError, read

REALDATA = Path(os.environ.get("SPARED_REALDATA", "")) / "visium_spaceranger_v1_subset"

# Real GENCODE v43 genes (versioned ids as 10x references carry them) and their symbols.
GENES = [("ENSG00000141510.17", "TP53"), ("ENSG00000146648.18", "EGFR"), ("ENSG00000111640.15", "GAPDH"),
         ("ENSG00000075624.17", "ACTB"), ("ENSG00000136997.21", "MYC"), ("ENSG00000133703.13", "KRAS")]
SCALEFACTORS = {"spot_diameter_fullres": 31.0, "tissue_hires_scalef": 0.5, "fiducial_diameter_fullres": 50.0,
                "tissue_lowres_scalef": 0.125}
FULLRES = (240, 320)  # height, width


def barcode(i: int) -> str:
    bases = np.array(list("ACGT"))
    digits = np.base_repr(i, 4).zfill(16)
    return "".join(bases[int(d)] for d in digits) + "-1"


def make_positions(n_grid: int = 12) -> pd.DataFrame:
    """A hexagonal 10x-style array: every spot listed, the first rows outside the tissue."""
    rows, cols = np.divmod(np.arange(n_grid * n_grid), n_grid)
    cols = cols * 2 + rows % 2
    return pd.DataFrame({
        "barcode": [barcode(i) for i in range(rows.size)],
        "in_tissue": (rows >= 2).astype(int),
        "array_row": rows, "array_col": cols,
        "pxl_row_in_fullres": 20 + rows * 17, "pxl_col_in_fullres": 15 + cols * 12,
    })


def make_counts(positions: pd.DataFrame, n_genes: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Counts for in-tissue spots plus two outside the tissue (spaceranger's raw-matrix style); some zeros."""
    rng = np.random.default_rng(seed)
    chosen = positions[positions.in_tissue == 1].barcode.tolist()[:-5] + positions.barcode.tolist()[:2]
    counts = rng.poisson(3.0, size=(len(chosen), n_genes)).astype(np.float64)
    counts[rng.random(counts.shape) < 0.3] = 0
    return counts, chosen


def write_10x_h5(path: Path, counts: np.ndarray, barcodes: list[str], ids: list[str], names: list[str],
                 types: list[str] | None = None) -> None:
    """The Cell Ranger >= 3 HDF5 layout: CSC genes × barcodes under /matrix."""
    csc = sp.csr_matrix(counts)  # rows = barcodes, so its CSR arrays are the CSC arrays of genes × barcodes
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m["data"] = csc.data.astype(np.int32)
        m["indices"] = csc.indices.astype(np.int64)
        m["indptr"] = csc.indptr.astype(np.int64)
        m["shape"] = np.array([counts.shape[1], counts.shape[0]], dtype=np.int32)
        m["barcodes"] = np.array(barcodes, dtype="S")
        feats = m.create_group("features")
        feats["id"] = np.array(ids, dtype="S")
        feats["name"] = np.array(names, dtype="S")
        feats["feature_type"] = np.array(types or ["Gene Expression"] * len(ids), dtype="S")
        feats["genome"] = np.array(["GRCh38"] * len(ids), dtype="S")


def _maybe_gz(path: Path, gz: bool) -> Path:
    if not gz:
        return path
    target = path.with_name(path.name + ".gz")
    with open(path, "rb") as src, gzip.open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    path.unlink()
    return target


def write_mtx_triplet(folder: Path, counts: np.ndarray, barcodes: list[str], ids: list[str], names: list[str],
                      gz: bool, legacy: bool = False, prefix: str = "") -> None:
    """``matrix.mtx`` (genes × barcodes), ``barcodes.tsv`` and ``features.tsv`` (or legacy ``genes.tsv``)."""
    folder.mkdir(parents=True, exist_ok=True)
    scipy.io.mmwrite(folder / f"{prefix}matrix.mtx", sp.coo_matrix(counts.T.astype(np.int64)))
    _maybe_gz(folder / f"{prefix}matrix.mtx", gz)
    pd.Series(barcodes).to_csv(folder / f"{prefix}barcodes.tsv", sep="\t", header=False, index=False)
    _maybe_gz(folder / f"{prefix}barcodes.tsv", gz)
    if legacy:
        feats = pd.DataFrame({"id": ids, "name": names})
        name = f"{prefix}genes.tsv"
    else:
        feats = pd.DataFrame({"id": ids, "name": names, "type": "Gene Expression"})
        name = f"{prefix}features.tsv"
    feats.to_csv(folder / name, sep="\t", header=False, index=False)
    _maybe_gz(folder / name, gz)


def coordinate_image(height: int, width: int) -> np.ndarray:
    """RGB image whose red channel is x mod 256 and green channel y mod 256."""
    yy, xx = np.mgrid[:height, :width]
    return np.stack([xx % 256, yy % 256, (xx + yy) % 7 * 30], axis=-1).astype(np.uint8)


def write_spatial(folder: Path, positions: pd.DataFrame, v2: bool = False, prefix: str = "", gz: bool = False,
                  scalefactors: dict | None = None) -> None:
    """Space Ranger's spatial/ files: positions (v1 headerless or v2 with header), scale factors, PNGs."""
    folder.mkdir(parents=True, exist_ok=True)
    name = "tissue_positions.csv" if v2 else "tissue_positions_list.csv"
    positions.to_csv(folder / f"{prefix}{name}", header=v2, index=False)
    _maybe_gz(folder / f"{prefix}{name}", gz)
    (folder / f"{prefix}scalefactors_json.json").write_text(json.dumps(scalefactors or SCALEFACTORS))
    _maybe_gz(folder / f"{prefix}scalefactors_json.json", gz)
    full = coordinate_image(*FULLRES)
    hires = Image.fromarray(full).resize((FULLRES[1] // 2, FULLRES[0] // 2), Image.Resampling.BOX)
    hires.convert("RGBA").save(folder / f"{prefix}tissue_hires_image.png")
    hires.resize((FULLRES[1] // 8, FULLRES[0] // 8)).save(folder / f"{prefix}tissue_lowres_image.png")


def write_visium_outs(folder: Path, *, counts_format: str = "h5", v2: bool = False, gz: bool = False,
                      genes: list[tuple[str, str]] = GENES, seed: int = 0, fullres: str | None = "tif",
                      extra_feature: bool = False) -> dict:
    """A complete Space Ranger ``outs`` folder; returns what was written, for assertions."""
    positions = make_positions()
    counts, chosen = make_counts(positions, len(genes), seed)
    ids, names = [g[0] for g in genes], [g[1] for g in genes]
    folder.mkdir(parents=True, exist_ok=True)
    if counts_format == "h5":
        if extra_feature:
            counts_h5 = np.column_stack([counts, np.full(len(chosen), 99.0)])
            write_10x_h5(folder / "filtered_feature_bc_matrix.h5", counts_h5, chosen, [*ids, "CD3_TotalSeqB"],
                         [*names, "CD3"], ["Gene Expression"] * len(ids) + ["Antibody Capture"])
        else:
            write_10x_h5(folder / "filtered_feature_bc_matrix.h5", counts, chosen, ids, names)
    else:
        write_mtx_triplet(folder / "filtered_feature_bc_matrix", counts, chosen, ids, names, gz=gz)
    write_spatial(folder / "spatial", positions, v2=v2, gz=gz)
    if fullres == "tif":
        tifffile.imwrite(folder / "image.tif", coordinate_image(*FULLRES), photometric="rgb", tile=(64, 64))
    elif fullres == "jpg":
        Image.fromarray(coordinate_image(*FULLRES)).save(folder / "image.jpg", quality=95)
    return {"positions": positions.set_index("barcode"), "counts": counts, "barcodes": chosen, "genes": genes}


def expected_in_tissue(written: dict) -> np.ndarray:
    pos = written["positions"]
    return np.array([pos.loc[b, "in_tissue"] == 1 for b in written["barcodes"]])


SLIDE = [{"id": "S1", "patient": "P1", "split": "train"}]


def test_registry_names_every_format():
    assert set(READERS) == {"visium_spaceranger", "visium_mtx_folders", "geo_visium", "h5ad", "st", "hest"}
    with pytest.raises(ReaderError, match=r"unknown reader format 'nope'.*visium_spaceranger"):
        read("nope", ".", SLIDE, "human")


def test_visium_h5_v1_follows_the_data_model(tmp_path):
    written = write_visium_outs(tmp_path / "S1", extra_feature=True)
    adata = read("visium_spaceranger", tmp_path, SLIDE, "human")
    keep = expected_in_tissue(written)
    barcodes = np.array(written["barcodes"])[keep]
    assert adata.n_obs == keep.sum() == len(written["barcodes"]) - 2
    assert list(adata.obs_names[:2]) == [f"S1_{b}" for b in barcodes[:2]]
    assert (adata.obs["slide_id"] == "S1").all() and (adata.obs["patient"] == "P1").all()
    assert (adata.obs["split"] == "train").all() and (adata.obs["in_tissue"] == 1).all()
    pos = written["positions"].loc[barcodes]
    np.testing.assert_array_equal(adata.obs["array_row"], pos["array_row"])
    np.testing.assert_array_equal(adata.obs["array_col"], pos["array_col"])
    np.testing.assert_array_equal(adata.obsm["spatial"][:, 0], pos["pxl_col_in_fullres"])
    np.testing.assert_array_equal(adata.obsm["spatial"][:, 1], pos["pxl_row_in_fullres"])
    assert sp.isspmatrix_csr(adata.X) and adata.X.dtype == np.float32
    np.testing.assert_array_equal(adata.X.toarray(), written["counts"][keep])  # antibody feature dropped
    assert list(adata.var_names) == [g[0].split(".")[0] for g in GENES]
    assert list(adata.var["gene_symbol"]) == [g[1] for g in GENES]
    entry = adata.uns["spatial"]["S1"]
    assert entry["scalefactors"]["spot_diameter_fullres"] == 31.0
    assert entry["scalefactors"]["tissue_hires_scalef"] == 0.5
    assert entry["images"]["hires"].shape == (120, 160, 3)  # RGBA PNG → RGB
    assert entry["images"]["lowres"].shape == (30, 40, 3)
    assert Path(entry["fullres_path"]) == (tmp_path / "S1" / "image.tif").resolve()
    report = adata.uns["spared"]["reader"]["slides"]["S1"]
    assert report["n_spots_outside_tissue"] == 2 and report["n_genes_unmapped"] == 0


def test_mtx_gz_and_v2_positions_read_like_h5(tmp_path):
    write_visium_outs(tmp_path / "h5" / "S1")
    write_visium_outs(tmp_path / "mtx" / "S1", counts_format="mtx", v2=True, gz=True, fullres="jpg")
    a = read("visium_spaceranger", tmp_path / "h5", SLIDE, "human")
    b = read("visium_spaceranger", tmp_path / "mtx", SLIDE, "human")
    assert list(a.obs_names) == list(b.obs_names) and list(a.var_names) == list(b.var_names)
    np.testing.assert_array_equal(a.X.toarray(), b.X.toarray())
    np.testing.assert_array_equal(a.obsm["spatial"], b.obsm["spatial"])
    assert b.uns["spatial"]["S1"]["fullres_path"].endswith("image.jpg")


def test_single_outs_folder_is_the_dataset_folder(tmp_path):
    write_visium_outs(tmp_path, fullres=None)
    adata = read("visium_spaceranger", tmp_path, [{"id": "lib", "patient": "P", "split": "val"}], "human")
    assert adata.obs_names[0].startswith("lib_") and (adata.obs["split"] == "val").all()
    assert "fullres_path" not in adata.uns["spatial"]["lib"]


def test_mendeley_folders_concatenate_on_shared_genes(tmp_path):
    """Per-slide folders with a bare triplet (legacy genes.tsv) and images in a separate folder."""
    slides = [{"id": "V10F24-015_A1", "patient": "V10F24-015", "split": "train"},
              {"id": "V10F24-015_B1", "patient": "V10F24-015", "split": "test"}]
    images = tmp_path / "images_FR"
    images.mkdir()
    for k, slide in enumerate(slides):
        folder = tmp_path / "Visium_Folders" / slide["id"]
        positions = make_positions()
        genes = GENES if k == 0 else GENES[1:]  # TP53 missing from the second slide
        counts, chosen = make_counts(positions, len(genes), seed=k)
        write_mtx_triplet(folder, counts, chosen, [g[0] for g in genes], [g[1] for g in genes], gz=False,
                          legacy=True)
        write_spatial(folder / "spatial", positions)
        Image.fromarray(coordinate_image(*FULLRES)).save(images / f"HE_{slide['id']}.jpg")
        slide["path"] = f"Visium_Folders/{slide['id']}"
    adata = read("visium_mtx_folders", tmp_path, slides, "human")
    assert list(adata.obs["slide_id"].cat.categories) == ["V10F24-015_A1", "V10F24-015_B1"]
    assert adata.obs.groupby("slide_id", observed=True)["split"].first().to_dict() == {
        "V10F24-015_A1": "train", "V10F24-015_B1": "test"}
    assert "ENSG00000141510" not in adata.var_names and adata.n_vars == len(GENES) - 1
    assert adata.uns["spared"]["reader"]["n_genes_dropped_intersection"] == 1
    assert set(adata.uns["spatial"]) == {s["id"] for s in slides}
    for s in slides:
        assert adata.uns["spatial"][s["id"]]["fullres_path"].endswith(f"HE_{s['id']}.jpg")
    assert adata.obs_names.is_unique


def test_erickson_layout_hires_elsewhere_and_v2_content_under_v1_name(tmp_path):
    """Flat slide folder whose v1-named positions carry a header; hires and full-res images in other folders."""
    slide_dir = tmp_path / "Count_matrices" / "Patient 1" / "H1_5"
    written = write_visium_outs(slide_dir, fullres=None)
    spatial = slide_dir / "spatial"
    written["positions"].reset_index().to_csv(spatial / "tissue_positions_list.csv", index=False)
    hires_dir = tmp_path / "highres" / "H1_5"
    hires_dir.mkdir(parents=True)
    (spatial / "tissue_hires_image.png").rename(hires_dir / "H1_5_tissue_hires_image.png")
    (spatial / "tissue_lowres_image.png").unlink()
    Image.fromarray(coordinate_image(*FULLRES)).save(tmp_path / "H1_5_HE.jpg")
    slide = {"id": "H1_5", "patient": "1", "split": "train", "path": "Count_matrices/Patient 1/H1_5",
             "hires_image": "highres/H1_5", "image": "H1_5_HE.jpg"}
    adata = read("visium_spaceranger", tmp_path, [slide], "human")
    assert adata.n_obs == expected_in_tissue(written).sum()
    images = adata.uns["spatial"]["H1_5"]["images"]
    assert images["hires"].shape == (120, 160, 3) and images["lowres"].shape == (30, 40, 3)  # lowres derived
    assert adata.uns["spatial"]["H1_5"]["fullres_path"].endswith("H1_5_HE.jpg")


def test_geo_prefixed_files_with_symbol_table(tmp_path):
    """GEO: flat folder, GSM-prefixed gzipped files, dense genes × spots table of symbols."""
    genes = [g[1] for g in GENES] + ["NOT_A_GENE"]
    for k, (gsm, slide) in enumerate([("GSM5213483", "A1_S1"), ("GSM5213484", "B1_S2")]):
        prefix = f"{gsm}_V19S23-097_{slide}_"
        positions = make_positions()
        counts, chosen = make_counts(positions, len(genes), seed=k)
        table = pd.DataFrame(counts.T, index=genes, columns=[f"{b}_{k + 1}" for b in chosen])
        table.to_csv(tmp_path / f"{prefix}stdata.tsv.gz", sep="\t")
        write_spatial(tmp_path, positions, prefix=prefix, gz=True)
        tifffile.imwrite(tmp_path / f"{prefix}Region{k}_rotated.tif",
                         (coordinate_image(*FULLRES).astype(np.uint16) * 257), photometric="rgb")
    slides = [{"id": "A1_S1", "patient": "mouse1", "split": "train"},
              {"id": "B1_S2", "patient": "mouse2", "split": "val"}]
    from spared.annotation import GeneMappingWarning

    with pytest.warns(GeneMappingWarning, match="NOT_A_GENE"):
        adata = read("geo_visium", tmp_path, slides, "human")
    assert adata.n_vars == len(GENES)
    assert list(adata.var["gene_symbol"]) == [g[1] for g in GENES]
    report = adata.uns["spared"]["reader"]["slides"]["A1_S1"]
    assert report["n_genes_unmapped"] == 1 and report["unmapped_examples"] == ["NOT_A_GENE"]
    assert adata.obs_names[0].startswith("A1_S1_") and "_1" not in adata.obs_names[0].removeprefix("A1_S1_")
    assert adata.uns["spatial"]["B1_S2"]["images"]["hires"].shape == (120, 160, 3)
    assert adata.uns["spatial"]["B1_S2"]["fullres_path"].endswith("Region1_rotated.tif")


def test_versions_of_one_gene_are_summed(tmp_path):
    genes = [*GENES, ("ENSG00000141510.16", "TP53")]
    write_visium_outs(tmp_path / "S1", genes=genes)
    adata = read("visium_spaceranger", tmp_path, SLIDE, "human")
    assert adata.n_vars == len(GENES)
    assert adata.uns["spared"]["reader"]["slides"]["S1"]["n_genes_merged"] == 1


def test_h5ad_collection_round_trip(tmp_path):
    write_visium_outs(tmp_path / "S1")
    original = read("visium_spaceranger", tmp_path, SLIDE, "human")
    original.write_h5ad(tmp_path / "collection.h5ad")
    again = read("h5ad", tmp_path / "collection.h5ad", SLIDE, "human")
    assert list(again.obs_names) == list(original.obs_names)
    np.testing.assert_array_equal(again.X.toarray(), original.X.toarray())
    np.testing.assert_array_equal(again.obsm["spatial"], original.obsm["spatial"])
    assert again.uns["spatial"]["S1"]["scalefactors"] == original.uns["spatial"]["S1"]["scalefactors"]


@pytest.mark.skipif(not (REALDATA / "filtered_feature_bc_matrix.h5").is_file(),
                    reason="real Visium data absent: set SPARED_REALDATA to the folder holding "
                           "visium_spaceranger_v1_subset (see ../shared/realdata/SOURCES.md)")
def test_real_spaceranger_v1_output():
    adata = read("visium_spaceranger", REALDATA, [{"id": "V1", "patient": "P", "split": "train"}], "human")
    assert adata.shape == (100, 100)
    assert adata.obs_names[0] == "V1_AAACAAGTATCTCCCA-1"
    assert adata.var_names.str.startswith("ENSG").all()
    assert adata.var.loc["ENSG00000186092", "gene_symbol"] == "OR4F5"
    assert (adata.obs["array_row"].min(), adata.obs["array_row"].max()) == (3, 71)
    assert (adata.obs["array_col"].min(), adata.obs["array_col"].max()) == (0, 125)
    assert adata.obsm["spatial"][:, 0].min() == 2787 and adata.obsm["spatial"][:, 1].max() == 11026
    factors = adata.uns["spatial"]["V1"]["scalefactors"]
    assert factors["spot_diameter_fullres"] == pytest.approx(89.42751063343188)
    assert factors["tissue_hires_scalef"] == pytest.approx(0.150015)
    assert factors["tissue_lowres_scalef"] == pytest.approx(0.045004502)
    assert adata.uns["spatial"]["V1"]["images"]["hires"].shape == (2000, 2000, 3)
    assert adata.uns["spatial"]["V1"]["images"]["lowres"].shape == (600, 600, 3)
    assert adata.X.sum() == pytest.approx(float(h5py.File(REALDATA / "filtered_feature_bc_matrix.h5")
                                                ["matrix/data"][:].sum()))


# --- errors -------------------------------------------------------------------------------------------------


def test_corrupt_h5_is_a_clear_error(tmp_path):
    write_visium_outs(tmp_path / "S1")
    (tmp_path / "S1" / "filtered_feature_bc_matrix.h5").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ReaderError, match=r"filtered_feature_bc_matrix.h5 is not a readable HDF5.*download it again"):
        read("visium_spaceranger", tmp_path, SLIDE, "human")


def test_truncated_image_is_a_clear_error(tmp_path):
    write_visium_outs(tmp_path / "S1")
    png = tmp_path / "S1" / "spatial" / "tissue_hires_image.png"
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    with pytest.raises(ReaderError, match=r"could not read image .*tissue_hires_image.png.*truncated"):
        read("visium_spaceranger", tmp_path, SLIDE, "human")


def test_missing_scalefactors_is_a_clear_error(tmp_path):
    write_visium_outs(tmp_path / "S1")
    (tmp_path / "S1" / "spatial" / "scalefactors_json.json").unlink()
    with pytest.raises(ReaderError, match=r"no scalefactors_json.json found under .*S1"):
        read("visium_spaceranger", tmp_path, SLIDE, "human")


def test_barcodes_absent_from_positions_are_named(tmp_path):
    written = write_visium_outs(tmp_path / "S1")
    pos = written["positions"].reset_index()
    gone = written["barcodes"][:3]
    pos[~pos["barcode"].isin(gone)].to_csv(tmp_path / "S1" / "spatial" / "tissue_positions_list.csv",
                                           header=False, index=False)
    with pytest.raises(ReaderError, match=rf"3 of \d+ barcodes .* absent from .*{gone[0]}"):
        read("visium_spaceranger", tmp_path, SLIDE, "human")


def test_nan_in_positions_is_a_clear_error(tmp_path):
    written = write_visium_outs(tmp_path / "S1")
    pos = written["positions"].reset_index().astype({"pxl_row_in_fullres": float})
    pos.loc[5, "pxl_row_in_fullres"] = np.nan
    pos.to_csv(tmp_path / "S1" / "spatial" / "tissue_positions_list.csv", header=False, index=False)
    with pytest.raises(ReaderError, match=rf"1 spot\(s\) have missing .*{pos.loc[5, 'barcode']} "
                                          r"\(pxl_row_in_fullres\)"):
        read("visium_spaceranger", tmp_path, SLIDE, "human")


def test_missing_slide_folder_and_mismatched_triplet(tmp_path):
    write_visium_outs(tmp_path / "S1", counts_format="mtx")
    with pytest.raises(ReaderError, match=r"folder .*nowhere does not exist"):
        read("visium_spaceranger", tmp_path, [{"id": "S1", "patient": "P", "path": "nowhere"}], "human")
    features = tmp_path / "S1" / "filtered_feature_bc_matrix" / "features.tsv"
    features.write_text("\n".join(features.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(ReaderError, match="do not belong together"):
        read("visium_spaceranger", tmp_path, SLIDE, "human")


def test_symbol_only_features_are_mapped_and_ambiguity_reported(tmp_path):
    """Features whose ids are symbols: mapped with GENCODE, shared symbols reported, duplicates summed."""
    from spared.annotation import GeneMappingWarning

    genes = [(s, s) for _, s in GENES] + [("MATR3", "MATR3"), ("TBCE", "TBCE"), ("TBCE", "TBCE"),
                                           ("OLD_NAME1", "OLD_NAME1")]
    written = write_visium_outs(tmp_path / "S1", genes=genes)
    with pytest.warns(GeneMappingWarning, match=r"9 of 10 genes \(90.0%\).*OLD_NAME1.*MATR3 -> ENSG00000015479"):
        adata = read("visium_spaceranger", tmp_path, SLIDE, "human")
    assert list(adata.var_names) == [g[0].split(".")[0] for g in GENES] + ["ENSG00000015479", "ENSG00000284770"]
    report = adata.uns["spared"]["reader"]["slides"]["S1"]
    assert report["n_genes_by_symbol"] == 10 and report["n_genes_unmapped"] == 1
    assert report["n_genes_ambiguous"] == 3 and report["n_genes_merged"] == 1
    kept = expected_in_tissue(written)
    np.testing.assert_array_equal(adata.X.toarray()[:, -1], written["counts"][kept][:, 7:9].sum(axis=1))


def test_too_few_known_symbols_fail_naming_the_organism(tmp_path):
    mouse = [("Gapdh", "Gapdh"), ("Actb", "Actb"), ("Trp53", "Trp53"), ("Myc", "Myc"), ("TP53", "TP53")]
    write_visium_outs(tmp_path / "S1", genes=mouse)
    with pytest.raises(ReaderError, match=r"only 1 of 5 genes.*human annotation.*is the organism 'mouse'"):
        read("visium_spaceranger", tmp_path, SLIDE, "human")
    with pytest.warns(UserWarning, match="1 of 5 genes"):
        adata = read("visium_spaceranger", tmp_path, SLIDE, "human", min_mapped_fraction=0)
    assert list(adata.var_names) == ["ENSG00000141510"]
    with pytest.warns(UserWarning, match=r"4 of 5 genes.*'TP53'"):
        assert read("visium_spaceranger", tmp_path, SLIDE, "mouse").n_vars == 4

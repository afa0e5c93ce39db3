"""Legacy Spatial Transcriptomics reader: count tables, spot files (and their variants), the array-grid fit,
image checks, the 8-neighbour graph and patch centres, on sections written here; her2st sections when present."""

import gzip
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spared.io.readers import ReaderError, read
from spared.io.readers.st import fit_array_grid, read_count_table, read_spot_file

# A rotated, anisotropic-free ST array: 290 px pitch (≈ 0.69 µm/px), as in her2st's JPEGs.
PITCH = 290.0
ANGLE = np.deg2rad(1.5)
AFFINE = PITCH * np.array([[np.cos(ANGLE), np.sin(ANGLE)], [-np.sin(ANGLE), np.cos(ANGLE)]])
OFFSET = np.array([-350.0, -420.0])


def human_symbols(n: int) -> list[str]:
    """``n`` protein-coding human gene symbols that map to exactly one Ensembl id."""
    from spared.annotation import gene_table

    table = gene_table("human")
    coding = table[table["gene_type"] == "protein_coding"]["gene_symbol"]
    unique = coding[~coding.duplicated(keep=False)]
    return unique.iloc[:n].tolist()


def write_section(folder: Path, name: str = "S1", *, seed: int = 0, n_genes: int = 40, genes_by_spots=False,
                  spot_sep="\t", selected_column=True, drop_counts: int = 2, unselected: int = 3,
                  image: str | None = "jpg", gz: bool = True) -> dict:
    """An ST section: a 10 × 8 spot grid, some spots unselected, some selected spots without counts."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    xs, ys = np.meshgrid(np.arange(3, 13), np.arange(4, 12))
    xy = np.column_stack([xs.ravel(), ys.ravel()])
    refined = xy + rng.normal(0, 0.03, xy.shape)
    pixels = refined @ AFFINE.T + OFFSET
    selected = np.ones(len(xy), dtype=bool)
    selected[rng.choice(len(xy), unselected, replace=False)] = False
    spots = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "new_x": refined[:, 0].round(3),
                          "new_y": refined[:, 1].round(3), "pixel_x": pixels[:, 0].round(2),
                          "pixel_y": pixels[:, 1].round(2), "selected": selected.astype(int)})
    if not selected_column:
        spots = spots[selected].drop(columns="selected")
    spot_path = folder / f"{name}_selection.tsv"
    spots.to_csv(spot_path, sep=spot_sep, index=False)
    counted = np.flatnonzero(selected)[drop_counts:]
    counted = np.concatenate([counted, np.flatnonzero(~selected)[:1]])  # one counted spot outside the selection
    genes = human_symbols(n_genes)
    counts = pd.DataFrame(rng.poisson(3.0, (counted.size, n_genes)), columns=genes,
                          index=[f"{x}x{y}" for x, y in xy[counted]])
    counts_path = folder / (f"{name}.tsv.gz" if gz else f"{name}.tsv")
    table = counts.T if genes_by_spots else counts
    with (gzip.open(counts_path, "wt") if gz else open(counts_path, "w")) as fh:
        table.to_csv(fh, sep="\t")
    out = {"spots": spots, "counts": counts, "selected": selected, "xy": xy, "pixels": pixels,
           "spot_path": spot_path, "counts_path": counts_path, "image_path": None}
    if image:
        out["image_path"] = write_marked_image(folder / f"{name}_HE.{image}", pixels, (3600, 3200))
    return out


def write_marked_image(path: Path, pixels: np.ndarray, size: tuple[int, int]) -> Path:
    """A grey image with a 5 × 5 dark dot centred on each spot's pixel coordinate."""
    from PIL import Image

    width, height = size
    array = np.full((height, width, 3), 200, dtype=np.uint8)
    for x, y in np.rint(pixels).astype(int):
        array[y - 2:y + 3, x - 2:x + 3] = (20, 40, 120)
    Image.fromarray(array).save(path, quality=95)
    return path


SLIDE = {"id": "S1", "patient": "P1", "split": "train"}


def read_one(folder: Path, **slide) -> object:
    return read("st", folder, [{**SLIDE, **slide}], "human")


def test_section_is_joined_on_array_positions_and_follows_the_data_model(tmp_path):
    written = write_section(tmp_path / "S1")
    adata = read_one(tmp_path)
    spots, counts = written["spots"], written["counts"]
    chosen = spots[spots["selected"] == 1]
    keys = chosen["x"].astype(str) + "x" + chosen["y"].astype(str)
    expected = [k for k in counts.index if k in set(keys)]
    assert adata.obs["barcode"].tolist() == expected
    assert adata.obs_names[0] == f"S1_{expected[0]}"
    by_key = chosen.set_index(keys)
    np.testing.assert_allclose(adata.obsm["spatial"], by_key.loc[expected, ["pixel_x", "pixel_y"]].to_numpy())
    np.testing.assert_array_equal(adata.obs["array_col"], by_key.loc[expected, "x"])
    np.testing.assert_array_equal(adata.obs["array_row"], by_key.loc[expected, "y"])
    assert adata.n_vars == counts.shape[1] and adata.var_names.str.startswith("ENSG").all()
    symbols = adata.var["gene_symbol"].to_numpy()
    np.testing.assert_array_equal(adata.X.toarray(), counts.loc[expected, symbols].to_numpy())
    report = adata.uns["spared"]["reader"]["slides"]["S1"]
    assert report["n_spots_selected"] == int(written["selected"].sum())
    assert report["n_selected_without_counts"] == 2 and len(report["selected_without_counts"]) == 2
    assert report["n_counted_not_selected"] == 1
    assert (report["technology"], report["geometry"], report["format"]) == ("ST", "square", "st")


def test_spot_diameter_is_half_the_fitted_pitch_and_the_image_is_recorded(tmp_path):
    write_section(tmp_path / "S1")
    adata = read_one(tmp_path)
    entry = adata.uns["spatial"]["S1"]
    assert entry["scalefactors"]["spot_diameter_fullres"] == pytest.approx(PITCH / 2, rel=2e-3)
    assert entry["fullres_path"].endswith("S1_HE.jpg")
    hires = entry["images"]["hires"]
    assert max(hires.shape[:2]) == 2000 and entry["scalefactors"]["tissue_hires_scalef"] == pytest.approx(2000 / 3600)
    report = adata.uns["spared"]["reader"]["slides"]["S1"]
    assert report["microns_per_pixel"] == pytest.approx(200 / PITCH, rel=2e-3)


def test_reader_options_set_the_array_dimensions(tmp_path):
    write_section(tmp_path / "S1", image=None)
    adata = read("st", tmp_path, [SLIDE], "human", options={"spot_diameter_um": 110, "spot_pitch_um": 150})
    assert adata.uns["spatial"]["S1"]["scalefactors"]["spot_diameter_fullres"] == pytest.approx(
        PITCH * 110 / 150, rel=2e-3)
    with pytest.raises(ReaderError, match=r"reader 'st' has no option\(s\) \['spot_size'\].*spot_diameter_um"):
        read("st", tmp_path, [SLIDE], "human", options={"spot_size": 3})


def test_grid_fit_recovers_a_known_affine_map_and_rejects_a_misplaced_spot():
    rng = np.random.default_rng(1)
    xy = np.column_stack([rng.integers(0, 33, 300), rng.integers(0, 35, 300)]).astype(float)
    pixels = xy @ AFFINE.T + OFFSET + rng.normal(0, 2.0, xy.shape)
    pixels[7] += 400.0
    fit = fit_array_grid(xy, pixels)
    assert fit.pitch_px == pytest.approx(PITCH, rel=2e-3)
    assert fit.n_outliers == 1 and fit.rmse_px < 4
    assert fit.anisotropy < 0.01
    reference, *_ = np.linalg.lstsq(np.column_stack([np.delete(xy, 7, 0), np.ones(299)]), np.delete(pixels, 7, 0),
                                    rcond=None)
    np.testing.assert_allclose(fit.matrix, reference, rtol=1e-9, atol=1e-6)
    line = fit_array_grid(np.column_stack([np.arange(5.0), np.zeros(5)]), np.column_stack([np.arange(5) * 200.0,
                                                                                            np.full(5, 9.0)]))
    assert line.pitch_px == pytest.approx(200.0)
    with pytest.raises(ValueError, match="at least two spots"):
        fit_array_grid(np.zeros((3, 2)), np.zeros((3, 2)))


@pytest.mark.parametrize("variant", ["genes_by_spots", "plain_tsv", "comma_spots", "no_selected", "decimals"])
def test_file_variants_read_alike(tmp_path, variant):
    base = write_section(tmp_path / "base" / "S1", image=None)
    reference = read_one(tmp_path / "base")
    options = {"genes_by_spots": {"genes_by_spots": True}, "plain_tsv": {"gz": False},
               "comma_spots": {"spot_sep": ","}, "no_selected": {"selected_column": False}, "decimals": {}}[variant]
    written = write_section(tmp_path / "v" / "S1", image=None, **options)
    if variant == "decimals":
        table = pd.read_csv(written["counts_path"], sep="\t", index_col=0).astype(float)
        table.index = [f"{float(x):.2f}x{float(y):.2f}" for x, y in (k.split("x") for k in table.index)]
        with gzip.open(written["counts_path"], "wt") as fh:
            table.to_csv(fh, sep="\t", float_format="%.1f")
    adata = read_one(tmp_path / "v")
    np.testing.assert_array_equal(adata.obs_names, reference.obs_names)
    np.testing.assert_array_equal(adata.X.toarray(), reference.X.toarray())
    np.testing.assert_allclose(adata.obsm["spatial"], reference.obsm["spatial"])
    assert base["counts"].shape[1] == adata.n_vars


def test_stnet_spot_csv_with_xy_names_and_pixel_columns(tmp_path):
    written = write_section(tmp_path / "S1", image=None)
    spots = written["spots"]
    chosen = spots[spots["selected"] == 1]
    stnet = pd.DataFrame({"X": chosen["pixel_x"].to_numpy(), "Y": chosen["pixel_y"].to_numpy()},
                         index=chosen["x"].astype(str) + "x" + chosen["y"].astype(str))
    written["spot_path"].unlink()
    with gzip.open(tmp_path / "S1" / "spots_S1.csv.gz", "wt") as fh:
        stnet.to_csv(fh)
    parsed = read_spot_file(tmp_path / "S1" / "spots_S1.csv.gz")
    np.testing.assert_array_equal(parsed[["x", "y"]].to_numpy(), chosen[["x", "y"]].to_numpy())
    np.testing.assert_allclose(parsed[["pixel_x", "pixel_y"]].to_numpy(), chosen[["pixel_x", "pixel_y"]].to_numpy())
    adata = read_one(tmp_path)
    assert adata.n_obs == len(chosen) - 2
    # without new_x/new_y the pitch comes from the integer grid, a little less exact
    assert adata.uns["spatial"]["S1"]["scalefactors"]["spot_diameter_fullres"] == pytest.approx(PITCH / 2, rel=1e-2)


def test_integer_fast_path_matches_pandas(tmp_path):
    rng = np.random.default_rng(3)
    values = rng.negative_binomial(1, 0.05, (30, 400))
    values[0, :5] = [0, 10, 123456, 7, 99]
    table = pd.DataFrame(values, index=[f"{i}x{i + 1}" for i in range(30)],
                         columns=[f"G{j}" for j in range(400)])
    for sep, name in (("\t", "c.tsv"), (",", "c.csv")):
        table.to_csv(tmp_path / name, sep=sep)
        counts = read_count_table(tmp_path / name)
        np.testing.assert_array_equal(counts.matrix.toarray(), values)
        np.testing.assert_array_equal(counts.xy, [[i, i + 1] for i in range(30)])


def test_count_table_without_coordinate_names_is_an_error(tmp_path):
    write_section(tmp_path / "S1", image=None)
    bad = pd.DataFrame(np.ones((3, 2), dtype=int), index=["spot_a", "spot_b", "spot_c"], columns=["A1BG", "NAT2"])
    with gzip.open(tmp_path / "S1" / "S1.tsv.gz", "wt") as fh:
        bad.to_csv(fh, sep="\t")
    with pytest.raises(ReaderError, match=r"count table .*S1\.tsv\.gz: expected spot names 'XxY'.*found rows "
                                          r"'spot_a', 'spot_b', 'spot_c' and columns 'A1BG', 'NAT2'"):
        read_one(tmp_path)


def test_count_table_with_some_bad_names_names_them(tmp_path):
    path = tmp_path / "c.tsv"
    pd.DataFrame(np.ones((4, 2), dtype=int), index=["1x2", "3x4", "5x6", "total"], columns=["A", "B"]).to_csv(
        path, sep="\t")
    with pytest.raises(ReaderError, match=r"c\.tsv: 1 spot name\(s\) in the first column are not 'XxY'.*'total'"):
        read_count_table(path)


def test_spot_file_with_missing_columns_is_an_error(tmp_path):
    written = write_section(tmp_path / "S1", image=None)
    written["spots"].drop(columns=["pixel_x", "pixel_y"]).to_csv(written["spot_path"], sep="\t", index=False)
    with pytest.raises(ReaderError, match=r"spot file .*S1_selection\.tsv: expected pixel coordinates "
                                          r"\('pixel_x', 'pixel_y'.*found columns \['x', 'y', 'new_x', 'new_y', "
                                          r"'selected'\]"):
        read_one(tmp_path)
    written["spots"].drop(columns=["x", "y"]).to_csv(written["spot_path"], sep="\t", index=False)
    with pytest.raises(ReaderError, match=r"expected array coordinates \('x', 'y', or 'XxY' spot names"):
        read_one(tmp_path)


def test_image_smaller_than_the_spot_coordinates_is_an_error(tmp_path):
    written = write_section(tmp_path / "S1", image=None)
    write_marked_image(tmp_path / "S1" / "S1_HE.jpg", written["pixels"][:0], (1800, 1600))
    with pytest.raises(ReaderError, match=r"image .*S1_HE\.jpg is 1800×1600 px, but spot file .*S1_selection\.tsv "
                                          r"places \d+ of \d+ selected spots outside it .*up to x=3\d\d\d.*"
                                          r"smaller than the spot coordinates imply"):
        read_one(tmp_path)


def test_sections_that_share_no_spot_or_select_nothing_are_errors(tmp_path):
    written = write_section(tmp_path / "S1", image=None)
    spots = written["spots"].assign(x=written["spots"]["x"] + 100)
    spots.to_csv(written["spot_path"], sep="\t", index=False)
    with pytest.raises(ReaderError, match=r"none of the \d+ spots of .*S1\.tsv\.gz is a selected spot"):
        read_one(tmp_path)
    written["spots"].assign(selected=0).to_csv(written["spot_path"], sep="\t", index=False)
    with pytest.raises(ReaderError, match="no spot is selected"):
        read_one(tmp_path)


def test_files_are_found_by_slide_id_in_a_shared_folder_or_named_explicitly(tmp_path):
    for name, seed in (("A1", 0), ("A10", 1)):
        written = write_section(tmp_path / "flat", name, seed=seed, image=None)
    slides = [{"id": "A1", "patient": "A", "split": "train", "path": "flat"},
              {"id": "A10", "patient": "A", "split": "val", "path": "flat"}]
    adata = read("st", tmp_path, slides, "human")
    assert adata.obs["slide_id"].value_counts().to_dict() == {"A1": 75, "A10": 75}
    explicit = [{**SLIDE, "path": "flat", "counts": "flat/A10.tsv.gz", "spots": written["spot_path"].relative_to(
        tmp_path).as_posix()}]
    assert read("st", tmp_path, explicit, "human").obs["barcode"].tolist() == adata[
        adata.obs["slide_id"] == "A10"].obs["barcode"].tolist()
    (tmp_path / "flat" / "A10_selection.tsv").rename(tmp_path / "flat" / "A10_spots.tsv")
    (tmp_path / "flat" / "A1_spots.tsv").write_text((tmp_path / "flat" / "A1_selection.tsv").read_text())
    with pytest.raises(ReaderError, match=r"several candidate spot files for slide 'A1'.*'spots'"):
        read("st", tmp_path, slides[:1], "human")
    with pytest.raises(ReaderError, match=r"the catalogue names counts file .*nope\.tsv, which does not exist"):
        read("st", tmp_path, [{**SLIDE, "counts": "nope.tsv"}], "human")


def test_genes_a_section_did_not_detect_are_zeros_not_dropped(tmp_path):
    write_section(tmp_path / "A", "A", image=None, n_genes=40)
    write_section(tmp_path / "B", "B", seed=1, image=None, n_genes=30)
    slides = [{"id": "A", "patient": "p", "split": "train"}, {"id": "B", "patient": "q", "split": "val"}]
    adata = read("st", tmp_path, slides, "human")
    symbols = human_symbols(40)
    assert adata.n_vars == 40 and set(adata.var["gene_symbol"]) == set(symbols)
    absent = adata.var["gene_symbol"].isin(symbols[30:]).to_numpy()
    in_b = (adata.obs["slide_id"] == "B").to_numpy()
    assert adata.X[in_b][:, absent].nnz == 0 and adata.X[~in_b][:, absent].nnz > 0
    reports = adata.uns["spared"]["reader"]["slides"]
    assert (reports["A"]["n_genes_absent_as_zero"], reports["B"]["n_genes_absent_as_zero"]) == (0, 10)
    assert adata.uns["spared"]["reader"]["n_genes_dropped_intersection"] == 0


def test_the_spot_graph_is_the_8_neighbour_square_grid(tmp_path):
    from spared.graph import spatial_graph

    write_section(tmp_path / "S1", image=None, drop_counts=0, unselected=0)
    adata = read_one(tmp_path)
    graph = spatial_graph(adata, n_neighs=8)
    cols, rows = adata.obs["array_col"].to_numpy(), adata.obs["array_row"].to_numpy()
    for i in range(adata.n_obs):
        interior = 3 < cols[i] < 12 and 4 < rows[i] < 11
        if not interior:
            continue
        expected = {j for j in range(adata.n_obs) if j != i
                    and abs(cols[j] - cols[i]) <= 1 and abs(rows[j] - rows[i]) <= 1}
        assert set(graph[i].indices) == expected


def test_local_st_sections_default_to_the_square_grid_and_hex_is_warned(tmp_path):
    from spared.config import ProcessingConfig
    from spared.datasets import get_local
    from spared.pp import process

    write_section(tmp_path / "S1", image=None, n_genes=60, drop_counts=0, unselected=0)
    settings = {"top_moran_genes": 8, "complete_missing": False, "gene_min_counts": 1, "cell_min_counts": 1}
    out = get_local(tmp_path / "S1", settings, format="st", out_dir=tmp_path / "cache", patches=False,
                    progress=False)
    assert json.loads(out.uns["spared"]["config"])["hex_geometry"] is False
    raw = read_one(tmp_path)
    with pytest.warns(UserWarning, match=r"reader records a square lattice but hex_geometry=True.*use 8 neighbours"):
        hexed = process(raw, ProcessingConfig(**settings), progress=False, copy=True)
    assert hexed.uns["spared"]["geometry"] == "square"


def test_patches_are_centred_on_the_spot_file_pixel_coordinates(tmp_path):
    from spared.io.patches import PatchStore, extract_patches

    written = write_section(tmp_path / "S1", image="png")
    adata = read_one(tmp_path)
    side = adata.uns["spatial"]["S1"]["scalefactors"]["spot_diameter_fullres"]
    extract_patches(adata, tmp_path / "p.h5", patch_size=round(side), progress=False)
    patches = PatchStore(tmp_path / "p.h5")[:]
    dark = patches.sum(axis=-1) < 300
    centre = (patches.shape[1] - 1) / 2
    for patch in dark:
        ys, xs = np.nonzero(patch)
        assert abs(xs.mean() - centre) <= 1.0 and abs(ys.mean() - centre) <= 1.0
    assert dark.any(axis=(1, 2)).all() and written["image_path"].suffix == ".png"


def test_big_jpegs_open_without_changing_the_global_pixel_limit(tmp_path, monkeypatch):
    from PIL import Image

    from spared.io.readers.bigimages import decode_jpeg, image_size, thumbnail
    from spared.io.readers.images import read_image

    path = tmp_path / "big.jpg"
    Image.fromarray(np.full((300, 400, 3), 90, dtype=np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert image_size(path) == (400, 300)
        assert read_image(path).shape == (300, 400, 3)
        assert decode_jpeg(path).shape == (300, 400, 3)
        small, factor = thumbnail(path, 100)
    assert small.shape == (75, 100, 3) and factor == pytest.approx(0.25)
    assert Image.MAX_IMAGE_PIXELS == 1000
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)


def test_truncated_jpeg_is_a_clear_error(tmp_path):
    from spared.io.readers.images import read_image

    path = write_marked_image(tmp_path / "t.jpg", np.zeros((0, 2)), (400, 300))
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ReaderError, match=r"could not read image .*t\.jpg.*truncated or corrupt"):
        read_image(path)


# ---------------------------------------------------------------- her2st (real data) ----

HER2ST_SECTIONS = {"A1": ("A", "train"), "B4": ("B", "train"), "C2": ("C", "val"), "C3": ("C", "test")}


def her2st_slides(root: Path, sections=HER2ST_SECTIONS) -> list[dict]:
    return [{"id": s, "patient": p, "split": split, "counts": f"ST-cnts/{s}.tsv.gz",
             "spots": f"ST-spotfiles/{s}_selection.tsv"} for s, (p, split) in sections.items()]


def expected_from_files(root: Path, section: str) -> tuple[int, int, int]:
    """(selected spots, selected spots with counts, genes in the table), read with pandas from the files."""
    spots = pd.read_csv(root / "ST-spotfiles" / f"{section}_selection.tsv", sep="\t")
    chosen = set(spots.loc[spots["selected"] == 1, "x"].astype(str) + "x"
                  + spots.loc[spots["selected"] == 1, "y"].astype(str))
    counts = pd.read_csv(root / "ST-cnts" / f"{section}.tsv.gz", sep="\t", index_col=0, usecols=[0, 1])
    with gzip.open(root / "ST-cnts" / f"{section}.tsv.gz", "rt") as fh:
        n_genes = len(fh.readline().rstrip("\n").split("\t")) - 1
    return len(chosen), len(chosen & set(counts.index)), n_genes


def test_her2st_sections_match_their_files(realdata):
    root = realdata / "her2st"
    adata = read("st", root, her2st_slides(root, {"A1": ("A", "train"), "C2": ("C", "val")}), "human")
    reports = adata.uns["spared"]["reader"]["slides"]
    for section in ("A1", "C2"):
        n_selected, n_counted, n_genes = expected_from_files(root, section)
        report = reports[section]
        assert (report["n_spots_selected"], report["n_spots"], report["n_genes_read"]) == (
            n_selected, n_counted, n_genes)
        assert int((adata.obs["slide_id"] == section).sum()) == n_counted
        assert report["n_genes_unmapped"] < 0.06 * n_genes
    assert (reports["A1"]["n_spots_selected"], reports["A1"]["n_spots"]) == (348, 346)
    assert reports["A1"]["selected_without_counts"] == ["17x14", "18x20"]
    # A1's spot file maps array to pixels exactly (new_x/new_y); the pitch sets a 109 px spot
    assert reports["A1"]["grid_rmse_px"] < 0.1
    assert adata.uns["spatial"]["A1"]["scalefactors"]["spot_diameter_fullres"] == pytest.approx(109.0, abs=0.5)


@pytest.mark.slow
def test_her2st_through_the_protocol_with_graph_and_patch_centres(realdata, tmp_path):
    from spared.catalog import load_spec
    from spared.graph import spatial_graph
    from spared.io.patches import PatchStore, extract_patches
    from spared.pp import process

    root = realdata / "her2st"
    slides = her2st_slides(root, {"B4": ("B", "train"), "C2": ("C", "val"), "C3": ("C", "test")})
    slides[0]["image"] = "ST-imgs/B/B4/BT10737_D2_HE.jpg"
    from PIL import Image

    with warnings.catch_warnings():  # the 92-megapixel JPEG is above PIL's limit: no bomb warning may escape
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        raw = read("st", root, slides, "human")
    assert Image.MAX_IMAGE_PIXELS is not None and 9272 * 9923 > Image.MAX_IMAGE_PIXELS  # the limit stays in force
    for section in ("B4", "C2", "C3"):
        assert int((raw.obs["slide_id"] == section).sum()) == expected_from_files(root, section)[1]
    cfg = load_spec("andersson_human_breast_cancer").processing_config().replace(complete_missing=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        out = process(raw, cfg, progress=False, dataset="her2st", copy=True)
    assert out.n_vars == 256 and 0 < out.n_obs <= raw.n_obs
    assert set(out.obs["slide_id"]) == {"B4", "C2", "C3"}
    assert cfg.n_neighs == 8
    # interior spots of the processed B4 section: the 8-nearest graph is the 3 × 3 block around each spot
    b4 = raw[raw.obs["slide_id"] == "B4"]
    graph = spatial_graph(b4, n_neighs=8)
    cols, rows = b4.obs["array_col"].to_numpy(), b4.obs["array_row"].to_numpy()
    position = {(c, r): i for i, (c, r) in enumerate(zip(cols, rows, strict=True))}
    checked = 0
    for i, (c, r) in enumerate(zip(cols, rows, strict=True)):
        block = {position.get((c + dc, r + dr)) for dc in (-1, 0, 1) for dr in (-1, 0, 1) if (dc, dr) != (0, 0)}
        if None not in block:
            assert set(graph[i].indices) == block
            checked += 1
    assert checked > 100
    # a patch of B4 cut at full resolution (no resampling) is the image window centred on pixel_x, pixel_y
    b4_out = out[out.obs["slide_id"] == "B4"].copy()
    side = 64
    b4_out.uns["spatial"]["B4"]["scalefactors"]["spot_diameter_fullres"] = float(side)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        extract_patches(b4_out, tmp_path / "b4.h5", patch_size=side, progress=False)
    patches = PatchStore(tmp_path / "b4.h5")[:8]
    from spared.io.readers.images import read_image

    image = read_image(root / "ST-imgs" / "B" / "B4" / "BT10737_D2_HE.jpg")
    spots = pd.read_csv(root / "ST-spotfiles" / "B4_selection.tsv", sep="\t")
    spots.index = spots["x"].astype(str) + "x" + spots["y"].astype(str)
    for patch, barcode in zip(patches, b4_out.obs["barcode"][:8], strict=True):
        px, py = spots.loc[barcode, ["pixel_x", "pixel_y"]]
        errors = {}
        for dy in range(-3, 4):
            for dx in range(-3, 4):
                x0, y0 = round(px - side / 2) + dx, round(py - side / 2) + dy
                window = image[y0:y0 + side, x0:x0 + side].astype(float)
                errors[(dx, dy)] = np.abs(window - patch).mean()
        best = min(errors, key=errors.get)
        assert max(abs(best[0]), abs(best[1])) <= 1, (barcode, best, errors[best])

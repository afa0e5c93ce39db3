"""HEST-1k samples in HEST's documented layout (st/<id>.h5ad, metadata/<id>.json, wsis/<id>.tif,
patches/<id>.h5), written here from simulated slides, read into the spared data model and run through the
protocol, SpaCKLE and the benchmark."""

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spared.io.readers import ReaderError, read
from spared.io.readers.hest import read_hest, read_hest_patches

DIAMETER_PX = 24.0
PIXEL_SIZE = 55.0 / DIAMETER_PX  # µm per pixel, so a 55 µm Visium spot spans 24 px
HEST_PATCH = 32


def hest_metadata(sample: str, technology: str, patient: str | None, width: int, height: int, n: int,
                  spot_diameter: float = 55.0, inter_spot_dist: float = 100.0) -> dict:
    """The fields of a HEST metadata JSON that spared reads, plus a few it ignores."""
    return {"id": sample, "dataset_title": "simulated", "organ": "Breast", "species": "Homo sapiens",
            "st_technology": technology, "patient": patient, "oncotree_code": "IDC",
            "pixel_size_um_estimated": PIXEL_SIZE, "pixel_size_um_embedded": PIXEL_SIZE * 1.01,
            "spot_diameter": spot_diameter, "inter_spot_dist": inter_spot_dist, "fullres_px_width": width,
            "fullres_px_height": height, "spots_under_tissue": n, "magnification": "20x"}


def write_hest_sample(folder: Path, sample: str, slide, technology: str = "Visium", patient: str | None = None,
                      pyramidal: bool = True, n_outside: int = 3) -> dict:
    """One simulated slide written as a HEST sample (a dark 3 × 3 dot marks each spot centre on the WSI); a few
    extra spots are outside the tissue."""
    import anndata as ad
    import h5py
    import scipy.sparse as sp
    import tifffile

    for sub in ("st", "metadata", "wsis", "patches"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    slide_id = slide.obs["slide_id"].iloc[0]
    image = np.array(slide.uns["spatial"][slide_id]["images"]["hires"])  # hires scale factor 1: full resolution
    height, width = image.shape[:2]
    coords = np.asarray(slide.obsm["spatial"], dtype=np.float64)
    for x, y in np.floor(coords).astype(int):
        image[y - 1:y + 2, x - 1:x + 2] = 0
    counts = sp.csr_matrix(slide.X)
    extra = sp.csr_matrix(np.ones((n_outside, slide.n_vars), dtype=np.float32))
    barcodes = [f"{b.split('_', 1)[1]}" for b in slide.obs_names] + [f"OUT{i}" for i in range(n_outside)]
    obs = pd.DataFrame({
        "in_tissue": [1] * slide.n_obs + [0] * n_outside,
        "pxl_col_in_fullres": np.concatenate([coords[:, 0], np.full(n_outside, 5.0)]),
        "pxl_row_in_fullres": np.concatenate([coords[:, 1], np.full(n_outside, 5.0)]),
        "array_row": np.concatenate([slide.obs["array_row"].to_numpy(), np.arange(n_outside) + 1000]),
        "array_col": np.concatenate([slide.obs["array_col"].to_numpy(), np.arange(n_outside) + 1000]),
        "total_counts": 0.0,
    }, index=barcodes)
    var = pd.DataFrame({"mito": False}, index=slide.var["gene_symbol"].to_numpy())
    adata = ad.AnnData(X=sp.vstack([counts, extra]).tocsr(), obs=obs, var=var)
    adata.obsm["spatial"] = obs[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy()
    factor = 0.5
    small = image[::2, ::2]
    adata.uns["spatial"] = {"ST": {"images": {"downscaled_fullres": small},
                                   "scalefactors": {"spot_diameter_fullres": DIAMETER_PX,
                                                    "tissue_downscaled_fullres_scalef": factor}}}
    adata.write_h5ad(folder / "st" / f"{sample}.h5ad")
    meta = hest_metadata(sample, technology, patient, width, height, slide.n_obs)
    (folder / "metadata" / f"{sample}.json").write_text(json.dumps(meta))
    with tifffile.TiffWriter(folder / "wsis" / f"{sample}.tif") as tif:
        if pyramidal:
            tif.write(image, subifds=1, tile=(64, 64), photometric="rgb")
            tif.write(image[::2, ::2], subfiletype=1, tile=(64, 64), photometric="rgb")
        else:
            tif.write(image, photometric="rgb")
    padded = np.pad(image, ((HEST_PATCH, HEST_PATCH), (HEST_PATCH, HEST_PATCH), (0, 0)), constant_values=255)
    top_left = np.rint(coords).astype(int) - HEST_PATCH // 2
    img = np.stack([padded[y + HEST_PATCH:y + 2 * HEST_PATCH, x + HEST_PATCH:x + 2 * HEST_PATCH]
                    for x, y in top_left])
    with h5py.File(folder / "patches" / f"{sample}.h5", "w") as f:
        f["img"] = img
        f["coords"] = top_left
        f["barcode"] = np.array(barcodes[:slide.n_obs], dtype="S")[:, None]
    return {"sample": sample, "barcodes": barcodes[:slide.n_obs], "coords": coords, "image": image,
            "counts": sp.csr_matrix(slide.X).toarray(), "symbols": slide.var["gene_symbol"].to_numpy()}


@pytest.fixture(scope="module")
def hest_folder(tmp_path_factory):
    """Three Visium samples of two patients in a HEST folder (built once for the module)."""
    from spared.synthetic import make_collection

    collection = make_collection(n_slides=3, n_spots=220, n_genes=96, seed=4, spot_diameter_px=DIAMETER_PX)
    folder = tmp_path_factory.mktemp("hest")
    written = {}
    for (sample, patient, pyramidal), slide_id in zip((("TENX1", "P1", True), ("TENX2", "P1", False),
                                                       ("TENX3", "P2", True)), pd.unique(collection.obs["slide_id"]),
                                                      strict=True):
        slide = collection[collection.obs["slide_id"] == slide_id].copy()
        written[sample] = write_hest_sample(folder, sample, slide, patient=patient, pyramidal=pyramidal)
    return folder, written


def test_samples_are_read_into_the_data_model(hest_folder):
    folder, written = hest_folder
    adata = read_hest(folder, ["TENX1", "TENX2", "TENX3"])
    assert adata.obs.groupby("slide_id", observed=True).size().to_dict() == {"TENX1": 220, "TENX2": 220,
                                                                             "TENX3": 220}
    assert adata.obs.groupby("slide_id", observed=True)["split"].first().to_dict() == {
        "TENX1": "train", "TENX2": "train", "TENX3": "val"}
    assert adata.obs.groupby("slide_id", observed=True)["patient"].first().to_dict() == {
        "TENX1": "P1", "TENX2": "P1", "TENX3": "P2"}
    first = adata[adata.obs["slide_id"] == "TENX1"]
    assert first.obs["barcode"].tolist() == written["TENX1"]["barcodes"]
    np.testing.assert_allclose(first.obsm["spatial"], written["TENX1"]["coords"])
    symbols = pd.Index(written["TENX1"]["symbols"])
    np.testing.assert_array_equal(first.X.toarray(),
                                  np.asarray(written["TENX1"]["counts"])[:, symbols.get_indexer(
                                      first.var["gene_symbol"])])
    entry = adata.uns["spatial"]["TENX1"]
    assert entry["scalefactors"]["spot_diameter_fullres"] == pytest.approx(DIAMETER_PX)
    assert entry["scalefactors"]["tissue_hires_scalef"] == 0.5
    assert entry["fullres_path"].endswith("wsis/TENX1.tif")
    report = adata.uns["spared"]["reader"]["slides"]["TENX1"]
    assert (report["technology"], report["source"], report["geometry"]) == ("Visium", "HEST", "hex")
    assert (report["n_spots_outside_tissue"], report["n_spots_with_hest_patch"]) == (3, 220)
    assert report["microns_per_pixel"] == pytest.approx(PIXEL_SIZE)

    from spared.io.readers import geometry, geometry_label, technology

    assert (technology(adata), geometry(adata), geometry_label(adata)) == ("Visium (HEST)", "hex", "hex (6)")


def test_every_sample_by_default_and_given_splits(hest_folder):
    folder, _ = hest_folder
    adata = read_hest(folder, splits={"TENX1": "train", "TENX2": "val", "TENX3": "test"})
    assert sorted(adata.obs["slide_id"].unique()) == ["TENX1", "TENX2", "TENX3"]
    assert adata.obs.groupby("slide_id", observed=True)["split"].first().to_dict()["TENX2"] == "val"
    single = read_hest(folder, "TENX2")
    assert set(single.obs["split"]) == {"train"}


def test_catalogue_format_hest_reads_slides_under_their_path(hest_folder):
    from spared.catalog import DatasetSpec, FileSpec, SlideSpec, validate_spec

    folder, _ = hest_folder
    spec = validate_spec(DatasetSpec(
        key="hest_toy", title="HEST toy", organism="human", tissue="breast", format="hest", source="huggingface",
        files=(FileSpec(url="https://huggingface.co/datasets/MahmoodLab/hest/resolve/main/st/TENX1.h5ad",
                        filename="hest/st/TENX1.h5ad"),),
        slides=(SlideSpec("TENX1", "P1", "train", folder.name), SlideSpec("TENX3", "P2", "val", folder.name)),
        extra=True))
    adata = read(spec.format, folder.parent, spec.slides, spec.organism)
    assert adata.obs["slide_id"].unique().tolist() == ["TENX1", "TENX3"]
    assert spec.technology_name == "Visium (HEST)" and spec.geometry == "hex"


def test_hest_patches_file_is_readable(hest_folder):
    folder, written = hest_folder
    patches = read_hest_patches(folder / "patches" / "TENX1.h5")
    assert patches["img"].shape == (220, HEST_PATCH, HEST_PATCH, 3)
    assert patches["barcode"].tolist() == written["TENX1"]["barcodes"]
    np.testing.assert_array_equal(patches["coords"] + HEST_PATCH // 2, np.rint(written["TENX1"]["coords"]))


def test_legacy_st_sample_is_a_square_grid(tmp_path):
    from spared.datasets import get_local
    from spared.synthetic import make_collection

    slide = make_collection(n_slides=1, n_spots=150, n_genes=64, seed=2, spot_diameter_px=DIAMETER_PX)
    rows, cols = np.divmod(np.arange(slide.n_obs), 15)
    slide.obs["array_row"], slide.obs["array_col"] = rows, cols
    slide.obsm["spatial"] = np.column_stack([cols, rows]) * 2 * DIAMETER_PX + 30.0
    write_hest_sample(tmp_path / "hest", "ST1", slide, technology="Spatial Transcriptomics", patient=None)
    meta_path = tmp_path / "hest" / "metadata" / "ST1.json"
    meta = json.loads(meta_path.read_text())
    meta.update(spot_diameter=100.0, inter_spot_dist=200.0, pixel_size_um_estimated=100.0 / DIAMETER_PX)
    meta_path.write_text(json.dumps(meta))
    adata = read_hest(tmp_path / "hest")
    report = adata.uns["spared"]["reader"]["slides"]["ST1"]
    assert (report["technology"], report["geometry"]) == ("ST", "square")
    assert adata.obs["patient"].iloc[0] == "ST1"
    processed = get_local(tmp_path / "hest", {"top_moran_genes": 8, "complete_missing": False}, format="hest",
                          slide_id="ST1", out_dir=tmp_path / "cache", patches=False, progress=False)
    assert json.loads(processed.uns["spared"]["config"])["hex_geometry"] is False
    from spared.io.readers import geometry_label

    assert geometry_label(processed) == "square (8)"


def write_broken(tmp_path: Path, hest_folder, change) -> Path:
    import shutil

    folder, _ = hest_folder
    target = tmp_path / "hest"
    shutil.copytree(folder, target)
    change(target)
    return target


def _edit_meta(folder: Path, **changes) -> None:
    path = folder / "metadata" / "TENX1.json"
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


def test_metadata_without_sizes_or_with_unknown_technology_is_an_error(tmp_path, hest_folder):
    import anndata as ad

    def no_sizes(folder):
        _edit_meta(folder, spot_diameter=None, pixel_size_um_estimated="n/a", pixel_size_um_embedded=None)
        path = folder / "st" / "TENX1.h5ad"
        adata = ad.read_h5ad(path)
        del adata.uns["spatial"]
        adata.write_h5ad(path)

    folder = write_broken(tmp_path / "a", hest_folder, no_sizes)
    with pytest.raises(ReaderError, match=r"metadata/TENX1\.json: expected a positive 'spot_diameter' \(µm\) and "
                                          r"'pixel_size_um_estimated'.*found spot_diameter=None"):
        read_hest(folder, ["TENX1"])
    folder = write_broken(tmp_path / "b", hest_folder, lambda f: _edit_meta(f, st_technology="Slide-seq"))
    with pytest.raises(ReaderError, match=r"st_technology 'Slide-seq' is not one of"):
        read_hest(folder, ["TENX1"])
    folder = write_broken(tmp_path / "c", hest_folder, lambda f: _edit_meta(f, species="Mus musculus"))
    with pytest.raises(ReaderError, match=r"TENX1.*Mus musculus.*organism 'human' was requested"):
        read_hest(folder, ["TENX1"], organism="human")
    with pytest.raises(ReaderError, match="cannot tell the organism"):
        read_hest(folder, ["TENX1", "TENX2"])


def test_without_hest_downscaled_image_the_wsi_gives_the_hires_thumbnail(tmp_path, hest_folder):
    import anndata as ad
    from PIL import Image

    from spared.io.readers.bigimages import thumbnail

    def drop_images(folder):
        for sample in ("TENX1", "TENX2"):
            path = folder / "st" / f"{sample}.h5ad"
            adata = ad.read_h5ad(path)
            adata.uns["spatial"]["ST"]["images"] = {}
            adata.write_h5ad(path)

    folder = write_broken(tmp_path, hest_folder, drop_images)
    adata = read_hest(folder, ["TENX1", "TENX2"])
    wsi = hest_folder[1]["TENX1"]["image"]
    for sample in ("TENX1", "TENX2"):  # pyramidal and plain TIFF
        entry = adata.uns["spatial"][sample]
        hires, factor = entry["images"]["hires"], entry["scalefactors"]["tissue_hires_scalef"]
        assert factor == 1.0 and hires.shape == hest_folder[1][sample]["image"].shape
    small, factor = thumbnail(folder / "wsis" / "TENX1.tif", 200)
    expected = np.asarray(Image.fromarray(wsi).resize(small.shape[1::-1], Image.Resampling.BILINEAR))
    assert max(small.shape[:2]) == 200 and factor == pytest.approx(small.shape[1] / wsi.shape[1])
    assert np.abs(small.astype(int) - expected).mean() < 12


def test_wsi_smaller_than_the_coordinates_and_missing_files_are_errors(tmp_path, hest_folder):
    import tifffile

    def small_wsi(folder):
        tifffile.imwrite(folder / "wsis" / "TENX1.tif", np.zeros((40, 50, 3), dtype=np.uint8), photometric="rgb")

    folder = write_broken(tmp_path / "a", hest_folder, small_wsi)
    with pytest.raises(ReaderError, match=r"image .*wsis/TENX1\.tif is 50×40 px, but \d+ of 220 spots lie outside "
                                          r"it .*smaller than the spot coordinates imply"):
        read_hest(folder, ["TENX1"])
    with pytest.raises(ReaderError, match=r"HEST metadata .*metadata/NOPE\.json does not exist"):
        read_hest(hest_folder[0], ["TENX1", "NOPE"])
    with pytest.raises(ReaderError, match=r"HEST sample 'NOPE': .*st/NOPE\.h5ad does not exist"):
        read("hest", hest_folder[0].parent, [{"id": "NOPE", "patient": "p", "path": hest_folder[0].name}], "human")
    with pytest.raises(ReaderError, match=r"is not a HEST folder: expected .*st holding <id>\.h5ad"):
        read_hest(tmp_path)
    folder = write_broken(tmp_path / "b", hest_folder, lambda f: (f / "wsis" / "TENX2.tif").unlink())
    with pytest.warns(UserWarning, match=r"wsis/TENX2\.tif is absent; patches will be cut from HEST's downscaled"):
        adata = read_hest(folder, ["TENX2"])
    assert "fullres_path" not in adata.uns["spatial"]["TENX2"]


@pytest.mark.slow
def test_hest_samples_go_through_the_protocol_spackle_patches_and_benchmark(hest_folder, tmp_path):
    from spared.bench import TrainingConfig, make_specs, run_benchmark
    from spared.config import ProcessingConfig
    from spared.io.atomic import write_h5ad
    from spared.io.patches import PatchStore, extract_patches
    from spared.pp import process

    folder, _ = hest_folder
    raw = read_hest(folder, ["TENX1", "TENX2", "TENX3"])
    cfg = ProcessingConfig(top_moran_genes=16, spackle_max_steps=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        out = process(raw, cfg, progress=False, dataset="hest_toy", copy=True)
    assert {"c_t_log1p", "c_t_deltas", "mask"} <= set(out.layers)
    assert np.isfinite(out.layers["c_t_log1p"]).all()
    extract_patches(out, tmp_path / "p.h5", patch_size=int(DIAMETER_PX), progress=False)
    store = PatchStore(tmp_path / "p.h5")
    # spared's 24 px patch (HEST's spot diameter / pixel size) is centred on the spot's dot, as is HEST's patch
    hest = read_hest_patches(folder / "patches" / "TENX1.h5")
    index = {b: i for i, b in enumerate(hest["barcode"])}
    for i in np.flatnonzero(out.obs["slide_id"] == "TENX1")[:20]:
        for patch, centre in ((store[int(i)], (DIAMETER_PX - 1) / 2),
                              (hest["img"][index[out.obs["barcode"].iloc[i]]], HEST_PATCH / 2)):
            ys, xs = np.nonzero(patch.max(axis=-1) < 40)
            assert abs(xs.mean() - centre) <= 1.0 and abs(ys.mean() - centre) <= 1.0
    path = write_h5ad(out, tmp_path / "hest_toy.h5ad")
    tiny = {"backbone_kwargs": {"stages_repeats": [1, 1, 1], "stages_out_channels": [8, 16, 16, 16, 32]}}
    training = TrainingConfig(max_steps=4, batch_size=16, patch_size=24, val_every=2, lr=1e-2, num_threads=1,
                              backbone_weights="none")
    specs = make_specs(["shufflenet"], [str(path)], ["raw", "completed"], [0], {"shufflenet": tiny}, training)
    frame = run_benchmark(specs, tmp_path / "runs")
    assert len(frame) == 2 and (frame["status"] == "done").all(), frame["error"].tolist()
    assert np.isfinite(frame["MSE"]).all()

"""Patch extraction on images whose pixels encode their own coordinates, and the lazy patch store."""

from __future__ import annotations

import multiprocessing
import pickle
from pathlib import Path

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import tifffile
from PIL import Image

from spared.io.patches import PatchStore, extract_patches
from spared.io.readers import ReaderError

matplotlib.use("Agg")

HEIGHT, WIDTH = 200, 240


def coordinate_image(height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """Red = x, green = y (both < 256), blue constant: the colour of a pixel names its position."""
    yy, xx = np.mgrid[:height, :width]
    return np.stack([xx, yy, np.full_like(xx, 77)], axis=-1).astype(np.uint8)


def smooth_image(height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width].astype(np.float64)
    return np.stack([127 + 100 * np.sin(xx / 23), 127 + 100 * np.cos(yy / 17),
                     127 + 80 * np.sin((xx + yy) / 31)], axis=-1).round().astype(np.uint8)


def spot_collection(xy: np.ndarray, diameter: float, fullres: Path | None = None, hires: np.ndarray | None = None,
                    hires_scalef: float = 1.0, slide: str = "S1") -> ad.AnnData:
    n = xy.shape[0]
    obs = pd.DataFrame({"slide_id": slide, "patient": "P", "split": "train", "array_row": np.arange(n),
                        "array_col": np.arange(n)}, index=[f"{slide}_spot{i}" for i in range(n)])
    adata = ad.AnnData(X=sp.csr_matrix(np.ones((n, 2), dtype=np.float32)), obs=obs)
    adata.obsm["spatial"] = np.asarray(xy, dtype=np.float64)
    entry = {"scalefactors": {"spot_diameter_fullres": diameter, "tissue_hires_scalef": hires_scalef},
             "images": {} if hires is None else {"hires": hires}}
    if fullres is not None:
        entry["fullres_path"] = str(fullres)
    adata.uns["spatial"] = {slide: entry}
    return adata


INNER = np.array([[40, 30], [120, 100], [200, 150], [77, 171], [150, 60]], dtype=np.float64)


@pytest.fixture
def png(tmp_path) -> Path:
    path = tmp_path / "full.png"
    Image.fromarray(coordinate_image()).save(path)
    return path


def test_centre_pixel_is_the_spot(tmp_path, png):
    adata = spot_collection(INNER, diameter=31, fullres=png)
    path = extract_patches(adata, tmp_path / "p.h5", patch_size=31, progress=False)
    store = PatchStore(path)
    assert len(store) == 5 and store[0].dtype == np.uint8 and store[0].shape == (31, 31, 3)
    for i, (x, y) in enumerate(INNER.astype(int)):
        np.testing.assert_array_equal(store[i][15, 15], [x, y, 77])
        np.testing.assert_array_equal(store[i][0, 0], [x - 15, y - 15, 77])  # no resampling: exact copy
    assert adata.uns["spared"]["patches"] == {"path": str(path.resolve()), "size": 31, "scale": 1.0, "sources": {
        "S1": {"image": "fullres", "path": str(png), "scale_x": 1.0, "scale_y": 1.0}}}
    assert "warnings" not in adata.uns["spared"]
    assert list(store.obs_names) == list(adata.obs_names)


def test_resized_and_scaled_windows_stay_centred(tmp_path, png):
    adata = spot_collection(INNER, diameter=30, fullres=png)
    store = PatchStore(extract_patches(adata, tmp_path / "p.h5", patch_size=45, patch_scale=1.5, progress=False))
    for i, (x, y) in enumerate(INNER.astype(int)):
        patch = store[i].astype(int)
        np.testing.assert_allclose(patch[22, 22, :2], [x, y], atol=1)
        # the window spans 45 full-res pixels: one pixel per output pixel
        np.testing.assert_allclose(patch[22, [0, 44], 0], [x - 22, x + 22], atol=1)


def test_border_spots_are_padded_not_dropped(tmp_path, png):
    xy = np.array([[2, 3], [WIDTH - 1, HEIGHT - 1], [120, 100]], dtype=np.float64)
    adata = spot_collection(xy, diameter=41, fullres=png)
    store = PatchStore(extract_patches(adata, tmp_path / "p.h5", patch_size=41, pad_value=7, progress=False))
    assert len(store) == 3
    corner = store[0]
    assert (corner[:15, :15] == 7).all()
    np.testing.assert_array_equal(corner[20, 20], [2, 3, 77])
    np.testing.assert_array_equal(corner[20, 18:23, 0], [0, 1, 2, 3, 4])
    assert (store[1][25:, :] == 7).all() and (store[1][:, 25:] == 7).all()
    np.testing.assert_array_equal(store[1][20, 20], [WIDTH - 1, HEIGHT - 1, 77])


@pytest.mark.parametrize("layout", ["planar_rgb", "channel_first_stack", "tiled_rgb", "grayscale"])
def test_tiff_layouts_match_the_png(tmp_path, png, layout):
    image = coordinate_image()
    tif = tmp_path / f"{layout}.tif"
    if layout == "planar_rgb":
        tifffile.imwrite(tif, np.moveaxis(image, -1, 0), photometric="rgb", planarconfig="separate", tile=(32, 32))
    elif layout == "channel_first_stack":
        tifffile.imwrite(tif, np.moveaxis(image, -1, 0), photometric="minisblack")
    elif layout == "tiled_rgb":
        tifffile.imwrite(tif, image, photometric="rgb", tile=(48, 48), compression="zlib")
    else:
        tifffile.imwrite(tif, image[..., 0], photometric="minisblack", tile=(32, 32))
    a = extract_patches(spot_collection(INNER, 31, fullres=tif), tmp_path / "a.h5", patch_size=31, progress=False)
    b = extract_patches(spot_collection(INNER, 31, fullres=png), tmp_path / "b.h5", patch_size=31, progress=False)
    got, want = PatchStore(a)[:], PatchStore(b)[:]
    if layout == "grayscale":
        want = np.repeat(want[..., :1], 3, axis=-1)
    np.testing.assert_array_equal(got, want)


def test_rgba_hires_png_drops_alpha(tmp_path):
    rgba = np.concatenate([coordinate_image(), np.zeros((HEIGHT, WIDTH, 1), np.uint8)], axis=-1)
    path = tmp_path / "full_rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    store = PatchStore(extract_patches(spot_collection(INNER, 31, fullres=path), tmp_path / "p.h5", patch_size=31,
                                       progress=False))
    np.testing.assert_array_equal(store[1][15, 15], [120, 100, 77])


def test_hires_path_matches_fullres_on_exactly_downsampled_image(tmp_path):
    full = smooth_image(400, 480)
    hires = full.reshape(100, 4, 120, 4, 3).mean(axis=(1, 3)).round().astype(np.uint8)
    path = tmp_path / "full.png"
    Image.fromarray(full).save(path)
    xy = np.array([[100, 100], [240, 200], [401, 333], [60, 350]], dtype=np.float64)
    a = extract_patches(spot_collection(xy, 96, fullres=path), tmp_path / "a.h5", patch_size=24, progress=False)
    with pytest.warns(UserWarning, match="patches cut from the hires image"):
        b = extract_patches(spot_collection(xy, 96, hires=hires, hires_scalef=0.25), tmp_path / "b.h5",
                            patch_size=24, progress=False)
    diff = np.abs(PatchStore(a)[:].astype(int) - PatchStore(b)[:].astype(int))
    assert diff.mean() < 1 and diff.max() <= 2


def test_fullres_image_at_another_scale_is_rescaled(tmp_path, png):
    hires = coordinate_image()[::2, ::2]
    small = tmp_path / "half.png"
    Image.fromarray(coordinate_image()).resize((WIDTH // 2, HEIGHT // 2), Image.Resampling.BOX).save(small)
    adata = spot_collection(INNER, 30, fullres=small, hires=hires, hires_scalef=0.5)
    with pytest.warns(UserWarning, match="rescaled by 0.5"):
        path = extract_patches(adata, tmp_path / "p.h5", patch_size=15, progress=False)
    for i, (x, y) in enumerate(INNER.astype(int)):
        np.testing.assert_allclose(PatchStore(path)[i][7, 7, :2].astype(int), [x, y], atol=2)


def test_truncated_image_fails_cleanly_and_leaves_no_file(tmp_path):
    tif = tmp_path / "full.tif"
    tifffile.imwrite(tif, coordinate_image(), photometric="rgb", tile=(32, 32), compression="zlib")
    data = tif.read_bytes()
    tif.write_bytes(data[: len(data) // 3])
    jpg = tmp_path / "full.jpg"
    Image.fromarray(coordinate_image()).save(jpg)
    jpg.write_bytes(jpg.read_bytes()[:400])
    for image in (tif, jpg):
        out = tmp_path / f"{image.suffix}.h5"
        with pytest.raises(ReaderError, match=rf"could not read image .*{image.name}.*truncated or corrupt"):
            extract_patches(spot_collection(INNER, 31, fullres=image), out, patch_size=16, progress=False)
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.jpg", "full.tif"]


def test_missing_image_sources_are_reported(tmp_path):
    adata = spot_collection(INNER, 31)
    with pytest.raises(ReaderError, match=r"no image to cut patches from: neither .*fullres_path.* nor a hires or "
                                          r"lowres image"):
        extract_patches(adata, tmp_path / "p.h5", progress=False)
    adata.uns["spatial"]["S1"]["scalefactors"].pop("spot_diameter_fullres")
    with pytest.raises(ReaderError, match="spot_diameter_fullres"):
        extract_patches(adata, tmp_path / "p.h5", progress=False)


def test_lowres_fallback_is_centred_and_recorded(tmp_path):
    lowres = coordinate_image()[::4, ::4]  # pixel (i, j) of lowres shows full-res (4j, 4i)
    adata = spot_collection(INNER, 32)
    entry = adata.uns["spatial"]["S1"]
    entry["images"]["lowres"] = lowres
    entry["scalefactors"]["tissue_lowres_scalef"] = 0.25
    with pytest.warns(UserWarning, match="patches cut from the lowres image"):
        store = PatchStore(extract_patches(adata, tmp_path / "p.h5", patch_size=8, progress=False))
    for i, (x, y) in enumerate(INNER.astype(int)):
        np.testing.assert_allclose(store[i][4, 4, :2].astype(int), [x, y], atol=4)
    assert adata.uns["spared"]["patches"]["sources"]["S1"] == {"image": "lowres", "path": "", "scale_x": 0.25,
                                                               "scale_y": 0.25}
    assert adata.uns["spared"]["warnings"] == ["slide 'S1': no full-resolution image; patches cut from the lowres "
                                               "image (scale 0.25: a spot spans 8.0 px there, resampled to the patch "
                                               "size)"]


def test_fullres_image_scaled_differently_per_axis_is_rescaled_per_axis(tmp_path):
    hires = coordinate_image()[::2, ::2]  # implies a 240 × 200 full-resolution image
    squeezed = tmp_path / "squeezed.png"
    Image.fromarray(coordinate_image()).resize((120, 97), Image.Resampling.BOX).save(squeezed)  # x 0.5, y 0.485
    adata = spot_collection(INNER, 30, fullres=squeezed, hires=hires, hires_scalef=0.5)
    with pytest.warns(UserWarning, match=r"rescaled per axis \(x 0.5000, y 0.4850\)"):
        path = extract_patches(adata, tmp_path / "p.h5", patch_size=15, progress=False)
    for i, (x, y) in enumerate(INNER.astype(int)):
        np.testing.assert_allclose(PatchStore(path)[i][7, 7, :2].astype(int), [x, y], atol=3)
    source = adata.uns["spared"]["patches"]["sources"]["S1"]
    assert (source["scale_x"], round(source["scale_y"], 4)) == (0.5, 0.485)
    assert "per axis" in adata.uns["spared"]["warnings"][0]


def test_cropped_or_foreign_images_are_refused_not_cut(tmp_path):
    hires = coordinate_image()[::2, ::2]
    cropped = tmp_path / "cropped.png"
    Image.fromarray(coordinate_image()[:, :150]).save(cropped)  # width cut, height at full resolution
    adata = spot_collection(INNER, 30, fullres=cropped, hires=hires, hires_scalef=0.5)
    with pytest.raises(ReaderError, match=r"axes scale differently \(x 0.625, y 1.000\).*cropped"):
        extract_patches(adata, tmp_path / "p.h5", patch_size=15, progress=False)
    small = tmp_path / "small.png"
    Image.fromarray(coordinate_image()[:60, :60]).save(small)
    far = spot_collection(INNER, 30, fullres=small)  # no hires to compare with: the spots fall outside
    with pytest.raises(ReaderError, match=r"4 of 5 spot centres fall outside .*small.png"):
        extract_patches(far, tmp_path / "q.h5", patch_size=15, progress=False)
    assert not (tmp_path / "p.h5").exists() and not (tmp_path / "q.h5").exists()


def _read_in_worker(store: PatchStore) -> np.ndarray:
    return store[[3, 0]]


def test_store_indexing_and_pickling(tmp_path, png):
    two = ad.concat([spot_collection(INNER, 31, fullres=png, slide="A"), spot_collection(INNER[::-1], 31,
                     fullres=png, slide="B")], uns_merge="unique")
    store = PatchStore(extract_patches(two, tmp_path / "p.h5", patch_size=31, progress=False, band_height=40))
    assert len(store) == 10 and store.size == 31
    np.testing.assert_array_equal(store[5], store[4 + 5 - 4])
    np.testing.assert_array_equal(store[5][15, 15, :2], INNER[-1])
    np.testing.assert_array_equal(store[[4, 1, 4]], np.stack([store[4], store[1], store[4]]))
    np.testing.assert_array_equal(store[np.arange(10) % 2 == 0], store[0:10:2])
    np.testing.assert_array_equal(store[-1], store[9])
    with pytest.raises(IndexError):
        store[10]
    clone = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(clone[2], store[2])
    with multiprocessing.get_context("fork").Pool(1) as pool:
        np.testing.assert_array_equal(pool.apply(_read_in_worker, (store,)), store[[3, 0]])


def test_plot_grid(tmp_path, png):
    import spared.pl

    adata = spot_collection(INNER, 31, fullres=png)
    extract_patches(adata, tmp_path / "p.h5", patch_size=31, progress=False)
    ax = spared.pl.patches(adata, n=4, show=False, save=tmp_path / "grid.png")
    image = ax.get_images()[0].get_array()
    assert image.shape == (2 * 31 + 4, 2 * 31 + 4, 3)
    assert (tmp_path / "grid.png").stat().st_size > 0
    with pytest.raises(ValueError, match="holds 5 patches but adata has 2 spots"):
        spared.pl.patches(adata[:2], show=False)

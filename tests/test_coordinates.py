"""Coordinates and scales are checked: spots outside their image are dropped with a count and a recorded warning
(or refused when many), and HEST's pixel size is checked against the spot spacing and the sample's own scale.

The Visium cases use a copy of a real organoid slide with its positions altered."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spared.io.readers import ReaderError, read
from spared.io.readers.hest import read_hest

SLIDE = "V19D02-088_A1"


def organoid_slide(realdata: Path, dest: Path) -> Path:
    """A writable copy of one real Visium slide folder (Space Ranger 1.x positions list, no header)."""
    src = realdata / "villacampa_xjtv62ncwr" / "data" / "lungorganoid" / SLIDE
    shutil.copytree(src, dest / SLIDE, copy_function=shutil.copyfile)
    for root, dirs, _ in os.walk(dest):
        for name in dirs:
            os.chmod(Path(root, name), 0o755)
    return dest / SLIDE


def move_spots(slide: Path, n: int, row: float = -900.0) -> list[str]:
    """Put the pixel row of the first ``n`` in-tissue spots at ``row``; returns their barcodes."""
    path = slide / "spatial" / "tissue_positions_list.csv"
    table = pd.read_csv(path, header=None)
    moved = table.index[table[1] == 1][:n]
    table.loc[moved, 4] = row
    table.to_csv(path, header=False, index=False)
    return table.loc[moved, 0].tolist()


def test_visium_spots_outside_the_image_are_dropped_with_a_count(realdata, tmp_path):
    slide = organoid_slide(realdata, tmp_path)
    intact = read("visium_spaceranger", tmp_path, [SLIDE], "human")
    assert intact.uns["spared"]["reader"]["slides"][SLIDE]["n_spots_outside_image"] == 0
    barcodes = move_spots(slide, 3)
    with pytest.warns(UserWarning, match=rf"slide '{SLIDE}': 3 of {intact.n_obs} in-tissue spots of .*"
                                         r"tissue_positions_list\.csv lie outside the hires image .*dropped"):
        adata = read("visium_spaceranger", tmp_path, [SLIDE], "human")
    assert adata.n_obs == intact.n_obs - 3
    assert not adata.obs["barcode"].isin(barcodes).any()
    report = adata.uns["spared"]["reader"]["slides"][SLIDE]
    assert report["n_spots_outside_image"] == 3 and report["n_spots"] == adata.n_obs
    assert any("3 of" in w and any(b in w for b in barcodes) for w in adata.uns["spared"]["warnings"])
    assert (np.asarray(adata.obsm["spatial"]) >= 0).all()


def test_many_spots_outside_the_image_are_refused(realdata, tmp_path):
    slide = organoid_slide(realdata, tmp_path)
    move_spots(slide, 200, row=1e6)
    with pytest.raises(ReaderError, match=rf"slide '{SLIDE}': image the hires image scaled by .* is \d+×\d+ px, but "
                                          r"200 of \d+ in-tissue spots .* lie outside it .*up to x=\d+, y=1000000"):
        read("visium_spaceranger", tmp_path, [SLIDE], "human")


def test_patch_writer_counts_spot_centres_outside_the_image(tmp_path):
    from spared.io.patches import extract_patches
    from test_patches import spot_collection

    image = np.full((200, 300, 3), 200, dtype=np.uint8)
    xy = np.column_stack([np.linspace(20, 280, 40), np.linspace(20, 180, 40)])
    xy[5] = (-50, 100)  # one of 40: padded, counted and recorded
    adata = spot_collection(xy, diameter=10.0, hires=image)
    with pytest.warns(UserWarning, match=r"slide 'S1': 1 of 40 spot centres lie outside the hires image .*S1_spot5"):
        extract_patches(adata, tmp_path / "p.h5", patch_size=8, progress=False)
    assert adata.uns["spared"]["patches"]["sources"]["S1"]["n_outside"] == 1
    assert any("1 of 40 spot centres" in w for w in adata.uns["spared"]["warnings"])


# --- HEST: pixel size against the spot spacing and the sample's scale factors -----------------------------------


@pytest.fixture(scope="module")
def hest_sample(tmp_path_factory):
    from spared.synthetic import make_collection
    from test_hest_reader import DIAMETER_PX, write_hest_sample

    collection = make_collection(n_slides=1, n_spots=150, n_genes=48, seed=3, spot_diameter_px=DIAMETER_PX)
    folder = tmp_path_factory.mktemp("hest")
    write_hest_sample(folder, "TENX9", collection, patient="P1")
    return folder


def hest_copy(hest_sample: Path, dest: Path) -> Path:
    shutil.copytree(hest_sample, dest)
    return dest


def edit_metadata(folder: Path, **changes) -> None:
    path = folder / "metadata" / "TENX9.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_hest_pixel_size_contradicting_the_spot_spacing_is_refused(hest_sample, tmp_path):
    from test_hest_reader import PIXEL_SIZE

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the sample as written reads cleanly
        adata = read_hest(hest_sample, ["TENX9"])
    assert adata.uns["spatial"]["TENX9"]["scalefactors"]["spot_diameter_fullres"] == pytest.approx(24.0)
    folder = hest_copy(hest_sample, tmp_path / "tenfold")
    edit_metadata(folder, pixel_size_um_estimated=PIXEL_SIZE * 10)
    with pytest.raises(ReaderError, match=r"pixel_size_um_estimated = 22\.9\d* µm/px \(a 55 µm spot → 2\.4 px\) "
                                          r"contradicts the spot spacing: neighbouring spots .* lie 43\.6 px apart, "
                                          r"which for spots 100 µm apart means 2\.29\d* µm/px \(10\.00× the "
                                          r"metadata's\)"):
        read_hest(folder, ["TENX9"])
    edit_metadata(folder, pixel_size_um_estimated=PIXEL_SIZE * 1.1)  # within the tolerance of an estimate
    assert read_hest(folder, ["TENX9"]).uns["spatial"]["TENX9"]["scalefactors"]["spot_diameter_fullres"] == \
        pytest.approx(24.0 / 1.1)


def test_hest_spot_diameter_contradicting_the_samples_scale_factors_is_refused(hest_sample, tmp_path):
    import anndata as ad

    folder = hest_copy(hest_sample, tmp_path / "scalef")
    path = folder / "st" / "TENX9.h5ad"
    source = ad.read_h5ad(path)
    source.uns["spatial"]["ST"]["scalefactors"]["spot_diameter_fullres"] = 240.0
    source.write_h5ad(path)
    with pytest.raises(ReaderError, match=r"a 55 µm spot → 24\.0 px\) contradicts .*TENX9\.h5ad, whose scalefactors "
                                          r"record spot_diameter_fullres = 240\.0 px \(0\.10×\)"):
        read_hest(folder, ["TENX9"])

"""Tests of the simulated Visium collections (spared.synthetic)."""

import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy.spatial import cKDTree

from spared.synthetic import SPACING_PER_DIAMETER, hex_lattice, make_collection


@pytest.fixture(scope="module")
def coll():
    """Four slides at the default gene count and dropout (spots kept small)."""
    return make_collection(n_slides=4, n_spots=400, n_genes=256, seed=3)


def _moran(values: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Moran's I per column with row-standardised 6-nearest-neighbour weights (plain formula)."""
    _, nn = cKDTree(coords).query(coords, k=7)
    z = values - values.mean(axis=0)
    lagged = z[nn[:, 1:]].mean(axis=1)
    return (z * lagged).sum(axis=0) / (z**2).sum(axis=0)


def test_hex_lattice_interior_spots_have_six_equidistant_neighbours():
    rows, cols, xy = hex_lattice(7, 9, 10.0)
    assert rows.shape == cols.shape == (63,) and xy.shape == (63, 2)
    assert np.all(cols % 2 == rows % 2) and np.all(np.diff(cols.reshape(7, 9), axis=1) == 2)
    dist, _ = cKDTree(xy).query(xy, k=8)
    interior = (rows > 0) & (rows < 6) & (cols > 1) & (cols < 2 * 8 - 1)
    np.testing.assert_allclose(dist[interior, 1:7], 10.0, rtol=1e-9)
    assert np.all(dist[interior, 7] > 10.0 * 1.5)
    assert np.all(dist[:, 1] >= 10.0 - 1e-9)


@pytest.mark.parametrize("args", [(0, 3, 1.0), (3, 0, 1.0), (3, 3, 0.0), (3, 3, -2.0)])
def test_hex_lattice_rejects_bad_arguments(args):
    with pytest.raises(ValueError):
        hex_lattice(*args)


def test_collection_passes_validation_and_has_the_documented_layout(coll):
    import spared

    spared.validate(coll, stage="raw")
    assert coll.shape == (4 * 400, 256)
    assert coll.obs["slide_id"].value_counts().eq(400).all()
    assert (coll.obs["in_tissue"] == 1).all()
    assert coll.X.format == "csr" and coll.X.dtype == np.float32
    assert coll.layers["true_counts"].format == "csr"
    assert isinstance(coll.obs["domain"].dtype, pd.CategoricalDtype)
    assert coll.uns["synthetic"]["seed"] == 3 and coll.uns["synthetic"]["n_genes"] == 256
    assert coll.obs_names.is_unique
    barcode = re.compile(r"^[ACGT]{16}-1$")
    for name, slide in zip(coll.obs_names, coll.obs["slide_id"], strict=True):
        prefix, code = name.split("_", 1)
        assert prefix == slide and barcode.match(code)


def test_barcodes_follow_the_array_position_across_slides(coll):
    obs = coll.obs.assign(barcode=[n.split("_", 1)[1] for n in coll.obs_names])
    per_position = obs.groupby(["array_row", "array_col"])["barcode"].nunique()
    per_barcode = obs.groupby("barcode")[["array_row", "array_col"]].nunique()
    assert per_position.max() == 1 and per_barcode.max().max() == 1
    assert len(per_position) < len(obs)  # some positions shared by several slides


def test_same_seed_same_collection_other_seed_differs():
    a = make_collection(n_slides=2, n_spots=60, n_genes=20, seed=11)
    b = make_collection(n_slides=2, n_spots=60, n_genes=20, seed=11)
    c = make_collection(n_slides=2, n_spots=60, n_genes=20, seed=12)
    assert (a.X != b.X).nnz == 0 and (a.layers["true_counts"] != b.layers["true_counts"]).nnz == 0
    pd.testing.assert_frame_equal(a.obs, b.obs)
    pd.testing.assert_frame_equal(a.var, b.var)
    np.testing.assert_array_equal(a.obsm["spatial"], b.obsm["spatial"])
    for slide in ("slide0", "slide1"):
        np.testing.assert_array_equal(a.uns["spatial"][slide]["images"]["hires"],
                                      b.uns["spatial"][slide]["images"]["hires"])
    assert a.X.shape != c.X.shape or (a.X != c.X).nnz > 0
    assert not np.array_equal(a.obsm["spatial"], c.obsm["spatial"]) or list(a.var_names) != list(c.var_names)


def test_expression_does_not_depend_on_rendering_the_image():
    a = make_collection(n_slides=2, n_spots=60, n_genes=20, seed=5, image=True)
    b = make_collection(n_slides=2, n_spots=60, n_genes=20, seed=5, image=False)
    assert (a.X != b.X).nnz == 0 and "spatial" not in b.uns and "spatial" in a.uns


def test_spots_lie_on_a_visium_hexagonal_array(coll):
    spacing = coll.uns["synthetic"]["spot_spacing_px"]
    diameter = coll.uns["spatial"]["slide0"]["scalefactors"]["spot_diameter_fullres"]
    assert spacing / diameter == pytest.approx(SPACING_PER_DIAMETER) and 1.7 < spacing / diameter < 1.9
    for slide in coll.obs["slide_id"].cat.categories:
        m = (coll.obs["slide_id"] == slide).to_numpy()
        xy = coll.obsm["spatial"][m]
        rows, cols = coll.obs["array_row"].to_numpy()[m], coll.obs["array_col"].to_numpy()[m]
        assert np.all(rows % 2 == cols % 2)
        dist, nn = cKDTree(xy).query(xy, k=7)
        near = dist[:, 1:] < 1.05 * spacing
        np.testing.assert_allclose(dist[:, 1:][near], spacing, rtol=1e-9)
        assert np.all(dist[:, 1] > 0.99 * spacing)
        six = near.all(axis=1)
        assert six.mean() > 0.8  # interior spots: exactly 6 equidistant neighbours
        d_row = np.abs(rows[nn[:, 1:]] - rows[:, None])[near]
        d_col = np.abs(cols[nn[:, 1:]] - cols[:, None])[near]
        pairs = set(zip(d_row.tolist(), d_col.tolist(), strict=True))
        assert pairs == {(0, 2), (1, 1)}


def test_slides_have_different_tissue_shapes(coll):
    shapes = []
    for slide in coll.obs["slide_id"].cat.categories:
        sub = coll.obs[coll.obs["slide_id"] == slide]
        shapes.append(frozenset(zip(sub["array_row"] - sub["array_row"].min(),
                                    sub["array_col"] - sub["array_col"].min(), strict=True)))
    assert len(set(shapes)) == len(shapes)


@pytest.mark.parametrize(("n_slides", "n_patients", "expected"), [
    (1, None, {"train"}), (2, None, {"train", "val"}), (3, None, {"train", "val", "test"}),
    (5, None, {"train", "val", "test"}), (4, 2, {"train", "val", "test"}), (6, 3, {"train", "val", "test"}),
    (2, 1, {"train", "val"}),
])
def test_splits_are_per_slide_and_cover_train_val_test(n_slides, n_patients, expected):
    a = make_collection(n_slides=n_slides, n_spots=20, n_genes=5, n_patients=n_patients, image=False)
    per_slide = a.obs.groupby("slide_id", observed=True)["split"].nunique()
    assert len(per_slide) == n_slides and per_slide.eq(1).all()
    assert set(a.obs["split"].astype(str)) == expected
    assert a.obs["patient"].nunique() == (n_slides if n_patients is None else n_patients)
    if n_patients is not None and n_patients >= 3:  # with enough patients no patient spans two splits
        assert a.obs.groupby("patient", observed=True)["split"].nunique().eq(1).all()


def test_zero_fractions_are_realistic_and_dropout_only_removes(coll):
    x, true = coll.X, coll.layers["true_counts"]
    zero = 1.0 - x.nnz / np.prod(x.shape)
    assert 0.67 <= zero <= 0.97
    diff = true - x
    assert diff.nnz == 0 or diff.data.min() >= 0
    kept = x.multiply(true) != 0  # observed entries equal the true count: dropout zeroes whole entries
    assert np.array_equal(x[kept].A1, true[kept].A1)
    assert x.nnz < true.nnz
    # dropout hits lowly expressed genes harder
    true_nnz = np.diff(true.tocsc().indptr)
    lost = 1.0 - np.diff(x.tocsc().indptr) / np.maximum(true_nnz, 1)
    mean = np.asarray(true.mean(axis=0)).ravel()
    low, high = (mean > 0.05) & (mean < 0.5), mean > 5
    assert lost[low].mean() > 2 * lost[high].mean()
    # enough genes stay well measured for the 70%-real-data gene filter and Moran selection
    gene_zero = 1.0 - np.diff(x.tocsc().indptr) / x.shape[0]
    assert (gene_zero <= 0.5).sum() >= 20 and (gene_zero >= 0.1).sum() > 200


def test_no_dropout_means_observed_equals_truth():
    a = make_collection(n_slides=2, n_spots=50, n_genes=30, dropout=0.0, image=False)
    assert (a.X != a.layers["true_counts"]).nnz == 0


def _batch_residuals(adata) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-slide log means of well-expressed noise genes after removing gene and slide-wide effects."""
    true = adata.layers["true_counts"].toarray()
    slides = adata.obs["slide_id"].to_numpy()
    genes = (adata.var["spatial_role"] == "noise").to_numpy() & (true.mean(axis=0) > 0.5)
    labels = adata.obs["slide_id"].cat.categories
    means = np.stack([true[slides == s][:, genes].mean(axis=0) for s in labels])
    sems = np.stack([true[slides == s][:, genes].std(axis=0) / math.sqrt((slides == s).sum()) for s in labels])
    log_mean = np.log(means)
    resid = log_mean - log_mean.mean(axis=0) - np.median(log_mean - log_mean.mean(axis=0), axis=1, keepdims=True)
    return resid, sems / means, genes


def test_batch_effect_between_slides_beyond_sampling_noise(coll):
    resid, se, genes = _batch_residuals(coll)
    assert genes.sum() >= 10
    assert np.median(np.abs(resid) / se) > 2.0
    factor = coll.uns["synthetic"]["batch_gene_log_factor"][:, genes]
    factor = factor - factor.mean(axis=0) - np.median(factor - factor.mean(axis=0), axis=1, keepdims=True)
    assert np.corrcoef(resid.ravel(), factor.ravel())[0, 1] > 0.8

    flat = make_collection(n_slides=4, n_spots=400, n_genes=256, seed=3, image=False, batch_effect=0.0)
    resid0, se0, _ = _batch_residuals(flat)
    assert np.median(np.abs(resid0) / se0) < 1.2


def test_domain_genes_are_spatially_autocorrelated_noise_genes_are_not(coll):
    x = coll.X.toarray()
    slides = coll.obs["slide_id"].to_numpy()
    mean = x.mean(axis=0)
    role = coll.var["spatial_role"].to_numpy()
    domain = np.flatnonzero(role == "domain")[np.argsort(-mean[role == "domain"])[:5]]
    noise = np.flatnonzero(role == "noise")[np.argsort(-mean[role == "noise"])[:5]]
    genes = np.concatenate([domain, noise])
    morans = np.mean([_moran(np.log1p(x[slides == s][:, genes]), coll.obsm["spatial"][slides == s])
                      for s in np.unique(slides)], axis=0)
    assert morans[:5].mean() > 0.3 and morans[:5].min() > 0.15
    assert np.all(np.abs(morans[5:]) < 0.1)


def test_domains_are_spatially_smooth_blobs(coll):
    for slide in coll.obs["slide_id"].cat.categories:
        m = (coll.obs["slide_id"] == slide).to_numpy()
        _, nn = cKDTree(coll.obsm["spatial"][m]).query(coll.obsm["spatial"][m], k=7)
        dom = coll.obs["domain"].cat.codes.to_numpy()[m]
        assert (dom[nn[:, 1:]] == dom[:, None]).mean() > 0.75


def test_image_colour_follows_the_domain(coll):
    r = 8
    off = np.arange(-r, r + 1)
    colours, domains = [], []
    for slide in coll.obs["slide_id"].cat.categories:
        m = (coll.obs["slide_id"] == slide).to_numpy()
        entry = coll.uns["spatial"][slide]
        img = entry["images"]["hires"]
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert entry["scalefactors"]["tissue_hires_scalef"] == 1.0
        step = round(1.0 / entry["scalefactors"]["tissue_lowres_scalef"])
        np.testing.assert_array_equal(entry["images"]["lowres"], img[::step, ::step])
        assert max(entry["images"]["lowres"].shape[:2]) <= 600
        assert img[:5, :5].mean(axis=(0, 1))[0] > 220  # pale pinkish background outside the tissue
        xy = np.rint(coll.obsm["spatial"][m]).astype(int)
        assert xy.min() >= r and np.all(xy[:, 0] < img.shape[1] - r) and np.all(xy[:, 1] < img.shape[0] - r)
        patch = img[xy[:, 1, None, None] + off[:, None], xy[:, 0, None, None] + off[None, :]].astype(float)
        colours.append(patch.mean(axis=(1, 2)))
        domains.append(coll.obs["domain"].cat.codes.to_numpy()[m])
    colours, domains = np.concatenate(colours), np.concatenate(domains)
    present = [d for d in np.unique(domains) if (domains == d).sum() >= 10]
    centroids = np.stack([colours[domains == d].mean(axis=0) for d in present])
    gaps = np.linalg.norm(centroids[:, None] - centroids[None], axis=2)[np.triu_indices(len(present), 1)]
    assert len(present) >= 4 and gaps.min() > 10
    assigned = np.array(present)[np.argmin(np.linalg.norm(colours[:, None] - centroids[None], axis=2), axis=1)]
    assert (assigned == domains).mean() > 0.7


def test_genes_are_protein_coding_genes_of_the_annotation():
    from spared.annotation import gene_table

    for organism, prefix in (("human", "ENSG"), ("mouse", "ENSMUSG")):
        a = make_collection(n_slides=1, n_spots=20, n_genes=50, organism=organism, image=False)
        table = gene_table(organism)
        assert a.var_names.str.startswith(prefix).all() and a.var_names.isin(table.index).all()
        assert (table.loc[a.var_names, "gene_type"] == "protein_coding").all()
        assert (a.var["gene_symbol"] == table.loc[a.var_names, "gene_symbol"]).all()
        assert list(a.var_names) == sorted(a.var_names)


def test_h5ad_round_trip(tmp_path):
    import anndata as ad

    a = make_collection(n_slides=2, n_spots=40, n_genes=10)
    a.write_h5ad(tmp_path / "s.h5ad")
    b = ad.read_h5ad(tmp_path / "s.h5ad")
    assert (a.X != b.X).nnz == 0
    np.testing.assert_array_equal(a.uns["spatial"]["slide1"]["images"]["hires"],
                                  b.uns["spatial"]["slide1"]["images"]["hires"])


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"n_slides": 0}, "n_slides"), ({"n_slides": 2.5}, "n_slides"), ({"n_spots": 3}, "n_spots"),
    ({"dropout": 1.0}, "dropout"), ({"dropout": -0.1}, "dropout"), ({"n_genes": 10**6}, "n_genes"),
    ({"n_genes": 0}, "n_genes"), ({"organism": "zebrafish"}, "organism"), ({"n_patients": 9}, "n_patients"),
    ({"n_patients": 0}, "n_patients"), ({"spot_diameter_px": 0}, "spot_diameter"),
    ({"batch_effect": -1.0}, "batch_effect"),
])
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_collection(**{"n_slides": 2, "n_spots": 20, "n_genes": 5, "image": False, **kwargs})

"""Package, config, data-model validation and spatial graphs."""

import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import spared
from spared.config import ProcessingConfig
from spared.data_model import ValidationError, validate
from spared.graph import khop_neighborhoods, knn_indices, spatial_graph


def test_import_does_not_load_torch():
    code = "import sys, spared; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False"]


def test_lazy_attributes():
    assert spared.validate is validate
    with pytest.raises(AttributeError):
        spared.not_a_module  # noqa: B018


def test_config_overrides_files_and_errors(tmp_path):
    cfg = ProcessingConfig().with_overrides(["top_moran_genes=32", "combat_key=patient", "wildcard_genes=null"])
    assert cfg.top_moran_genes == 32 and cfg.combat_key == "patient" and cfg.wildcard_genes is None
    assert cfg.n_neighs == 6 and cfg.replace(hex_geometry=False).n_neighs == 8
    (tmp_path / "c.toml").write_text('organism = "mouse"\ncell_min_counts = 800\n')
    loaded = ProcessingConfig.from_file(tmp_path / "c.toml")
    assert loaded.organism == "mouse" and loaded.cell_min_counts == 800
    assert loaded.hash() != ProcessingConfig().hash()
    with pytest.raises(KeyError, match="valid names"):
        ProcessingConfig().with_overrides(["not_a_key=1"])
    with pytest.raises(ValueError, match="organism"):
        ProcessingConfig(organism="zebrafish")
    with pytest.raises(ValueError, match="key=value"):
        ProcessingConfig().with_overrides(["oops"])


def hex_adata(n_slides=2, rows=6, cols=6, overlap=True):
    obs, xy = [], []
    for s in range(n_slides):
        for r in range(rows):
            for c in range(cols):
                obs.append({"slide_id": f"s{s}", "patient": "p", "split": "train" if s == 0 else "val",
                            "array_row": r, "array_col": 2 * c + (r % 2)})
                xy.append(((2 * c + (r % 2)) * 50.0 + (0 if overlap else 10_000 * s), r * 50.0 * np.sqrt(3)))
    obs = pd.DataFrame(obs, index=[f"spot{i}" for i in range(len(obs))])
    a = ad.AnnData(sp.csr_matrix(np.ones((len(obs), 3), np.float32)), obs=obs)
    a.obsm["spatial"] = np.array(xy)
    return a


def test_knn_never_crosses_slides_even_when_coordinates_overlap():
    a = hex_adata(overlap=True)
    nn = knn_indices(a.obsm["spatial"], a.obs["slide_id"], 6)
    slides = a.obs["slide_id"].to_numpy()
    assert (slides[nn] == slides[:, None]).all()
    assert not (nn == np.arange(a.n_obs)[:, None]).any()


def test_hex_graph_interior_spots_have_their_six_lattice_neighbours():
    a = hex_adata(n_slides=1, rows=7, cols=7)
    g = spatial_graph(a, n_neighs=6)
    rows, cols = a.obs.array_row.to_numpy(), a.obs.array_col.to_numpy()
    for i in range(a.n_obs):
        if 0 < rows[i] < 6 and 1 < cols[i] < 12:
            nbrs = set(g[i].indices)
            expected = {j for j in range(a.n_obs) if (abs(rows[j] - rows[i]), abs(cols[j] - cols[i])) in
                        {(0, 2), (1, 1)}}
            assert nbrs == expected


def test_khop_matches_breadth_first_search():
    a = hex_adata(n_slides=1, rows=5, cols=5)
    g = spatial_graph(a, n_neighs=6)
    sym = (g + g.T).astype(bool).tolil()
    hops = khop_neighborhoods(g, 3)
    for start in range(a.n_obs):
        dist = {start: 0}
        frontier = [start]
        while frontier:
            nxt = []
            for u in frontier:
                for v in sym.rows[u]:
                    if v not in dist:
                        dist[v] = dist[u] + 1
                        nxt.append(v)
            frontier = nxt
        for h, reach in enumerate(hops, start=1):
            assert set(reach[start].indices) == {v for v, d in dist.items() if d <= h}


def test_knn_errors():
    a = hex_adata(n_slides=1, rows=2, cols=2)
    with pytest.raises(ValueError, match="has 4 spot"):
        knn_indices(a.obsm["spatial"], a.obs["slide_id"], 6)
    coords = a.obsm["spatial"].copy()
    coords[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        knn_indices(coords, a.obs["slide_id"], 2)


def test_validate_accepts_good_and_names_every_problem():
    a = hex_adata()
    validate(a)
    bad = a.copy()
    del bad.obs["patient"]
    bad.obsm["spatial"][0, 0] = np.inf
    bad.X = sp.csr_matrix(-np.ones(bad.shape, np.float32))
    with pytest.raises(ValidationError) as err:
        validate(bad)
    msg = str(err.value)
    assert "obs['patient'] is missing" in msg and "NaN or inf" in msg and "negative" in msg


@pytest.mark.parametrize("problem", ["nan", "dup_spot", "dup_gene", "one_spot", "mixed_split", "layers", "bad_split"])
def test_validate_bad_inputs(problem):
    a = hex_adata()
    match = {
        "nan": "X contains NaN", "dup_spot": "duplicate spot", "dup_gene": "duplicate gene",
        "one_spot": "single spot", "mixed_split": "more than one split", "layers": "layer 'tpm' is missing",
        "bad_split": "expected only",
    }[problem]
    kwargs = {}
    if problem == "nan":
        a.X = sp.csr_matrix(np.full(a.shape, np.nan, np.float32))
    elif problem == "dup_spot":
        a.obs_names = ["same"] * a.n_obs
    elif problem == "dup_gene":
        a.var_names = ["g", "g", "h"]
    elif problem == "one_spot":
        a.obs["slide_id"] = a.obs["slide_id"].astype(str)
        a.obs.iloc[0, a.obs.columns.get_loc("slide_id")] = "lonely"
    elif problem == "mixed_split":
        a.obs.iloc[0, a.obs.columns.get_loc("split")] = "test"
    elif problem == "bad_split":
        a.obs["split"] = "training"
    else:
        kwargs = {"stage": "processed"}
    with pytest.raises(ValidationError, match=match):
        validate(a, **kwargs)

"""SpaCKLE: neighbourhoods, masking, training, completion, checkpoints and input errors (small and fast)."""

from __future__ import annotations

import json
import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from spared.impute import spackle
from spared.impute.spackle import SpackleConfig
from spared.impute.spackle.inputs import neighbour_table
from spared.impute.spackle.masking import glob_exp_frac, mask_probabilities, row_probabilities, sample_mask

TINY = SpackleConfig(num_neighs=6, batch_size=64, max_steps=20, val_every=10)


def smooth_field(n_slides: int = 3, side: int = 14, n_genes: int = 8, missing: float = 0.3, seed: int = 0,
                 same_coords: bool = True) -> ad.AnnData:
    """Slides on a ``side × side`` grid with spatially smooth positive expression and random missing entries.

    Slide ``s`` goes to split train / val / test for s = 0 / 1 / 2+ . With ``same_coords`` every slide uses the
    same coordinates, so a neighbour search that ignored slides would mix them.
    """
    rng = np.random.default_rng(seed)
    xs, ys = np.meshgrid(np.arange(side, dtype=float), np.arange(side, dtype=float))
    coords = np.column_stack([xs.ravel(), ys.ravel()])
    freq = rng.uniform(0.15, 0.45, (n_genes, 2))
    blocks, obs, xy = [], [], []
    for s in range(n_slides):
        offset = 0.0 if same_coords else 10.0 * side * s
        blocks.append(3 + np.sin(coords @ freq.T + rng.uniform(0, 2 * np.pi, n_genes)))
        xy.append(coords + offset)
        obs.append(pd.DataFrame({"slide_id": f"slide{s}", "split": ("train", "val", "test")[min(s, 2)]},
                                index=[f"slide{s}_{i}" for i in range(len(coords))]))
    adata = ad.AnnData(obs=pd.concat(obs), var=pd.DataFrame(index=[f"gene{g}" for g in range(n_genes)]))
    values = np.vstack(blocks).astype(np.float32)
    mask = rng.random(values.shape) >= missing
    adata.layers["c_d_log1p"] = values
    adata.layers["mask"] = mask
    adata.obsm["spatial"] = np.vstack(xy)
    adata.obs["offpanel_counts"] = rng.integers(500, 5000, adata.n_obs).astype(float)
    return adata


@pytest.fixture(scope="module")
def trained() -> tuple[ad.AnnData, spackle.SpackleModel]:
    adata = smooth_field()
    return adata, spackle.fit(adata, config=TINY)


# --- neighbourhoods -------------------------------------------------------------------------------------------

def test_neighbours_never_cross_slides_with_identical_coordinates():
    adata = smooth_field(n_slides=2, side=6)
    table = neighbour_table(adata, 8)
    slides = adata.obs["slide_id"].to_numpy()
    assert table.shape == (adata.n_obs, 9)
    np.testing.assert_array_equal(table[:, 0], np.arange(adata.n_obs))
    assert (slides[table] == slides[:, None]).all()
    assert all(len(set(row)) == 9 for row in table)


def test_completion_of_a_slide_ignores_other_slides(trained):
    adata, model = trained
    other = adata.copy()
    other.layers["c_d_log1p"][adata.obs["slide_id"].to_numpy() != "slide0"] += 5.0
    spackle.complete(adata, model, key_added="a")
    spackle.complete(other, model, key_added="a")
    rows = adata.obs["slide_id"].to_numpy() == "slide0"
    np.testing.assert_array_equal(adata.layers["a"][rows], other.layers["a"][rows])


# --- masking --------------------------------------------------------------------------------------------------

def test_mask_probability_formulas():
    f = np.array([0.0, 0.2, 0.5, 0.9, 1.0])
    np.testing.assert_allclose(mask_probabilities(f, "mask_prob", 0.3), [1, 1, 0.6, 0.3 / 0.9, 0.3])
    np.testing.assert_allclose(mask_probabilities(f, "prob_median"), [1, 1, 1, 0.1 / 0.9, 0])
    np.testing.assert_allclose(mask_probabilities(f, "scale_factor"), [1, 1, 0.8, 0.8 * 0.1 / 0.9, 0])
    np.testing.assert_allclose(mask_probabilities(f, "uniform", 0.3), [1, 0.3, 0.3, 0.3, 0.3])
    with pytest.raises(ValueError, match="prob_median"):
        mask_probabilities(f, "nope")


@pytest.mark.parametrize("method", ["mask_prob", "prob_median", "scale_factor"])
def test_sampled_masks_match_probabilities_and_hit_only_real_entries(method):
    frac = np.array([0.4, 0.6, 0.75, 0.95])
    probs = torch.as_tensor(mask_probabilities(frac, method, 0.3), dtype=torch.float32)
    real = torch.ones(4000, 19, 4, dtype=torch.bool)
    real[::2] = False
    hidden = sample_mask(real, probs, torch.Generator().manual_seed(1))
    assert not hidden[~real].any()
    freq = hidden[real.all(dim=(1, 2))].float().mean(dim=(0, 1)).numpy()
    np.testing.assert_allclose(freq, probs.numpy(), atol=0.01)


def test_neighbours_are_masked_at_a_fraction_of_the_spots_rate():
    probs = mask_probabilities(np.array([0.5, 0.8, 1.0]), "mask_prob", 0.3)  # 0.6, 0.375, 0.3
    rows = row_probabilities(probs, 19, 1 / 3)
    assert rows.shape == (19, 3)
    np.testing.assert_allclose(rows[0], probs)
    np.testing.assert_allclose(rows[1:], np.tile(probs / 3, (18, 1)))
    np.testing.assert_allclose(row_probabilities(probs, 19), np.tile(probs, (19, 1)))
    real = torch.ones(6000, 19, 3, dtype=torch.bool)
    hidden = sample_mask(real, torch.as_tensor(rows, dtype=torch.float32), torch.Generator().manual_seed(2))
    np.testing.assert_allclose(hidden[:, 0].float().mean(dim=0).numpy(), probs, atol=0.02)
    np.testing.assert_allclose(hidden[:, 1:].float().mean(dim=(0, 1)).numpy(), probs / 3, atol=0.005)
    assert not sample_mask(real, torch.as_tensor(row_probabilities(probs, 19, 0.0), dtype=torch.float32))[:, 1:].any()


def test_presets_change_the_defaults_and_accept_overrides():
    from spared.impute.spackle.config import PRESETS

    assert SpackleConfig.preset("default") == SpackleConfig()
    accurate = SpackleConfig.preset("accurate", seed=4)
    assert (accurate.num_layers, accurate.mask_method, accurate.ensemble, accurate.seed) == (3, "uniform", 3, 4)
    assert accurate.neighbour_mask_ratio == pytest.approx(1 / 3)
    assert accurate.steps(1832) == 1000 and accurate.steps(13_000) == SpackleConfig().steps(13_000)
    assert SpackleConfig.preset("accurate", ensemble=1).ensemble == 1
    assert set(PRESETS) == {"default", "accurate"}
    with pytest.raises(ValueError, match="unknown SpaCKLE preset 'fast'; choose one of"):
        SpackleConfig.preset("fast")


def test_glob_exp_frac_from_var_or_from_mask():
    adata = smooth_field(n_slides=1, side=5)
    real = adata.layers["mask"]
    np.testing.assert_allclose(glob_exp_frac(adata, real), real.mean(axis=0))
    adata.var["glob_exp_frac"] = np.linspace(0.1, 0.9, adata.n_vars)
    np.testing.assert_allclose(glob_exp_frac(adata, real), np.linspace(0.1, 0.9, adata.n_vars))
    adata.var["glob_exp_frac"] = 2.0
    with pytest.raises(ValueError, match="glob_exp_frac"):
        glob_exp_frac(adata, real)


# --- training and completion ----------------------------------------------------------------------------------

@pytest.mark.parametrize("observed_indicator", [False, True])
def test_training_lowers_validation_mse_on_a_smooth_field(observed_indicator):
    adata = smooth_field(seed=3)
    model = spackle.fit(adata, config=TINY.replace(max_steps=60, observed_indicator=observed_indicator))
    val = [mse for _, mse in model.history["val"]]
    assert [s for s, _ in model.history["val"]] == [10, 20, 30, 40, 50, 60]
    assert model.best_val_mse == min(val)
    assert model.best_val_mse < 0.85 * val[0]
    train = [mse for _, mse in model.history["train"]]
    assert len(train) == 60 and np.mean(train[-10:]) < np.mean(train[:10])


def test_fit_never_reads_unknown_entries():
    """Entries with mask False (missing, or hidden by an evaluation) cannot influence training at all."""
    adata = smooth_field(side=8, seed=4)
    other = adata.copy()
    rng = np.random.default_rng(0)
    unknown = ~adata.layers["mask"]
    other.layers["c_d_log1p"][unknown] = rng.normal(50, 20, unknown.sum()).astype(np.float32)
    cfg = TINY.replace(max_steps=10, observed_indicator=True, relative_positions=True)
    a, b = spackle.fit(adata, config=cfg), spackle.fit(other, config=cfg)
    assert a.history == b.history
    for (name, x), (_, y) in zip(a.network.state_dict().items(), b.network.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_validation_entries_are_held_out_of_training():
    from spared.impute.spackle.data import neighbourhoods
    from spared.impute.spackle.selection import selection_spots

    adata = smooth_field(side=8, seed=6)
    cfg = TINY.replace(max_steps=10, val_fraction=0.2)
    data = neighbourhoods(adata, "c_d_log1p", cfg.num_neighs)
    val_spots = selection_spots(adata, cfg).validation
    reduced, held = data.hold_out(val_spots, cfg.val_fraction, cfg.seed)
    known_val = data.real[val_spots]
    assert held.n_entries == round(0.2 * int(known_val.sum())) and not (held.hidden & ~known_val).any()
    assert not reduced.real[val_spots][held.hidden].any() and (reduced.values[val_spots][held.hidden] == 0).all()
    assert torch.equal(reduced.real[val_spots] | held.hidden, known_val)
    torch.testing.assert_close(held.values[held.hidden], data.values[val_spots][held.hidden])
    # changing the held-out values changes the validation scores but not one training step
    changed = adata.copy()
    rows = np.asarray(val_spots)[torch.nonzero(held.hidden)[:, 0].numpy()]
    cols = torch.nonzero(held.hidden)[:, 1].numpy()
    changed.layers["c_d_log1p"][rows, cols] += 3.0
    a, b = spackle.fit(adata, config=cfg), spackle.fit(changed, config=cfg)
    assert a.history["train"] == b.history["train"] and a.history["val"] != b.history["val"]


def test_early_stopping_keeps_the_best_weights():
    adata = smooth_field(side=8, seed=7)
    # a learning rate this small leaves the validation MSE flat: no later validation beats the first one
    model = spackle.fit(adata, config=TINY.replace(max_steps=200, val_every=5, patience=3, lr=1e-12))
    assert [s for s, _ in model.history["val"]] == [5, 10, 15, 20]
    assert model.best_step == 5 and len(model.history["train"]) == 20
    full = spackle.fit(adata, config=TINY.replace(max_steps=30, val_every=5, patience=None, lr=1e-12))
    assert len(full.history["val"]) == 6


def test_default_step_budget_is_sized_by_passes_over_the_spots():
    default = SpackleConfig()
    assert default.max_steps is None
    assert default.steps(1832) == 500  # an organoid collection: the 500-step floor
    assert default.steps(13_000) == int(np.ceil(60 * 13_000 / 256)) == 3047  # her2st
    assert default.steps(10**6) == 5000
    assert SpackleConfig(max_steps=7).steps(10**6) == 7
    assert SpackleConfig(min_steps=1000).steps(1832) == 1000
    assert SpackleConfig(min_steps=1000).steps(13_000) == 3047
    assert SpackleConfig(min_steps=6000).steps(10**6) == 6000  # the floor wins over the automatic ceiling
    adata = smooth_field(side=8)  # 192 spots, all of them targets
    model = spackle.fit(adata, config=TINY.replace(max_steps=None, min_steps=1, passes=2, patience=None,
                                                   val_every=1))
    assert model.history["val"][-1][0] == int(np.ceil(2 * adata.n_obs / 64)) == 6


def test_the_weights_returned_score_the_best_validation_mse():
    """The model returned (moving average of the weights, cosine schedule: the defaults) is the best validated one."""
    from spared.impute.spackle.data import held_out_loader, neighbourhoods
    from spared.impute.spackle.selection import selection_spots

    adata = smooth_field(side=8, seed=8)
    cfg = TINY.replace(max_steps=40, val_every=10, patience=None, lr=3e-2)
    model = spackle.fit(adata, config=cfg)
    assert model.best_val_mse == min(mse for _, mse in model.history["val"])
    data = neighbourhoods(adata, "c_d_log1p", cfg.num_neighs, depth_key=cfg.depth_key)
    reduced, held = data.hold_out(selection_spots(adata, cfg).validation, cfg.val_fraction, cfg.seed)
    sse, count = 0.0, 0
    with torch.no_grad():
        for batch in held_out_loader(reduced, held, 1024):
            pred = model.network(batch["x"], None, batch["real"], None, batch["depth"])
            sse += float(((pred - batch["target"]).square() * batch["hidden"]).sum())
            count += int(batch["hidden"].sum())
    assert sse / count == pytest.approx(model.best_val_mse, rel=1e-5)


def test_an_ensemble_averages_members_trained_with_successive_seeds(tmp_path):
    from spared.impute.spackle.data import held_out_loader, neighbourhoods
    from spared.impute.spackle.selection import selection_spots

    adata = smooth_field(side=8, seed=4)
    cfg = TINY.replace(max_steps=20)
    single = spackle.fit(adata, config=cfg)
    model = spackle.fit(adata, config=cfg.replace(ensemble=3))
    members = model.network.members
    assert isinstance(model.network, spackle.SpackleEnsemble) and len(members) == 3
    assert sorted(model.history) == ["train", "train.1", "train.2", "val", "val.1", "val.2"]
    for (name, x), (_, y) in zip(members[0].state_dict().items(), single.network.state_dict().items(), strict=True):
        assert torch.equal(x, y), name  # member 0 is the single model of the same seed
    assert not torch.equal(members[1].head.weight, members[0].head.weight)
    # the ensemble fills each missing entry with the mean of what its members fill in
    each = [spackle.complete(adata, spackle.SpackleModel(m, cfg, model.genes), copy=True).layers["c_t_log1p"]
            for m in members]
    completed = spackle.complete(adata, model, copy=True).layers["c_t_log1p"]
    np.testing.assert_allclose(completed, np.mean(each, axis=0), rtol=1e-5, atol=1e-6)
    # its validation MSE is the averaged prediction's, on the held-out entries every member was selected on
    data = neighbourhoods(adata, "c_d_log1p", cfg.num_neighs, depth_key=cfg.depth_key)
    reduced, held = data.hold_out(selection_spots(adata, cfg).validation, cfg.val_fraction, cfg.seed)
    sse, count = 0.0, 0
    with torch.no_grad():
        for batch in held_out_loader(reduced, held, 1024):
            preds = [m(batch["x"], None, batch["real"], None, batch["depth"]) for m in members]
            sse += float(((sum(preds) / 3 - batch["target"]).square() * batch["hidden"]).sum())
            count += int(batch["hidden"].sum())
    assert model.best_val_mse == pytest.approx(sse / count, rel=1e-5)
    # saved and loaded whole; a checkpoint whose member count does not fit its weights is refused
    path = model.save(tmp_path / "ens")
    loaded = spackle.load(path)
    assert loaded.config.ensemble == 3
    np.testing.assert_array_equal(spackle.complete(adata, loaded, copy=True).layers["c_t_log1p"], completed)
    meta = json.loads((path / "config.json").read_text())
    meta["config"]["ensemble"] = 2
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(spackle.CheckpointError, match="do not match the architecture"):
        spackle.load(path)


def test_neighbour_distances_are_in_spot_spacings_per_slide():
    from spared.impute.spackle.data import neighbourhoods

    adata = smooth_field(n_slides=2, side=6, same_coords=False)
    slide1 = adata.obs["slide_id"].to_numpy() == "slide1"
    adata.obsm["spatial"][slide1] *= 37.0  # another image scale on one slide
    data = neighbourhoods(adata, "c_d_log1p", 8, distances=True)
    dist = data.distances.numpy()
    assert dist.shape == (adata.n_obs, 9) and (dist[:, 0] == 0).all()
    np.testing.assert_allclose(dist[:, 1], 1.0, rtol=1e-6)  # unit grid: the nearest spot is one spacing away
    np.testing.assert_allclose(dist[slide1], dist[~slide1], rtol=1e-5)
    coords = adata.obsm["spatial"]
    i, row = 7, data.neighbours[7].numpy()
    np.testing.assert_allclose(dist[i], np.hypot(*(coords[row] - coords[i]).T), rtol=1e-6)


def test_progress_bar_shows_the_validation_mse_and_threads_are_restored(capsys):
    adata = smooth_field(side=6)
    before = torch.get_num_threads()
    spackle.fit(adata, config=TINY.replace(max_steps=10, progress=True, threads=1))
    assert torch.get_num_threads() == before
    out = capsys.readouterr()
    assert "val MSE" in out.out + out.err


def test_fit_is_deterministic_for_a_seed():
    adata = smooth_field(side=8)
    cfg = TINY.replace(max_steps=10)
    a, b = spackle.fit(adata, config=cfg), spackle.fit(adata, config=cfg)
    for (name, x), (_, y) in zip(a.network.state_dict().items(), b.network.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    assert a.history == b.history


def test_complete_replaces_only_missing_entries(trained):
    adata, model = trained
    adata.layers["c_d_log1p_64"] = adata.layers["c_d_log1p"].astype(np.float64)
    for layer in ("c_d_log1p", "c_d_log1p_64"):
        out = spackle.complete(adata, model, layer=layer, key_added="done", copy=True).layers["done"]
        real = adata.layers["mask"]
        assert out.dtype == adata.layers[layer].dtype
        np.testing.assert_array_equal(out[real].view(np.uint8), adata.layers[layer][real].view(np.uint8))
        assert np.isfinite(out).all() and not np.array_equal(out[~real], adata.layers[layer][~real])


def test_completion_does_not_read_missing_values(trained):
    adata, model = trained
    other = adata.copy()
    other.layers["c_d_log1p"][~adata.layers["mask"]] = -100.0
    spackle.complete(adata, model, key_added="a")
    spackle.complete(other, model, key_added="a")
    real = adata.layers["mask"]
    np.testing.assert_array_equal(adata.layers["a"][~real], other.layers["a"][~real])


def test_save_load_complete_is_identical_and_genes_are_matched_by_name(trained, tmp_path):
    adata, model = trained
    path = model.save(tmp_path / "ckpt")
    meta = json.loads((path / "config.json").read_text())
    assert meta["format_version"] == 4 and meta["genes"] == list(adata.var_names)
    assert (path / "model.safetensors").is_file()
    loaded = spackle.load(path)
    assert loaded.config == model.config and loaded.genes == model.genes
    first = spackle.complete(adata, model, copy=True).layers["c_t_log1p"]
    again = spackle.complete(adata, loaded, copy=True).layers["c_t_log1p"]
    np.testing.assert_array_equal(first, again)
    shuffled = adata[:, adata.var_names[::-1]].copy()
    np.testing.assert_array_equal(spackle.complete(shuffled, loaded, copy=True).layers["c_t_log1p"], first[:, ::-1])
    model.save(path)  # overwriting a checkpoint is allowed and leaves no temporary folder behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_version_1_checkpoint_loads_with_the_settings_it_implied(trained, tmp_path):
    adata, _ = trained
    model = spackle.fit(adata, config=TINY.replace(depth_key=None))
    path = model.save(tmp_path / "ckpt")
    meta = json.loads((path / "config.json").read_text())
    added = ("relative_positions", "ema_decay", "lr_schedule", "depth_key")  # parameters added since version 1
    meta["config"] = {k: v for k, v in meta["config"].items() if k not in added}
    (path / "config.json").write_text(json.dumps({**meta, "format_version": 1}))
    loaded = spackle.load(path)
    assert (loaded.config.relative_positions, loaded.config.ema_decay, loaded.config.lr_schedule) == (
        False, None, "constant")
    np.testing.assert_array_equal(spackle.complete(adata, loaded, copy=True).layers["c_t_log1p"],
                                  spackle.complete(adata, model, copy=True).layers["c_t_log1p"])


def test_sequencing_depth_is_read_for_every_row_and_checked(trained):
    adata, model = trained
    assert model.config.depth_key == "offpanel_counts" and model.network.depth_input
    first = spackle.complete(adata, model, copy=True).layers["c_t_log1p"]
    deeper = adata.copy()
    deeper.obs["offpanel_counts"] *= 50
    missing = ~adata.layers["mask"]
    assert not np.allclose(spackle.complete(deeper, model, copy=True).layers["c_t_log1p"][missing], first[missing])
    absent = adata.copy()
    del absent.obs["offpanel_counts"]
    with pytest.raises(KeyError, match="offpanel_counts"):
        spackle.complete(absent, model)
    bad = adata.copy()
    bad.obs.loc[bad.obs_names[3], "offpanel_counts"] = -1.0
    with pytest.raises(ValueError, match=f"counts >= 0.*{bad.obs_names[3]}"):
        spackle.complete(bad, model)
    with pytest.warns(UserWarning, match="without the sequencing-depth input"):
        without = spackle.fit(absent, config=TINY.replace(max_steps=2))
    assert without.config.depth_key is None and not without.network.depth_input


def test_sequencing_depth_lowers_the_error_when_it_drives_expression():
    """Both genes scale with a per-spot depth that neighbours do not share: the depth input recovers it."""
    adata = smooth_field(side=10, n_genes=2, missing=0.3, seed=4)
    rng = np.random.default_rng(4)
    z = rng.normal(size=adata.n_obs).astype(np.float32)
    adata.obs["offpanel_counts"] = np.expm1(6.0 + z)
    adata.layers["c_d_log1p"] = adata.layers["c_d_log1p"] + z[:, None]
    cfg = TINY.replace(max_steps=150, val_every=10, patience=None, lr=3e-3)
    with_depth = spackle.fit(adata, config=cfg).best_val_mse
    without = spackle.fit(adata, config=cfg.replace(depth_key=None)).best_val_mse
    assert with_depth < 0.5 * without


def test_gene_mismatch_names_the_missing_genes(trained):
    adata, model = trained
    fewer = adata[:, adata.var_names[2:]].copy()
    with pytest.raises(ValueError, match="missing from the data: gene0, gene1"):
        spackle.complete(fewer, model)
    renamed = adata.copy()
    renamed.var_names = [f"other{g}" for g in range(adata.n_vars)]
    with pytest.raises(ValueError, match="unknown to the model: other0"):
        spackle.complete(renamed, model)


def test_checkpoint_errors(trained, tmp_path):
    _, model = trained
    with pytest.raises(FileNotFoundError, match="not a SpaCKLE checkpoint"):
        spackle.load(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a SpaCKLE checkpoint folder"):
        model.save(tmp_path)
    path = model.save(tmp_path / "ckpt")
    meta = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ValueError, match="format version 99"):
        spackle.load(path)
    (path / "config.json").write_text(json.dumps({**meta, "n_genes": 5, "genes": meta["genes"][:5]}))
    with pytest.raises(ValueError, match="do not match the architecture"):
        spackle.load(path)


def test_visual_features_are_an_optional_extra_token(tmp_path):
    adata = smooth_field(side=8)
    adata.obsm["patch_emb"] = np.random.default_rng(0).normal(size=(adata.n_obs, 5)).astype(np.float32)
    model = spackle.fit(adata, config=TINY.replace(max_steps=5, visual_key="patch_emb"))
    assert model.visual_dim == 5 and model.network.visual.in_features == 5
    loaded = spackle.load(model.save(tmp_path / "v"))
    first = spackle.complete(adata, model, copy=True).layers["c_t_log1p"]
    np.testing.assert_array_equal(spackle.complete(adata, loaded, copy=True).layers["c_t_log1p"], first)
    shifted = adata.copy()
    shifted.obsm["patch_emb"] = shifted.obsm["patch_emb"] + 3
    assert not np.array_equal(spackle.complete(shifted, model, copy=True).layers["c_t_log1p"], first)
    del adata.obsm["patch_emb"]
    with pytest.raises(KeyError, match="patch_emb"):
        spackle.complete(adata, model)


def test_run_dir_gets_csv_logs_and_the_best_checkpoint(tmp_path):
    adata = smooth_field(side=8)
    model = spackle.fit(adata, config=TINY.replace(max_steps=10), run_dir=tmp_path)
    assert (tmp_path / "checkpoint" / "model.safetensors").is_file()
    metrics = list(tmp_path.glob("logs/*/metrics.csv"))
    assert metrics and "val_mse" in metrics[0].read_text()
    assert spackle.load(tmp_path / "checkpoint").best_val_mse == pytest.approx(model.best_val_mse)


# --- bad input ------------------------------------------------------------------------------------------------

def test_bad_inputs_give_clear_errors(trained):
    adata, model = trained
    no_mask = adata.copy()
    del no_mask.layers["mask"]
    with pytest.raises(KeyError, match="layer 'mask'"):
        spackle.fit(no_mask, config=TINY)
    int_mask = adata.copy()
    int_mask.layers["mask"] = int_mask.layers["mask"].astype(np.int8)
    with pytest.raises(TypeError, match="must be boolean"):
        spackle.complete(int_mask, model)
    with_nan = adata.copy()
    with_nan.layers["c_d_log1p"][3, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN.*spot 'slide0_3', gene 'gene1'"):
        spackle.complete(with_nan, model)
    with pytest.raises(KeyError, match="layer 'nope' not found"):
        spackle.complete(adata, model, layer="nope")


def test_small_and_single_spot_slides_are_rejected(trained):
    adata, model = trained
    small = smooth_field(n_slides=2, side=2)
    with pytest.raises(ValueError, match=r"fewer than 7 spots.*lower num_neighs to at most 3"):
        spackle.fit(small, config=TINY)
    names = ["slide0_0", *adata.obs_names[adata.obs["slide_id"] != "slide0"]]
    single = adata[names].copy()
    with pytest.raises(ValueError, match=r"\['slide0'\] have a single spot"):
        spackle.complete(single, model)


def test_held_out_blocks_are_square_separated_and_sized():
    from spared.impute.spackle.selection import BLOCK_SIDE, held_out_blocks

    rows, cols = np.meshgrid(np.arange(60), np.arange(60), indexing="ij")
    hexagonal = np.column_stack([cols.ravel() + 0.5 * (rows.ravel() % 2), rows.ravel() * np.sqrt(3) / 2]) * 137.0
    coords = np.vstack([hexagonal, hexagonal[:900] + 5.0])  # two slides, the second a smaller piece
    slides = np.repeat(["a", "b"], [3600, 900])
    blocks = held_out_blocks(slides, coords, 0.15, seed=3)
    for slide in ("a", "b"):
        held = (blocks[slides == slide] >= 0).mean()
        assert 0.15 <= held <= 0.30, (slide, held)
    labels = np.unique(blocks[blocks >= 0])
    assert len(labels) >= 4 and set(np.unique(blocks[slides == "a"])) & set(np.unique(blocks[slides == "b"])) == {-1}
    spacing = 137.0
    for i, first in enumerate(labels):  # plain loop: spots of two blocks are at least a block side apart
        a = coords[blocks == first]
        assert np.ptp(a, axis=0).max() <= BLOCK_SIDE * spacing  # a block fits in one cell
        for second in labels[i + 1:]:
            if slides[blocks == first][0] != slides[blocks == second][0]:
                continue
            b = coords[blocks == second]
            gap = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)).min()
            assert gap > BLOCK_SIDE * spacing * 0.99
    again = held_out_blocks(slides, coords, 0.15, seed=3)
    np.testing.assert_array_equal(again, blocks)  # seeded


def test_single_slide_selects_on_held_out_blocks_and_says_so():
    from spared.impute.spackle.selection import selection_spots

    adata = smooth_field(n_slides=1, side=24, seed=2)
    adata.obs["split"] = "train"  # one sample: no val/test slide
    with pytest.warns(UserWarning, match="no val/test slide: SpaCKLE selects its weights on .* blocks"):
        chosen = selection_spots(adata, TINY)
    assert np.intersect1d(chosen.targets, chosen.validation).size == 0  # held-out spots are never targets
    np.testing.assert_array_equal(np.union1d(chosen.targets, chosen.validation), np.arange(adata.n_obs))
    with pytest.warns(UserWarning, match="no val/test slide"):
        model = spackle.fit(adata, config=TINY)
    assert "blocks held out of 1 slide" in model.selection and np.isfinite(model.best_val_mse)
    completed = spackle.complete(adata, model, copy=True).layers["c_t_log1p"]
    assert np.isfinite(completed).all()
    tiny = smooth_field(n_slides=1, side=6)
    tiny.obs["split"] = "train"
    with pytest.raises(ValueError, match="too few to hold out a block"):
        spackle.fit(tiny, config=TINY)
    adata.obs["split"] = "val"
    with pytest.raises(ValueError, match="== 'train'"):
        spackle.fit(adata, config=TINY.replace(train_on="train"))


def test_config_validation():
    with pytest.raises(ValueError, match="num_neighs"):
        SpackleConfig(num_neighs=0)
    with pytest.raises(ValueError, match="train_on"):
        SpackleConfig(train_on="val")
    with pytest.raises(ValueError, match="val_fraction"):
        SpackleConfig(val_fraction=1.0)
    with pytest.raises(ValueError, match="patience"):
        SpackleConfig(patience=0)
    with pytest.raises(ValueError, match="mask_method"):
        SpackleConfig(mask_method="median")
    with pytest.raises(ValueError, match="lr_schedule"):
        SpackleConfig(lr_schedule="linear")
    with pytest.raises(ValueError, match="ema_decay"):
        SpackleConfig(ema_decay=1.0)
    with pytest.raises(KeyError, match="valid names"):
        SpackleConfig.from_dict({"steps": 3})
    with pytest.raises(ValueError, match="max_steps"):
        SpackleConfig(max_steps=0)
    with pytest.raises(ValueError, match="passes"):
        SpackleConfig(passes=0)
    with pytest.raises(ValueError, match="ensemble"):
        SpackleConfig(ensemble=0)
    with pytest.raises(ValueError, match="min_steps"):
        SpackleConfig(min_steps=0)
    with pytest.raises(ValueError, match=r"neighbour_mask_ratio must lie in \[0, 1\]"):
        SpackleConfig(neighbour_mask_ratio=1.5)
    with pytest.raises(ValueError, match="at least one member"):
        spackle.SpackleEnsemble([])
    with pytest.raises(ValueError, match="multiple of num_heads"):
        spackle.SpackleNetwork(n_genes=7, d_model=7, num_heads=2)


def test_torch_is_not_imported_by_spared_or_the_evaluation_modules():
    code = ("import sys, spared, spared.impute.evaluate, spared.impute.baselines, spared.impute.spackle; "
            "spared.impute.spackle.SpackleConfig(); print('torch' in sys.modules, 'lightning' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]

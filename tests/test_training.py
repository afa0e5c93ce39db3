"""Benchmark fidelity: every model is trained with its recipe from pretrained weights (here weight files written by
the test), augmentation and graph batches, SEPAL's two stages, the linear probe and the recipe files themselves."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from spared.bench import RunSpec, TrainingConfig, load_table, run_benchmark  # noqa: E402
from spared.bench.data import SpotDataModule  # noqa: E402
from spared.bench.train import prepare_run, training_plan  # noqa: E402
from spared.models import MODEL_INFO, MODEL_NAMES, TRAINED_MODELS  # noqa: E402
from spared.models.recipe import RECIPE_NAMES, parse_recipe, recipe  # noqa: E402

#: 3 slides (one per split) of 100 spots; simulated and processed once for the module.
TINY = "simulated:n_slides=3,n_spots=100,n_genes=48,top_moran_genes=16,spackle_max_steps=20"
SHUFFLE = {"stages_repeats": [1, 1, 1], "stages_out_channels": [8, 16, 16, 16, 32]}
VIT = {"image_size": 32, "patch_size": 8, "num_layers": 1, "num_heads": 2, "hidden_dim": 32, "mlp_dim": 64}
DENSE = {"growth_rate": 8, "block_config": (1, 1), "num_init_features": 16, "bn_size": 2}
RESNET = {"layers": [1, 1, 1, 1]}
#: Known value written into one weight of every test weights file.
KNOWN = 0.0123


def _tv(arch: str, kwargs: dict):
    """The torchvision network of ``arch`` with ``kwargs`` and the parameter the test sets to KNOWN."""
    from torchvision import models as tvm

    if arch == "shufflenet":
        net = tvm.ShuffleNetV2(**kwargs)
        return net, net.conv1[0].weight
    if arch == "densenet":
        net = tvm.DenseNet(**kwargs)
        return net, net.features.conv0.weight
    if arch == "vit":
        net = tvm.VisionTransformer(**kwargs)
        return net, net.conv_proj.weight
    block = tvm.resnet.Bottleneck if arch == "resnet50" else tvm.resnet.BasicBlock
    net = tvm.ResNet(block, **kwargs)
    return net, net.conv1.weight


#: model -> (tiny model config, torchvision family of its pretrained backbone or None, accessor of that weight)
CASES = {
    "shufflenet": ({"backbone_kwargs": SHUFFLE}, ("shufflenet", SHUFFLE), lambda m: m.encoder.net.conv1[0].weight),
    "stnet": ({"backbone_kwargs": DENSE}, ("densenet", DENSE), lambda m: m.encoder.net.features.conv0.weight),
    "vit_b": ({"backbone_kwargs": VIT}, ("vit", VIT), lambda m: m.encoder.net.conv_proj.weight),
    "vit_b_delta": ({"backbone_kwargs": VIT}, ("vit", VIT), lambda m: m.encoder.net.conv_proj.weight),
    "egn": ({"image_size": 32, "patch_size": 8, "dim": 32, "depth": 2, "heads": 2, "dim_head": 16, "mlp_dim": 64,
             "bhead": 2, "bdim": 8, "numk": 3, "backbone_kwargs": RESNET}, ("resnet50", RESNET),
            lambda m: m.bank.encoder.net.conv1.weight),
    "eggn": ({"hidden": 32, "num_layers": 2, "numk": 3, "score_dim": 32, "backbone_kwargs": RESNET},
             ("resnet18", RESNET), lambda m: m.bank.encoder.net.conv1.weight),
    "bleep": ({"backbone_kwargs": RESNET, "projection_dim": 16, "top_k": 5}, ("resnet50", RESNET),
              lambda m: m.encoder.net.conv1.weight),
    "histogene": ({"patch_px": 16, "dim": 32, "depth": 1, "heads": 2, "dim_head": 16}, None, None),
    "hist2st": ({"fig_size": 16, "patch_size": 4, "channel": 8, "kernel_size": 3, "depth1": 1, "depth2": 1,
                 "depth3": 2, "heads": 2, "dim_head": 8, "bake": 1}, None, None),
    "sepal": ({"stage1": {"backbone_kwargs": VIT}, "preprocess_dims": [32], "graph_dims": [16, 16]}, ("vit", VIT),
              None),
}


#: Models whose test gives the weights file in their model_config rather than for the whole benchmark.
PER_MODEL_WEIGHTS = ("stnet", "egn", "sepal")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("training_data")


@pytest.fixture(scope="module")
def table(data_dir):
    return load_table(TINY, "c_d_log1p", data_dir, patch_size=32)


def weights_file(folder, family: tuple[str, dict]):
    """A torchvision state dict of the tiny architecture with one weight set to KNOWN (written once)."""
    arch, kwargs = family
    path = folder / f"{arch}_tiny.pth"
    if not path.is_file():
        torch.manual_seed(0)
        net, param = _tv(arch, kwargs)
        with torch.no_grad():
            param.fill_(KNOWN)
        torch.save(net.state_dict(), path)
    return path


# --------------------------------------------------------------------------------------------------- recipes


def test_every_model_has_a_cited_recipe() -> None:
    assert set(RECIPE_NAMES) == set(MODEL_NAMES)
    for name in MODEL_NAMES:
        rec = recipe(name)
        assert rec.model == name and rec.kind == ("probe" if MODEL_INFO[name].input_kind == "probe" else "trained")
        described = rec.to_dict()
        for key, value in rec.settings().items():
            assert described[key]["source"].strip(), (name, key)
            assert described[key]["value"] == (dict(value) if isinstance(value, dict) else value)
    # the authors' settings the issue names
    assert (recipe("stnet").optimizer, recipe("stnet").lr, recipe("stnet").momentum) == ("sgd", 1e-6, 0.9)
    assert (recipe("histogene").optimizer, recipe("histogene").lr) == ("adam", 1e-5)
    assert dict(recipe("hist2st").schedule) == {"name": "step", "step_epochs": 50, "gamma": 0.9}
    assert (recipe("egn").optimizer, recipe("egn").lr, recipe("egn").weight_decay) == ("adamw", 5e-4, 1e-4)
    assert recipe("egn").schedule["name"] == "cosine_warm_restarts"
    assert (recipe("bleep").lr, recipe("bleep").weight_decay, recipe("bleep").batch_size) == (1e-3, 1e-3, 256)
    assert (recipe("sepal").optimizer, recipe("sepal").lr, recipe("sepal").stage1) == ("adam", 1e-5, "vit_b_delta")
    assert recipe("shufflenet").architecture == "shufflenet_v2_x0_5"


def test_malformed_recipes_are_rejected() -> None:
    good = {"model": "m", "kind": "trained", **{k: {"value": v, "source": "s"} for k, v in {
        "optimizer": "adam", "lr": 1e-4, "momentum": 0.0, "weight_decay": 0.0, "schedule": {"name": "constant"},
        "epochs": 1, "batch_size": 8, "augment": "none", "tta": "none", "loss": {"mse": 1.0},
        "head_init": "default", "backbone_weights": "none"}.items()}}
    assert parse_recipe(good).lr == 1e-4
    for change, message in ((("lr", {"value": 1e-4}), "non-empty 'source'"),
                            (("optimizer", {"value": "rmsprop", "source": "s"}), "optimizer"),
                            (("schedule", {"value": {"name": "step"}, "source": "s"}), "step_epochs"),
                            (("loss", {"value": {"l1": 1.0}, "source": "s"}), "unknown loss"),
                            (("epochz", {"value": 1, "source": "s"}), "unknown setting")):
        with pytest.raises(ValueError, match=message):
            parse_recipe({**good, change[0]: change[1]})
    with pytest.raises(ValueError, match="missing setting"):
        parse_recipe({k: v for k, v in good.items() if k != "epochs"})
    with pytest.raises(KeyError, match="no recipe"):
        recipe("no_such_model")


def test_cli_models_lists_every_model_with_its_recipe() -> None:
    from typer.testing import CliRunner

    from spared.cli import app

    runner = CliRunner()
    listed = runner.invoke(app, ["models", "--json"])
    assert listed.exit_code == 0, listed.output
    records = {r["model"]: r for r in json.loads(listed.output)}
    assert set(records) == set(MODEL_NAMES)
    stnet = records["stnet"]["recipe"]
    assert stnet["lr"]["value"] == 1e-6 and "bryanhe/ST-Net" in stnet["lr"]["source"]
    assert records["uni_probe"]["recipe"]["encoder"]["value"]["arch"] == "vit_large_patch16_224"
    table = runner.invoke(app, ["models"], env={"COLUMNS": "250"})
    assert table.exit_code == 0 and "cosine_warm_restarts" in table.output and "hoptimus0_probe" in table.output
    one = runner.invoke(app, ["models", "histogene"], env={"COLUMNS": "250"})
    assert one.exit_code == 0 and "tutorial.ipynb:113" in one.output and "deviation:" in one.output
    unknown = runner.invoke(app, ["models", "stnett"])
    assert unknown.exit_code == 1 and "unknown model" in unknown.output


def test_recipe_table_states_the_deviations() -> None:
    from spared.models.recipe import recipe_table

    table = recipe_table(["histogene", "uni_probe", "not_a_model"]).set_index("model")
    assert list(table.index) == ["histogene", "uni_probe"]
    assert "512 spots" in table.loc["histogene", "deviations from the authors"]
    assert "adam lr 1e-05" in table.loc["histogene", "training (recipe)"]
    assert "intercept" in table.loc["uni_probe", "deviations from the authors"]


def test_training_plan_is_the_recipe_unless_overridden() -> None:
    plan = training_plan("egn", TrainingConfig())
    rec = recipe("egn")
    assert (plan.optimizer, plan.lr, plan.weight_decay, plan.epochs, plan.max_steps, plan.batch_size) == (
        rec.optimizer, rec.lr, rec.weight_decay, rec.epochs, None, rec.batch_size)
    assert plan.backbone_weights == "imagenet"  # pretrained by default
    smoke = training_plan("egn", TrainingConfig(max_steps=7, lr=1e-3, batch_size=4, epochs=3))
    assert (smoke.max_steps, smoke.epochs, smoke.lr, smoke.batch_size) == (7, None, 1e-3, 4)
    assert training_plan("hist2st", TrainingConfig(batch_size=4, slide_spots=64)).batch_size == 64
    assert training_plan("stnet", TrainingConfig(epochs=2)).epochs == 2
    with pytest.raises(ValueError, match="linear probe"):
        training_plan("uni_probe", TrainingConfig())


def test_lr_schedules_follow_the_authors() -> None:
    from spared.models.lightning import lr_factor

    step = lr_factor({"name": "step", "step_epochs": 50, "gamma": 0.9}, steps_per_epoch=4)
    assert [step(s) for s in (0, 199, 200, 399, 400)] == pytest.approx([1, 1, 0.9, 0.9, 0.81])
    cosine = lr_factor({"name": "cosine_warm_restarts", "cycle_epochs": 0.5, "warmup_steps": 100,
                        "min_lr_ratio": 0.2}, steps_per_epoch=1000)  # a 500-step cycle
    assert cosine(0) == pytest.approx(0.2) and cosine(50) == pytest.approx(0.6) and cosine(100) == pytest.approx(1)
    assert cosine(300) == pytest.approx(0.2 + 0.8 * (1 + math.cos(math.pi * 200 / 400)) / 2)
    assert cosine(499) == pytest.approx(0.2, abs=1e-3) and cosine(500) == pytest.approx(0.2)  # restart
    assert lr_factor({"name": "constant"}, 10)(12345) == 1.0


# ---------------------------------------------------------------------------------- each model, its recipe


@pytest.mark.parametrize("name", TRAINED_MODELS)
def test_model_trains_with_its_recipe_from_pretrained_weights(name, table, data_dir, tmp_path_factory):
    """A few steps through the benchmark's own assembly: the weights file written here is loaded (a known
    weight value), and the optimiser class, lr, momentum, weight decay, schedule, augmentation, TTA and loss
    terms are the recipe's."""
    import lightning as L

    config, family, accessor = CASES[name]
    folder = tmp_path_factory.getbasetemp()
    weights = str(weights_file(folder, family)) if family else "imagenet"  # no backbone: the default must work
    out = tmp_path_factory.mktemp(f"run_{name}")
    # the file is given for the whole benchmark (--backbone-weights), or for this model alone (its model_config,
    # over a benchmark default of "imagenet" that must not be used)
    per_model = name in PER_MODEL_WEIGHTS
    if per_model:
        config = {**config, "backbone_weights": weights}
    spec = RunSpec(name, TINY, "raw", 0, config, TrainingConfig(max_steps=2, patch_size=32, num_threads=1,
                                                                backbone_weights="imagenet" if per_model else weights))
    parts = prepare_run(spec, out, data_dir)
    rec, model = recipe(name), parts.model
    if accessor is not None:
        assert torch.all(accessor(model) == KNOWN)
    elif name == "sepal":  # the file went to stage 1 (the ViT-B+Δ run SEPAL trains on)
        (stage1,) = [p for p in (out / "runs").iterdir() if p.name.startswith("vit_b_delta-")]
        stage1_config = json.loads((stage1 / "config.json").read_text())
        assert stage1_config["model_config"]["backbone_weights"] == weights  # inherited by stage 1
        state = torch.load(stage1 / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
        assert (state["model.encoder.net.conv_proj.weight"] - KNOWN).abs().max() < 1e-3  # 2 Adam steps of 1e-4
        assert parts.table.embedding.shape == (parts.table.target.shape[0], VIT["hidden_dim"])
    assert parts.data.train_dataset.augment == rec.augment and parts.module.tta == rec.tta
    if hasattr(model, "head_init"):
        assert model.head_init == rec.head_init
    weights_of_terms = {"pcc": "pcc_weight", "zinb": "zinb", "bake": "lamb"}
    for term, attr in weights_of_terms.items():
        if term in rec.loss:
            assert getattr(model, attr) == rec.loss[term]
    trainer = L.Trainer(max_steps=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        default_root_dir=out)
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    trainer.fit(parts.module, train_dataloaders=parts.data.train_dataloader())
    optimizer = trainer.optimizers[0]
    assert type(optimizer) is {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[
        rec.optimizer]
    group = optimizer.param_groups[0]
    assert group.get("initial_lr", group["lr"]) == pytest.approx(rec.lr)
    assert group["weight_decay"] == pytest.approx(rec.weight_decay)
    if rec.optimizer == "sgd":
        assert group["momentum"] == pytest.approx(rec.momentum)
    schedulers = trainer.lr_scheduler_configs
    if rec.schedule["name"] == "constant":
        assert not schedulers and group["lr"] == pytest.approx(rec.lr)
    else:
        from spared.models.lightning import lr_factor

        assert schedulers[0].interval == "step"
        expected = rec.lr * lr_factor(rec.schedule, parts.steps_per_epoch)(2)
        assert group["lr"] == pytest.approx(expected)
    after = [p for p in model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))  # it trained


def test_vit_b_and_vit_b_delta_differ_on_the_same_batch(table, tmp_path_factory) -> None:
    from spared.models import build_model

    path = weights_file(tmp_path_factory.getbasetemp(), ("vit", VIT))
    models = {}
    for name in ("vit_b", "vit_b_delta"):
        torch.manual_seed(0)
        models[name] = build_model(name, table.n_genes, backbone_weights=path, backbone_kwargs=VIT)
        models[name].prepare([table.batch(table.indices("train"))])
    batch = table.batch(table.indices("test")[:16])
    a, b = models["vit_b"].predict(batch), models["vit_b_delta"].predict(batch)
    assert not torch.allclose(a, b, atol=1e-2)
    mean = torch.as_tensor(table.target[table.indices("train")].mean(0))
    assert torch.allclose(b - a, mean.expand_as(a), atol=1e-4)  # same weights: ViT-B+Δ adds the train means


# ------------------------------------------------------------------------------------------- data features


def test_training_patches_are_augmented_by_a_dihedral_symmetry(table) -> None:
    from spared.models.layers import DIHEDRAL, dihedral

    torch.manual_seed(0)
    data = SpotDataModule(table, "patch", batch_size=16, augment="dihedral")
    batch = next(iter(data.train_dataloader()))
    plain = table.batch(batch["index"].numpy())["image"]
    seen = set()
    for got, ref in zip(batch["image"], plain, strict=True):
        matches = [g for g in range(len(DIHEDRAL)) if torch.equal(got, dihedral(ref, g))]
        assert matches, "every training patch is a flip/rotation of the stored patch"
        seen.add(matches[0])
    assert len(seen) > 2  # independent draws per patch
    val = next(iter(data.val_dataloader()))
    assert torch.equal(val["image"], table.batch(val["index"].numpy())["image"])  # evaluation is not augmented
    prep = next(iter(data.prepare_batches()))
    assert torch.equal(prep["image"], table.batch(prep["index"].numpy())["image"])


def test_dihedral_tta_averages_the_eight_symmetries(table) -> None:
    from spared.models import build_model
    from spared.models.layers import dihedral
    from spared.models.lightning import PredictorModule

    torch.manual_seed(0)
    model = build_model("shufflenet", table.n_genes, backbone_weights="none", backbone_kwargs=SHUFFLE).eval()
    batch = table.batch(table.indices("val")[:4])
    module = PredictorModule(model, tta="dihedral")
    with torch.no_grad():
        expected = torch.stack([model({**batch, "image": dihedral(batch["image"], g)}) for g in range(8)]).mean(0)
        assert torch.allclose(module(batch), expected, atol=1e-6)
        assert not torch.allclose(PredictorModule(model)(batch), expected, atol=1e-6)


def test_size_factors_and_counts_come_from_the_raw_counts(table) -> None:
    assert table.counts is not None and table.counts.shape == table.target.shape
    for code in np.unique(table.slide):
        sel = table.slide == code
        total = table.counts[sel].sum(1)
        np.testing.assert_allclose(table.size_factor[sel], total / np.median(total), rtol=1e-5)


def test_graph_batches_carry_each_centres_neighbourhood(table) -> None:
    rng = np.random.default_rng(0)
    n, dim = table.target.shape[0], 5
    table.attach_stage1(rng.normal(size=(n, dim)).astype(np.float32), rng.normal(size=table.target.shape))
    spec = {"n_hops": 1, "neighbor_radius": 2.01, "hex_geometry": True}
    data = SpotDataModule(table, "graph", batch_size=8, graph=spec)
    batch = next(iter(data.train_dataloader()))
    assert "image" not in batch and batch["stage1"].shape == (8, table.n_genes)
    graphs = table.local_graphs(**spec)
    for row, centre in enumerate(batch["index"].tolist()):
        nodes = np.flatnonzero(batch["graph"].numpy() == row)
        spots = graphs.spot_of[graphs.graph_ptr[centre]:graphs.graph_ptr[centre + 1]]
        np.testing.assert_allclose(batch["embedding"][nodes].numpy(), table.embedding[spots])
        np.testing.assert_array_equal(batch["offset"][nodes].numpy(), table.coords[spots] - table.coords[centre])
        assert (table.slide[spots] == table.slide[centre]).all()  # never across slides
        # the neighbourhood is the spot and its lattice neighbours (at most 6 on a Visium lattice)
        assert spots[0] == centre and len(spots) <= 7
    with pytest.raises(ValueError, match="NaN"):
        table.attach_stage1(np.full((n, dim), np.nan), np.zeros(table.target.shape))


def test_sepal_reuses_a_finished_stage1_and_caches_its_outputs(table, data_dir, tmp_path) -> None:
    from spared.bench.train import stage1_values

    config, _, _ = CASES["sepal"]
    training = TrainingConfig(max_steps=2, patch_size=32, num_threads=1, backbone_weights="none")
    spec = RunSpec("sepal", TINY, "raw", 0, config, training)
    first = stage1_values(spec, tmp_path, data_dir, table, model_config=config["stage1"])
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    stamp = (run_dir / "metrics.json").stat().st_mtime_ns
    cache = (run_dir / "stage1.npz").stat().st_mtime_ns
    again = stage1_values(spec, tmp_path, data_dir, table, model_config=config["stage1"])
    assert (run_dir / "metrics.json").stat().st_mtime_ns == stamp  # stage 1 was not trained again
    assert (run_dir / "stage1.npz").stat().st_mtime_ns == cache  # and its outputs were read from the cache
    np.testing.assert_array_equal(first[0], again[0])
    # the cached deltas are the stage-1 model's own predictions minus the train means
    preds = np.load(run_dir / "predictions.npz")
    idx = preds["index"]
    mean = table.target[table.indices("train")].mean(0)
    np.testing.assert_allclose(first[1][idx] + mean, preds["prediction"], atol=1e-4)


# ----------------------------------------------------------------------------------- foundation + probe


def test_linear_probe_equals_sklearn_pipeline() -> None:
    sklearn = pytest.importorskip("sklearn")
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from spared.models.probe import LinearProbe

    assert sklearn
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 40)) * rng.uniform(0.1, 5, 40) + rng.normal(size=40)
    X[:, 3] = 1.5  # a constant feature keeps scale 1, as StandardScaler does
    Y = X[:, :6] @ rng.normal(size=(6, 5)) + 3 + rng.normal(scale=0.3, size=(120, 5))
    Xt = rng.normal(size=(30, 40))
    probe = LinearProbe(n_components=12).fit(X, Y)
    alpha = 100 / (12 * 5)
    ref = Pipeline([("scale", StandardScaler()), ("pca", PCA(12, svd_solver="full")),
                    ("ridge", Ridge(alpha=alpha))]).fit(X, Y)
    np.testing.assert_allclose(probe.predict(Xt), ref.predict(Xt), rtol=1e-6, atol=1e-8)
    # a gene fitted on its real entries only = sklearn's ridge on those rows of the same PCA scores
    mask = rng.random(Y.shape) < 0.7
    masked = LinearProbe(n_components=12).fit(X, Y, mask)
    scores = ref[:-1].transform(X)
    for g in range(Y.shape[1]):
        gene = Ridge(alpha=alpha).fit(scores[mask[:, g]], Y[mask[:, g], g])
        np.testing.assert_allclose(masked.predict(Xt)[:, g], gene.predict(ref[:-1].transform(Xt)), rtol=1e-6,
                                   atol=1e-8)
    without = LinearProbe(n_components=12, fit_intercept=False).fit(X, Y)
    no_intercept = Pipeline([("scale", StandardScaler()), ("pca", PCA(12, svd_solver="full")),
                             ("ridge", Ridge(alpha=alpha, fit_intercept=False))]).fit(X, Y)
    np.testing.assert_allclose(without.predict(Xt), no_intercept.predict(Xt), rtol=1e-6, atol=1e-8)


#: A two-block ViT (timm) standing in for UNI's ViT-L/16 in tests.
TINY_VIT = {"arch": "vit_tiny_patch16_224",
            "kwargs": {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2,
                       "num_classes": 0}, "input_size": 32}


def test_foundation_encoder_loads_a_local_file_only(tmp_path) -> None:
    import timm

    from spared.models.backbones import WeightsUnavailable
    from spared.models.foundation import build_encoder

    with pytest.raises(WeightsUnavailable, match=r"uni/pytorch_model\.bin"):
        build_encoder("uni_probe", weights_dir=tmp_path, encoder=TINY_VIT)
    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY_VIT["kwargs"])
    with torch.no_grad():
        net.patch_embed.proj.weight.fill_(KNOWN)
    (tmp_path / "uni").mkdir()
    torch.save(net.state_dict(), tmp_path / "uni" / "pytorch_model.bin")
    encoder = build_encoder("uni_probe", weights_dir=tmp_path, encoder=TINY_VIT)
    assert torch.all(encoder.trunk.patch_embed.proj.weight == KNOWN)
    assert encoder.weights_source == str(tmp_path / "uni" / "pytorch_model.bin") and len(encoder.weights_sha256) == 64
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(encoder(images), net(images), atol=1e-5)  # UNI's statistics are ImageNet's
    bad = timm.create_model("vit_tiny_patch16_224", pretrained=False,
                            **{**TINY_VIT["kwargs"], "embed_dim": 16})
    torch.save(bad.state_dict(), tmp_path / "bad.bin")
    with pytest.raises(ValueError, match="does not fit"):
        build_encoder("uni_probe", weights=tmp_path / "bad.bin", encoder=TINY_VIT)


def test_conch_vision_tower_pools_with_its_attentional_pooler(tmp_path) -> None:
    from spared.models.foundation import build_encoder

    tiny = {**TINY_VIT, "pool_dim": 16, "pool_heads": 2}
    random = build_encoder("conch_probe", weights="none", encoder=tiny)
    # a CONCH-style checkpoint: the vision tower under "visual.", plus tensors of the other towers
    state = {f"visual.{k}": v for k, v in random.state_dict().items() if not k.startswith("_")}
    state["visual.attn_pool_caption.query"] = torch.zeros(4, 16)
    state["text.token_embedding.weight"] = torch.zeros(8, 16)
    torch.save(state, tmp_path / "pytorch_model.bin")
    loaded = build_encoder("conch_probe", weights=tmp_path / "pytorch_model.bin", encoder=tiny)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = loaded(images)
        assert out.shape == (2, 16) and torch.allclose(out, random(images), atol=1e-5)
        tokens = random.trunk.forward_features(random._scale * images + random._shift)
        pooled = random.attn_pool_contrast(tokens)[:, 0]
        assert torch.allclose(out, torch.nn.functional.layer_norm(pooled, (16,), random.ln_contrast.weight,
                                                                  random.ln_contrast.bias), atol=1e-5)


def test_probe_run_caches_embeddings_per_dataset_and_encoder(table, data_dir, tmp_path) -> None:
    import timm

    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY_VIT["kwargs"])
    (tmp_path / "w" / "uni").mkdir(parents=True)
    torch.save(net.state_dict(), tmp_path / "w" / "uni" / "pytorch_model.bin")
    training = TrainingConfig(patch_size=32, num_threads=1, weights_dir=str(tmp_path / "w"))
    spec = RunSpec("uni_probe", TINY, "raw", 0, {"encoder": TINY_VIT}, training)
    frame = run_benchmark([spec], tmp_path / "res", data_dir=data_dir)
    row = frame.iloc[0]
    assert row["status"] == "done", row["error"]
    assert np.isfinite(row["MSE"]) and row["steps"] == 0
    (cached,) = (data_dir / "embeddings").glob("uni_probe-*.npy")
    assert np.load(cached).shape == (table.target.shape[0], 32)
    stamp = cached.stat().st_mtime_ns
    run_benchmark([spec], tmp_path / "res", data_dir=data_dir, force=True)
    assert cached.stat().st_mtime_ns == stamp  # computed once per dataset and encoder
    assert (tmp_path / "res" / "runs" / spec.run_id / "probe.npz").is_file()


# ---------------------------------------------------------------------------------------------- does it learn?

#: The simulated collection of the smoke run: 4 slides (2 train, 1 val, 1 test) of 150 spots whose images carry the
#: tissue domains that drive expression.
SMOKE_DATA = "simulated:n_slides=4,n_spots=150,n_genes=64,top_moran_genes=16,complete_missing=false"
SMOKE_SHUFFLE = {"stages_repeats": [1, 1, 1], "stages_out_channels": [16, 32, 64, 128, 256]}
SMOKE_VIT = {"image_size": 32, "patch_size": 8, "num_layers": 1, "num_heads": 2, "hidden_dim": 64, "mlp_dim": 128}
#: Small networks for 32-px patches (model sizes scaled down with the budget).
SMOKE_MODELS = {
    "shufflenet": {"backbone_kwargs": SMOKE_SHUFFLE},
    "stnet": {"backbone_kwargs": {"growth_rate": 8, "block_config": [2, 2], "num_init_features": 16}},
    "vit_b": {"backbone_kwargs": SMOKE_VIT},
    "vit_b_delta": {"backbone_kwargs": SMOKE_VIT},
    "histogene": {"patch_px": 16, "dim": 64, "depth": 1, "heads": 2, "dim_head": 16},
    "hist2st": {"fig_size": 16, "patch_size": 4, "channel": 16, "kernel_size": 3, "depth1": 1, "depth2": 1,
                "depth3": 2, "heads": 2, "dim_head": 16, "bake": 1},
    "egn": {"image_size": 32, "patch_size": 8, "dim": 64, "depth": 2, "heads": 2, "dim_head": 16, "mlp_dim": 128,
            "bhead": 2, "bdim": 8, "numk": 3, "retrieval_backbone": "shufflenet_v2_x0_5",
            "backbone_kwargs": SMOKE_SHUFFLE},
    "eggn": {"hidden": 64, "num_layers": 2, "numk": 3, "score_dim": 32, "retrieval_backbone": "shufflenet_v2_x0_5",
             "backbone_kwargs": SMOKE_SHUFFLE},
    "sepal": {"stage1": {"backbone_kwargs": SMOKE_VIT}, "preprocess_dims": [64], "graph_dims": [32, 32]},
    "bleep": {"backbone": "shufflenet_v2_x0_5", "backbone_kwargs": SMOKE_SHUFFLE, "projection_dim": 32},
}
#: Smoke scaling of a recipe: its optimiser, schedule (in epochs of the smoke data), augmentation, TTA, loss terms,
#: head initialisation and batch kind are kept; the budget becomes SMOKE_STEPS optimiser steps (the recipes ask
#: for 50-350 epochs of a 10,000-40,000-spot collection), and to travel a comparable distance in so few steps the
#: learning rate is multiplied by SMOKE_SPEEDUP, capped at SMOKE_LR_CAP. Backbones start from random weights (no
#: ImageNet file offline) and each run uses one thread (two threads on a shared 2-core machine run 5-30x slower).
SMOKE_STEPS, SMOKE_SPEEDUP, SMOKE_LR_CAP = 200, 300, 1e-2


def smoke_training(name: str) -> TrainingConfig:
    rec = recipe(name)
    return TrainingConfig(max_steps=SMOKE_STEPS, val_every=SMOKE_STEPS // 3, patch_size=32, num_threads=1,
                          batch_size=min(rec.batch_size, 32), slide_spots=128, backbone_weights="none",
                          lr=min(rec.lr * SMOKE_SPEEDUP, SMOKE_LR_CAP))


@pytest.mark.slow
def test_every_model_beats_the_train_mean_in_a_smoke_run(tmp_path) -> None:
    """On the simulated collection (images carry the tissue domains that drive expression) every model, trained
    with its recipe scaled to a smoke run, predicts the held-out slide better than the train-split means."""
    specs = [RunSpec(name, SMOKE_DATA, "raw", 0, SMOKE_MODELS[name], smoke_training(name)) for name in TRAINED_MODELS]
    frame = run_benchmark(specs, tmp_path).set_index("model")
    print(frame[["MSE", "baseline_MSE", "PCC-Gene", "seconds"]].to_string())  # the numbers of the report
    assert (frame["status"] == "done").all(), frame["error"].to_dict()
    for name in TRAINED_MODELS:
        row = frame.loc[name]
        assert row["MSE"] < row["baseline_MSE"], (name, row["MSE"], row["baseline_MSE"])
        plan, rec = json.loads(row["recipe"]), recipe(name)  # trained with its recipe, only the budget scaled
        assert (plan["optimizer"], plan["schedule"], plan["augment"], plan["tta"], plan["loss"]) == (
            rec.optimizer, dict(rec.schedule), rec.augment, rec.tta, dict(rec.loss))

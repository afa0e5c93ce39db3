"""Tests of spared.models: every model trains on a tiny learnable problem, retrieval/exemplar semantics,
slide-level batching, backbone weights handling and the registry."""

from __future__ import annotations

import math
import subprocess
import sys
import urllib.error

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from spared.models import MODEL_INFO, MODEL_NAMES, build_model  # noqa: E402
from spared.models.backbones import build_backbone  # noqa: E402

N_GENES = 6
PX = 32
VIT_TINY = {"image_size": 32, "patch_size": 8, "num_layers": 1, "num_heads": 2, "hidden_dim": 32, "mlp_dim": 64}
SHUFFLE_TINY = {"stages_repeats": [1, 1, 1], "stages_out_channels": [8, 16, 32, 64, 64]}

TINY: dict[str, dict] = {
    "shufflenet": {"backbone_kwargs": SHUFFLE_TINY},
    "stnet": {"backbone_kwargs": {"growth_rate": 8, "block_config": (1, 1, 1, 1), "num_init_features": 16,
                                  "bn_size": 2}},
    "vit_b": {"backbone_kwargs": VIT_TINY},
    "vit_b_delta": {"backbone_kwargs": VIT_TINY},
    "histogene": {"patch_px": 16, "dim": 32, "depth": 1, "heads": 2, "dim_head": 16},
    "hist2st": {"fig_size": 16, "patch_size": 4, "channel": 8, "kernel_size": 3, "depth1": 1, "depth2": 1,
                "depth3": 2, "heads": 2, "dim_head": 8, "bake": 1},
    "egn": {"image_size": 32, "patch_size": 8, "dim": 32, "depth": 2, "heads": 2, "dim_head": 16, "mlp_dim": 64,
            "bhead": 2, "bdim": 8, "numk": 3, "retrieval_backbone": "shufflenet_v2_x1_0",
            "backbone_kwargs": SHUFFLE_TINY},
    "eggn": {"hidden": 32, "num_layers": 2, "numk": 3, "score_dim": 32, "retrieval_backbone": "shufflenet_v2_x1_0",
             "backbone_kwargs": SHUFFLE_TINY},
    "sepal": {"backbone_kwargs": VIT_TINY, "preprocess_dims": (32,), "graph_dims": (16, 16), "n_hops": 2},
    "bleep": {"backbone": "shufflenet_v2_x1_0", "backbone_kwargs": SHUFFLE_TINY, "projection_dim": 16,
              "top_k": 5},
}


def hex_coords(rows: int, cols: int, row0: int = 0) -> np.ndarray:
    """Visium-like positions: columns step by 2 along a row, odd rows shifted by one."""
    return np.array([(r, c) for r in range(row0, row0 + rows) for c in range(r % 2, 2 * cols, 2)])


def make_slide(slide: int, n_rows: int, n_cols: int, start: int, gen: torch.Generator,
               weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """A slide whose targets are a fixed linear function of each patch's mean colour."""
    coords = torch.as_tensor(hex_coords(n_rows, n_cols))
    n = coords.shape[0]
    colour = torch.rand(n, 3, generator=gen) * 2 - 1
    image = colour[:, :, None, None] + 0.1 * torch.randn(n, 3, PX, PX, generator=gen)
    target = colour @ weight + 1.0
    mask = torch.rand(n, N_GENES, generator=gen) > 0.2
    return {"image": image, "target": target, "mask": mask, "coords": coords,
            "slide": torch.full((n,), slide), "index": torch.arange(start, start + n)}


@pytest.fixture(scope="module")
def data() -> dict[str, list[dict[str, torch.Tensor]]]:
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(3, N_GENES, generator=gen)
    train = [make_slide(0, 4, 6, 0, gen, weight), make_slide(1, 4, 5, 24, gen, weight)]
    test = [make_slide(2, 3, 5, 44, gen, weight)]
    return {"train": train, "test": test}


def concat(batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def tiny(name: str, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, N_GENES, **{**TINY[name], **extra})


def train_losses(model, batches: list[dict[str, torch.Tensor]], steps: int, lr: float = 3e-3) -> list[float]:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for step in range(steps):
        loss = model.loss(batches[step % len(batches)])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_trains_and_predicts(name: str, data) -> None:
    model = tiny(name)
    assert model.name == name and model.input_kind == MODEL_INFO[name].input_kind
    if model.requires_prepare:
        with pytest.raises(RuntimeError, match="prepare"):
            model.predict(data["test"][0])
        model.prepare(data["train"])
    slide_level = model.input_kind == "slide"
    batches = data["train"] if slide_level else [concat(data["train"])]
    losses = train_losses(model, batches, steps=16)
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-2:]) < np.mean(losses[:2]), losses
    pred = model.predict(data["test"][0])
    assert pred.shape == (data["test"][0]["target"].shape[0], N_GENES)
    assert torch.isfinite(pred).all()
    assert model.training  # predict() restores the training mode


def test_loss_uses_only_masked_finite_entries(data) -> None:
    model = tiny("shufflenet").eval()
    batch = data["train"][0]
    target = batch["target"].clone()
    target[~batch["mask"]] = 1e6
    target[0, :] = float("nan")
    with torch.no_grad():
        pred = model(batch)
        loss = model.loss({**batch, "target": target})
        keep = batch["mask"].clone()
        keep[0, :] = False
        assert float(loss) == pytest.approx(float((pred - batch["target"])[keep].square().mean()), rel=1e-5)
        full = model.loss({**batch, "loss_mask": torch.ones_like(keep)})
        assert float(full) == pytest.approx(float((pred - batch["target"]).square().mean()), rel=1e-5)


def test_delta_models_add_train_means(data) -> None:
    model = tiny("vit_b_delta")
    model.prepare(data["train"])
    train = concat(data["train"])
    assert torch.allclose(model.gene_mean, train["target"].mean(0), atol=1e-6)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    pred = model.predict(data["test"][0])
    assert torch.allclose(pred, model.gene_mean.expand_as(pred))


def test_absolute_models_start_at_the_train_means(data) -> None:
    model = tiny("stnet")
    model.prepare(data["train"])
    train = concat(data["train"])
    assert torch.allclose(model.head.bias, train["target"].mean(0), atol=1e-6)
    with torch.no_grad():
        model.head.weight.zero_()
    pred = model.predict(data["test"][0])
    assert torch.allclose(pred, train["target"].mean(0).expand_as(pred), atol=1e-5)


def test_bleep_prediction_is_mean_of_nearest_training_expressions(data) -> None:
    model = tiny("bleep")
    model.prepare(data["train"])
    train_losses(model, [concat(data["train"])], steps=3)
    query = data["test"][0]
    pred = model.predict(query)
    bank = concat(data["train"])["target"]
    model.eval()
    with torch.no_grad():
        img = model.image_embedding(query["image"])
        keys = model.spot_projection(bank)
    for i in range(img.shape[0]):
        sims = []
        for j in range(bank.shape[0]):
            a, b = img[i], keys[j]
            sims.append(float(a @ b) / (float(a.norm()) * float(b.norm())))
        nearest = np.argsort(sims)[::-1][: model.top_k]
        expected = bank[torch.as_tensor(nearest.copy())].mean(0)
        assert torch.allclose(pred[i], expected, atol=1e-5)


@pytest.mark.parametrize("name", ["egn", "eggn"])
def test_exemplars_come_from_the_training_bank_never_the_query(name: str, data) -> None:
    model = tiny(name)
    model.prepare(data["train"])
    train = concat(data["train"])
    bank = model.bank
    assert bank.size == train["target"].shape[0]
    assert torch.equal(bank.indices, train["index"]) and torch.equal(bank.exprs, train["target"])
    query = data["train"][0]
    rows = bank.nearest(bank.encode(query["image"]), query["slide"], query["index"], model.numk)
    # two training slides: exemplars come from the other slide, so never the spot itself
    assert (bank.slides[rows] != query["slide"][:, None]).all()
    assert not (bank.indices[rows] == query["index"][:, None]).any()
    # a single-slide bank still never returns the query itself
    one = tiny(name)
    one.prepare([data["train"][0]])
    rows = one.bank.nearest(one.bank.encode(query["image"]), query["slide"], query["index"], one.numk)
    assert not (one.bank.indices[rows] == query["index"][:, None]).any()
    # test spots retrieve training spots only
    test = data["test"][0]
    rows = bank.nearest(bank.encode(test["image"]), test["slide"], test["index"], model.numk)
    assert set(bank.indices[rows].flatten().tolist()) <= set(train["index"].tolist())


@pytest.mark.parametrize("name", ["histogene", "hist2st", "sepal", "eggn"])
def test_slide_models_handle_variable_spot_counts_and_reject_mixed_slides(name: str, data) -> None:
    model = tiny(name)
    if model.requires_prepare:
        model.prepare(data["train"])
    for batch in (*data["train"], data["test"][0]):
        for n in (1, 7, batch["target"].shape[0]):
            sub = {k: v[:n] for k, v in batch.items()}
            assert model.predict(sub).shape == (n, N_GENES)
    with pytest.raises(ValueError, match="one slide"):
        model.predict(concat(data["train"]))


def test_sepal_local_graphs_are_khop_neighbourhoods() -> None:
    from spared.models.layers import lattice_edges, local_subgraphs

    coords = torch.as_tensor(hex_coords(5, 5))
    edges = lattice_edges(coords)
    deg = torch.bincount(edges[1], minlength=len(coords))
    inner = [i for i, (r, c) in enumerate(coords.tolist()) if 0 < r < 4 and 1 < c < 8]
    assert (deg[inner] == 6).all()
    graph_of, spot_of, local, centre = local_subgraphs(edges, len(coords), 2)
    assert torch.equal(spot_of[centre], torch.arange(len(coords)))
    adj = torch.zeros(len(coords), len(coords), dtype=torch.bool)
    adj[edges[0], edges[1]] = True
    reach2 = (adj.int() + torch.eye(len(coords), dtype=torch.int)) @ (adj.int() + torch.eye(len(coords),
                                                                                            dtype=torch.int))
    for g in range(len(coords)):
        members = spot_of[graph_of == g]
        assert set(members.tolist()) == set(torch.nonzero(reach2[g]).flatten().tolist())
        in_graph = (graph_of[local[0]] == g)
        assert (graph_of[local[1]][in_graph] == g).all()
        expected = int(adj[members][:, members].sum())
        assert int(in_graph.sum()) == expected


def test_local_weights_file_round_trips(tmp_path) -> None:
    torch.manual_seed(0)
    source = build_backbone("densenet121", None, growth_rate=8, block_config=(1, 1), num_init_features=16)
    path = tmp_path / "densenet_tiny.pth"
    torch.save(source.state_dict(), path)
    loaded = build_backbone("densenet121", path, growth_rate=8, block_config=(1, 1), num_init_features=16)
    for (ka, a), (kb, b) in zip(source.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(a, b)
    # torchvision's released DenseNet files use legacy key names ("norm.1" for "norm1")
    import re

    legacy = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v
              for k, v in source.state_dict().items()}
    assert any(".norm.1." in k for k in legacy)
    torch.save(legacy, tmp_path / "legacy.pth")
    loaded = build_backbone("densenet121", tmp_path / "legacy.pth", growth_rate=8, block_config=(1, 1),
                            num_init_features=16)
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), loaded.state_dict().values(),
                                                 strict=True))
    # through build_model, with a full torchvision state dict (classifier included, as torchvision ships it)
    from torchvision.models import ShuffleNetV2

    torch.manual_seed(1)
    full = ShuffleNetV2(**SHUFFLE_TINY)
    torch.save(full.state_dict(), tmp_path / "shufflenet_tiny.pth")
    model = build_model("shufflenet", N_GENES, backbone_weights=tmp_path / "shufflenet_tiny.pth",
                        backbone_kwargs=SHUFFLE_TINY)
    got = model.encoder.net.state_dict()
    for key, value in full.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(got[key], value), key
    with pytest.raises(ValueError, match="do not fit"):
        build_backbone("shufflenet_v2_x1_0", tmp_path / "shufflenet_tiny.pth")
    with pytest.raises(FileNotFoundError):
        build_model("stnet", N_GENES, backbone_weights=tmp_path / "missing.pth")


def test_imagenet_offline_gives_a_clear_error(monkeypatch, tmp_path) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(RuntimeError, match=r"backbone_weights='/path/to/densenet121-a639ec97\.pth'"):
        build_model("stnet", N_GENES, backbone_weights="imagenet")
    with pytest.raises(ValueError, match="no pretrained"):
        build_model("histogene", N_GENES, backbone_weights="imagenet")


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown model 'stnett'") as err:
        build_model("stnett", N_GENES)
    for name in MODEL_NAMES:
        assert name in str(err.value)


def test_registry_covers_the_ten_columns() -> None:
    assert len(MODEL_NAMES) == 10
    assert {info.target for info in MODEL_INFO.values()} == {"absolute", "deltas"}
    assert [n for n, i in MODEL_INFO.items() if i.target == "deltas"] == ["vit_b_delta", "sepal"]


def test_checkpoint_reloads_banks(data, tmp_path) -> None:
    model = tiny("egn")
    model.prepare(data["train"])
    torch.save(model.state_dict(), tmp_path / "egn.pt")
    fresh = tiny("egn")
    fresh.load_state_dict(torch.load(tmp_path / "egn.pt", weights_only=True))
    assert bool(fresh.prepared) and fresh.bank.size == model.bank.size
    assert torch.allclose(fresh.predict(data["test"][0]), model.predict(data["test"][0]))


def test_import_spared_does_not_import_torch() -> None:
    code = "import sys, spared, spared.models; spared.models.MODEL_INFO; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lightning_module_logs_metrics(data, tmp_path) -> None:
    pytest.importorskip("spared.metrics")
    import lightning as L

    from spared.models.lightning import PredictorModule

    model = tiny("shufflenet")
    module = PredictorModule(model, lr=1e-3, weight_decay=0.0, optimizer="adamw")
    loader = torch.utils.data.DataLoader
    train = loader([concat(data["train"])], batch_size=None)
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=train, val_dataloaders=loader(data["test"], batch_size=None))
    assert {"val_MSE", "val_PCC-Gene"} <= set(trainer.callback_metrics)
    assert math.isfinite(module.metrics["val_MSE"])
    with pytest.raises(RuntimeError, match="prepare"):
        L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, default_root_dir=tmp_path).fit(
            PredictorModule(tiny("bleep")), train_dataloaders=train)

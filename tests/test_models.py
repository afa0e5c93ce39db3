"""Tests of spared.models: every model trains on a tiny learnable problem, retrieval/exemplar semantics,
slide-level and graph batching, head initialisation, loss terms, backbone weights handling and the registry."""

from __future__ import annotations

import math
import subprocess
import sys
import urllib.error

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from spared.models import MODEL_INFO, MODEL_NAMES, PROBE_MODELS, TRAINED_MODELS, build_model  # noqa: E402
from spared.models.backbones import build_backbone  # noqa: E402
from spared.models.layers import lattice_edges, local_subgraphs  # noqa: E402

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
    "sepal": {"embedding_dim": 8, "preprocess_dims": (32,), "graph_dims": (16, 16), "n_hops": 2},
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
    counts = torch.poisson(target.clamp(max=4).exp(), generator=gen)
    return {"image": image, "target": target, "mask": mask, "coords": coords,
            "slide": torch.full((n,), slide), "index": torch.arange(start, start + n),
            "counts": counts, "size_factor": counts.sum(1) / counts.sum(1).median()}


@pytest.fixture(scope="module")
def data() -> dict[str, list[dict[str, torch.Tensor]]]:
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(3, N_GENES, generator=gen)
    train = [make_slide(0, 4, 6, 0, gen, weight), make_slide(1, 4, 5, 24, gen, weight)]
    test = [make_slide(2, 3, 5, 44, gen, weight)]
    return {"train": train, "test": test}


def concat(batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def graph_batch(batch: dict[str, torch.Tensor], n_hops: int = 2) -> dict[str, torch.Tensor]:
    """SEPAL's stage-2 batch of every spot of a slide batch: 8-d 'embeddings' from the patch colours."""
    n = batch["coords"].shape[0]
    spots, owner, edges, _ = local_subgraphs(lattice_edges(batch["coords"]), n, n_hops).select(np.arange(n))
    colour = batch["image"].mean((2, 3))
    embedding = torch.cat([colour, -colour, colour[:, :2]], 1)
    out = {k: v for k, v in batch.items() if k != "image"}
    out.update(embedding=embedding[spots], offset=batch["coords"][spots] - batch["coords"][owner],
               graph=torch.as_tensor(owner), edges=torch.as_tensor(edges), stage1=torch.zeros(n, N_GENES))
    return out


def model_batches(name: str, batches: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """The batches a model of ``name`` consumes: graph batches for SEPAL, the given ones otherwise."""
    return [graph_batch(b) for b in batches] if MODEL_INFO[name].input_kind == "graph" else batches


def tiny(name: str, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, N_GENES, **{"backbone_weights": "none", **TINY[name], **extra})


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


@pytest.mark.parametrize("name", TRAINED_MODELS)
def test_model_trains_and_predicts(name: str, data) -> None:
    model = tiny(name)
    assert model.name == name and model.input_kind == MODEL_INFO[name].input_kind
    train, test = model_batches(name, data["train"]), model_batches(name, data["test"])
    if model.requires_prepare:
        with pytest.raises(RuntimeError, match="prepare"):
            model.predict(test[0])
        model.prepare(train)
    per_slide = model.input_kind in ("slide", "graph")
    batches = train if per_slide else [concat(train)]
    losses = train_losses(model, batches, steps=16)
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-2:]) < np.mean(losses[:2]), losses
    pred = model.predict(test[0])
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


def test_head_initialisation_follows_each_family(data, tmp_path) -> None:
    """ST-Net starts at the train means (its authors' init); ViT-B keeps PyTorch's init, so ViT-B and ViT-B+Δ,
    built from the same weights, predict differently on the same batch (by the train means)."""
    stnet = tiny("stnet")
    assert stnet.head_init == "train_mean"
    stnet.prepare(data["train"])
    means = concat(data["train"])["target"].mean(0)
    assert torch.allclose(stnet.head.bias, means, atol=1e-6) and not stnet.head.weight.any()
    pred = stnet.predict(data["test"][0])
    assert torch.allclose(pred, means.expand_as(pred), atol=1e-5)

    torch.manual_seed(0)
    path = tmp_path / "vit_tiny.pth"
    torch.save(build_backbone("vit_b_16", "none", **VIT_TINY).net.state_dict(), path)
    vit, delta = tiny("vit_b", backbone_weights=path), tiny("vit_b_delta", backbone_weights=path)
    assert vit.head_init == delta.head_init == "default"
    for model in (vit, delta):
        model.prepare(data["train"])
    assert torch.equal(vit.head.weight, delta.head.weight) and not torch.allclose(vit.head.bias, means)
    batch = data["test"][0]
    a, b = vit.predict(batch), delta.predict(batch)
    assert not torch.allclose(a, b, atol=1e-3)
    assert torch.allclose(b - a, means.expand_as(a), atol=1e-5)
    with pytest.raises(ValueError, match="head_init"):
        tiny("vit_b", head_init="zeros")


def test_masked_pcc_loss_matches_numpy(data) -> None:
    from spared.models.layers import masked_pcc_loss

    batch = concat(data["train"])
    pred = torch.randn(batch["target"].shape, generator=torch.Generator().manual_seed(3))
    got = float(masked_pcc_loss(pred, batch))
    mask = batch["mask"].numpy()
    rs = [np.corrcoef(pred[mask[:, g], g].numpy(), batch["target"][mask[:, g], g].numpy())[0, 1]
          for g in range(N_GENES)]
    assert got == pytest.approx(1 - np.mean(rs), rel=1e-4)
    assert float(masked_pcc_loss(batch["target"], batch)) == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("name", ["egn", "eggn"])
def test_exemplar_models_add_the_correlation_term(name: str, data) -> None:
    from spared.models.base import masked_mse
    from spared.models.layers import masked_pcc_loss

    model = tiny(name).eval()
    assert model.pcc_weight == 0.5  # the recipe's loss = mse + 0.5 · (1 − PCC)
    model.prepare(data["train"])
    batch = data["train"][0]
    with torch.no_grad():
        pred = model(batch)
        expected = masked_mse(pred, batch) + 0.5 * masked_pcc_loss(pred, batch)
        assert float(model.loss(batch)) == pytest.approx(float(expected), rel=1e-5)
        plain = tiny(name, pcc_weight=0.0).eval()
        plain.load_state_dict(model.state_dict())
        assert float(plain.loss(batch)) == pytest.approx(float(masked_mse(pred, batch)), rel=1e-5)


def test_zinb_nll_matches_scipy() -> None:
    from scipy.stats import nbinom

    from spared.models.hist2st import zinb_nll

    rng = np.random.default_rng(0)
    counts = rng.poisson(3.0, (40, 5)).astype(np.float64)
    mean, disp, pi = rng.uniform(0.5, 6, counts.shape), rng.uniform(0.3, 4, counts.shape), rng.uniform(0, .6,
                                                                                                     counts.shape)
    nb = nbinom.pmf(counts, disp, disp / (disp + mean))
    likelihood = np.where(counts == 0, pi + (1 - pi) * nb, (1 - pi) * nb)
    got = zinb_nll(*(torch.as_tensor(a) for a in (counts, mean, disp, pi)))
    assert float(got) == pytest.approx(-np.log(likelihood).mean(), rel=1e-6)


def test_hist2st_adds_the_zinb_term_on_raw_counts(data) -> None:
    model = tiny("hist2st", bake=0).eval()
    assert model.zinb == 0.25 and model.needs_counts  # the recipe's loss weight
    batch = {k: v for k, v in data["train"][0].items() if k not in ("counts", "size_factor")}
    with pytest.raises(ValueError, match="counts"):
        model.loss(batch)
    gen = torch.Generator().manual_seed(1)
    counted = {**batch, "counts": torch.poisson(torch.full(batch["target"].shape, 2.0), generator=gen),
               "size_factor": torch.rand(batch["target"].shape[0], generator=gen) + 0.5}
    with torch.no_grad():
        pos, edges = model._inputs(counted)
        h = model.embed(counted["image"], pos, edges)
        from spared.models.base import masked_mse

        expected = masked_mse(model.head(h), counted) + 0.25 * model.count_loss(h, counted)
        assert float(model.loss(counted)) == pytest.approx(float(expected), rel=1e-5)
    assert not tiny("hist2st", zinb=0.0).needs_counts


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
        keys = model.spot_projection(bank - model.gene_mean)  # expressions enter centred on the train means
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


@pytest.mark.parametrize("name", ["histogene", "hist2st", "eggn"])
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
    """Graph g holds the spots within n_hops of g (g first) and joins every two of them within n_hops (the
    authors' A + A² neighbourhood matrix); a selection renumbers the chosen graphs as one disjoint union."""
    coords = torch.as_tensor(hex_coords(5, 5))
    n = len(coords)
    edges = lattice_edges(coords)
    deg = torch.bincount(edges[1], minlength=n)
    inner = [i for i, (r, c) in enumerate(coords.tolist()) if 0 < r < 4 and 1 < c < 8]
    assert (deg[inner] == 6).all()
    graphs = local_subgraphs(edges, n, 2)
    adj = np.zeros((n, n), dtype=int)
    adj[edges[0].numpy(), edges[1].numpy()] = 1
    step = adj + np.eye(n, dtype=int)
    reach = (step @ step) > 0
    for g in range(n):
        members = graphs.spot_of[graphs.graph_ptr[g]:graphs.graph_ptr[g + 1]]
        assert members[0] == g and set(members.tolist()) == set(np.flatnonzero(reach[g]).tolist())
        local = graphs.edges[:, graphs.edge_ptr[g]:graphs.edge_ptr[g + 1]] - graphs.graph_ptr[g]
        got = {(int(members[a]), int(members[b])) for a, b in local.T}
        want = {(int(a), int(b)) for a in members for b in members if a != b and reach[a, b]}
        assert got == want
    chosen = np.array([7, 3, 7])
    spots, owner, sel_edges, centre = graphs.select(chosen)
    assert spots[centre].tolist() == chosen.tolist() and np.bincount(owner).tolist() == [
        graphs.graph_ptr[c + 1] - graphs.graph_ptr[c] for c in chosen]
    assert (owner[sel_edges[0]] == owner[sel_edges[1]]).all()
    assert sel_edges.shape[1] == sum(graphs.edge_ptr[c + 1] - graphs.edge_ptr[c] for c in chosen)


def test_sepal_corrects_the_stage1_deltas(data) -> None:
    model = tiny("sepal")
    batches = model_batches("sepal", data["train"])
    model.prepare(batches)
    batch = batches[0]
    with torch.no_grad():
        for conv in model.convs:
            conv.lin.weight.zero_()
            conv.bias.zero_()
        # ELU(0) = 0 after the last GCN layer: the pooled feature and the head's input are 0, so the correction
        # is ELU(head bias); a zero bias leaves exactly the stage-1 deltas
        model.head[0].bias.zero_()
        stage1 = torch.randn(batch["stage1"].shape, generator=torch.Generator().manual_seed(0))
        pred = model.predict({**batch, "stage1": stage1})
    assert torch.allclose(pred, stage1 + model.gene_mean, atol=1e-6)
    with pytest.raises(ValueError, match="embedding_dim"):
        model.predict({**batch, "embedding": batch["embedding"][:, :4]})


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
        build_backbone("shufflenet_v2_x0_5", tmp_path / "shufflenet_tiny.pth")
    with pytest.raises(FileNotFoundError):
        build_model("stnet", N_GENES, backbone_weights=tmp_path / "missing.pth")


def test_imagenet_offline_gives_a_clear_error(monkeypatch, tmp_path) -> None:
    from spared.models.backbones import WeightsUnavailable

    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsUnavailable) as err:
        build_model("stnet", N_GENES)  # ImageNet weights are the default
    message = " ".join(str(err.value).split())
    for part in ("densenet121-a639ec97.pth", "https://download.pytorch.org/models/densenet121-a639ec97.pth",
                 "sha256 a639ec97", str(tmp_path / "torch" / "hub" / "checkpoints"), "--weights-dir",
                 "--backbone-weights none"):
        assert part in message, part
    with pytest.raises(WeightsUnavailable, match="0676ba61b6795bbe1773cffd859882e5e297624d384b6993f7c9e683e722fb8a"):
        build_model("bleep", N_GENES)  # the full sha256 of ResNet-50 V1 is on record
    # models without a pretrained backbone accept the default and reject a weights file
    assert build_model("histogene", N_GENES, backbone_weights="imagenet", **TINY["histogene"]) is not None
    with pytest.raises(ValueError, match="no pretrained image backbone"):
        build_model("hist2st", N_GENES, backbone_weights=tmp_path / "x.pth", **TINY["hist2st"])


def test_imagenet_file_found_in_weights_dir_or_cache_and_verified(monkeypatch, tmp_path) -> None:
    """The ImageNet file is taken from weights_dir, else the hub cache, after its checksum is verified."""
    from torchvision.models import ShuffleNetV2

    from spared.models import backbones

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("no download expected"))
    name = backbones.imagenet_file("shufflenet_v2_x0_5").name
    torch.manual_seed(0)
    net = ShuffleNetV2(**SHUFFLE_TINY)
    with torch.no_grad():
        net.conv1[0].weight.fill_(0.0123)
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(net.state_dict(), cache / name)
    with pytest.raises(ValueError, match="is not torchvision's"):  # a file of that name with another checksum
        build_model("shufflenet", N_GENES, backbone_kwargs=SHUFFLE_TINY)
    monkeypatch.setitem(backbones._SHA256, name, backbones.sha256_of(cache / name))
    model = build_model("shufflenet", N_GENES, backbone_kwargs=SHUFFLE_TINY)
    assert model.encoder.weights_source == str(cache / name)
    assert torch.all(model.encoder.net.conv1[0].weight == 0.0123)
    own = tmp_path / "mine"
    own.mkdir()
    (own / name).write_bytes((cache / name).read_bytes())
    model = build_model("shufflenet", N_GENES, backbone_kwargs=SHUFFLE_TINY, weights_dir=own)
    assert model.encoder.weights_source == str(own / name)


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown model 'stnett'") as err:
        build_model("stnett", N_GENES)
    for name in MODEL_NAMES:
        assert name in str(err.value)


def test_registry_covers_the_ten_columns_and_the_probes() -> None:
    assert len(TRAINED_MODELS) == 10 and len(PROBE_MODELS) == 5
    assert set(MODEL_NAMES) == set(TRAINED_MODELS) | set(PROBE_MODELS)
    assert {info.target for info in MODEL_INFO.values()} == {"absolute", "deltas"}
    assert [n for n, i in MODEL_INFO.items() if i.target == "deltas"] == ["vit_b_delta", "sepal"]
    with pytest.raises(ValueError, match="linear probe"):
        build_model("uni_probe", N_GENES)


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

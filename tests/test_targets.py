"""Targets decide the loss entries: raw (measured), median (every c_d_log1p entry), completed (every c_t_log1p entry),
with an optional lower weight on unmeasured entries; scoring is the same for all three."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import TINY_BENCH  # noqa: E402
from spared.bench import RunSpec, TrainingConfig, load_collection, make_specs, run_benchmark  # noqa: E402
from spared.bench.targets import (  # noqa: E402
    TARGETS,
    get_target,
    label_order,
    loss_entries,
    target_label,
    target_meaning,
)

TINY_SHUFFLENET = {"backbone_kwargs": {"stages_repeats": [1, 1, 1], "stages_out_channels": [8, 16, 16, 16, 32]}}
FAST = TrainingConfig(max_steps=3, batch_size=16, patch_size=32, val_every=3, lr=1e-2, num_threads=1,
                      backbone_weights="none")


def test_vocabulary_and_layer_names():
    assert list(TARGETS) == ["raw", "median", "completed"]
    assert {n: (t.layer, t.loss_entries) for n, t in TARGETS.items()} == {
        "raw": ("c_d_log1p", "real"), "median": ("c_d_log1p", "all"), "completed": ("c_t_log1p", "all")}
    assert "authors' raw experiment" in TARGETS["median"].meaning and "SpaCKLE" in TARGETS["completed"].meaning
    # a layer name is a target too: completed layers put every entry in the loss, the others the measured ones
    assert get_target("c_t_log1p").loss_entries == "all" and get_target("c_d_log1p").loss_entries == "real"
    assert get_target("c_d_log1p", loss_entries="all").loss_entries == "all"
    with pytest.raises(ValueError, match="absolute expression layer"):
        get_target("c_t_deltas")
    with pytest.raises(ValueError, match="median"):
        get_target("raw", loss_entries="all")
    with pytest.raises(ValueError, match="loss_entries"):
        get_target("c_d_log1p", loss_entries="some")


def test_loss_entries_and_weights():
    mask = np.array([[True, False], [False, True]])
    np.testing.assert_array_equal(loss_entries(mask, "raw", 0.3)[0], mask)  # raw: the weight does not apply
    assert loss_entries(mask, "raw", 0.3)[1] is None
    for name in ("median", "completed"):
        full, weight = loss_entries(mask, name)
        assert full.all() and weight is None
        full, weight = loss_entries(mask, name, 0.25)
        assert full.all()
        np.testing.assert_array_equal(weight, [[1, 0.25], [0.25, 1]])
        np.testing.assert_array_equal(loss_entries(mask, name, 0)[0], mask)  # weight 0: measured entries only
    with pytest.raises(ValueError, match="imputed_weight"):
        loss_entries(mask, "completed", -1)
    with pytest.raises(ValueError, match="imputed_weight"):
        TrainingConfig(imputed_weight=float("nan"))
    assert target_label("completed", 0.5) == "completed w=0.5" and target_label("raw", 0.5) == "raw"
    assert target_label("median", float("nan")) == "median"  # rows written before the weight existed
    assert label_order({"completed w=0.5", "raw", "completed", "median"}) == [
        "raw", "median", "completed", "completed w=0.5"]
    assert "weighing 0.5" in target_meaning("completed w=0.5")


def test_run_ids_count_the_weight_only_where_it_applies():
    raw = RunSpec("stnet", "simulated", "raw", 0, {}, TrainingConfig(max_steps=5))
    assert "imputed_weight" not in raw.identity()["training"]  # ids of runs made before the option are kept
    assert RunSpec("stnet", "simulated", "raw", 0, {}, TrainingConfig(max_steps=5, imputed_weight=0.5)).run_id \
        == raw.run_id  # raw has no unmeasured entries in its loss
    median = RunSpec("stnet", "simulated", "median", 0, {}, TrainingConfig(max_steps=5))
    weighted = RunSpec("stnet", "simulated", "median", 0, {}, TrainingConfig(max_steps=5, imputed_weight=0.5))
    assert len({raw.run_id, median.run_id, weighted.run_id}) == 3
    assert median.run_id.startswith("stnet-simulated-median-s0-") and weighted.imputed_weight == 0.5
    assert RunSpec.from_dict(json.loads(json.dumps(weighted.to_dict()))) == weighted


def test_weighted_losses_match_a_numpy_reference():
    from spared.models.base import masked_mse
    from spared.models.layers import masked_pcc_loss

    rng = np.random.default_rng(1)
    pred, target = rng.normal(size=(12, 5)), rng.normal(size=(12, 5))
    mask = rng.random((12, 5)) < 0.6
    loss_mask, weight = loss_entries(mask, "completed", 0.3)
    batch = {"target": torch.tensor(target), "mask": torch.tensor(mask), "loss_mask": torch.tensor(loss_mask),
             "loss_weight": torch.tensor(weight, dtype=torch.float64)}
    w = weight.astype(np.float64)  # 1 on measured entries, 0.3 (as float32) on the others
    assert float(masked_mse(torch.tensor(pred), batch)) == pytest.approx((w * (pred - target) ** 2).sum() / w.sum())
    r = []
    for g in range(5):
        mp, mt = np.average(pred[:, g], weights=w[:, g]), np.average(target[:, g], weights=w[:, g])
        cov = (w[:, g] * (pred[:, g] - mp) * (target[:, g] - mt)).sum()
        var = (w[:, g] * (pred[:, g] - mp) ** 2).sum() * (w[:, g] * (target[:, g] - mt) ** 2).sum()
        r.append(cov / (np.sqrt(var) + 1e-8))
    assert float(masked_pcc_loss(torch.tensor(pred), batch)) == pytest.approx(1 - np.mean(r), rel=1e-9)


def test_weighted_probe_equals_sklearn_ridge_with_sample_weights():
    pytest.importorskip("sklearn")
    from sklearn.linear_model import Ridge

    from spared.models.probe import LinearProbe

    rng = np.random.default_rng(2)
    X = rng.normal(size=(80, 10))
    Y = X[:, :3] @ rng.normal(size=(3, 4)) + 2 + rng.normal(scale=0.2, size=(80, 4))
    mask = rng.random(Y.shape) < 0.7
    loss_mask, weight = loss_entries(mask, "median", 0.2)
    probe = LinearProbe(n_components=6, alpha=0.5).fit(X, Y, loss_mask, weight)
    scores = probe.transform(X)
    for g in range(4):
        ref = Ridge(alpha=0.5).fit(scores, Y[:, g], sample_weight=weight[:, g])
        np.testing.assert_allclose(probe.coef_[:, g], ref.coef_, rtol=1e-6, atol=1e-9)
        assert probe.intercept_[g] == pytest.approx(ref.intercept_)


class LossEntries:
    """A Lightning callback recording, for each training batch, dLoss/dPrediction of the model's own loss."""

    def __init__(self):
        import lightning as L

        outer = self
        self.seen: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

        class Hook(L.Callback):
            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                outputs = []
                handle = module.model.register_forward_hook(lambda m, i, o: outputs.append(o))
                try:
                    loss = module.model.loss(batch)
                finally:
                    handle.remove()
                (grad,) = torch.autograd.grad(loss, outputs[0])
                outer.seen.append((batch["index"].numpy(), outputs[0].detach().double().numpy(),
                                   grad.double().numpy()))

        self.callback = Hook()


@pytest.mark.parametrize(("target", "weight"), [("raw", 1.0), ("median", 1.0), ("completed", 1.0),
                                                ("completed", 0.25)])
def test_training_puts_the_targets_entries_in_the_loss(target, weight, bench_data_dir, tmp_path):
    """Train a small model a few steps; each batch's loss gradient shows which entries, values and weights entered
    its loss: dL/dŷ = 2 w (ŷ − y) / Σw, with y and w worked out here from the AnnData layers."""
    import lightning as L

    from spared.bench.train import prepare_run

    adata, _ = load_collection(TINY_BENCH, bench_data_dir)
    layers = {k: np.asarray(adata.layers[k], dtype=np.float64) for k in ("c_d_log1p", "c_t_log1p")}
    mask = np.asarray(adata.layers["mask"], dtype=bool)
    train = np.flatnonzero(adata.obs["split"].to_numpy() == "train")
    unmeasured = ~mask[train]
    assert unmeasured.mean() > 0.05  # there are fills to tell the targets apart
    assert np.abs(layers["c_d_log1p"][train][unmeasured] - layers["c_t_log1p"][train][unmeasured]).mean() > 0.05
    spec = RunSpec("shufflenet", TINY_BENCH, target, 0, TINY_SHUFFLENET,
                   TrainingConfig(**{**FAST.to_dict(), "imputed_weight": weight}))
    parts = prepare_run(spec, tmp_path, bench_data_dir)
    recorder = LossEntries()
    L.Trainer(max_steps=3, limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, callbacks=[recorder.callback],
              accelerator="cpu").fit(parts.module, datamodule=parts.data)
    assert len(recorder.seen) == 3
    expected_y = layers["c_t_log1p" if target == "completed" else "c_d_log1p"]
    for index, pred, grad in recorder.seen:
        measured = mask[index]
        w = np.where(measured, 1.0, 0.0 if target == "raw" else weight)
        expected = 2 * w * (pred - expected_y[index]) / w.sum()
        np.testing.assert_allclose(grad, expected, rtol=2e-4, atol=1e-7)
        entered = grad != 0
        np.testing.assert_array_equal(entered, measured if target == "raw" else np.ones_like(measured))


def test_three_targets_from_the_cli_table_and_report(bench_data_dir, tmp_path):
    from typer.testing import CliRunner

    from spared.cli import app

    out = tmp_path / "res"
    config = tmp_path / "models.json"
    config.write_text(json.dumps({"shufflenet": TINY_SHUFFLENET}))
    runner = CliRunner()
    args = ["bench", "--models", "shufflenet", "--datasets", TINY_BENCH, "--targets", "raw,median,completed",
            "--max-steps", "3", "--batch-size", "16", "--patch-size", "32", "--val-every", "3", "--lr", "0.01",
            "--backbone-weights", "none", "--model-config", str(config), "--out", str(out),
            "--data-dir", str(bench_data_dir)]
    result = runner.invoke(app, args, env={"COLUMNS": "240"})
    assert result.exit_code == 0, result.output
    shown = runner.invoke(app, ["results", str(out), "--json"])
    (record,) = json.loads(shown.output)
    for name in TARGETS:
        assert record[f"n {name}"] == 1 and np.isfinite(record[f"MSE {name} mean"])
    text = runner.invoke(app, ["results", str(out)], env={"COLUMNS": "240"}).output
    assert all(f"MSE {name}" in text for name in TARGETS) and "authors' raw experiment" in " ".join(text.split())
    rows = run_benchmark(make_specs(["shufflenet"], [TINY_BENCH], list(TARGETS), [0], {"shufflenet": TINY_SHUFFLENET},
                                    TrainingConfig(max_steps=3, batch_size=16, patch_size=32, val_every=3, lr=0.01,
                                                   backbone_weights="none")), out, data_dir=bench_data_dir)
    # the same runs (nothing retrained), scored alike: the measured entries of the test split; and vs the truth
    assert list(rows["layer"]) == ["c_d_log1p", "c_d_log1p", "c_t_log1p"]
    assert set(rows["scored_entries"]) == {"real"} and set(rows["eval_split"]) == {"test"}
    assert rows["n_spots_scored"].nunique() == 1 and np.isfinite(rows["MSE vs truth"]).all()
    import html

    from spared.report import build_report

    page = build_report(out, processed={}).read_text()
    for name in TARGETS:
        assert html.escape(TARGETS[name].meaning) in page


def test_tables_written_before_the_targets_existed_still_read(tmp_path):
    """Rows of older versions (no protocol fields, weights or custom flags; targets raw/completed) keep their
    meaning: raw was already the measured-entries loss."""
    import pandas as pd
    from typer.testing import CliRunner

    from spared.cli import app
    from spared.report import build_report

    old = pd.DataFrame({"run_id": ["a", "b", "c"], "model": "stnet", "dataset": "simulated",
                        "target": ["raw", "raw", "completed"], "seed": [0, 1, 0], "status": "done", "error": "",
                        "data_version": "v0", "spec_key": ["k1", "k2", "k3"], "MSE": [1.0, 2.0, 0.5],
                        "PCC-Gene": [0.1, 0.2, 0.3], "layer": ["c_d_log1p", "c_d_log1p", "c_t_log1p"]})
    old.to_parquet(tmp_path / "results.parquet", index=False)
    result = CliRunner().invoke(app, ["results", str(tmp_path), "--json"])
    (record,) = json.loads(result.output)
    assert record["MSE raw mean"] == pytest.approx(1.5) and record["n completed"] == 1 and not record["custom"]
    page = build_report(tmp_path, processed={}).read_text()
    assert "measured entries only" in page and "MSE ↓, raw" in page and "MSE ↓, median" not in page

"""The completion-effect study (benchmarks/completion_effect.py): its plan, its paired arithmetic and a whole
study on a tiny simulated collection (1 seed, 2 steps)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import completion_effect as ce

from conftest import TINY_BENCH

TINY_VIT = {"image_size": 32, "patch_size": 8, "num_layers": 1, "num_heads": 2, "hidden_dim": 16, "mlp_dim": 16}


def test_paired_arithmetic_matches_a_hand_computation():
    """completed − raw over 4 seeds: differences −0.1, −0.2, +0.05, −0.15 (MSE) worked out by hand."""
    raw = [1.0, 1.2, 0.9, 1.1]
    completed = [0.9, 1.0, 0.95, 0.95]
    median = [1.0, 1.0, 1.0, 1.0]
    rows = [{"dataset": "d", "condition": "base", "model": "stnet", "target": target, "seed": seed,
             "status": "done", "MSE": value, "PCC-Gene": -value}
            for target, values in (("raw", raw), ("median", median), ("completed", completed))
            for seed, value in enumerate(values)]
    frame = pd.DataFrame(rows)
    pairs = ce.paired(frame, ["MSE", "PCC-Gene"]).set_index(["reference", "metric"])
    row = pairs.loc[("raw", "MSE")]
    diffs = np.array([-0.1, -0.2, 0.05, -0.15])
    mean = -0.1
    std = np.sqrt(((diffs - mean) ** 2).sum() / 3)  # 0.10801
    assert row["n"] == 4 and row["mean diff"] == pytest.approx(mean) and row["std diff"] == pytest.approx(std)
    assert row["completed wins"] == 3 and row["better"] == "lower"
    # t = mean / (std / sqrt(n)) = -1.8516 on 3 degrees of freedom: two-sided p from the t distribution
    from scipy import stats

    t = mean / (std / 2)
    assert row["t p"] == pytest.approx(2 * stats.t.sf(abs(t), 3))
    # Wilcoxon, exact: |d| ranks 2, 4, 1, 3; the positive difference has rank 1, so W+ = 1; of the 16 sign patterns
    # two have W+ <= 1 (W+ = 0 and W+ = 1), p = 2 * 2/16
    assert row["wilcoxon p"] == pytest.approx(0.25)
    # PCC is "higher is better": the same differences negated, completed wins on the same 3 seeds
    pcc = pairs.loc[("raw", "PCC-Gene")]
    assert pcc["mean diff"] == pytest.approx(0.1) and pcc["completed wins"] == 3 and pcc["better"] == "higher"
    versus_median = pairs.loc[("median", "MSE")]
    assert versus_median["mean diff"] == pytest.approx(np.mean(completed) - 1.0)
    assert versus_median["completed wins"] == 3  # seed 1 is a tie (1.0 and 1.0): not a win
    summary = ce.summarise(frame, ["MSE"]).set_index("target")
    assert summary.loc["raw", "MSE mean"] == pytest.approx(1.05)
    assert summary.loc["raw", "MSE std"] == pytest.approx(np.std(raw, ddof=1))
    text = ce.markdown(summary.reset_index(), ce.paired(frame, ["MSE"]), metrics=["MSE"])
    assert f"−0.100 ± {std:.3f} (t p {2 * stats.t.sf(abs(t), 3):.3f}, W p 0.250; 3/4)" in text


def test_paired_tests_undefined_cases():
    assert all(np.isnan(ce.paired_tests(np.array([0.3]))))  # one pair
    assert all(np.isnan(ce.paired_tests(np.zeros(5))))  # no difference at all


def test_plan_conditions_and_budgets():
    config = ce.StudyConfig({"sim": TINY_BENCH, "other": TINY_BENCH.replace("n_spots=100", "n_spots=90")},
                            {"stnet": ce.SMALL_MODELS["stnet"]}, seeds=(0, 1), weights=(0.5,),
                            weak_spackle_steps=(200, 10), variant_datasets={"length": ("sim",)},
                            training=ce.SMALL_TRAINING)
    names = [c.name for c in config.conditions()]
    assert names == ["base", "completed weighs 0.5", "SpaCKLE 200 steps", "SpaCKLE 10 steps", "3x steps"]
    long = ce.training_config(config, "stnet", config.conditions()[-1])
    assert (long.max_steps, long.val_every) == (450, 150)
    weighted = ce.training_config(config, "stnet", config.conditions()[1])
    assert (weighted.max_steps, weighted.val_every, weighted.imputed_weight) == (150, 50, 0.5)
    specs, rows = ce.plan(config)
    trained = rows[~rows["shared"]]
    # base: 2 datasets x 3 targets x 2 seeds; weights and SpaCKLE: completed only on both; length: sim only
    assert trained.groupby("condition", sort=False).size().to_dict() == {
        "base": 12, "completed weighs 0.5": 4, "SpaCKLE 200 steps": 4, "SpaCKLE 10 steps": 4, "3x steps": 6}
    assert len(specs) == 30 and trained["run_id"].is_unique
    base = rows[rows["condition"] == "base"].set_index(["dataset", "model", "target", "seed"])["run_id"]
    shared = rows[rows["shared"]].set_index(["dataset", "model", "target", "seed"])["run_id"]
    assert (shared == base.loc[shared.index]).all()  # raw/median of the completed-only conditions: the base runs
    weak = trained[trained["condition"] == "SpaCKLE 200 steps"]["dataset_string"]
    assert weak.str.endswith("spackle_max_steps=200").all() and weak.str.count("spackle_max_steps").eq(1).all()
    with pytest.raises(ValueError, match="not among the study's datasets"):
        ce.StudyConfig({"sim": TINY_BENCH}, {}, variant_datasets={"length": ("lung",)})
    with pytest.raises(ValueError, match="processed file"):
        ce.with_parameter("/data/x.h5ad", "spackle_max_steps", 5)


@pytest.mark.slow
def test_study_end_to_end_on_a_tiny_collection(bench_data_dir, tmp_path):
    """One seed, 2 steps, every condition: the tables hold what the results table says, and a rerun trains
    nothing."""
    pytest.importorskip("torch")
    from spared.bench.results import ResultsTable

    config = ce.StudyConfig({"tiny": TINY_BENCH},
                            {"vit_b_delta": ce.ModelSetup({"backbone_kwargs": TINY_VIT},
                                                          {"max_steps": 2, "batch_size": 16, "lr": 1e-2})},
                            seeds=(0,), weights=(0.5,), long_factor=2, weak_spackle_steps=(5,),
                            training={**ce.SMALL_TRAINING, "num_threads": 1, "val_checks": 1})
    seen = []
    result = ce.run_study(config, tmp_path, on_result=seen.append, data_dir=bench_data_dir)
    assert len(seen) == 3 + 1 + 1 + 3 and all(row["status"] == "done" for row in seen)
    table = ResultsTable(tmp_path).load().set_index("run_id")
    frame = result["frame"]
    assert set(frame["status"]) == {"done"}
    for condition in ("base", "completed weighs 0.5", "SpaCKLE 5 steps", "2x steps"):
        runs = frame[frame["condition"] == condition].set_index("target")["run_id"]
        mse = table.loc[runs, "MSE"].to_numpy()
        pair = result["paired"].set_index(["condition", "reference", "metric"])
        for reference, value in (("raw", mse[0]), ("median", mse[1])):
            row = pair.loc[(condition, reference, "MSE")]
            assert row["mean diff"] == pytest.approx(mse[2] - value) and row["n"] == 1
            assert row["completed wins"] == int(mse[2] < value) and np.isnan(row["t p"])
        truth = pair.loc[(condition, "raw", "MSE vs truth"), "mean diff"]
        assert truth == pytest.approx(table.loc[runs["completed"], "MSE vs truth"] - table.loc[runs["raw"],
                                                                                              "MSE vs truth"])
    weighted = frame[(frame["condition"] == "completed weighs 0.5") & (frame["target"] == "completed")]
    assert table.loc[weighted["run_id"].iloc[0], "imputed_weight"] == 0.5
    quality = result["quality"].set_index("spackle")
    assert set(quality.index) == {"default", "5 steps"}
    assert (quality["spackle_fill_mse_vs_truth"] > 0).all() and (quality["median_fill_mse_vs_truth"] > 0).all()
    record = json.loads((tmp_path / "completion_effect.json").read_text())
    assert record["status"] == {"done": 8} and len(record["paired"]) == len(result["paired"])
    assert "| model | condition | raw | median | completed |" in (tmp_path / "completion_effect.md").read_text()
    assert len(pd.read_csv(tmp_path / "completion_effect_paired.csv")) == len(result["paired"])
    again = []
    ce.run_study(config, tmp_path, on_result=again.append, data_dir=bench_data_dir)
    assert again == []  # every run finished: nothing is trained again

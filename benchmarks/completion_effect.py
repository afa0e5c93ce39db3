"""Does training on SpaCKLE-completed targets help prediction? Raw vs median vs completed, paired over seeds.

Each model trains on the three targets of :mod:`spared.bench.targets` with the same seeds and settings:

- ``raw``: ``c_d_log1p``, only the measured entries in the loss (a stronger baseline than the paper ran);
- ``median``: ``c_d_log1p``, every entry in the loss, the adaptive-median-filter fills included (the authors' raw
  experiment);
- ``completed``: ``c_t_log1p``, every entry in the loss, the missing ones completed by SpaCKLE.

Every run is scored alike (:mod:`spared.bench.scoring`): the measured entries of the evaluation split, and on the
simulated collection also every entry against the simulated truth. Per model, ``completed`` is compared with
``raw`` and with ``median`` seed by seed (same seed = same initial weights and batch order): the mean and standard
deviation of the difference, a paired t-test and a Wilcoxon signed-rank test (scipy, exact; its smallest two-sided
p is 0.0625 with 5 seeds, 0.002 with 10) and the number of seeds where ``completed`` is better. Seeds: 0-9 in the
base condition, 0-4 in the variants (``--seeds``, ``--variant-seeds``).

Conditions (``--variants``) vary what could explain the answer:

- ``base``: the models' budgets, SpaCKLE at its defaults, every loss entry weighing 1;
- ``spackle``: ``completed`` on the same collection completed by a weakly trained SpaCKLE (``--weak-spackle-steps``:
  the demo's 200 steps, and 20), compared with the base runs of ``raw``/``median`` (their layer does not depend on
  SpaCKLE: checked before any run);
- ``weights``: ``completed`` with the completed entries weighing ``--weights`` (measured ones 1), compared with the
  base runs of ``raw``/``median``;
- ``length``: the three targets trained ``--long-factor`` times longer.

Datasets: ``sim`` (the demo's simulated collection, with its truth), ``lung`` and ``kidney`` (the Villacampa
organoids from the catalogue, patches cut from their hires images; first
``spared download villacampa_lung_organoid --from $SPARED_REALDATA/villacampa_xjtv62ncwr`` and
``spared prepare villacampa_lung_organoid``, the same for kidney). The default models are small versions of ST-Net,
ViT-B+Δ and HisToGene (2 CPU cores); ``--full --device cuda`` trains the full-size models at their recipes
(ImageNet backbones: ``--weights-dir`` offline) on the organoids.

The study is rerunnable: finished runs are skipped (:func:`spared.bench.run_benchmark`), so a second call only
trains what is missing and ``--report-only`` rebuilds the tables. Outputs in ``--out``: ``completion_effect.md``
(also printed), ``completion_effect.json`` (settings, tables), ``completion_effect_runs.csv``,
``completion_effect_summary.csv``, ``completion_effect_paired.csv``, ``completion_effect_spackle.csv``.

Usage::

    python benchmarks/completion_effect.py --out /tmp/completion_effect                  # the CPU study
    python benchmarks/completion_effect.py --out /tmp/completion_effect --plan           # what would run
    python benchmarks/completion_effect.py --full --device cuda --weights-dir W --out R  # full size, on a GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spared.bench.results import format_mean_std
from spared.bench.targets import TARGET_NAMES, TARGETS, TRUTH_LAYER

#: The demo's simulated collection (``spared demo``'s defaults) with SpaCKLE at its defaults.
SIMULATED = "simulated:n_slides=3,n_spots=1200,n_genes=512,top_moran_genes=64,seed=0"
#: Datasets by their label in the study.
DATASETS = {"sim": SIMULATED, "lung": "villacampa_lung_organoid", "kidney": "villacampa_kidney_organoid"}
#: Variants of the base condition (see the module docstring).
VARIANTS = ("weights", "spackle", "length")
#: Reference targets ``completed`` is compared with.
REFERENCES = ("raw", "median")
#: Metrics of the tables (``" vs truth"`` ones on simulated data only).
METRICS = ("MSE", "PCC-Gene", "MSE vs truth", "PCC-Gene vs truth")


@dataclass(frozen=True)
class ModelSetup:
    """A model of the study: its constructor settings and its training settings (``TrainingConfig`` fields)."""

    config: Mapping[str, Any] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)


_VIT = {"image_size": 32, "patch_size": 8, "num_layers": 1, "num_heads": 2, "hidden_dim": 64, "mlp_dim": 128}
#: Small models for 2 CPU cores on 32-px patches, random initialisation: ST-Net and ViT-B+Δ as in ``spared demo``
#: (150 steps of 32 spots, lr 1e-2), HisToGene on 128-spot windows at lr 3e-3 for 600 steps (at 150 steps, or with
#: 16-px patches, it did not beat the train mean on the simulated collection).
SMALL_MODELS = {
    "stnet": ModelSetup({"backbone_kwargs": {"growth_rate": 8, "block_config": [2, 2], "num_init_features": 16}},
                        {"max_steps": 150, "batch_size": 32, "lr": 1e-2}),
    "vit_b_delta": ModelSetup({"backbone_kwargs": _VIT}, {"max_steps": 150, "batch_size": 32, "lr": 1e-2}),
    "histogene": ModelSetup({"patch_px": 32, "dim": 64, "depth": 1, "heads": 2, "dim_head": 16},
                            {"max_steps": 600, "slide_spots": 128, "lr": 3e-3}),
}
#: Shared training settings of the small models (3 validations per run select the checkpoint).
SMALL_TRAINING = {"patch_size": 32, "backbone_weights": "none", "val_checks": 3}


@dataclass(frozen=True)
class Condition:
    """One condition of the study: what it changes and which targets it trains (others: the base runs)."""

    name: str
    variant: str = "base"
    targets: tuple[str, ...] = TARGET_NAMES
    steps_factor: int = 1
    imputed_weight: float = 1.0
    spackle_steps: int | None = None


@dataclass(frozen=True)
class StudyConfig:
    """What the study runs.

    Attributes
    ----------
    datasets
        Label → dataset string (:class:`~spared.bench.runs.RunSpec`'s ``dataset``).
    models
        Model name → :class:`ModelSetup`.
    seeds
        Seeds of every model and target in the base condition (the pairs of the comparison).
    variant_seeds
        Seeds of the variants (``None``: ``seeds``).
    variants
        Any of :data:`VARIANTS`.
    variant_datasets
        Variant → the labels of ``datasets`` it runs on (a variant not named: every dataset).
    weights, long_factor, weak_spackle_steps
        The settings of the variants.
    training
        Training settings shared by every run (``TrainingConfig`` fields; ``val_checks`` = validations per run).
    """

    datasets: Mapping[str, str]
    models: Mapping[str, ModelSetup]
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    variant_seeds: tuple[int, ...] | None = None
    variants: tuple[str, ...] = VARIANTS
    variant_datasets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    weights: tuple[float, ...] = (0.5, 0.25)
    long_factor: int = 3
    weak_spackle_steps: tuple[int, ...] = (200, 20)
    training: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown variant(s) {unknown}; choose among {list(VARIANTS)}")
        missing = sorted({d for labels in self.variant_datasets.values() for d in labels} - set(self.datasets))
        if missing:
            raise ValueError(f"variant dataset(s) {missing} are not among the study's datasets {list(self.datasets)}")
        for seeds in (self.seeds, self.variant_seeds):
            if seeds is not None and (not seeds or len(set(seeds)) != len(seeds)):
                raise ValueError(f"seeds must be distinct and at least one, got {list(seeds)}")
        if self.long_factor < 2 or any(not 0 <= w < 1 for w in self.weights):
            raise ValueError(f"long_factor must be >= 2 and weights in [0, 1), got {self.long_factor} and "
                             f"{list(self.weights)}")

    def conditions(self) -> list[Condition]:
        """The base condition, then those of the variants, in the order they run."""
        out = [Condition("base")]
        if "weights" in self.variants:
            out += [Condition(f"completed weighs {w:g}", "weights", ("completed",), imputed_weight=w)
                    for w in self.weights]
        if "spackle" in self.variants:
            out += [Condition(f"SpaCKLE {steps} steps", "spackle", ("completed",), spackle_steps=steps)
                    for steps in self.weak_spackle_steps]
        if "length" in self.variants:
            out.append(Condition(f"{self.long_factor}x steps", "length", steps_factor=self.long_factor))
        return out

    def seeds_of(self, condition: Condition) -> tuple[int, ...]:
        """The seeds a condition trains."""
        return self.seeds if condition.variant == "base" or self.variant_seeds is None else self.variant_seeds

    def labels_of(self, condition: Condition) -> tuple[str, ...]:
        """The labels of the datasets a condition runs on."""
        if condition.variant == "base":
            return tuple(self.datasets)
        return tuple(self.variant_datasets.get(condition.variant, tuple(self.datasets)))

    def dataset_of(self, label: str, condition: Condition) -> str:
        """The dataset string a condition trains on (the weakly completed collection for the SpaCKLE variant)."""
        dataset = self.datasets[label]
        return dataset if condition.spackle_steps is None else \
            with_parameter(dataset, "spackle_max_steps", condition.spackle_steps)


def with_parameter(dataset: str, key: str, value: Any) -> str:
    """``dataset`` with the parameter ``key`` set to ``value`` (added, or replacing its value); a processed file
    cannot take one."""
    from spared.bench.runs import parse_dataset

    if dataset.endswith(".h5ad"):
        raise ValueError(f"{dataset} is a processed file: it cannot be reprocessed with {key}={value}; give a "
                         f"catalogue key or a simulated collection for this variant")
    name, params = parse_dataset(dataset)
    params[key] = value
    return name + ":" + ",".join(f"{k}={json.dumps(v)}" for k, v in params.items())


def training_config(config: StudyConfig, model: str, condition: Condition):
    """The :class:`~spared.bench.runs.TrainingConfig` of ``model`` under ``condition``."""
    from spared.bench import TrainingConfig
    from spared.models.recipe import recipe

    settings = {**config.training, **config.models[model].training}
    checks = settings.pop("val_checks", None)
    if settings.get("max_steps"):
        settings["max_steps"] = int(settings["max_steps"]) * condition.steps_factor
        if checks:
            settings["val_every"] = max(1, settings["max_steps"] // int(checks))
    elif condition.steps_factor != 1:
        settings["epochs"] = (settings.get("epochs") or recipe(model).epochs) * condition.steps_factor
    return TrainingConfig(**settings, imputed_weight=condition.imputed_weight)


def plan(config: StudyConfig) -> tuple[list[Any], pd.DataFrame]:
    """The runs to train (base condition first) and the plan: one row per (dataset, condition, model, target, seed)
    with the ``run_id`` whose results fill it; a condition that trains ``completed`` only takes ``raw`` and
    ``median`` from the base runs (column ``shared``)."""
    from spared.bench.runs import RunSpec, data_fingerprint

    conditions = config.conditions()
    strings = set(config.datasets.values()) | {config.dataset_of(label, c) for c in conditions
                                               for label in config.labels_of(c)}
    versions = {dataset: data_fingerprint(dataset) for dataset in sorted(strings)}
    specs: dict[str, Any] = {}
    rows = []
    for condition in conditions:
        grid = product(config.labels_of(condition), config.models, TARGET_NAMES, config.seeds_of(condition))
        for label, model, target, seed in grid:
            trained = target in condition.targets
            dataset = config.dataset_of(label, condition) if trained else config.datasets[label]
            training = training_config(config, model, condition if trained else Condition("base"))
            spec = RunSpec(model, dataset, target, seed, dict(config.models[model].config), training,
                           data_version=versions[dataset])
            specs.setdefault(spec.run_id, spec)
            rows.append({"dataset": label, "condition": condition.name, "model": model, "target": target,
                         "seed": seed, "run_id": spec.run_id, "shared": not trained, "dataset_string": dataset})
    return list(specs.values()), pd.DataFrame(rows)


def check_same_raw(config: StudyConfig, data_dir: Path) -> None:
    """Raise unless each weakly completed collection has the base collection's ``c_d_log1p``, mask and splits
    (what lets the SpaCKLE variant reuse the base runs of ``raw`` and ``median``)."""
    from spared.bench import load_collection

    weak = [c for c in config.conditions() if c.spackle_steps is not None]
    for condition, label in ((c, label) for c in weak for label in config.labels_of(c)):
        base, _ = load_collection(config.datasets[label], data_dir)
        other, _ = load_collection(config.dataset_of(label, condition), data_dir)
        same = (base.obs_names.equals(other.obs_names) and base.var_names.equals(other.var_names)
                and np.array_equal(base.layers["c_d_log1p"], other.layers["c_d_log1p"])
                and np.array_equal(base.layers["mask"], other.layers["mask"])
                and np.array_equal(base.obs["split"].to_numpy(), other.obs["split"].to_numpy()))
        if not same:
            raise RuntimeError(f"{label}: the collection completed by SpaCKLE with {condition.spackle_steps} steps "
                               f"differs from the base one before completion (c_d_log1p, mask, genes, spots or "
                               f"splits); the SpaCKLE variant cannot share the base runs of raw and median")


def spackle_quality(config: StudyConfig, data_dir: Path) -> pd.DataFrame:
    """What the models of each collection train on, over the train split: SpaCKLE's selection figures, the
    unmeasured fraction, the mean of the measured entries and of the SpaCKLE and median-filter fills and, with a
    simulated truth, the truth's mean at measured and unmeasured entries and the fills' MSE against it."""
    from spared.bench import load_collection

    pairs = [(label, "default", config.datasets[label]) for label in config.datasets]
    pairs += [(label, f"{c.spackle_steps} steps", config.dataset_of(label, c))
              for c in config.conditions() if c.spackle_steps is not None for label in config.labels_of(c)]
    rows = []
    for label, spackle, dataset in pairs:
        adata, _ = load_collection(dataset, data_dir)
        info = adata.uns.get("spared", {}).get("completion", {})
        train = (adata.obs["split"] == "train").to_numpy()
        measured = np.asarray(adata.layers["mask"], dtype=bool)[train]
        layers = {name: np.asarray(adata.layers[name], dtype=np.float64)[train]
                  for name in ("c_d_log1p", "c_t_log1p", TRUTH_LAYER) if name in adata.layers}
        row = {"dataset": label, "spackle": spackle, "best_step": info.get("best_step"),
               "best_val_mse": info.get("best_val_mse"), "unmeasured_train": float(1 - measured.mean()),
               "measured_mean": float(layers["c_d_log1p"][measured].mean()),
               "spackle_fill_mean": float(layers["c_t_log1p"][~measured].mean()),
               "median_fill_mean": float(layers["c_d_log1p"][~measured].mean())}
        if TRUTH_LAYER in layers:
            truth = layers[TRUTH_LAYER]
            row |= {"truth_mean_measured": float(truth[measured].mean()),
                    "truth_mean_unmeasured": float(truth[~measured].mean()),
                    "spackle_fill_mse_vs_truth": float(np.mean((layers["c_t_log1p"] - truth)[~measured] ** 2)),
                    "median_fill_mse_vs_truth": float(np.mean((layers["c_d_log1p"] - truth)[~measured] ** 2))}
        rows.append(row)
    return pd.DataFrame(rows)


def collect(plan_rows: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """The plan with each run's status and metrics (``status`` ``missing`` for runs not recorded yet)."""
    columns = ["run_id", "status", "error", "seconds", *[m for m in METRICS if m in results]]
    table = results[[c for c in columns if c in results]].drop_duplicates("run_id", keep="last")
    frame = plan_rows.merge(table, on="run_id", how="left")
    frame["status"] = frame["status"].fillna("missing")
    for metric in METRICS:
        if metric not in frame:
            frame[metric] = np.nan
    return frame


def summarise(frame: pd.DataFrame, metrics: Iterable[str] = METRICS) -> pd.DataFrame:
    """Mean, standard deviation (ddof 1) and count over seeds of each metric, per dataset, condition, model and
    target (finished runs only)."""
    done = frame[frame["status"] == "done"]
    keys = ["dataset", "condition", "model", "target"]
    parts = []
    for metric in metrics:
        stats = done.groupby(keys, sort=False)[metric].agg(["mean", "std", "count"])
        stats.columns = [f"{metric} mean", f"{metric} std", f"{metric} n"]
        parts.append(stats)
    return pd.concat(parts, axis=1).reset_index()


def paired_tests(diffs: np.ndarray) -> tuple[float, float]:
    """Two-sided p-values of a paired t-test and a Wilcoxon signed-rank test (exact for small samples) of
    ``diffs`` against 0; NaN where undefined (fewer than 2 pairs, or every difference 0)."""
    from scipy import stats

    diffs = np.asarray(diffs, dtype=np.float64)
    if diffs.size < 2 or not np.any(diffs):
        return math.nan, math.nan
    t_p = float(stats.ttest_1samp(diffs, 0.0).pvalue) if np.ptp(diffs) > 0 else 0.0
    w_p = float(stats.wilcoxon(diffs).pvalue)
    return t_p, w_p


def paired(frame: pd.DataFrame, metrics: Iterable[str] = METRICS) -> pd.DataFrame:
    """``completed`` minus each reference target, seed by seed, per dataset, condition, model and metric.

    Columns: ``reference``, ``metric``, ``better`` (``lower``/``higher``: which value is better), ``n`` (seeds with
    both runs done), ``mean diff``, ``std diff`` (ddof 1), ``t p``, ``wilcoxon p`` and ``completed wins`` (seeds
    where completed is strictly better).
    """
    from spared.metrics import BETTER

    done = frame[frame["status"] == "done"]
    rows = []
    for (dataset, condition, model), group in done.groupby(["dataset", "condition", "model"], sort=False):
        for metric in metrics:
            if group[metric].isna().all():
                continue
            wide = group.pivot_table(index="seed", columns="target", values=metric, aggfunc="first")
            better = BETTER[metric.removesuffix(" vs truth")]
            for reference in REFERENCES:
                if "completed" not in wide or reference not in wide:
                    continue
                pair = wide[["completed", reference]].dropna()
                diffs = (pair["completed"] - pair[reference]).to_numpy()
                t_p, w_p = paired_tests(diffs)
                wins = int(np.sum(diffs < 0) if better == "lower" else np.sum(diffs > 0))
                rows.append({"dataset": dataset, "condition": condition, "model": model, "reference": reference,
                             "metric": metric, "better": better, "n": int(diffs.size),
                             "mean diff": float(diffs.mean()) if diffs.size else math.nan,
                             "std diff": float(diffs.std(ddof=1)) if diffs.size > 1 else math.nan,
                             "t p": t_p, "wilcoxon p": w_p, "completed wins": wins})
    return pd.DataFrame(rows)


def _p(value: float) -> str:
    return "–" if not np.isfinite(value) else (f"{value:.3f}" if value >= 0.001 else f"{value:.0e}")


def markdown(summary: pd.DataFrame, pairs: pd.DataFrame, quality: pd.DataFrame | None = None,
             metrics: Iterable[str] = METRICS) -> str:
    """The study's tables in Markdown: per dataset and metric, one row per condition and model with the three
    targets (mean ± std over seeds) and the paired differences ``completed − raw`` and ``completed − median``
    (mean ± std, t-test and Wilcoxon p, seeds where completed is better)."""
    from spared.models import registry

    lines = []
    if quality is not None and len(quality):
        lines += ["### What the models train on (train split)", "",
                  "| dataset | SpaCKLE | best step | SpaCKLE val MSE | unmeasured | mean measured | mean SpaCKLE fill "
                  "| mean median fill | truth mean: measured / unmeasured | fills vs truth (MSE): SpaCKLE / median |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for row in quality.to_dict("records"):
            cells = [row["dataset"], row["spackle"], str(row.get("best_step", "–")), _num(row.get("best_val_mse")),
                     f"{row['unmeasured_train']:.1%}", _num(row["measured_mean"]), _num(row["spackle_fill_mean"]),
                     _num(row["median_fill_mean"]),
                     f"{_num(row.get('truth_mean_measured'))} / {_num(row.get('truth_mean_unmeasured'))}",
                     f"{_num(row.get('spackle_fill_mse_vs_truth'))} / {_num(row.get('median_fill_mse_vs_truth'))}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    for dataset in summary["dataset"].unique():
        for metric in metrics:
            part = summary[summary["dataset"] == dataset]
            if part[f"{metric} n"].sum() == 0:
                continue
            lines += [f"### {dataset}: {metric}", "",
                      "| model | condition | raw | median | completed | completed − raw | completed − median |",
                      "|---|---|---|---|---|---|---|"]
            for (condition, model), group in part.groupby(["condition", "model"], sort=False):
                by_target = group.set_index("target")
                cells = [registry.get(model).label if model in registry.names() else model, condition]
                for target in TARGET_NAMES:
                    cells.append(format_mean_std(by_target[f"{metric} mean"].get(target, np.nan),
                                                 by_target[f"{metric} std"].get(target, np.nan)))
                for reference in REFERENCES:
                    match = pairs[(pairs["dataset"] == dataset) & (pairs["condition"] == condition)
                                  & (pairs["model"] == model) & (pairs["metric"] == metric)
                                  & (pairs["reference"] == reference)] if len(pairs) else pairs
                    cells.append(_pair_cell(match.iloc[0]) if len(match) else "–")
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def _num(value: Any) -> str:
    return "–" if value is None or not np.isfinite(float(value)) else f"{float(value):.3f}"


def _pair_cell(row: Mapping[str, Any]) -> str:
    """``"−0.052 ± 0.031 (t p 0.020, W p 0.062; 5/5)"``: the paired difference (signed), its p-values and the
    seeds where completed is better."""
    sign = "+" if np.isfinite(row["mean diff"]) and row["mean diff"] >= 0 else ""
    return (f"{sign}{format_mean_std(row['mean diff'], row['std diff']).replace('-', '−')} (t p {_p(row['t p'])}, "
            f"W p {_p(row['wilcoxon p'])}; {row['completed wins']}/{row['n']})")


def run_study(config: StudyConfig, out: str | Path, train: bool = True,
              on_result: Callable[[dict[str, Any]], None] | None = None,
              data_dir: str | Path | None = None) -> dict[str, Any]:
    """Train what is missing (unless ``train`` is False), then build and write the tables.

    ``data_dir`` is the dataset cache (default ``out/_data``).

    Returns the dict written to ``completion_effect.json``, plus ``"frame"``, ``"summary"``, ``"paired"``,
    ``"quality"`` (DataFrames) and ``"markdown"``.
    """
    from spared.bench import run_benchmark
    from spared.bench.results import ResultsTable
    from spared.bench.train import DATA_CACHE
    from spared.io.atomic import write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    specs, plan_rows = plan(config)
    data_dir = Path(data_dir) if data_dir is not None else out / DATA_CACHE
    if train:
        check_same_raw(config, data_dir)
        run_benchmark(specs, out, on_result=on_result, data_dir=data_dir)
    frame = collect(plan_rows, ResultsTable(out).load())
    summary, pairs = summarise(frame), paired(frame)
    quality = spackle_quality(config, data_dir)
    text = markdown(summary, pairs, quality)
    record = {"config": _jsonable(dataclasses.asdict(config)), "runs": len(specs),
              "status": frame.drop_duplicates("run_id")["status"].value_counts().to_dict(),
              "summary": summary.to_dict("records"), "paired": pairs.to_dict("records"),
              "spackle": quality.to_dict("records")}
    write_text(out / "completion_effect.json", json.dumps(_jsonable(record), indent=2, sort_keys=True))
    for name, table in (("runs", frame), ("summary", summary), ("paired", pairs), ("spackle", quality)):
        write_text(out / f"completion_effect_{name}.csv", table.to_csv(index=False))
    write_text(out / "completion_effect.md", text + "\n")
    return {**record, "frame": frame, "summary": summary, "paired": pairs, "quality": quality, "markdown": text}


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def study_config(args: argparse.Namespace) -> StudyConfig:
    """The :class:`StudyConfig` of the command line."""
    models = [m for m in args.models.split(",") if m]
    datasets = [d for d in (args.datasets or ("lung,kidney" if args.full else "sim,lung,kidney")).split(",") if d]
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        raise SystemExit(f"unknown dataset label(s) {unknown}; choose among {list(DATASETS)}")
    if args.full:
        setups = {m: ModelSetup() for m in models}
        training = {"patch_size": 224, "backbone_weights": args.backbone_weights or "imagenet",
                    "num_workers": args.workers}
    else:
        absent = [m for m in models if m not in SMALL_MODELS]
        if absent:
            raise SystemExit(f"no small setting for {absent} (small models: {list(SMALL_MODELS)}); use --full for "
                             f"full-size models at their recipes")
        setups = {m: SMALL_MODELS[m] for m in models}
        training = {**SMALL_TRAINING, "backbone_weights": args.backbone_weights or "none"}
        if args.steps_scale != 1:
            setups = {m: ModelSetup(s.config, {**s.training, "max_steps": max(2, round(s.training["max_steps"]
                                                                                          * args.steps_scale))})
                      for m, s in setups.items()}
    training |= {"accelerator": "gpu" if args.device == "cuda" else "cpu"}
    if args.threads:
        training["num_threads"] = args.threads
    if args.weights_dir:
        training["weights_dir"] = str(args.weights_dir)
    variants = () if args.variants in ("", "none") else tuple(v for v in (
        args.variants or ("" if args.full else ",".join(VARIANTS))).split(",") if v)
    on = {variant: tuple(d for d in (given or args.variants_on or ",".join(datasets)).split(",") if d)
          for variant, given in (("weights", None), ("spackle", None), ("length", args.length_on))}
    return StudyConfig({d: DATASETS[d] for d in datasets}, setups, tuple(args.seeds),
                       tuple(args.variant_seeds) if args.variant_seeds else None, variants, on, tuple(args.weights),
                       args.long_factor, tuple(args.weak_spackle_steps), training)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("completion_effect_results"), help="results folder")
    parser.add_argument("--datasets", default=None,
                        help=f"comma-separated labels among {list(DATASETS)} (default: all; --full: lung,kidney)")
    parser.add_argument("--models", default="stnet,vit_b_delta,histogene", help="comma-separated model names")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)), help="seeds of the base condition")
    parser.add_argument("--variant-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                        help="seeds of the variants")
    parser.add_argument("--variants", default=None,
                        help=f"comma-separated among {list(VARIANTS)}, or 'none' (default: all; --full: none)")
    parser.add_argument("--variants-on", default=None, help="dataset labels the variants run on (default: all)")
    parser.add_argument("--length-on", default=None,
                        help="dataset labels the 'length' variant runs on (default: --variants-on)")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.5, 0.25],
                        help="loss weights of completed entries for the 'weights' variant")
    parser.add_argument("--long-factor", type=int, default=3, help="budget multiplier of the 'length' variant")
    parser.add_argument("--weak-spackle-steps", type=int, nargs="+", default=[200, 20],
                        help="SpaCKLE steps of the 'spackle' variant (one condition each)")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiply the small models' step budgets")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--full", action="store_true", help="full-size models at their recipes (for a GPU)")
    parser.add_argument("--backbone-weights", default=None, help="'imagenet', 'none' or a file (default: "
                                                                  "none; --full: imagenet)")
    parser.add_argument("--weights-dir", type=Path, default=None, help="folder of backbone weight files")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: 1 on cpu)")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers with --full")
    parser.add_argument("--plan", action="store_true", help="print the runs per condition and exit")
    parser.add_argument("--report-only", action="store_true", help="tables from finished runs, no training")
    args = parser.parse_args(argv)
    if args.threads is None and args.device == "cpu":
        args.threads = 1
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = study_config(args)
    specs, plan_rows = plan(config)
    trained = plan_rows[~plan_rows["shared"]].drop_duplicates("run_id")
    print(f"{len(specs)} runs: " + ", ".join(f"{name} {count}" for name, count in
                                             trained.groupby("condition", sort=False).size().items()), flush=True)
    if args.plan:
        print(trained.groupby(["condition", "dataset", "model"], sort=False).size().to_string())
        return
    for target in TARGET_NAMES:
        print(f"  {target}: {TARGETS[target].meaning}")
    start, count = time.perf_counter(), [0]
    labels = plan_rows.drop_duplicates("run_id").set_index("run_id")

    def progress(row: dict[str, Any]) -> None:
        count[0] += 1
        where = labels.loc[row["run_id"]]
        figure = f"MSE {row['MSE']:.4f}" if row.get("status") == "done" else f"FAILED {row.get('error')}"
        print(f"[{count[0]}] {where['dataset']} | {where['condition']} | {row['model']} {row['target']} "
              f"s{row['seed']}: {figure} ({row.get('seconds', 0):.0f} s; {time.perf_counter() - start:.0f} s in all)",
              flush=True)

    result = run_study(config, args.out, train=not args.report_only, on_result=progress)
    print(result["markdown"])
    print(f"runs: {result['status']}; tables in {args.out}", flush=True)
    if result["status"].get("failed"):
        sys.exit(1)


if __name__ == "__main__":
    main()

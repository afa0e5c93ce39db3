"""``spared bench`` (run the benchmark grid) and ``spared results`` (print its model × dataset table)."""

from __future__ import annotations

import json
import tomllib
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer

from spared.cli.app import app, console, fail, importable_current_folder, writable_dir
from spared.cli.cluster import (
    AddressOption,
    CheckOption,
    CpusOption,
    GpusOption,
    MemoryOption,
    NodeCacheOption,
    PipOption,
    ResourceOption,
    RetriesOption,
    RuntimeEnvOption,
    StorageOption,
    TimeoutOption,
    WorkingDirOption,
    executor_settings,
)


def _split(text: str, name: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise fail(f"--{name} needs at least one value (comma-separated)")
    return items


def _unique(values: list[Any], name: str) -> list[Any]:
    """``values`` with repeats merged, and a note naming them (a repeated value would announce runs that never
    happen: equal runs are one run)."""
    unique = list(dict.fromkeys(values))
    if len(unique) < len(values):
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        console.print(f"[yellow]note:[/] --{name} repeats {', '.join(repeated)}; each value counts once "
                      f"({len(unique)} of {len(values)})")
    return unique


def _seed(text: str) -> int:
    if not text.isdigit():
        raise fail(f"--seeds takes non-negative integers (e.g. 0,1,2), got {text!r}")
    return int(text)


def _datasets(text: str) -> list[str]:
    """Datasets from ``a,b:k=1,j=2,c``: a piece ``key=value`` with no ``:`` before it continues the previous one."""
    out: list[str] = []
    for piece in _split(text, "datasets"):
        if out and ":" in out[-1] and "=" in piece and ":" not in piece.split("=", 1)[0]:
            out[-1] += "," + piece
        else:
            out.append(piece)
    return out


def _model_configs(path: Path | None) -> dict[str, dict[str, Any]]:
    """``{model: {setting: value}}`` from a JSON or TOML file."""
    if path is None:
        return {}
    if not path.is_file():
        raise fail(f"model config file {path} does not exist")
    try:
        data = json.loads(path.read_text()) if path.suffix == ".json" else tomllib.loads(path.read_text())
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise fail(f"could not parse {path}: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise fail(f"{path} must map model names to tables of settings, e.g. {{\"stnet\": {{\"head_init\": "
                    f"\"default\"}}}}")
    return data


@app.command()
def bench(
    models: Annotated[str, typer.Option(help="Models, comma-separated: registered names (spared models) or custom "
                                             "classes as package.module:ClassName (e.g. stnet,mymodels:MyNet).")],
    datasets: Annotated[str, typer.Option(help="Datasets, comma-separated: simulated[:key=value,...], a "
                                                "processed .h5ad, or a catalogue key.")] = "simulated",
    targets: Annotated[str, typer.Option(help="Targets, comma-separated: raw (c_d_log1p, loss on measured entries), "
                                              "median (c_d_log1p, loss on every entry: the authors' raw experiment), "
                                              "completed (c_t_log1p, loss on every entry).")]
    = "raw,completed",
    imputed_weight: Annotated[float | None, typer.Option(help="Loss weight of unmeasured entries (median fills, "
                                                              "SpaCKLE completions) relative to measured ones for "
                                                              "the median and completed targets (default 1).")]
    = None,
    seeds: Annotated[str, typer.Option(help="Seeds, comma-separated.")] = "0",
    executor: Annotated[str, typer.Option(help="local (in-process, sequential) or ray (a Ray cluster or local "
                                                "instance; see the Ray executor options).")] = "local",
    max_steps: Annotated[int | None, typer.Option(help="Training steps per run, replacing the recipe's epoch "
                                                        "budget (smoke runs).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs (default: each model's recipe; "
                                                     "`spared models`).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Spots per batch of patch-level models (default: the "
                                                         "recipe's).")] = None,
    slide_spots: Annotated[int | None, typer.Option(help="Spots per window of slide-level models (default: the "
                                                          "recipe's).")] = None,
    patch_size: Annotated[int | None, typer.Option(help="Patch side in pixels.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default: the recipe's).")] = None,
    val_every: Annotated[int | None, typer.Option(help="Validate every this many steps (default: every epoch).")]
    = None,
    backbone_weights: Annotated[str | None, typer.Option(help="'imagenet' (default: the ImageNet V1 weights the "
                                                              "authors used), 'none' (random) or a weights file.")]
    = None,
    weights_dir: Annotated[Path | None, typer.Option(help="Folder searched first for weight files (ImageNet "
                                                           "files by name; foundation encoders in DIR/<encoder>/).")]
    = None,
    model_config: Annotated[Path | None, typer.Option(help="JSON/TOML file: {model: {setting: value}}.")] = None,
    loggers: Annotated[str, typer.Option(help="Loggers: csv, tensorboard, mlflow, wandb (comma-separated).")]
    = "csv",
    out: Annotated[Path, typer.Option(help="Results folder.")] = Path("results"),
    data_dir: Annotated[Path | None, typer.Option(help="Dataset cache (default: OUT/_data).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Run again runs that already finished.")] = False,
    progress: Annotated[bool, typer.Option("--progress", help="Show a progress bar per run (and its node) and "
                                                             "one over the runs.")] = False,
    threads_per_run: Annotated[int | None, typer.Option(help="torch threads of each run (default: torch's, which "
                                                             "Ray sets to the run's CPUs).")] = None,
    address: AddressOption = None,
    cpus_per_run: CpusOption = 1.0,
    gpus_per_run: GpusOption = 0.0,
    memory_per_run: MemoryOption = None,
    resource: ResourceOption = None,
    retries: RetriesOption = 0,
    timeout: TimeoutOption = None,
    runtime_env: RuntimeEnvOption = None,
    working_dir: WorkingDirOption = None,
    pip: PipOption = None,
    storage: StorageOption = None,
    node_cache: NodeCacheOption = None,
    check_resources: CheckOption = True,
) -> None:
    """Train and evaluate every model × dataset × target × seed; one row per run in OUT/results.parquet."""
    cluster = executor_settings(
        executor, address=address, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run, memory_per_run=memory_per_run,
        resource=resource, retries=retries, timeout=timeout, runtime_env=runtime_env, working_dir=working_dir, pip=pip,
        storage=storage, node_cache=node_cache, check_resources=check_resources)
    importable_current_folder()
    from spared.bench.checks import check_specs
    from spared.bench.executors import LocalExecutor, RayExecutor, run_benchmark
    from spared.bench.progress import ProgressBoard
    from spared.bench.runs import TrainingConfig, make_specs
    from spared.cluster.session import ClusterError

    writable_dir(out)
    if data_dir is not None:
        writable_dir(data_dir)
    settings = {"max_steps": max_steps, "epochs": epochs, "batch_size": batch_size, "slide_spots": slide_spots,
                "patch_size": patch_size, "lr": lr, "val_every": val_every, "backbone_weights": backbone_weights,
                "weights_dir": str(weights_dir) if weights_dir else None, "imputed_weight": imputed_weight,
                "num_threads": threads_per_run,
                "loggers": tuple(_split(loggers, "loggers"))}
    try:
        seed_values = _unique([_seed(s) for s in _split(seeds, "seeds")], "seeds")
        training = TrainingConfig.from_dict({k: v for k, v in settings.items() if v is not None})
        grid = partial(make_specs, _unique(_split(models, "models"), "models"),
                       _unique(_datasets(datasets), "datasets"), _unique(_split(targets, "targets"), "targets"),
                       seed_values, _model_configs(model_config), training)
        specs = grid(fetch_data=False)  # checked before any raw file is downloaded
    except (KeyError, ValueError) as exc:
        raise fail(str(exc).strip("'\"")) from exc
    problems = check_specs(specs)
    if executor == "ray":
        from spared.models.registry import ray_runtime_env

        try:
            ray_runtime_env([spec.custom_model["ref"] for spec in specs if spec.custom_model])
        except (ImportError, ValueError) as exc:
            problems.append(str(exc))
    if problems:
        raise fail(f"{len(problems)} problem(s) found before any run started:\n  - " + "\n  - ".join(problems))
    specs = grid(fetch_data=True)  # catalogue datasets' raw files known: their run ids are those a rerun finds
    board = ProgressBoard(console) if progress else None
    runner = (LocalExecutor(progress=board or False) if cluster is None
              else RayExecutor.from_settings(cluster, progress=board))
    console.print(f"{len(specs)} runs → {out} ({executor} executor)")

    finished: list[str] = []

    def report(row: dict[str, Any]) -> None:
        finished.append(row["run_id"])
        if row["status"] == "done":
            console.print(f"[green]done[/]   {row['run_id']}  MSE {row['MSE']:.4f}  PCC-Gene {row['PCC-Gene']:.4f}  "
                          f"({row['seconds']:.0f} s)")
        else:
            console.print(f"[red]failed[/] {row['run_id']}  {row['error']}")

    try:
        with board or nullcontext():
            table = run_benchmark(specs, out, runner, force=force, on_result=report, data_dir=data_dir)
    except ClusterError as exc:
        raise fail(str(exc)) from exc
    skipped = len(table) - len(finished)
    if skipped:
        console.print(f"{skipped} runs had finished before (use --force to run them again)")
    print_results(out, table=table)
    failed = int((table["status"] == "failed").sum())
    if failed:
        raise fail(f"{failed} of {len(table)} runs failed (errors above; tracebacks in {out}/runs/RUN_ID/error.txt)")


def print_results(results_dir: Path, metrics: tuple[str, ...] = ("MSE", "PCC-Gene"), as_json: bool = False,
                  table: Any = None) -> None:
    """Print the model × dataset table of a results folder (one column per target and metric, mean ± std over
    seeds).

    ``table``: show these rows (e.g. the runs of one ``spared bench`` call) instead of the whole folder's.
    Rows on data that changed since they ran are marked stale; custom models (and predictions scored from
    elsewhere) are marked custom.
    """
    from rich.table import Table

    from spared.bench.results import aggregate, format_mean_std, load_results, mark_stale, summary_labels
    from spared.bench.targets import target_meaning

    table = load_results(results_dir) if table is None else table
    if table.empty:
        raise fail(f"{results_dir} holds no benchmark runs; run `spared bench --out {results_dir}`")
    summary = aggregate(mark_stale(table), metrics)
    if as_json:
        from spared.bench.scoring import json_ready

        typer.echo(json.dumps([json_ready(row) for row in summary.to_dict(orient="records")], indent=2))
        return
    targets = summary.attrs["targets"]
    view = Table(title=f"{results_dir}: mean ± std over seeds")
    view.add_column("model")
    view.add_column("dataset")
    for metric in metrics:
        for target in targets:
            view.add_column(f"{metric} {target}", justify="right")
    view.add_column("seeds", justify="right")
    view.add_column("failed", justify="right")
    labels = summary_labels(summary)
    for label, row in zip(labels, summary.to_dict(orient="records"), strict=True):
        cells = [format_mean_std(row[f"{m} {t} mean"], row[f"{m} {t} std"]) for m in metrics for t in targets]
        seeds = "/".join(str(row[f"n {t}"]) for t in targets) or "0"
        model = row["model"] + (" (custom)" if row["custom"] else "")
        view.add_row(model, label, *cells, seeds, str(row["failed"]))
    console.print(view)
    console.print("targets: " + "; ".join(f"[bold]{t}[/] = {target_meaning(t)}" for t in targets))
    if summary["stale"].any():
        console.print("[yellow](stale)[/]: the dataset changed since these runs (its content is not what they ran "
                      "on); run `spared bench` again to refresh them.")


@app.command()
def results(
    results_dir: Annotated[Path | None, typer.Argument(help="Results folder written by `spared bench`.",
                                                        show_default=False)] = None,
    metrics: Annotated[str, typer.Option(help="Metrics to show, comma-separated.")] = "MSE,PCC-Gene",
    published: Annotated[bool, typer.Option(
        "--published", help="The SpaRED authors' published figures (with RESULTS_DIR: its rows beside them, with "
                            "the difference and the preset of our data).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the table as JSON records.")] = False,
) -> None:
    """Print the model × dataset table: one column per target (raw, median, completed), mean ± std over seeds."""
    if published:
        from spared.cli.published import print_published

        print_published(results_dir, as_json)
        return
    if results_dir is None:
        raise fail("give a results folder (spared results DIR), or --published for the authors' figures")
    try:
        print_results(results_dir, tuple(_split(metrics, "metrics")), as_json)
    except (FileNotFoundError, KeyError) as exc:
        raise fail(str(exc).strip("'\"")) from exc

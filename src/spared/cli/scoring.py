"""``spared score``: score predictions made anywhere under the benchmark's protocol, and record them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from spared.cli.app import app, console, fail, writable_dir


@app.command()
def score(
    predictions: Annotated[Path, typer.Argument(help="Predictions: .csv/.tsv (first column: spot names), .parquet "
                                                     "or .h5ad; spots (obs names) as rows, genes (var names or gene "
                                                     "symbols) as columns.")],
    dataset: Annotated[str, typer.Option(help="The dataset predicted: a catalogue key, simulated[:key=value,...] "
                                              "or a processed .h5ad.")],
    target: Annotated[str, typer.Option(help="Target the model was trained on: raw, median or completed.")] = "raw",
    model: Annotated[str, typer.Option(help="Name of the model in the results (marked custom).")] = "external",
    seed: Annotated[int, typer.Option(help="Seed of the run that made the predictions.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Results folder to record the row in (spared results, report)."
                                             )] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Dataset cache (default: OUT/_data, else "
                                                       "$SPARED_DATA/bench).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results row as JSON.")] = False,
) -> None:
    """Score predictions on the measured entries of the dataset's evaluation split (the benchmark's protocol)."""
    from spared.bench.scoring import METRICS, TRUTH_SUFFIX, json_ready
    from spared.bench.scoring import score as score_predictions

    if out is not None:
        writable_dir(out)
    try:
        row = score_predictions(predictions, dataset, target, model=model, seed=seed, out=out, data_dir=data_dir)
    except (ValueError, KeyError, TypeError, FileNotFoundError) as exc:
        raise fail(str(exc).strip("'\"")) from exc
    if as_json:
        typer.echo(json.dumps(json_ready(row), indent=2))
        return
    console.print(f"{row['model']} on {row['dataset']} ({row['target']} target, {row['eval_split']} split, "
                  f"{int(row['n_spots_scored'])} spots × {int(row['n_genes_scored'])} genes scored, measured entries "
                  f"only; protocol {row['protocol']})")
    for metric in METRICS:
        truth = row.get(f"{metric}{TRUTH_SUFFIX}")
        console.print(f"  {metric:<9} {row[metric]:.4f}" + (f"   vs truth {truth:.4f}" if truth is not None else ""))
    console.print(f"  train-mean baseline MSE {row['baseline_MSE']:.4f}")
    if out is not None:
        console.print(f"recorded in {out} as {row['run_id']}")

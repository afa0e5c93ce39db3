"""``spared results --published``: the SpaRED authors' published figures, alone or beside a results folder's rows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer
from rich.table import Table

from spared.cli.app import console, fail


def _records(frame) -> list[dict]:
    """JSON-ready records (NaN → null)."""
    from spared.bench.scoring import json_ready

    return [json_ready(row) for row in frame.to_dict(orient="records")]


def _number(value: float, signed: bool = False) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:{'+' if signed else ''}.3f}"


def print_published(results_dir: Path | None, as_json: bool) -> None:
    """The published figures (no folder), or a results folder's rows beside them."""
    from spared.bench.published import PUBLISHED_METRICS, beside_published, published_results
    from spared.report.html import model_label

    if results_dir is None:
        table = published_results()
        if as_json:
            typer.echo(json.dumps(_records(table.drop(columns=[f"{m} text" for m in PUBLISHED_METRICS])), indent=2))
            return
        view = Table(title="published by the SpaRED authors (MSE ↓, PCC-Gene ↑)")
        for col in ("dataset", "model", *PUBLISHED_METRICS):
            view.add_column(col, justify="left" if col in ("dataset", "model") else "right")
        for row in table.to_dict(orient="records"):
            view.add_row(row["dataset"], model_label(row["model"]),
                         *(row[f"{m} text"] or "–" for m in PUBLISHED_METRICS))
        view.caption = "source: each dataset's leaderboard on https://bcv-uniandes.github.io/spared_webpage/ (--json)"
        console.print(view)
        return
    from spared.bench.results import aggregate, load_results, mark_stale

    try:
        results = load_results(results_dir)
    except FileNotFoundError as exc:
        raise fail(str(exc)) from exc
    if results.empty:
        raise fail(f"{results_dir} holds no benchmark runs; run `spared bench --out {results_dir}`")
    table = beside_published(aggregate(mark_stale(results), PUBLISHED_METRICS))
    if as_json:
        typer.echo(json.dumps(_records(table), indent=2))
        return
    if table.empty:
        raise fail(f"none of the runs in {results_dir} is on a catalogue dataset and model the authors published "
                   "(`spared results --published` lists them)")
    view = Table(title=f"{results_dir}: ours beside the published figures (Δ = ours − published)")
    for col in ("dataset", "model", "target", "preset", "MSE pub.", "ours", "Δ", "PCC-Gene pub.", "ours", "Δ"):
        view.add_column(col, justify="left" if col in ("dataset", "model", "target", "preset") else "right")
    for row in table.to_dict(orient="records"):
        view.add_row(row["catalogue_key"], model_label(row["model"]), row["target"], row["preset"],
                     *(_number(row[f"{m} {part}"], part == "difference") for m in PUBLISHED_METRICS
                       for part in ("published", "ours", "difference")))
    view.caption = ("like for like only where preset = original (our layers made as the authors made theirs); the "
                    "page does not say which target its figures were trained on")
    console.print(view)

"""``spared models``: the benchmark models and how each is trained (its recipe, every value with its source)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from spared.cli.app import app, console, fail


def _records() -> list[dict[str, Any]]:
    from spared.models import MODEL_INFO
    from spared.models.recipe import recipe

    return [{"model": name, "label": info.label, "paper": info.paper, "year": info.year,
             "input_kind": info.input_kind, "target": info.target, "recipe": recipe(name).to_dict()}
            for name, info in MODEL_INFO.items()]


def _value(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "–"
    value = entry["value"]
    if isinstance(value, dict):
        params = ", ".join(f"{k}={v}" for k, v in value.items() if k != "name")
        return f"{value['name']}({params})" if "name" in value and params else value.get("name", params)
    return f"{value:g}" if isinstance(value, float) else str(value)


@app.command()
def models(
    model: Annotated[str | None, typer.Argument(help="Show one model's full recipe with sources.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print models and recipes (with sources) as JSON.")]
    = False,
) -> None:
    """List the benchmark models and their training recipes (optimiser, lr, schedule, epochs, batch, ...)."""
    records = _records()
    if model is not None:
        records = [r for r in records if r["model"] == model]
        if not records:
            raise fail(f"unknown model {model!r}; see `spared models`")
    if as_json:
        typer.echo(json.dumps(records, indent=2))
        return
    if model is not None:
        _show_one(records[0])
        return
    trained = [r for r in records if r["recipe"]["kind"] == "trained"]
    table = Table(title=f"trained models ({len(trained)}): each as its authors trained it (`spared models NAME`)")
    columns = ("optimizer", "lr", "weight_decay", "schedule", "epochs", "batch_size", "augment", "tta", "loss",
               "head_init", "backbone_weights")
    for column in ("model", "input", *columns):
        table.add_column(column.replace("_", " "), overflow="fold")
    for r in trained:
        table.add_row(r["model"], r["input_kind"], *(_value(r["recipe"].get(c)) for c in columns))
    console.print(table)
    probes = [r for r in records if r["recipe"]["kind"] == "probe"]
    table = Table(title=f"frozen encoders + linear probe ({len(probes)}): HEST-Benchmark protocol")
    for column in ("model", "encoder", "pool", "input", "PCA", "ridge alpha", "intercept"):
        table.add_column(column)
    for r in probes:
        enc = r["recipe"]["encoder"]["value"]
        table.add_row(r["model"], enc["arch"], enc["pool"], str(enc["input_size"]),
                      _value(r["recipe"]["pca_components"]), _value(r["recipe"]["ridge_alpha"]),
                      _value(r["recipe"]["fit_intercept"]))
    console.print(table)


def _show_one(record: dict[str, Any]) -> None:
    rec = record["recipe"]
    table = Table(title=f"{record['model']} ({record['label']}; {record['paper']}, {record['year']})")
    for column in ("setting", "value", "source"):
        table.add_column(column, overflow="fold")
    for key, entry in rec.items():
        if isinstance(entry, dict) and "value" in entry:
            source = entry["source"] + (f" — note: {entry['note']}" if "note" in entry else "")
            table.add_row(key, _value(entry), source)
    console.print(table)
    for dev in rec["deviations"]:
        console.print(f"[yellow]deviation:[/] {dev['what']} — {dev['why']}")

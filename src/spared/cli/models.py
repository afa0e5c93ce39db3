"""``spared models``: the registered models (built-in and custom) and how each is trained (its recipe, every value
with its source)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from spared.cli.app import app, console, fail, importable_current_folder


def _record(entry: Any) -> dict[str, Any]:
    from spared.models.recipe import recipe_origin

    rec = entry.recipe()
    return {"model": entry.name, "label": entry.label, "paper": entry.paper, "year": entry.year,
            "input_kind": entry.input_kind, "target": entry.target, "origin": entry.origin,
            "custom": not entry.builtin, "ref": entry.ref, "recipe_origin": recipe_origin(rec),
            "recipe": rec.to_dict()}


def _records() -> list[dict[str, Any]]:
    from spared.models import registry

    return [_record(entry) for entry in registry.entries().values()]


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
    """List the registered models (built-in, entry points, registered ones) and their training recipes.

    A custom model can be shown by its module path (package.module:ClassName).
    """
    from spared.models import registry

    importable_current_folder()
    if model is not None:
        try:
            records = [_record(registry.get(model))]
        except (ValueError, ImportError, TypeError) as exc:
            raise fail(f"{exc}; see `spared models`") from exc
    else:
        records = _records()
    if as_json:
        typer.echo(json.dumps(records, indent=2))
        return
    if model is not None:
        _show_one(records[0])
        return
    trained = [r for r in records if r["recipe"]["kind"] == "trained"]
    table = Table(title=f"trained models ({len(trained)}): built-in ones as their authors trained them, custom ones "
                        f"with their recipe or the default one (`spared models NAME`)")
    columns = ("optimizer", "lr", "weight_decay", "schedule", "epochs", "batch_size", "augment", "tta", "loss",
               "head_init", "backbone_weights")
    for column in ("model", "input", "recipe", *columns):
        table.add_column(column.replace("_", " "), overflow="fold")
    for r in trained:
        name = r["model"] + (f" (custom: {r['origin']})" if r["custom"] else "")
        table.add_row(name, r["input_kind"], r["recipe_origin"], *(_value(r["recipe"].get(c)) for c in columns))
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
    for name, why in registry.broken().items():
        console.print(f"[red]not loaded:[/] {name}: {why}")


def _show_one(record: dict[str, Any]) -> None:
    rec = record["recipe"]
    origin = f"; custom ({record['origin']}, {record['ref']})" if record["custom"] else ""
    table = Table(title=f"{record['model']} ({record['label']}; {record['paper'] or 'no paper given'}, "
                        f"{record['year'] or 'no year given'}; {record['input_kind']} model{origin})")
    for column in ("setting", "value", "source"):
        table.add_column(column, overflow="fold")
    for key, entry in rec.items():
        if isinstance(entry, dict) and "value" in entry:
            source = entry["source"] + (f" — note: {entry['note']}" if "note" in entry else "")
            table.add_row(key, _value(entry), source)
    console.print(table)
    for dev in rec["deviations"]:
        console.print(f"[yellow]deviation:[/] {dev['what']} — {dev['why']}")

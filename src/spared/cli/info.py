"""``spared info FILE``: what a raw or processed collection holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from spared.cli.app import app, console
from spared.cli.processing import read_h5ad


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


@app.command()
def info(
    file: Annotated[Path, typer.Argument(help="A raw or processed collection (.h5ad).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Spots, genes, slides and splits, layers and their meaning, missing values, processing parameters,
    completion, patches (where, and whether they are there) and the warnings recorded in FILE."""
    from spared.info import describe

    summary = describe(read_h5ad(file), file)
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
        return
    head = Table(title=f"{file} ({summary['kind']})", show_header=False)
    head.add_column("what", no_wrap=True)
    head.add_column("value", overflow="fold")
    head.add_row("dataset", summary["dataset"] or "-")
    head.add_row("spots × genes", f"{summary['spots']:,} × {summary['genes']:,}")
    head.add_row("splits", ", ".join(f"{name}: {v['slides']} slide(s), {v['spots']:,} spots"
                                     for name, v in summary["splits"].items()) or "-")
    missing = summary["missing"]
    if "kept_genes" in missing:
        head.add_row("missing, raw (all genes read)", _percent(missing.get("raw_all_genes")))
        head.add_row("missing, kept genes", _percent(missing["kept_genes"]) + "  (" + ", ".join(
            f"{k} {_percent(v)}" for k, v in missing.get("kept_genes_per_split", {}).items()) + ")")
        head.add_row("missing after the median filter", _percent(missing.get("after_median_filter")))
    else:
        head.add_row("zeros in X", _percent(missing["X_zero_fraction"]))
    processing = summary["processing"]
    if processing:
        head.add_row("preset", str(processing["preset"]))
        head.add_row("parameters", ", ".join(f"{k}={v}" for k, v in processing["parameters"].items()
                                             if k != "extra"))
        head.add_row("spared version", str(processing["versions"].get("spared", "?")))
    completion = summary["completion"]
    if completion:
        head.add_row("completion", f"{completion.get('method')} → {completion.get('key_added')}; weights selected on "
                                   f"{completion.get('selection') or '?'}")
    patches = summary["patches"]
    head.add_row("patches", "none recorded" if not patches["recorded"] else
                 f"{patches['path'] or '?'} ({'present' if patches['present'] else 'MISSING'}; "
                 f"{patches['size']} px, scale {patches['scale']})")
    console.print(head)
    slides = Table(title="slides")
    for col in ("slide", "patient", "split", "spots", "image"):
        slides.add_column(col, justify="right" if col == "spots" else "left")
    for row in summary["slides"]:
        slides.add_row(row["slide"], str(row["patient"]), str(row["split"]), str(row["spots"]), str(row["image"]))
    console.print(slides)
    layers = Table(title="layers")
    for col in ("layer", "dtype", "meaning"):
        layers.add_column(col)
    for row in summary["layers"]:
        layers.add_row(row["name"], row["dtype"], row["meaning"])
    console.print(layers)
    for kind in ("warnings", "input_warnings"):
        for message in summary[kind]:
            console.print("[bold yellow]warning:[/]", end=" ")
            console.print(message, markup=False, highlight=False, soft_wrap=True)

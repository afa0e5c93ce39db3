"""``spared report``: one self-contained HTML file from a results folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from spared.cli.app import app, console, err_console


@app.command()
def report(
    results_dir: Annotated[Path, typer.Argument(help="Results folder (from `spared bench` or `spared demo`).")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="HTML file to write.")] = None,
) -> None:
    """Write the HTML report: dataset summary, completion evaluation and benchmark tables."""
    from spared.report import build_report

    try:
        path = build_report(results_dir, output)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"report written to {path}")

"""``spared report``: one self-contained HTML file from a results folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from spared.cli.app import app, console, fail


@app.command()
def report(
    results_dir: Annotated[Path, typer.Argument(help="Results folder (from `spared bench` or `spared demo`).")],
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="HTML file to write (a folder gets report.html inside it; default: "
                               "RESULTS_DIR/report.html).")] = None,
    data: Annotated[list[Path] | None, typer.Option(
        "--data", help="Processed collection (.h5ad) to summarise; repeat for several (default: the .h5ad files "
                       "in RESULTS_DIR).")] = None,
) -> None:
    """Write the HTML report: dataset summary, completion evaluation and benchmark tables."""
    from spared.io.atomic import OutputPathError
    from spared.report import build_report

    try:
        path = build_report(results_dir, output, processed=list(data) if data else None)
    except (FileNotFoundError, KeyError, ValueError, OutputPathError) as exc:
        raise fail(str(exc).strip("'\"")) from exc
    console.print(f"report written to {path}")

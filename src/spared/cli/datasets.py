"""``spared datasets`` (the catalogue and what is on disk) and ``spared download NAME``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from spared.cli.app import app, console, err_console

DataDirOption = Annotated[Path | None, typer.Option("--data-dir", help="Data root (default: $SPARED_DATA or the "
                                                                      "user data folder).")]


def _records(data_dir: Path | None) -> list[dict[str, Any]]:
    from spared.catalog import all_specs
    from spared.io.download import status

    return [{"name": s.key, "organism": s.organism, "tissue": s.tissue, "slides": len(s.slides),
             "patients": len(s.patients), "spots": s.approx_spots, "source": s.source, "format": s.format,
             "status": status(s, data_dir)} for s in all_specs()]


@app.command()
def datasets(
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON records.")] = False,
    data_dir: DataDirOption = None,
) -> None:
    """List the catalogue: name, organism, slides, approximate spots and status (absent/downloaded/processed)."""
    records = _records(data_dir)
    if as_json:
        typer.echo(json.dumps(records, indent=2))
        return
    table = Table(title=f"SpaRED datasets ({len(records)})")
    for column, justify in (("name", "left"), ("organism", "left"), ("slides", "right"), ("spots", "right"),
                            ("status", "left")):
        table.add_column(column, justify=justify)
    colours = {"absent": "dim", "downloaded": "yellow", "processed": "green"}
    for r in records:
        table.add_row(r["name"], r["organism"], str(r["slides"]), f"~{r['spots']:,}",
                      f"[{colours[r['status']]}]{r['status']}[/]")
    console.print(table)


@app.command()
def download(
    name: Annotated[str, typer.Argument(help="Dataset key (see `spared datasets`).")],
    data_dir: DataDirOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for a server before giving up.")] = 60.0,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
) -> None:
    """Download (and unpack) dataset NAME and check its slides' files are where the catalogue says.

    Without network, print each URL and the path where to place the file by hand (exit 1); exit 2 when the
    unpacked layout differs from the catalogue's.
    """
    from spared.catalog import SpecError, UnknownDatasetError, load_spec
    from spared.io.archive import ArchiveError
    from spared.io.download import ChecksumError, DownloadError, LayoutError, fetch_dataset, resolve_slides

    try:
        spec = load_spec(name)
        folder = fetch_dataset(spec, data_dir=data_dir, progress=progress, timeout=timeout)
    except (UnknownDatasetError, SpecError, DownloadError, ChecksumError, ArchiveError) as exc:
        err_console.print("[bold red]error:[/]", end=" ")
        err_console.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from exc
    console.print(f"{name}: {len(spec.files)} file(s) ready in {folder}", soft_wrap=True)
    try:
        resolve_slides(spec, folder)
    except LayoutError as exc:
        err_console.print("[bold yellow]warning:[/] the download is complete but", end=" ")
        err_console.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from exc

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


FromOption = Annotated[Path | None, typer.Option(
    "--from", help="Local folder holding the dataset's archives, their unpacked folders or one archive's contents: "
                   "used in place (linked, not copied; format-checked and hashed), no network. Given again, or "
                   "another folder, it is compared with what is linked and linked anew where it differs.")]
ExternalLinksOption = Annotated[bool, typer.Option(
    "--allow-external-links", help="Follow links inside the --from folder that lead out of it (refused "
                                   "otherwise: they could bring in files that are not the dataset's).")]
CHECKSUM_NOTE = ("checksums: 'pinned' = sha256 published for every file and checked; 'first use' = no published "
                 "hash, the first copy seen is recorded and later copies are checked against it (trust on first "
                 "use: it guards against change, not against a wrong first download); 'local folder' = your files, "
                 "linked with --from: format-checked and hashed when linked, changes detected")


def _records(data_dir: Path | None, include_extras: bool = False) -> list[dict[str, Any]]:
    from spared.catalog import all_specs
    from spared.io.download import checksum_state, status

    return [{"name": s.key, "organism": s.organism, "tissue": s.tissue, "technology": s.technology_name,
             "geometry": s.geometry, "slides": len(s.slides), "patients": len(s.patients), "spots": s.approx_spots,
             "source": s.source, "format": s.format, "extra": s.extra, "status": status(s, data_dir),
             "checksums": checksum_state(s, data_dir)}
            for s in all_specs(include_extras)]


_GEOMETRY = {"hex": "hex (6)", "square": "square (8)"}


@app.command()
def datasets(
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON records.")] = False,
    include_extras: Annotated[bool, typer.Option("--all", help="Also list the extra datasets beyond SpaRED's 26 "
                                                              "(legacy ST collections), marked 'extra'.")] = False,
    data_dir: DataDirOption = None,
) -> None:
    """List the catalogue: name, organism, technology, spot geometry, slides, approximate spots and status
    (absent/downloaded/processed)."""
    records = _records(data_dir, include_extras)
    if as_json:
        typer.echo(json.dumps(records, indent=2))
        return
    n_extra = sum(r["extra"] for r in records)
    title = f"SpaRED datasets ({len(records) - n_extra}" + (f" + {n_extra} extra)" if n_extra else ")")
    table = Table(title=title)
    table.add_column("name", overflow="fold")
    for column, justify in (("organism", "left"), ("technology", "left"), ("geometry", "left"), ("slides", "right"),
                            ("spots", "right"), ("checksums", "left"), ("status", "left")):
        table.add_column(column, justify=justify)
    colours = {"absent": "dim", "downloaded": "yellow", "processed": "green"}
    for r in records:
        name = f"{r['name']} [cyan](extra)[/]" if r["extra"] else r["name"]
        table.add_row(name, r["organism"], r["technology"], _GEOMETRY.get(r["geometry"], r["geometry"]),
                      str(r["slides"]), f"~{r['spots']:,}" if r["spots"] else "?", r["checksums"],
                      f"[{colours[r['status']]}]{r['status']}[/]")
    console.print(table)
    console.print(CHECKSUM_NOTE, style="dim", soft_wrap=True)
    if not include_extras:
        console.print("[dim]spared datasets --all also lists the extra legacy-ST collections[/]")


@app.command()
def folds(
    name: Annotated[str, typer.Argument(help="Dataset key (see `spared datasets --all`).")],
    scheme: Annotated[str, typer.Option(help="lopo (leave one patient out) or loso (leave one slide out).")] = "lopo",
    plain: Annotated[bool, typer.Option("--plain", help="Print only the split_scheme values, one per line.")] = False,
) -> None:
    """List the leave-one-out folds of dataset NAME as split_scheme values for --set split_scheme=...

    Each fold holds out one patient (or slide) as test and the next one as val; use it as
    `spared prepare NAME --set split_scheme=lopo:<patient>`.
    """
    from spared.catalog import SpecError, UnknownDatasetError, load_spec
    from spared.pp.splits import assign_splits

    try:
        spec = load_spec(name)
        schemes = spec.folds(scheme)
        rows = [(f, assign_splits([s.patient for s in spec.slides], [s.id for s in spec.slides], f))
                for f in schemes]
    except (UnknownDatasetError, SpecError, ValueError) as exc:
        err_console.print("[bold red]error:[/]", end=" ")
        err_console.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from exc
    if plain:
        typer.echo("\n".join(schemes))
        return
    table = Table(title=f"{name}: {len(schemes)} {scheme} folds")
    for column in ("split_scheme", "test", "val", "train slides"):
        table.add_column(column)
    for fold, splits in rows:
        by_split = {k: [s.id for s, v in zip(spec.slides, splits, strict=True) if v == k]
                    for k in ("train", "val", "test")}
        table.add_row(fold, ", ".join(by_split["test"]), ", ".join(by_split["val"]), str(len(by_split["train"])))
    console.print(table)


@app.command()
def download(
    name: Annotated[str, typer.Argument(help="Dataset key (see `spared datasets`).")],
    data_dir: DataDirOption = None,
    source: FromOption = None,
    recheck: Annotated[bool, typer.Option("--recheck", help="Re-hash every file (linked files too), record "
                                                           "trust-on-first-use hashes again and re-unpack archives "
                                                           "that changed.")] = False,
    allow_external_links: ExternalLinksOption = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for a server before giving up.")] = 60.0,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
) -> None:
    """Download (and unpack) dataset NAME, or take it from a local folder (--from), and check its files.

    Each file must be what its name says (HDF5, gzip, zip, TIFF, ...) and match its sha256.

    The hash is the catalogue's where one is published, else the one recorded when the file was first seen.

    A file you placed is never deleted; --recheck records the hashes of the files present again.

    Without network, print each URL and the path where to place the file by hand (exit 1).

    Exit 2 when the unpacked layout differs from the catalogue's.
    """
    from spared.catalog import SpecError, UnknownDatasetError, load_spec
    from spared.io.archive import ArchiveError
    from spared.io.atomic import DiskFullError
    from spared.io.download import (
        ChecksumError,
        DownloadError,
        FormatError,
        LayoutError,
        fetch_dataset,
        file_records,
        resolve_layout,
    )

    try:
        spec = load_spec(name)
        folder = fetch_dataset(spec, data_dir=data_dir, progress=progress, timeout=timeout, source=source,
                               recheck=recheck, allow_external_links=allow_external_links)
    except (UnknownDatasetError, SpecError, DownloadError, ChecksumError, FormatError, ArchiveError,
            DiskFullError) as exc:
        _error(str(exc))
        raise typer.Exit(1) from exc
    records = file_records(spec, data_dir)
    ready = [r for r in records if r["state"] != "missing"]
    console.print(f"{name}: {len(ready)} of {len(records)} file(s) ready in {folder}", soft_wrap=True)
    for state, meaning in (("pinned", "sha256 checked against the catalogue's published value"),
                           ("first use", "trust on first use: no published hash, sha256 recorded when first seen "
                                         "(not verified against the source)"),
                           ("local folder", "unpacked content used in place from your folder (each file "
                                            "format-checked and hashed when linked)"),
                           ("missing", "missing (full-resolution images only: patches will come from hires)")):
        files = [r["filename"] + (f" (from {r['source']})" if r.get("linked") else "") for r in records
                 if r["state"] == state]
        if files:
            console.print(f"  {len(files)} {meaning}: {', '.join(files)}", soft_wrap=True, markup=False,
                          highlight=False)
    try:
        _, notes = resolve_layout(spec, folder)
    except LayoutError as exc:
        err_console.print("[bold yellow]warning:[/] the download is complete but", end=" ")
        err_console.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from exc
    for note in notes:
        err_console.print("[bold yellow]warning:[/]", end=" ")
        err_console.print(note, markup=False, highlight=False, soft_wrap=True)


def _error(message: str) -> None:
    err_console.print("[bold red]error:[/]", end=" ")
    err_console.print(message, markup=False, highlight=False, soft_wrap=True)

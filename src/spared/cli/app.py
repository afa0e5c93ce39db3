"""The Typer application object shared by every command module, and the error/warning plumbing they share."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    help="SpaRED: spatial transcriptomics datasets, SpaCKLE completion and a histology-to-expression benchmark.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
console = Console()
err_console = Console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        from spared import __version__

        console.print(f"spared {__version__}")
        raise typer.Exit()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one ``warning: ...`` line on stderr (no source line, no file path)."""
    err_console.print("[bold yellow]warning:[/]", end=" ")
    err_console.print(str(message), markup=False, highlight=False, soft_wrap=True)


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the spared version and exit.")] = False,
) -> None:
    """SpaRED: spatial transcriptomics datasets, SpaCKLE completion and a histology-to-expression benchmark."""
    warnings.showwarning = _show_warning


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` on stderr (unwrapped, no markup) and return the ``typer.Exit`` to raise."""
    err_console.print("[bold red]error:[/]", end=" ")
    err_console.print(message, markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code)


def writable_file(path: Path) -> Path:
    """``path`` when a file can be written there, else the ``typer.Exit`` of a clear error (checked first)."""
    from spared.io.atomic import OutputPathError, check_writable_file

    try:
        return check_writable_file(path)
    except OutputPathError as exc:
        raise fail(str(exc)) from exc


def writable_dir(path: Path) -> Path:
    """``path`` when files can be written in that folder, else the ``typer.Exit`` of a clear error."""
    from spared.io.atomic import OutputPathError, check_writable_dir

    try:
        return check_writable_dir(path)
    except OutputPathError as exc:
        raise fail(str(exc)) from exc


def importable_current_folder() -> None:
    """Let ``module:Class`` model references name modules of the current folder, as ``python -m`` does (the folder
    is appended to ``sys.path``, so it never shadows an installed package)."""
    import os
    import sys

    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)

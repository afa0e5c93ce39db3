"""The Typer application object shared by every command module."""

from __future__ import annotations

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


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` on stderr (unwrapped, no markup) and return the ``typer.Exit`` to raise."""
    err_console.print("[bold red]error:[/]", end=" ")
    err_console.print(message, markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code)

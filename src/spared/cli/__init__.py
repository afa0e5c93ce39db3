"""The ``spared`` command line: each command group lives in its own module and registers on ``app``."""

from __future__ import annotations

import importlib

from spared.cli.app import app

#: Modules of ``spared.cli`` that define commands (imported for their ``@app.command`` side effect).
COMMAND_MODULES: tuple[str, ...] = ("processing", "reporting", "completion", "data", "bench", "datasets",
                                     "models")

for _name in COMMAND_MODULES:
    importlib.import_module(f"spared.cli.{_name}")


def main() -> None:
    """Entry point of the ``spared`` console script."""
    app()


__all__ = ["app", "main"]

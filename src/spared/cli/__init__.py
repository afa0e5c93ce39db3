"""The ``spared`` command line: each command group lives in its own module and registers on ``app``."""

from __future__ import annotations

import importlib
import os
import sys

from spared.cli.app import app, fail

#: Modules of ``spared.cli`` that define commands (imported for their ``@app.command`` side effect).
COMMAND_MODULES: tuple[str, ...] = ("processing", "reporting", "completion", "data", "bench", "datasets",
                                     "models", "info", "scoring")

for _name in COMMAND_MODULES:
    importlib.import_module(f"spared.cli.{_name}")


def main() -> None:
    """Entry point of the ``spared`` console script.

    Commands turn the errors they expect into one ``error:`` line; an input error that escapes them (a
    ``ValueError``, ``LookupError`` or ``OSError`` from deep inside, a full disk) is reported the same way, exit
    code 1, with its traceback only when ``SPARED_DEBUG=1``.
    """
    from spared.io.atomic import DiskFullError

    try:
        app()
    except DiskFullError as exc:  # its message says it all: the folder, the space needed, what to do
        if os.environ.get("SPARED_DEBUG"):
            raise
        fail(str(exc))
        sys.exit(1)
    except (ValueError, LookupError, OSError) as exc:
        if os.environ.get("SPARED_DEBUG"):
            raise
        fail(f"{type(exc).__name__}: {str(exc).strip(chr(39) + chr(34))} (SPARED_DEBUG=1 shows the traceback)")
        sys.exit(1)


__all__ = ["app", "main"]

"""One self-contained HTML report (figures embedded) from a results folder."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("build_report", "dataset_summary"):
        from spared.report import html

        return getattr(html, name)
    raise AttributeError(f"module 'spared.report' has no attribute {name!r}")

"""Warnings that belong to a dataset: issued, and recorded in ``uns["spared"]["warnings"]`` so they travel with it."""

from __future__ import annotations

import warnings
from typing import Any


def record_warning(adata: Any, message: str, issue: bool = True) -> None:
    """Append ``message`` to ``adata.uns["spared"]["warnings"]`` (once) and, with ``issue``, warn with it."""
    spared = adata.uns.setdefault("spared", {})
    recorded = [str(m) for m in spared.get("warnings", [])]
    if message not in recorded:
        spared["warnings"] = [*recorded, message]
    if issue:
        warnings.warn(message, UserWarning, stacklevel=3)


def recorded_warnings(adata: Any) -> list[str]:
    """The warnings recorded in ``adata.uns["spared"]["warnings"]``."""
    return [str(m) for m in adata.uns.get("spared", {}).get("warnings", [])]

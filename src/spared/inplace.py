"""The one in-place convention of :mod:`spared.pp` and :mod:`spared.impute` (scanpy's), in three helpers.

Every public function of those packages that takes an AnnData and changes it has a ``copy`` parameter:
``copy=False`` (default) changes the AnnData given and returns ``None``; ``copy=True`` leaves it untouched and
returns a new AnnData with the change. Filters that drop spots or genes follow the same rule (in place, the
AnnData given loses them). Functions without ``copy`` only read their AnnData. ``docs/data_model.md`` states it
for users; ``tests/test_inplace.py`` checks every public function against it.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def target(adata: Any, copy: bool) -> Any:
    """The AnnData a step writes into: a copy of ``adata`` when ``copy``, else ``adata`` itself.

    A view (``adata[idx]``) written in place becomes an actual AnnData first, as anndata does on any write.
    """
    if copy:
        return adata.copy()
    if adata.is_view:
        adata._init_as_actual(adata.copy())
    return adata


def subset(adata: Any, obs: np.ndarray | None = None, var: np.ndarray | None = None, copy: bool = False) -> Any:
    """``adata`` restricted to the spots ``obs`` and genes ``var`` (boolean masks or positions; ``None`` keeps all).

    With ``copy`` a new AnnData is returned and ``adata`` is untouched; otherwise ``adata`` itself loses the
    other spots and genes (anndata's in-place subset, as scanpy's filters use) and is returned.
    """
    obs_index = slice(None) if obs is None else obs
    var_index = slice(None) if var is None else var
    if copy:
        return adata[obs_index, var_index].copy()
    if obs is not None or var is not None:
        adata._init_as_actual(adata[obs_index, var_index].copy())
    return adata


def replace(adata: Any, new: Any) -> Any:
    """Give ``adata`` the contents of ``new`` (every field; ``adata`` keeps its identity) and return ``adata``."""
    if new is not adata:
        adata._init_as_actual(new)
    return adata

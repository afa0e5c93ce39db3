"""Griffe extension for the docs site: Sphinx roles in spared's docstrings become MkDocs cross-references.

spared's numpy-style docstrings name other objects the Sphinx way (``:func:`spared.pp.process```,
``:class:`~spared.io.patches.PatchStore```). mkdocstrings reads docstrings as Markdown, where such a role would
show verbatim; this extension rewrites it, when the docstrings are loaded, into an autorefs link to the object's
entry in the API reference (``~`` shows the last name only). A name exported lazily by a package
(``spared.pp.process``) links to where it is defined (``spared.pp.protocol.process``). Targets outside
``spared`` (numpy, anndata, ...), data attributes and names without a module become plain code: the site is
built offline, with no other project's inventory.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
from typing import Any

from griffe import Extension

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|obj|exc):`(~?)([^`<>]+?)`")


@functools.cache
def canonical(target: str) -> str | None:
    """The documented name of the spared module, class or function ``target`` names, or ``None``."""
    parts = target.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        break
    else:
        return None
    if inspect.ismodule(obj):
        name = obj.__name__
    elif inspect.isclass(obj) or inspect.isfunction(obj):
        name = f"{obj.__module__}.{obj.__qualname__}"
    else:
        return None
    return name if name.startswith("spared") and not any(p.startswith("_") for p in name.split(".")) else None


def rewrite(text: str) -> str:
    """``text`` with every Sphinx cross-reference role replaced by an autorefs link or inline code."""

    def link(match: re.Match[str]) -> str:
        short, target = match.group(1) == "~", match.group(2).strip().removesuffix("()")
        shown = target.rsplit(".", 1)[-1] if short else target
        documented = canonical(target) if target.split(".")[0] == "spared" else None
        return f"[`{shown}`][{documented}]" if documented else f"`{shown}`"

    return ROLE.sub(link, text)


class SphinxRoles(Extension):
    """Rewrite the roles of every docstring griffe loads (see :func:`rewrite`)."""

    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)

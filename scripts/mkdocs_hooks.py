"""MkDocs hooks of the docs site (``mkdocs.yml``): the API reference pages and the navigation, built at each build.

- **API reference**: one page per subpackage of ``src/spared`` (``api/pp.md``, ``api/impute.md``, ...), each
  rendering every public module under it with mkdocstrings, so a new module appears without editing anything.
- **Navigation**: the guide pages of ``docs/`` (in :data:`GUIDE` order, then any other page alphabetically), every
  ``docs/tutorials/*.md`` page, then the API reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "src" / "spared"
#: The guide pages first, in reading order (any other page of docs/ follows, alphabetically).
GUIDE = ["index.md", "data_model.md", "processing.md", "spackle.md", "formats.md", "models.md"]
#: Modules that are no part of the reference (the command line is documented by ``spared --help``).
SKIPPED = ("spared.cli",)


def modules() -> dict[str, list[str]]:
    """Public module names of ``spared`` grouped by page: each subpackage, and ``spared`` for the top modules."""
    pages: dict[str, list[str]] = {}
    for path in sorted(SOURCE.rglob("*.py")):
        parts = path.relative_to(SOURCE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        name = ".".join(parts)
        if any(p.startswith("_") for p in parts) or name.startswith(SKIPPED):
            continue
        page = parts[1] if len(parts) > 2 or (path.name == "__init__.py" and len(parts) == 2) else "spared"
        pages.setdefault(page, []).append(name)
    return pages


def page_text(page: str, names: list[str]) -> str:
    title = "spared (top-level modules)" if page == "spared" else f"spared.{page}"
    blocks = [f"::: {name}\n    options:\n      show_submodules: false\n" for name in names]
    return f"# {title}\n\n" + "\n".join(blocks)


def on_files(files: Files, config: Any) -> Files:
    for page, names in modules().items():
        files.append(File.generated(config, f"api/{page}.md", content=page_text(page, names)))
    return files


def on_config(config: Any) -> Any:
    docs = Path(config["docs_dir"])
    pages = sorted(p.name for p in docs.glob("*.md"))
    guide = [p for p in GUIDE if p in pages] + [p for p in pages if p not in GUIDE]
    tutorials = sorted(str(p.relative_to(docs)) for p in (docs / "tutorials").glob("*.md"))
    reference = [f"api/{page}.md" for page in sorted(modules(), key=lambda p: (p != "spared", p))]
    config["nav"] = [*guide, *([{"Tutorials": tutorials}] if tutorials else []), {"API reference": reference}]
    return config

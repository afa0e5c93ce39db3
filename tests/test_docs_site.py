"""The docs site's build helpers (scripts/mkdocs_hooks.py, scripts/griffe_sphinx_roles.py); `make docs` builds
the site itself in strict mode."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load(name: str):
    pytest.importorskip("mkdocs" if name == "mkdocs_hooks" else "griffe", reason="the docs extra is not installed")
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_sphinx_roles_become_links_to_where_objects_are_defined():
    roles = load("griffe_sphinx_roles")
    text = roles.rewrite("see :func:`spared.pp.process`, :class:`~spared.io.patches.PatchStore`, "
                         ":mod:`spared.impute.median`, :class:`anndata.AnnData`, :func:`process` and "
                         ":data:`spared.data_model.LAYERS`")
    assert "[`spared.pp.process`][spared.pp.protocol.process]" in text  # lazily exported: its defining module
    assert "[`PatchStore`][spared.io.patches.PatchStore]" in text
    assert "[`spared.impute.median`][spared.impute.median]" in text
    assert "`anndata.AnnData`" in text and "[`anndata" not in text  # outside spared: plain code
    assert "`process` and" in text and "`spared.data_model.LAYERS`" in text and ":func:" not in text


def test_reference_pages_cover_every_public_module_and_tutorials_are_picked_up(tmp_path):
    hooks = load("mkdocs_hooks")
    pages = hooks.modules()
    names = {name for group in pages.values() for name in group}
    assert {"spared.pp.protocol", "spared.impute.spackle.selection", "spared.io.patch_paths", "spared.info"} <= names
    assert not any(n.startswith("spared.cli") or "._" in n for n in names)
    (tmp_path / "tutorials").mkdir()
    for name in ("index.md", "spackle.md", "zebra.md", "tutorials/b_second.md", "tutorials/a_first.md"):
        (tmp_path / name).write_text("# page\n")
    nav = hooks.on_config({"docs_dir": str(tmp_path)})["nav"]
    assert nav[:3] == ["index.md", "spackle.md", "zebra.md"]
    assert nav[3] == {"Tutorials": ["tutorials/a_first.md", "tutorials/b_second.md"]}
    assert nav[4]["API reference"][0] == "api/spared.md" and "api/pp.md" in nav[4]["API reference"]

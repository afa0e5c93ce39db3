"""The tutorials in docs/tutorials/ cannot rot: every Python block of each page runs, in order, on simulated data."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("torch")

TUTORIALS = sorted((Path(__file__).resolve().parents[1] / "docs" / "tutorials").glob("*.md"))


def python_blocks(page: Path) -> str:
    """The page's ```python blocks, joined in order (bash and TOML blocks are left out)."""
    return "\n\n".join(re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.DOTALL))


def test_there_are_tutorials():
    assert {p.stem for p in TUTORIALS} >= {"benchmark-your-model", "score-predictions", "loaders"}


#: Pages whose code trains several runs end to end (tens of seconds): marked slow.
SLOW = {"benchmark-your-model"}


@pytest.mark.parametrize("page", [pytest.param(p, id=p.stem, marks=[pytest.mark.slow] if p.stem in SLOW else [])
                                  for p in TUTORIALS])
def test_tutorial_runs(page, tmp_path, monkeypatch, tmp_path_factory):
    from spared.models import registry

    code = python_blocks(page)
    assert code.strip(), f"{page.name} has no Python code"
    monkeypatch.chdir(tmp_path)
    # one data cache for every tutorial: the simulated collection is processed once
    monkeypatch.setenv("SPARED_DATA", str(tmp_path_factory.getbasetemp() / "tutorial_data"))
    before = set(registry.entries())
    try:
        exec(compile(code, str(page), "exec"), {"__name__": f"tutorial_{page.stem.replace('-', '_')}"})
    finally:
        for name in set(registry.entries()) - before:
            registry.unregister(name)
    if page.stem == "benchmark-your-model":
        page_html = (tmp_path / "results" / "report.html").read_text()
        assert "Tiny CNN (custom)" in page_html and "ShuffleNet" in page_html
    if page.stem == "score-predictions":
        from spared.bench import ResultsTable

        assert list(ResultsTable(tmp_path / "results").load()["model"]) == ["ridge_colour"]

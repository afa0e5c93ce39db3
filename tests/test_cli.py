"""The command line: simulate → process → outputs, `--set` overrides, and clear failures."""

import anndata as ad
from typer.testing import CliRunner

from spared.cli import app

runner = CliRunner()


def said(result) -> str:
    """The command's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("simulate", "process", "demo", "report", "datasets", "download", "prepare"):
        assert command in said(result)
    for command in ("simulate", "process", "demo", "report"):
        assert runner.invoke(app, [command, "--help"]).exit_code == 0


def test_simulate_then_process_with_overrides(tmp_path):
    raw = tmp_path / "raw.h5ad"
    result = runner.invoke(app, ["simulate", str(raw), "--slides", "2", "--spots", "250", "--genes", "96"])
    assert result.exit_code == 0, result.output
    assert ad.read_h5ad(raw).obs["slide_id"].nunique() == 2
    out = tmp_path / "processed.h5ad"
    result = runner.invoke(app, ["process", str(raw), str(out), "--set", "top_moran_genes=12",
                                 "--set", "complete_missing=false"])
    assert result.exit_code == 0, result.output
    assert ad.read_h5ad(out).n_vars == 12
    assert "Moran's I of kept genes" in said(result)


def test_process_config_file(tmp_path):
    raw = tmp_path / "raw.h5ad"
    runner.invoke(app, ["simulate", str(raw), "--slides", "2", "--spots", "250", "--genes", "96"])
    config = tmp_path / "c.toml"
    config.write_text("top_moran_genes = 10\ncomplete_missing = false\n")
    result = runner.invoke(app, ["process", str(raw), str(tmp_path / "p.h5ad"), "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert ad.read_h5ad(tmp_path / "p.h5ad").n_vars == 10


def test_failures_exit_nonzero_with_a_message(tmp_path):
    result = runner.invoke(app, ["process", str(tmp_path / "missing.h5ad"), str(tmp_path / "o.h5ad")])
    assert result.exit_code == 1 and "does not exist" in said(result)
    broken = tmp_path / "broken.h5ad"
    broken.write_bytes(b"not an h5 file")
    result = runner.invoke(app, ["process", str(broken), str(tmp_path / "o.h5ad")])
    assert result.exit_code == 1 and "could not read" in said(result)
    raw = tmp_path / "raw.h5ad"
    runner.invoke(app, ["simulate", str(raw), "--slides", "2", "--spots", "250", "--genes", "96"])
    result = runner.invoke(app, ["process", str(raw), str(tmp_path / "o.h5ad"), "--set", "nonsense=1"])
    assert result.exit_code == 1 and "valid names" in said(result)
    result = runner.invoke(app, ["simulate", str(tmp_path / "x.h5ad"), "--dropout", "1.5"])
    assert result.exit_code == 1 and "dropout" in said(result)
    assert not (tmp_path / "o.h5ad").exists() and not (tmp_path / "x.h5ad").exists()


def test_process_by_dataset_name(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARED_DATA", str(tmp_path / "cache"))
    result = runner.invoke(app, ["process", "not_a_dataset"])
    assert result.exit_code == 1 and "not_a_dataset" in said(result)
    result = runner.invoke(app, ["process", str(tmp_path / "raw.h5ad")])
    assert result.exit_code == 1 and "give the output path too" in said(result)

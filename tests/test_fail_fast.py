"""Fail before the work, name suspicious input, and never answer a user error with a traceback."""

from __future__ import annotations

import os
import sys

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

import spared
from spared.cli import app
from spared.data_model import ValidationError, validate
from spared.synthetic import make_collection

runner = CliRunner()


def said(result) -> str:
    return " ".join(result.output.split())


def no_traceback(result) -> bool:
    return "Traceback" not in result.output and (result.exception is None or isinstance(result.exception,
                                                                                          SystemExit))


@pytest.fixture(scope="module")
def raw_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("raw") / "raw.h5ad"
    make_collection(n_slides=3, n_spots=80, n_genes=48, seed=1).write_h5ad(path)
    return path


@pytest.fixture
def no_work(monkeypatch):
    """Make the first processing step and SpaCKLE training blow up: a test passes only if it stops before them."""
    import spared.impute.spackle.train
    import spared.pp.qc

    def boom(*args, **kwargs):
        raise AssertionError("the work started before the check")

    monkeypatch.setattr(spared.pp.qc, "filter_spots", boom)
    monkeypatch.setattr(spared.impute.spackle.train, "fit", boom)


@pytest.fixture
def no_work_after_spot_filter(monkeypatch):
    """Make the step after the spot filter blow up."""
    import spared.pp.qc

    def boom(*args, **kwargs):
        raise AssertionError("the work went on past the spot filter")

    monkeypatch.setattr(spared.pp.qc, "expression_fractions", boom)


# ------------------------------------------------------------------------------------- 6. fail before the work


def test_unwritable_outputs_are_refused_before_processing(raw_file, tmp_path, no_work):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    folder = tmp_path / "a_folder"
    folder.mkdir()
    cases = {
        "parent is a file": ["process", str(raw_file), str(blocker / "out.h5ad")],
        "OUT is a folder": ["process", str(raw_file), str(folder)],
        "simulate into a file's child": ["simulate", str(blocker / "x.h5ad"), "--spots", "50"],
        "complete into a folder": ["complete", str(raw_file), str(folder), "--method", "median"],
        "bench --out is a file": ["bench", "--models", "shufflenet", "--out", str(blocker)],
        "demo --out is a file": ["demo", "--out", str(blocker)],
        "report -o under a file": ["report", str(folder), "-o", str(blocker / "r.html")],
    }
    for case, args in cases.items():
        result = runner.invoke(app, args)
        assert result.exit_code == 1, (case, result.output)
        assert no_traceback(result), (case, result.output)
        text = said(result)
        assert "is a folder" in text or "is a file" in text or "not a folder" in text, (case, text)
    assert blocker.read_text() == "x" and list(folder.iterdir()) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_refused(raw_file, tmp_path, no_work):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = runner.invoke(app, ["process", str(raw_file), str(locked / "out.h5ad")])
    finally:
        locked.chmod(0o755)
    assert result.exit_code == 1 and "cannot write" in said(result) and no_traceback(result)


def test_writability_check_finds_a_read_only_folder(tmp_path, monkeypatch):
    """The check writes a probe: a folder refusing it (read-only mount, permissions) is named."""
    from spared.io import atomic

    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).startswith(str(tmp_path / "ro")) and flags & os.O_CREAT:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(atomic.os, "open", read_only)
    with pytest.raises(atomic.OutputPathError, match="cannot write"):
        atomic.check_writable_file(tmp_path / "ro" / "out.h5ad")
    atomic.check_writable_file(tmp_path / "ok" / "deeper" / "out.h5ad")  # missing parents are fine
    assert not (tmp_path / "ok").exists()  # and checking creates nothing


def test_existing_checkpoint_folder_is_refused_before_training(raw_file, tmp_path, no_work):
    existing = tmp_path / "ckpt"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["complete", str(raw_file), str(tmp_path / "out.h5ad"), "--train",
                                 "--save-checkpoint", str(existing)])
    assert result.exit_code == 1 and "ckpt" in said(result) and no_traceback(result), result.output
    assert (existing / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("splits", [("val",), ("val", "test")], ids=["one val slide", "no train slide"])
def test_a_collection_without_train_spots_is_refused_before_processing(tmp_path, no_work, splits):
    raw = make_collection(n_slides=len(splits), n_spots=60, n_genes=40, seed=0)
    raw.obs["split"] = raw.obs["slide_id"].map(dict(zip(sorted(raw.obs["slide_id"].unique()), splits,
                                                        strict=True))).astype(str)
    path = tmp_path / "raw.h5ad"
    raw.write_h5ad(path)
    result = runner.invoke(app, ["process", str(path), str(tmp_path / "out.h5ad")])
    assert result.exit_code == 1 and no_traceback(result), result.output
    assert "train split" in said(result) and "'train'" in said(result)
    with pytest.raises(ValueError, match="train split"):
        spared.pp.process(raw, progress=False)


# ---------------------------------------------------------------------------------- 7. suspicious input named


@pytest.mark.parametrize("transform, word", [(lambda x: x * 0.37, "integer"), (np.log1p, "log")])
def test_non_integer_counts_fail_unless_allowed(tmp_path, transform, word):
    raw = make_collection(n_slides=3, n_spots=80, n_genes=48, seed=2)
    raw.X = sp.csr_matrix(transform(raw.X.toarray().astype(np.float64)).astype(np.float32))
    path = tmp_path / "raw.h5ad"
    raw.write_h5ad(path)
    out = tmp_path / "out.h5ad"
    args = ["process", str(path), str(out), "--set", "complete_missing=false", "--set", "top_moran_genes=8"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and no_traceback(result), result.output
    assert word in said(result) and "--allow-non-integer" in said(result) and not out.exists()
    allowed = runner.invoke(app, [*args, "--allow-non-integer"])
    assert allowed.exit_code == 0, allowed.output
    assert "warning" in said(allowed).lower() and word in said(allowed)
    assert word in " ".join(ad.read_h5ad(out).uns["spared"]["input_warnings"])
    with pytest.raises(ValidationError, match=word):
        spared.pp.process(raw, progress=False)


def test_dropped_unannotated_genes_are_a_warning_with_the_count(raw_small):
    from spared.pp.normalize import tpm

    adata = raw_small.copy()
    names = adata.var_names.tolist()
    names[:3] = ["ENSG_NOT_A_GENE_1", "ENSG_NOT_A_GENE_2", "ENSG_NOT_A_GENE_3"]
    adata.var_names = names
    adata.layers["counts"] = adata.X.copy()
    with pytest.warns(UserWarning, match=r"dropping 3 of \d+ gene\(s\).*annotation"):
        tpm(adata)


# ------------------------------------------------------------------------------ 9. no tracebacks for user errors


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and spared.__version__ in result.output


def test_ray_executor_without_ray_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    result = runner.invoke(app, ["bench", "--models", "shufflenet", "--executor", "ray", "--out", str(tmp_path)])
    assert result.exit_code == 1 and no_traceback(result), result.output
    assert "pip install 'spared[ray]'" in said(result)
    from spared.bench.executors import RayExecutor

    with pytest.raises(ImportError, match=r"spared\[ray\]"):
        RayExecutor()


def test_validate_empty_and_zero_spot_collections():
    with pytest.raises(ValidationError, match="no spots"):
        validate(ad.AnnData())
    raw = make_collection(n_slides=2, n_spots=40, n_genes=20, seed=0)
    with pytest.raises(ValidationError, match="no spots"):
        validate(raw[:0].copy())
    with pytest.raises(ValidationError, match="no genes"):
        validate(raw[:, :0].copy())


def test_zero_spot_collection_cli(tmp_path, processed_small):
    raw = make_collection(n_slides=2, n_spots=40, n_genes=20, seed=0)[:0].copy()
    path = tmp_path / "empty.h5ad"
    raw.write_h5ad(path)
    processed = tmp_path / "empty_processed.h5ad"
    processed_small[:0].copy().write_h5ad(processed)
    for args in (["process", str(path), str(tmp_path / "out.h5ad")],
                 ["complete", str(processed), str(tmp_path / "out.h5ad"), "--method", "median"],
                 ["evaluate-completion", str(processed), "--methods", "median"],
                 ["bench", "--models", "stnet", "--datasets", str(processed), "--targets", "raw", "--out",
                  str(tmp_path / "res")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and "no spots" in said(result) and no_traceback(result), result.output
    assert not (tmp_path / "out.h5ad").exists()


def test_spot_filter_removing_the_train_slides_is_named_early(no_work_after_spot_filter):
    raw = make_collection(n_slides=3, n_spots=60, n_genes=40, seed=0)
    counts = raw.X.toarray()
    train = (raw.obs["split"] == "train").to_numpy()
    counts[train] = 0
    counts[train, 0] = 3  # every train spot has 3 counts: below cell_min_counts=5
    raw.X = sp.csr_matrix(counts)
    with pytest.raises(ValueError, match=r"train split after the spot filter \(cell_min_counts=5"):
        spared.pp.process(raw, spared.config.ProcessingConfig(cell_min_counts=5), progress=False)


def test_corrupt_processed_cache_names_the_file_and_suggests_force(tmp_path):
    from spared.datasets import cache_paths, get

    name = "villacampa_lung_organoid"
    h5ad, _ = cache_paths(name, None, tmp_path)
    h5ad.parent.mkdir(parents=True)
    h5ad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    with pytest.raises(OSError, match="--force") as info:
        get(name, data_dir=tmp_path, progress=False)
    assert str(h5ad) in str(info.value)
    result = runner.invoke(app, ["prepare", name, "--data-dir", str(tmp_path)])
    assert result.exit_code == 1 and no_traceback(result) and "--force" in said(result), result.output


def test_direct_imports_are_declared_dependencies():
    """Every third-party package imported by src/ is a dependency (core, or an extra for optional imports)."""
    import ast
    import tomllib
    from importlib.metadata import packages_distributions
    from pathlib import Path

    root = Path(spared.__file__).parent
    project = Path(__file__).resolve().parents[1] / "pyproject.toml"
    meta = tomllib.loads(project.read_text())["project"]
    declared = {_dist(d) for d in meta["dependencies"]}
    extras = {_dist(d) for group, deps in meta.get("optional-dependencies", {}).items() if group != "dev"
              for d in deps}
    stdlib = set(sys.stdlib_module_names)
    distributions = packages_distributions()
    imported: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                     else [])
            for name in names:
                top = name.split(".")[0]
                if top not in stdlib and top != "spared" and top != "__future__":
                    imported.setdefault(top, set()).add(path.name)
    missing = {}
    for module, files in imported.items():
        dists = {_dist(d) for d in distributions.get(module, [module])}
        if not dists & (declared | extras):
            missing[module] = sorted(files)
    assert missing == {}, f"imported but not declared in pyproject.toml: {missing}"


def _dist(requirement: str) -> str:
    import re

    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


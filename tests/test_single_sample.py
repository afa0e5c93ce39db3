"""One slide, one sample (issue 30, item 1): `spared process IN OUT` and `spared complete IN OUT`, with no option,
complete a single slide with SpaCKLE, its weights selected on held-out blocks of the slide's own spots.

SpaCKLE's step budget is cut to a few dozen steps here (the code path is the default one; the accuracy on a real
slide is measured by benchmarks/bench_single_slide.py and stated in docs/spackle.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from typer.testing import CliRunner

from spared.cli import app
from spared.io.patch_paths import read_h5ad
from spared.synthetic import make_collection

runner = CliRunner()


@pytest.fixture
def quick_spackle(monkeypatch):
    """SpaCKLE at its defaults but 40 steps, and every training recorded (the configuration it got)."""
    import spared.impute.spackle.train as train

    real, seen = train.fit, []

    def quick(adata, layer="c_d_log1p", config=None, run_dir=None):
        seen.append(config)
        return real(adata, layer, (config or train.SpackleConfig()).replace(max_steps=40, val_every=5), run_dir)

    monkeypatch.setattr(train, "fit", quick)
    return seen


def check_completed(path: Path) -> ad.AnnData:
    adata = read_h5ad(path)
    completed, observed, real = (np.asarray(adata.layers[k]) for k in ("c_t_log1p", "c_d_log1p", "mask"))
    assert np.isfinite(completed).all() and (~real).any()
    np.testing.assert_array_equal(completed[real], observed[real])  # real entries kept bit for bit
    assert not np.array_equal(completed[~real], observed[~real])  # missing entries completed
    return adata


@pytest.mark.slow
def test_one_simulated_slide_completes_through_process_and_complete(tmp_path, quick_spackle):
    raw = make_collection(n_slides=1, n_spots=300, n_genes=160, seed=3)
    assert set(raw.obs["split"]) == {"train"}  # a single sample: no val/test slide
    raw.write_h5ad(tmp_path / "one.h5ad")
    result = runner.invoke(app, ["process", str(tmp_path / "one.h5ad"), str(tmp_path / "processed.h5ad")])
    assert result.exit_code == 0, result.output
    assert "no val/test slide: SpaCKLE selects its weights on" in " ".join(result.output.split())
    processed = check_completed(tmp_path / "processed.h5ad")
    assert "blocks held out of 1 slide" in processed.uns["spared"]["completion"]["selection"]
    assert (tmp_path / "processed.patches.h5").is_file()
    del processed.layers["c_t_log1p"]
    processed.write_h5ad(tmp_path / "bare.h5ad")
    result = runner.invoke(app, ["complete", str(tmp_path / "bare.h5ad"), str(tmp_path / "completed.h5ad")])
    assert result.exit_code == 0, result.output
    check_completed(tmp_path / "completed.h5ad")
    assert len(quick_spackle) == 2  # trained by process, then by complete


@pytest.mark.slow
def test_one_real_organoid_slide_completes_through_process_and_complete(realdata, tmp_path, quick_spackle):
    from spared.catalog.spec import load_spec
    from spared.io.readers import read

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from organoids import ORGANOIDS

    key = "villacampa_lung_organoid"
    spec = load_spec(key)
    slide = spec.slides[0]
    raw = read(spec.format, realdata / "villacampa_xjtv62ncwr" / "data" / ORGANOIDS[key],
               [{"id": slide.id, "patient": slide.patient, "split": "train", "path": slide.id}], spec.organism)
    raw.write_h5ad(tmp_path / "slide.h5ad")
    result = runner.invoke(app, ["process", str(tmp_path / "slide.h5ad"), str(tmp_path / "processed.h5ad")])
    assert result.exit_code == 0, result.output
    processed = check_completed(tmp_path / "processed.h5ad")
    assert processed.n_obs > 300 and processed.n_vars == 128 and processed.obs["slide_id"].nunique() == 1
    assert "blocks held out of 1 slide" in processed.uns["spared"]["completion"]["selection"]
    assert (tmp_path / "processed.patches.h5").is_file()  # cut from the slide's hires image
    del processed.layers["c_t_log1p"]
    processed.write_h5ad(tmp_path / "bare.h5ad")
    result = runner.invoke(app, ["complete", str(tmp_path / "bare.h5ad"), str(tmp_path / "completed.h5ad")])
    assert result.exit_code == 0, result.output
    check_completed(tmp_path / "completed.h5ad")

"""The HTML report: content from a small results folder, self-contained, and rendered by headless Chromium."""

import io
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from spared.bench.results import ResultsTable
from spared.io.atomic import write_h5ad
from spared.report import build_report


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory, processed_small):
    folder = tmp_path_factory.mktemp("results")
    write_h5ad(processed_small, folder / "simulated.h5ad")
    pd.DataFrame({"method": ["spackle", "median"], "target": "masked", "MSE": [0.1, 0.5],
                  "PCC-Gene": [0.8, 0.3]}).to_csv(folder / "completion.csv", index=False)
    pd.DataFrame({"method": ["spackle", "median"] * 2, "mask_fraction": [0.1, 0.1, 0.3, 0.3],
                  "MSE": [0.1, 0.5, 0.2, 0.6], "PCC-Gene": [0.8, 0.3, 0.7, 0.2]}).to_csv(
        folder / "completion_curve.csv", index=False)
    rows = []
    for model in ("stnet", "sepal"):
        for target in ("raw", "completed"):
            for seed in (0, 1):
                rows.append({"run_id": f"{model}-{target}-{seed}", "model": model, "dataset": "simulated",
                             "target": target, "seed": seed, "status": "done", "error": "",
                             "MSE": 1.0 + seed + (target == "raw"), "PCC-Gene": 0.3 + 0.1 * seed})
    rows.append({"run_id": "bleep-raw-0", "model": "bleep", "dataset": "simulated", "target": "raw", "seed": 0,
                 "status": "failed", "error": "RuntimeError: out of memory"})
    ResultsTable(folder).append(rows)
    return folder


def test_report_content_is_complete_and_self_contained(results_dir, tmp_path):
    out = build_report(results_dir, tmp_path / "report.html")
    page = out.read_text()
    # dataset summary: one row for the collection with its spot and gene counts
    assert "simulated" in page and "<h2>Datasets</h2>" in page
    assert re.search(r"<td>\s*900\s*</td>", page) or ">900<" in page.replace(" ", "")
    # completion and benchmark tables
    assert "spackle" in page and "completion MSE vs masking fraction" in page
    assert "MSE completed mean" in page and "Failed runs" in page and "out of memory" in page
    # figures: 5 QC/spatial + 2 completion + 2 benchmark bars; all embedded
    images = re.findall(r"<img [^>]*src=\"([^\"]+)\"", page)
    assert len(images) == 9
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    assert "<script" not in page


def test_report_benchmark_mean_matches_results(results_dir, tmp_path):
    page = build_report(results_dir, tmp_path / "r.html").read_text()
    tables = pd.read_html(io.StringIO(page), match="MSE completed mean")
    table = tables[0]
    stnet = table[table["model"] == "stnet"].iloc[0]
    assert float(stnet["MSE completed mean"]) == pytest.approx(1.5)
    assert float(stnet["MSE raw mean"]) == pytest.approx(2.5)


def test_report_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_report(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    page = build_report(empty).read_text()
    assert "No benchmark runs" in page and "No completion evaluation" in page


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("headless Chromium is not installed (make test installs Debian's chromium when it can: "
                    "apt-get install chromium)")
    return path


def _render(chromium: str, page, shot, profile):
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--window-size=1200,1800",
           f"--screenshot={shot}", page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]


def test_report_renders_in_headless_chromium_without_console_errors(results_dir, tmp_path):
    chromium = _chromium()
    page = build_report(results_dir, tmp_path / "report.html")
    shot = tmp_path / "report.png"
    result = _render(chromium, page, shot, tmp_path / "profile")
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 10_000
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (1800, 1200) and pixels.std() > 5  # something was drawn, not a blank page
    assert _console_errors(result.stderr) == []
    # the console check itself catches errors: a page with a script error is flagged
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>console.error('boom'); undefinedFunction();</script></body></html>")
    flagged = _render(chromium, bad, tmp_path / "bad.png", tmp_path / "profile2")
    assert _console_errors(flagged.stderr), flagged.stderr[-2000:]

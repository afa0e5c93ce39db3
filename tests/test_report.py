"""The HTML report: content from a small results folder, self-contained, and rendered by headless Chromium."""

import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spared.bench.results import ResultsTable
from spared.io.atomic import write_h5ad
from spared.report import build_report


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory, processed_small, results_row):
    folder = tmp_path_factory.mktemp("results")
    write_h5ad(processed_small, folder / "simulated.h5ad")
    pd.DataFrame({"method": ["spackle", "median"] * 2, "target": ["masked"] * 2 + ["vs truth"] * 2,
                  "n_entries": [120, 120, 300, 300], "MSE": [0.1, 0.5, 0.2, 0.6], "PCC-Gene": [0.8, 0.3, 0.7, 0.2],
                  "seconds": [3.0, 0.1, 3.0, 0.1]}).to_csv(folder / "completion.csv", index=False)
    pd.DataFrame({"method": ["spackle", "median"] * 2, "mask_fraction": [0.1, 0.1, 0.3, 0.3],
                  "MSE": [0.1, 0.5, 0.2, 0.6], "PCC-Gene": [0.8, 0.3, 0.7, 0.2]}).to_csv(
        folder / "completion_curve.csv", index=False)
    rows = []
    for model in ("stnet", "sepal"):
        for target in ("raw", "completed"):
            for seed in (0, 1):
                rows.append(results_row(f"{model}-{target}-{seed}", model=model, target=target, seed=seed,
                                        MSE=1.0 + seed + (target == "raw"), **{"PCC-Gene": 0.3 + 0.1 * seed}))
    rows.append({"run_id": "bleep-raw-0", "model": "bleep", "dataset": "simulated", "target": "raw", "seed": 0,
                 "status": "failed", "error": "RuntimeError: out of memory", "data_version": "v1"})
    ResultsTable(folder).append(rows)
    return folder


@pytest.fixture(scope="module")
def report(results_dir, tmp_path_factory):
    """The report of ``results_dir``, built once for the tests that only read it."""
    return build_report(results_dir, tmp_path_factory.mktemp("report") / "report.html")


def test_report_content_is_complete_and_self_contained(report):
    page = report.read_text()
    # dataset summary: one row for the collection with its spot and gene counts, missing values in percent
    assert "simulated" in page and "<h2>Datasets</h2>" in page
    assert re.search(r"<td>\s*900\s*</td>", page)
    assert len(re.findall(r"<td>\d+\.\d%</td>", page)) == 3
    # completion and benchmark tables, with readable names
    assert "SpaCKLE" in page and "adaptive median filter" in page and "Failed runs" in page
    assert "out of memory" in page and "STNet" in page
    # figures: 5 QC/spatial + 2 completion + 2 benchmark bars; all embedded
    images = re.findall(r"<img [^>]*src=\"([^\"]+)\"", page)
    assert len(images) == 9
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    assert "<script" not in page


def test_report_says_how_to_read_it(report):
    page = report.read_text()
    text = re.sub(r"<[^>]+>", " ", page)
    # which direction is better, for every metric shown
    assert "MSE ↓" in text and "PCC-Gene ↑" in text
    assert re.search(r"MSE ↓\s+lower is better", text) and re.search(r"PCC-Gene ↑\s+higher is better", text)
    # what the completion rows score
    assert "hidden measured values" in text and "hidden on purpose" in text
    assert "true missing values (simulated)" in text and "known expression before dropout" in text
    # what the benchmark targets are
    assert "SpaCKLE" in text and "adaptive median filter" in text and "test slides" in text
    # human column names, not the internal ones
    for internal in ("MSE raw mean", "n raw", "n_entries", "raw missing (all genes)", "PCC-Gene completed std"):
        assert internal not in text, internal


def test_report_benchmark_mean_matches_results(report):
    page = report.read_text()
    table = pd.read_html(io.StringIO(page), match="MSE ↓, completed")[0]
    stnet = table[table["Model"] == "STNet"].iloc[0]
    assert stnet["MSE ↓, completed"] == "1.500 ± 0.707" and stnet["MSE ↓, raw"] == "2.500 ± 0.707"
    assert stnet["Seeds"] == "2/2" and stnet["Failed runs"] == 0
    # how each benchmarked model was trained: its recipe and its deviations from the authors
    recipes = pd.read_html(io.StringIO(page), match="deviations from the authors")[0].set_index("model")
    assert sorted(recipes.index) == ["bleep", "sepal", "stnet"]
    assert "sgd lr 1e-06" in recipes.loc["stnet", "training (recipe)"]
    assert "stage 1 vit_b_delta" in recipes.loc["sepal", "training (recipe)"]
    assert "lattice neighbours" in recipes.loc["sepal", "deviations from the authors"]


def test_spatial_figure_names_genes_by_symbol(processed_small, report):
    from spared import pl

    gene = str(processed_small.var["d_log1p_moran"].idxmax())
    symbol = processed_small.var.loc[gene, "gene_symbol"]
    assert gene.startswith("ENS") and symbol != gene
    axes = pl.spatial_gene(processed_small, gene, show=False)
    figure = axes[0].figure
    texts = [t.get_text() for t in figure.findobj(lambda a: hasattr(a, "get_text"))]
    texts += [ax.get_ylabel() for ax in figure.axes]
    assert any(symbol in t for t in texts) and not any(gene in t for t in texts)
    page = report.read_text()
    assert f"{symbol}, the gene with the highest Moran" in page and gene not in page


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_legends_never_cover_bars_and_list_only_drawn_bars(processed_small):
    from spared import pl

    completed = processed_small.copy()
    completed.layers["c_t_log1p"] = completed.layers["c_d_log1p"].copy()  # nothing missing after completion
    runs = pd.DataFrame({"model": ["stnet", "stnet", "sepal", "sepal"], "dataset": "d",
                         "target": ["raw", "completed", "raw", "completed"],
                         "MSE": [2.0, np.nan, 1.0, np.nan]})  # no completed run succeeded
    figures = {"missing": pl.missing_fraction(completed, show=False),
               "bars": pl.benchmark_bars(runs, show=False),
               "counts": pl.counts_per_spot(processed_small, show=False)}
    labels = {name: [t.get_text() for t in ax.get_legend().get_texts()] for name, ax in figures.items()}
    assert "SpaCKLE" not in labels["missing"] and labels["missing"]  # its bars would be empty
    assert labels["bars"] == ["raw targets"]
    for name, ax in figures.items():
        ax.figure.canvas.draw()
        legend = ax.get_legend().get_window_extent()
        for artist in [*ax.patches, *ax.lines]:
            box = artist.get_window_extent()
            assert not _overlaps(legend, box), name
        assert legend.x0 >= ax.get_window_extent().x1 - 1, name  # beside the plot, not over it


def test_report_data_option_and_inputs_it_cannot_use(results_dir, processed_small, raw_small, tmp_path):
    from typer.testing import CliRunner

    from spared.cli import app

    runner = CliRunner()
    other = tmp_path / "lab_b" / "simulated.h5ad"
    write_h5ad(processed_small[:, :20].copy(), other)
    out = tmp_path / "out"
    out.mkdir()
    result = runner.invoke(app, ["report", str(results_dir), "-o", str(out), "--data", str(other), "--data",
                                 str(results_dir / "simulated.h5ad")])
    assert result.exit_code == 0, result.output
    page = (out / "report.html").read_text()  # -o FOLDER writes FOLDER/report.html
    rows = pd.read_html(io.StringIO(page), match="Genes kept")[0]
    assert len(rows) == 2 and sorted(rows["Genes kept"]) == [20, 32] and rows["Dataset"].nunique() == 2
    raw = tmp_path / "raw.h5ad"
    raw_small.write_h5ad(raw)
    refused = runner.invoke(app, ["report", str(results_dir), "-o", str(tmp_path / "r.html"), "--data", str(raw)])
    assert refused.exit_code == 1 and "raw.h5ad" in refused.output and "not a processed" in refused.output
    assert "Traceback" not in refused.output
    # raw and broken files found in the results folder are skipped, named, and the report is still written
    folder = tmp_path / "mixed"
    folder.mkdir()
    write_h5ad(processed_small, folder / "good.h5ad")
    raw_small.write_h5ad(folder / "raw.h5ad")
    (folder / "broken.h5ad").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)
    mixed = runner.invoke(app, ["report", str(folder)])
    assert mixed.exit_code == 0, mixed.output
    said = " ".join(mixed.output.split())
    assert "raw.h5ad" in said and "broken.h5ad" in said and "warning" in said
    page = (folder / "report.html").read_text()
    assert "Not summarised" in page and "good" in page


def test_report_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_report(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    page = build_report(empty).read_text()
    assert "No benchmark runs" in page and "No completion evaluation" in page
    blocker = tmp_path / "file"
    blocker.write_text("x")
    from spared.io.atomic import OutputPathError

    with pytest.raises(OutputPathError, match="is a file"):
        build_report(empty, blocker / "report.html")


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


def test_report_renders_in_headless_chromium_without_console_errors(report, tmp_path):
    chromium = _chromium()
    page = Path(shutil.copy(report, tmp_path / "report.html"))
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


#: Appended to a copy of the report (the report itself has no script): writes what overflows into the title.
_MEASURE = """<script>
const root = document.documentElement;
document.title = JSON.stringify({page: Math.max(0, root.scrollWidth - root.clientWidth),
  tables: [...document.querySelectorAll('table')].filter(t => t.getBoundingClientRect().right > root.clientWidth)
    .length});
</script>"""


@pytest.mark.parametrize("width", [1200, 900])
def test_report_tables_fit_the_page(report, tmp_path, width):
    import json

    chromium = _chromium()
    page = report.read_text()
    measured = tmp_path / "measured.html"
    measured.write_text(page.replace("</body>", _MEASURE + "</body>"))
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
           "--disable-background-networking", "--disable-component-update", f"--user-data-dir={tmp_path / 'p'}",
           f"--window-size={width},1000", "--dump-dom", measured.as_uri()]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    title = re.search(r"<title>(.*?)</title>", result.stdout).group(1)
    overflow = json.loads(html_unescape(title))
    assert overflow == {"page": 0, "tables": 0}, overflow


def html_unescape(text: str) -> str:
    import html

    return html.unescape(text)

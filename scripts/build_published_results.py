"""Rebuild ``src/spared/bench/published/spared_webpage.csv``: the SpaRED authors' per-dataset benchmark results.

Input: the table behind the leaderboards of the authors' project page (one row per dataset, columns
``MSE_<model>`` and ``PCC_<model>``, ``-`` where a model was not run), e.g. ``../shared/reference/
spared_webpage_results.csv``, a copy of ``_site/HTML Generator/Datasets_all_data.csv`` of the page's repository.
Output: one row per dataset, model and metric, with the catalogue key, our model name, the value exactly as
published (text) and the page that shows it.

Usage::

    python scripts/build_published_results.py ../shared/reference/spared_webpage_results.csv
"""

from __future__ import annotations

import argparse
import csv
import html
import io
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "spared" / "bench" / "published" / "spared_webpage.csv"
PAGE = "https://bcv-uniandes.github.io/spared_webpage/"
#: The page's dataset abbreviations -> catalogue keys.
DATASETS = {
    "VMB": "vicari_mouse_brain", "MMBR": "mirzazadeh_mouse_brain", "MHPC": "mirzazadeh_human_prostate_cancer",
    "PMI": "parigi_mouse_intestine", "VLMB": "villacampa_mouse_brain", "MHSI": "mirzazadeh_human_small_intestine",
    "MHCP2": "mirzazadeh_human_colon_p2", "EHPCP2": "erickson_human_prostate_cancer_p2",
    "EHPCP1": "erickson_human_prostate_cancer_p1", "MMBP2": "mirzazadeh_mouse_brain_p2",
    "MMBP1": "mirzazadeh_mouse_brain_p1", "AHSCC": "abalo_human_squamous_cell_carcinoma",
    "10XGHB": "10xgenomic_human_brain", "FMBC": "fan_mouse_brain_coronal", "10XGHBC": "10xgenomic_human_breast_cancer",
    "MMBO": "mirzazadeh_mouse_bone", "10XGMBSP": "10xgenomic_mouse_brain_sagittal_posterior",
    "MHPBTP1": "mirzazadeh_human_pediatric_brain_tumor_p1", "10XGMBC": "10xgenomic_mouse_brain_coronal",
    "10XGMBSA": "10xgenomic_mouse_brain_sagittal_anterior", "FMOB": "fan_mouse_olfatory_bulb",
    "VLO": "villacampa_lung_organoid", "VKO": "villacampa_kidney_organoid", "VHS": "vicari_human_striatium",
    "MHPBTP2": "mirzazadeh_human_pediatric_brain_tumor_p2", "MHCP1": "mirzazadeh_human_colon_p1",
}
#: The page's model column names -> model names of :mod:`spared.models`.
MODELS = {"ShuffleNet": "shufflenet", "STNet": "stnet", "EGN": "egn", "EGGN": "eggn", "HisToGene": "histogene",
          "ViT-B": "vit_b", "ViT-B+Δ": "vit_b_delta", "SEPAL": "sepal", "BLEEP": "bleep", "Hist2ST": "hist2st"}
METRICS = {"MSE": "MSE", "PCC": "PCC-Gene"}


def build(source: Path) -> str:
    """The package CSV's text from the page's table."""
    rows = list(csv.DictReader(source.open(encoding="utf-8")))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["dataset", "abbreviation", "model", "metric", "value", "source"])
    for row in rows:
        abbr = row["abbr"]
        if abbr not in DATASETS:
            raise ValueError(f"{source}: dataset abbreviation {abbr!r} is not mapped to a catalogue key")
        for column, text in row.items():
            prefix, _, model = html.unescape(column).partition("_")
            if prefix not in METRICS or text.strip() in ("", "-"):
                continue
            float(text)  # a value that is not a number stops the build
            writer.writerow([DATASETS[abbr], abbr, MODELS[model], METRICS[prefix], text.strip(),
                             f"{PAGE}Datasets_Pages/{abbr}/dataset_{abbr}.html#Leaderboards"])
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="the page's results table (CSV)")
    args = parser.parse_args()
    text = build(args.source)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT} ({text.count(chr(10)) - 1} values)")


if __name__ == "__main__":
    main()

"""SpaCKLE on one slide against SpaCKLE trained on the whole collection, on the same hidden entries.

For each slide of a processed collection (default: the shared lung organoid, built from ``$SPARED_REALDATA`` by
``organoids.py``):

1. **One slide alone**: the slide cut out of the collection with its split set to ``train`` (a user's single
   sample: no val/test slide), scored as ``spared evaluate-completion`` scores it
   (:func:`spared.impute.evaluate.evaluate`, 10 % of its real entries hidden, ``--seeds``). SpaCKLE trains on
   the slide alone and selects its weights on held-out blocks of its spots; the baselines are the median
   filter, the gene mean and the k-NN mean.
2. **The whole collection**: the same entries hidden in the full collection, SpaCKLE trained on every slide
   (weights selected on the val split, as usual) and scored on the same entries of that slide.

Prints one row per slide and seed and the means, and with ``--json`` the records.

Usage::

    python benchmarks/bench_single_slide.py [COLLECTION.h5ad] [--slides A1 B1] [--seeds 0 1 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
LAYER = "c_d_log1p"


def single_slide(adata, slide: str):
    """``slide`` of ``adata`` as a single sample: its spots only, split ``train``."""
    one = adata[(adata.obs["slide_id"].astype(str) == slide).to_numpy()].copy()
    one.obs["split"] = "train"
    return one


def whole_collection_mse(adata, slide: str, hidden_on_slide: np.ndarray, seed: int) -> tuple[float, float]:
    """SpaCKLE trained on the whole collection with ``hidden_on_slide`` hidden: its masked MSE on those entries,
    and the training seconds."""
    from spared.data_model import dense
    from spared.impute.baselines import SpackleMethod
    from spared.impute.evaluate import PREDICTION_KEY, hidden_view
    from spared.impute.spackle import SpackleConfig
    from spared.metrics import compute

    rows = np.flatnonzero((adata.obs["slide_id"].astype(str) == slide).to_numpy())
    hidden = np.zeros(adata.shape, dtype=bool)
    hidden[rows] = hidden_on_slide
    real = dense(adata.layers["mask"]).astype(bool)
    data = hidden_view(adata, LAYER, real & ~hidden)
    start = time.perf_counter()
    method = SpackleMethod(SpackleConfig(seed=seed)).fit(data, LAYER)
    method.complete(data, LAYER, PREDICTION_KEY)
    seconds = time.perf_counter() - start
    scores = compute(dense(adata.layers[LAYER]), dense(data.layers[PREDICTION_KEY]), hidden)
    return float(scores["MSE"]), seconds


def run(path: Path, slides: list[str] | None, seeds: list[int]) -> pd.DataFrame:
    import anndata as ad

    from spared.impute.evaluate import evaluate, hide_values
    from spared.impute.spackle import SpackleConfig

    adata = ad.read_h5ad(path)
    records = []
    for slide in slides or sorted(adata.obs["slide_id"].astype(str).unique()):
        one = single_slide(adata, slide)
        for seed in seeds:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                table = evaluate(one, mask_fraction=0.1, seed=seed, layer=LAYER,
                                 spackle_config=SpackleConfig(seed=seed)).set_index("method")
                hidden = hide_values(one, 0.1, seed)
            blocks = [str(w.message) for w in caught if "blocks" in str(w.message)]
            whole, whole_s = whole_collection_mse(adata, slide, hidden, seed)
            records.append({"slide": slide, "seed": seed, "spots": one.n_obs, "hidden": int(hidden.sum()),
                            "spackle_one_slide": table.loc["spackle", "MSE"], "spackle_whole": whole,
                            "knn": table.loc["knn", "MSE"], "median": table.loc["median", "MSE"],
                            "mean": table.loc["mean", "MSE"], "noise_floor": table.loc["spackle", "noise_floor"],
                            "seconds_one_slide": table.loc["spackle", "seconds"], "seconds_whole": whole_s,
                            "selection": blocks[0] if blocks else ""})
            print(json.dumps(records[-1]), file=sys.stderr, flush=True)
    return pd.DataFrame(records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("collection", nargs="?", type=Path, help="processed .h5ad (default: the lung organoid)")
    parser.add_argument("--slides", nargs="*", help="slides to cut out (default: every slide)")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--json", action="store_true", help="print the records as JSON")
    args = parser.parse_args()
    path = args.collection
    if path is None:
        sys.path.insert(0, str(HERE))
        from organoids import organoid_h5ad

        path = organoid_h5ad("villacampa_lung_organoid")
    table = run(path, args.slides, args.seeds)
    if args.json:
        print(table.to_json(orient="records", indent=2))
        return
    shown = table.drop(columns="selection")
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    means = shown.drop(columns=["slide", "seed"]).mean()
    print(f"\nmean over {len(table)} slide x seed: SpaCKLE one slide {means['spackle_one_slide']:.4f}, whole "
          f"collection {means['spackle_whole']:.4f} ({means['spackle_one_slide'] / means['spackle_whole'] - 1:+.1%}); "
          f"k-NN {means['knn']:.4f}, median {means['median']:.4f}, gene mean {means['mean']:.4f}, floor "
          f"{means['noise_floor']:.4f}")


if __name__ == "__main__":
    main()

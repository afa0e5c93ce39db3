"""SpaCKLE speed and memory on CPU: training steps/s, completion throughput, peak memory versus spots.

Every measurement runs in its own subprocess so that its peak resident memory (``ru_maxrss``) is its own.
``peak RSS`` is that peak (imports of torch/lightning included); ``data MiB`` is the peak growth while
building the collection and ``work MiB`` the further growth while training or completing. Work memory must
grow linearly with spots (neighbourhood index ``n × (1 + k)``, layer ``n × G``; never ``n × n``).

Usage::

    python benchmarks/bench_spackle.py            # full sizes (20k train, 50k completion, 10k vs 40k)
    python benchmarks/bench_spackle.py --quick    # small sizes, a smoke run
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

N_GENES = 128


def _rss_mib() -> float:
    """Peak RSS of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _collection(n_spots: int, n_genes: int, seed: int = 0):
    """A processed-looking collection: 4 square-grid slides, smooth log expression, 30% missing."""
    import anndata as ad
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    n_slides = 4
    per = n_spots // n_slides
    side = int(np.ceil(np.sqrt(per)))
    grid = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2)[:per].astype(float)
    coords = np.vstack([grid] * n_slides)
    slides = np.repeat([f"slide{s}" for s in range(n_slides)], per)
    split = np.repeat(["train", "train", "val", "test"], per)
    freq = rng.uniform(0.05, 0.3, (n_genes, 2))
    values = (6 + 2 * np.sin(coords @ freq.T + rng.uniform(0, 6.3, n_genes))).astype(np.float32)
    adata = ad.AnnData(obs=pd.DataFrame({"slide_id": slides, "split": split},
                                        index=[f"s{i}" for i in range(len(coords))]),
                       var=pd.DataFrame(index=[f"g{g}" for g in range(n_genes)]))
    adata.layers["c_d_log1p"] = values
    adata.layers["mask"] = rng.random(values.shape) > 0.3
    adata.obsm["spatial"] = coords
    return adata


def _worker(task: str, n_spots: int, steps: int) -> dict:
    """Run one measurement in this process and return its numbers."""
    import lightning  # noqa: F401  (imported before the baseline so that only the work is measured)
    import torch

    from spared.impute import spackle
    from spared.impute.spackle import completion, train  # noqa: F401

    base = _rss_mib()
    adata = _collection(n_spots, N_GENES)
    after_data = _rss_mib()
    config = spackle.SpackleConfig(max_steps=max(steps, 1), val_every=max(steps, 1), val_max_spots=256,
                                   progress=False, accelerator="cpu")
    out = {"task": task, "spots": n_spots, "genes": N_GENES}
    if task == "train":
        # one short warm-up fit (library initialisation), then the timed one
        spackle.fit(adata, config=config.replace(max_steps=2, val_every=2))
        start = time.perf_counter()
        model = spackle.fit(adata, config=config)
        seconds = time.perf_counter() - start
        out.update(steps=steps, seconds=seconds, steps_per_s=steps / seconds)
    else:
        model = spackle.fit(adata, config=config.replace(max_steps=1, val_every=1))
        start = time.perf_counter()
        spackle.complete(adata, model, batch_size=1024, device="cpu")
        seconds = time.perf_counter() - start
        out.update(seconds=seconds, spots_per_s=n_spots / seconds)
    out.update(data_mib=after_data - base, work_mib=_rss_mib() - after_data, peak_mib=_rss_mib(),
               threads=torch.get_num_threads())
    return out


def _run(task: str, n_spots: int, steps: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", task, str(n_spots), str(steps)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"benchmark worker {task} {n_spots} failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        task, n_spots, steps = args.worker
        print(json.dumps(_worker(task, int(n_spots), int(steps))))
        return
    scale = 10 if args.quick else 1
    runs = [("train", 20_000 // scale, args.steps), ("complete", 50_000 // scale, 0),
            ("train", 10_000 // scale, 5), ("train", 40_000 // scale, 5),
            ("complete", 10_000 // scale, 0), ("complete", 40_000 // scale, 0)]
    rows = [_run(*r) for r in runs]
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"SpaCKLE on CPU ({N_GENES} genes, k=18, batch 256, {rows[0]['threads']} threads)")
    for col in ("task", "spots", "steps/s", "spots/s", "seconds", "data MiB", "work MiB", "peak RSS MiB"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["task"], f"{r['spots']:,}", f"{r['steps_per_s']:.2f}" if "steps_per_s" in r else "",
                      f"{r['spots_per_s']:,.0f}" if "spots_per_s" in r else "", f"{r['seconds']:.1f}",
                      f"{r['data_mib']:.0f}", f"{r['work_mib']:.0f}", f"{r['peak_mib']:.0f}")
    Console().print(table)
    for task in ("train", "complete"):
        small, big = (next(r for r in rows[2:] if r["task"] == task and r["spots"] == n)
                      for n in (10_000 // scale, 40_000 // scale))
        ratio = (big["data_mib"] + big["work_mib"]) / max(small["data_mib"] + small["work_mib"], 1e-9)
        print(f"{task}: memory above imports at 4x the spots = {ratio:.2f}x (linear growth gives <= 4x)")


if __name__ == "__main__":
    main()

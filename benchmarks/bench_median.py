"""Time ``spared.impute.median.adaptive_median`` against a naive per-gene, per-spot implementation.

The naive version follows the original library's approach (Python loops over genes and spots, one
``np.median`` call per window on a pandas-indexed matrix); it runs on a subset of genes and its time is
extrapolated linearly to all genes, which the table states. Both results must agree bit for bit on the
subset.

    python benchmarks/bench_median.py [--spots 4000] [--genes 1024] [--naive-genes 16] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd
import scipy.sparse as sp

from spared.graph import knn_indices
from spared.impute.median import adaptive_median, hop_ordered_neighbourhoods


def hex_lattice(n_spots: int, n_slides: int) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates and slide labels of ``n_slides`` near-square hexagonal (Visium-like) lattices."""
    per_slide = -(-n_spots // n_slides)
    side = int(np.ceil(np.sqrt(per_slide)))
    r, c = np.divmod(np.arange(per_slide), side)
    one = np.column_stack([2.0 * c + (r % 2), np.sqrt(3.0) * r])
    coords = np.vstack([one] * n_slides)[:n_spots]
    slides = np.repeat(np.arange(n_slides), per_slide)[:n_spots]
    return coords, slides


def naive_adaptive_median(values: np.ndarray, windows: list[list[np.ndarray]], slides: np.ndarray,
                          genes: np.ndarray) -> np.ndarray:
    """Per slide, per gene, per zero spot: one ``np.median`` per window (the original's style)."""
    frame = pd.DataFrame(values[:, genes])
    out = frame.copy()
    for slide in np.unique(slides):
        members = np.flatnonzero(slides == slide)
        for g in frame.columns:
            column = frame[g]
            nonzero = column.iloc[members][column.iloc[members] != 0]
            fallback = np.median(nonzero.to_numpy()) if len(nonzero) else 0
            for i in members:
                if column.iloc[i] != 0:
                    continue
                for window in windows[i]:
                    med = np.median(column.iloc[window].to_numpy())
                    if med != 0:
                        out.iloc[i, g] = med
                        break
                else:
                    out.iloc[i, g] = fallback
    return out.to_numpy()


def timed(fn) -> tuple[float, float, object]:
    """Wall-clock and CPU seconds of one call (CPU time is robust to other load on a shared machine)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def best_of(fn, repeats: int) -> tuple[float, float]:
    runs = [timed(fn)[:2] for _ in range(repeats)]
    return min(r[0] for r in runs), min(r[1] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spots", type=int, default=4000)
    parser.add_argument("--genes", type=int, default=1024)
    parser.add_argument("--slides", type=int, default=2)
    parser.add_argument("--zero-frac", type=float, default=0.5)
    parser.add_argument("--max-hops", type=int, default=4)
    parser.add_argument("--naive-genes", type=int, default=16, help="genes timed with the naive version")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    coords, slides = hex_lattice(args.spots, args.slides)
    values = rng.lognormal(0.0, 1.0, size=(args.spots, args.genes)).astype(np.float32)
    values[rng.random(values.shape) < args.zero_frac] = 0

    nn = knn_indices(coords, slides, 6)
    rows = np.repeat(np.arange(args.spots), 6)
    adjacency = sp.csr_matrix((np.ones(rows.size, dtype=np.float32), (rows, nn.ravel())),
                              shape=(args.spots, args.spots))

    adaptive_median(values[:50], adjacency[:50, :50], slides[:50], args.max_hops)  # compile / load cache
    fast = adaptive_median(values, adjacency, slides, args.max_hops)
    wall_fast, cpu_fast = best_of(lambda: adaptive_median(values, adjacency, slides, args.max_hops),
                                  args.repeats)

    indptr, indices, hop_end = hop_ordered_neighbourhoods(adjacency, args.max_hops)
    windows = [[indices[indptr[i]:hop_end[i, h]] for h in range(args.max_hops)] for i in range(args.spots)]
    subset = np.arange(min(args.naive_genes, args.genes))
    wall_sub, cpu_sub, naive = timed(lambda: naive_adaptive_median(values, windows, slides, subset))
    scale = args.genes / subset.size
    identical = np.array_equal(naive.astype(np.float32).view(np.uint32), fast[:, subset].view(np.uint32))

    print(f"adaptive median filter: {args.spots} spots x {args.genes} genes, {args.slides} slides, "
          f"{(values == 0).mean():.1%} zeros, {args.max_hops} hops")
    print(f"{'implementation':<36}{'wall s':>10}{'cpu s':>10}")
    print(f"{'spared (numba), best of ' + str(args.repeats):<36}{wall_fast:>10.3f}{cpu_fast:>10.3f}")
    print(f"{'naive loops, ' + str(subset.size) + ' genes measured':<36}{wall_sub:>10.2f}{cpu_sub:>10.2f}")
    print(f"{'naive loops, extrapolated x' + format(scale, 'g'):<36}{wall_sub * scale:>10.1f}"
          f"{cpu_sub * scale:>10.1f}")
    print(f"speed-up (cpu): {cpu_sub * scale / cpu_fast:,.0f}x   (wall: {wall_sub * scale / wall_fast:,.0f}x)   "
          f"identical on the measured genes: {identical}")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} (timings are single-threaded)")


if __name__ == "__main__":
    main()

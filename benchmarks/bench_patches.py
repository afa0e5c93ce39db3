"""Patch-extraction throughput (patches/s) and peak memory on a Visium-sized slide.

A tiled RGB TIFF (default 20,000 × 20,000 px, 1.2 GB uncompressed) is written tile by tile into a temporary
folder (never held whole in memory), then ``spared.io.patches.extract_patches`` cuts one patch per spot for a
hexagonal array of 10,000 spots. Peak RSS is measured in a fresh child process that does only the extraction.

    python benchmarks/bench_patches.py [--size 20000] [--spots 10000] [--diameter 160] [--patch-size 224]
                                       [--compression none|lzf|gzip] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TILE = 512


def write_tiff(path: Path, size: int, seed: int = 0) -> float:
    """Write a ``size`` × ``size`` tiled RGB TIFF of textured tiles; return the seconds it took."""
    import tifffile

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:TILE, :TILE]
    base = np.stack([200 - (xx % 97), 150 + (yy % 61), 190 - ((xx + yy) % 53)], axis=-1)
    variants = [np.clip(base + rng.integers(-40, 40, size=base.shape), 0, 255).astype(np.uint8) for _ in range(8)]
    n_tiles = (-(-size // TILE)) ** 2
    start = time.perf_counter()
    tifffile.imwrite(path, (variants[k % len(variants)] for k in range(n_tiles)), shape=(size, size, 3),
                     dtype=np.uint8, photometric="rgb", tile=(TILE, TILE), bigtiff=True)
    return time.perf_counter() - start


def hex_spots(n: int, size: int, diameter: float) -> np.ndarray:
    """``n`` spot centres on a hexagonal array filling the image (full-resolution x, y)."""
    side = int(np.ceil(np.sqrt(n)))
    pitch = (size - 2 * diameter) / side
    r, c = np.divmod(np.arange(n), side)
    return np.column_stack([diameter + (c + 0.5 * (r % 2)) * pitch, diameter + r * pitch])


def extract(tiff: Path, out: Path, spots: int, diameter: float, patch_size: int, compression: str | None) -> dict:
    """Run the extraction in this process and return timings and peak RSS."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    from spared.io.patches import PatchStore, extract_patches

    size = int(json.loads(tiff.with_suffix(".json").read_text())["size"])
    xy = hex_spots(spots, size, diameter)
    obs = pd.DataFrame({"slide_id": "bench"}, index=[f"bench_{i}" for i in range(spots)])
    adata = ad.AnnData(X=sp.csr_matrix((spots, 1), dtype=np.float32), obs=obs)
    adata.obsm["spatial"] = xy
    adata.uns["spatial"] = {"bench": {"scalefactors": {"spot_diameter_fullres": diameter}, "images": {},
                                      "fullres_path": str(tiff)}}
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    extract_patches(adata, out, patch_size=patch_size, progress=False, compression=compression)
    seconds = time.perf_counter() - start
    store = PatchStore(out)
    start = time.perf_counter()
    order = np.random.default_rng(0).permutation(spots)[:1000]
    for i in order:
        store[int(i)]
    read_s = time.perf_counter() - start
    return {"seconds": seconds, "patches_per_s": spots / seconds, "rss_before_mib": rss_before,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "store_mib": out.stat().st_size / 2**20, "random_reads_per_s": order.size / read_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20_000, help="image side in pixels")
    parser.add_argument("--spots", type=int, default=10_000)
    parser.add_argument("--diameter", type=float, default=160.0, help="spot_diameter_fullres in pixels")
    parser.add_argument("--patch-size", type=int, default=224)
    parser.add_argument("--compression", default="none", choices=["lzf", "gzip", "none"])
    parser.add_argument("--keep", type=Path, default=None, help="reuse/keep the TIFF in this folder")
    parser.add_argument("--child", nargs=2, metavar=("TIFF", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    compression = None if args.compression == "none" else args.compression
    if args.child:
        result = extract(Path(args.child[0]), Path(args.child[1]), args.spots, args.diameter, args.patch_size,
                         compression)
        print(json.dumps(result))
        return

    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="spared-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    tiff = folder / f"slide_{args.size}.tif"
    try:
        free = shutil.disk_usage(folder).free
        needed = args.size**2 * 3 + args.spots * args.patch_size**2 * 3
        if free < needed * 1.2:
            sys.exit(f"needs about {needed / 2**30:.1f} GiB free in {folder}, found {free / 2**30:.1f} GiB")
        gen_s = 0.0
        if not tiff.is_file():
            gen_s = write_tiff(tiff, args.size)
            tiff.with_suffix(".json").write_text(json.dumps({"size": args.size}))
        cmd = [sys.executable, __file__, "--child", str(tiff), str(folder / "patches.h5"), "--spots", str(args.spots),
               "--diameter", str(args.diameter), "--patch-size", str(args.patch_size),
               "--compression", args.compression]
        result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        print(f"patch extraction: {args.spots} spots, {args.size}×{args.size} px tiled TIFF "
              f"({args.size**2 * 3 / 2**30:.2f} GiB uncompressed; written in {gen_s:.1f} s), window "
              f"{args.diameter:g} px → {args.patch_size} px, compression {args.compression}")
        print(f"  extraction      {result['seconds']:8.1f} s   {result['patches_per_s']:8.0f} patches/s")
        print(f"  peak RSS        {result['peak_rss_mib']:8.0f} MiB (interpreter + imports: "
              f"{result['rss_before_mib']:.0f} MiB)")
        print(f"  patch store     {result['store_mib']:8.0f} MiB")
        print(f"  random reads    {result['random_reads_per_s']:8.0f} patches/s (one at a time)")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

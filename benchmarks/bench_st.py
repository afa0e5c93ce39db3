"""Legacy-ST reading: a ~90-megapixel H&E JPEG decoded whole (time and peak RSS, spared vs PIL's usual
``np.asarray(Image.open(p).convert("RGB"))``), a 15,000-gene count table (spared vs pandas) and, with real data,
every her2st section through the ST reader.

Each image decode runs in a fresh child process so that its peak RSS is its own. Without ``$SPARED_REALDATA``
a 9,300 × 9,900 textured JPEG and a 350 × 15,000 count table are written to a temporary folder instead.

    python benchmarks/bench_st.py [--repeats 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _decode(path: str, how: str) -> dict:
    """Decode ``path`` in this process; seconds and peak RSS above the baseline after imports."""
    import simplejpeg  # noqa: F401  (imported before the baseline, as PIL is)
    from PIL import Image

    from spared.io.readers.images import read_image

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if how == "spared":
        array = read_image(path)
    else:
        Image.MAX_IMAGE_PIXELS = None
        with Image.open(path) as im:
            array = np.asarray(im.convert("RGB"))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline
    return {"seconds": seconds, "peak_mb": peak / 1024, "array_mb": array.nbytes / 2**20, "shape": array.shape}


def decode_in_child(path: Path, how: str) -> dict:
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_st; "
            f"print(json.dumps(bench_st._decode({str(path)!r}, {how!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def synthetic_inputs(folder: Path) -> tuple[Path, Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:9900, :9300]
    image = np.stack([(200 - xx % 97), (150 + yy % 61), (190 - (xx + yy) % 53)], axis=-1).astype(np.uint8)
    image[::7] = rng.integers(0, 255, image[::7].shape, dtype=np.uint8)
    jpeg = folder / "he.jpg"
    Image.fromarray(image).save(jpeg, quality=90)
    counts = rng.negative_binomial(1, 0.6, (350, 15000))
    table = folder / "counts.tsv.gz"
    with gzip.open(table, "wt") as fh:
        fh.write("\t" + "\t".join(f"G{j}" for j in range(counts.shape[1])) + "\n")
        for i, row in enumerate(counts):
            fh.write(f"{i % 30}x{i // 30}\t" + "\t".join(map(str, row)) + "\n")
    return jpeg, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=Path, default=None, help="Folder for the synthetic inputs (kept).")
    args = parser.parse_args()
    real = Path(os.environ.get("SPARED_REALDATA", "")) / "her2st"
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        if real.is_dir():
            jpeg, table = real / "ST-imgs" / "B" / "B4" / "BT10737_D2_HE.jpg", real / "ST-cnts" / "A1.tsv.gz"
        else:
            jpeg, table = synthetic_inputs(folder)
        print(f"image {jpeg} ({jpeg.stat().st_size / 2**20:.1f} MB on disk)")
        for how in ("pil", "spared"):
            runs = [decode_in_child(jpeg, how) for _ in range(args.repeats)]
            best = min(runs, key=lambda r: r["seconds"])
            print(f"  decode {how:6s}: {best['seconds']:.2f} s (best of {args.repeats}), peak "
                  f"{max(r['peak_mb'] for r in runs):.0f} MB for a {best['array_mb']:.0f} MB array {best['shape']}")

        import pandas as pd

        from spared.io.readers.st import read_count_table

        read_count_table(table)
        ours = min(_timed(lambda: read_count_table(table)) for _ in range(args.repeats))
        theirs = min(_timed(lambda: pd.read_csv(table, sep="\t", index_col=0)) for _ in range(args.repeats))
        print(f"count table {table.name}: spared {ours:.2f} s, pandas read_csv {theirs:.2f} s "
              f"({theirs / ours:.1f}x)")
        if real.is_dir():
            her2st_sections(real)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def her2st_sections(root: Path) -> None:
    """Every her2st section through the ST reader (no image), one at a time: spots and genes per section."""
    from spared.io.readers.common import SlideInfo
    from spared.io.readers.st import STFiles, read_st_slide

    rows = []
    start = time.perf_counter()
    for counts in sorted((root / "ST-cnts").glob("*.tsv.gz")):
        section = counts.name.split(".")[0]
        files = STFiles(counts, root / "ST-spotfiles" / f"{section}_selection.tsv", None)
        report = read_st_slide(files, SlideInfo(section, section[0]), "human").uns["spared"]["reader"]
        rows.append({k: report.get(k) for k in ("n_spots_selected", "n_spots", "n_genes_read", "n_genes_unmapped",
                                                 "n_genes_ambiguous")} | {"section": section})
    seconds = time.perf_counter() - start
    import pandas as pd

    frame = pd.DataFrame(rows).set_index("section")
    print(f"her2st: {len(frame)} sections read in {seconds:.1f} s; spots {int(frame['n_spots'].sum())} "
          f"(per section {int(frame['n_spots'].min())}–{int(frame['n_spots'].max())}); genes read "
          f"{int(frame['n_genes_read'].min())}–{int(frame['n_genes_read'].max())}, unmapped "
          f"{int(frame['n_genes_unmapped'].min())}–{int(frame['n_genes_unmapped'].max())}")


if __name__ == "__main__":
    main()

"""Time what a user waits for before any work starts: ``import spared`` and the first gene-table lookup.

Targets (checked here, never in unit tests): ``import spared`` under 1 s without loading torch; the shipped
human gene table loaded in under 0.5 s from a cold cache. Each figure is the median of fresh subprocesses.

    python benchmarks/bench_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

IMPORT = ("import time, sys; t = time.perf_counter(); import spared; "
          "print(time.perf_counter() - t, 'torch' in sys.modules)")
GENE_TABLE = ("import time; import spared.annotation as a; t = time.perf_counter(); a.gene_table('human'); "
              "print(time.perf_counter() - t)")
TARGETS = {"import spared": 1.0, "gene_table('human'), cold": 0.5}


def timed(code: str, repeats: int) -> tuple[float, list[str]]:
    """Median seconds printed first by ``code`` over ``repeats`` fresh interpreters, and the last run's output."""
    times, words = [], []
    for _ in range(repeats):
        words = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               check=True).stdout.split()
        times.append(float(words[0]))
    return statistics.median(times), words


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import_s, words = timed(IMPORT, args.repeats)
    table_s, _ = timed(GENE_TABLE, args.repeats)
    failed = 0
    print(f"{'step':<28}{'median s':>10}{'target s':>10}")
    for step, seconds in (("import spared", import_s), ("gene_table('human'), cold", table_s)):
        ok = seconds < TARGETS[step]
        failed += not ok
        print(f"{step:<28}{seconds:>10.3f}{TARGETS[step]:>10.1f}{'' if ok else '  MISSED'}")
    if words[1] != "False":
        print("import spared loaded torch")
        failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

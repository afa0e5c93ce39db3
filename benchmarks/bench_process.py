"""Time and peak memory of ``spared.pp.process`` on a simulated collection (issue target: 4 slides ×
4,000 spots × 2,000 genes in ≤ 60 s and ≤ 4 GiB peak).

Run: ``.venv/bin/python benchmarks/bench_process.py [--slides 4 --spots 4000 --genes 2000]``.
Peak memory is the process's maximum resident set size (``ru_maxrss``), measured in a fresh subprocess
so that simulation and processing are reported separately.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
from spared.config import ProcessingConfig
from spared.pp import process, step_table
from spared.synthetic import make_collection
args = json.loads(sys.argv[1])
t0 = time.perf_counter()
raw = make_collection(n_slides=args["slides"], n_spots=args["spots"], n_genes=args["genes"], seed=0)
t1 = time.perf_counter()
rss_sim = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
out = process(raw, ProcessingConfig(complete_missing=False), progress=False, copy=True)
t2 = time.perf_counter()
steps = step_table(out)
print(json.dumps({"simulate_s": t1 - t0, "process_s": t2 - t1, "rss_after_simulate_gib": rss_sim,
                  "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                  "spots": out.n_obs, "genes": out.n_vars,
                  "steps": dict(zip(steps["step"], steps["seconds"].round(3)))}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=4)
    parser.add_argument("--spots", type=int, default=4000)
    parser.add_argument("--genes", type=int, default=2000)
    args = parser.parse_args()
    result = subprocess.run([sys.executable, "-c", CHILD, json.dumps(vars(args))], capture_output=True, text=True,
                            check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"collection: {args.slides} slides × {args.spots} spots × {args.genes} genes")
    print(f"simulate: {report['simulate_s']:.1f} s   process: {report['process_s']:.1f} s (target ≤ 60 s)")
    print(f"peak RSS: {report['peak_rss_gib']:.2f} GiB (after simulation alone: "
          f"{report['rss_after_simulate_gib']:.2f} GiB; target ≤ 4 GiB)")
    print(f"result: {report['spots']} spots × {report['genes']} genes")
    for step, seconds in report["steps"].items():
        print(f"  {step:<24s} {seconds:8.3f} s")


if __name__ == "__main__":
    main()

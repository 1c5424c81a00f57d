"""Round 0 on the demo corpora: samples/s per stage, wall time and peak RSS, as one JSON line.

    python bench/round0.py --n 5000
    python bench/round0.py --n 20000      # RSS must not grow with n

The demo corpora are written by a separate process (not measured); the build runs in this process, its image
work on the engine's process pool. Peak RSS is reported for this process and for the largest worker.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--keep", type=Path, default=None, help="build here instead of a temp dir (kept)")
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory() if args.keep is None else None
    ws = (Path(tmp.name) if tmp else args.keep) / "ws"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fea20k", "demo", str(ws), "--n", str(args.n)], check=True,
                   capture_output=True)
    demo_s = time.perf_counter() - t0

    from fea20k.engine import build_round

    t1 = time.perf_counter()
    result = build_round(ws, 0, quiet=True, workers=args.workers)
    wall = time.perf_counter() - t1
    t2 = time.perf_counter()
    again = build_round(ws, 0, quiet=True, workers=args.workers)
    rerun = time.perf_counter() - t2

    stages = {}
    for s in result.stages:
        n = max(s.stats.n_in, s.stats.n_out)
        stages[s.key] = {"rows": n, "seconds": round(s.seconds, 3),
                         "samples_per_s": round(n / s.seconds, 1) if s.seconds else None}
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child (demo writer, workers)
    print(json.dumps({
        "bench": "round0",
        "n": args.n,
        "demo_write_s": round(demo_s, 2),
        "build_wall_s": round(wall, 2),
        "samples_per_s": round(args.n / wall, 1),
        "stages": stages,
        "rerun_wall_s": round(rerun, 3),
        "rerun_ratio": round(rerun / wall, 4),
        "rerun_stages_ran": again.ran,
        "peak_rss_mb_main": round(self_kb / 1024, 1),
        "peak_rss_mb_largest_child": round(child_kb / 1024, 1),
    }))
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()

"""Round 0 on the demo corpora: samples/s per stage, wall time, peak RSS and workspace bytes, as one JSON line.

    python bench/round0.py --n 5000
    python bench/round0.py --n 20000      # RSS must not grow with n
    python bench/round0.py --n 5000 --baseline cee3f87   # the same bench on that commit and on this tree, in one run
    ARROW_DEFAULT_MEMORY_POOL=system python bench/round0.py --n 5000 --baseline cee3f87   # one allocator for both

Each tree's package is compiled to bytecode first (:func:`compile_package`). Each tree runs with the Arrow
allocator its ``fea20k`` command picks (env.prefer_system_allocator, when it has it);
``ARROW_DEFAULT_MEMORY_POOL`` set outside picks it for both.

After the build: ``publish_annotations_only_s`` and ``crop_copy_s`` (:func:`after_build`).

Bytes per sample: the workspace (``.fea20k`` and ``releases``), the aligned crops (the ``face`` bytes faces.align
wrote) and the release folder; ``bytes_ratio`` = workspace / (crops + release).

The demo corpora are written by a separate process (not measured); the build runs in this process, its image
work on the engine's process pool. Peak RSS is reported for this process and for the largest worker.
"""

from __future__ import annotations

import argparse
import json
import os
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
    ap.add_argument("--baseline", default=None, help="a git commit: run this bench on it and on this tree")
    args = ap.parse_args()
    if args.baseline:
        compare(args)
        return

    compile_package()
    try:  # as the tree's `fea20k` command does, before pyarrow is imported (a baseline may predate it)
        from fea20k.env import prefer_system_allocator
    except ImportError:
        pass
    else:
        prefer_system_allocator()
    tmp = tempfile.TemporaryDirectory() if args.keep is None else None
    ws = (Path(tmp.name) if tmp else args.keep) / "ws"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fea20k", "demo", str(ws), "--n", str(args.n)], check=True,
                   capture_output=True)
    demo_s = time.perf_counter() - t0

    from fea20k.engine import build_round

    t1 = time.perf_counter()
    result = build_round(ws, 0, workers=args.workers)
    wall = time.perf_counter() - t1
    t2 = time.perf_counter()
    again = build_round(ws, 0, workers=args.workers)
    rerun = time.perf_counter() - t2
    extra = after_build(ws)

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
        **extra,
        **bytes_per_sample(ws, args.n),
    }))
    if tmp:
        tmp.cleanup()


def after_build(ws: Path) -> dict[str, float]:
    """Two figures that put publish's in perspective, measured after the build (the peak RSS above is the build's):

    * ``publish_annotations_only_s``: the round's release built again, annotations-only (what a release of real
      corpora is, their licences forbidding the faces), into a folder of its own;
    * ``crop_copy_s``: the least a release with the faces costs on this machine: faces.align's crops read and written
      into one Parquet file as the release stores them (plain, no statistics), nothing else (no routing, no other
      column, no card). The same code for both trees of a comparison.
    """
    import pyarrow.parquet as pq

    from fea20k.publish.local import build_release
    from fea20k.workspace import Workspace

    t0 = time.perf_counter()
    build_release(Workspace(ws), 0, out_dir=ws.parent / "annotations-only", include_images=False)
    annotations_only = time.perf_counter() - t0
    t1 = time.perf_counter()
    parts = sorted((ws / ".fea20k" / "rounds" / "0" / "faces.align").glob("part-*.parquet"))
    writer = None
    for part in parts:
        faces = pq.ParquetFile(part, memory_map=True).read(columns=["face"])
        if writer is None:
            writer = pq.ParquetWriter(ws.parent / "crops.parquet", faces.schema, compression="none",
                                      use_dictionary=False, write_statistics=False)
        writer.write_table(faces, row_group_size=faces.num_rows)
    if writer is not None:
        writer.close()
    return {"publish_annotations_only_s": round(annotations_only, 3),
            "crop_copy_s": round(time.perf_counter() - t1, 3)}


def compile_package() -> None:
    """Compile the measured tree's fea20k to bytecode first, as pip does when it installs a package. Without it, a
    machine that sets PYTHONDONTWRITEBYTECODE (this one does) compiles every module a stage imports from source, in
    every run, and the stages that import lazily pay it in their time."""
    import compileall

    import fea20k

    compileall.compile_dir(str(Path(fea20k.__file__).parent), quiet=1)


def tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def bytes_per_sample(ws: Path, n: int) -> dict[str, float]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    crops = sum(int(pc.sum(pc.binary_length(pq.read_table(p, columns=["face"]).column("face"))).as_py() or 0)
                for p in (ws / ".fea20k" / "rounds" / "0" / "faces.align").glob("part-*.parquet"))
    workspace = tree_bytes(ws / ".fea20k") + tree_bytes(ws / "releases")
    release = tree_bytes(ws / "releases" / "round-0")
    stages = {d.name: round(tree_bytes(d) / n, 1) for d in sorted((ws / ".fea20k" / "rounds" / "0").iterdir())
              if d.is_dir() and d.name != "ingest"}
    return {"workspace_bytes_per_sample": round(workspace / n, 1), "crop_bytes_per_sample": round(crops / n, 1),
            "release_bytes_per_sample": round(release / n, 1),
            "bytes_ratio": round(workspace / max(1, crops + release), 3), "stage_bytes_per_sample": stages}


def compare(args: argparse.Namespace) -> None:
    """This bench on ``args.baseline`` (a git worktree of it) and on this tree, one after the other, each in a fresh
    process; prints both and the ratios the issue tracks (after / before)."""
    here = Path(__file__).resolve().parents[1]
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(here), "worktree", "add", "--detach", str(base), args.baseline], check=True,
                       capture_output=True)
        try:
            for name, tree in (("before", base), ("after", here)):
                cmd = [sys.executable, str(Path(__file__).resolve()), "--n", str(args.n)]
                if args.workers:
                    cmd += ["--workers", str(args.workers)]
                env = {**os.environ, "PYTHONPATH": str(tree)}
                out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=tmp)
                runs[name] = json.loads(out.stdout.strip().splitlines()[-1])
        finally:
            subprocess.run(["git", "-C", str(here), "worktree", "remove", "--force", str(base)], check=False,
                           capture_output=True)
    before, after = runs["before"], runs["after"]
    speed = {k: round(after["stages"][k]["samples_per_s"] / before["stages"][k]["samples_per_s"], 2)
             for k in after["stages"] if k in before["stages"] and before["stages"][k]["samples_per_s"]
             and after["stages"][k]["samples_per_s"]}
    ann = {k: before[k] for k in ("publish_annotations_only_s",) if before.get(k) and after.get(k)}
    if ann:
        speed["publish (annotations-only, after the build)"] = round(
            before["publish_annotations_only_s"] / after["publish_annotations_only_s"], 2)
    print(json.dumps({"bench": "round0-compare", "n": args.n, "baseline": args.baseline, "before": before,
                      "after": after, "speedup_by_stage": speed,
                      "build_time_ratio": round(after["build_wall_s"] / before["build_wall_s"], 3),
                      "bytes_ratio_before": before["bytes_ratio"], "bytes_ratio_after": after["bytes_ratio"]}))


if __name__ == "__main__":
    main()

"""Benchmark: the faces.align stage against a raw OpenCV loop on the same inputs, 1 and 2 worker processes.

Inputs: ``--n`` JPEGs with 5 landmarks each, half 100x100 and half 640x480. The raw loop per image is
``cv2.imdecode -> cv2.estimateAffinePartial2D -> cv2.warpAffine -> cv2.imencode``; the stage runs
``Align.run_batch`` (its ``process()``, what the engine's chunk path calls) on chunks of records. Both run inline for
1 worker and on a process pool of the same chunks for 2 (pool start-up not timed). OpenCV uses one thread per process
in both, as the stage does in the engine's pool. Prints ONE JSON line.

    python bench/faces.py [--n 2000] [--chunk 100]

Targets (issue 4): stage >= 0.8x the raw loop; 2 workers >= 1.7x one worker.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from fea20k.faces.align import Align, template
from fea20k.record import FaceRecord, ImageRef
from fea20k.stage import StageContext
from fea20k.workspace import init_workspace


SIZE = 224


def make_inputs(root: Path, n: int) -> list[tuple[str, list[list[float]]]]:
    """``n`` JPEG files (half 100x100, half 640x480) and their 5 landmarks; 16 distinct pictures per size."""
    rng = np.random.default_rng(0)
    tpl = template(SIZE)
    variants: dict[tuple[int, int], list[tuple[bytes, np.ndarray]]] = {}
    for shape, scale in (((100, 100), 0.4), ((480, 640), 1.8)):
        out = []
        for _ in range(16):
            a = np.deg2rad(rng.uniform(-20, 20))
            s = scale * rng.uniform(0.9, 1.1)
            rot = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
            centre = np.array([shape[1] / 2, shape[0] / 2]) + rng.uniform(-5, 5, 2)
            pts = (tpl - SIZE / 2) @ rot.T + centre
            small = rng.integers(0, 256, (shape[0] // 8, shape[1] // 8, 3), dtype=np.uint8)
            img = cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
            for p in pts:
                cv2.circle(img, (int(p[0]), int(p[1])), max(2, int(4 * scale)), (0, 0, 255), -1)
            out.append((cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes(), pts))
        variants[shape] = out
    items = []
    for i in range(n):
        shape = (100, 100) if i % 2 == 0 else (480, 640)
        data, pts = variants[shape][i % 16]
        name = f"img{i:05d}.jpg"
        (root / name).write_bytes(data)
        items.append((name, pts.tolist()))
    return items


# ---------------------------------------------------------------------------------------------- the two workloads

_STAGE: Align | None = None


def _init_worker(ws: str, cfg: dict) -> None:
    global _STAGE
    cv2.setNumThreads(1)
    _STAGE = Align(cfg, StageContext(workspace_root=Path(ws), round=0, stage_key="faces.align"))
    _STAGE.load()


def stage_chunk(recs: list[FaceRecord]) -> int:
    assert _STAGE is not None
    out = _STAGE.run_batch(recs)
    assert not any(r.excluded for r in out)
    return sum(len(r.face or b"") for r in out)


def raw_chunk(args: tuple[str, list[tuple[str, list[list[float]]]]]) -> int:
    root, items = args
    dst = template(SIZE).astype(np.float32)
    total = 0
    for name, pts in items:
        data = (Path(root) / name).read_bytes()
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        m, _ = cv2.estimateAffinePartial2D(np.asarray(pts, np.float32), dst)
        crop = cv2.warpAffine(img, m, (SIZE, SIZE), flags=cv2.INTER_LINEAR)
        ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 95])
        total += len(buf)
    return total


def _timed(workers: int, fn, chunks: list, ws: str, cfg: dict) -> tuple[float, float | None]:
    """(wall seconds, CPU seconds of this process or None for a pool): CPU time is robust to a busy machine."""
    if workers == 1:
        _init_worker(ws, cfg)
        t0, c0 = time.perf_counter(), time.process_time()
        for c in chunks:
            fn(c)
        return time.perf_counter() - t0, time.process_time() - c0
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("forkserver"), initializer=_init_worker,
                             initargs=(ws, cfg)) as pool:
        list(pool.map(_noop, range(workers * 4)))  # start the workers before timing
        t0 = time.perf_counter()
        list(pool.map(fn, chunks))
        return time.perf_counter() - t0, None


def _noop(i: int) -> int:
    time.sleep(0.05)
    return i


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--chunk", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3, help="best of N timings per configuration")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory(prefix="fea20k-bench-faces-") as tmp:
        ws = init_workspace(Path(tmp) / "ws")
        root = ws / "corpora" / "bench"
        root.mkdir(parents=True)
        (ws / "fea20k.toml").write_text('[sources.bench]\nadapter = "none"\nroot = "corpora/bench"\n')
        items = make_inputs(root, args.n)
        recs = [FaceRecord(id=f"bench/{name[:-4]}", source="bench", image=ImageRef("bench", name),
                           landmarks=pts, landmark_scheme="raf5") for name, pts in items]
        rec_chunks = [recs[i:i + args.chunk] for i in range(0, len(recs), args.chunk)]
        raw_chunks = [(str(root), items[i:i + args.chunk]) for i in range(0, len(items), args.chunk)]
        for c in raw_chunks:  # warm the page cache so the first timed configuration is not penalised
            raw_chunk(c)
        figures: dict[str, object] = {"bench": "faces.align", "n": args.n, "chunk": args.chunk,
                                      "inputs": "half 100x100, half 640x480 JPEG, 5 landmarks"}
        for workers in (1, 2):
            row = {}
            for label, fn, chunks, cfg in (
                ("raw", raw_chunk, raw_chunks, {}),
                ("stage", stage_chunk, rec_chunks, {}),
                ("stage_full_decode", stage_chunk, rec_chunks, {"reduced_decode": False}),
            ):
                runs = [_timed(workers, fn, [_fresh(c) for c in chunks] if label != "raw" else chunks, str(ws), cfg)
                        for _ in range(args.repeat)]
                row[f"{label}_per_s"] = round(args.n / min(w for w, _ in runs), 1)
                if workers == 1:
                    row[f"{label}_per_cpu_s"] = round(args.n / min(c for _, c in runs if c is not None), 1)
            row["stage_vs_raw"] = round(row["stage_per_s"] / row["raw_per_s"], 3)
            row["stage_full_decode_vs_raw"] = round(row["stage_full_decode_per_s"] / row["raw_per_s"], 3)
            if workers == 1:
                row["stage_vs_raw_cpu"] = round(row["stage_per_cpu_s"] / row["raw_per_cpu_s"], 3)
                row["stage_full_decode_vs_raw_cpu"] = round(
                    row["stage_full_decode_per_cpu_s"] / row["raw_per_cpu_s"], 3)
            figures[f"workers_{workers}"] = row
        w1, w2 = figures["workers_1"], figures["workers_2"]
        figures["scaling_2v1_stage"] = round(w2["stage_per_s"] / w1["stage_per_s"], 3)  # type: ignore[index]
        figures["scaling_2v1_raw"] = round(w2["raw_per_s"] / w1["raw_per_s"], 3)  # type: ignore[index]
        figures["targets"] = {"stage_vs_raw": 0.8, "scaling_2v1": 1.7}
    print(json.dumps(figures))


def _fresh(chunk: list[FaceRecord]) -> list[FaceRecord]:
    """Copies without outputs, so every timing does the whole work."""
    return [FaceRecord(id=r.id, source=r.source, image=r.image, landmarks=r.landmarks,
                       landmark_scheme=r.landmark_scheme) for r in chunk]


if __name__ == "__main__":
    main()

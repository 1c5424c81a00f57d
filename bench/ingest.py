"""Ingest throughput and memory: an AffectNet-CSV-shaped fixture and a DISFA-shaped fixture, each read the way
the engine reads its adapter: ``iter_tables()`` (Arrow tables) for a columnar adapter, else ``iter_records()``
(images not read). DISFA is measured with its 66-point .mat landmarks (default: read by a 2-process pool with the
driver), on the same tree without them, and with them read by the driver alone (``processes=0``); then with
pre-extracted frame files (``Images/SNxxx/<t>.jpg``, a small real JPEG each) read in folder mode, which adds the
shared image check of the frame files (``check_frames``: the default sample, and ``"all"``).
Prints ONE JSON line.

    python bench/ingest.py                       # 300,000 AffectNet rows; 27 DISFA subjects x 4,845 frames
    python bench/ingest.py --rows 30000 --subjects 3 --frames 1000   # a quick check

Figures per fixture: path (iter_tables / iter_records), rows, seconds, rows/s, RSS (MiB) after 1/3 and after 3/3
of the rows (memory must not grow with rows), and the process's peak RSS. Target: >= 100,000 label rows/s.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

AFFECTNET_HEADER = ("subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,"
                    "arousal\n")
DISFA_SUBJECTS = [f"SN{n:03d}" for n in (*range(1, 14), 16, 17, 18, 21, *range(23, 33))]
DISFA_AUS = (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)


def rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def write_affectnet(root: Path, rows: int) -> None:
    """Manually_Annotated_file_lists/training.csv with ``rows`` rows of labels, box and 136 landmark values."""
    import numpy as np

    rng = np.random.default_rng(0)
    pool = [";".join(f"{v:.2f}" for v in rng.uniform(0, 500, 136)) for _ in range(64)]
    lists = root / "Manually_Annotated_file_lists"
    lists.mkdir(parents=True)
    with (lists / "training.csv").open("w", encoding="utf-8") as f:
        f.write(AFFECTNET_HEADER)
        block = []
        for i in range(rows):
            block.append(f"{i % 1000}/{i:040x}.jpg,{i % 50},{i % 40},{200 + i % 300},{200 + i % 300},"
                         f"{pool[i % 64]},{i % 11},{(i % 200) / 100 - 1:.4f},{(i % 150) / 75 - 1:.4f}\n")
            if len(block) == 10_000:
                f.write("".join(block))
                block = []
        f.write("".join(block))
    (root / "Manually_Annotated_Images").mkdir()


def write_disfa(root: Path, subjects: int, frames: int) -> None:
    """ActionUnit_Labels (12 files x ``frames`` lines per subject) + one 66-point .mat per frame, and a 0-byte
    stand-in per video (the adapter stops on a copy with no frames at all; a 0-byte video is not decoded)."""
    import io

    import numpy as np
    import scipy.io

    buf = io.BytesIO()
    scipy.io.savemat(buf, {"pts": np.arange(132, dtype=np.float64).reshape(66, 2)})
    mat = buf.getvalue()
    rng = np.random.default_rng(0)
    for subj in DISFA_SUBJECTS[:subjects]:
        labels = root / "ActionUnit_Labels" / subj
        labels.mkdir(parents=True)
        for au in DISFA_AUS:
            values = rng.integers(0, 6, frames) * (rng.random(frames) < 0.2)
            (labels / f"{subj}_au{au}.txt").write_text("".join(f"{f + 1},{v}\n" for f, v in enumerate(values)))
        lm = root / "Landmark_Points" / subj / "tmp_frame_lm"
        lm.mkdir(parents=True)
        for t in range(frames):
            (lm / f"{subj}_{t:04d}_lm.mat").write_bytes(mat)
        (root / "Videos_LeftCamera").mkdir(exist_ok=True)
        (root / "Videos_LeftCamera" / f"LeftVideo{subj}_comp.avi").write_bytes(b"")


def write_disfa_frames(root: Path, subjects: int, frames: int) -> None:
    """``Images/SNxxx/<t>.jpg`` (0-based, ME-GraphAU's layout) for every label frame: the same small JPEG."""
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    jpeg = buf.getvalue()
    for subj in DISFA_SUBJECTS[:subjects]:
        folder = root / "Images" / subj
        folder.mkdir(parents=True)
        for t in range(frames):
            (folder / f"{t}.jpg").write_bytes(jpeg)


def measure(adapter: str, root: Path, expected_rows: int, **options: object) -> dict[str, float]:
    import logging

    import pyarrow.compute  # noqa: F401 - warm imports: time the reading, not the first import
    import pyarrow.csv  # noqa: F401
    import scipy.io  # noqa: F401

    from fea20k.stage import get_stage_class

    logging.disable(logging.WARNING)  # expected here: 0-byte videos (image_undecodable)
    stage = get_stage_class(f"ingest.{adapter}")({"source": "bench", "root": str(root), **options})
    third = max(expected_rows // 3, 1)
    rss_third = 0.0
    n = 0
    columnar = stage.columnar  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    if columnar:
        for table in stage.iter_tables():  # type: ignore[attr-defined]
            before, n = n, n + table.num_rows
            if before < third <= n:
                rss_third = rss_mib()
    else:
        for _rec in stage.iter_records():  # type: ignore[attr-defined]
            n += 1
            if n == third:
                rss_third = rss_mib()
    seconds = time.perf_counter() - t0
    logging.disable(logging.NOTSET)
    return {"path": "iter_tables" if columnar else "iter_records", "rows": n, "seconds": round(seconds, 3),
            "rows_per_s": round(n / seconds), "rss_mib_at_1_3": round(rss_third, 1),
            "rss_mib_at_3_3": round(rss_mib(), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=300_000, help="AffectNet CSV rows")
    ap.add_argument("--subjects", type=int, default=27, help="DISFA subjects (<= 27)")
    ap.add_argument("--frames", type=int, default=4845, help="DISFA frames per subject")
    ap.add_argument("--no-landmarks", action="store_true", help="DISFA: do not write the .mat landmarks")
    ap.add_argument("--no-frame-files", action="store_true", help="DISFA: skip the frame-folder measurements")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fea20k-bench-ingest-"))
    try:
        t = time.perf_counter()
        write_affectnet(tmp / "affectnet", args.rows)
        build_aff = time.perf_counter() - t
        aff = measure("affectnet_csv", tmp / "affectnet", args.rows, check_images=False)
        shutil.rmtree(tmp / "affectnet")
        t = time.perf_counter()
        write_disfa(tmp / "disfa", args.subjects, args.frames)
        build_disfa = time.perf_counter() - t
        disfa = measure("disfa", tmp / "disfa", args.subjects * args.frames, frames="video",
                        landmarks=not args.no_landmarks)
        disfa_labels = measure("disfa", tmp / "disfa", args.subjects * args.frames, frames="video", landmarks=False)
        disfa_driver = measure("disfa", tmp / "disfa", args.subjects * args.frames, frames="video",
                               landmarks=not args.no_landmarks, processes=0)
        folders: dict[str, object] = {}
        if not args.no_frame_files:
            t = time.perf_counter()
            write_disfa_frames(tmp / "disfa", args.subjects, args.frames)
            folders["disfa_frame_folders"] = {
                **measure("disfa", tmp / "disfa", args.subjects * args.frames, frames="folder",
                          landmarks=not args.no_landmarks), "check_frames": "sample",
                "fixture_seconds": round(time.perf_counter() - t, 1)}
            folders["disfa_frame_folders_check_all"] = {
                **measure("disfa", tmp / "disfa", args.subjects * args.frames, frames="folder",
                          landmarks=not args.no_landmarks, check_frames="all"), "check_frames": "all"}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({
        "bench": "ingest",
        "affectnet_csv": {**aff, "fixture_seconds": round(build_aff, 1)},
        "disfa": {**disfa, "subjects": args.subjects, "frames_per_subject": args.frames,
                  "landmarks": not args.no_landmarks, "fixture_seconds": round(build_disfa, 1)},
        "disfa_without_landmarks": disfa_labels,
        "disfa_landmarks_in_driver_only": disfa_driver,
        **folders,
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "target_rows_per_s": 100_000,
    }))


if __name__ == "__main__":
    main()

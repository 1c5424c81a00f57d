"""Benchmark: the release builder vs a plain ``pyarrow.parquet.write_table`` of the same table, in the same run.

Publishes N samples (default 20,000) with 224x224 JPEG faces through :class:`fea20k.publish.release.ReleaseWriter`
(record-schema Arrow parts, as the publish stage reads them from the validate stage's output -> typed release
batches -> size-capped Hub-layout shards with the ``datasets`` features embedded), then
writes the very table those shards hold with a plain ``pq.write_table`` (pyarrow defaults) and prints ONE JSON line:
MB/s of each (MB = the table's uncompressed Arrow bytes) and their ratio. Target: ratio >= 0.7.

A few distinct JPEGs are drawn once; each sample gets its own bytes by appending its index after the JPEG end
marker (decoders ignore trailing bytes), so that Parquet's dictionary encoding cannot collapse repeated images and
flatter either side.

    python bench/publish.py [--n 20000] [--shard-mb 256] [--repeat 3] [--dir /tmp/x]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import tempfile
import time
from pathlib import Path


def faces(k: int = 8, size: int = 224) -> list[bytes]:
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    out = []
    for i in range(k):
        im = Image.new("RGB", (size, size), (190 + i, 165, 150))
        d = ImageDraw.Draw(im)
        d.ellipse((40 + i, 25, 184 - i, 205), fill=(228, 188, 168))
        d.ellipse((80, 90, 96, 100), fill=(40, 30, 30))
        d.ellipse((128, 90, 144, 100), fill=(40, 30, 30))
        d.arc((80, 130 - i, 144, 170 + i), 20, 160, fill=(140, 50, 50), width=4)
        arr = np.asarray(im).astype(np.int16) + rng.integers(-6, 6, (size, size, 3))
        buf = io.BytesIO()
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def records(n: int) -> list:
    from fea20k.record import FaceRecord, ImageRef, Rationale

    emotions = ["anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"]
    jpegs = faces()
    recs = []
    for i in range(n):
        emo = emotions[i % 8]
        recs.append(FaceRecord(
            id=f"rafdb/Image/original/train_{i:05d}", source="rafdb", split="train", round=0,
            image=ImageRef("rafdb", f"Image/original/train_{i:05d}.jpg"),
            face=jpegs[i % len(jpegs)] + i.to_bytes(8, "little"),
            bbox=[10.0, 12.0, 80.0, 90.0], landmarks=[[30.0, 40.0], [60.0, 40.0], [45.0, 55.0], [33.0, 70.0],
                                                      [57.0, 70.0]],
            landmark_scheme="raf5", emotion=emo, emotion_origin="gt", aus={6: 1, 12: 1, 4: 0, 9: None},
            au_coded=[4, 6, 9, 12], aus_origin="teacher",
            rationale=Rationale(text=f"<think>The cheeks are raised (AU6) and the lip corners pulled up (AU12), "
                                     f"sample {i}.</think>\n<answer>{emo}</answer>", annotator="teacher",
                                backend="openai", model="gpt-4o-mini", prompt_hash=f"{i:016x}", gold_in_prompt=True,
                                attempts=1),
            accepted=True, meta={"corpus": "rafdb_basic", "split_raw": "train", "raw_label": i % 7 + 1},
            provenance={"validate": "validators/default.toml@abc123"}, scores={"au_f1": 1.0},
        ))
    return recs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--shard-mb", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=1000, help="records per batch (the engine's chunk size)")
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each write; the best of each is reported")
    args = ap.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq

    from fea20k.publish.release import ReleaseWriter
    from fea20k.schema import to_arrow

    recs = records(args.n)
    # the publish stage reads its input as Arrow tables (the validate stage's Parquet parts): build them untimed
    parts = [to_arrow(recs[k:k + args.chunk]) for k in range(0, len(recs), args.chunk)]
    emotions = ["anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"]
    base = Path(tempfile.mkdtemp(prefix="fea20k-bench-", dir=args.dir))
    try:
        ReleaseWriter(base / "warm", emotions, True)  # the lazy imports once, outside the timings
        t_builder, t_plain = float("inf"), float("inf")
        for rep in range(args.repeat):  # alternate the two writes; keep each one's best (the machine is shared)
            dest = base / f"release-{rep}"
            t0 = time.perf_counter()
            writer = ReleaseWriter(dest, emotions, True, shard_max_bytes=args.shard_mb << 20)
            for part in parts:
                writer.add_table("train", part)
            shards = writer.finish()
            t_builder = min(t_builder, time.perf_counter() - t0)
            if rep == 0:
                table = pa.concat_tables(pq.read_table(dest / s.path) for s in shards["train"])
                table = table.replace_schema_metadata(None).combine_chunks()
                mb = table.nbytes / 1e6
                release_bytes = sum(s.bytes for s in shards["train"])
            shutil.rmtree(dest)
            t0 = time.perf_counter()
            pq.write_table(table, base / "plain.parquet")
            t_plain = min(t_plain, time.perf_counter() - t0)
            plain_bytes = (base / "plain.parquet").stat().st_size
            (base / "plain.parquet").unlink()
        out = {
            "bench": "publish",
            "n": args.n,
            "table_mb": round(mb, 1),
            "shards": len(shards["train"]),
            "release_bytes_mb": round(release_bytes / 1e6, 1),
            "plain_bytes_mb": round(plain_bytes / 1e6, 1),
            "repeat": args.repeat,
            "builder_s": round(t_builder, 3),
            "plain_s": round(t_plain, 3),
            "builder_mb_s": round(mb / t_builder, 1),
            "plain_mb_s": round(mb / t_plain, 1),
            "ratio": round(t_plain / t_builder, 3),
            "target_ratio": 0.7,
        }
        print(json.dumps(out))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

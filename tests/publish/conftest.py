"""A tiny workspace whose round 0 validate output is written directly (no engine run): real JPEG faces, accepted
train/val/test rows of an emotion source, AU-only rows (no emotion), and excluded rows with reasons."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from fea20k.io import atomic_write_json, write_chunk
from fea20k.record import FaceRecord, ImageRef, Rationale
from fea20k.workspace import init_workspace


EMOTIONS = ["anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"]

WS_TOML = """\
[workspace]
name = "pubtest"
recipe = "pipelines/default.toml"

[sources.faces]
adapter = "rafdb_basic"
root = "corpora/faces"
synthetic = {synthetic}

[sources.aus]
adapter = "disfa"
root = "corpora/aus"
synthetic = {synthetic}

[publish]
include_images = {images}
shard_max_mb = 1
"""


def jpeg(i: int, size: int = 32) -> bytes:
    im = Image.new("RGB", (size, size), (200, 170 - i % 50, 150))
    ImageDraw.Draw(im).ellipse((4 + i % 5, 4, size - 4, size - 4), fill=(230, 190, 170 - i % 40))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def make_records(round_: int = 0, n_faces: int = 24, n_aus: int = 8) -> list[FaceRecord]:
    """Deterministic validate-stage output."""
    recs = []
    for i in range(n_faces):
        split = ("train", "train", "val", "test")[i % 4]
        emo = EMOTIONS[i % 8]
        rec = FaceRecord(
            id=f"faces/Image/original/{split}_{i:05d}", source="faces", split=split, round=round_,
            image=ImageRef(root="faces", path=f"Image/original/{split}_{i:05d}.jpg"), face=jpeg(i),
            bbox=[1.0, 2.0, 30.0, 30.0], landmarks=[[10.0, 12.0], [22.0, 12.0], [16.0, 18.0], [11.0, 24.0],
                                                    [21.0, 24.0]],
            landmark_scheme="raf5", emotion=emo, emotion_origin="gt", aus={6: 1, 12: 1, 4: 0} if i % 2 else {},
            au_coded=[4, 6, 12] if i % 2 else [], aus_origin="gt" if i % 2 else None,
            rationale=Rationale(text=f"<think>Cheeks up (AU6) sample {i} r{round_}.</think>\n<answer>{emo}</answer>",
                                annotator="rules", backend="rules", model=None, prompt_hash=f"h{i}",
                                gold_in_prompt=True, attempts=1),
            accepted=True, meta={"corpus": "rafdb_basic", "split_raw": split},
            provenance={"validate": "validators/default.toml@abc"},
        )
        if i % 6 == 5:
            rec.exclude("validate", "au_mismatch")
        recs.append(rec)
    for i in range(n_aus):
        split = "test" if i % 4 == 0 else "train"
        rec = FaceRecord(
            id=f"aus/SN00{i % 3 + 1}#{i}", source="aus", split=split, subject=f"SN00{i % 3 + 1}", round=round_,
            image=ImageRef(root="aus", path=f"Videos/SN00{i % 3 + 1}.avi", frame=i), face=jpeg(100 + i),
            landmarks=[[float(k), float(k)] for k in range(5)], landmark_scheme="disfa66",
            emotion=None, aus={1: 1, 2: 0, 4: None, 12: 1 if i % 2 else 0}, au_coded=[1, 2, 4, 12],
            au_intensity={1: 3.0, 12: 1.0}, aus_origin="gt",
            rationale=Rationale(text=f"<think>Inner brows up (AU1) frame {i}.</think>\n<answer>surprise</answer>",
                                annotator="rules", backend="rules", gold_in_prompt=True, attempts=2),
            accepted=True, meta={"corpus": "disfa", "frame": i},
        )
        recs.append(rec)
    bad = FaceRecord(id="faces/Image/original/train_99999", source="faces", split="train", round=round_,
                     image=ImageRef(root="faces", path="Image/original/train_99999.jpg"),
                     meta={"corpus": "rafdb_basic"})
    bad.exclude("faces.align", "image_undecodable")
    recs.append(bad)
    return recs


def write_validate(ws_root: Path, round_: int, records: list[FaceRecord], chunk: int = 10) -> Path:
    d = ws_root / ".fea20k" / "rounds" / str(round_) / "validate"
    for k in range(0, len(records), chunk):
        write_chunk(d, k // chunk, records[k:k + chunk], {"in": 0})
    atomic_write_json(d / "_SUCCESS.json", {"signature": f"sig{round_}", "stats": {}})
    return d


def make_ws(tmp_path: Path, synthetic: bool = True, images: bool = True, records: list[FaceRecord] | None = None,
            name: str = "ws") -> Path:
    root = tmp_path / name
    init_workspace(root)
    (root / "fea20k.toml").write_text(
        WS_TOML.format(synthetic=str(synthetic).lower(), images=str(images).lower()), encoding="utf-8")
    write_validate(root, 0, records if records is not None else make_records())
    return root


@pytest.fixture
def ws_root(tmp_path: Path) -> Path:
    return make_ws(tmp_path)


def write_reviews(ws_root: Path, round_: int, lines: list[dict | str]) -> Path:
    p = ws_root / "reviews" / f"round-{round_}.jsonl"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    return p

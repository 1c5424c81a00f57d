"""faces.dedup: near-duplicate frames within a subject/video are excluded with dup_of; other groups are untouched."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from fea20k.engine import build_round
from fea20k.io import StageOutput
from tests.faces.conftest import make_workspace, write_records


def _scene(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    return cv2.resize(small, (320, 240), interpolation=cv2.INTER_CUBIC)


def test_near_duplicates_within_a_subject_are_excluded(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path, recipe_steps=["ingest", "faces.align", "faces.dedup"], chunk_size=3)
    root = ws / "corpora/src"
    scenes = {0: 1, 1: 1, 2: 2, 3: 1, 4: 3}  # frame -> scene: frames 1 and 3 repeat frame 0
    rows = []
    for frame, scene in scenes.items():
        img = _scene(scene)
        if frame == 1:
            img = np.clip(img.astype(int) + 3, 0, 255).astype(np.uint8)  # a tiny change
        cv2.imwrite(str(root / f"S1_{frame}.png"), img)
        rows.append({"id": f"S1#{frame}", "path": f"S1_{frame}.png", "subject": "S1",
                     "bbox": [0.0, 0.0, 320.0, 240.0]})
    cv2.imwrite(str(root / "other.png"), _scene(1))  # same picture, another subject: kept
    rows.append({"id": "S2#0", "path": "other.png", "subject": "S2", "bbox": [0.0, 0.0, 320.0, 240.0]})
    rows.append({"id": "gone", "path": "gone.png", "subject": "S1", "bbox": [0.0, 0.0, 1.0, 1.0]})
    write_records(ws, rows)
    result = build_round(ws, 0, workers=1)
    stats = {s.key: s.stats for s in result.stages}["faces.dedup"]
    assert stats.dropped == {"near_duplicate": 2}
    recs = {r.id: r for r in StageOutput([ws / ".fea20k/rounds/0/faces.dedup"]).iter_records()}
    assert list(recs) == ["src/S1#0", "src/S1#1", "src/S1#2", "src/S1#3", "src/S1#4", "src/S2#0", "src/gone"]
    assert recs["src/S1#1"].reasons == ["near_duplicate"] and recs["src/S1#1"].meta["dup_of"] == "src/S1#0"
    assert recs["src/S1#3"].meta["dup_of"] == "src/S1#0" and recs["src/S1#3"].excluded_at == "faces.dedup"
    assert not recs["src/S1#2"].excluded and not recs["src/S1#4"].excluded and not recs["src/S2#0"].excluded
    assert len(recs["src/S1#0"].meta["phash"]) == 16
    assert recs["src/gone"].reasons == ["image_missing"]  # excluded upstream: passed through as is

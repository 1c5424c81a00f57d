"""Run an ingest adapter on a fixture tree and compare its records with the fixture's expectations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fea20k.record import FaceRecord
from fea20k.stage import get_stage_class
from tests.fixtures.corpora import SRC


CANONICAL = {"anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"}


def run(adapter: str, root: Path, **options: Any) -> list[FaceRecord]:
    cls = get_stage_class(f"ingest.{adapter}")
    stage = cls({"source": SRC, "root": str(root), **options})
    return list(stage.iter_records())  # type: ignore[attr-defined]


def check(records: list[FaceRecord], expected: dict[str, dict[str, Any]]) -> dict[str, FaceRecord]:
    """Exact ids, then every expected field of every record."""
    by_id = {r.id: r for r in records}
    assert len(by_id) == len(records), "ids are not unique"
    assert sorted(by_id) == sorted(expected)
    for rid, exp in expected.items():
        rec = by_id[rid]
        for key, want in exp.items():
            got = _field(rec, key)
            assert got == want, f"{rid}: {key} = {got!r}, expected {want!r}"
    return by_id


def _field(rec: FaceRecord, key: str) -> Any:
    if key == "reasons":
        return rec.reasons
    if key == "present":
        return rec.present_aus()
    if key == "landmarks0":
        return rec.landmarks[0] if rec.landmarks else None
    if key in ("valence", "null", "name"):
        return rec.meta.get({"name": "ferplus_name"}.get(key, key))
    if key == "sides":
        return rec.meta.get("au_sides")
    if key == "key":
        return rec.meta.get("affectnet_key")
    if key == "frame":
        return rec.image.frame if rec.image else None
    if key == "root":
        return rec.image.root if rec.image else None
    if key == "path":
        return rec.image.path if rec.image else None
    if key == "dist":
        return {k: v for k, v in rec.meta.get("emotion_dist", {}).items() if v}
    if key == "intensity":
        return rec.au_intensity
    if key == "intensity1":
        return rec.au_intensity.get(1)
    if key == "crop0":
        pts = rec.meta.get("crop_landmarks")
        return pts[0] if pts else None
    if key == "aus" and rec.excluded and not rec.aus:
        return None
    return getattr(rec, key)


def assert_properties(records: list[FaceRecord]) -> None:
    """docs/corpora.md §14 property test: canonical emotions, AU values in {0, 1, None}, unique ids."""
    ids = [r.id for r in records]
    assert len(ids) == len(set(ids))
    for r in records:
        assert r.emotion is None or r.emotion in CANONICAL, r.emotion
        assert all(v in (0, 1, None) for v in r.aus.values()), r.aus
        assert r.split in ("train", "val", "test", None)
        assert r.image is None or not Path(r.image.path).is_absolute()
        assert r.excluded == bool(r.reasons)


# broken image files as they turn up on disk (issue 16): an interrupted copy or extraction, an error page saved
# under the image's name
HTML_PAGE = b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>Not Found</body></html>\n"


def write_broken(path: Path, how: str, good: Path | None = None) -> Path:
    """Make ``path`` a broken image: ``"zero"`` (0 bytes), ``"html"`` (an HTML page under the image's name) or
    ``"truncated"`` (the first half of the real image ``good``, default ``path`` itself)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if how == "zero":
        data = b""
    elif how == "html":
        data = HTML_PAGE
    else:
        real = (good or path).read_bytes()
        data = real[: len(real) // 2]
    path.write_bytes(data)
    return path

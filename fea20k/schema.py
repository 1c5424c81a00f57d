"""The fixed Arrow schema of :class:`~fea20k.record.FaceRecord` and the conversions both ways."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import Any

import pyarrow as pa

from fea20k.record import FaceRecord, ImageRef, Rationale


IMAGE_REF = pa.struct([("root", pa.string()), ("path", pa.string()), ("frame", pa.int32())])
RATIONALE = pa.struct(
    [
        ("text", pa.string()),
        ("annotator", pa.string()),
        ("backend", pa.string()),
        ("model", pa.string()),
        ("prompt_hash", pa.string()),
        ("gold_in_prompt", pa.bool_()),
        ("attempts", pa.int16()),
        ("tokens_in", pa.int64()),
        ("tokens_out", pa.int64()),
        ("cost", pa.float64()),
        ("raw", pa.list_(pa.string())),
        ("errors", pa.list_(pa.string())),
    ]
)

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("split", pa.string()),
        ("subject", pa.string()),
        ("round", pa.int16()),
        ("image", IMAGE_REF),
        ("face", pa.binary()),
        ("face_transform", pa.list_(pa.float32())),
        ("quality", pa.map_(pa.string(), pa.float32())),
        ("bbox", pa.list_(pa.float32())),
        ("landmarks", pa.list_(pa.list_(pa.float32()))),
        ("landmark_scheme", pa.string()),
        ("emotion", pa.string()),
        ("emotion_origin", pa.string()),
        ("aus", pa.map_(pa.int16(), pa.int8())),
        ("au_intensity", pa.map_(pa.int16(), pa.float32())),
        ("au_coded", pa.list_(pa.int16())),
        ("aus_origin", pa.string()),
        ("rationale", RATIONALE),
        ("accepted", pa.bool_()),
        ("reasons", pa.list_(pa.string())),
        ("excluded_at", pa.string()),
        ("scores", pa.map_(pa.string(), pa.float32())),
        ("provenance", pa.map_(pa.string(), pa.string())),
        ("meta", pa.string()),  # JSON
    ]
)

_MAP_FIELDS = ("quality", "aus", "au_intensity", "scores", "provenance")


_CONVERT = {
    "image": lambda rec: asdict(rec.image) if rec.image is not None else None,
    "rationale": lambda rec: asdict(rec.rationale) if rec.rationale is not None else None,
    "meta": lambda rec: json.dumps(rec.meta, sort_keys=True, ensure_ascii=False) if rec.meta else None,
}


def schema_of(columns: Sequence[str]) -> pa.Schema:
    """The part of :data:`SCHEMA` holding ``columns`` (in the order given)."""
    return pa.schema([SCHEMA.field(c) for c in columns])


def to_arrow(records: Sequence[FaceRecord], columns: Sequence[str] | None = None) -> pa.Table:
    """Records -> an Arrow table with :data:`SCHEMA`, or with only ``columns`` of it (a stage's own columns)."""
    names = list(columns) if columns is not None else SCHEMA.names
    arrays = []
    for name in names:
        convert = _CONVERT.get(name)
        values = [convert(r) for r in records] if convert else [getattr(r, name) for r in records]
        arrays.append(pa.array(values, type=SCHEMA.field(name).type))
    return pa.Table.from_arrays(arrays, schema=schema_of(names))


def from_arrow(table: pa.Table | pa.RecordBatch) -> list[FaceRecord]:
    """An Arrow table or batch with :data:`SCHEMA` (or a superset of its columns) -> records."""
    return list(iter_records(table.to_pylist()))


def iter_records(rows: Iterable[dict[str, Any]]) -> Iterable[FaceRecord]:
    """Plain rows (as ``to_pylist`` gives them) -> records."""
    for row in rows:
        kw = {k: row[k] for k in SCHEMA.names if k in row}
        for name in _MAP_FIELDS:
            value = kw.get(name)
            kw[name] = dict(value) if value else {}
        for name in ("reasons", "au_coded"):
            kw[name] = list(kw.get(name) or [])
        img = kw.get("image")
        kw["image"] = ImageRef(**img) if img else None
        rat = kw.get("rationale")
        kw["rationale"] = Rationale(**rat) if rat else None
        meta = kw.get("meta")
        kw["meta"] = json.loads(meta) if meta else {}
        yield FaceRecord(**kw)


# Every column but the aligned crop: what a stage reads when it never looks at the pixels.
WITHOUT_FACE = frozenset(SCHEMA.names) - {"face"}
# Every column but the face and its geometry: the labels, the text and the bookkeeping (annotate, validate).
WITHOUT_GEOMETRY = WITHOUT_FACE - {"face_transform", "quality", "bbox", "landmarks", "landmark_scheme"}

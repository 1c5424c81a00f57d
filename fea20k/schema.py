"""The fixed Arrow schema of :class:`~fea20k.record.FaceRecord` and the conversions both ways."""

from __future__ import annotations

import json
from collections.abc import Sequence
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


# one encoder for every record's meta (json.dumps builds a new one per call)
_META_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False)


def meta_json(meta: dict[str, Any]) -> str | None:
    """A record's ``meta`` as the ``meta`` column stores it: sorted-key JSON, null when empty."""
    return _META_JSON.encode(meta) if meta else None


_CONVERT = {
    # maps as (key, value) lists: pyarrow converts a dict ~30x slower (measured with pyarrow 26)
    **{name: (lambda rec, name=name: list(getattr(rec, name).items()) if getattr(rec, name) is not None else None)
       for name in _MAP_FIELDS},
    "image": lambda rec: asdict(rec.image) if rec.image is not None else None,
    "rationale": lambda rec: asdict(rec.rationale) if rec.rationale is not None else None,
    "meta": lambda rec: meta_json(rec.meta),
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
    """An Arrow table or batch with :data:`SCHEMA`'s columns, or some of them (the others keep their defaults)
    -> records. Column by column: a narrow view converts only what it holds."""
    names = [n for n in table.column_names if n in _FIELDS]
    columns = [_from_column(n, table.column(n).to_pylist()) for n in names]
    return [FaceRecord(**dict(zip(names, values, strict=True))) for values in zip(*columns, strict=True)] \
        if names else []


_FIELDS = frozenset(SCHEMA.names)


def _from_column(name: str, values: list[Any]) -> list[Any]:
    """One column's Python values as the record holds them (dicts for maps, dataclasses for structs, parsed meta)."""
    if name in _MAP_FIELDS:
        return [dict(v) if v else {} for v in values]
    if name in ("reasons", "au_coded"):
        return [list(v) if v else [] for v in values]
    if name == "image":
        return [ImageRef(**v) if v else None for v in values]
    if name == "rationale":
        return [Rationale(**v) if v else None for v in values]
    if name == "meta":
        return [json.loads(v) if v else {} for v in values]
    return values


# Every column but the aligned crop: what a stage reads when it never looks at the pixels.
WITHOUT_FACE = frozenset(SCHEMA.names) - {"face"}
# Every column but the face and its geometry: the labels, the text and the bookkeeping (annotate, validate).
WITHOUT_GEOMETRY = WITHOUT_FACE - {"face_transform", "quality", "bbox", "landmarks", "landmark_scheme"}

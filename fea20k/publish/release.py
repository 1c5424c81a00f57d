"""The release builder: records -> typed Parquet shards in the Hugging Face Hub layout.

A release folder holds two configs (``README.md`` front matter ``configs:``):

* ``default`` with splits ``train`` (accepted records whose source split is train or val) and ``test`` (accepted
  records whose source split is test), files ``data/train-0000N-of-0000M.parquet`` and ``data/test-...``;
* ``rejected`` with the single split ``rejected`` (every excluded record with its reasons), files
  ``rejected/rejected-0000N-of-0000M.parquet``.

Column types are ``datasets`` features, embedded twice so that ``datasets.load_dataset(folder)`` gives typed columns
whichever it reads: in each Parquet file's schema metadata (key ``huggingface``, ``{"info": {"features": ...}}``)
and in the README's ``dataset_info``. Choices a consumer should know:

* ``emotion`` is a ``ClassLabel`` of the eight canonical names in ``validators/vocab.toml`` order. AU-only sources
  (DISFA, BP4D) have no emotion: the value is **null**, not ``-1``. ``datasets`` reads a null ClassLabel back as
  ``None``; ``-1`` is only its encoding convention for unlabeled rows and would claim a label exists.
* ``aus`` lists the AUs present (1); ``au_coded`` the AUs the source codes; ``aus_unknown`` the AUs whose value is
  unknown (BP4D code 9, a missing DISFA label file). An AU is absent exactly when it is in ``au_coded`` and in
  neither of the other two lists. Unknown is never reported as absent.
* With faces included, ``image`` is an ``Image()`` holding the aligned crop's JPEG bytes. The reference columns
  (``image_source`` = the source name, ``image_path`` relative to that source's root, ``image_frame``) and the source
  geometry (``bbox``, ``landmarks`` in pixels of the referenced image, ``landmark_scheme``) are always kept, so that
  ``fea20k materialize`` can rebuild the faces of an annotations-only release from the user's own corpora.
* ``meta``, ``scores`` and ``provenance`` are JSON strings (their keys vary by source and stage).

Shards are written with pyarrow directly, streaming batch by batch, and rolled over when a shard reaches the size
cap. They are written under temporary names and renamed to ``-of-0000M`` names when the split is complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from fea20k.record import FaceRecord


# The Hub's layout: split -> (folder, file prefix); the prefix is the split name, as `push_to_hub` writes it.
SPLIT_DIRS = {"train": "data", "test": "data", "rejected": "rejected"}
CONFIG_SPLITS = {"default": ("train", "test"), "rejected": ("rejected",)}
# datasets writes 100 rows per row group for image datasets so that the Hub's viewer can page through them
# (datasets.config.PARQUET_ROW_GROUP_SIZE_FOR_IMAGE_DATASETS); without images a larger group is cheaper to read.
ROW_GROUP_ROWS_IMAGES = 100
ROW_GROUP_ROWS_TEXT = 10_000

_I16_LIST = pa.list_(pa.int16())
IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
INTENSITY = pa.list_(pa.struct([("au", pa.int16()), ("value", pa.float32())]))


def _base_fields(include_images: bool) -> list[tuple[str, pa.DataType]]:
    fields: list[tuple[str, pa.DataType]] = [("id", pa.string())]
    if include_images:
        fields.append(("image", IMAGE_STRUCT))
    fields += [
        ("source", pa.string()),
        ("corpus", pa.string()),
        ("split", pa.string()),
        ("subject", pa.string()),
        ("round", pa.int16()),
        ("emotion", pa.int64()),  # ClassLabel storage
        ("emotion_origin", pa.string()),
        ("aus", _I16_LIST),
        ("au_coded", _I16_LIST),
        ("aus_unknown", _I16_LIST),
        ("au_intensity", INTENSITY),
        ("aus_origin", pa.string()),
        ("rationale", pa.string()),
        ("annotator", pa.string()),
        ("backend", pa.string()),
        ("model", pa.string()),
        ("prompt_hash", pa.string()),
        ("gold_in_prompt", pa.bool_()),
        ("attempts", pa.int16()),
        ("review", pa.string()),
        ("review_note", pa.string()),
        ("image_source", pa.string()),
        ("image_path", pa.string()),
        ("image_frame", pa.int32()),
        ("bbox", pa.list_(pa.float32())),
        ("landmarks", pa.list_(pa.list_(pa.float32()))),
        ("landmark_scheme", pa.string()),
        ("scores", pa.string()),
        ("provenance", pa.string()),
        ("meta", pa.string()),
    ]
    return fields


def release_schema(include_images: bool, rejected: bool) -> pa.Schema:
    """The Arrow schema of one config (without the ``huggingface`` metadata)."""
    fields = _base_fields(include_images)
    if rejected:
        fields += [("reasons", pa.list_(pa.string())), ("excluded_at", pa.string())]
    return pa.schema(fields)


def release_features(emotions: Sequence[str], include_images: bool, rejected: bool) -> Any:
    """The ``datasets.Features`` of one config (``datasets`` is imported here, lazily)."""
    from datasets import ClassLabel, Features, Image, Sequence, Value

    def value_of(t: pa.DataType) -> Any:
        if pa.types.is_list(t):
            inner = t.value_type
            if pa.types.is_struct(inner):
                return [{f.name: value_of(f.type) for f in inner}]  # a list of structs, not a struct of lists
            return Sequence(value_of(inner))
        return Value(str(t) if str(t) != "bool" else "bool")

    feats: dict[str, Any] = {}
    for f in release_schema(include_images, rejected):
        if f.name == "emotion":
            feats[f.name] = ClassLabel(names=list(emotions))
        elif f.name == "image":
            feats[f.name] = Image()
        else:
            feats[f.name] = value_of(f.type)
    return Features(feats)


def schema_with_features(schema: pa.Schema, features: Any) -> pa.Schema:
    """Attach the features as the ``huggingface`` schema metadata key that ``datasets`` reads back."""
    meta = {b"huggingface": json.dumps({"info": {"features": features.to_dict()}}).encode("utf-8")}
    return schema.with_metadata(meta)


def _json_or_none(value: dict[str, Any]) -> str | None:
    return json.dumps(value, sort_keys=True, ensure_ascii=False) if value else None


def records_to_batch(records: Sequence[FaceRecord], schema: pa.Schema, emotion_index: dict[str, int],
                     reviews: dict[str, tuple[str, str | None]] | None = None) -> pa.RecordBatch:
    """Records -> one Arrow batch of ``schema``, column by column (no per-row dicts: this is the hot path).

    ``reviews`` maps an id to (decision, note) for the ``review`` columns. An emotion outside the vocabulary raises
    ``ValueError`` naming the record: upstream stages only emit canonical names.
    """
    names = set(schema.names)
    n = len(records)
    cols: dict[str, list[Any]] = {name: [None] * n for name in schema.names}
    reviews = reviews or {}
    with_images = "image" in names
    rejected = "reasons" in names
    for i, r in enumerate(records):
        cols["id"][i] = r.id
        if with_images:
            cols["image"][i] = {"bytes": r.face, "path": None} if r.face is not None else None
        cols["source"][i] = r.source
        cols["corpus"][i] = r.meta.get("corpus")
        cols["split"][i] = r.split
        cols["subject"][i] = r.subject
        cols["round"][i] = r.round
        if r.emotion is not None:
            try:
                cols["emotion"][i] = emotion_index[r.emotion]
            except KeyError:
                raise ValueError(f"record {r.id}: emotion {r.emotion!r} is not one of {list(emotion_index)}") from None
        cols["emotion_origin"][i] = r.emotion_origin
        aus = r.aus
        if aus:
            cols["aus"][i] = sorted(k for k, v in aus.items() if v == 1)
            cols["aus_unknown"][i] = sorted(k for k, v in aus.items() if v is None)
        else:
            cols["aus"][i] = []
            cols["aus_unknown"][i] = []
        cols["au_coded"][i] = sorted(r.au_coded)
        cols["au_intensity"][i] = [{"au": k, "value": v} for k, v in sorted(r.au_intensity.items())]
        cols["aus_origin"][i] = r.aus_origin
        rat = r.rationale
        if rat is not None:
            cols["rationale"][i] = rat.text
            cols["annotator"][i] = rat.annotator
            cols["backend"][i] = rat.backend
            cols["model"][i] = rat.model
            cols["prompt_hash"][i] = rat.prompt_hash
            cols["gold_in_prompt"][i] = rat.gold_in_prompt
            cols["attempts"][i] = rat.attempts
        review = reviews.get(r.id)
        if review is not None:
            cols["review"][i], cols["review_note"][i] = review
        img = r.image
        if img is not None:
            cols["image_source"][i] = img.root
            cols["image_path"][i] = img.path
            cols["image_frame"][i] = img.frame
        cols["bbox"][i] = r.bbox
        cols["landmarks"][i] = r.landmarks
        cols["landmark_scheme"][i] = r.landmark_scheme
        cols["scores"][i] = _json_or_none(r.scores)
        cols["provenance"][i] = _json_or_none(r.provenance)
        cols["meta"][i] = _json_or_none(r.meta)
        if rejected:
            cols["reasons"][i] = list(r.reasons)
            cols["excluded_at"][i] = r.excluded_at
    arrays = [pa.array(cols[f.name], type=f.type) for f in schema]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


@dataclass
class ShardInfo:
    """One finished shard: its path relative to the release folder, rows and bytes on disk."""

    path: str
    rows: int
    bytes: int


@dataclass
class _SplitWriter:
    """Streams batches of one split into shards of at most ``max_bytes`` (uncompressed Arrow bytes)."""

    out_dir: Path
    split: str
    schema: pa.Schema
    max_bytes: int
    row_group_rows: int
    write_options: dict[str, Any]
    shards: list[tuple[Path, int]] = field(default_factory=list)  # (temp path, rows)
    _writer: pq.ParquetWriter | None = None
    _bytes: int = 0
    _rows: int = 0
    nbytes: int = 0  # uncompressed Arrow bytes written, all shards

    @property
    def folder(self) -> Path:
        return self.out_dir / SPLIT_DIRS[self.split]

    def _open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f".{self.split}-{len(self.shards):05d}.parquet.tmp"
        self._writer = pq.ParquetWriter(path, self.schema, **self.write_options)
        self.shards.append((path, 0))
        self._bytes = self._rows = 0

    def _close_current(self) -> None:
        if self._writer is not None:
            self._writer.close()
            path, _ = self.shards[-1]
            self.shards[-1] = (path, self._rows)
            self._writer = None

    def write(self, batch: pa.RecordBatch) -> None:
        """Append ``batch``, cutting it where a shard would pass the size cap (a shard holds at least one row)."""
        offset = 0
        n = batch.num_rows
        while offset < n:
            if self._writer is None:
                self._open()
            rest = batch.slice(offset)
            room = self.max_bytes - self._bytes
            take = rest.num_rows
            if rest.nbytes > room:
                take = room // max(1, rest.nbytes // take)
                if take == 0 and self._rows > 0:
                    self._close_current()
                    continue
                take = max(1, take)
            part = rest.slice(0, take)
            assert self._writer is not None
            self._writer.write_batch(part, row_group_size=self.row_group_rows)
            self._bytes += part.nbytes
            self._rows += take
            self.nbytes += part.nbytes
            offset += take
            if self._bytes >= self.max_bytes:
                self._close_current()

    def finish(self) -> list[ShardInfo]:
        """Close the last shard and rename every shard to its ``-0000N-of-0000M`` name (none for an empty split)."""
        self._close_current()
        total = len(self.shards)
        out = []
        for i, (tmp, rows) in enumerate(self.shards):
            final = self.folder / f"{self.split}-{i:05d}-of-{total:05d}.parquet"
            os.replace(tmp, final)
            out.append(ShardInfo(str(final.relative_to(self.out_dir)), rows, final.stat().st_size))
        return out

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for tmp, _ in self.shards:
            tmp.unlink(missing_ok=True)


def _write_options(schema: pa.Schema) -> dict[str, Any]:
    """zstd for every column except the image bytes: JPEG does not compress, and trying costs time."""
    compression: dict[str, str] = {}
    no_dict: set[str] = set()
    for f in schema:
        if f.name == "image":
            compression["image.bytes"] = "NONE"
            compression["image.path"] = "ZSTD"
            no_dict.add("image.bytes")
        else:
            compression[f.name] = "ZSTD"
    dict_cols = [f.name for f in schema if f.name != "image"] + (["image.path"] if "image" in schema.names else [])
    return {
        "compression": compression,
        "use_dictionary": dict_cols,
        "write_statistics": [c for c in dict_cols if c not in no_dict],
    }


class ReleaseWriter:
    """Streams records of the three splits into Hub-layout Parquet shards under ``out_dir``.

    Args:
        out_dir: the release folder being built (normally a temporary folder renamed when complete).
        emotions: the canonical emotion names, in ClassLabel order.
        include_images: write the ``image`` column from ``FaceRecord.face``.
        shard_max_bytes: size cap of a shard, in uncompressed Arrow bytes (the file is at most about this size).
        row_group_rows: rows per Parquet row group (default: 100 with images, 10,000 without).
    """

    def __init__(self, out_dir: Path, emotions: Sequence[str], include_images: bool,
                 shard_max_bytes: int = 256 << 20, row_group_rows: int | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.emotions = tuple(emotions)
        self.include_images = include_images
        self.emotion_index = {name: i for i, name in enumerate(self.emotions)}
        rg = row_group_rows or (ROW_GROUP_ROWS_IMAGES if include_images else ROW_GROUP_ROWS_TEXT)
        self.features = {cfg: release_features(self.emotions, include_images, cfg == "rejected")
                         for cfg in CONFIG_SPLITS}
        self.schemas = {
            cfg: schema_with_features(release_schema(include_images, cfg == "rejected"), feats)
            for cfg, feats in self.features.items()
        }
        self._writers: dict[str, _SplitWriter] = {}
        for cfg, splits in CONFIG_SPLITS.items():
            schema = self.schemas[cfg]
            for split in splits:
                self._writers[split] = _SplitWriter(self.out_dir, split, schema, shard_max_bytes, rg,
                                                    _write_options(schema))
        self.rows = dict.fromkeys(self._writers, 0)

    def add(self, split: str, records: Sequence[FaceRecord],
            reviews: dict[str, tuple[str, str | None]] | None = None) -> None:
        """Append records to ``split`` (``train``, ``test`` or ``rejected``)."""
        if not records:
            return
        writer = self._writers[split]
        writer.write(records_to_batch(records, writer.schema, self.emotion_index, reviews))
        self.rows[split] += len(records)

    def finish(self) -> dict[str, list[ShardInfo]]:
        """Close every split; returns split -> its shards (an empty split has none and is left out of the configs)."""
        return {split: w.finish() for split, w in self._writers.items()}

    def abort(self) -> None:
        for w in self._writers.values():
            w.abort()

    def splits_present(self) -> dict[str, tuple[str, ...]]:
        """config -> its non-empty splits (``datasets`` cannot load an empty split); a config with none is left out."""
        out = {}
        for cfg, splits in CONFIG_SPLITS.items():
            present = tuple(s for s in splits if self.rows[s] > 0)
            if present:
                out[cfg] = present
        return out

    def dataset_info(self, shards: dict[str, list[ShardInfo]]) -> list[dict[str, Any]]:
        """The README ``dataset_info`` list: per config, its features and splits (rows, bytes)."""
        from datasets import DatasetInfo, SplitDict, SplitInfo

        infos = []
        for cfg, splits in self.splits_present().items():
            split_dict = SplitDict()
            for split in splits:
                split_dict.add(SplitInfo(name=split, num_bytes=self._writers[split].nbytes,
                                         num_examples=self.rows[split]))
            info = DatasetInfo(features=self.features[cfg], splits=split_dict, config_name=cfg,
                               dataset_size=sum(self._writers[s].nbytes for s in splits),
                               download_size=sum(sh.bytes for s in splits for sh in shards[s]))
            infos.append(info._to_yaml_dict())
        return infos

    def configs_yaml(self) -> list[dict[str, Any]]:
        """The README ``configs:`` list: ``default`` (train, test) and ``rejected``, non-empty splits only."""
        return [
            {
                "config_name": cfg,
                **({"default": True} if cfg == "default" else {}),
                "data_files": [{"split": s, "path": f"{SPLIT_DIRS[s]}/{s}-*"} for s in splits],
            }
            for cfg, splits in self.splits_present().items()
        ]

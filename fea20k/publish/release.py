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
* ``meta`` is a JSON string (raw source fields vary by corpus); ``scores`` is a list of ``{name, value}`` and
  ``provenance`` a list of ``{stage, value}`` (``datasets`` has no map type).

Shards are written with pyarrow directly, streaming batch by batch, and rolled over when a shard reaches the size
cap. They are written under temporary names and renamed to ``-of-0000M`` names when the split is complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from fea20k.record import FaceRecord


if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor


# The Hub's layout: split -> (folder, file prefix); the prefix is the split name, as `push_to_hub` writes it.
SPLIT_DIRS = {"train": "data", "test": "data", "rejected": "rejected"}
CONFIG_SPLITS = {"default": ("train", "test"), "rejected": ("rejected",)}
# Row groups of about this many uncompressed bytes. datasets' push_to_hub uses 100-row groups for image datasets
# (datasets.config.PARQUET_ROW_GROUP_SIZE_FOR_IMAGE_DATASETS) so the Hub viewer reads little per page; with
# 224x224 crops (~10-20 kB) that is 1-2 MB, and writing hundreds of tiny groups costs about 2x the write time
# (bench/publish.py). 8 MB (~700 crops) keeps a group cheap for the viewer to fetch and the write at pyarrow's
# plain speed, and small enough that a split's groups are written while the next input parts are read (a
# split holds at most one group being gathered and one being written).
ROW_GROUP_BYTES = 8 << 20
# ... or of at most this many rows: an annotations-only row is a few hundred bytes, and without a row bound a release
# of a few thousand rows would be written whole when it is finished instead of while its parts are read
ROW_GROUP_ROWS = 1024

_I16_LIST = pa.list_(pa.int16())
IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
INTENSITY = pa.list_(pa.struct([("au", pa.int16()), ("value", pa.float32())]))
SCORES = pa.list_(pa.struct([("name", pa.string()), ("value", pa.float32())]))
PROVENANCE = pa.list_(pa.struct([("stage", pa.string()), ("value", pa.string())]))


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
        ("scores", SCORES),
        ("provenance", PROVENANCE),
        ("meta", pa.string()),
    ]
    return fields


def release_schema(include_images: bool, rejected: bool) -> pa.Schema:
    """The Arrow schema of one config (without the ``huggingface`` metadata)."""
    fields = _base_fields(include_images)
    if rejected:
        fields += [("reasons", pa.list_(pa.string())), ("excluded_at", pa.string())]
    return pa.schema(fields)


def release_features(emotions: Sequence[str], include_images: bool, rejected: bool) -> dict[str, Any]:
    """The ``datasets.Features`` of one config in their serialised form (``Features.to_dict()``).

    Written here from the release schema rather than built with ``datasets``: importing ``datasets`` costs about as
    much as the whole rest of a release build. ``tests/publish/test_release.py`` checks that it equals what
    ``datasets`` itself produces.
    """
    feats: dict[str, Any] = {}
    for f in release_schema(include_images, rejected):
        if f.name == "emotion":
            feats[f.name] = {"names": list(emotions), "_type": "ClassLabel"}
        elif f.name == "image":
            feats[f.name] = {"_type": "Image"}
        else:
            feats[f.name] = _feature_of(f.type)
    return feats


# Arrow's names of the float types -> the names ``datasets.Value`` normalises them to
_DTYPE_NAMES = {"halffloat": "float16", "float": "float32", "double": "float64"}


def _feature_of(t: pa.DataType) -> dict[str, Any]:
    """The serialised feature of an Arrow type: a ``Value``, or a ``List`` (of values, lists or structs)."""
    if pa.types.is_list(t):
        inner = t.value_type
        if pa.types.is_struct(inner):  # a list of structs, not a struct of lists
            return {"feature": {f.name: _feature_of(f.type) for f in inner}, "_type": "List"}
        return {"feature": _feature_of(inner), "_type": "List"}
    return {"dtype": _DTYPE_NAMES.get(str(t), str(t)), "_type": "Value"}


def features_yaml(features: dict[str, Any]) -> list[dict[str, Any]]:
    """Serialised features (:func:`release_features`) as the README's ``dataset_info.features`` list (what
    ``datasets.Features._to_yaml_list`` writes)."""
    return [{"name": name, **_yaml_entry(feat)} for name, feat in features.items()]


def _yaml_entry(feat: dict[str, Any]) -> dict[str, Any]:
    kind = feat["_type"]
    if kind == "ClassLabel":
        return {"dtype": {"class_label": {"names": {str(i): n for i, n in enumerate(feat["names"])}}}}
    if kind == "Image":
        return {"dtype": "image"}
    if kind == "List":
        return {"list": _yaml_type(feat["feature"])}
    return {"dtype": feat["dtype"]}


def _yaml_type(feat: dict[str, Any]) -> Any:
    """The type inside a ``list:`` entry: a dtype name, a nested ``{list: ...}``, or a struct's field list."""
    if "_type" not in feat:  # a struct: field name -> feature
        return [{"name": name, **_yaml_entry(f)} for name, f in feat.items()]
    if feat["_type"] == "List":
        return {"list": _yaml_type(feat["feature"])}
    return _yaml_entry(feat)["dtype"]


def schema_with_features(schema: pa.Schema, features: dict[str, Any]) -> pa.Schema:
    """Attach the serialised features as the ``huggingface`` schema metadata key that ``datasets`` reads back."""
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode("utf-8")}
    return schema.with_metadata(meta)


def _sorted_list(offsets: Any, values: pa.Array, n: int, mask: Any = None) -> pa.Array:
    """Rows of ``values`` (flattened, row boundaries ``offsets``) kept where ``mask``, sorted within each row."""
    import numpy as np

    counts = np.diff(offsets)
    parents = np.repeat(np.arange(n, dtype=np.int64), counts)
    vals = values.to_numpy(zero_copy_only=False)
    if mask is not None:
        parents, vals = parents[mask], vals[mask]
    order = np.lexsort((vals, parents))
    new_offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.bincount(parents, minlength=n), out=new_offsets[1:])
    return pa.ListArray.from_arrays(pa.array(new_offsets), pa.array(vals[order], type=values.type))


def present_aus(aus: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The ``aus`` map column (AU -> 1 present, 0 absent, null unknown) as the sorted list of the AUs present."""
    offsets, keys, items = _map_parts(aus)
    return _sorted_list(offsets, keys, len(offsets) - 1, (items.to_numpy(zero_copy_only=False) == 1))


def contiguous(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous array (a single-chunk column without a copy)."""
    if isinstance(col, pa.ChunkedArray):
        return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    return col


def _map_parts(col: pa.Array | pa.ChunkedArray) -> tuple[Any, pa.Array, pa.Array]:
    """(offsets as numpy, keys, items) of a map column (nulls read as empty maps)."""
    import numpy as np

    arr = contiguous(col)
    offsets = np.asarray(arr.offsets.to_numpy(zero_copy_only=False), dtype=np.int64)
    base = offsets[0]
    keys = arr.keys.slice(base, offsets[-1] - base)
    items = arr.items.slice(base, offsets[-1] - base)
    return offsets - base, keys, items


def _map_as_list(col: pa.ChunkedArray, names: tuple[str, str], item_type: pa.DataType) -> pa.Array:
    """A map column as a list of ``{names[0], names[1]}`` structs (``datasets`` has no map feature)."""
    offsets, keys, items = _map_parts(col)
    struct = pa.StructArray.from_arrays([keys, items.cast(item_type)], names=list(names))
    return pa.ListArray.from_arrays(pa.array(offsets.astype("int32")), struct)


def table_to_batches(table: pa.Table, schema: pa.Schema, emotions: Sequence[str],
                     reviews: dict[str, tuple[str, str | None]] | None = None) -> list[pa.RecordBatch]:
    """:func:`table_to_batch` over each record batch of ``table`` (no concatenation, no copy of the faces)."""
    return [table_to_batch(b, schema, emotions, reviews) for b in table.to_batches() if b.num_rows]


def table_to_batch(table: pa.RecordBatch | pa.Table, schema: pa.Schema, emotions: Sequence[str],
                   reviews: dict[str, tuple[str, str | None]] | None = None) -> pa.RecordBatch:
    """A table with the record schema (:data:`fea20k.schema.SCHEMA`, as stage outputs store it) -> one release batch.

    Column-wise Arrow compute, no per-row Python (this is the hot path the publish benchmark measures), except the
    ``review`` columns when there are reviews. An emotion outside the vocabulary raises ``ValueError`` naming it.
    """
    import numpy as np
    import pyarrow.compute as pc

    n = table.num_rows
    col = table.column
    out: dict[str, Any] = {}
    for name in ("id", "source", "split", "subject", "round", "emotion_origin", "aus_origin", "landmark_scheme",
                 "bbox", "landmarks", "meta", "excluded_at", "reasons"):
        out[name] = col(name)
    if "image" in schema.names:
        face = contiguous(col("face"))
        out["image"] = pa.StructArray.from_arrays([face, pa.nulls(n, pa.string())], names=["bytes", "path"],
                                                  mask=face.is_null())
    out["corpus"] = pc.struct_field(pc.extract_regex(col("meta"), r'"corpus": "(?P<c>[^"]*)"'), "c")
    emo = col("emotion")
    idx = pc.index_in(emo, value_set=pa.array(list(emotions)))
    bad = pc.and_(pc.is_valid(emo), pc.is_null(idx))
    if pc.any(bad).as_py():
        first = pc.filter(table.select(["id", "emotion"]), bad).slice(0, 1).to_pylist()[0]
        raise ValueError(f"record {first['id']}: emotion {first['emotion']!r} is not one of {list(emotions)}")
    out["emotion"] = idx.cast(pa.int64())
    out["aus"] = present_aus(col("aus"))
    offsets, keys, items = _map_parts(col("aus"))
    out["aus_unknown"] = _sorted_list(offsets, keys, n, np.isnan(items.to_numpy(zero_copy_only=False)
                                                                   .astype("float64")))
    coded = contiguous(col("au_coded"))
    c_off = np.asarray(coded.offsets.to_numpy(zero_copy_only=False), dtype=np.int64)
    out["au_coded"] = _sorted_list(c_off - c_off[0], coded.values.slice(c_off[0], c_off[-1] - c_off[0]), n)
    out["au_intensity"] = _map_as_list(col("au_intensity"), ("au", "value"), pa.float32())
    out["scores"] = _map_as_list(col("scores"), ("name", "value"), pa.float32())
    out["provenance"] = _map_as_list(col("provenance"), ("stage", "value"), pa.string())
    rat = col("rationale")
    for src, dst in (("text", "rationale"), ("annotator", "annotator"), ("backend", "backend"), ("model", "model"),
                     ("prompt_hash", "prompt_hash"), ("gold_in_prompt", "gold_in_prompt"), ("attempts", "attempts")):
        out[dst] = pc.struct_field(rat, src)
    img = col("image")
    out["image_source"] = pc.struct_field(img, "root")
    out["image_path"] = pc.struct_field(img, "path")
    out["image_frame"] = pc.struct_field(img, "frame")
    if reviews:
        # the reviewed rows are few: look every id up at once, take their decision and note
        at = pc.index_in(col("id"), value_set=pa.array(list(reviews), pa.string()))
        out["review"] = pc.take(pa.array([d for d, _ in reviews.values()], pa.string()), at)
        out["review_note"] = pc.take(pa.array([note for _, note in reviews.values()], pa.string()), at)
    else:
        out["review"] = out["review_note"] = pa.nulls(n, pa.string())
    arrays = []
    for f in schema:
        a = out[f.name]
        a = contiguous(a)
        arrays.append(a if a.type == f.type else a.cast(f.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


@dataclass
class ShardInfo:
    """One finished shard: its path relative to the release folder, rows and bytes on disk."""

    path: str
    rows: int
    bytes: int


@dataclass
class _SplitWriter:
    """Streams batches of one split into shards of at most ``max_bytes`` (uncompressed Arrow bytes).

    Batches are buffered into row groups of about ``row_group_bytes`` and at most :data:`ROW_GROUP_ROWS` rows (a row
    group may span several input batches).
    A full row group is written on the split's own thread while the next is gathered (pyarrow releases the GIL as
    it encodes and writes; writing the faces is most of a release's time): at most one write in flight per split.
    """

    out_dir: Path
    split: str
    schema: pa.Schema
    max_bytes: int
    row_group_bytes: int
    write_options: dict[str, Any]
    shards: list[tuple[Path, int]] = field(default_factory=list)  # (temp path, rows)
    _writer: pq.ParquetWriter | None = None
    _bytes: int = 0
    _rows: int = 0
    _buf: list[pa.RecordBatch] = field(default_factory=list)
    _buf_bytes: int = 0
    _buf_rows: int = 0
    nbytes: int = 0  # uncompressed Arrow bytes written, all shards
    _thread: ThreadPoolExecutor | None = None
    _in_flight: Future[None] | None = None

    @property
    def folder(self) -> Path:
        return self.out_dir / SPLIT_DIRS[self.split]

    def _open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f".{self.split}-{len(self.shards):05d}.parquet.tmp"
        self._writer = pq.ParquetWriter(path, self.schema, **self.write_options)
        self.shards.append((path, 0))
        self._bytes = self._rows = 0

    def flush(self) -> None:
        """Hand the buffered row group to the split's writing thread (after the write in flight, if any)."""
        if self._buf:
            assert self._writer is not None
            table = pa.Table.from_batches(self._buf, schema=self.schema)
            self._buf, self._buf_bytes, self._buf_rows = [], 0, 0
            self._wait()
            if self._thread is None:
                from concurrent.futures import ThreadPoolExecutor

                self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"fea20k-write-{self.split}")
            self._in_flight = self._thread.submit(self._writer.write_table, table, row_group_size=table.num_rows)

    def _wait(self) -> None:
        """Wait for the write in flight (its error, if any, is raised here)."""
        if self._in_flight is not None:
            in_flight, self._in_flight = self._in_flight, None
            in_flight.result()

    def _stop_thread(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None

    def _close_current(self) -> None:
        if self._writer is not None:
            self.flush()
            self._wait()
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
            if self._buf_rows >= ROW_GROUP_ROWS:
                self.flush()
            take = min(take, ROW_GROUP_ROWS - self._buf_rows)
            part = rest.slice(0, take)
            size = part.nbytes
            if self._buf_bytes + size > self.row_group_bytes:
                self.flush()
            self._buf.append(part)
            self._buf_bytes += size
            self._buf_rows += take
            self._bytes += size
            self._rows += take
            self.nbytes += size
            offset += take
            if self._bytes >= self.max_bytes:
                self._close_current()

    def finish(self) -> list[ShardInfo]:
        """Close the last shard and rename every shard to its ``-0000N-of-0000M`` name (none for an empty split)."""
        self._close_current()
        self._stop_thread()
        total = len(self.shards)
        out = []
        for i, (tmp, rows) in enumerate(self.shards):
            final = self.folder / f"{self.split}-{i:05d}-of-{total:05d}.parquet"
            os.replace(tmp, final)
            out.append(ShardInfo(str(final.relative_to(self.out_dir)), rows, final.stat().st_size))
        return out

    def abort(self) -> None:
        self._buf, self._buf_bytes, self._buf_rows = [], 0, 0
        if self._in_flight is not None:
            self._in_flight.exception()  # waited for; the error that aborts the build is raised elsewhere
            self._in_flight = None
        self._stop_thread()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for tmp, _ in self.shards:
            tmp.unlink(missing_ok=True)


def _write_options(schema: pa.Schema) -> dict[str, Any]:
    """The workspace's Parquet options (fea20k.io.parquet_options), the image bytes stored plainly."""
    from fea20k.io import parquet_options

    return parquet_options(schema, plain="image.bytes")


class ReleaseWriter:
    """Streams records of the three splits into Hub-layout Parquet shards under ``out_dir``.

    Args:
        out_dir: the release folder being built (normally a temporary folder renamed when complete).
        emotions: the canonical emotion names, in ClassLabel order.
        include_images: write the ``image`` column from ``FaceRecord.face``.
        shard_max_bytes: size cap of a shard, in uncompressed Arrow bytes (the file is at most about this size).
        row_group_bytes: target uncompressed size of a Parquet row group.
    """

    def __init__(self, out_dir: Path, emotions: Sequence[str], include_images: bool,
                 shard_max_bytes: int = 256 << 20, row_group_bytes: int = ROW_GROUP_BYTES) -> None:
        self.out_dir = Path(out_dir)
        self.emotions = tuple(emotions)
        self.include_images = include_images
        self.emotion_index = {name: i for i, name in enumerate(self.emotions)}
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
                self._writers[split] = _SplitWriter(self.out_dir, split, schema, shard_max_bytes, row_group_bytes,
                                                    _write_options(schema))
        self.rows = dict.fromkeys(self._writers, 0)

    def add(self, split: str, records: Sequence[FaceRecord],
            reviews: dict[str, tuple[str, str | None]] | None = None) -> None:
        """Append records to ``split`` (``train``, ``test`` or ``rejected``)."""
        if records:
            from fea20k.schema import to_arrow

            self.add_table(split, to_arrow(records), reviews)

    def add_table(self, split: str, table: pa.Table,
                  reviews: dict[str, tuple[str, str | None]] | None = None) -> None:
        """Append a table with the record schema (a stage output part, as read from disk) to ``split``."""
        if table.num_rows == 0:
            return
        writer = self._writers[split]
        for batch in table_to_batches(table, writer.schema, self.emotions, reviews):
            writer.write(batch)
        self.rows[split] += table.num_rows

    def finish(self) -> dict[str, list[ShardInfo]]:
        """Close every split; returns split -> its shards (an empty split has none and is left out of the configs).

        The splits' last row groups are written concurrently: each is handed to its split's writing thread first,
        then each split is closed.
        """
        for w in self._writers.values():
            w.flush()
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
        """The README ``dataset_info`` list: per config, its features and splits (rows, bytes), as
        ``datasets.DatasetInfo._to_yaml_dict`` writes it."""
        infos = []
        for cfg, splits in self.splits_present().items():
            infos.append({
                "features": features_yaml(self.features[cfg]),
                "config_name": cfg,
                "splits": [{"name": s, "num_bytes": self._writers[s].nbytes, "num_examples": self.rows[s]}
                           for s in splits],
                "download_size": sum(sh.bytes for s in splits for sh in shards[s]),
                "dataset_size": sum(self._writers[s].nbytes for s in splits),
            })
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

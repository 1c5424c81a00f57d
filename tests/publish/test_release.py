"""The release builder's column-wise conversion and shard writer."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fea20k.publish.release import ReleaseWriter, release_schema, table_to_batch
from fea20k.record import FaceRecord, Rationale
from fea20k.schema import to_arrow

from .conftest import EMOTIONS, make_records


def test_conversion_matches_records_on_a_sliced_table() -> None:
    recs = make_records()
    recs[3].scores = {"au_f1": 0.5, "format": 1.0}
    recs[3].provenance = {"validate": "v@1", "faces.align": "raf5"}
    table = to_arrow(recs).slice(2, 20)
    batch = table_to_batch(table, release_schema(True, True), EMOTIONS)
    rows = batch.to_pylist()
    for rec, row in zip(recs[2:22], rows, strict=True):
        assert row["id"] == rec.id
        assert row["emotion"] == (EMOTIONS.index(rec.emotion) if rec.emotion else None)
        assert row["aus"] == rec.present_aus()
        assert row["aus_unknown"] == sorted(k for k, v in rec.aus.items() if v is None)
        assert row["au_coded"] == sorted(rec.au_coded)
        assert {d["au"]: d["value"] for d in row["au_intensity"]} == rec.au_intensity
        assert {d["name"]: d["value"] for d in row["scores"]} == rec.scores
        assert {d["stage"]: d["value"] for d in row["provenance"]} == rec.provenance
        assert row["image"] == ({"bytes": rec.face, "path": None} if rec.face else None)
        assert row["corpus"] == rec.meta["corpus"] and row["rationale"] == rec.rationale.text
        assert row["reasons"] == rec.reasons and row["image_frame"] == rec.image.frame


def test_unknown_emotion_is_an_error() -> None:
    rec = FaceRecord(id="s/1", source="s", emotion="joyous", rationale=Rationale("t", "a", "b"))
    with pytest.raises(ValueError, match="record s/1: emotion 'joyous'"):
        table_to_batch(to_arrow([rec]), release_schema(False, False), EMOTIONS)


def test_shards_respect_the_size_cap(tmp_path: Path) -> None:
    recs = make_records(n_faces=200, n_aus=0)
    w = ReleaseWriter(tmp_path, EMOTIONS, include_images=True, shard_max_bytes=30_000, row_group_bytes=8_000)
    for k in range(0, len(recs), 4):
        w.add("train", recs[k:k + 4])
    shards = w.finish()["train"]
    assert len(shards) > 3 and sum(s.rows for s in shards) == len(recs)
    assert [s.path for s in shards] == [f"data/train-{i:05d}-of-{len(shards):05d}.parquet" for i in range(len(shards))]
    assert pq.ParquetFile(tmp_path / shards[0].path).metadata.num_row_groups > 1
    assert w.splits_present() == {"default": ("train",)}


def test_row_groups_hold_at_most_row_group_rows(tmp_path: Path) -> None:
    """An annotations-only row is small: row groups are cut by rows too, so a split is written while it streams
    (ROW_GROUP_ROWS), and every row arrives in order."""
    from fea20k.publish.release import ROW_GROUP_ROWS

    recs = make_records(n_faces=2 * ROW_GROUP_ROWS + 300, n_aus=0)
    w = ReleaseWriter(tmp_path, EMOTIONS, include_images=False)
    w.add("train", recs[:700])
    w.add("train", recs[700:])  # one batch that spans two row groups
    (shard,) = w.finish()["train"]
    meta = pq.ParquetFile(tmp_path / shard.path).metadata
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert sizes == [ROW_GROUP_ROWS, ROW_GROUP_ROWS, len(recs) - 2 * ROW_GROUP_ROWS]
    assert pq.read_table(tmp_path / shard.path, columns=["id"]).column("id").to_pylist() == [r.id for r in recs]


@pytest.mark.parametrize(("include_images", "rejected"), [(True, False), (True, True), (False, False), (False, True)])
def test_features_and_dataset_info_equal_what_datasets_writes(include_images: bool, rejected: bool,
                                                              tmp_path: Path) -> None:
    """The features metadata and the card's ``dataset_info`` are written without ``datasets``: they must be what
    ``datasets`` itself makes of the release schema."""
    import json

    import pyarrow as pa
    from datasets import ClassLabel, DatasetInfo, Features, Image, Sequence, SplitDict, SplitInfo, Value

    from fea20k.publish.release import features_yaml, release_features

    def value_of(t: pa.DataType) -> object:
        if pa.types.is_list(t):
            inner = t.value_type
            if pa.types.is_struct(inner):
                return [{f.name: value_of(f.type) for f in inner}]
            return Sequence(value_of(inner))
        return Value(str(t))

    feats = {f.name: (ClassLabel(names=EMOTIONS) if f.name == "emotion" else Image() if f.name == "image" else
                      value_of(f.type)) for f in release_schema(include_images, rejected)}
    expected = Features(feats)
    ours = release_features(EMOTIONS, include_images, rejected)
    assert json.dumps(ours) == json.dumps(expected.to_dict())
    assert Features.from_dict(ours) == expected
    split_dict = SplitDict()
    split_dict.add(SplitInfo(name="train", num_bytes=123, num_examples=4))
    info = DatasetInfo(features=expected, splits=split_dict, config_name="default", dataset_size=123,
                       download_size=99)._to_yaml_dict()
    assert info["features"] == features_yaml(ours)

    recs = make_records(n_faces=6 if include_images else 0)
    w = ReleaseWriter(tmp_path, EMOTIONS, include_images=include_images)
    w.add("rejected" if rejected else "train", recs)
    shards = w.finish()
    cfg = "rejected" if rejected else "default"
    split = "rejected" if rejected else "train"
    (got,) = w.dataset_info(shards)
    split_dict = SplitDict()
    split_dict.add(SplitInfo(name=split, num_bytes=w._writers[split].nbytes, num_examples=len(recs)))
    want = DatasetInfo(features=expected, splits=split_dict, config_name=cfg,
                       dataset_size=w._writers[split].nbytes,
                       download_size=sum(s.bytes for s in shards[split]))._to_yaml_dict()
    assert got == want
    meta = pq.ParquetFile(tmp_path / shards[split][0].path).schema_arrow.metadata[b"huggingface"]
    assert Features.from_dict(json.loads(meta)["info"]["features"]) == expected

"""fea20k.io.iter_jsonl: line numbers, blank and comment lines skipped, one-line errors of the caller's class."""

from __future__ import annotations

from pathlib import Path

import pytest

from fea20k.errors import Fea20kUserError
from fea20k.io import iter_jsonl


class _MyError(Exception):
    pass


def test_iter_jsonl_yields_line_numbers_and_skips_blank_and_comment_lines(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl"
    p.write_text('{"id": 1}\n\n  \n# a note\n[2, 3]\n', encoding="utf-8")
    assert list(iter_jsonl(p, comment="#")) == [(1, {"id": 1}), (5, [2, 3])]
    with pytest.raises(Fea20kUserError, match=r"a.jsonl:4: not valid JSON \(Expecting value\)$"):
        list(iter_jsonl(p))


def test_iter_jsonl_errors_use_the_given_class_and_hint(tmp_path: Path) -> None:
    p = tmp_path / "b.jsonl"
    p.write_text('{"id": 1}\n{oops\n', encoding="utf-8")
    with pytest.raises(_MyError, match=r"b.jsonl:2: not valid JSON \(.+\); fix it$"):
        list(iter_jsonl(p, _MyError, hint="fix it"))
    with pytest.raises(_MyError, match=r"missing.jsonl: file not found"):
        list(iter_jsonl(tmp_path / "missing.jsonl", _MyError))


def test_every_column_but_the_face_is_compressed_nested_ones_too(tmp_path: Path) -> None:
    """Per-column write options are keyed by leaf path: a top-level name alone left maps and lists plain (a validate
    part then took ~10x its size)."""
    import pyarrow.parquet as pq

    from fea20k.io import leaf_paths, write_table_atomic
    from fea20k.record import FaceRecord
    from fea20k.schema import SCHEMA, to_arrow

    recs = [FaceRecord(id=f"s/{i}", source="s", face=bytes([i % 256]) * 500, scores={"au_f1": 0.5, "words": 40.0},
                       provenance={"validate": "validators/default.toml@0123456789ab"}) for i in range(200)]
    path = tmp_path / "part-00000.parquet"
    write_table_atomic(path, to_arrow(recs))
    meta = pq.ParquetFile(path).metadata
    columns = {meta.row_group(0).column(i).path_in_schema: meta.row_group(0).column(i)
               for i in range(meta.num_columns)}
    assert list(columns) == leaf_paths(SCHEMA)
    assert columns["face"].compression == "UNCOMPRESSED" and not columns["face"].is_stats_set
    for leaf in ("scores.key_value.key", "provenance.key_value.value", "reasons.list.element"):
        assert columns[leaf].compression == "ZSTD", leaf


def test_reading_ahead_gives_the_same_tables_and_stops_cleanly(tmp_path: Path) -> None:
    from fea20k.io import StageOutput, write_chunk
    from fea20k.record import FaceRecord

    d = tmp_path / "stage"
    for k in range(3):
        write_chunk(d, k, [FaceRecord(id=f"s/{k}-{i}", source="s", scores={"x": float(i)}) for i in range(5)], {})
    out = StageOutput([d])
    assert [t.to_pylist() for t in out.iter_tables(read_ahead=True)] == [t.to_pylist() for t in out.iter_tables()]
    tables = out.iter_tables(["id"], read_ahead=True)
    assert next(tables).column("id").to_pylist()[0] == "s/0-0"
    tables.close()  # a caller that stops early: the background read is waited for, nothing is left running

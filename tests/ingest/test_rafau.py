"""RAF-AU adapter: side prefixes, null, zfill, open vocabulary, malformed lines, seeded split."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from fea20k.errors import SourceLayoutError
from fea20k.ingest.rafau import RAFAU_AUS, parse_au_string, seeded_split
from tests.fixtures.corpora import build_rafau
from tests.ingest._helpers import assert_properties, check, run


def test_exact_records(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root, expected = build_rafau(tmp_path)
    with caplog.at_level(logging.WARNING):
        recs = run("rafau", root)
    by_id = check(recs, expected)
    r1 = by_id["src/aligned/0001_aligned"]
    assert r1.image.path == "aligned/0001_aligned.jpg" and r1.meta["aligned"] is True
    assert r1.landmark_scheme == "rafau68_unverified" and len(r1.landmarks) == 68
    assert r1.au_coded == list(RAFAU_AUS) and r1.aus[4] == 0 and r1.emotion is None
    null = by_id["src/aligned/0003_aligned"]
    assert set(null.aus.values()) == {0}  # null -> every AU absent, not unknown
    assert 44 in by_id["src/aligned/0005_aligned"].au_coded
    assert by_id["src/aligned/0002_aligned"].landmarks is None  # 3 values: left empty, warned
    assert "RAFAU_label.txt:6" in caplog.text and "X9" in caplog.text
    assert {r.split for r in recs} <= {"train", "test"}
    assert_properties(recs)
    assert [r.id for r in run("rafau", root)] == [r.id for r in recs]


def test_parse_au_string() -> None:
    assert parse_au_string("L12+R14+25") == ({12: "L", 14: "R", 25: None}, ["L12", "R14", "25"])
    assert parse_au_string("null") == ({}, [])
    assert parse_au_string("L1+R1")[0] == {1: "LR"}
    assert parse_au_string("1+abc") is None


def test_seeded_split_is_deterministic_and_fractional() -> None:
    splits = [seeded_split(f"{i:04d}", 0, 0.185) for i in range(4000)]
    assert splits == [seeded_split(f"{i:04d}", 0, 0.185) for i in range(4000)]
    assert 0.16 < splits.count("test") / 4000 < 0.21


def test_split_file(tmp_path: Path) -> None:
    root, _ = build_rafau(tmp_path)
    (root / "split.json").write_text('{"train": ["0001.jpg"], "test": ["0002.jpg", "7.jpg"]}')
    by_id = {r.id: r for r in run("rafau", root, split_file="split.json")}
    assert by_id["src/aligned/0001_aligned"].split == "train"
    assert by_id["src/aligned/0007_aligned"].split == "test"


def test_wrong_layout(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    with pytest.raises(SourceLayoutError, match="RAFAU_label.txt"):
        run("rafau", tmp_path / "x")


@pytest.mark.skipif(not os.environ.get("FEA20K_DATA_RAFAU"), reason="set FEA20K_DATA_RAFAU to a real RAF-AU copy")
def test_real_data() -> None:
    recs = run("rafau", Path(os.environ["FEA20K_DATA_RAFAU"]))
    assert len(recs) == 4601  # one public audit's line count (docs/corpora.md §3)
    assert sum(1 for r in recs if r.meta.get("null")) == 253


def test_a_name_listed_twice_is_one_record_or_one_label_conflict(tmp_path: Path) -> None:
    """0001 listed again with the same AUs: one record. 0002 listed as L12+R14 and again, unpadded, as L12: one
    excluded label_conflict record listing both AU strings."""
    root, expected = build_rafau(tmp_path)
    label = root / "RAFAU_label.txt"
    label.write_bytes(label.read_bytes() + b"0001.jpg 1+2+25\r\n2.jpg L12\r\n")  # lines 8 and 9
    recs = run("rafau", root)
    assert [r.id for r in recs] == list(expected)  # one record per id, in first-listing order
    by_id = {r.id: r for r in recs}
    same = by_id["src/aligned/0001_aligned"]
    assert same.reasons == [] and same.present_aus() == [1, 2, 25]
    assert same.meta["also_listed_at"] == [{"line": 8, "raw_name": "0001.jpg"}]
    conflict = by_id["src/aligned/0002_aligned"]
    assert conflict.reasons == ["label_conflict"] and conflict.aus == {} and conflict.au_coded == []
    assert conflict.meta["label_conflict"] == [
        {"line": 2, "raw_name": "0002.jpg", "aus": {"14": 1}, "meta.au_raw": "L12+R14", "meta.au_sides": {"14": "R"}},
        {"line": 9, "raw_name": "2.jpg", "aus": {"14": 0}, "meta.au_raw": "L12", "meta.au_sides": {}}]  # what differs
    for rid, exp in expected.items():
        if rid not in ("src/aligned/0001_aligned", "src/aligned/0002_aligned"):
            assert by_id[rid].reasons == exp["reasons"]


def test_a_truncated_image_is_undecodable(tmp_path: Path) -> None:
    root, expected = build_rafau(tmp_path)
    p = root / "aligned" / "0003_aligned.jpg"
    p.write_bytes(p.read_bytes()[:200])
    by_id = {r.id: r for r in run("rafau", root)}
    assert by_id["src/aligned/0003_aligned"].reasons == ["image_undecodable"]
    assert by_id["src/aligned/0003_aligned"].meta["image_error"] == "truncated JPEG (no end-of-image marker)"
    assert by_id["src/aligned/0003_aligned"].meta["null"] is True  # the labels stay, for the audit
    assert by_id["src/aligned/0001_aligned"].reasons == expected["src/aligned/0001_aligned"]["reasons"]
